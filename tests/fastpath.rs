//! The HTTP/1 fast path over real sockets: keep-alive and pipelining across handovers to hyper, request bodies, response framings, backend reuse, smuggling.

use std::net::SocketAddr;
use std::time::Duration;

use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unstick::app::App;
use unstick::testkit::client::{self, Conn};
use unstick::testkit::scripted::{Scripted, ScriptedBackend};
use unstick::testkit::{test_config, BackendOptions, FakeBackend};

mod support;
use support::backends::fake;
use support::raw::{get, Raw, READ_LIMIT};

/// `GET path` on a new connection, answered within [`READ_LIMIT`].
async fn fetch(addr: SocketAddr, path: &str) -> client::Reply {
    tokio::time::timeout(READ_LIMIT, client::get(addr, path))
        .await
        .expect("answered within 5 s")
        .unwrap()
}

// 1. One keep-alive connection: fast, handed to hyper, then on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connection_mixes_fast_and_handed_over_requests() {
    let b = fake("b0").await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;

    c.send(get("/").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));

    // A chunked upload is hyper's; sent in two writes so the body arrives
    // after the head was already read by the fast path.
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"6\r\n world\r\n0\r\n\r\n").await;
    let r = c.response("POST").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello world"));

    c.send(get("/headers").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200);
    assert!(r.text().contains("host: t\n"), "{}", r.text());
    assert_eq!(b.requests(), 3);
    assert_eq!(r.header("connection"), None);
}

// 2. Pipelining: several requests in one write, answered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_answered_in_order() {
    let b = fake("b0").await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();

    let mut c = Raw::open(app.proxy_addr).await;
    let three = format!(
        "{}{}{}",
        get("/status/201"),
        get("/status/202"),
        get("/status/203")
    );
    c.send(three.as_bytes()).await;
    for want in [201, 202, 203] {
        let r = c.response("GET").await;
        assert_eq!((r.status, r.text().as_str()), (want, "b0\n"));
    }

    // Pipelined across a handover: the bytes after the chunked request
    // (already read by the fast path) reach hyper too.
    c.send(
        format!(
            "{}POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n{}",
            get("/status/204"),
            get("/status/205")
        )
        .as_bytes(),
    )
    .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 204);
    let r = c.response("POST").await;
    assert_eq!((r.status, r.text().as_str()), (200, "abc"));
    let r = c.response("GET").await;
    assert_eq!(r.status, 205);

    // A request sent while the one before is still at the backend.
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(get("/slow/200").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 4\r\n\r\nping")
        .await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));
    let r = c.response("POST").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ping"));
}

// 3. Request bodies: within the replay buffer (fast) and over it (hyper).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_within_and_over_the_replay_buffer() {
    let b = fake("b0").await;
    let mut config = test_config(&[b.addr]);
    config.retries.replay_buffer = 1024;
    let app = App::start(config).await.unwrap();

    let mut c = Conn::open(app.proxy_addr).await.unwrap();
    for size in [0usize, 100, 1024, 1025, 10 * 1024] {
        let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
        let r = tokio::time::timeout(
            READ_LIMIT,
            c.request(Method::POST, "/echo", &[], body.clone()),
        )
        .await
        .expect("answered within 5 s")
        .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{size} bytes");
        assert_eq!(r.body, body, "{size} bytes echoed");
    }
    assert_eq!(b.requests(), 5);

    // A small body that arrives in pieces, after the head.
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(b"PUT /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n\r\n01234")
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.send(b"56789").await;
    let r = c.response("PUT").await;
    assert_eq!((r.status, r.text().as_str()), (200, "0123456789"));
    // The connection is still good.
    c.send(get("/").as_bytes()).await;
    assert_eq!(c.response("GET").await.status, 200);
}

