//! `unstick chaos` end to end: real demo-app instances, real signals, the verdict, the report files and the exit codes.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{run_within, Output};
use unstick::testkit::process::{signal, ChildProcess};

const BIN: &str = env!("CARGO_BIN_EXE_unstick");

fn demo_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chaos/demo.toml")
}

/// A SQLite store prepared once, before the instances race to create it.
fn sqlite_store(dir: &Path) -> String {
    let db = dir.join("demo.db");
    unstick::demo::store::SqliteStore::init(&db).expect("init the store");
    format!("sqlite:{}", db.display())
}

fn demo_app(store: &str) -> String {
    format!("{BIN} demo-app --port {{port}} --store {store}")
}

/// Runs `unstick chaos ARGS` to its end (at most `limit`).
fn chaos(args: &[&str], limit: Duration) -> Output {
    let args: Vec<&str> = ["chaos"].iter().chain(args).copied().collect();
    run_within(&args, &[], limit)
}

fn verdict(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("verdict.json")).expect("verdict.json");
    serde_json::from_str(&text).expect("verdict.json is JSON")
}

fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

fn alive(pid: u32) -> bool {
    // Signal 0 checks only; ESRCH once the process is gone (and reaped).
    signal(pid, 0)
}

/// Every pid the verdict lists for every instance.
fn all_pids(v: &Value) -> Vec<u32> {
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["pids"].as_array().unwrap().clone())
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

/// Pids from `chaos: instance #N started: pid P` and `restarted: pid P` lines.
fn pids_in(stderr: &str) -> Vec<u32> {
    stderr
        .lines()
        .filter(|l| l.starts_with("chaos: instance #") && l.contains("started: pid "))
        .map(|l| {
            let rest = &l[l.find("started: pid ").unwrap() + "started: pid ".len()..];
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// The `(seconds, instance)` of each fault in `--dry-run` output.
fn dry_run_faults(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("fault "))
        .map(|l| {
            let at = l
                .split(" at ")
                .nth(1)
                .unwrap()
                .split('s')
                .next()
                .unwrap()
                .trim();
            let sig = l.split(": ").nth(1).unwrap().split(' ').next().unwrap();
            let inst = l
                .split("instance #")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            (at.to_owned(), sig.to_owned(), inst.to_owned())
        })
        .collect()
}

#[test]
fn the_sqlite_demo_passes_with_a_sigkill_every_2s_over_20s() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path());
    let report = dir.path().join("report");
    let app = demo_app(&store);
    let scenario = demo_scenario();
    let args = [
        "--app",
        &app,
        "--scenario",
        scenario.to_str().unwrap(),
        "--faults",
        "kill",
        "--every",
        "2s",
        "--duration",
        "20s",
        "--seed",
        "42",
        // Every POST carries an Idempotency-Key and the demo app replays
        // keyed responses, so a POST caught by a SIGKILL is sent again:
        // every request succeeds.
        "--min-success",
        "100",
        "--report-dir",
        report.to_str().unwrap(),
    ];
    let started = Instant::now();
    let run = chaos(&args, Duration::from_secs(60));
    assert_eq!(
        run.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert!(
        run.stdout.contains("unstick chaos: PASS  (seed 42)"),
        "{}",
        run.stdout
    );

    let v = verdict(&report);
    assert_eq!(v["verdict"], "PASS");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["seed"], 42);
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["passed"], true, "{c}");
    }
    // Kills every 2 s through the chaos phase; each hit a pid chaos started,
    // which exited on SIGKILL and came back as a new process.
    let timeline = v["timeline"].as_array().unwrap();
    let executed: Vec<&Value> = timeline.iter().filter(|f| !f["at_s"].is_null()).collect();
    assert!(executed.len() >= 4, "{timeline:?}");
    let pids = all_pids(&v);
    for f in &executed {
        assert_eq!(f["signal"], "SIGKILL");
        assert_eq!(f["exit"], "signal 9");
        let (old, new) = (
            f["pid"].as_u64().unwrap() as u32,
            f["new_pid"].as_u64().unwrap() as u32,
        );
        assert!(
            pids.contains(&old) && pids.contains(&new) && old != new,
            "{f}"
        );
        assert!(
            !f["time_to_eject_ms"].is_null() && !f["time_to_readmit_ms"].is_null(),
            "{f}"
        );
    }
    let gaps: Vec<f64> = executed
        .windows(2)
        .map(|w| w[1]["planned_at_s"].as_f64().unwrap() - w[0]["planned_at_s"].as_f64().unwrap())
        .collect();
    assert!(gaps.iter().all(|g| (g - 2.0).abs() < 1e-6), "{gaps:?}");
    // Sessions crossed instances, and nothing broke.
    assert!(
        check(&v, "cross_instance_pairs")["value"]["cross"]
            .as_u64()
            .unwrap()
            > 100
    );
    assert_eq!(check(&v, "broken_expectations")["value"]["count"], 0);
    // The balancer saw the same from its side: the session cookie it
    // learned hopped between instances, and no hop broke.
    let sid = &v["session_hops"]["cookies"][0];
    assert_eq!(sid["name"], "sid", "{}", v["session_hops"]);
    assert!(sid["hops"].as_u64().unwrap() > 100, "{sid}");
    assert_eq!(sid["broken"], 0, "{sid}");
    assert_eq!(check(&v, "session_hops")["value"]["broken"], 0);
    // The plan is the one --dry-run prints for the same seed.
    let mut dry_args = args.to_vec();
    dry_args.push("--dry-run");
    let dry = chaos(&dry_args, Duration::from_secs(10));
    assert_eq!(dry.status.code(), Some(0), "{}", dry.stderr);
    let planned: Vec<(String, String, String)> = v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                format!("{:.2}", f["at"].as_f64().unwrap()),
                "SIGKILL".to_owned(),
                f["instance"].to_string(),
            )
        })
        .collect();
    assert_eq!(dry_run_faults(&dry.stdout), planned, "{}", dry.stdout);

    // The CI file: one test case per check, none failed.
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert!(junit.starts_with("<?xml"));
    assert_eq!(
        junit.matches("<testcase ").count(),
        v["checks"].as_array().unwrap().len()
    );
    assert!(junit.contains("failures=\"0\"") && !junit.contains("<failure"));
    assert!(junit.contains("name=\"broken_expectations\""));
    // One self-contained page with the chart and the checks.
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("</svg>") && html.contains("PASS"));
    assert!(html.contains("cross_instance_pairs"));
    assert!(
        html.contains("Session hops seen by the balancer") && html.contains("<code>sid</code>")
    );
    for outside in ["<script", "<link", "@import", "url(", "src=\"http"] {
        assert!(!html.contains(outside), "report.html has {outside}");
    }
    // No instance outlived the run.
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived the run");
    }
}

