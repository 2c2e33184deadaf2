//! Hostile clients never take a backend out of rotation: a thousand malformed, truncated, abandoned and oversized requests of every kind, HTTP/1 and HTTP/2, while a well-behaved client sees no error.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::backends::fake;
use support::metrics::Scrape;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unstick::app::App;
use unstick::metrics::{ClientErrorKind, UPSTREAM_ERROR_KINDS};
use unstick::testkit::client;
use unstick::testkit::test_config;

/// Requests of each kind.
const EACH: usize = 1000;
/// Attack connections at once.
const PARALLEL: usize = 16;

/// What a hostile client does after it sends its bytes.
#[derive(Debug, Clone, Copy)]
enum Then {
    /// Reads the answer (if any) until the proxy closes.
    Read,
    /// Closes at once, before any answer.
    Leave,
    /// Reads the first bytes of the answer, then closes.
    LeaveMidResponse,
}

/// One kind of hostile HTTP/1 request.
struct Kind {
    name: &'static str,
    bytes: Vec<u8>,
    then: Then,
}

fn kind(name: &'static str, bytes: impl Into<Vec<u8>>, then: Then) -> Kind {
    Kind {
        name,
        bytes: bytes.into(),
        then,
    }
}

/// A chunked POST whose body starts with `good` valid bytes (so a large one
/// is already streaming to a backend) and then breaks with `bad`.
fn chunked_post(version: &str, good: usize, bad: &str) -> Vec<u8> {
    let mut r =
        format!("POST /echo HTTP/{version}\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .into_bytes();
    if good > 0 {
        r.extend_from_slice(format!("{good:x}\r\n").as_bytes());
        r.extend(std::iter::repeat_n(b'x', good));
        r.extend_from_slice(b"\r\n");
    }
    r.extend_from_slice(bad.as_bytes());
    r
}

fn kinds() -> Vec<Kind> {
    use Then::*;
    let long_line = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(9_000));
    let big_head = format!(
        "GET / HTTP/1.1\r\nHost: t\r\nX: {}\r\n\r\n",
        "a".repeat(9_000)
    );
    vec![
        // The six-POST outage: a chunked body the client broke.
        kind("chunk size not hex", chunked_post("1.1", 0, "zz\r\nabc\r\n0\r\n\r\n"), Read),
        kind("chunk size overflow", chunked_post("1.1", 0, "fffffffffffffffffff\r\nabc\r\n0\r\n\r\n"), Read),
        kind("chunk line bare LF", chunked_post("1.1", 3, "3\nabc\r\n0\r\n\r\n"), Read),
        // Broken after 4 KB already went to a backend (over the replay
        // buffer): the backend's connection holds half a request.
        kind("chunk broken mid-stream", chunked_post("1.1", 4_000, "zz\r\n"), Read),
        kind("chunked body cut short", chunked_post("1.1", 4_000, "10\r\nabc"), Leave),
        kind(
            "length body cut short",
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\nabc",
            Leave,
        ),
        kind(
            "HTTP/1.0 body cut short",
            "POST /echo HTTP/1.0\r\nHost: t\r\nContent-Length: 100000\r\n\r\nabc",
            Leave,
        ),
        kind("left before the answer", "GET /slow/20 HTTP/1.1\r\nHost: t\r\n\r\n", Leave),
        kind("left mid-response", "GET /bytes/65536 HTTP/1.1\r\nHost: t\r\n\r\n", LeaveMidResponse),
        kind("request line too long", long_line, Read),
        kind("head too large", big_head, Read),
        kind("two Host fields", "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", Read),
        kind(
            "both framings",
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Read,
        ),
        kind("garbage", &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n"[..], Read),
    ]
}

/// Sends one hostile request and does what `then` says; never fails (the
/// proxy may close at any point).
async fn hostile(addr: SocketAddr, bytes: &[u8], then: Then) {
    let Ok(mut s) = TcpStream::connect(addr).await else {
        return;
    };
    let _ = s.write_all(bytes).await;
    let mut buf = vec![0u8; 16 * 1024];
    match then {
        Then::Leave => {}
        Then::LeaveMidResponse => {
            let _ = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await;
        }
        Then::Read => {
            let _ = tokio::time::timeout(Duration::from_secs(10), async {
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            })
            .await;
        }
    }
}

/// HTTP/2 clients that break their own streams: one resets its stream
/// mid-body, one sends more body than its `content-length` says.
async fn hostile_h2(addr: SocketAddr, overlong: bool) {
    let Ok(tcp) = TcpStream::connect(addr).await else {
        return;
    };
    let Ok((send, conn)) = h2::client::handshake(tcp).await else {
        return;
    };
    tokio::spawn(conn);
    let Ok(mut send) = send.ready().await else {
        return;
    };
    let req = http::Request::post(format!("http://{addr}/echo"))
        .header("content-length", "10")
        .body(())
        .expect("a request");
    let Ok((response, mut stream)) = send.send_request(req, false) else {
        return;
    };
    if overlong {
        let _ = stream.send_data(Bytes::from_static(b"0123456789abcdef"), true);
    } else {
        let _ = stream.send_data(Bytes::from_static(b"abc"), false);
        tokio::time::sleep(Duration::from_millis(1)).await;
        stream.send_reset(h2::Reason::CANCEL);
    }
    let _ = tokio::time::timeout(Duration::from_secs(10), response).await;
}

/// Runs `n` hostile requests, `PARALLEL` at a time.
async fn flood<F, Fut>(n: usize, one: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut running = tokio::task::JoinSet::new();
    for _ in 0..n {
        if running.len() >= PARALLEL {
            running.join_next().await;
        }
        running.spawn(one());
    }
    while running.join_next().await.is_some() {}
}

/// A well-behaved client: GETs and small POSTs on one keep-alive
/// connection until told to stop; returns (requests, failures).
async fn well_behaved(addr: SocketAddr, stop: Arc<AtomicBool>) -> (u64, Vec<String>) {
    let mut conn = client::Conn::open(addr).await.expect("connects");
    let (mut done, mut failures) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let reply = if done % 2 == 0 {
            conn.get("/").await
        } else {
            conn.request(Method::POST, "/echo", &[], Bytes::from_static(b"hello"))
                .await
        };
        done += 1;
        match reply {
            Ok(r) if r.status.is_success() => {}
            Ok(r) => failures.push(format!("status {} {:?}", r.status, r.text())),
            Err(e) => {
                failures.push(e.to_string());
                conn = client::Conn::open(addr).await.expect("connects");
            }
        }
    }
    (done, failures)
}