/// The canned answers of the scripted backend, by path.
fn script(path: &str) -> Scripted {
    match path {
        "/chunked-trailers" => Scripted::pieces(
            &[
                b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\ntrailer: x-sum\r\n\r\n5\r\nhel",
                b"lo\r\n7;ext=1\r\n, world\r\n0\r\nx-sum: 42\r\n",
                b"\r\n",
            ],
            Duration::from_millis(20),
        ),
        "/close-delimited" => Scripted::pieces(
            &[
                b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nuntil ",
                b"the end",
            ],
            Duration::from_millis(20),
        )
        .then_close(),
        "/head" => Scripted::bytes("HTTP/1.1 200 OK\r\ncontent-length: 1234\r\n\r\n"),
        "/204" => Scripted::bytes("HTTP/1.1 204 No Content\r\n\r\n"),
        "/304" => Scripted::bytes("HTTP/1.1 304 Not Modified\r\netag: \"v1\"\r\n\r\n"),
        "/interim" => Scripted::bytes(
            "HTTP/1.1 100 Continue\r\n\r\n\
             HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n\
             HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nfinal",
        ),
        "/http10" => Scripted::bytes("HTTP/1.0 200 OK\r\ncontent-length: 4\r\n\r\nold\n"),
        "/extra" => Scripted::bytes("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\nJUNK"),
        "/bye" => Scripted::bytes(
            "HTTP/1.1 200 OK\r\ncontent-length: 4\r\nconnection: close\r\n\r\nbye\n",
        )
        .then_close(),
        // Keep-alive by its head, but the backend closes it anyway.
        "/quiet-close" => {
            Scripted::bytes("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n").then_close()
        }
        "/bad-chunks" => {
            Scripted::bytes("HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nZZ\r\n")
        }
        "/cut" => Scripted::bytes("HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789")
            .then_close(),
        // Fields the proxy keeps, drops or replaces, in a head it passes on
        // from where it was parsed.
        "/plain-head" => Scripted::bytes(
            "HTTP/1.1 201 Created\r\nServer: scripted\r\nKeep-Alive: timeout=5\r\n\
             X-Request-Id: from-backend\r\nConnection: Keep-Alive\r\nX-Unstick-Backend: forged\r\n\
             Proxy-Connection: keep-alive\r\nContent-Length: 3\r\nX-Custom: a, b\r\n\
             Upgrade: h2c\r\nX-Custom: c\r\n\r\nok\n",
        ),
        // A `Connection` that names another header: scrubbed over a HeaderMap.
        "/named-hop" => Scripted::bytes(
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nX-Kept: 2\r\n\
             X-Request-Id: from-backend\r\nContent-Length: 3\r\n\r\nok\n",
        ),
        _ => Scripted::bytes("HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"),
    }
}

async fn scripted() -> ScriptedBackend {
    ScriptedBackend::start(|req| script(req.path())).await
}

