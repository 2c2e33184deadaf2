//! Protocols end to end: TLS (SNI, ALPN, reload), HTTP/2 multiplexing, upstream h2c/https/h2, WebSocket tunnels, gRPC trailers and status.

mod support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use unstick::app::App;
use unstick::config::{Config, UpstreamProtocol};
use unstick::testkit::client::{self, Conn, H2Conn};
use unstick::testkit::{test_config, BackendOptions, DeadPort, FakeBackend};
use unstick::tls::{ALPN_H2, ALPN_HTTP11};

use support::backends::{addrs, child, fake};
use support::local::{front, start};
use support::metrics::Scrape;
use support::pki::{alpn, leaf, sni, tls_config, Pki};
use support::raw::sent_then_closed;
use support::wait::until;
use support::{Local, Serve};

// === helpers ===

/// The sum of the series `name` whose labels include `labels`.
fn counter(app: &App, name: &str, labels: &[(&str, &str)]) -> f64 {
    Scrape::of(app).sum(name, labels)
}

fn spread(ids: &[String]) -> HashMap<String, usize> {
    let mut m = HashMap::new();
    for id in ids {
        *m.entry(id.clone()).or_insert(0) += 1;
    }
    m
}

/// 300 requests at once on one HTTP/2 connection; returns who answered each.
async fn multiplexed(conn: &H2Conn, n: usize) -> Vec<String> {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        let c = conn.clone();
        tasks.spawn(async move {
            let r = c.get("/").await.unwrap();
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            r.backend()
        });
    }
    let mut out = Vec::new();
    while let Some(id) = tasks.join_next().await {
        out.push(id.unwrap());
    }
    out
}

fn assert_even(ids: &[String], backends: usize) {
    let per = ids.len() / backends;
    let m = spread(ids);
    assert_eq!(m.len(), backends, "{m:?}");
    for (id, n) in &m {
        assert!(
            n.abs_diff(per) <= 1,
            "backend {id} got {n}, want {per}±1: {m:?}"
        );
    }
}

/// Serves TLS with `cert` (no SNI entries).
fn serve_tls(config: &mut Config, cert: &support::pki::Issued) {
    config.tls = Some(tls_config(cert, Vec::new()));
}

