//! `unstick serve`: distribution, streaming, error classes, drain, config errors.

mod support;

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use support::backends::{addrs, fake, fakes};
use support::metrics::Scrape;
use support::raw::{closed_within, status_line};
use support::wait;
use support::{local, run, Files, Local, Serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unstick::app::App;
use unstick::config::Algorithm;
use unstick::testkit::client::{self, Conn};
use unstick::testkit::process::ChildProcess;
use unstick::testkit::{test_config, BackendOptions, DeadPort, FakeBackend};

/// Sends `total` GETs over `conns` keep-alive connections; all must be 200.
async fn drive(addr: SocketAddr, total: usize, conns: usize) {
    let per = total / conns;
    let mut tasks = Vec::new();
    for _ in 0..conns {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await.unwrap();
            for _ in 0..per {
                let r = c.get("/").await.unwrap();
                assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly() {
    round_robin_spreads_evenly_with(true).await;
}

/// The same through hyper only (`http1_fast_path = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_evenly_without_the_fast_path() {
    round_robin_spreads_evenly_with(false).await;
}

async fn round_robin_spreads_evenly_with(fast: bool) {
    let u = Local::start_with(3, |c| c.http1_fast_path = fast).await;
    drive(u.addr(), 3000, 6).await;
    for n in u.requests() {
        assert!((990..=1010).contains(&n), "backend got {n} of 3000");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weights_give_proportional_shares() {
    let u = Local::start_with(3, |c| {
        for (spec, w) in c.backends.iter_mut().zip([1, 2, 3]) {
            spec.weight = w;
        }
    })
    .await;
    drive(u.addr(), 6000, 6).await;
    for (n, want) in u.requests().into_iter().zip([1000u64, 2000, 3000]) {
        assert!(
            n.abs_diff(want) <= want / 100,
            "got {n}, want {want} +/- 1%"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connections_avoids_the_slow_backend() {
    let slow = FakeBackend::start(BackendOptions {
        id: "slow".into(),
        delay: Duration::from_millis(200),
        ..Default::default()
    })
    .await;
    let fast = fakes(2).await;
    let mut all = vec![slow.addr];
    all.extend(addrs(&fast));
    let mut config = test_config(&all);
    config.algorithm = Algorithm::LeastConnections;
    let app = local::start(config).await;
    let addr = app.proxy_addr;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut tasks = Vec::new();
    for _ in 0..16 {
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await.unwrap();
            while tokio::time::Instant::now() < deadline {
                assert_eq!(c.get("/").await.unwrap().status, StatusCode::OK);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total = slow.requests() + fast.iter().map(FakeBackend::requests).sum::<u64>();
    let share = slow.requests() as f64 / total as f64;
    assert!(total > 100, "only {total} requests");
    assert!(
        share < 0.10,
        "slow backend got {:.1}% of {total}",
        share * 100.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_ids() {
    forwarding_headers_and_request_ids_with(true).await;
}

/// The same through hyper only (`http1_fast_path = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_and_request_ids_without_the_fast_path() {
    forwarding_headers_and_request_ids_with(false).await;
}

async fn forwarding_headers_and_request_ids_with(fast: bool) {
    let u = Local::start_with(1, |c| c.http1_fast_path = fast).await;
    let app = &u.app;
    let r = client::request(
        app.proxy_addr,
        Method::GET,
        "/headers",
        &[
            ("connection", "keep-alive, x-hop"),
            ("x-hop", "secret"),
            ("keep-alive", "timeout=5"),
            ("x-forwarded-for", "10.1.2.3"),
            ("x-app", "kept"),
        ],
        Bytes::new(),
    )
    .await
    .unwrap();
    let seen = r.text();
    assert!(
        seen.contains("x-forwarded-for: 10.1.2.3, 127.0.0.1"),
        "{seen}"
    );
    assert!(seen.contains("x-forwarded-proto: http"), "{seen}");
    assert!(
        seen.contains(&format!("x-forwarded-host: {}", app.proxy_addr)),
        "{seen}"
    );
    assert!(seen.contains("x-app: kept"), "{seen}");
    assert!(!seen.contains("x-hop"), "{seen}");
    assert!(!seen.contains("keep-alive: timeout"), "{seen}");
    let id = r.headers["x-request-id"].to_str().unwrap().to_owned();
    assert!(seen.contains(&format!("x-request-id: {id}")), "{seen}");

    let r = client::request(
        app.proxy_addr,
        Method::GET,
        "/",
        &[("x-request-id", "client-id-42")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.headers["x-request-id"], "client-id-42");
}

/// Peak resident memory of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_50_mib_each_way_with_flat_memory() {
    const SIZE: usize = 50 << 20;
    let b = fake("b0").await;
    let rig = Serve::new().backends(&[b.addr]).start();
    let lb = &rig.lb;
    // Warm up so the baseline includes the runtime's steady state.
    for _ in 0..20 {
        client::get(lb.addr, "/").await.unwrap();
    }
    let before = peak_rss_kib(lb.pid());

    let upload = Bytes::from(vec![b'u'; SIZE]);
    let r = client::request(lb.addr, Method::POST, "/echo", &[], upload)
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), SIZE);

    let r = client::get(lb.addr, &format!("/bytes/{SIZE}"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.len(), SIZE);

    let growth_mib = (peak_rss_kib(lb.pid()).saturating_sub(before)) as f64 / 1024.0;
    eprintln!("proxy peak RSS: {before} KiB before, grew {growth_mib:.1} MiB");
    assert!(
        growth_mib < 16.0,
        "proxy peak memory grew {growth_mib:.1} MiB while streaming 50 MiB each way"
    );
}

/// A listener whose accept queue is full, so connects to it hang.
fn black_hole() -> (socket2::Socket, Vec<std::net::TcpStream>) {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .unwrap();
    s.listen(0).unwrap();
    let addr = s.local_addr().unwrap().as_socket().unwrap();
    let mut held = Vec::new();
    for _ in 0..16 {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
            Ok(c) => held.push(c),
            Err(_) => break,
        }
    }
    (s, held)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_class_has_its_status_and_body() {
    each_error_class_has_its_status_and_body_with(true).await;
}

/// The same through hyper only (`http1_fast_path = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_error_class_has_its_status_and_body_without_the_fast_path() {
    each_error_class_has_its_status_and_body_with(false).await;
}

async fn each_error_class_has_its_status_and_body_with(fast: bool) {
    let config_with = |backends: &[SocketAddr]| {
        let mut config = test_config(backends);
        config.http1_fast_path = fast;
        config
    };
    // No backend configured: 503 with Retry-After.
    let app = local::start(config_with(&[])).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.text().contains("no backend available"), "{}", r.text());

    // Nothing listens, retries off, another backend still in rotation:
    // 502 naming the cause and the backend.
    let dead_ports = [DeadPort::new(), DeadPort::new()];
    let dead: Vec<SocketAddr> = dead_ports.iter().map(|d| d.addr).collect();
    let mut config = config_with(&dead);
    config.retries.enabled = false;
    let app = local::start(config).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("could not connect"), "{}", r.text());
    let named = dead.iter().filter(|d| r.text().contains(&d.to_string()));
    assert_eq!(named.count(), 1, "{}", r.text());
    // The other refuses too: none is left in rotation, so 503 at once.
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    let again = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!((again.status, again.text()), (r.status, r.text()));

    // Every backend refuses, retries on: the first request already gets
    // the 503 (with Retry-After) of a balancer with none in rotation.
    let app = local::start(config_with(&dead)).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    assert!(r.text().contains("no backend available"), "{}", r.text());
    drop(dead_ports);

    // Reset before the response head (a POST is not retried): 502.
    let b = fakes(1).await;
    let mut config = config_with(&addrs(&b));
    config.timeouts.response_header = Duration::from_millis(300);
    let app = local::start(config).await;
    let r = client::request(app.proxy_addr, Method::POST, "/reset", &[], "x")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("closed the connection"), "{}", r.text());

    // No response head in time: 504.
    let r = client::get(app.proxy_addr, "/hang").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("no response within"), "{}", r.text());

    // Connect that never completes: 504 naming the connect.
    let (hole, _held) = black_hole();
    let hole_addr = hole.local_addr().unwrap().as_socket().unwrap();
    let mut config = config_with(&[hole_addr]);
    config.timeouts.connect = Duration::from_millis(300);
    let app = local::start(config).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert!(r.text().contains("connecting"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests() {
    malformed_and_oversized_requests_with(true).await;
}

/// The same through hyper only (`http1_fast_path = false`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_requests_without_the_fast_path() {
    malformed_and_oversized_requests_with(false).await;
}

async fn malformed_and_oversized_requests_with(fast: bool) {
    let u = Local::start_with(1, |c| c.http1_fast_path = fast).await;
    let app = &u.app;
    let line = status_line(app.proxy_addr, b"GARBAGE\r\n\r\n").await;
    assert!(line.contains(" 400 "), "{line}");
    let line = status_line(
        app.proxy_addr,
        b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
    )
    .await;
    assert!(line.contains(" 400 "), "{line}");
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "a".repeat(100 * 1024)
    );
    let line = status_line(app.proxy_addr, big.as_bytes()).await;
    assert!(line.contains(" 431 "), "{line}");
    let many: String = (0..200).map(|i| format!("X-H{i}: v\r\n")).collect();
    let line = status_line(
        app.proxy_addr,
        format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n").as_bytes(),
    )
    .await;
    assert!(line.contains(" 431 "), "{line}");
    // The server is still fine.
    assert_eq!(
        client::get(app.proxy_addr, "/").await.unwrap().status,
        StatusCode::OK
    );
    assert_eq!(u.requests(), [1]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_requests_in_flight_and_exits_0() {
    let b = Arc::new(fake("b0").await);
    let mut rig = Serve::new().backends(&[b.addr]).start();
    let addr = rig.lb.addr;
    let mut requests = Vec::new();
    for _ in 0..20 {
        requests.push(tokio::spawn(async move {
            client::get(addr, "/slow/1500").await
        }));
    }
    let in_flight = || {
        b.counters
            .in_flight
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    wait::until(
        "20 requests in flight",
        Duration::from_secs(5),
        async || in_flight() == 20,
    )
    .await;
    assert!(rig.lb.signal(libc::SIGTERM));

    // New connections are refused once the listener closes.
    let refused = wait::holds_within(Duration::from_secs(1), async || {
        TcpStream::connect(addr).await.is_err()
    })
    .await;
    assert!(refused, "new connections still accepted after SIGTERM");

    for r in requests {
        let r = r.await.unwrap().expect("request in flight completes");
        assert_eq!(r.status, StatusCode::OK);
        // Answered during the drain: the client is told not to reuse the connection.
        assert_eq!(r.headers["connection"], "close");
    }
    let status = rig
        .lb
        .exit_within(Duration::from_secs(10))
        .await
        .expect("unstick exits after the drain");
    assert_eq!(status.code(), Some(0));
}

#[test]
fn the_example_config_is_valid() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/config/unstick.toml");
    let out = run(&["check", "--config", example], &[]);
    let (code, err, out) = (out.code, out.stderr, out.stdout);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains("[timeouts]") && out.contains("connect = \"1s\""),
        "{out}"
    );
}

#[test]
fn config_mistakes_name_file_line_and_key() {
    let cases = [
        (
            "unknown",
            "listen = \"127.0.0.1:1\"\n[timeouts]\nconect = \"1s\"\n",
            ":3: key `timeouts.conect`",
            "unknown field",
        ),
        (
            "value",
            "[timeouts]\nconnect = \"soon\"\n",
            ":2: key `timeouts.connect`",
            "not a duration",
        ),
        (
            "type",
            "[retries]\n\nmax_per_request = \"two\"\n",
            ":3: key `retries.max_per_request`",
            "invalid type",
        ),
        (
            "range",
            "[health.active]\nrise = 0\n",
            ":2: key `health.active.rise`",
            "between 1 and",
        ),
        (
            "backend",
            "backends = [\"127.0.0.1:1\", \"nope\"]\n",
            ":1: key `backends[1]`",
            "HOST:PORT",
        ),
        ("syntax", "listen = \n", ":1:", "not valid TOML"),
        (
            "sticky",
            "[[backends]]\naddress = \"127.0.0.1:1\"\nsticky = true\n",
            ":3: key `backends[0].sticky`",
            "Redis",
        ),
        (
            "algorithm",
            "algorithm = \"ip-hash\"\n",
            ":1: key `algorithm`",
            "client identity",
        ),
        (
            "header",
            "listen = \"127.0.0.1:1\"\nbackend_header = \"x bad\"\n",
            ":2: key `backend_header`",
            "not a header name",
        ),
    ];
    let files = Files::new();
    for (name, text, location, message) in cases {
        let path = files.write(&format!("{name}.toml"), text);
        let check = run(&["check", "--config", path.to_str().unwrap()], &[]);
        let (code, err) = (check.code, check.stderr);
        assert_eq!(code, 2, "{name}: {err}");
        assert!(
            err.contains(&format!("{}{location}", path.display())),
            "{name}: {err}"
        );
        assert!(err.contains(message), "{name}: {err}");
        // serve refuses the same file the same way.
        let serve = run(&["serve", "--config", path.to_str().unwrap()], &[]);
        let (code, err2) = (serve.code, serve.stderr);
        assert_eq!(code, 2, "{name}: {err2}");
        assert!(err2.contains(message), "{name}: {err2}");
    }
}

#[test]
fn env_and_flags_override_the_file_and_name_their_origin() {
    let files = Files::new();
    let path = files.write("env.toml", "listen = \"127.0.0.1:1000\"\n");
    let path = path.to_str().unwrap();
    let out = run(
        &[
            "check",
            "--config",
            path,
            "--algorithm",
            "least-connections",
        ],
        &[
            ("UNSTICK_LISTEN", "127.0.0.1:2000"),
            ("UNSTICK_BACKENDS", "127.0.0.1:3001,127.0.0.1:3002=2"),
        ],
    );
    let text = out.stdout;
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(text.contains("listen = \"127.0.0.1:2000\""), "{text}");
    assert!(text.contains("algorithm = \"least-connections\""), "{text}");
    assert!(text.contains("127.0.0.1:3002=2"), "{text}");

    let out = run(
        &["check", "--config", path],
        &[("UNSTICK_TIMEOUTS_CONNECT", "fast")],
    );
    let err = out.stderr;
    assert_eq!(out.code, 2);
    assert!(
        err.contains("environment variable UNSTICK_TIMEOUTS_CONNECT"),
        "{err}"
    );
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let unstick = |args: &[&str]| {
        let out = run(args, &[]);
        (out.code, out.stdout, out.stderr)
    };
    let (code, _, err) = unstick(&["serve", "--no-such-flag"]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage"), "{err}");
    let (code, _, err) = unstick(&["frobnicate"]);
    assert_eq!(code, 2);
    assert!(err.contains("Usage"), "{err}");
    let (code, _, err) = unstick(&["serve", "--listen", "not-an-address", "--admin", "off"]);
    assert_eq!(code, 2);
    assert!(err.contains("flag --listen"), "{err}");
}

#[test]
fn child_process_helper_is_killed_on_drop() {
    let mut cmd = Command::new("sleep");
    cmd.arg("30");
    let p = ChildProcess::spawn(cmd).unwrap();
    let pid = p.pid();
    drop(p);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_request_head_is_cut_off() {
    let u = Local::start_with(1, |c| c.timeouts.client_header = Duration::from_millis(300)).await;
    let (app, b) = (&u.app, &u.backends);
    // Half a request head, then nothing (slowloris).
    let mut s = TcpStream::connect(app.proxy_addr).await.unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let started = tokio::time::Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "still open"
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert_eq!(b[0].requests(), 0);
    // A whole head in time is served.
    let line = status_line(app.proxy_addr, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert!(line.contains(" 200 "), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed() {
    let u = Local::start_with(1, |c| {
        c.timeouts.client_idle = Duration::from_millis(400);
        // The head timeout must not be what closes the idle connection.
        c.timeouts.client_header = Duration::from_secs(10);
    })
    .await;
    let (app, b) = (&u.app, &u.backends);
    let mut s = TcpStream::connect(app.proxy_addr).await.unwrap();
    let req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buf = [0u8; 4096];
    // Requests closer together than the idle timeout keep the connection.
    for _ in 0..3 {
        s.write_all(req).await.unwrap();
        let n = s.read(&mut buf).await.unwrap();
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    let idle_from = tokio::time::Instant::now();
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "still open"
    );
    // The server's idle clock starts when it has written the last response,
    // a little before this client has read it: allow for that.
    let idle = idle_from.elapsed() + Duration::from_millis(150);
    assert!(
        idle >= Duration::from_millis(350),
        "closed after only {idle:?}"
    );
    assert_eq!(b[0].requests(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_limit_wait_for_a_free_slot() {
    let u = Local::start_with(1, |c| c.limits.max_connections = 2).await;
    let (app, b) = (&u.app, &u.backends);
    let mut first = Conn::open(app.proxy_addr).await.unwrap();
    let mut second = Conn::open(app.proxy_addr).await.unwrap();
    assert_eq!(first.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(second.get("/").await.unwrap().status, StatusCode::OK);
    // The kernel accepts a third connection, but unstick does not serve it...
    let addr = app.proxy_addr;
    let third = tokio::spawn(async move { client::get(addr, "/").await });
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !third.is_finished(),
        "a third connection was served over the limit"
    );
    assert_eq!(b[0].requests(), 2);
    // ...until one of the two closes.
    drop(first);
    let r = tokio::time::timeout(Duration::from_secs(5), third)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused_until_idle_too_long() {
    let u = Local::start_with(1, |c| {
        c.timeouts.upstream_idle = Duration::from_millis(300);
        c.workers = 1;
    })
    .await;
    let (app, b) = (&u.app, &u.backends);
    let mut c = Conn::open(app.proxy_addr).await.unwrap();
    for _ in 0..5 {
        assert_eq!(c.get("/").await.unwrap().status, StatusCode::OK);
    }
    let connections = || {
        b[0].counters
            .connections
            .load(std::sync::atomic::Ordering::Relaxed)
    };
    assert_eq!(connections(), 1, "keep-alive to the backend");
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(c.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(connections(), 2, "an idle-expired connection is not reused");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_backend_header_is_opt_in() {
    let b = fakes(2).await;
    let app = local::start(test_config(&addrs(&b))).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert!(
        r.headers.get("x-unstick-backend").is_none(),
        "on by default"
    );

    let mut config = test_config(&addrs(&b));
    config.backend_header = Some("x-unstick-backend".into());
    let app = local::start(config).await;
    for _ in 0..4 {
        let r = client::get(app.proxy_addr, "/").await.unwrap();
        let named = r.headers["x-unstick-backend"].to_str().unwrap().to_owned();
        let answered = b
            .iter()
            .find(|f| f.addr.to_string() == named)
            .expect("a backend's address");
        assert_eq!(
            r.backend(),
            format!(
                "b{}",
                b.iter().position(|f| f.addr == answered.addr).unwrap()
            )
        );
    }
}

/// Open client connections on each worker, from the `unstick_worker_connections` gauge.
fn worker_connections(app: &App, workers: usize) -> Vec<f64> {
    let scrape = Scrape::of(app);
    (0..workers)
        .map(|w| scrape.sum("unstick_worker_connections", &[("worker", &w.to_string())]))
        .collect()
}

// Connections are spread evenly over the workers, whatever the kernel's
// `SO_REUSEPORT` hash makes of their addresses (64 connections from one
// client were split 40/25 without this).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_evenly_over_the_workers() {
    let u = Local::start_with(1, |c| c.workers = 2).await;
    let app = &u.app;
    let mut open = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(app.proxy_addr).await.unwrap();
        // An answer means the connection was accepted and placed.
        s.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .unwrap();
        let mut head = Vec::new();
        let mut buf = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("answered within 5 s")
                .unwrap();
            assert!(n > 0, "closed before answering");
            head.extend_from_slice(&buf[..n]);
        }
        assert!(
            head.starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&head)
        );
        open.push(s);
    }
    // One at a time, each goes to the worker with fewer: exactly even.
    assert_eq!(worker_connections(app, 2), [32.0, 32.0]);
    drop(open);
    let closed = wait::holds_within(Duration::from_secs(2), async || {
        worker_connections(app, 2) == [0.0, 0.0]
    })
    .await;
    assert!(
        closed,
        "connections still counted: {:?}",
        worker_connections(app, 2)
    );
}