// 4. Response framings the backend chooses, framed again for the client.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_response_with_trailers_is_framed_again() {
    let b = scripted().await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    // A client that takes trailers gets the announced ones.
    c.send(b"GET /chunked-trailers HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n")
        .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("transfer-encoding"), Some("chunked"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("trailer"), Some("x-sum"));
    assert_eq!(r.text(), "hello, world");
    assert_eq!(r.trailers, vec![("x-sum".to_owned(), "42".to_owned())]);
    // One that does not gets none; the connection is still usable, and so
    // was the backend's.
    c.send(get("/chunked-trailers").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!(
        (r.text().as_str(), r.header("trailer")),
        ("hello, world", None)
    );
    assert!(r.trailers.is_empty(), "{:?}", r.trailers);
    c.send(get("/").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_eq!(b.accepts(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_delimited_response_closes_the_client_connection() {
    let b = scripted().await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(get("/close-delimited").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(r.header("content-length"), None);
    assert_eq!(r.header("transfer-encoding"), None);
    assert_eq!(r.text(), "until the end");
    assert!(c.until_closed().await.is_empty());
    // The next connection gets a new backend connection.
    let r = fetch(app.proxy_addr, "/").await;
    assert_eq!(r.text(), "ok\n");
    assert_eq!(b.accepts(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_responses_keep_the_connection() {
    let b = scripted().await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;

    c.send(b"HEAD /head HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let r = c.response("HEAD").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-length"), Some("1234"));

    c.send(get("/204").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 204);

    c.send(get("/304").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 304);
    assert_eq!(r.header("etag"), Some("\"v1\""));

    // Interim responses are not forwarded: only the final one.
    c.send(get("/interim").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "final"));
    assert_eq!(r.header("link"), None);

    // No stray bytes came after any of them: the next response parses.
    c.send(get("/").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
    // All on one backend connection.
    assert_eq!(b.accepts(), 1);
}

// 5. Backend connections: kept alive, and replaced when the backend closes
// or leaves the connection in an unknown state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_are_reused() {
    let b = fake("b0").await;
    let mut config = test_config(&[b.addr]);
    // One worker: idle backend connections are kept per worker.
    config.workers = 1;
    let app = App::start(config).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    for _ in 0..50 {
        c.send(get("/").as_bytes()).await;
        assert_eq!(c.response("GET").await.status, 200);
    }
    let connections = b
        .counters
        .connections
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(connections, 1, "50 requests, one backend connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_connections_that_cannot_be_reused_are_replaced() {
    let b = scripted().await;
    let mut config = test_config(&[b.addr]);
    config.workers = 1;
    let app = App::start(config).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    // `Connection: close` from the backend, an HTTP/1.0 answer, bytes after
    // the body: each backend connection is used once, and the client never
    // notices.
    for (path, body) in [("/bye", "bye\n"), ("/http10", "old\n"), ("/extra", "ok\n")] {
        let before = b.accepts();
        for _ in 0..3 {
            c.send(get(path).as_bytes()).await;
            let r = c.response("GET").await;
            assert_eq!((r.status, r.text().as_str()), (200, body), "{path}");
            assert_eq!(r.version, "HTTP/1.1", "{path}");
            assert_eq!(r.header("connection"), None, "{path}");
        }
        assert_eq!(
            b.accepts() - before,
            3,
            "{path}: a new connection each time"
        );
    }
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
    // A pooled connection the backend closed while idle is not used.
    let before = b.accepts();
    for _ in 0..3 {
        c.send(get("/quiet-close").as_bytes()).await;
        let r = c.response("GET").await;
        assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
        // Time for the backend's FIN to arrive.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(b.accepts() - before, 3, "/quiet-close");
    // A well-behaved answer reuses again.
    let before = b.accepts();
    for _ in 0..3 {
        c.send(get("/").as_bytes()).await;
        assert_eq!(c.response("GET").await.text(), "ok\n");
    }
    assert!(b.accepts() - before <= 1);
}

// 6. The backend dies mid-body.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_closing_mid_body_truncates_and_closes_the_client() {
    let b = scripted().await;
    // A response passed on as it comes (not held until whole).
    let mut config = test_config(&[b.addr]);
    config.retries.response_buffer = 0;
    let app = App::start(config).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(get("/cut").as_bytes()).await;
    let status = c.line().await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    let mut length = None;
    loop {
        let line = c.line().await;
        if line.is_empty() {
            break;
        }
        if let Some(v) = line.strip_prefix("content-length: ") {
            length = Some(v.to_owned());
        }
    }
    assert_eq!(length.as_deref(), Some("1000"));
    assert_eq!(c.until_closed().await, b"0123456789");

    let metrics = fetch(app.admin_addr.unwrap(), "/metrics").await.text();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("unstick_upstream_errors_total")
                && l.contains("kind=\"after_head\"")
                && l.ends_with(" 1")),
        "{metrics}"
    );
    // Later requests are fine.
    let r = fetch(app.proxy_addr, "/").await;
    assert_eq!(r.text(), "ok\n");
}

// 7. Bad requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_and_the_connection_closed() {
    let b = fake("b0").await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let smuggled = get("/smuggled");
    let cases = [
        // Both framings: the classic smuggling vector.
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        format!(
            "POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nContent-Length: 40\r\n\r\n0\r\n\r\n{smuggled}"
        ),
        // Two different lengths.
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!{smuggled}"),
        // A length that is not a number.
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello{smuggled}"),
        // Chunked twice.
        format!("POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n{smuggled}"),
        // Transfer-Encoding on HTTP/1.0.
        format!("POST /echo HTTP/1.0\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n{smuggled}"),
    ];
    for case in &cases {
        let mut c = Raw::open(app.proxy_addr).await;
        c.send(case.as_bytes()).await;
        let r = c.response("POST").await;
        assert_eq!(r.status, 400, "{case}");
        assert_eq!(r.header("connection"), Some("close"), "{case}");
        let rest = c.until_closed().await;
        assert!(
            rest.is_empty(),
            "{case}: {}",
            String::from_utf8_lossy(&rest)
        );
    }
    assert_eq!(b.requests(), 0, "nothing reached the backend");
}

// 8. HTTP/1.0 requests are hyper's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_requests_are_served() {
    let b = fake("b0").await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();

    let mut c = Raw::open(app.proxy_addr).await;
    c.send(b"GET / HTTP/1.0\r\n\r\n").await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));
    assert!(c.until_closed().await.is_empty(), "HTTP/1.0 closes");

    // After a fast HTTP/1.1 request on the same connection (handed over
    // mid-connection, with its body).
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(get("/").as_bytes()).await;
    assert_eq!(c.response("GET").await.status, 200);
    c.send(b"POST /echo HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi")
        .await;
    let r = c.response("POST").await;
    assert_eq!((r.version.as_str(), r.status), ("HTTP/1.0", 200));
    assert_eq!(r.text(), "hi");
    assert!(c.until_closed().await.is_empty(), "HTTP/1.0 closes");
    assert_eq!(b.requests(), 3);
}

// Expect: 100-continue is hyper's too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_continue_is_answered() {
    let b = fake("b0").await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(get("/").as_bytes()).await;
    assert_eq!(c.response("GET").await.status, 200);
    c.send(b"POST /echo HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n")
        .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 100);
    c.send(b"hello").await;
    let r = c.response("POST").await;
    assert_eq!((r.status, r.text().as_str()), (200, "hello"));
}