// === TLS ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_serves_http1_and_http2_by_alpn_with_the_certificate_sni_asks_for() {
    let pki = Pki::new("sni");
    let default = pki.server("default", &["localhost", "default.test"]);
    let api = pki.server("api", &["api.test"]);
    let wild = pki.server("wild", &["*.wild.test"]);
    let local = Local::start_with(1, |c| {
        let entries = vec![sni(&["api.test"], &api), sni(&["*.wild.test"], &wild)];
        c.tls = Some(tls_config(&default, entries));
    })
    .await;
    let addr = local.addr();

    // HTTP/2 by ALPN, certificate by SNI.
    let tls = pki.connect(addr, "api.test", &[ALPN_H2, ALPN_HTTP11]).await;
    assert_eq!(alpn(&tls).as_deref(), Some(ALPN_H2));
    assert_eq!(
        leaf(&tls),
        api.der,
        "SNI api.test gets the api.test certificate"
    );
    let h2 = H2Conn::handshake(tls, "https", "api.test").await.unwrap();
    let r = h2.get("/headers").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let text = r.text();
    assert!(text.contains("x-forwarded-proto: https"), "{text}");
    assert!(text.contains("x-forwarded-host: api.test"), "{text}");

    // HTTP/1.1 by ALPN, the default certificate.
    let tls = pki.connect(addr, "default.test", &[ALPN_HTTP11]).await;
    assert_eq!(alpn(&tls).as_deref(), Some(ALPN_HTTP11));
    assert_eq!(leaf(&tls), default.der);
    let mut h1 = Conn::handshake(tls, "default.test").await.unwrap();
    let r = h1.get("/headers").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert!(
        r.text().contains("x-forwarded-proto: https"),
        "{}",
        r.text()
    );
    let r = h1.get("/").await.unwrap();
    assert_eq!(r.text(), "b0\n");

    // A wildcard entry matches one label.
    let tls = pki.connect(addr, "a.wild.test", &[ALPN_HTTP11]).await;
    assert_eq!(leaf(&tls), wild.der);

    // No ALPN: HTTP/1.1 (or h2 by preface) still works.
    let tls = pki.connect(addr, "localhost", &[]).await;
    assert_eq!(alpn(&tls), None);
    assert_eq!(leaf(&tls), default.der);
    let mut h1 = Conn::handshake(tls, "localhost").await.unwrap();
    assert_eq!(h1.get("/").await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_without_http2_offers_only_http11() {
    let pki = Pki::new("noh2");
    let cert = pki.server("default", &["localhost"]);
    let local = Local::start_with(1, |c| {
        serve_tls(c, &cert);
        c.http2.enabled = false;
    })
    .await;
    let tls = pki
        .connect(local.addr(), "localhost", &[ALPN_H2, ALPN_HTTP11])
        .await;
    assert_eq!(alpn(&tls).as_deref(), Some(ALPN_HTTP11));
    let mut h1 = Conn::handshake(tls, "localhost").await.unwrap();
    assert_eq!(h1.get("/").await.unwrap().status, StatusCode::OK);
    // Cleartext h2c is refused too when HTTP/2 is off.
    let app = front(&addrs(&local.backends), |c| c.http2.enabled = false).await;
    let h2c = tokio::time::timeout(Duration::from_secs(5), async {
        let c = H2Conn::open(app.proxy_addr).await?;
        c.get("/").await
    })
    .await
    .expect("h2c attempt ends");
    assert!(h2c.is_err(), "h2c must fail with http2.enabled = false");
    assert_eq!(
        client::get(app.proxy_addr, "/").await.unwrap().status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_certificates_apply_to_new_connections_and_open_ones_keep_working() {
    let pki = Pki::new("reload");
    let first = pki.server("server", &["localhost"]);
    let local = Local::start_with(1, |c| {
        let mut tls = tls_config(&first, Vec::new());
        tls.reload_interval = Duration::from_millis(100);
        c.tls = Some(tls);
    })
    .await;
    let (addr, app) = (local.addr(), &local.app);

    let (der, mut open) = pki.h1(addr, "localhost").await;
    assert_eq!(der, first.der);
    assert_eq!(open.get("/").await.unwrap().status, StatusCode::OK);

    // Replace the files in place.
    let second = pki.server("server", &["localhost"]);
    assert_ne!(first.der, second.der);
    until(
        "new connections to get the new certificate",
        Duration::from_secs(10),
        async || leaf(&pki.connect(addr, "localhost", &[ALPN_HTTP11]).await) == second.der,
    )
    .await;
    assert!(counter(app, "unstick_tls_reloads_total", &[("result", "ok")]) >= 1.0);
    // The connection made before the swap still works.
    assert!(!open.is_closed());
    assert_eq!(open.get("/").await.unwrap().status, StatusCode::OK);

    // A bad file is refused; the current certificate stays.
    std::fs::write(&second.cert, "-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    until(
        "the bad file to be noticed",
        Duration::from_secs(10),
        async || counter(app, "unstick_tls_reloads_total", &[("result", "error")]) >= 1.0,
    )
    .await;
    let (der, mut c) = pki.h1(addr, "localhost").await;
    assert_eq!(der, second.der);
    assert_eq!(c.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(open.get("/").await.unwrap().status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_in_the_binary() {
    let pki = Pki::new("sighup");
    let first = pki.server("server", &["localhost"]);
    let b = fake("b0").await;
    // A long interval: only the signal can trigger the reload in time.
    let rig = Serve::new()
        .toml("[tls]\ncert = \"unused\"\nkey = \"unused\"\nreload_interval = \"1h\"\n")
        .args(&["--backend", &b.addr.to_string()])
        .args(&["--tls-cert", first.cert.to_str().unwrap()])
        .args(&["--tls-key", first.key.to_str().unwrap()])
        .start();
    let addr = rig.lb.addr;
    let (der, mut open) = pki.h1(addr, "localhost").await;
    assert_eq!(der, first.der);
    assert_eq!(open.get("/").await.unwrap().status, StatusCode::OK);

    let second = pki.server("server", &["localhost"]);
    assert!(rig.lb.signal(libc::SIGHUP));
    until(
        "SIGHUP to load the new certificate",
        Duration::from_secs(10),
        async || leaf(&pki.connect(addr, "localhost", &[ALPN_HTTP11]).await) == second.der,
    )
    .await;
    assert_eq!(open.get("/").await.unwrap().status, StatusCode::OK);
    assert!(rig.lb.stderr().text().contains("certificates reloaded"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_http_and_bad_handshakes_on_the_tls_port_end_quickly_and_are_counted() {
    let pki = Pki::new("bad");
    let cert = pki.server("server", &["localhost"]);
    let local = Local::start_with(1, |c| {
        serve_tls(c, &cert);
        c.timeouts.client_header = Duration::from_millis(500);
    })
    .await;
    let (addr, app) = (local.addr(), &local.app);
    let failures = || counter(app, "unstick_tls_handshake_failures_total", &[]);
    let five = Duration::from_secs(5);

    // Plain HTTP: a 400, then the close.
    let (r, got) = sent_then_closed(addr, b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", five).await;
    r.unwrap();
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");

    // Garbage: closed.
    let (r, got) = sent_then_closed(addr, &[0u8, 1, 2, 3, 4, 5, 6, 7], five).await;
    assert!(r.is_err() || got.is_empty(), "{got:?}");

    // A TLS record that is not a valid ClientHello.
    let _ = sent_then_closed(addr, &[0x16, 3, 1, 0, 4, 9, 9, 9, 9], five).await;

    // A client that does not trust the certificate aborts the handshake.
    let other = Pki::new("bad-other");
    assert!(client::tls(addr, "localhost", &other.ca_file, &[])
        .await
        .is_err());

    until("4 failures counted", five, async || failures() >= 4.0).await;
    // A connection that sends nothing is not a failure.
    drop(TcpStream::connect(addr).await.unwrap());
    // The listener still serves.
    let s = pki.connect(addr, "localhost", &[]).await;
    let mut c = Conn::handshake(s, "localhost").await.unwrap();
    assert_eq!(c.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(failures(), 4.0);

    // A client that connects and says nothing is closed after the header timeout.
    let (_, got) = sent_then_closed(addr, b"", Duration::from_secs(10)).await;
    assert!(got.is_empty());
    until("the timeout to be counted", five, async || {
        failures() == 5.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_redirect_listener_sends_308_to_https() {
    let pki = Pki::new("redirect");
    let cert = pki.server("server", &["localhost"]);
    let local = Local::start_with(1, |c| {
        let mut tls = tls_config(&cert, Vec::new());
        tls.redirect_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls = Some(tls);
    })
    .await;
    let redirect = local.app.redirect_addr.expect("redirect listener");
    let r = client::request(
        redirect,
        Method::GET,
        "/a/b?c=1",
        &[("host", "example.test:8080")],
        Bytes::new(),
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::PERMANENT_REDIRECT);
    let want = format!("https://example.test:{}/a/b?c=1", local.addr().port());
    assert_eq!(r.headers["location"], want.as_str());
    assert_eq!(
        local.backends[0].requests(),
        0,
        "redirects never reach a backend"
    );
}

// === HTTP/2 ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2c_connection_spreads_300_streams_evenly() {
    let local = Local::start(3).await;
    let conn = H2Conn::open(local.addr()).await.unwrap();
    let ids = multiplexed(&conn, 300).await;
    assert_even(&ids, 3);
    assert!(!conn.is_closed());
    assert_eq!(counter(&local.app, "unstick_connections_open", &[]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2_cookie_headers_reach_an_http1_backend_as_one() {
    let local = Local::start(1).await;
    let conn = H2Conn::open(local.addr()).await.unwrap();
    // An HTTP/2 client sends each cookie in its own header, one of them an
    // affinity cookie that unstick strips.
    let r = conn
        .request(
            Method::GET,
            "/headers",
            &[
                ("cookie", "sid=1"),
                ("cookie", "SERVERID=b2"),
                ("cookie", "theme=dark"),
            ],
            Bytes::new(),
        )
        .await
        .unwrap();
    let seen = r.text();
    let cookies: Vec<&str> = seen.lines().filter(|l| l.starts_with("cookie:")).collect();
    assert_eq!(cookies, ["cookie: sid=1; theme=dark"], "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_h2_tls_connection_spreads_300_streams_evenly() {
    let pki = Pki::new("h2spread");
    let cert = pki.server("server", &["localhost"]);
    let local = Local::start_with(3, |c| serve_tls(c, &cert)).await;
    let tls = pki.connect(local.addr(), "localhost", &[ALPN_H2]).await;
    assert_eq!(alpn(&tls).as_deref(), Some(ALPN_H2));
    let conn = H2Conn::handshake(tls, "https", "localhost").await.unwrap();
    let ids = multiplexed(&conn, 300).await;
    assert_even(&ids, 3);
    assert_eq!(counter(&local.app, "unstick_connections_open", &[]), 1.0);
}

// === upstream protocols ===

fn with_protocol(config: &mut Config, protocol: UpstreamProtocol) {
    for b in &mut config.backends {
        b.protocol = protocol;
    }
}

/// A fake backend serving TLS with `cert` (ALPN `alpn`), requiring a client
/// certificate from `client_ca` if given.
async fn tls_backend(
    id: &str,
    cert: &support::pki::Issued,
    alpn: &[&[u8]],
    client_ca: Option<&std::path::Path>,
) -> FakeBackend {
    let tls = unstick::tls::simple_server_config(&cert.cert, &cert.key, alpn, client_ca).unwrap();
    let opts = BackendOptions {
        id: id.into(),
        ..Default::default()
    };
    FakeBackend::start_tls(opts, tls).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_backends_get_one_shared_connection_each() {
    let local = Local::start_with(2, |c| with_protocol(c, UpstreamProtocol::H2c)).await;
    // 200 requests from 8 HTTP/1.1 client connections at once.
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let addr = local.addr();
        tasks.spawn(async move {
            let mut c = Conn::open(addr).await.unwrap();
            let mut ids = Vec::new();
            for i in 0..25 {
                let r = c
                    .request(Method::POST, "/echo", &[], format!("body {i}"))
                    .await
                    .unwrap();
                assert_eq!(r.status, StatusCode::OK);
                assert_eq!(r.text(), format!("body {i}"));
                ids.push(r.backend());
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = tasks.join_next().await {
        ids.extend(r.unwrap());
    }
    assert_even(&ids, 2);
    for backend in &local.backends {
        let n = backend.counters.connections.load(Ordering::Relaxed);
        assert_eq!(n, 1, "one shared HTTP/2 connection per backend, got {n}");
    }
    // The backend sees HTTP/2 with the client's authority.
    let r = client::get(local.addr(), "/headers").await.unwrap();
    assert!(
        !r.text().lines().any(|l| l.starts_with("host:")),
        "HTTP/2 carries the authority in the URI: {}",
        r.text()
    );
    assert!(
        r.text().contains("x-forwarded-host: 127.0.0.1"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_backend_that_restarts_gets_a_new_connection() {
    let mut backend = child("h2c", &[]);
    let app = front(&[backend.addr], |c| {
        with_protocol(c, UpstreamProtocol::H2c);
        c.health.backoff = Duration::from_millis(100);
    })
    .await;
    assert_eq!(
        client::get(app.proxy_addr, "/").await.unwrap().text(),
        "h2c\n"
    );
    backend.restart(support::BIN, &[]);
    until("requests to succeed again", Duration::from_secs(15), async || {
        matches!(client::get(app.proxy_addr, "/").await, Ok(r) if r.status == StatusCode::OK)
    })
    .await;
    for _ in 0..20 {
        assert_eq!(
            client::get(app.proxy_addr, "/").await.unwrap().status,
            StatusCode::OK
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_backends_are_checked_against_the_ca_file_and_get_the_client_certificate() {
    let pki = Pki::new("mtls");
    let server = pki.server("backend", &["127.0.0.1"]);
    let client_cert = pki.issue("client", &["unstick-client"], true);
    let backend = tls_backend("secure", &server, &[ALPN_HTTP11], Some(&pki.ca_file)).await;
    let mut config = test_config(&[backend.addr]);
    with_protocol(&mut config, UpstreamProtocol::Https);
    config.health.eject_after_failures = 1000;
    config.upstream_tls.ca_file = Some(pki.ca_file.clone());
    config.upstream_tls.client_cert = Some(client_cert.cert.clone());
    config.upstream_tls.client_key = Some(client_cert.key.clone());
    let app = start(config.clone()).await;
    for _ in 0..5 {
        let r = client::request(app.proxy_addr, Method::POST, "/echo", &[], "over tls")
            .await
            .unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.text(), "over tls");
        assert_eq!(r.backend(), "secure");
    }

    // Without the client certificate the backend refuses us.
    let mut no_client = config.clone();
    no_client.upstream_tls.client_cert = None;
    no_client.upstream_tls.client_key = None;
    let app = start(no_client).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());

    // Without the CA file (the built-in roots), the backend is not trusted.
    let mut no_ca = config.clone();
    no_ca.upstream_tls.ca_file = None;
    let app = start(no_ca).await;
    let r = client::get(app.proxy_addr, "/").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert!(r.text().contains("TLS handshake failed"), "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_upstream_ca_file_stops_the_start() {
    let b = fake("b0").await;
    let mut config = test_config(&[b.addr]);
    config.upstream_tls.ca_file = Some(PathBuf::from("/nonexistent/ca.pem"));
    let err = App::start(config).await.err().expect("refused").to_string();
    assert!(err.contains("/nonexistent/ca.pem"), "{err}");
}

// === WebSocket ===

type Ws<S> = tokio_tungstenite::WebSocketStream<S>;

async fn ws_connect<S>(stream: S, authority: &str) -> Ws<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (ws, resp) = tokio_tungstenite::client_async(format!("ws://{authority}/ws"), stream)
        .await
        .expect("WebSocket handshake through unstick");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

/// Sends `n` messages and checks each echo.
async fn ws_echo<S>(ws: &mut Ws<S>, n: usize)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    for i in 0..n {
        let msg = if i % 2 == 0 {
            Message::text(format!("message {i}"))
        } else {
            Message::binary(vec![i as u8; i + 1])
        };
        ws.send(msg.clone()).await.unwrap();
        let got = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("open")
            .unwrap();
        assert_eq!(got, msg);
    }
}

/// Waits (bounded) for the socket to close: a close frame, an error or the end.
async fn ws_closed<S>(ws: &mut Ws<S>, timeout: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => panic!("the WebSocket is still open after {timeout:?}"),
            Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// Waits (bounded) until backend `b` has nothing in flight and no client
/// connection is open.
async fn tunnel_released(what: &str, app: &App, b: &unstick::upstream::Backend) {
    until(what, Duration::from_secs(5), async || {
        b.in_flight() == 0 && counter(app, "unstick_connections_open", &[]) == 0.0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echoes_through_the_proxy_and_closes_when_the_backend_dies() {
    let backend = child("ws", &[]);
    let app = front(&[backend.addr], |_| {}).await;
    let stream = TcpStream::connect(app.proxy_addr).await.unwrap();
    let mut ws = ws_connect(stream, &app.proxy_addr.to_string()).await;
    ws_echo(&mut ws, 100).await;
    let b = app.proxy.upstreams.load().all[0].clone();
    assert_eq!(b.in_flight(), 1, "the tunnel counts as in flight");
    assert_eq!(counter(&app, "unstick_connections_open", &[]), 1.0);

    assert!(backend.process.signal(libc::SIGKILL));
    ws_closed(&mut ws, Duration::from_secs(5)).await;
    tunnel_released("the tunnel to release its backend", &app, &b).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_works_over_tls_and_a_client_close_ends_the_tunnel() {
    let pki = Pki::new("wss");
    let cert = pki.server("server", &["localhost"]);
    let backend = fake("ws").await;
    let app = front(&[backend.addr], |c| serve_tls(c, &cert)).await;
    // WebSocket (RFC 6455) needs HTTP/1.1: a WebSocket client offers only http/1.1.
    let tls = pki
        .connect(app.proxy_addr, "localhost", &[ALPN_HTTP11])
        .await;
    let mut ws = ws_connect(tls, "localhost").await;
    ws_echo(&mut ws, 20).await;
    let b = app.proxy.upstreams.load().all[0].clone();
    assert_eq!(b.in_flight(), 1);
    ws.close(None).await.unwrap();
    ws_closed(&mut ws, Duration::from_secs(5)).await;
    tunnel_released("the tunnel to end", &app, &b).await;
}

#[test]
fn sigterm_closes_websockets_after_the_drain_timeout() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let backend = child("ws", &[]);
    let mut rig = Serve::new()
        .toml("[timeouts]\ndrain = \"1500ms\"\n")
        .args(&["--backend", &backend.addr.to_string()])
        .start();
    let addr = rig.lb.addr;
    let pid = rig.lb.pid();
    let elapsed = rt.block_on(async move {
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut ws = ws_connect(stream, &addr.to_string()).await;
        ws_echo(&mut ws, 10).await;
        let sent = Instant::now();
        assert!(unstick::testkit::process::signal(pid, libc::SIGTERM));
        // Draining: the tunnel still works...
        ws_echo(&mut ws, 10).await;
        // ...until the drain timeout closes it.
        ws_closed(&mut ws, Duration::from_secs(15)).await;
        sent.elapsed()
    });
    assert!(
        elapsed >= Duration::from_millis(1500),
        "closed after {elapsed:?}, before the 1.5 s drain timeout"
    );
    let status = rig
        .lb
        .process
        .wait_timeout(Duration::from_secs(10))
        .expect("unstick exits after the drain");
    assert!(status.success(), "{status:?}");
    assert!(rig.lb.stderr().text().contains("drain timeout"));
}

// === gRPC ===

const GRPC_HEADERS: &[(&str, &str)] = &[("content-type", "application/grpc"), ("te", "trailers")];

/// A gRPC-framed message: flag, length, bytes.
fn grpc_frame(msg: &[u8]) -> Bytes {
    let mut b = vec![0u8];
    b.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    b.extend_from_slice(msg);
    Bytes::from(b)
}

/// A gRPC call to `/grpc.test.Echo/Say` with `body` on `conn`.
async fn say(conn: &H2Conn, body: &Bytes) -> client::Reply {
    conn.request(
        Method::POST,
        "/grpc.test.Echo/Say",
        GRPC_HEADERS,
        body.clone(),
    )
    .await
    .unwrap()
}

fn assert_grpc_echo(r: &client::Reply, sent: &Bytes, backend: &str) {
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.headers["content-type"], "application/grpc");
    assert_eq!(&r.body, sent);
    let trailers = r.trailers.as_ref().expect("trailers reach the client");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-backend-id"], backend);
}

/// Asserts a gRPC status in the reply's headers (a trailers-only answer),
/// with `message` in `grpc-message`.
fn assert_grpc_status(r: &client::Reply, status: &str, message: &str) {
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], status, "{:?}", r.headers);
    let msg = r.headers["grpc-message"].to_str().unwrap();
    assert!(msg.contains(message), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2c_round_trips_with_its_trailers() {
    let local = Local::start_with(2, |c| with_protocol(c, UpstreamProtocol::H2c)).await;
    let conn = H2Conn::open(local.addr()).await.unwrap();
    let mut seen = Vec::new();
    for i in 0..10 {
        let body = grpc_frame(format!("hello {i}").as_bytes());
        let r = say(&conn, &body).await;
        let id = r.backend();
        assert_grpc_echo(&r, &body, &id);
        seen.push(id);
    }
    assert_even(&seen, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_to_an_h2_backend_round_trips_with_its_trailers() {
    let pki = Pki::new("grpctls");
    let front_cert = pki.server("front", &["localhost"]);
    let back = pki.server("back", &["127.0.0.1"]);
    let backend = tls_backend("h2tls", &back, &[ALPN_H2], None).await;
    let app = front(&[backend.addr], |c| {
        with_protocol(c, UpstreamProtocol::H2);
        c.upstream_tls.ca_file = Some(pki.ca_file.clone());
        serve_tls(c, &front_cert);
    })
    .await;
    let stream = pki.connect(app.proxy_addr, "localhost", &[ALPN_H2]).await;
    let conn = H2Conn::handshake(stream, "https", "localhost")
        .await
        .unwrap();
    let body = grpc_frame(&[7u8; 100_000]);
    let r = say(&conn, &body).await;
    assert_grpc_echo(&r, &body, "h2tls");
    // The backend got HTTP/2 over TLS, and one connection for every call.
    for _ in 0..20 {
        let r = say(&conn, &body).await;
        assert_grpc_echo(&r, &body, "h2tls");
    }
    assert_eq!(backend.counters.connections.load(Ordering::Relaxed), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_failures_get_a_grpc_status_not_a_bare_http_error() {
    // No backend in rotation: UNAVAILABLE.
    let app = front(&[], |_| {}).await;
    let conn = H2Conn::open(app.proxy_addr).await.unwrap();
    let r = say(&conn, &grpc_frame(b"x")).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["content-type"], "application/grpc");
    assert_eq!(r.headers["grpc-status"], "14");
    assert!(r.headers["grpc-message"]
        .to_str()
        .unwrap()
        .contains("no backend"));
    assert!(r.body.is_empty());
    // Metrics count it as the 503 it stands for.
    assert_eq!(
        counter(
            &app,
            "unstick_requests_total",
            &[("backend", "none"), ("code_class", "5xx")]
        ),
        1.0
    );

    // Backends that refuse connections (retries off): UNAVAILABLE while
    // another is still in rotation; then none is left, and plain HTTP gets
    // the 503 of a balancer with no backend, gRPC UNAVAILABLE again.
    let dead = [DeadPort::new(), DeadPort::new()];
    let app = front(&[dead[0].addr, dead[1].addr], |c| c.retries.enabled = false).await;
    let grpc_call = || {
        client::request(
            app.proxy_addr,
            Method::POST,
            "/x",
            GRPC_HEADERS,
            grpc_frame(b"x"),
        )
    };
    let r = grpc_call().await.unwrap();
    assert_grpc_status(&r, "14", "could not connect");
    let r = client::request(app.proxy_addr, Method::POST, "/x", &[], "plain")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["retry-after"], "1");
    let r = grpc_call().await.unwrap();
    assert_grpc_status(&r, "14", "no backend");

    // A backend that never answers: DEADLINE_EXCEEDED.
    let local = Local::start_with(1, |c| {
        with_protocol(c, UpstreamProtocol::H2c);
        c.timeouts.response_header = Duration::from_millis(300);
    })
    .await;
    let conn = H2Conn::open(local.addr()).await.unwrap();
    let r = conn
        .request(Method::POST, "/hang", GRPC_HEADERS, grpc_frame(b"x"))
        .await
        .unwrap();
    assert_grpc_status(&r, "4", "gateway timeout");
}
