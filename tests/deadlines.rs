//! Every client connection is on a clock: silent, slow, HTTP/2-only-PINGs and non-reading clients, and stalling backends, are cut off by the real binary at the configured timeouts.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use unstick::testkit::process::ChildUnstick;

mod support;
use support::h2::{ping, settings, PREFACE};

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_unstick"))
}

/// The longest any cut here may take: far above the configured timeouts,
/// so a busy machine does not fail a test, while a connection nobody cuts does.
const LIMIT: Duration = Duration::from_secs(20);

/// A raw backend: answers every request with `head` and `body`, then keeps
/// the connection open without another byte. Counts connections it saw
/// closed (a read or write that ended).
struct RawBackend {
    addr: std::net::SocketAddr,
    closed: Arc<AtomicUsize>,
}

impl RawBackend {
    /// `body_len` bytes are announced; `sent` of them are sent (all of them
    /// as fast as the client takes them if `sent` is None).
    async fn start(body_len: usize, sent: Option<usize>) -> RawBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let closed = Arc::new(AtomicUsize::new(0));
        let counter = closed.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let counter = counter.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 65536];
                    let mut got = Vec::new();
                    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {body_len}\r\n\r\n");
                    let mut ok = s.write_all(head.as_bytes()).await.is_ok();
                    let mut left = sent.unwrap_or(body_len);
                    let chunk = vec![b'x'; 65536];
                    while ok && left > 0 {
                        let n = left.min(chunk.len());
                        ok = s.write_all(&chunk[..n]).await.is_ok();
                        left -= n;
                    }
                    // Hold until the proxy lets go.
                    while ok {
                        ok = matches!(s.read(&mut buf).await, Ok(n) if n > 0);
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        RawBackend { addr, closed }
    }
}

/// unstick in front of `backend` with short timeouts (and `extra` env).
fn unstick(backend: std::net::SocketAddr, extra: &[(&str, &str)]) -> ChildUnstick {
    let mut env = vec![
        ("UNSTICK_TIMEOUTS_CLIENT_HEADER", "400ms"),
        ("UNSTICK_TIMEOUTS_CLIENT_IDLE", "30s"),
        ("UNSTICK_TIMEOUTS_CLIENT_STALL", "400ms"),
        ("UNSTICK_TIMEOUTS_UPSTREAM_STALL", "400ms"),
        ("UNSTICK_HEALTH_ACTIVE_ENABLED", "false"),
        ("UNSTICK_ACCESS_LOG", "off"),
    ];
    env.extend_from_slice(extra);
    ChildUnstick::spawn(bin(), &["--backend", &backend.to_string()], &env)
}

const FAST_PATH_OFF: (&str, &str) = ("UNSTICK_HTTP1_FAST_PATH", "false");

