//! Running unstick as a deployed service: the `healthcheck` probe a container uses, through the real binary.

use std::net::TcpListener;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use unstick::testkit::process::{ChildBackend, ChildUnstick};

mod support;
use support::BIN;

/// `unstick healthcheck ARGS` with `env`, and its output.
fn healthcheck(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.arg("healthcheck")
        .args(args)
        .env_remove("UNSTICK_ADMIN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run unstick healthcheck")
}

fn says(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn healthcheck_passes_on_a_ready_balancer_and_fails_on_an_unready_one() {
    let backend = ChildBackend::spawn(BIN, "b0", &[]);
    let ready = ChildUnstick::spawn(BIN, &["--backend", &backend.addr.to_string()], &[]);
    let admin = ready.admin.expect("admin listener");

    let out = healthcheck(&[&format!("http://{admin}/readyz")], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    assert!(says(&out).contains("healthy"), "{}", says(&out));

    // No URL: `/readyz` on the admin address UNSTICK_ADMIN names, asked on
    // loopback when it is the unspecified address.
    let everywhere = format!("0.0.0.0:{}", admin.port());
    let out = healthcheck(&[], &[("UNSTICK_ADMIN", &everywhere)]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    assert!(
        says(&out).contains(&format!("http://127.0.0.1:{}/readyz", admin.port())),
        "{}",
        says(&out)
    );

    // A name that never resolves: no backend in rotation, /readyz is 503.
    let unready = ChildUnstick::spawn(BIN, &["--backend", "nothing.invalid:80"], &[]);
    let url = format!("http://{}/readyz", unready.admin.unwrap());
    let out = healthcheck(&[&url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    assert!(says(&out).contains("503"), "{}", says(&out));
}

#[test]
fn healthcheck_fails_within_its_timeout_when_nothing_answers() {
    // A port nobody listens on.
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let out = healthcheck(&[&format!("http://{closed}/readyz")], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    assert!(says(&out).contains("cannot connect"), "{}", says(&out));

    // A listener that accepts nothing and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/readyz", silent.local_addr().unwrap());
    let started = Instant::now();
    let out = healthcheck(&["--timeout", "300ms", &url], &[]);
    assert_eq!(out.status.code(), Some(1), "{}", says(&out));
    assert!(says(&out).contains("no answer within"), "{}", says(&out));
    assert!(started.elapsed() < Duration::from_secs(10));

    // Usage mistakes are exit 2, not "unhealthy".
    for args in [&["ftp://127.0.0.1/"][..], &["https://127.0.0.1/readyz"]] {
        let out = healthcheck(args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", says(&out));
    }
    let out = healthcheck(&[], &[("UNSTICK_ADMIN", "off")]);
    assert_eq!(out.status.code(), Some(2), "{}", says(&out));
}

/// `unstick ARGS`, its output.
fn unstick(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run unstick")
}

/// Whether `program` runs here (a shell to check a completion script with).
fn have(program: &str) -> bool {
    Command::new(program)
        .arg("-c")
        .arg("exit 0")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn completions_name_every_subcommand_and_parse_in_their_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = unstick(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}: {}", says(&out));
        let script = String::from_utf8(out.stdout).unwrap();
        for word in ["serve", "chaos", "load", "healthcheck", "backend"] {
            assert!(script.contains(word), "{shell} completions lack {word}");
        }
        if !have(shell) {
            eprintln!("{shell} is not installed: its script is not parsed");
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("unstick.completion");
        std::fs::write(&file, &script).unwrap();
        // `-n`: read the script without running it (fish: --no-execute).
        let flag = if shell == "fish" {
            "--no-execute"
        } else {
            "-n"
        };
        let check = Command::new(shell).arg(flag).arg(&file).output().unwrap();
        assert!(
            check.status.success(),
            "{shell} rejects it: {}",
            says(&check)
        );
    }
    let out = unstick(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "{}", says(&out));
}

#[test]
fn man_renders_the_page_and_one_per_subcommand() {
    let out = unstick(&["man"]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    let page = String::from_utf8(out.stdout).unwrap();
    assert!(page.contains(".TH unstick 1"), "{page}");
    assert!(page.contains("healthcheck"), "{page}");

    let dir = tempfile::tempdir().unwrap();
    let out = unstick(&["man", "--dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "{}", says(&out));
    for name in [
        "unstick.1",
        "unstick-serve.1",
        "unstick-chaos.1",
        "unstick-healthcheck.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
        assert!(text.contains(".TH"), "{name}: {text}");
    }
    assert!(!dir.path().join("unstick-testkit-backend.1").exists());
    if have("groff") {
        let mut render = Command::new("groff")
            .args(["-man", "-Tutf8", "-ww", "-z"])
            .stdin(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        render
            .stdin
            .take()
            .unwrap()
            .write_all(page.as_bytes())
            .unwrap();
        let checked = render.wait_with_output().unwrap();
        assert!(
            checked.status.success() && checked.stderr.is_empty(),
            "{}",
            says(&checked)
        );
    }
}

// === the shipped ops files ===

fn repo_file(path: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn yaml_docs(path: &str) -> Vec<yaml_rust2::Yaml> {
    let text = std::fs::read_to_string(repo_file(path)).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `unstick check` with exactly `env` as its UNSTICK_* variables: the
/// configuration a file ships is one unstick accepts.
fn check_with_env(what: &str, env: &[(String, String)]) {
    let mut cmd = Command::new(BIN);
    cmd.arg("check");
    for (k, _) in std::env::vars().filter(|(k, _)| k.starts_with("UNSTICK_")) {
        cmd.env_remove(k);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "{what}: {env:?}: {}",
        says(&out)
    );
}

#[test]
fn the_systemd_unit_verifies_and_its_start_check_passes() {
    let unit = std::fs::read_to_string(repo_file("deploy/systemd/unstick.service")).unwrap();
    assert!(unit.contains("ExecReload=/bin/kill -HUP $MAINPID"));
    let config = repo_file("config/unstick.toml");
    let here = unit
        .replace("/usr/local/bin/unstick", BIN)
        .replace("/etc/unstick/unstick.toml", config.to_str().unwrap());
    let pre = here
        .lines()
        .find_map(|l| l.strip_prefix("ExecStartPre="))
        .expect("an ExecStartPre line");
    let words: Vec<&str> = pre.split_whitespace().collect();
    let out = Command::new(words[0]).args(&words[1..]).output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{pre}: {}", says(&out));

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unstick.service");
    std::fs::write(&file, here).unwrap();
    match Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&file)
        .output()
    {
        Ok(out) => assert!(
            out.status.success() && out.stderr.is_empty(),
            "systemd-analyze verify: {}",
            says(&out)
        ),
        Err(e) => eprintln!("systemd-analyze is not here ({e}): the unit is not verified"),
    }
}

/// A container's `env` list as pairs.
fn container_env(container: &yaml_rust2::Yaml) -> Vec<(String, String)> {
    container["env"]
        .as_vec()
        .map(|list| {
            list.iter()
                .map(|e| {
                    (
                        e["name"].as_str().unwrap().into(),
                        e["value"].as_str().unwrap().into(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn kubernetes_manifests_find_the_headless_service_and_probe_readyz() {
    let docs: Vec<_> = [
        "deploy/kubernetes/unstick.yaml",
        "deploy/kubernetes/demo-app.yaml",
    ]
    .iter()
    .flat_map(|p| yaml_docs(p))
    .collect();
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| {
                d["kind"].as_str() == Some(kind) && d["metadata"]["name"].as_str() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"))
    };
    let pod = &find("Deployment", "unstick")["spec"]["template"]["spec"];
    let c = &pod["containers"][0];
    let env = container_env(c);
    check_with_env("the unstick Deployment", &env);

    // Backends by DNS discovery on a headless Service of the app.
    let backends = &env.iter().find(|(k, _)| k == "UNSTICK_BACKENDS").unwrap().1;
    let (host, port) = backends.split_once(':').unwrap();
    let svc = find("Service", host);
    assert_eq!(svc["spec"]["clusterIP"].as_str(), Some("None"), "headless");
    assert_eq!(svc["spec"]["ports"][0]["port"].as_i64(), port.parse().ok());

    // Readiness on the admin listener's /readyz; a pause before SIGTERM
    // while endpoints go; a grace period longer than the drain.
    let admin_port = env
        .iter()
        .find(|(k, _)| k == "UNSTICK_ADMIN")
        .unwrap()
        .1
        .clone();
    assert_eq!(
        c["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/readyz")
    );
    let named = c["readinessProbe"]["httpGet"]["port"].as_str().unwrap();
    let ports = c["ports"].as_vec().unwrap();
    let port = ports
        .iter()
        .find(|p| p["name"].as_str() == Some(named))
        .unwrap();
    assert!(admin_port.ends_with(&format!(":{}", port["containerPort"].as_i64().unwrap())));
    assert!(
        !c["lifecycle"]["preStop"].is_badvalue(),
        "a preStop drain pause"
    );
    assert!(pod["terminationGracePeriodSeconds"].as_i64().unwrap() > 30 + 5);
}

#[test]
fn the_compose_stack_and_the_workflow_use_real_commands_and_files() {
    let compose = &yaml_docs("docker/compose.yaml")[0];
    let services = &compose["services"];
    let mut env: Vec<(String, String)> = services["unstick"]["environment"]
        .as_hash()
        .unwrap()
        .iter()
        .map(|(k, v)| (k.as_str().unwrap().into(), v.as_str().unwrap().into()))
        .collect();
    // The image's own ENV.
    env.push(("UNSTICK_LISTEN".into(), "0.0.0.0:8080".into()));
    env.push(("UNSTICK_ADMIN".into(), "0.0.0.0:8484".into()));
    check_with_env("docker/compose.yaml", &env);
    let backends = &env.iter().find(|(k, _)| k == "UNSTICK_BACKENDS").unwrap().1;
    let service = backends.split(':').next().unwrap();
    assert!(
        !services[service].is_badvalue(),
        "UNSTICK_BACKENDS names a compose service"
    );

    let workflow = &yaml_docs(".github/workflows/chaos.yml")[0];
    let jobs = workflow["jobs"].as_hash().unwrap();
    assert!(!jobs.is_empty());
    for (name, job) in jobs {
        let steps = job["steps"].as_vec().unwrap();
        let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
        assert!(runs.iter().any(|r| r.contains("unstick chaos")), "{name:?}");
        for r in runs {
            for word in r.split_whitespace() {
                if word.starts_with("config/") || word.starts_with("docker/") {
                    assert!(repo_file(word).exists(), "{name:?}: {word} is missing");
                }
            }
        }
    }
}