#[test]
fn the_memory_store_fails_on_broken_expectations_naming_step_and_instances() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let app = demo_app("memory");
    let scenario = demo_scenario();
    let run = chaos(
        &[
            "--app",
            &app,
            "--scenario",
            scenario.to_str().unwrap(),
            "--every",
            "2s",
            "--duration",
            "8s",
            "--seed",
            "5",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let v = verdict(&report);
    assert_eq!(v["verdict"], "FAIL");
    let broken = check(&v, "broken_expectations");
    assert_eq!(broken["passed"], false);
    assert!(broken["value"]["count"].as_u64().unwrap() > 10, "{broken}");
    // The examples name the step, the status, and the instances involved.
    let examples = v["broken_examples"].as_array().unwrap();
    assert!(!examples.is_empty());
    let first = &examples[0];
    let msg = first["message"].as_str().unwrap();
    assert!(
        msg.contains(" expected ")
            && msg.contains(", got status 401")
            && msg.contains(" on instance #"),
        "{msg}"
    );
    assert!(msg.contains(" after setup on instance #"), "{msg}");
    assert_ne!(first["instance"], first["setup_instance"], "{first}");
    let step = first["step"].as_str().unwrap();
    assert!(
        ["GET /whoami", "POST /cart", "GET /cart", "POST /counter"].contains(&step),
        "{step}"
    );
    assert!(msg.starts_with(step), "{msg}");
    // The summary and the JUnit file carry it too.
    assert!(
        run.stdout.contains("FAIL    broken_expectations"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains(msg), "{}", run.stdout);
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert!(junit.contains("<failure type=\"check\""), "{junit}");
    // The balancer's own evidence agrees, naming the requests and instances.
    let hops = check(&v, "session_hops");
    assert_eq!(hops["passed"], false, "{hops}");
    let detail = hops["detail"].as_str().unwrap();
    assert!(
        detail.contains("cookie `sid`") && detail.contains(" -> 401 (denied) on instance #"),
        "{detail}"
    );
    assert!(
        detail.contains(", session issued by instance #"),
        "{detail}"
    );
    assert!(
        run.stdout.contains("FAIL    session_hops"),
        "{}",
        run.stdout
    );
    for pid in all_pids(&v) {
        assert!(!alive(pid), "pid {pid} survived the run");
    }
}

#[test]
fn the_same_seed_gives_the_same_plan() {
    let plan = |seed: &str| {
        let run = chaos(
            &[
                "--app",
                "/bin/true {port}",
                "--faults",
                "kill,term,stop",
                "--every",
                "1s",
                "--duration",
                "60s",
                "--seed",
                seed,
                "--dry-run",
            ],
            Duration::from_secs(10),
        );
        assert_eq!(run.status.code(), Some(0), "{}", run.stderr);
        run.stdout
    };
    let a = plan("1234");
    assert!(a.starts_with("seed 1234\n"), "{a}");
    assert!(dry_run_faults(&a).len() > 20, "{a}");
    assert_eq!(a, plan("1234"));
    assert_ne!(dry_run_faults(&a), dry_run_faults(&plan("1235")));
    for sig in ["SIGKILL", "SIGTERM", "SIGSTOP"] {
        assert!(a.contains(sig), "{a}");
    }
}

#[test]
fn a_run_without_a_seed_records_the_drawn_seed_and_its_command_replays_the_plan() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path());
    let report = dir.path().join("report");
    let app = demo_app(&store);
    let scenario = demo_scenario();
    let run = chaos(
        &[
            "--app",
            &app,
            "--scenario",
            scenario.to_str().unwrap(),
            "--every",
            "1s",
            "--duration",
            "6s",
            "--min-success",
            "50",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    assert!(report.join("verdict.json").exists(), "{}", run.stderr);
    let v = verdict(&report);
    let seed = v["seed"].as_u64().unwrap();
    // The recorded command carries the seed that was drawn, in every report.
    let recorded = v["command_line"].as_str().unwrap().to_owned();
    let words = shlex::split(&recorded).unwrap();
    let at = words.iter().position(|w| w == "--seed").expect(&recorded);
    assert_eq!(words[at + 1], seed.to_string(), "{recorded}");
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert!(junit.contains(&format!("--seed {seed}")), "{junit}");
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(
        html.contains(&format!("--seed {seed}")),
        "the page's command"
    );
    // Run as recorded, it plans the very faults that ran.
    let planned: Vec<(String, String, String)> = v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                format!("{:.2}", f["at"].as_f64().unwrap()),
                "SIGKILL".to_owned(),
                f["instance"].to_string(),
            )
        })
        .collect();
    assert!(!planned.is_empty(), "{}", v["plan"]);
    let mut again: Vec<&str> = words[2..].iter().map(String::as_str).collect();
    again.push("--dry-run");
    let dry = chaos(&again, Duration::from_secs(10));
    assert_eq!(dry.status.code(), Some(0), "{}", dry.stderr);
    assert!(
        dry.stdout.starts_with(&format!("seed {seed}\n")),
        "{}",
        dry.stdout
    );
    assert_eq!(dry_run_faults(&dry.stdout), planned, "{}", dry.stdout);
}

