//! No silent surprises for an operator: a default admin port no common tool uses, warnings for a balancer with nothing to balance, `check` as strict as `serve`, misspelled variables named, one log format, TLS errors in words.

mod support;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::{metrics, run, Serve};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// Ports that tools often run beside a load balancer listen on by default.
const TAKEN: &[(u16, &str)] = &[
    (9090, "Prometheus"),
    (9093, "Alertmanager"),
    (9100, "node_exporter"),
    (3000, "Grafana"),
    (9901, "Envoy's admin"),
    (15000, "Istio's sidecar admin"),
    (8404, "HAProxy's stats page"),
    (8080, "Traefik's dashboard and unstick's proxy"),
    (2019, "Caddy's admin API"),
    (8001, "Kong's admin API"),
    (8444, "Kong's admin API (TLS)"),
];

#[test]
fn the_default_admin_port_is_no_common_tools_port() {
    let out = run(&["check"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let line = out
        .stdout
        .lines()
        .find(|l| l.starts_with("admin = "))
        .unwrap_or_else(|| panic!("no admin key printed:\n{}", out.stdout));
    let port: u16 = line
        .trim_start_matches("admin = ")
        .trim_matches('"')
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("not an address: {line}"));
    if let Some((_, tool)) = TAKEN.iter().find(|(p, _)| *p == port) {
        panic!("the default admin port {port} is {tool}'s");
    }
    // `unstick demo` and `serve --help` agree with the config default.
    let help = run(&["demo", "--help"], &[]).stdout;
    assert!(help.contains(&format!("127.0.0.1:{port}")), "{help}");
    let help = run(&["serve", "--help"], &[]).stdout;
    assert!(help.contains(&format!("127.0.0.1:{port}")), "{help}");
}

/// Files users read or run: README, docs, the sample config, the container
/// and deployment files.
fn shipped_files() -> Vec<PathBuf> {
    let mut out = vec![Path::new(ROOT).join("README.md")];
    for dir in ["docs", "config", "docker", "deploy", "src"] {
        walk(&Path::new(ROOT).join(dir), &mut out);
    }
    out
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            walk(&path, out);
        } else {
            out.push(path);
        }
    }
}