/// Every kind, `EACH` times, against two healthy backends; then nothing
/// was ejected or blamed, and the well-behaved client saw no error.
async fn attack(fast_path: bool) {
    let backends = [fake("b0").await, fake("b1").await];
    let mut config = test_config(&[backends[0].addr, backends[1].addr]);
    config.http1_fast_path = fast_path;
    // Small limits, so large-request kinds stay cheap: a body over 1 KiB
    // streams to the backend as it comes, a head over 8 KiB is refused.
    config.retries.replay_buffer = 1024;
    config.limits.max_header_bytes = 8192;
    let app = App::start(config).await.unwrap();
    let addr = app.proxy_addr;

    let stop = Arc::new(AtomicBool::new(false));
    let good = tokio::spawn(well_behaved(addr, stop.clone()));
    let sent = Arc::new(AtomicU64::new(0));
    for k in kinds() {
        let bytes = Arc::new(k.bytes);
        flood(EACH, || {
            let (bytes, sent) = (bytes.clone(), sent.clone());
            async move {
                hostile(addr, &bytes, k.then).await;
                sent.fetch_add(1, Ordering::Relaxed);
            }
        })
        .await;
        assert_healthy(&app, k.name);
    }
    for overlong in [false, true] {
        flood(EACH, || hostile_h2(addr, overlong)).await;
        assert_healthy(
            &app,
            if overlong {
                "h2 overlong body"
            } else {
                "h2 reset"
            },
        );
    }
    stop.store(true, Ordering::Relaxed);
    let (done, failures) = good.await.unwrap();
    assert!(
        failures.is_empty(),
        "{} of {done} failed: {failures:?}",
        failures.len()
    );
    assert!(done > 0);

    let m = &app.proxy.metrics;
    let client = |k: ClientErrorKind| m.client_errors[k as usize].get();
    for k in [
        ClientErrorKind::BadRequest,
        ClientErrorKind::UriTooLong,
        ClientErrorKind::HeaderTooLarge,
    ] {
        assert!(client(k) >= EACH as u64, "{}: {}", k.as_str(), client(k));
    }
    assert!(client(ClientErrorKind::Aborted) >= EACH as u64);
    let counted: u64 = m.client_errors.iter().map(|c| c.get()).sum();
    assert!(
        counted > 10 * EACH as u64,
        "{counted} client errors counted"
    );
}