// 9. Header policy on the fast path.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_policy_applies_on_the_fast_path() {
    let b = FakeBackend::start(BackendOptions {
        id: "b0".into(),
        set_cookies: vec!["AWSALB=pinned; Path=/".into(), "app=1; Path=/".into()],
        ..Default::default()
    })
    .await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(
        b"GET /headers HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 10.0.0.1\r\n\
          Connection: x-hop\r\nX-Hop: secret\r\nCookie: AWSALB=old; app=1\r\n\r\n",
    )
    .await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 200);
    let seen = r.text();
    assert!(
        seen.contains("x-forwarded-for: 10.0.0.1, 127.0.0.1\n"),
        "{seen}"
    );
    assert!(!seen.contains("x-hop"), "{seen}");
    let id = r.header("x-request-id").expect("a request id").to_owned();
    assert!(seen.contains(&format!("x-request-id: {id}\n")), "{seen}");
    assert!(seen.contains("cookie: app=1\n"), "{seen}");
    assert!(!seen.contains("AWSALB"), "{seen}");
    assert_eq!(r.all("set-cookie"), vec!["app=1; Path=/"]);
}

// A client that asks to close gets `connection: close` and a closed connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_close_from_the_client_is_honoured() {
    let b = fake("b0").await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(
        format!(
            "GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n{}",
            get("/never")
        )
        .as_bytes(),
    )
    .await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));
    assert_eq!(r.header("connection"), Some("close"));
    assert!(c.until_closed().await.is_empty());
    assert_eq!(b.requests(), 1);
}

// Request targets and bodies as the backend receives them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_reach_the_backend_in_origin_form() {
    let b = scripted().await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    let cases: [(&str, &str); 5] = [
        (
            "GET /a/b?x=1&y=2 HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /a/b?x=1&y=2 HTTP/1.1",
        ),
        (
            "GET http://t/abs?q HTTP/1.1\r\nHost: t\r\n\r\n",
            "GET /abs?q HTTP/1.1",
        ),
        (
            "OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n",
            "OPTIONS * HTTP/1.1",
        ),
        ("GET / HTTP/1.1\r\nHost: t\r\n\r\n", "GET / HTTP/1.1"),
        (
            "DELETE /d HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
            "DELETE /d HTTP/1.1",
        ),
    ];
    for (request, line) in cases {
        c.send(request.as_bytes()).await;
        let r = c.response("GET").await;
        assert_eq!(r.status, 200, "{request}");
        let got = b.received().pop().unwrap();
        assert_eq!(got.head.lines().next(), Some(line), "{}", got.head);
        assert!(got.header("host").is_some(), "{}", got.head);
    }
    let got = b.received().pop().unwrap();
    assert_eq!(got.header("content-length"), Some("3"));
    assert_eq!(&got.body[..], b"abc");
}

