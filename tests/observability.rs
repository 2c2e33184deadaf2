//! Observability end to end: exact Prometheus counters, the backend API, readiness, drain and access logs.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use unstick::app::{AccessLoggerChoice, App};
use unstick::config::{AccessLog, BackendSpec, Config};
use unstick::metrics::Metrics;
use unstick::proxy::AccessLogger;
use unstick::testkit::client::{self, Reply};
use unstick::testkit::process::ChildUnstick;
use unstick::timefmt::Rfc3339;

mod support;
use support::admin::{self, backends, find};
use support::backends::fake;
use support::metrics::{self, scrape, Scrape};
use support::raw;

// --- harness ---------------------------------------------------------------

/// Access-log output captured in memory.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn lines(&self) -> Vec<String> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .expect("access log is UTF-8")
            .lines()
            .map(str::to_owned)
            .collect()
    }

    /// Waits (bounded) for `n` lines. A line is written after its request's
    /// metrics are recorded, so this also waits for the counters.
    async fn wait_lines(&self, n: usize) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let lines = self.lines();
            if lines.len() >= n || Instant::now() > deadline {
                assert_eq!(lines.len(), n, "access log lines:\n{}", lines.join("\n"));
                return lines
                    .iter()
                    .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
                    .collect();
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn config(backends: &[String]) -> Config {
    let mut c = Config::defaults();
    c.listen = "127.0.0.1:0".parse().unwrap();
    c.admin = Some("127.0.0.1:0".parse().unwrap());
    c.backends = backends
        .iter()
        .map(|b| BackendSpec::parse(b).unwrap())
        .collect();
    // Failures in these tests are on purpose; ejection by count is not under test.
    c.health.eject_after_failures = 100;
    c
}

/// Starts unstick in-process with a fresh registry and a captured JSON access log.
async fn start(config: Config) -> (App, SocketAddr, Captured) {
    let log = Captured::default();
    let logger = AccessLogger::new(AccessLog::Json, Box::new(log.clone()));
    let app = App::start_with(
        config,
        Metrics::new_unregistered(),
        AccessLoggerChoice::Custom(logger),
    )
    .await
    .expect("unstick starts");
    let admin = app.admin_addr.expect("admin listener");
    (app, admin, log)
}

/// An address where nothing listens (connect is refused).
/// A port where nothing listens, held (leaked) for the test's life so the
/// kernel cannot give it to the proxy under test.
async fn dead_address() -> SocketAddr {
    let dead = Box::leak(Box::new(unstick::testkit::DeadPort::new()));
    dead.addr
}

/// A backend that answers every request with a head promising 100 bytes,
/// then sends 10, then closes: a failure after the head. The pauses let
/// each part reach the client before the next.
async fn truncating_backend() -> (SocketAddr, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let c = c.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut chunk = [0u8; 4096];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&chunk[..n]),
                    }
                    if head.len() > 64 * 1024 {
                        return;
                    }
                }
                c.fetch_add(1, Ordering::Relaxed);
                let head = b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\nX-Backend-Id: t\r\n\r\n";
                for part in [&head[..], b"0123456789"] {
                    if s.write_all(part).await.is_err() {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                let _ = s.shutdown().await;
            });
        }
    });
    (addr, count)
}

async fn get(addr: SocketAddr, path: &str, id: &str) -> Reply {
    client::request(
        addr,
        Method::GET,
        path,
        &[("x-request-id", id)],
        Bytes::new(),
    )
    .await
    .unwrap_or_else(|e| panic!("GET {path}: {e}"))
}

