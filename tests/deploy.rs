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