// Error answers keep the client connection, and the per-connection timers
// stay right from one request to the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_and_timeouts_on_a_kept_connection() {
    let b = fake("b0").await;
    let mut config = test_config(&[b.addr]);
    config.timeouts.response_header = Duration::from_millis(300);
    let app = App::start(config).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    for _ in 0..2 {
        let started = tokio::time::Instant::now();
        c.send(get("/hang").as_bytes()).await;
        let r = c.response("GET").await;
        assert_eq!(r.status, 504, "{}", r.text());
        assert!(started.elapsed() >= Duration::from_millis(250));
        assert_eq!(r.header("connection"), None);
        // A response slower than the last deadline but within its own.
        c.send(get("/slow/150").as_bytes()).await;
        let r = c.response("GET").await;
        assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));
    }
    // Reset before the head: a POST is not retried: 502, and the
    // connection goes on.
    c.send(b"POST /reset HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx")
        .await;
    let r = c.response("POST").await;
    assert_eq!(r.status, 502, "{}", r.text());
    c.send(get("/").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));
}

// An error answer to HEAD carries no body, and the connection goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_answers_to_head_have_no_body() {
    let b = fake("b0").await;
    let mut config = test_config(&[b.addr]);
    config.timeouts.response_header = Duration::from_millis(300);
    let app = App::start(config).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(b"HEAD /hang HTTP/1.1\r\nHost: t\r\n\r\n").await;
    let r = c.response("HEAD").await;
    assert_eq!(r.status, 504);
    c.send(get("/").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "b0\n"));
    assert!(c.buf.is_empty(), "stray bytes: {:?}", c.buf);
}

// Many pipelining clients at once over shared backend pools: every response
// is the one asked for, whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pipelining_clients_get_their_own_responses() {
    let b0 = fake("b0").await;
    let b1 = fake("b1").await;
    let app = App::start(test_config(&[b0.addr, b1.addr])).await.unwrap();
    let addr = app.proxy_addr;
    let mut tasks = Vec::new();
    for client in 0..8usize {
        tasks.push(tokio::spawn(async move {
            let mut c = Raw::open(addr).await;
            for round in 0..10usize {
                // Ten requests in one write; sizes differ per request.
                let sizes: Vec<usize> = (0..10)
                    .map(|i| (client * 7919 + round * 104_729 + i * 31) % 20_000)
                    .collect();
                let batch: String = sizes.iter().map(|n| get(&format!("/bytes/{n}"))).collect();
                c.send(batch.as_bytes()).await;
                for n in sizes {
                    let r = c.response("GET").await;
                    assert_eq!(r.status, 200);
                    assert_eq!(r.body.len(), n, "client {client} round {round}");
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(b0.requests() + b1.requests(), 800);
}

// A malformed chunked body noticed before anything reached the client: a
// 502 naming it, and the client connection stays usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_body_before_the_head_is_sent_is_a_502() {
    let b = scripted().await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;
    c.send(get("/bad-chunks").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!(r.status, 502, "{}", r.text());
    assert!(r.text().contains("chunked"), "{}", r.text());
    c.send(get("/").as_bytes()).await;
    assert_eq!(c.response("GET").await.text(), "ok\n");
}

// An HTTP/2 prior-knowledge preface that arrives in pieces still reaches
// hyper's HTTP/2 server (which answers with its SETTINGS frame).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_http2_preface_is_handed_to_hyper() {
    let b = scripted().await;
    let app = App::start(test_config(&[b.addr])).await.unwrap();
    let mut s = TcpStream::connect(app.proxy_addr).await.unwrap();
    s.write_all(b"PRI * HTTP/2").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(b".0\r\n\r\nSM\r\n\r\n").await.unwrap();
    // Our own (empty) SETTINGS frame.
    s.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    let mut head = [0u8; 9];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut head))
        .await
        .expect("an answer")
        .expect("an HTTP/2 frame, not a closed connection");
    assert_eq!(head[3], 4, "a SETTINGS frame: {head:?}");
}

// Response heads: passed on from where they were parsed when only fields
// need dropping and adding, scrubbed over a HeaderMap otherwise; either way
// the client sees the same policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_heads_are_scrubbed_the_same_either_way() {
    let b = scripted().await;
    let mut config = test_config(&[b.addr]);
    config.backend_header = Some("x-unstick-backend".into());
    let app = App::start(config).await.unwrap();
    let mut c = Raw::open(app.proxy_addr).await;

    c.send(get("/plain-head").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (201, "ok\n"));
    let names: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "server",
            "content-length",
            "x-custom",
            "x-custom",
            "x-request-id",
            "x-unstick-backend"
        ],
        "{r:?}"
    );
    assert_eq!(r.all("x-custom"), ["a, b", "c"]);
    let id = r.header("x-request-id").unwrap().to_owned();
    assert_ne!(id, "from-backend");
    assert_eq!(
        r.header("x-unstick-backend"),
        Some(b.addr.to_string().as_str())
    );

    c.send(get("/named-hop").as_bytes()).await;
    let r = c.response("GET").await;
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    assert_eq!(r.header("x-secret"), None, "{r:?}");
    assert_eq!(r.header("connection"), None, "{r:?}");
    assert_eq!(r.header("x-kept"), Some("2"));
    assert_eq!(r.all("x-request-id").len(), 1);
    assert_ne!(r.header("x-request-id"), Some("from-backend"));
    assert_eq!(r.all("x-unstick-backend"), [b.addr.to_string()]);
    // Both responses kept the connection, on both sides.
    assert_eq!(b.accepts(), 1);
}

