//! `unstick chaos` end to end: real demo-app instances, real signals, the verdict, the report files and the exit codes.

mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::chaos::{
    alive, all_pids, assert_none_alive, backend_app, check, dry_run_faults, executed, pids_in,
    planned_kills, run_args, scenario, verdict, Chaos,
};
use support::{Files, BIN};

#[test]
fn the_sqlite_demo_passes_with_a_sigkill_every_2s_over_20s() {
    let chaos = Chaos::new()
        .sqlite_demo()
        .scenario(&scenario("demo.toml"))
        .flags(&["--faults", "kill", "--every", "2s", "--duration", "20s"])
        .flags(&["--seed", "42"])
        // Every POST carries an Idempotency-Key and the demo app replays
        // keyed responses, so a POST caught by a SIGKILL is sent again:
        // every request succeeds.
        .flags(&["--min-success", "100"])
        .reported();
    let started = Instant::now();
    let run = chaos.run(Duration::from_secs(60));
    run.assert_code(0);
    assert!(started.elapsed() >= Duration::from_secs(20));
    assert!(
        run.stdout.contains("unstick chaos: PASS  (seed 42)"),
        "{}",
        run.stdout
    );

    let v = chaos.verdict();
    assert_eq!(v["verdict"], "PASS");
    assert_eq!(v["exit_code"], 0);
    assert_eq!(v["seed"], 42);
    for c in v["checks"].as_array().unwrap() {
        assert_eq!(c["passed"], true, "{c}");
    }
    // Kills every 2 s through the chaos phase; each hit a pid chaos started,
    // which exited on SIGKILL and came back as a new process.
    let executed = executed(&v);
    assert!(executed.len() >= 4, "{}", v["timeline"]);
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
    let dry = chaos.dry_run(Duration::from_secs(10));
    assert_eq!(dry.status.code(), Some(0), "{}", dry.stderr);
    assert_eq!(
        dry_run_faults(&dry.stdout),
        planned_kills(&v),
        "{}",
        dry.stdout
    );

    // The CI file: one test case per check, none failed.
    let junit = chaos.report_file("junit.xml");
    assert!(junit.starts_with("<?xml"));
    assert_eq!(
        junit.matches("<testcase ").count(),
        v["checks"].as_array().unwrap().len()
    );
    assert!(junit.contains("failures=\"0\"") && !junit.contains("<failure"));
    assert!(junit.contains("name=\"broken_expectations\""));
    // One self-contained page with the chart and the checks.
    let html = chaos.report_file("report.html");
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
    let chaos = Chaos::new()
        .memory_demo()
        .scenario(&scenario("demo.toml"))
        .flags(&["--every", "2s", "--duration", "8s", "--seed", "5"])
        .reported();
    let run = chaos.run(Duration::from_secs(40));
    run.assert_code(1);
    let v = chaos.verdict();
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
    let junit = chaos.report_file("junit.xml");
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
    assert_none_alive(&v);
}