/// Reads until the server closes; what it sent and how long that took.
/// Panics if it is still open after [`LIMIT`].
async fn until_closed(s: &mut TcpStream) -> (Vec<u8>, Duration) {
    let start = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        match tokio::time::timeout_at(start + LIMIT, s.read(&mut buf)).await {
            Err(_) => panic!("still open after {LIMIT:?}"),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, start.elapsed()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < LIMIT, "{what}: not within {LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_silent_connection_gets_the_header_timeout_not_the_idle_one() {
    let b = RawBackend::start(2, None).await;
    for extra in [&[][..], &[FAST_PATH_OFF][..]] {
        let lb = unstick(b.addr, extra);
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        let (got, took) = until_closed(&mut s).await;
        assert!(got.is_empty(), "{:?}", String::from_utf8_lossy(&got));
        assert!(took >= Duration::from_millis(300), "closed after {took:?}");
    }
}

/// Reads until unstick closes `s`; the answer must be a 408 (`case` names
/// what was sent).
async fn assert_408_then_closed(s: &mut TcpStream, case: &str) {
    let (got, _) = until_closed(s).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{case}: {text:?}");
}

#[tokio::test]
async fn a_request_head_that_does_not_come_in_time_gets_408() {
    let b = RawBackend::start(2, None).await;
    for extra in [&[][..], &[FAST_PATH_OFF][..]] {
        let lb = unstick(b.addr, extra);
        // The first request, and one after a served request.
        for served_first in [false, true] {
            let mut s = TcpStream::connect(lb.addr).await.unwrap();
            if served_first {
                s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                    .await
                    .unwrap();
                let mut buf = [0u8; 4096];
                let mut got = Vec::new();
                while !got.ends_with(b"\r\n\r\nxx") {
                    let n = s.read(&mut buf).await.unwrap();
                    assert!(n > 0, "closed: {:?}", String::from_utf8_lossy(&got));
                    got.extend_from_slice(&buf[..n]);
                }
            }
            s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
            let case = format!("{extra:?} served first: {served_first}");
            assert_408_then_closed(&mut s, &case).await;
        }
    }
}

#[tokio::test]
async fn http2_connections_without_a_request_are_cut_at_the_header_timeout() {
    let b = RawBackend::start(2, None).await;
    let lb = unstick(b.addr, &[]);
    // The preface alone; the preface trickled; the preface and PINGs.
    let mut preface_only = TcpStream::connect(lb.addr).await.unwrap();
    preface_only.write_all(PREFACE).await.unwrap();
    preface_only.write_all(&settings()).await.unwrap();
    let trickle = tokio::spawn({
        let addr = lb.addr;
        async move {
            let mut s = TcpStream::connect(addr).await.unwrap();
            for b in PREFACE.iter().take(PREFACE.len() - 1) {
                if s.write_all(&[*b]).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            until_closed(&mut s).await.1
        }
    });
    let pings = tokio::spawn({
        let addr = lb.addr;
        async move {
            let s = TcpStream::connect(addr).await.unwrap();
            let (mut rx, mut tx) = s.into_split();
            let writer = tokio::spawn(async move {
                let mut out = PREFACE.to_vec();
                out.extend(settings());
                let _ = tx.write_all(&out).await;
                while tx.write_all(&ping()).await.is_ok() {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            let start = Instant::now();
            let mut buf = [0u8; 4096];
            loop {
                match tokio::time::timeout_at(start + LIMIT, rx.read(&mut buf)).await {
                    Err(_) => panic!("a PINGing connection is still open after {LIMIT:?}"),
                    Ok(Ok(0)) | Ok(Err(_)) => break,
                    Ok(Ok(_)) => {}
                }
            }
            writer.abort();
            start.elapsed()
        }
    });
    until_closed(&mut preface_only).await;
    trickle.await.unwrap();
    let took = pings.await.unwrap();
    assert!(took >= Duration::from_millis(300), "closed after {took:?}");
}

#[tokio::test]
async fn a_backend_that_stalls_mid_body_is_cut_off() {
    // 1,000 bytes announced, 10 sent.
    let b = RawBackend::start(1000, Some(10)).await;
    for extra in [&[][..], &[FAST_PATH_OFF][..]] {
        let lb = unstick(b.addr, extra);
        let before = b.closed.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        let (got, _) = until_closed(&mut s).await;
        let text = String::from_utf8_lossy(&got);
        assert!(text.starts_with("HTTP/1.1 200"), "{text:?}");
        assert!(text.ends_with("xxxxxxxxxx"), "{text:?}");
        wait_for("the backend connection closed", || {
            b.closed.load(Ordering::SeqCst) > before
        })
        .await;
    }
}

#[tokio::test]
async fn a_client_that_never_reads_lets_go_of_its_backend_connection() {
    // 1 GiB: far more than the sockets between can hold.
    let b = RawBackend::start(1 << 30, None).await;
    for extra in [&[][..], &[FAST_PATH_OFF][..]] {
        let lb = unstick(b.addr, extra);
        let before = b.closed.load(Ordering::SeqCst);
        let mut s = TcpStream::connect(lb.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .unwrap();
        // Never read: the backend's connection must be let go.
        wait_for("the backend connection closed", || {
            b.closed.load(Ordering::SeqCst) > before
        })
        .await;
        drop(s);
    }
}

/// A backend that reads what it is sent and never answers.
async fn silent_backend() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            });
        }
    });
    addr
}

#[tokio::test]
async fn a_request_body_that_stalls_gets_408() {
    let backend = silent_backend().await;
    for extra in [&[][..], &[FAST_PATH_OFF][..]] {
        let lb = unstick(backend, extra);
        for framing in ["content-length: 100", "transfer-encoding: chunked"] {
            let mut s = TcpStream::connect(lb.addr).await.unwrap();
            let head = format!("POST / HTTP/1.1\r\nHost: x\r\n{framing}\r\n\r\n");
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(b"5\r\nhello").await.unwrap();
            assert_408_then_closed(&mut s, &format!("{extra:?} {framing}")).await;
        }
    }
}

#[tokio::test]
async fn an_http2_ping_flood_whose_replies_are_never_read_is_closed() {
    let b = RawBackend::start(2, None).await;
    let lb = unstick(b.addr, &[]);
    let mut s = TcpStream::connect(lb.addr).await.unwrap();
    let mut flood = PREFACE.to_vec();
    flood.extend(settings());
    for _ in 0..1000 {
        flood.extend(ping());
        flood.extend(settings());
    }
    // Write PINGs and SETTINGS without reading until the server closes.
    let start = Instant::now();
    loop {
        assert!(start.elapsed() < LIMIT, "still open after {LIMIT:?}");
        match tokio::time::timeout(LIMIT, s.write_all(&flood)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => panic!("writes blocked for {LIMIT:?} and the connection is still open"),
        }
    }
}