/// A head as the backend got it: the request line, then its fields (names
/// in lower case) sorted, so that field order does not count.
type Normalized = (String, Vec<(String, String)>);

/// The [`Normalized`] form of a head.
fn normalized(head: &str) -> Normalized {
    let mut lines = head.lines();
    let line = lines.next().unwrap_or_default().to_owned();
    let mut fields: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    fields.sort();
    (line, fields)
}

// Request heads: passed on from where they were parsed when only fields
// need dropping and adding, rewritten over a HeaderMap otherwise. Either
// way the backend gets what the hyper path (fast path off) sends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_heads_are_rewritten_the_same_either_way() {
    let common = "User-Agent: t/1\r\nAccept: a\r\nACCEPT: b\r\nX-Request-Id: rid-1\r\n";
    let cases = [
        // In place: hop-by-hop fields and forged forwarding fields dropped,
        // X-Forwarded-For appended to, a cookie with no affinity in it kept.
        format!(
            "GET /p?q=1&r=%20 HTTP/1.1\r\nHost: T.example\r\n{common}\
             X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n\
             X-Forwarded-Host: forged\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\n\
             Proxy-Connection: keep-alive\r\nProxy-Authorization: Basic eA==\r\n\
             Trailer: x-sum\r\nCookie: app=1; theme=dark\r\n\r\n"
        ),
        format!(
            "POST /form HTTP/1.1\r\nhost: t\r\n{common}Idempotency-Key: k1\r\n\
             Content-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello"
        ),
        // Over a HeaderMap: an affinity cookie, a Connection naming a field,
        // two Cookie fields, two X-Forwarded-For fields, an absolute target.
        format!("GET /c HTTP/1.1\r\nHost: t\r\n{common}Cookie: AWSALB=x; app=1\r\n\r\n"),
        format!("GET /n HTTP/1.1\r\nHost: t\r\n{common}Connection: x-hop\r\nX-Hop: secret\r\n\r\n"),
        format!("GET /2c HTTP/1.1\r\nHost: t\r\n{common}Cookie: a=1\r\nCookie: b=2\r\n\r\n"),
        format!(
            "GET /2x HTTP/1.1\r\nHost: t\r\n{common}X-Forwarded-For: 10.0.0.1\r\n\
             X-Forwarded-For: 10.0.0.2\r\n\r\n"
        ),
        format!("GET http://t/abs?q HTTP/1.1\r\nHost: t\r\n{common}\r\n"),
    ];
    let mut seen: Vec<Vec<Normalized>> = Vec::new();
    for fast in [true, false] {
        let b = scripted().await;
        let mut config = test_config(&[b.addr]);
        config.http1_fast_path = fast;
        let app = App::start(config).await.unwrap();
        let mut c = Raw::open(app.proxy_addr).await;
        for request in &cases {
            c.send(request.as_bytes()).await;
            let r = c.response("GET").await;
            assert_eq!(r.status, 200, "{request}");
        }
        let heads = b.received().iter().map(|r| normalized(&r.head)).collect();
        seen.push(heads);
    }
    let (fast, hyper) = (&seen[0], &seen[1]);
    assert_eq!(fast.len(), cases.len());
    for ((request, fast), hyper) in cases.iter().zip(fast).zip(hyper) {
        assert_eq!(fast, hyper, "{request}");
    }
    // What the rewriting did, checked once on its own.
    let (line, fields) = &fast[0];
    assert_eq!(line, "GET /p?q=1&r=%20 HTTP/1.1");
    let names: Vec<&str> = fields.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            "accept",
            "accept",
            "cookie",
            "host",
            "user-agent",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id"
        ]
    );
    let value = |name: &str| fields.iter().find(|(n, _)| n == name).unwrap().1.as_str();
    assert_eq!(value("x-forwarded-for"), "10.0.0.1, 127.0.0.1");
    assert_eq!(value("x-forwarded-host"), "T.example");
    assert_eq!(value("x-forwarded-proto"), "http");
    assert_eq!(value("x-request-id"), "rid-1");
    assert_eq!(value("cookie"), "app=1; theme=dark");
    assert!(fast[1].1.contains(&("content-length".into(), "5".into())));
    assert!(!fast[3].1.iter().any(|(n, _)| n == "x-hop"));
}

