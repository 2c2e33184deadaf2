//! Hostile clients never take a backend out of rotation: a thousand malformed, truncated, abandoned and oversized requests of every kind, HTTP/1 and HTTP/2, while a well-behaved client sees no error.

mod support;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::backends::fake;
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

/// Both backends are in rotation, and none has a failure counted.
fn assert_healthy(app: &App, after: &str) {
    let snapshot = app.proxy.upstreams.load();
    assert_eq!(
        snapshot.healthy.len(),
        2,
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