/// Every backend is in rotation, and none has a failure counted.
fn assert_healthy(app: &App, after: &str) {
    let snapshot = app.proxy.upstreams.load();
    assert_eq!(
        snapshot.healthy.len(),
        snapshot.all.len(),
        "after `{after}`: a backend left rotation"
    );
    for b in &snapshot.all {
        assert_eq!(
            b.consecutive_failures(),
            0,
            "after `{after}`: {} blamed",
            b.name
        );
        for kind in UPSTREAM_ERROR_KINDS {
            let n = app
                .proxy
                .metrics
                .upstream_errors
                .with_label_values(&[&b.name, kind])
                .get();
            assert_eq!(n, 0, "after `{after}`: {} has {n} `{kind}` errors", b.name);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_never_eject_a_backend_on_the_fast_path() {
    attack(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_clients_never_eject_a_backend_through_hyper() {
    attack(false).await;
}

/// A body far larger than socket buffers: the proxy is still sending it
/// when the client leaves.
const LARGE: &str = "/bytes/67108864";

/// Sends `GET LARGE` over HTTP/1.1, reads the response head, then resets
/// the connection.
async fn h1_leave_after_head(addr: SocketAddr) {
    let mut s = TcpStream::connect(addr).await.expect("connects");
    s.write_all(format!("GET {LARGE} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .await
        .expect("sends");
    let mut got = Vec::new();
    let mut buf = vec![0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the head within 10 s")
            .expect("reads");
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(
        got.starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&got)
    );
    support::many::reset(s);
}

/// Sends `GET LARGE` over HTTP/2, takes the response head, cancels the
/// stream; then a second request on the same connection still gets a 200.
async fn h2_leave_after_head(addr: SocketAddr) {
    let tcp = TcpStream::connect(addr).await.expect("connects");
    let (send, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    let mut send = send.ready().await.expect("ready");
    let get = |path: &str| {
        http::Request::get(format!("http://{addr}{path}"))
            .body(())
            .expect("a request")
    };
    let (response, _) = send.send_request(get(LARGE), true).expect("sent");
    let head = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("the head within 10 s")
        .expect("a response");
    assert_eq!(head.status(), http::StatusCode::OK);
    let (_, mut body) = head.into_parts();
    body.data()
        .await
        .expect("a first data frame")
        .expect("data");
    // Dropping the body stream of an open stream resets it (CANCEL).
    drop(body);
    let mut send = send.ready().await.expect("ready");
    let (response, _) = send.send_request(get("/"), true).expect("sent");
    let r = tokio::time::timeout(Duration::from_secs(10), response)
        .await
        .expect("an answer within 10 s")
        .expect("a response");
    assert_eq!(r.status(), http::StatusCode::OK);
    drop(send);
    conn.abort();
}

/// A client that leaves once its response head has been sent: the request
/// is counted as `error` in `unstick_requests_total` (not `2xx`) and as an
/// aborted client, and the backend is neither blamed nor ejected.
async fn leave_after_head(fast_path: bool, h2: bool) {
    let backend = fake("b0").await;
    let mut config = test_config(&[backend.addr]);
    config.http1_fast_path = fast_path;
    let app = App::start(config).await.unwrap();
    let name = app.proxy.upstreams.load().all[0].name.to_string();
    if h2 {
        h2_leave_after_head(app.proxy_addr).await;
    } else {
        h1_leave_after_head(app.proxy_addr).await;
    }
    let errors = [("backend", name.as_str()), ("code_class", "error")];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while Scrape::of(&app).value("unstick_requests_total", &errors) != Some(1.0) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no `error` counted: {}",
            Scrape::of(&app).text
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ok: &[(&str, &str)] = &[("backend", &name), ("code_class", "2xx")];
    let expected: &[(&[(&str, &str)], f64)] = if h2 {
        &[(&errors, 1.0), (ok, 1.0)]
    } else {
        &[(&errors, 1.0)]
    };
    let m = Scrape::of(&app);
    m.assert_family("unstick_requests_total", expected);
    let client_errors = &app.proxy.metrics.client_errors;
    assert_eq!(client_errors[ClientErrorKind::Aborted as usize].get(), 1);
    assert_eq!(client_errors.iter().map(|c| c.get()).sum::<u64>(), 1);
    assert_healthy(&app, "a client left after the head");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_the_head_is_its_fault_on_the_fast_path() {
    leave_after_head(true, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_leaves_after_the_head_is_its_fault_through_hyper() {
    leave_after_head(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2_client_that_cancels_after_the_head_is_its_fault() {
    leave_after_head(true, true).await;
}