// 7. HTTP/2 clients' requests without a body take the fast path's
// backend connections: every framing decoded into DATA, connections reused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_requests_reach_http1_backends_over_the_fast_path_connections() {
    let big = vec![b'x'; 300 * 1024];
    let big_answer = [
        format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", big.len()).into_bytes(),
        big.clone(),
    ]
    .concat();
    let b = ScriptedBackend::start(move |req| match req.path() {
        "/big" => Scripted::bytes(big_answer.clone()),
        "/post" => {
            let length = req.header("content-length").unwrap_or("none").to_owned();
            Scripted::bytes(format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{length}",
                length.len()
            ))
        }
        path => script(path),
    })
    .await;
    // Responses passed on as they come (not held until whole): a cut one
    // resets the stream.
    let mut config = test_config(&[b.addr]);
    config.retries.response_buffer = 0;
    let app = App::start(config).await.unwrap();
    let conn = client::H2Conn::open(app.proxy_addr).await.unwrap();
    let get = |path: &'static str| {
        let conn = &conn;
        async move {
            tokio::time::timeout(READ_LIMIT, conn.get(path))
                .await
                .expect("answered within 5 s")
                .unwrap()
        }
    };

    // A chunked body in pieces: decoded, trailers dropped, no length.
    let r = get("/chunked-trailers").await;
    assert_eq!(
        (r.status, r.text().as_str()),
        (StatusCode::OK, "hello, world")
    );
    assert!(r.headers.get("transfer-encoding").is_none());
    assert!(r.headers.get("trailer").is_none());
    assert!(r.trailers.is_none(), "{:?}", r.trailers);
    // Small bodies, interim responses skipped, bodiless answers: all on the
    // one backend connection so far.
    let r = get("/interim").await;
    assert_eq!(r.text(), "final");
    let r = get("/plain-head").await;
    assert_eq!((r.status.as_u16(), r.text().as_str()), (201, "ok\n"));
    assert!(r.headers.get("keep-alive").is_none());
    assert_ne!(r.headers["x-request-id"], "from-backend");
    assert_eq!(r.headers["x-custom"], "a, b");
    assert_eq!(get("/204").await.status, StatusCode::NO_CONTENT);
    let r = get("/big").await;
    assert_eq!(r.body.len(), big.len());
    assert!(r.body.iter().all(|&c| c == b'x'));
    assert_eq!(b.accepts(), 1, "one backend connection, reused");
    // An empty POST announces its empty body.
    let r = conn
        .request(Method::POST, "/post", &[], bytes::Bytes::new())
        .await
        .unwrap();
    assert_eq!(r.text(), "0");
    // A close-delimited body ends with the backend's close (on the pooled
    // connection); its connection is not reused.
    let before = b.accepts();
    let r = get("/close-delimited").await;
    assert_eq!(r.text(), "until the end");
    assert_eq!(get("/").await.text(), "ok\n");
    assert_eq!(b.accepts(), before + 1);
    // A body cut short resets the stream; the client's connection stays.
    assert!(tokio::time::timeout(READ_LIMIT, conn.get("/cut"))
        .await
        .expect("answered within 5 s")
        .is_err());
    // Broken chunks: a 502 if they came with the head, else a reset.
    let r = tokio::time::timeout(READ_LIMIT, conn.get("/bad-chunks"))
        .await
        .expect("answered within 5 s");
    if let Ok(r) = r {
        assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    }
    assert_eq!(get("/").await.text(), "ok\n");
    assert!(!conn.is_closed());
}