async fn admin_post(admin: SocketAddr, path: &str) -> Reply {
    client::request(admin, Method::POST, path, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"))
}

async fn drain(admin: SocketAddr, backend: &str) -> serde_json::Value {
    admin::post(admin, &format!("/api/backends/{backend}/drain")).await
}

async fn undrain(admin: SocketAddr, backend: &str) -> serde_json::Value {
    admin::post(admin, &format!("/api/backends/{backend}/undrain")).await
}

// --- Prometheus text -------------------------------------------------------

/// Waits (bounded) until a gauge reads `want`; returns the last scrape.
async fn wait_gauge(admin: SocketAddr, name: &str, labels: &[(&str, &str)], want: f64) -> Scrape {
    metrics::wait_value(admin, name, labels, want, Duration::from_secs(10)).await
}

// --- tests -----------------------------------------------------------------

/// Known traffic (successes, a refused backend and its retry, a 503, resets
/// before the head, a header timeout, a failure after the head, no backend)
/// gives exact values in every metric family and in the access log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_access_log_count_known_traffic_exactly() {
    let t0 = SystemTime::now();
    let a = fake("a").await;
    let b = fake("b").await;
    let dead = dead_address().await;
    let (trunc, trunc_count) = truncating_backend().await;
    let (na, nb, nd, nt) = (
        a.addr.to_string(),
        b.addr.to_string(),
        dead.to_string(),
        trunc.to_string(),
    );
    let mut c = config(&[na.clone(), nb.clone(), nd.clone(), nt.clone()]);
    c.timeouts.response_header = Duration::from_secs(2);
    let (app, admin, log) = start(c).await;
    let proxy = app.proxy_addr;

    // Rotation: a and the dead backend.
    drain(admin, &nb).await;
    drain(admin, &nt).await;

    // 1. Four GETs: the one that meets the dead backend is retried on `a`.
    for i in 0..4 {
        let r = get(proxy, "/", &format!("r-ok-{i}")).await;
        assert_eq!((r.status, r.backend()), (StatusCode::OK, "a".into()));
    }
    let list = backends(admin).await;
    assert_eq!(find(&list, &nd)["state"], "ejected");
    assert_eq!(find(&list, &nd)["requests"], 1);
    assert_eq!(find(&list, &nd)["failures"], 1);
    assert!(find(&list, &nd)["last_error"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    // Out of reach from here on: a request left without a backend in
    // rotation would otherwise try the refused one again.
    drain(admin, &nd).await;
    // 2. A backend's own 503 passes through.
    let r = get(proxy, "/status/503", "r-503").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    // 3. A reset before the head: a POST is not retried.
    let post = client::request(
        proxy,
        Method::POST,
        "/reset",
        &[("x-request-id", "r-reset-post")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(post.status, StatusCode::BAD_GATEWAY);
    // 4. With `b` back, a GET that is reset is retried once, and reset again.
    undrain(admin, &nb).await;
    let reset_get = get(proxy, "/reset", "r-reset-get").await;
    assert_eq!(reset_get.status, StatusCode::BAD_GATEWAY);
    // 5. Only `a` again: no response head within 2 s (generous: every other answer is local and fast).
    drain(admin, &nb).await;
    let hang = get(proxy, "/hang", "r-hang").await;
    assert_eq!(hang.status, StatusCode::GATEWAY_TIMEOUT);
    // 6. Only the truncating backend: the head arrives, the body breaks.
    drain(admin, &na).await;
    undrain(admin, &nt).await;
    let raw = raw_request(
        proxy,
        "GET /truncate HTTP/1.1\r\nHost: x\r\nX-Request-Id: r-trunc\r\n\r\n",
    )
    .await;
    assert!(
        raw.starts_with(b"HTTP/1.1 200 OK\r\n"),
        "{}",
        String::from_utf8_lossy(&raw)
    );
    let body = &raw[raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4..];
    assert_eq!(body, b"0123456789");
    // 7. Nothing in rotation: 503 from unstick, and not ready.
    drain(admin, &nt).await;
    let none = get(proxy, "/", "r-none").await;
    assert_eq!(none.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        client::get(admin, "/readyz").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    undrain(admin, &na).await;
    undrain(admin, &nb).await;
    assert_eq!(
        client::get(admin, "/readyz").await.unwrap().status,
        StatusCode::OK
    );
    // One client connection stays open.
    let _open = TcpStream::connect(proxy).await.unwrap();

    let lines = log.wait_lines(10).await;
    let t1 = SystemTime::now();
    let by_id = |id: &str| -> &serde_json::Value {
        lines
            .iter()
            .find(|l| l["request_id"] == id)
            .unwrap_or_else(|| panic!("no log line for {id}"))
    };
    // The backend that answered last for the retried GET.
    let last_reset = by_id("r-reset-get")["backend"].as_str().unwrap().to_owned();
    assert!(last_reset == na || last_reset == nb, "{last_reset}");
    assert!(
        reset_get.text().contains(&last_reset),
        "{}",
        reset_get.text()
    );

    let s = wait_gauge(admin, "unstick_connections_open", &[], 1.0).await;
    let (a_5xx, b_5xx) = if last_reset == na {
        (4.0, 0.0)
    } else {
        (3.0, 1.0)
    };
    s.assert_family(
        "unstick_requests_total",
        &[
            (&[("backend", &na), ("code_class", "2xx")], 4.0),
            (&[("backend", &na), ("code_class", "5xx")], a_5xx),
            (&[("backend", &nb), ("code_class", "5xx")], b_5xx),
            (&[("backend", &nt), ("code_class", "error")], 1.0),
            (&[("backend", "none"), ("code_class", "5xx")], 1.0),
        ],
    );
    s.assert_family(
        "unstick_request_duration_seconds_count",
        &[
            (&[("code_class", "2xx")], 4.0),
            (&[("code_class", "5xx")], 5.0),
            (&[("code_class", "error")], 1.0),
        ],
    );
    // Response heads received: a's four 200s and its 503, and t's broken 200.
    s.assert_family(
        "unstick_upstream_duration_seconds_count",
        &[(&[("backend", &na)], 5.0), (&[("backend", &nt)], 1.0)],
    );
    // A reset on a pooled connection before any response byte looks like a
    // connection the backend had closed: counted as stale, not as its failure.
    let stale: f64 = (s.family("unstick_stale_connections_total").iter())
        .map(|(_, v)| v)
        .sum();
    s.assert_family(
        "unstick_upstream_errors_total",
        &[
            (&[("backend", &nd), ("kind", "connect")], 1.0),
            (&[("backend", &na), ("kind", "reset")], 2.0 - stale),
            (&[("backend", &nb), ("kind", "reset")], 1.0),
            (&[("backend", &na), ("kind", "timeout")], 1.0),
            (&[("backend", &nt), ("kind", "after_head")], 1.0),
        ],
    );
    s.assert_family(
        "unstick_retries_total",
        &[
            (&[("reason", "connect")], 1.0),
            (&[("reason", "reset")], 1.0),
        ],
    );
    s.assert_family("unstick_retry_budget_exhausted_total", &[(&[], 0.0)]);
    s.assert_family(
        "unstick_backend_healthy",
        &[
            (&[("backend", &na)], 1.0),
            (&[("backend", &nb)], 1.0),
            (&[("backend", &nd)], 0.0),
            (&[("backend", &nt)], 0.0),
        ],
    );
    for n in [&na, &nb, &nd, &nt] {
        s.assert_value("unstick_backend_in_flight", &[("backend", n)], 0.0);
    }
    s.assert_family(
        "unstick_ejections_total",
        &[
            (&[("backend", &nd), ("reason", "connect_refused")], 1.0),
            (&[("backend", &nb), ("reason", "admin")], 2.0),
            (&[("backend", &nt), ("reason", "admin")], 2.0),
            (&[("backend", &na), ("reason", "admin")], 1.0),
        ],
    );
    s.assert_family("unstick_connections_open", &[(&[], 1.0)]);
    s.assert_family(
        "unstick_build_info",
        &[(&[("version", env!("CARGO_PKG_VERSION"))], 1.0)],
    );
    // The backends saw what the counters say.
    assert_eq!(a.requests(), 8);
    assert_eq!(b.requests(), 1);
    assert_eq!(trunc_count.load(Ordering::Relaxed), 1);

    // The access log: every field, and the values of the requests made.
    let (start, end) = (Rfc3339(t0).to_string(), Rfc3339(t1).to_string());
    for l in &lines {
        for key in [
            "time",
            "client",
            "method",
            "path",
            "protocol",
            "status",
            "bytes",
            "duration",
            "backend",
            "attempts",
            "request_id",
            "error",
        ] {
            assert!(l.get(key).is_some(), "no {key} in {l}");
        }
        let time = l["time"].as_str().unwrap();
        assert!(time.len() == 24 && time.ends_with('Z'), "{time}");
        assert!(
            start.as_str() <= time && time <= end.as_str(),
            "{start} <= {time} <= {end}"
        );
        let client: SocketAddr = l["client"].as_str().unwrap().parse().unwrap();
        assert!(client.ip().is_loopback());
        assert_eq!(l["protocol"], "HTTP/1.1");
        assert!(l["duration"].as_f64().unwrap() >= 0.0);
    }
    let check = |id: &str,
                 method: &str,
                 path: &str,
                 status: u64,
                 backend: Option<&str>,
                 attempts: u64,
                 bytes: usize| {
        let l = by_id(id);
        assert_eq!(l["method"], method, "{l}");
        assert_eq!(l["path"], path, "{l}");
        assert_eq!(l["status"], status, "{l}");
        assert_eq!(l["backend"].as_str(), backend, "{l}");
        assert_eq!(l["attempts"], attempts, "{l}");
        assert_eq!(l["bytes"], bytes as u64, "{l}");
    };
    let retried: Vec<_> = (0..4)
        .filter(|i| by_id(&format!("r-ok-{i}"))["attempts"] == 2)
        .collect();
    assert_eq!(retried.len(), 1, "exactly one GET met the dead backend");
    for i in 0..4 {
        let attempts = if retried.contains(&i) { 2 } else { 1 };
        check(
            &format!("r-ok-{i}"),
            "GET",
            "/",
            200,
            Some(&na),
            attempts,
            2,
        );
        assert!(by_id(&format!("r-ok-{i}"))["error"].is_null());
    }
    check("r-503", "GET", "/status/503", 503, Some(&na), 1, 2);
    check(
        "r-reset-post",
        "POST",
        "/reset",
        502,
        Some(&na),
        1,
        post.body.len(),
    );
    check(
        "r-reset-get",
        "GET",
        "/reset",
        502,
        Some(&last_reset),
        2,
        reset_get.body.len(),
    );
    check("r-hang", "GET", "/hang", 504, Some(&na), 1, hang.body.len());
    assert!(by_id("r-hang")["duration"].as_f64().unwrap() >= 2.0);
    check("r-trunc", "GET", "/truncate", 200, Some(&nt), 1, 10);
    assert_eq!(by_id("r-trunc")["error"], "after_head");
    check("r-none", "GET", "/", 503, None, 0, none.body.len());

    app.drain();
    drop(_open);
    tokio::time::timeout(Duration::from_secs(10), app.wait())
        .await
        .expect("drains")
        .unwrap();
}

/// Sends raw bytes and reads until the server closes (or 10 s pass).
async fn raw_request(addr: SocketAddr, request: &str) -> Vec<u8> {
    raw::exchange(addr, request.as_bytes()).await
}

/// A spent retry budget is counted, and the retry is not made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spent_retry_budget_is_counted() {
    let a = fake("a").await;
    let dead = dead_address().await;
    let (na, nd) = (a.addr.to_string(), dead.to_string());
    let mut c = config(&[na.clone(), nd.clone()]);
    c.retries.budget_ratio = 0.0;
    c.retries.budget_min_per_second = 0;
    let (app, admin, log) = start(c).await;
    let mut statuses = Vec::new();
    for i in 0..2 {
        statuses.push(get(app.proxy_addr, "/", &format!("r-{i}")).await.status);
    }
    statuses.sort();
    assert_eq!(statuses, [StatusCode::OK, StatusCode::BAD_GATEWAY]);
    let lines = log.wait_lines(2).await;
    assert!(lines.iter().all(|l| l["attempts"] == 1), "{lines:?}");
    let s = scrape(admin).await;
    s.assert_family("unstick_retry_budget_exhausted_total", &[(&[], 1.0)]);
    // No retry was made: every reason is exported, at 0.
    s.assert_family("unstick_retries_total", &[]);
    s.assert_family(
        "unstick_upstream_errors_total",
        &[(&[("backend", &nd), ("kind", "connect")], 1.0)],
    );
    s.assert_family(
        "unstick_requests_total",
        &[
            (&[("backend", &na), ("code_class", "2xx")], 1.0),
            (&[("backend", &nd), ("code_class", "5xx")], 1.0),
        ],
    );
    assert_eq!(a.requests(), 1);
}

/// Draining a backend through the API: new requests go elsewhere, the one in
/// flight finishes; undrain brings it back. Bad requests get clear errors.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_api_takes_a_backend_out_and_lets_its_requests_finish() {
    let a = fake("a").await;
    let b = fake("b").await;
    let (na, nb) = (a.addr.to_string(), b.addr.to_string());
    let (app, admin, _log) = start(config(&[na.clone(), nb.clone()])).await;
    let proxy = app.proxy_addr;

    let list = backends(admin).await;
    assert_eq!(list.len(), 2);
    for (n, entry) in [(&na, find(&list, &na)), (&nb, find(&list, &nb))] {
        assert_eq!(entry["configured"], n.as_str());
        assert_eq!(entry["weight"], 1);
        assert_eq!(entry["healthy"], true);
        assert_eq!(entry["state"], "healthy");
        assert_eq!(entry["in_flight"], 0);
        assert_eq!(entry["requests"], 0);
        assert_eq!(entry["failures"], 0);
        assert!(entry["last_error"].is_null());
        assert!(entry["ejected_since"].is_null());
    }

    let slow = tokio::spawn(async move { client::get(proxy, "/slow/1500").await.unwrap() });
    // Which backend holds it?
    let deadline = Instant::now() + Duration::from_secs(5);
    let (busy, busy_id) = loop {
        let list = backends(admin).await;
        if let Some(e) = list.iter().find(|e| e["in_flight"] == 1) {
            let n = e["address"].as_str().unwrap().to_owned();
            let id = if n == na { "a" } else { "b" };
            break (n, id);
        }
        assert!(
            Instant::now() < deadline,
            "the slow request never started: {list:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let (busy_fake, idle_fake) = if busy == na { (&a, &b) } else { (&b, &a) };
    let idle_id = if busy_id == "a" { "b" } else { "a" };

    // Drain it, by its address percent-encoded as a client library would.
    let t0 = SystemTime::now();
    let drained = drain(admin, &busy.replace(':', "%3A")).await;
    let entry = &drained.as_array().unwrap()[0];
    assert_eq!(entry["address"], busy.as_str());
    assert_eq!(entry["state"], "drained");
    assert_eq!(entry["healthy"], false);
    assert_eq!(entry["in_flight"], 1);
    let since = entry["ejected_since"].as_str().expect("ejected_since set");
    assert!(Rfc3339(t0 - Duration::from_secs(1)).to_string().as_str() <= since);
    // Draining twice changes nothing and counts once.
    drain(admin, &busy).await;
    let s = scrape(admin).await;
    s.assert_value("unstick_backend_in_flight", &[("backend", &busy)], 1.0);
    s.assert_value("unstick_backend_healthy", &[("backend", &busy)], 0.0);
    s.assert_family(
        "unstick_ejections_total",
        &[(&[("backend", &busy), ("reason", "admin")], 1.0)],
    );

    let before = (busy_fake.requests(), idle_fake.requests());
    assert_eq!(before, (1, 0));
    for _ in 0..6 {
        let r = client::get(proxy, "/").await.unwrap();
        assert_eq!(
            (r.status, r.backend()),
            (StatusCode::OK, idle_id.to_owned())
        );
    }
    assert_eq!(
        busy_fake.requests(),
        1,
        "no new request reached the drained backend"
    );
    assert_eq!(idle_fake.requests(), 6);

    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .expect("the in-flight request finishes")
        .unwrap();
    assert_eq!(
        (r.status, r.backend()),
        (StatusCode::OK, busy_id.to_owned())
    );
    let list = backends(admin).await;
    assert_eq!(find(&list, &busy)["in_flight"], 0);
    assert_eq!(find(&list, &busy)["state"], "drained");

    // Undrain: back in rotation, round-robin gives it every other request.
    let back = undrain(admin, &busy).await;
    assert_eq!(back[0]["state"], "healthy");
    assert!(back[0]["ejected_since"].is_null());
    for _ in 0..4 {
        assert_eq!(
            client::get(proxy, "/").await.unwrap().status,
            StatusCode::OK
        );
    }
    assert_eq!(busy_fake.requests(), 3);
    assert_eq!(idle_fake.requests(), 8);

    // Errors: unknown address, wrong methods, unknown paths.
    let r = admin_post(admin, "/api/backends/10.9.9.9%3A1/drain").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(admin::body(&r)["error"]
        .as_str()
        .unwrap()
        .contains("10.9.9.9:1"));
    let r = client::get(admin, &format!("/api/backends/{busy}/drain"))
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "POST");
    assert!(admin::body(&r)["error"].is_string());
    let r = admin_post(admin, "/api/backends").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(r.headers["allow"], "GET, HEAD");
    let r = admin_post(admin, "/metrics").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    let r = admin_post(admin, &format!("/api/backends/{busy}/explode")).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(admin::body(&r)["error"].is_string());
    assert_eq!(
        client::get(admin, "/nope").await.unwrap().status,
        StatusCode::NOT_FOUND
    );
}

/// Undrain only undoes a drain; an IPv6 backend is addressed percent-encoded;
/// the API's counters follow failures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_api_addresses_and_health_states() {
    let dead = dead_address().await;
    let nd = dead.to_string();
    // Never sent traffic: only addressed through the API.
    let v6 = "[::1]:9";
    let (app, admin, _log) = start(config(&[nd.clone(), v6.to_owned()])).await;
    let drained = drain(admin, "%5B%3A%3A1%5D%3A9").await;
    assert_eq!(drained[0]["address"], v6);
    assert_eq!(drained[0]["configured"], v6);
    assert_eq!(drained[0]["state"], "drained");
    // The one backend in rotation refuses: none is left, so 503.
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");

    let list = backends(admin).await;
    let d = find(&list, &nd);
    assert_eq!(d["state"], "ejected");
    assert_eq!(d["healthy"], false);
    assert!(d["ejected_since"].is_string());
    assert!(d["last_error"]
        .as_str()
        .unwrap()
        .contains("connection refused"));
    // An ejected backend is not "drained": undrain refuses and says why.
    let r = admin_post(admin, &format!("/api/backends/{nd}/undrain")).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert!(admin::body(&r)["error"]
        .as_str()
        .unwrap()
        .contains("ejected"));
    // Draining it keeps it out even if it recovers; no ejection is counted
    // for a backend already out of rotation.
    assert_eq!(drain(admin, &nd).await[0]["state"], "drained");
    let s = scrape(admin).await;
    s.assert_family(
        "unstick_ejections_total",
        &[
            (&[("backend", &nd), ("reason", "connect_refused")], 1.0),
            (&[("backend", v6), ("reason", "admin")], 1.0),
        ],
    );
    assert_eq!(undrain(admin, &nd).await[0]["state"], "healthy");
}

/// /readyz: 503 with every backend down, 200 when one is back, 503 while the
/// process drains, and the admin listener keeps answering during the drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_backends_and_drain() {
    // All backends dead: ready until a request finds out (and gets the
    // 503 of a balancer with none in rotation), then not.
    let dead = dead_address().await;
    let (app, admin, _log) = start(config(&[dead.to_string()])).await;
    let ready = |admin| async move { client::get(admin, "/readyz").await.unwrap() };
    assert_eq!(ready(admin).await.status, StatusCode::OK);
    assert_eq!(
        client::get(app.proxy_addr, "/").await.unwrap().status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let r = ready(admin).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.text(), "no backend in rotation\n");
    app.drain();
    tokio::time::timeout(Duration::from_secs(10), app.wait())
        .await
        .expect("drains")
        .unwrap();

    // Live backends: drained through the API, then back.
    let a = fake("a").await;
    let (app, admin, _log) = start(config(&[a.addr.to_string()])).await;
    assert_eq!(ready(admin).await.status, StatusCode::OK);
    drain(admin, &a.addr.to_string()).await;
    assert_eq!(ready(admin).await.status, StatusCode::SERVICE_UNAVAILABLE);
    undrain(admin, &a.addr.to_string()).await;
    assert_eq!(ready(admin).await.status, StatusCode::OK);

    // Process drain with a request in flight: not ready, but still answering.
    let proxy = app.proxy_addr;
    let slow = tokio::spawn(async move { client::get(proxy, "/slow/1500").await.unwrap() });
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.counters.in_flight.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the slow request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.drain();
    let r = ready(admin).await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    );
    assert_eq!(
        client::get(admin, "/healthz").await.unwrap().status,
        StatusCode::OK
    );
    let s = scrape(admin).await;
    s.assert_value(
        "unstick_backend_in_flight",
        &[("backend", &a.addr.to_string())],
        1.0,
    );
    assert_eq!(
        find(&backends(admin).await, &a.addr.to_string())["in_flight"],
        1
    );
    let r = tokio::time::timeout(Duration::from_secs(10), slow)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r.status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), app.wait())
        .await
        .expect("drains")
        .unwrap();
}