#[test]
fn no_shipped_file_puts_the_admin_listener_on_prometheus_port() {
    let mut found = Vec::new();
    for path in shipped_files() {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        for (i, line) in text.lines().enumerate() {
            if line.contains(":9090") || line.contains("Port: 9090") || line.contains("port: 9090")
            {
                found.push(format!("{}:{}: {line}", path.display(), i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "9090 is Prometheus's port:\n{}",
        found.join("\n")
    );
}

/// An address nothing listens on: a port bound and released.
fn dead_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr")
}

/// How long a startup warning may take to appear (a connect probe on a busy machine).
const WARN_LIMIT: Duration = Duration::from_secs(10);

#[test]
fn serve_with_no_backends_says_so_at_start() {
    let rig = Serve::new().start();
    let line = rig
        .lb
        .stderr()
        .wait_for("no backends configured", WARN_LIMIT)
        .unwrap_or_else(|| panic!("no warning:\n{}", rig.lb.stderr().text()));
    assert!(line.contains("503"), "{line}");
    assert!(line.contains("--backend"), "{line}");
}

#[test]
fn serve_with_only_unreachable_backends_names_them_at_start() {
    let dead = [dead_addr(), dead_addr()];
    let rig = Serve::new().backends(&dead).start();
    let line = rig
        .lb
        .stderr()
        .wait_for("no backend accepts a connection", WARN_LIMIT)
        .unwrap_or_else(|| panic!("no warning:\n{}", rig.lb.stderr().text()));
    for addr in dead {
        assert!(line.contains(&addr.to_string()), "{addr} not named: {line}");
    }
}

#[test]
fn serve_names_only_the_backends_that_do_not_answer() {
    let dead = dead_addr();
    let rig = Serve::child_backends(1).backends(&[dead]).start();
    let line = rig
        .lb
        .stderr()
        .wait_for("some backends do not accept a connection", WARN_LIMIT)
        .unwrap_or_else(|| panic!("no warning:\n{}", rig.lb.stderr().text()));
    assert!(line.contains(&dead.to_string()), "{line}");
    let live = rig.backends[0].addr.to_string();
    assert!(!line.contains(&live), "{live} answers: {line}");
    let all = rig.lb.stderr().text();
    assert!(!all.contains("no backend accepts"), "{all}");
}

/// The families whose label values are known up front, each with every
/// value: all exported at 0 before their first event.
#[tokio::test]
async fn families_with_known_labels_are_exported_at_zero_from_the_start() {
    let rig = Serve::child_backends(1).start();
    let backend = rig.backends[0].addr.to_string();
    let m = metrics::scrape(rig.lb.admin()).await;
    for family in [
        "unstick_retries_total",
        "unstick_ejections_total",
        "unstick_affinity_cookies_refused_total",
        "unstick_config_reloads_total",
        "unstick_tls_reloads_total",
    ] {
        assert!(
            m.text.contains(&format!("# HELP {family} ")),
            "no HELP for {family}:\n{}",
            m.text
        );
        assert!(
            m.text.contains(&format!("# TYPE {family} counter")),
            "no TYPE for {family}:\n{}",
            m.text
        );
    }
    for reason in ["connect", "connect_timeout", "reset"] {
        m.assert_value("unstick_retries_total", &[("reason", reason)], 0.0);
    }
    for reason in [
        "connect_refused",
        "failures",
        "health_check",
        "drain",
        "admin",
    ] {
        let labels = [("backend", backend.as_str()), ("reason", reason)];
        m.assert_value("unstick_ejections_total", &labels, 0.0);
    }
    for direction in ["request", "response"] {
        for name in ["SERVERID", "AWSALB", "BIGipServer*"] {
            let labels = [("direction", direction), ("name", name)];
            m.assert_value("unstick_affinity_cookies_refused_total", &labels, 0.0);
        }
    }
    for result in ["success", "failure"] {
        m.assert_value("unstick_config_reloads_total", &[("result", result)], 0.0);
    }
    for result in ["ok", "error"] {
        m.assert_value("unstick_tls_reloads_total", &[("result", result)], 0.0);
    }
}

/// Every `unstick_*` metric the shipped Grafana dashboard queries, from its
/// PromQL expressions.
fn dashboard_metrics() -> std::collections::BTreeSet<String> {
    let path = Path::new(ROOT).join("docs/grafana-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("docs/grafana-dashboard.json");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 20, "only {} queries", exprs.len());
    let mut names = std::collections::BTreeSet::new();
    for expr in exprs {
        let mut rest = expr.as_str();
        while let Some(at) = rest.find("unstick_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.insert(tail[..end].to_owned());
            rest = &tail[end..];
        }
    }
    names
}

fn collect_exprs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                    _ => collect_exprs(v, out),
                }
            }
        }
        serde_json::Value::Array(list) => list.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// The Grafana dashboard queries only metrics unstick exports, every one of
/// them present in the first scrape (a backend named by DNS, a watched
/// session cookie configured), and it covers the families dashboards and
/// alerts need before the first event.
#[tokio::test]
async fn the_grafana_dashboard_names_only_metrics_in_the_first_scrape() {
    let names = dashboard_metrics();
    for needed in [
        "unstick_retries_total",
        "unstick_ejections_total",
        "unstick_affinity_cookies_refused_total",
        "unstick_config_reloads_total",
        "unstick_tls_reloads_total",
        "unstick_session_hops_total",
        "unstick_requests_total",
    ] {
        assert!(names.contains(needed), "the dashboard has no {needed}");
    }
    let backend = support::backends::child("b0", &[]);
    let by_name = format!("localhost:{}", backend.addr.port());
    let rig = Serve::new()
        .toml("[session_watch]\nnames = [\"sid\"]\n")
        .args(&["--backend", &by_name])
        .start();
    let m = metrics::scrape(rig.lb.admin()).await;
    let samples: std::collections::BTreeSet<&str> = m
        .text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = names
        .iter()
        .filter(|n| !samples.contains(n.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, not in /metrics:\n{}",
        m.text
    );
}

/// A self-signed certificate for localhost and its key, written to `files`
/// as `STEM.pem` and `STEM.key`.
fn self_signed(files: &support::Files, stem: &str) -> (PathBuf, PathBuf) {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("a certificate");
    let cert = files.write(&format!("{stem}.pem"), &ck.cert.pem());
    let key = files.write(&format!("{stem}.key"), &ck.signing_key.serialize_pem());
    (cert, key)
}

/// `check` and `serve` refuse the same file the same way, exit 2.
fn both_refuse(args: &[&str], env: &[(&str, &str)]) -> String {
    let mut check = vec!["check"];
    check.extend(args);
    let out = run(&check, env);
    assert_eq!(out.code, 2, "check {args:?}: {}", out.stderr);
    assert!(!out.stderr.contains("key ``"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("configuration is valid"),
        "{}",
        out.stderr
    );
    let mut serve = vec!["serve", "--listen", "127.0.0.1:0", "--admin", "off"];
    serve.extend(args);
    let served = run(&serve, env);
    assert_eq!(served.code, 2, "serve {args:?}: {}", served.stderr);
    let first = |s: &str| {
        s.lines()
            .find(|l| l.starts_with("error: "))
            .map(str::to_owned)
    };
    assert_eq!(first(&out.stderr), first(&served.stderr));
    out.stderr
}

#[test]
fn check_reads_the_tls_files_serve_would_and_blames_the_key_that_names_them() {
    let files = support::Files::new();
    let missing = files.path("missing.pem");
    let (cert, _) = self_signed(&files, "a");
    let (_, other_key) = self_signed(&files, "b");
    // A file that is not there, named by a flag.
    let err = both_refuse(
        &[
            "--tls-cert",
            missing.to_str().unwrap(),
            "--tls-key",
            other_key.to_str().unwrap(),
        ],
        &[],
    );
    assert!(err.contains("flag --tls-cert: key `tls.cert`"), "{err}");
    assert!(err.contains(&*missing.to_string_lossy()), "{err}");
    // A key that is not the certificate's, named on line 3 of a file.
    let config = files.write(
        "mismatch.toml",
        &format!(
            "[tls]\ncert = {:?}\nkey = {:?}\n",
            cert.display(),
            other_key.display()
        ),
    );
    let err = both_refuse(&["--config", config.to_str().unwrap()], &[]);
    assert!(
        err.contains(&format!("{}:3: key `tls.key`", config.display())),
        "{err}"
    );
    assert!(
        err.contains("the private key does not match the certificate"),
        "{err}"
    );
    assert!(!err.contains("KeyMismatch"), "{err}");
}

#[test]
fn check_prints_the_tls_keys_whether_set_or_not() {
    let files = support::Files::new();
    let (cert, key) = self_signed(&files, "a");
    let out = run(
        &[
            "check",
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let cert_line = format!("cert = {:?}  # flag --tls-cert", cert.display());
    assert!(out.stdout.contains("[tls]"), "{}", out.stdout);
    assert!(out.stdout.contains(&cert_line), "{}", out.stdout);
    assert!(
        out.stdout.contains("reload_interval = \"10s\""),
        "{}",
        out.stdout
    );
    // TLS off: its keys are listed as not set, with their variables.
    let out = run(&["check"], &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    for key in ["tls.cert (UNSTICK_TLS_CERT)", "tls.key (UNSTICK_TLS_KEY)"] {
        assert!(out.stdout.contains(&format!("# {key}")), "{}", out.stdout);
    }
    // What is printed is a config file unstick accepts.
    let again = files.write("printed.toml", &out.stdout);
    assert_eq!(
        run(&["check", "--config", again.to_str().unwrap()], &[]).code,
        0
    );
}

#[test]
fn config_errors_name_their_real_origin() {
    let files = support::Files::new();
    // A syntax error: file, line and column.
    let bad = files.write("syntax.toml", "workers = 2\nlisten = \n");
    let err = both_refuse(&["--config", bad.to_str().unwrap()], &[]);
    assert!(
        err.contains(&format!("{}:2:10: not valid TOML", bad.display())),
        "{err}"
    );
    // A missing config file: its path.
    let gone = files.path("gone.toml");
    let err = both_refuse(&["--config", gone.to_str().unwrap()], &[]);
    assert!(
        err.contains(&format!("{}: cannot read the config file", gone.display())),
        "{err}"
    );
    // A certificate flag without its key: the flag, not a built-in default.
    let (cert, _) = self_signed(&files, "a");
    let err = both_refuse(&["--tls-cert", cert.to_str().unwrap()], &[]);
    assert!(err.contains("flag --tls-cert: key `tls.cert`"), "{err}");
    assert!(err.contains("--tls-key"), "{err}");
    assert!(!err.contains("built-in default"), "{err}");
    // The same through the environment.
    let err = both_refuse(&[], &[("UNSTICK_TLS_KEY", cert.to_str().unwrap())]);
    assert!(
        err.contains("environment variable UNSTICK_TLS_KEY: key `tls.key`"),
        "{err}"
    );
}

#[test]
fn a_misspelled_variable_is_an_error_naming_the_closest_one() {
    let err = both_refuse(&[], &[("UNSTICK_TIMEOUTS_CONECT", "1s")]);
    assert!(
        err.contains("environment variable UNSTICK_TIMEOUTS_CONECT"),
        "{err}"
    );
    assert!(
        err.contains("did you mean UNSTICK_TIMEOUTS_CONNECT?"),
        "{err}"
    );
    assert!(err.contains("UNSTICK_ENV_IGNORE"), "{err}");
    // Listed in UNSTICK_ENV_IGNORE, it is left alone.
    let out = run(
        &["check"],
        &[
            ("UNSTICK_TIMEOUTS_CONECT", "1s"),
            ("UNSTICK_ENV_IGNORE", "UNSTICK_TIMEOUTS_CON*"),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    // Variables of the repository's scripts, tests and images are not
    // unstick's and pass.
    let out = run(
        &["check"],
        &[
            ("UNSTICK_TEST_REDIS", "redis://127.0.0.1:1"),
            ("UNSTICK_TEST_IMAGE", "unstick:test"),
            ("UNSTICK_IMAGE", "unstick:latest"),
            ("UNSTICK_REQUIRE_BROWSER", "1"),
            ("UNSTICK_FUZZ_SECONDS", "60"),
            ("UNSTICK_SHOW_GRAPH", "1"),
            ("UNSTICK_BIN", "/usr/local/bin/unstick"),
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
}

/// Every stderr line of `lb` so far, each parsed as a JSON object.
fn json_lines(lines: &[String]) -> Vec<serde_json::Value> {
    lines
        .iter()
        .map(|l| {
            let v: serde_json::Value =
                serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
            assert!(v.is_object(), "not an object: {l}");
            for field in ["timestamp", "level", "message"] {
                assert!(v[field].is_string(), "no {field}: {l}");
            }
            v
        })
        .collect()
}

#[test]
fn with_log_format_json_every_stderr_line_is_a_json_object() {
    let dead = dead_addr();
    let mut rig = Serve::new()
        .backends(&[dead])
        .args(&["--log-format", "json"])
        .start();
    let stderr = rig.lb.stderr().clone();
    stderr
        .wait_for("no backend accepts a connection", WARN_LIMIT)
        .unwrap_or_else(|| panic!("no warning:\n{}", stderr.text()));
    rig.lb.signal(libc::SIGTERM);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let status = rt.block_on(rig.lb.exit_within(Duration::from_secs(10)));
    assert_eq!(status.and_then(|s| s.code()), Some(0), "{}", stderr.text());
    let lines = json_lines(&stderr.all());
    let started = lines
        .iter()
        .find(|v| v["event"] == "started")
        .expect("started");
    assert_eq!(started["message"], "started");
    assert!(started["listen"].is_string(), "{started}");
    let warned = lines
        .iter()
        .find(|v| v["level"] == "warn")
        .expect("the warning");
    assert!(
        warned["backends"]
            .as_str()
            .unwrap()
            .contains(&dead.to_string()),
        "{warned}"
    );
    assert!(lines
        .iter()
        .any(|v| v["message"].as_str().unwrap().starts_with("stopping")));
    // A refused configuration, too.
    let out = run(
        &["serve", "--log-format", "json", "--tls-cert", "missing.pem"],
        &[],
    );
    assert_eq!(out.code, 2, "{}", out.stderr);
    let lines: Vec<String> = out.stderr.lines().map(str::to_owned).collect();
    let refused = json_lines(&lines);
    assert_eq!(refused[0]["level"], "error", "{}", out.stderr);
}

#[test]
fn text_is_all_text_and_the_level_comes_from_the_flag_or_rust_log() {
    let rig = Serve::child_backends(1).start();
    let line = rig
        .lb
        .stderr()
        .wait_for("\"event\":\"started\"", WARN_LIMIT)
        .expect("started");
    assert!(line.contains("  INFO started {"), "{line}");
    assert!(
        rig.lb.stderr().all().iter().all(|l| !l.starts_with('{')),
        "{}",
        rig.lb.stderr().text()
    );
    assert!(rig.lb.stderr().text().contains("backend added"));
    // --log-level warn drops the info lines (RUST_LOG=unstick=info is set).
    let quiet = Serve::child_backends(1)
        .args(&["--log-level", "warn"])
        .start();
    assert!(!quiet.lb.stderr().text().contains("backend added"));
    // RUST_LOG alone still filters.
    let quiet = Serve::child_backends(1)
        .env("RUST_LOG", "unstick=warn")
        .start();
    assert!(!quiet.lb.stderr().text().contains("backend added"));
}