#[test]
fn the_same_seed_gives_the_same_plan() {
    let plan = |seed: &str| {
        let run = Chaos::new()
            .app("/bin/true {port}")
            .flags(&["--faults", "kill,term,stop", "--every", "1s"])
            .flags(&["--duration", "60s", "--seed", seed])
            .dry_run(Duration::from_secs(10));
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
    let chaos = Chaos::new()
        .sqlite_demo()
        .scenario(&scenario("demo.toml"))
        .flags(&["--every", "1s", "--duration", "6s", "--min-success", "50"])
        .reported();
    let run = chaos.run(Duration::from_secs(40));
    assert!(
        chaos.report_dir().join("verdict.json").exists(),
        "{}",
        run.stderr
    );
    let v = chaos.verdict();
    let seed = v["seed"].as_u64().unwrap();
    // The recorded command carries the seed that was drawn, in every report.
    let recorded = v["command_line"].as_str().unwrap().to_owned();
    let words = shlex::split(&recorded).unwrap();
    let at = words.iter().position(|w| w == "--seed").expect(&recorded);
    assert_eq!(words[at + 1], seed.to_string(), "{recorded}");
    let junit = chaos.report_file("junit.xml");
    assert!(junit.contains(&format!("--seed {seed}")), "{junit}");
    let html = chaos.report_file("report.html");
    assert!(
        html.contains(&format!("--seed {seed}")),
        "the page's command"
    );
    // Run as recorded, it plans the very faults that ran.
    let planned = planned_kills(&v);
    assert!(!planned.is_empty(), "{}", v["plan"]);
    let mut again: Vec<&str> = words[2..].iter().map(String::as_str).collect();
    again.push("--dry-run");
    let dry = run_args(&again, Duration::from_secs(10));
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
    let chaos = Chaos::new()
        .app("sh -c 'echo booting on $PORT >&2; echo fatal: DATABASE_URL is not set >&2; exit 3'")
        .reported();
    let run = chaos.run(Duration::from_secs(20));
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
    assert!(!chaos.report_dir().exists(), "no verdict without an app");

    let run = run_chaos(&["--app", "/nonexistent/app --port {port}"]);
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert!(
        run.stderr.contains("cannot run /nonexistent/app"),
        "{}",
        run.stderr
    );

    // Never ready: the timeout names the path.
    let run = run_chaos(&["--app", "sleep 30", "--ready-timeout", "1s"]);
    assert_eq!(run.status.code(), Some(4), "{}", run.stderr);
    assert!(
        run.stderr.contains("did not answer GET /healthz"),
        "{}",
        run.stderr
    );
}

/// `unstick chaos ARGS` for an app that never gets going (at most 20 s).
fn run_chaos(args: &[&str]) -> support::Output {
    run_args(args, Duration::from_secs(20))
}

#[test]
fn a_single_instance_run_is_inconclusive() {
    let chaos = Chaos::new()
        .sqlite_demo()
        .flags(&["--instances", "1"])
        .scenario(&scenario("demo.toml"))
        .flags(&["--every", "1s", "--duration", "6s"])
        .reported();
    let run = chaos.run(Duration::from_secs(30));
    run.assert_code(3);
    let v = chaos.verdict();
    assert_eq!(v["verdict"], "INCONCLUSIVE");
    let cross = check(&v, "cross_instance_pairs");
    assert_eq!(cross["passed"], false);
    assert_eq!(cross["value"]["cross"], 0);
    assert!(cross["value"]["pairs"].as_u64().unwrap() > 100, "{cross}");
    // Killing the only instance would be a total outage: not done.
    assert_eq!(check(&v, "faults_executed")["passed"], false);
    assert_eq!(check(&v, "broken_expectations")["passed"], true);
    assert!(run.stdout.contains("INCONCLUSIVE"), "{}", run.stdout);
    let junit = chaos.report_file("junit.xml");
    assert!(junit.contains("<failure type=\"inconclusive\""), "{junit}");
}

#[test]
fn an_app_without_an_instance_header_is_told_apart_by_the_balancer() {
    // The fake backend sends no X-Backend-Id and no X-Instance-Id: the
    // balancer's x-unstick-backend header names the instance instead.
    let chaos = Chaos::new()
        .app(&format!(
            "{BIN} testkit-backend --anonymous --listen 127.0.0.1:{{port}}"
        ))
        .flags(&["--every", "2s", "--duration", "10s"])
        .reported();
    chaos.run(Duration::from_secs(40)).assert_code(0);
    let v = chaos.verdict();
    assert_eq!(v["verdict"], "PASS");
    let cross = check(&v, "cross_instance_pairs");
    assert_eq!(cross["passed"], true, "{cross}");
    assert!(cross["value"]["cross"].as_u64().unwrap() > 20, "{cross}");
    assert_eq!(check(&v, "every_instance_served")["passed"], true);
}

#[test]
fn no_instance_survives_a_sigint() {
    let chaos = Chaos::new()
        .sqlite_demo()
        .flags(&["--every", "1s", "--restart-after", "300ms"])
        .flags(&["--duration", "30s", "--warmup", "1s", "--baseline", "1s"])
        .reported();
    let mut p = chaos.spawn();
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
    let chaos = Chaos::new()
        .memory_demo()
        .scenario(&scenario("read-only.toml"))
        .flags(&[
            "--faults",
            "term,stop",
            "--every",
            "1500ms",
            "--pause",
            "500ms",
        ])
        .flags(&["--duration", "12s", "--seed", "11"])
        .reported();
    let run = chaos.run(Duration::from_secs(45));
    // The verdict depends on how the machine copes with a paused instance;
    // the mechanics do not.
    assert!(
        matches!(run.status.code(), Some(0) | Some(1)),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
    let v = chaos.verdict();
    let executed = executed(&v);
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
    assert_none_alive(&v);
}

/// POSTs without a key and GETs, each 800 ms on an instance, with a SIGKILL
/// every 1.5 s: the POSTs the kills catch are explained as
/// `in_flight_not_replayable`, the GETs are replayed (nothing is lost), and
/// `--strict` fails the run on the POSTs alone.
#[test]
fn unkeyed_posts_caught_by_a_kill_are_explained_and_fail_only_under_strict() {
    let chaos = Chaos::new()
        .app(&backend_app(""))
        .scenario_text(
            "slow.toml",
            "[[steps]]\nmethod = \"POST\"\npath = \"/slow/800\"\nbody = \"x=1\"\n\
             [[steps]]\npath = \"/slow/800\"\n",
        )
        .flags(&["--faults", "kill", "--every", "1500ms", "--duration", "12s"])
        .flags(&["--users", "16", "--rate", "16", "--seed", "5", "--strict"])
        .reported();
    let run = chaos.run(Duration::from_secs(45));
    run.assert_code(1);
    let v = chaos.verdict();
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
    let junit = chaos.report_file("junit.xml");
    assert!(junit.contains(&format!(
        "<property name=\"failures.in_flight_not_replayable\" value=\"{in_flight}\"/>"
    )));
    let html = chaos.report_file("report.html");
    assert!(html.contains("Failures by class"), "report.html");
}

#[test]
fn mistakes_in_arguments_and_scenarios_exit_2() {
    let files = Files::new();
    let mistake = |args: &[&str]| {
        let run = run_args(args, Duration::from_secs(10));
        assert_eq!(run.status.code(), Some(2), "{}", run.stderr);
        run.stderr
    };
    let bad = files.write("bad.toml", "[[steps]]\npath = \"/\"\nexpect_stauts = 200\n");
    let stderr = mistake(&["--app", "x {port}", "--scenario", bad.to_str().unwrap()]);
    assert!(stderr.contains("bad.toml: line 3"), "{stderr}");
    assert!(stderr.contains("expect_stauts"), "{stderr}");

    let stderr = mistake(&["--users", "3"]);
    assert!(stderr.contains("--app"), "{stderr}");

    let stderr = mistake(&["--app", "x", "--duration", "10s", "--every", "30s"]);
    assert!(stderr.contains("longer than the chaos phase"), "{stderr}");

    mistake(&["--app", "x", "--faults", "nuke"]);

    let stderr = mistake(&["--app", "x", "--rate", "100000", "--duration", "24h"]);
    assert!(stderr.contains("shorten --duration"), "{stderr}");

    let cfg = files.write("unstick.toml", "[retries]\nmax_per_request = \"lots\"\n");
    let stderr = mistake(&["--app", "x", "--config", cfg.to_str().unwrap()]);
    assert!(stderr.contains("retries.max_per_request"), "{stderr}");
}

#[test]
fn the_demo_mode_runs_both_stores_and_prints_both_verdicts() {
    let chaos = Chaos::new()
        .flags(&["--demo", "--duration", "8s", "--seed", "3"])
        .reported();
    let run = chaos.run(Duration::from_secs(60));
    run.assert_code(0);
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
    let report = chaos.report_dir();
    assert_eq!(verdict(&report.join("sqlite"))["verdict"], "PASS");
    let memory: Value = verdict(&report.join("memory"));
    assert_eq!(memory["verdict"], "FAIL");
    assert_eq!(memory["label"], "memory");
    assert_eq!(check(&memory, "broken_expectations")["passed"], false);
}

#[test]
fn an_app_that_sets_an_affinity_cookie_fails_and_is_named() {
    // The fake backend: GET / answers 200 with X-Backend-Id, and every
    // response tries to pin the client with SERVERID.
    let chaos = Chaos::new()
        .app(&backend_app(" --set-cookie 'SERVERID=s1; Path=/'"))
        .flags(&["--every", "1s", "--duration", "6s"])
        .reported();
    chaos.run(Duration::from_secs(30)).assert_code(1);
    let v = chaos.verdict();
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
    // A scenario that takes a 401 for an answer, as one that only looks for
    // server errors would: the users see nothing wrong.
    let chaos = Chaos::new()
        .memory_demo()
        .scenario_text(
            "lax.toml",
            "[[setup]]\nmethod = \"POST\"\npath = \"/login\"\nbody = \"user=vu{{vu}}\"\nexpect_status = 200\n\n\
             [[steps]]\npath = \"/whoami\"\nexpect_status = [200, 401]\n",
        )
        .flags(&["--every", "2s", "--duration", "6s", "--seed", "9"])
        .reported();
    let run = chaos.run(Duration::from_secs(40));
    run.assert_code(1);
    let v = chaos.verdict();
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
    let junit = chaos.report_file("junit.xml");
    assert!(
        junit.contains("GET /whoami -&gt; 401 (denied) on instance #"),
        "{junit}"
    );
}