#[test]
fn an_app_that_exits_at_once_gives_exit_4_with_its_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let run = chaos(
        &[
            "--app",
            "sh -c 'echo booting on $PORT >&2; echo fatal: DATABASE_URL is not set >&2; exit 3'",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert!(
        run.stderr.contains("the app could not be run"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("exit code 3"), "{}", run.stderr);
    assert!(
        run.stderr.contains("| fatal: DATABASE_URL is not set"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("| booting on "), "{}", run.stderr);
    assert!(!report.exists(), "no verdict without an app");

    let run = chaos(
        &["--app", "/nonexistent/app --port {port}"],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot run /nonexistent/app"),
        "{}",
        run.stderr
    );

    // Never ready: the timeout names the path.
    let run = chaos(
        &["--app", "sleep 30", "--ready-timeout", "1s"],
        Duration::from_secs(20),
    );
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert!(
        run.stderr.contains("did not answer GET /healthz"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_single_instance_run_is_inconclusive() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path());
    let report = dir.path().join("report");
    let app = demo_app(&store);
    let scenario = demo_scenario();
    let run = chaos(
        &[
            "--app",
            &app,
            "--instances",
            "1",
            "--scenario",
            scenario.to_str().unwrap(),
            "--every",
            "1s",
            "--duration",
            "6s",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(3), "{}\n{}", run.stdout, run.stderr);
    let v = verdict(&report);
    assert_eq!(v["verdict"], "INCONCLUSIVE");
    let cross = check(&v, "cross_instance_pairs");
    assert_eq!(cross["passed"], false);
    assert_eq!(cross["value"]["cross"], 0);
    assert!(cross["value"]["pairs"].as_u64().unwrap() > 100, "{cross}");
    // Killing the only instance would be a total outage: not done.
    assert_eq!(check(&v, "faults_executed")["passed"], false);
    assert_eq!(check(&v, "broken_expectations")["passed"], true);
    assert!(run.stdout.contains("INCONCLUSIVE"), "{}", run.stdout);
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert!(junit.contains("<failure type=\"inconclusive\""), "{junit}");
}

#[test]
fn an_app_without_an_instance_header_is_told_apart_by_the_balancer() {
    // The fake backend sends no X-Backend-Id and no X-Instance-Id: the
    // balancer's x-unstick-backend header names the instance instead.
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let app = format!("{BIN} testkit-backend --anonymous --listen 127.0.0.1:{{port}}");
    let run = chaos(
        &[
            "--app",
            &app,
            "--every",
            "2s",
            "--duration",
            "10s",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    assert_eq!(run.status.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    let v = verdict(&report);
    assert_eq!(v["verdict"], "PASS");
    let cross = check(&v, "cross_instance_pairs");
    assert_eq!(cross["passed"], true, "{cross}");
    assert!(cross["value"]["cross"].as_u64().unwrap() > 20, "{cross}");
    assert_eq!(check(&v, "every_instance_served")["passed"], true);
}

#[test]
fn no_instance_survives_a_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let store = sqlite_store(dir.path());
    let app = demo_app(&store);
    let mut cmd = Command::new(BIN);
    cmd.args([
        "chaos",
        "--app",
        &app,
        "--every",
        "1s",
        "--restart-after",
        "300ms",
        "--duration",
        "30s",
        "--warmup",
        "1s",
        "--baseline",
        "1s",
        "--report-dir",
    ])
    .arg(dir.path().join("report"));
    let mut p = ChildProcess::spawn(cmd).unwrap();
    // Mid-run, after a fault brought a new process in.
    let Some(_) = p.stderr.wait_for("restarted: pid", Duration::from_secs(20)) else {
        panic!("no restart:\n{}", p.stderr.text());
    };
    let pids = pids_in(&p.stderr.text());
    assert!(pids.len() >= 4, "{pids:?}");
    assert!(pids.iter().any(|&pid| alive(pid)));
    assert!(p.signal(libc::SIGINT));
    let status = p
        .wait_timeout(Duration::from_secs(20))
        .expect("exits after SIGINT");
    assert_eq!(status.code(), Some(130), "{}", p.stderr.text());
    std::thread::sleep(Duration::from_millis(200));
    let text = p.stderr.text();
    assert!(text.contains("interrupted by SIGINT"), "{text}");
    // Also any process started between the lines read above and the stop.
    let all = pids_in(&text);
    for pid in all {
        assert!(!alive(pid), "pid {pid} survived the SIGINT\n{text}");
    }
}

#[test]
fn term_and_stop_faults_restart_and_continue_the_same_instances() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let app = demo_app("memory");
    let scenario = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/chaos/read-only.toml");
    let run = chaos(
        &[
            "--app",
            &app,
            "--scenario",
            scenario.to_str().unwrap(),
            "--faults",
            "term,stop",
            "--every",
            "1500ms",
            "--pause",
            "500ms",
            "--duration",
            "12s",
            "--seed",
            "11",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(45),
    );
    // The verdict depends on how the machine copes with a paused instance;
    // the mechanics do not.
    assert!(
        matches!(run.status.code(), Some(0) | Some(1)),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let v = verdict(&report);
    let executed: Vec<&Value> = v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["at_s"].is_null())
        .collect();
    let (mut terms, mut stops) = (0, 0);
    for f in &executed {
        match f["signal"].as_str().unwrap() {
            "SIGTERM" => {
                terms += 1;
                // The demo app drains and exits 0, then a new process runs.
                assert_eq!(f["exit"], "exit code 0", "{f}");
                assert_ne!(f["new_pid"], f["pid"], "{f}");
                assert!(!f["new_pid"].is_null(), "{f}");
            }
            "SIGSTOP" => {
                stops += 1;
                // Continued, not restarted.
                assert!(f["new_pid"].is_null() && f["exit"].is_null(), "{f}");
                let pause = f["back_at_s"].as_f64().unwrap() - f["at_s"].as_f64().unwrap();
                assert!(pause >= 0.45, "{f}");
            }
            other => panic!("{other}"),
        }
    }
    assert!(terms >= 1 && stops >= 1, "{executed:?}");
    // Read-only and not only SIGTERM: the bar is 99.9%.
    assert_eq!(v["thresholds"]["min_success"], 0.999);
    for pid in all_pids(&v) {
        assert!(!alive(pid), "pid {pid} survived the run");
    }
}

/// POSTs without a key and GETs, each 800 ms on an instance, with a SIGKILL
/// every 1.5 s: the POSTs the kills catch are explained as
/// `in_flight_not_replayable`, the GETs are replayed (nothing is lost), and
/// `--strict` fails the run on the POSTs alone.
#[test]
fn unkeyed_posts_caught_by_a_kill_are_explained_and_fail_only_under_strict() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let scenario = dir.path().join("slow.toml");
    std::fs::write(
        &scenario,
        "[[steps]]\nmethod = \"POST\"\npath = \"/slow/800\"\nbody = \"x=1\"\n\
         [[steps]]\npath = \"/slow/800\"\n",
    )
    .unwrap();
    let app = format!("{BIN} testkit-backend --listen 127.0.0.1:{{port}} --id b{{port}}");
    let run = chaos(
        &[
            "--app",
            &app,
            "--scenario",
            scenario.to_str().unwrap(),
            "--faults",
            "kill",
            "--every",
            "1500ms",
            "--duration",
            "12s",
            "--users",
            "16",
            "--rate",
            "16",
            "--seed",
            "5",
            "--strict",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(45),
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let v = verdict(&report);
    let failures = &v["totals"]["failures"];
    assert_eq!(failures["lost"], 0, "{}", run.stdout);
    assert_eq!(failures["broken"], 0, "{}", run.stdout);
    let in_flight = failures["in_flight_not_replayable"].as_u64().unwrap();
    assert!(in_flight >= 1, "{}", run.stdout);
    assert_eq!(v["totals"]["failed"].as_u64().unwrap(), in_flight);
    let c = check(&v, "in_flight_not_replayable");
    assert_eq!(
        (c["kind"].as_str(), c["passed"].as_bool()),
        (Some("check"), Some(false))
    );
    assert_eq!(c["value"]["by_step"]["POST /slow/800"], in_flight);
    assert!(run.stdout.contains("Idempotency-Key"), "{}", run.stdout);
    let steps = v["steps"].as_array().unwrap();
    let get = steps.iter().find(|s| s["step"] == "GET /slow/800").unwrap();
    assert_eq!(
        (get["replayable"].as_bool(), get["failed"].as_u64()),
        (Some(true), Some(0))
    );
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert!(junit.contains(&format!(
        "<property name=\"failures.in_flight_not_replayable\" value=\"{in_flight}\"/>"
    )));
    let html = std::fs::read_to_string(report.join("report.html")).unwrap();
    assert!(html.contains("Failures by class"), "report.html");
}

#[test]
fn mistakes_in_arguments_and_scenarios_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[[steps]]\npath = \"/\"\nexpect_stauts = 200\n").unwrap();
    let run = chaos(
        &["--app", "x {port}", "--scenario", bad.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("bad.toml: line 3"), "{}", run.stderr);
    assert!(run.stderr.contains("expect_stauts"), "{}", run.stderr);

    let run = chaos(&["--users", "3"], Duration::from_secs(10));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("--app"), "{}", run.stderr);

    let run = chaos(
        &["--app", "x", "--duration", "10s", "--every", "30s"],
        Duration::from_secs(10),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("longer than the chaos phase"),
        "{}",
        run.stderr
    );

    let run = chaos(&["--app", "x", "--faults", "nuke"], Duration::from_secs(10));
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);

    let run = chaos(
        &["--app", "x", "--rate", "100000", "--duration", "24h"],
        Duration::from_secs(10),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(run.stderr.contains("shorten --duration"), "{}", run.stderr);

    let cfg = dir.path().join("unstick.toml");
    std::fs::write(&cfg, "[retries]\nmax_per_request = \"lots\"\n").unwrap();
    let run = chaos(
        &["--app", "x", "--config", cfg.to_str().unwrap()],
        Duration::from_secs(10),
    );
    assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
    assert!(
        run.stderr.contains("retries.max_per_request"),
        "{}",
        run.stderr
    );
}

#[test]
fn the_demo_mode_runs_both_stores_and_prints_both_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    let run = chaos(
        &[
            "--demo",
            "--duration",
            "8s",
            "--seed",
            "3",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(60),
    );
    assert_eq!(run.status.code(), Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("unstick chaos (sqlite): PASS"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("unstick chaos (memory): FAIL"),
        "{}",
        run.stdout
    );
    assert!(run
        .stdout
        .contains("sqlite: PASS (expected PASS); memory: FAIL (expected FAIL)"));
    assert_eq!(verdict(&report.join("sqlite"))["verdict"], "PASS");
    let memory = verdict(&report.join("memory"));
    assert_eq!(memory["verdict"], "FAIL");
    assert_eq!(memory["label"], "memory");
    assert_eq!(check(&memory, "broken_expectations")["passed"], false);
}

#[test]
fn an_app_that_sets_an_affinity_cookie_fails_and_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    // The fake backend: GET / answers 200 with X-Backend-Id, and every
    // response tries to pin the client with SERVERID.
    let app = format!(
        "{BIN} testkit-backend --listen 127.0.0.1:{{port}} --id b{{port}} --set-cookie 'SERVERID=s1; Path=/'"
    );
    let run = chaos(
        &[
            "--app",
            &app,
            "--every",
            "1s",
            "--duration",
            "6s",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(30),
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let v = verdict(&report);
    let aff = check(&v, "affinity_cookies_seen");
    assert_eq!(aff["passed"], false);
    assert!(aff["value"]["count"].as_u64().unwrap() > 10, "{aff}");
    assert!(
        aff["detail"].as_str().unwrap().contains("SERVERID"),
        "{aff}"
    );
    // Everything else held: the default scenario (GET /, any 2xx) and
    // X-Backend-Id told the instances apart.
    assert_eq!(
        v["load"]["scenario"],
        "built-in scenario (GET /, expect a 2xx)"
    );
    assert_eq!(check(&v, "broken_expectations")["passed"], true);
    assert_eq!(check(&v, "cross_instance_pairs")["passed"], true);
}

#[test]
fn sessions_the_scenario_does_not_check_are_caught_by_the_balancer() {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report");
    // A scenario that takes a 401 for an answer, as one that only looks for
    // server errors would: the users see nothing wrong.
    let scenario = dir.path().join("lax.toml");
    std::fs::write(
        &scenario,
        "[[setup]]\nmethod = \"POST\"\npath = \"/login\"\nbody = \"user=vu{{vu}}\"\nexpect_status = 200\n\n\
         [[steps]]\npath = \"/whoami\"\nexpect_status = [200, 401]\n",
    )
    .unwrap();
    let app = demo_app("memory");
    let run = chaos(
        &[
            "--app",
            &app,
            "--scenario",
            scenario.to_str().unwrap(),
            "--every",
            "2s",
            "--duration",
            "6s",
            "--seed",
            "9",
            "--report-dir",
            report.to_str().unwrap(),
        ],
        Duration::from_secs(40),
    );
    assert_eq!(run.status.code(), Some(1), "{}\n{}", run.stdout, run.stderr);
    let v = verdict(&report);
    assert_eq!(check(&v, "broken_expectations")["passed"], true);
    let hops = check(&v, "session_hops");
    assert_eq!(hops["passed"], false, "{hops}");
    assert_eq!(hops["value"]["failing"][0], "sid");
    let sid = &v["session_hops"]["cookies"][0];
    assert!(sid["broken_share"].as_f64().unwrap() > 0.5, "{sid}");
    let example = &sid["examples"][0];
    assert_eq!(example["path"], "/whoami", "{sid}");
    assert_eq!(example["status"], 401);
    assert_ne!(
        example["from_instance"], example["to_instance"],
        "{example}"
    );
    assert!(
        run.stdout
            .contains("broken session hops seen by the balancer, e.g.:"),
        "{}",
        run.stdout
    );
    let junit = std::fs::read_to_string(report.join("junit.xml")).unwrap();
    assert!(
        junit.contains("GET /whoami -&gt; 401 (denied) on instance #"),
        "{junit}"
    );
}