/// The real binary: access log to stdout in each format (flag and env),
/// and the admin API and metrics on their own port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_writes_access_log_formats_to_stdout() {
    let bin = Path::new(env!("CARGO_BIN_EXE_unstick"));
    let a = fake("a").await;
    let backend = a.addr.to_string();

    // Common Log Format (flag).
    let u = ChildUnstick::spawn(bin, &["--backend", &backend, "--access-log", "common"], &[]);
    let admin = u.admin.expect("admin address");
    assert_ne!(admin, u.addr);
    let r = get(u.addr, "/bytes/1234?x=1", "clf-1").await;
    assert_eq!(r.body.len(), 1234);
    let line = u
        .process
        .stdout
        .wait_for("clf-1", Duration::from_secs(10))
        .expect("a common-format line");
    // 127.0.0.1 - - [10/Oct/2000:13:55:36 +0000] "GET /p HTTP/1.1" 200 1234 0.001 BACKEND 1 ID
    let (head, rest) = line.split_once(" [").unwrap();
    assert_eq!(head, "127.0.0.1 - -");
    let (date, rest) = rest.split_once("] ").unwrap();
    check_clf_date(date);
    let (request, rest) = rest.strip_prefix('"').unwrap().split_once("\" ").unwrap();
    assert_eq!(request, "GET /bytes/1234?x=1 HTTP/1.1");
    let fields: Vec<&str> = rest.split(' ').collect();
    assert_eq!(fields.len(), 6, "{line}");
    assert_eq!(fields[0], "200");
    assert_eq!(fields[1], "1234");
    assert!(fields[2].parse::<f64>().unwrap() >= 0.0);
    assert_eq!(fields[3], backend);
    assert_eq!(fields[4], "1");
    assert_eq!(fields[5], "clf-1");
    let s = scrape(admin).await;
    s.assert_family(
        "unstick_requests_total",
        &[(&[("backend", &backend), ("code_class", "2xx")], 1.0)],
    );
    let list = backends(admin).await;
    assert_eq!(find(&list, &backend)["requests"], 1);
    drop(u);

    // JSON (environment variable).
    let u = ChildUnstick::spawn(
        bin,
        &["--backend", &backend],
        &[("UNSTICK_ACCESS_LOG", "json")],
    );
    get(u.addr, "/status/404", "json-1").await;
    let line = u
        .process
        .stdout
        .wait_for("json-1", Duration::from_secs(10))
        .expect("a JSON line");
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["status"], 404);
    assert_eq!(v["backend"], backend.as_str());
    assert_eq!(v["path"], "/status/404");
    assert_eq!(v["attempts"], 1);
    drop(u);

    // Off: requests are served and counted, nothing is written.
    let u = ChildUnstick::spawn(bin, &["--backend", &backend, "--access-log", "off"], &[]);
    get(u.addr, "/", "off-1").await;
    let admin = u.admin.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = scrape(admin).await;
        let done = s
            .family("unstick_requests_total")
            .iter()
            .any(|(l, v)| l.get("code_class").map(String::as_str) == Some("2xx") && *v == 1.0);
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "request not counted");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        u.process.stdout.all().is_empty(),
        "{:?}",
        u.process.stdout.all()
    );
}

/// `10/Oct/2000:13:55:36 +0000`.
fn check_clf_date(date: &str) {
    let (day_month_year, rest) = date.split_at(11);
    let parts: Vec<&str> = day_month_year.split('/').collect();
    assert_eq!(parts.len(), 3, "{date}");
    assert!(
        parts[0].len() == 2 && parts[0].parse::<u32>().is_ok(),
        "{date}"
    );
    assert!(
        ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
            .contains(&parts[1]),
        "{date}"
    );
    assert!(
        parts[2].len() == 4 && parts[2].parse::<u32>().is_ok(),
        "{date}"
    );
    let time: Vec<&str> = rest.strip_prefix(':').unwrap().split(' ').collect();
    assert_eq!(time[1], "+0000", "{date}");
    let hms: Vec<u32> = time[0].split(':').map(|x| x.parse().unwrap()).collect();
    assert!(
        hms.len() == 3 && hms[0] < 24 && hms[1] < 60 && hms[2] < 61,
        "{date}"
    );
}

/// A client that leaves before its response: class `error` for the backend
/// it was waiting on, logged with status 0 and `client_closed`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_that_leaves_early_is_counted_as_error() {
    let a = fake("a").await;
    let na = a.addr.to_string();
    let (app, admin, log) = start(config(std::slice::from_ref(&na))).await;
    let mut s = TcpStream::connect(app.proxy_addr).await.unwrap();
    s.write_all(b"GET /slow/1000 HTTP/1.1\r\nHost: x\r\nX-Request-Id: r-gone\r\n\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while a.counters.in_flight.load(Ordering::Relaxed) == 0 {
        assert!(Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    drop(s);
    let lines = log.wait_lines(1).await;
    let l = &lines[0];
    assert_eq!(l["request_id"], "r-gone");
    assert_eq!(l["status"], 0);
    assert_eq!(l["error"], "client_closed");
    assert_eq!(l["backend"], na.as_str());
    assert_eq!(l["attempts"], 1);
    assert_eq!(l["bytes"], 0);
    let s = wait_gauge(admin, "unstick_connections_open", &[], 0.0).await;
    s.assert_family(
        "unstick_requests_total",
        &[(&[("backend", &na), ("code_class", "error")], 1.0)],
    );
    s.assert_family(
        "unstick_request_duration_seconds_count",
        &[(&[("code_class", "error")], 1.0)],
    );
    s.assert_value("unstick_backend_in_flight", &[("backend", &na)], 0.0);
    s.assert_family("unstick_connections_open", &[(&[], 0.0)]);
}

/// Access-log output that blocks while `blocked` is set (a stuck stdout).
#[derive(Clone, Default)]
struct Stuck {
    bytes: Arc<Mutex<Vec<u8>>>,
    blocked: Arc<std::sync::atomic::AtomicBool>,
}

impl Write for Stuck {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        while self.blocked.load(Ordering::Acquire) {
            std::thread::sleep(Duration::from_millis(1));
        }
        self.bytes.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// A stdout that does not keep up costs log lines, never requests; each
// dropped line is counted, and no line is lost without being counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_access_log_lines_are_counted() {
    let b = fake("b0").await;
    let out = Stuck::default();
    out.blocked.store(true, Ordering::Release);
    // About seven JSON lines fit before a worker's buffer is full.
    let logger = AccessLogger::with_limit(AccessLog::Json, Box::new(out.clone()), 2048);
    let app = App::start_with(
        config(&[b.addr.to_string()]),
        Metrics::new_unregistered(),
        AccessLoggerChoice::Custom(logger),
    )
    .await
    .expect("unstick starts");
    let admin = app.admin_addr.expect("admin listener");
    const SENT: usize = 40;
    for i in 0..SENT {
        let r = get(app.proxy_addr, "/", &format!("stuck-{i}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let dropped = scrape(admin)
        .await
        .family("unstick_access_log_dropped_total")[0]
        .1 as usize;
    assert!(dropped > 0 && dropped < SENT, "{dropped} dropped");

    out.blocked.store(false, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let written = out
            .bytes
            .lock()
            .unwrap()
            .iter()
            .filter(|b| **b == b'\n')
            .count();
        if written + dropped == SENT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{written} written, {dropped} dropped"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(app);
}
