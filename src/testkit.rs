//! Fake backends for tests and benches; never used by `serve`.
//!
//! [`FakeBackend`] is a small hyper server with routes that misbehave on
//! request: slow answers, resets, hangs, big bodies, echo, cookies. It runs
//! in-process ([`FakeBackend::start`]) or as a real child process (`unstick
//! testkit-backend`, see [`process`]), so tests can SIGKILL it.
//!
//! Routes (any method):
//! - `/` and anything else: 200, body `ID\n`
//! - `/slow/MS`: waits MS milliseconds, then as `/`
//! - `/split/MS`: reads the request body, sends the head of `/`'s answer,
//!   then its body MS milliseconds later in a separate write (a kill can
//!   land between the two)
//! - `/echo`: streams the request body back
//! - `/bytes/N`: streams N bytes
//! - `/headers`: the request headers, one `name: value` per line
//! - `/status/CODE`: that status
//! - `/reset`: closes the connection without answering
//! - `/hang`: never answers
//! - `/healthz`: 200, or 503 while draining
//! - `/set-cookie/NAME=VALUE[;NAME=VALUE...]`: one `Set-Cookie` per pair
//! - `/ws`: a WebSocket (HTTP/1.1 Upgrade) that echoes every text and binary message
//! - `/grpc...`: gRPC-shaped: `content-type: application/grpc`, the request
//!   body echoed, then the trailers `grpc-status: 0` and `x-backend-id: ID`
//!
//! Every backend speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c);
//! [`FakeBackend::start_tls`] serves the same routes over TLS.
//!
//! Every response carries `X-Backend-Id: ID`. After [`FakeBackend::drain`]
//! (SIGTERM for the process), every response carries `Connection: close`
//! and `X-Unstick-Drain: 1` and the health check answers 503.
//!
//! [`scripted::ScriptedBackend`] answers with raw bytes from a script, for
//! response framings hyper will not write (hand-written trailers,
//! close-delimited bodies, 1xx, HTTP/1.0, a connection cut mid-body).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

pub mod process;
pub mod scripted;

/// How a fake backend behaves.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Returned in `X-Backend-Id` and as the default body.
    pub id: String,
    /// Added to every response.
    pub delay: Duration,
    /// `Set-Cookie` values added to every response.
    pub set_cookies: Vec<String>,
    /// Send no `X-Backend-Id` (an app that does not say which instance it is).
    pub anonymous: bool,
}

/// Counters kept by a fake backend.
#[derive(Debug, Default)]
pub struct Counters {
    /// Requests received (any route but `/healthz`).
    pub requests: AtomicU64,
    /// Requests in progress now.
    pub in_flight: AtomicU64,
    /// Health checks received.
    pub health_checks: AtomicU64,
    /// Connections accepted (TCP; HTTP/2 multiplexes many requests on one).
    pub connections: AtomicU64,
    /// The last `Cookie` header received.
    pub last_cookie: std::sync::Mutex<Option<String>>,
}

struct State {
    opts: BackendOptions,
    counters: Arc<Counters>,
    draining: AtomicBool,
}

/// A running in-process fake backend.
pub struct FakeBackend {
    pub addr: SocketAddr,
    pub counters: Arc<Counters>,
    state: Arc<State>,
    stop: watch::Sender<bool>,
}

// === impl FakeBackend ===

impl FakeBackend {
    /// Starts on 127.0.0.1, port 0.
    pub async fn start(opts: BackendOptions) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::start_on(listener, opts)
    }

    /// Starts on 127.0.0.1, port 0, speaking TLS with `tls` (e.g. from
    /// [`crate::tls::simple_server_config`]; ALPN `h2` there enables HTTP/2).
    pub async fn start_tls(opts: BackendOptions, tls: Arc<rustls::ServerConfig>) -> FakeBackend {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        Self::serve(listener, opts, Some(TlsAcceptor::from(tls)))
    }

    /// Starts on a bound listener.
    pub fn start_on(listener: TcpListener, opts: BackendOptions) -> FakeBackend {
        Self::serve(listener, opts, None)
    }

    fn serve(listener: TcpListener, opts: BackendOptions, tls: Option<TlsAcceptor>) -> FakeBackend {
        let addr = listener.local_addr().expect("bound");
        let counters = Arc::new(Counters::default());
        let state = Arc::new(State {
            opts,
            counters: counters.clone(),
            draining: AtomicBool::new(false),
        });
        let (stop, mut stopped) = watch::channel(false);
        let s = state.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    _ = stopped.changed() => return,
                    a = listener.accept() => match a { Ok(a) => a, Err(_) => continue },
                };
                let _ = stream.set_nodelay(true);
                s.counters.connections.fetch_add(1, Ordering::Relaxed);
                let s = s.clone();
                let mut stopped = stopped.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    let stop = stopped.clone();
                    let service = service_fn(move |req| handle(s.clone(), stop.clone(), req));
                    let builder =
                        hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    match tls {
                        None => {
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = conn => {}
                                _ = stopped.changed() => {}
                            }
                        }
                        Some(acceptor) => {
                            let Ok(Ok(stream)) = tokio::time::timeout(
                                Duration::from_secs(10),
                                acceptor.accept(stream),
                            )
                            .await
                            else {
                                return;
                            };
                            let conn = builder
                                .serve_connection_with_upgrades(TokioIo::new(stream), service);
                            tokio::select! {
                                _ = conn => {}
                                _ = stopped.changed() => {}
                            }
                        }
                    }
                });
            }
        });
        FakeBackend {
            addr,
            counters,
            state,
            stop,
        }
    }

    /// Requests served so far.
    pub fn requests(&self) -> u64 {
        self.counters.requests.load(Ordering::Relaxed)
    }

    /// Starts draining: responses ask unstick to take this backend out.
    pub fn drain(&self) {
        self.state.draining.store(true, Ordering::Relaxed);
    }

    /// Stops accepting and drops every connection.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for FakeBackend {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An error that makes hyper close the connection without answering.
#[derive(Debug)]
struct Reset;

impl std::fmt::Display for Reset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset on purpose")
    }
}

impl std::error::Error for Reset {}

async fn handle(
    state: Arc<State>,
    stopped: watch::Receiver<bool>,
    req: Request<Incoming>,
) -> Result<Response<TestBody>, Reset> {
    let path = req.uri().path().to_owned();
    let c = &state.counters;
    if path == "/healthz" {
        return Ok(health_check(&state));
    }
    c.requests.fetch_add(1, Ordering::Relaxed);
    c.in_flight.fetch_add(1, Ordering::Relaxed);
    struct Done<'a>(&'a Counters);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
        }
    }
    let _done = Done(c);
    if let Some(cookie) = req.headers().get(header::COOKIE) {
        *c.last_cookie.lock().unwrap() = Some(String::from_utf8_lossy(cookie.as_bytes()).into());
    }
    if !state.opts.delay.is_zero() {
        tokio::time::sleep(state.opts.delay).await;
    }
    let id_body = || TestBody::full(format!("{}\n", state.opts.id));
    let (status, body) = match path.split('/').nth(1).unwrap_or("") {
        "slow" => {
            let ms = path[6..].parse().unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            (StatusCode::OK, id_body())
        }
        "split" => {
            let ms = path.get(7..).and_then(|t| t.parse().ok()).unwrap_or(0);
            let _ = req.into_body().collect().await;
            let body = Bytes::from(format!("{}\n", state.opts.id));
            (
                StatusCode::OK,
                TestBody::later(Duration::from_millis(ms), body),
            )
        }
        "echo" => (StatusCode::OK, TestBody::Echo(req.into_body())),
        "bytes" => {
            let n = path[7..].parse().unwrap_or(0);
            (StatusCode::OK, TestBody::Bytes(n))
        }
        "headers" => (StatusCode::OK, TestBody::full(header_lines(&req))),
        "status" => {
            let code = path[8..].parse().unwrap_or(500);
            (
                StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
                id_body(),
            )
        }
        "reset" => {
            // Read the body first so the request reached us whole.
            let _ = req.into_body().collect().await;
            return Err(Reset);
        }
        "hang" => std::future::pending().await,
        "ws" => return Ok(websocket_echo(&state, stopped, req)),
        p if p.starts_with("grpc") => return Ok(grpc_echo(&state, req)),
        "set-cookie" => return Ok(set_cookies(&state, &path[12..])),
        _ => (StatusCode::OK, id_body()),
    };
    Ok(finish(&state, status, body))
}

/// `/healthz`: 200, or 503 while draining.
fn health_check(state: &State) -> Response<TestBody> {
    state.counters.health_checks.fetch_add(1, Ordering::Relaxed);
    let status = if state.draining.load(Ordering::Relaxed) {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    finish(state, status, TestBody::full("ok\n"))
}

/// `/headers`: the request's fields, one `name: value` line each.
fn header_lines(req: &Request<Incoming>) -> String {
    let mut out = String::new();
    for (k, v) in req.headers() {
        out.push_str(k.as_str());
        out.push_str(": ");
        out.push_str(&String::from_utf8_lossy(v.as_bytes()));
        out.push('\n');
    }
    out
}

/// `/grpc...`: the request body echoed as a gRPC response with trailers
/// (`grpc-status: 0`, `x-backend-id`).
fn grpc_echo(state: &State, req: Request<Incoming>) -> Response<TestBody> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static("0"));
    if let Ok(v) = HeaderValue::from_str(&state.opts.id) {
        trailers.insert("x-backend-id", v);
    }
    let mut r = finish(
        state,
        StatusCode::OK,
        TestBody::Grpc {
            body: req.into_body(),
            trailers: Some(trailers),
        },
    );
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    r
}

/// `/set-cookie/a=1;b=2`: the backend's id, with a `Set-Cookie` per pair.
fn set_cookies(state: &State, pairs: &str) -> Response<TestBody> {
    let mut r = finish(
        state,
        StatusCode::OK,
        TestBody::full(format!("{}\n", state.opts.id)),
    );
    for pair in pairs.split(';').filter(|p| !p.is_empty()) {
        if let Ok(v) = HeaderValue::from_str(&format!("{pair}; Path=/")) {
            r.headers_mut().append(header::SET_COOKIE, v);
        }
    }
    r
}

/// Accepts a WebSocket handshake and echoes messages until the client closes
/// (or the backend stops).
fn websocket_echo(
    state: &State,
    mut stopped: watch::Receiver<bool>,
    mut req: Request<Incoming>,
) -> Response<TestBody> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::WebSocketStream;

    let is_ws = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    let key = req.headers().get("sec-websocket-key").cloned();
    let (true, Some(key)) = (is_ws, key) else {
        return finish(
            state,
            StatusCode::BAD_REQUEST,
            TestBody::full("a WebSocket handshake is expected here\n"),
        );
    };
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(upgraded) = upgrade.await else { return };
        let mut ws =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        loop {
            let msg = tokio::select! {
                m = ws.next() => m,
                _ = stopped.changed() => return,
            };
            match msg {
                Some(Ok(m)) if m.is_text() || m.is_binary() => {
                    if ws.send(m).await.is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            }
        }
    });
    let mut r = finish(state, StatusCode::SWITCHING_PROTOCOLS, TestBody::Full(None));
    let h = r.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        h.insert("sec-websocket-accept", v);
    }
    r
}

fn finish(state: &State, status: StatusCode, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let (false, Ok(v)) = (state.opts.anonymous, HeaderValue::from_str(&state.opts.id)) {
        h.insert("x-backend-id", v);
    }
    for c in &state.opts.set_cookies {
        if let Ok(v) = HeaderValue::from_str(c) {
            h.append(header::SET_COOKIE, v);
        }
    }
    if state.draining.load(Ordering::Relaxed) {
        h.insert(header::CONNECTION, HeaderValue::from_static("close"));
        h.insert("x-unstick-drain", HeaderValue::from_static("1"));
    }
    r
}

/// Bodies the fake backend sends.
pub enum TestBody {
    Full(Option<Bytes>),
    /// N bytes, in 64 KiB chunks, made as they are sent.
    Bytes(u64),
    Echo(Incoming),
    /// The request body echoed, then these trailers.
    Grpc {
        body: Incoming,
        trailers: Option<http::HeaderMap>,
    },
    /// A body sent once the timer fires: hyper writes the head first.
    Later {
        timer: Pin<Box<tokio::time::Sleep>>,
        body: Option<Bytes>,
    },
}

impl TestBody {
    fn full(s: impl Into<Bytes>) -> TestBody {
        TestBody::Full(Some(s.into()))
    }

    fn later(after: Duration, body: Bytes) -> TestBody {
        TestBody::Later {
            timer: Box::pin(tokio::time::sleep(after)),
            body: Some(body),
        }
    }
}

/// One chunk of `/bytes/N` output.
static CHUNK: [u8; 64 * 1024] = [b'x'; 64 * 1024];

impl Body for TestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            TestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            TestBody::Bytes(left) => {
                if *left == 0 {
                    return Poll::Ready(None);
                }
                let n = (*left).min(CHUNK.len() as u64) as usize;
                *left -= n as u64;
                Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK[..n])))))
            }
            TestBody::Echo(b) => Pin::new(b).poll_frame(cx),
            TestBody::Later { timer, body } => {
                if body.is_some() && timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                Poll::Ready(body.take().map(|b| Ok(Frame::data(b))))
            }
            TestBody::Grpc { body, trailers } => loop {
                if trailers.is_none() {
                    return Poll::Ready(None);
                }
                match Pin::new(&mut *body).poll_frame(cx) {
                    Poll::Pending => return Poll::Pending,
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                    Poll::Ready(Some(Ok(frame))) => {
                        // Request trailers, if any, are not echoed.
                        if let Ok(data) = frame.into_data() {
                            return Poll::Ready(Some(Ok(Frame::data(data))));
                        }
                    }
                    Poll::Ready(None) => {
                        let t = trailers.take().expect("checked above");
                        return Poll::Ready(Some(Ok(Frame::trailers(t))));
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(b) => b.is_none(),
            TestBody::Bytes(n) => *n == 0,
            TestBody::Echo(b) => b.is_end_stream(),
            TestBody::Later { body, .. } => body.is_none(),
            TestBody::Grpc { trailers, .. } => trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            TestBody::Bytes(n) => SizeHint::with_exact(*n),
            TestBody::Echo(b) => b.size_hint(),
            TestBody::Later { body, .. } => {
                SizeHint::with_exact(body.as_ref().map_or(0, |b| b.len() as u64))
            }
            TestBody::Grpc { .. } => SizeHint::default(),
        }
    }
}

/// Serves the fake backend in this process until SIGTERM, then drains for
/// `drain` and returns. Used by `unstick testkit-backend`.
pub async fn run_process(listener: TcpListener, opts: BackendOptions, drain: Duration) {
    use tokio::signal::unix::{signal, SignalKind};
    let backend = FakeBackend::start_on(listener, opts);
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    term.recv().await;
    backend.drain();
    tokio::time::sleep(drain).await;
    // Let requests still in flight finish (bounded).
    for _ in 0..100 {
        if backend.counters.in_flight.load(Ordering::Relaxed) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    backend.stop();
}

/// A minimal client for tests: HTTP/1.1 (one request per connection, or
/// several on one keep-alive connection), HTTP/2 (h2c or over TLS, requests
/// multiplexed on one connection), and a TLS connector.
pub mod client {
    use std::net::SocketAddr;
    use std::path::Path;
    use std::sync::Arc;

    use bytes::Bytes;
    use http::{HeaderMap, Method, Request, StatusCode, Uri};
    use http_body_util::{BodyExt, Full};
    use hyper::body::Incoming;
    use hyper::client::conn::{http1, http2};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::io::{AsyncRead, AsyncWrite};
    use tokio::net::TcpStream;
    use tokio_rustls::client::TlsStream;

    /// Any client failure (connect, protocol).
    pub type Error = Box<dyn std::error::Error + Send + Sync>;

    /// A response, read whole.
    #[derive(Debug, Clone)]
    pub struct Reply {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Bytes,
        /// The trailers, if the response had any.
        pub trailers: Option<HeaderMap>,
    }

    impl Reply {
        pub fn text(&self) -> String {
            String::from_utf8_lossy(&self.body).into_owned()
        }

        /// The `X-Backend-Id` a fake backend set.
        pub fn backend(&self) -> String {
            self.headers
                .get("x-backend-id")
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .unwrap_or_default()
        }

        async fn read(resp: http::Response<Incoming>) -> Result<Reply, Error> {
            let (parts, body) = resp.into_parts();
            let collected = body.collect().await?;
            let trailers = collected.trailers().cloned();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body: collected.to_bytes(),
                trailers,
            })
        }
    }

    fn build(
        method: Method,
        uri: Uri,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Request<Full<Bytes>> {
        let mut req = Request::builder().method(method).uri(uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.body(Full::new(body)).expect("valid request")
    }

    /// A keep-alive HTTP/1.1 connection.
    pub struct Conn {
        send: http1::SendRequest<Full<Bytes>>,
        authority: String,
    }

    impl Conn {
        pub async fn open(addr: SocketAddr) -> Result<Conn, Error> {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Self::handshake(stream, &addr.to_string()).await
        }

        /// HTTP/1.1 over a stream already connected (e.g. TLS); `authority`
        /// goes in `Host`.
        pub async fn handshake<I>(io: I, authority: &str) -> Result<Conn, Error>
        where
            I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            let (send, conn) = http1::handshake(TokioIo::new(io)).await?;
            tokio::spawn(conn.with_upgrades());
            Ok(Conn {
                send,
                authority: authority.to_owned(),
            })
        }

        /// Sends one request and reads the whole response.
        pub async fn request(
            &mut self,
            method: Method,
            path: &str,
            headers: &[(&str, &str)],
            body: impl Into<Bytes>,
        ) -> Result<Reply, Error> {
            self.send.ready().await?;
            let mut req = build(method, path.parse()?, headers, body.into());
            if !req.headers().contains_key(http::header::HOST) {
                req.headers_mut()
                    .insert(http::header::HOST, self.authority.parse()?);
            }
            Reply::read(self.send.send_request(req).await?).await
        }

        pub async fn get(&mut self, path: &str) -> Result<Reply, Error> {
            self.request(Method::GET, path, &[], Bytes::new()).await
        }

        /// True once the connection has closed.
        pub fn is_closed(&self) -> bool {
            self.send.is_closed()
        }
    }

    /// An HTTP/2 connection; clones share it, and their requests multiplex.
    #[derive(Clone)]
    pub struct H2Conn {
        send: http2::SendRequest<Full<Bytes>>,
        scheme: &'static str,
        authority: String,
    }

    impl H2Conn {
        /// HTTP/2 with prior knowledge over TCP (h2c).
        pub async fn open(addr: SocketAddr) -> Result<H2Conn, Error> {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            Self::handshake(stream, "http", &addr.to_string()).await
        }

        /// HTTP/2 over a stream already connected; `scheme` and `authority`
        /// go in the request URIs.
        pub async fn handshake<I>(
            io: I,
            scheme: &'static str,
            authority: &str,
        ) -> Result<H2Conn, Error>
        where
            I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        {
            let (send, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(io)).await?;
            tokio::spawn(conn);
            Ok(H2Conn {
                send,
                scheme,
                authority: authority.to_owned(),
            })
        }

        /// Sends one request (a new stream) and reads the whole response.
        pub async fn request(
            &self,
            method: Method,
            path: &str,
            headers: &[(&str, &str)],
            body: impl Into<Bytes>,
        ) -> Result<Reply, Error> {
            let uri: Uri = format!("{}://{}{path}", self.scheme, self.authority).parse()?;
            let mut send = self.send.clone();
            send.ready().await?;
            let req = build(method, uri, headers, body.into());
            Reply::read(send.send_request(req).await?).await
        }

        pub async fn get(&self, path: &str) -> Result<Reply, Error> {
            self.request(Method::GET, path, &[], Bytes::new()).await
        }

        pub fn is_closed(&self) -> bool {
            self.send.is_closed()
        }
    }

    /// Connects with TLS, trusting the CA certificates in `ca_file`, sending
    /// `server_name` as SNI and offering `alpn`.
    pub async fn tls(
        addr: SocketAddr,
        server_name: &str,
        ca_file: &Path,
        alpn: &[&[u8]],
    ) -> Result<TlsStream<TcpStream>, Error> {
        let roots = crate::tls::root_store(Some(ca_file))?;
        let mut config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let name = rustls::pki_types::ServerName::try_from(server_name.to_owned())?;
        let stream = TcpStream::connect(addr).await?;
        let _ = stream.set_nodelay(true);
        Ok(tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, stream)
            .await?)
    }

    /// One request on a new connection.
    pub async fn request(
        addr: SocketAddr,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> Result<Reply, Error> {
        Conn::open(addr)
            .await?
            .request(method, path, headers, body)
            .await
    }

    /// `GET path` on a new connection.
    pub async fn get(addr: SocketAddr, path: &str) -> Result<Reply, Error> {
        request(addr, Method::GET, path, &[], Bytes::new()).await
    }
}

/// Backends that are never connected to, for balancer tests and benches:
/// one per weight, on 127.0.0.1 ports 1, 2, ...
pub fn backends(weights: &[u32]) -> Vec<Arc<crate::upstream::Backend>> {
    use crate::config::{BackendSpec, UpstreamProtocol};
    use crate::upstream::{Backend, PoolSettings};
    let metrics = crate::metrics::Metrics::new_unregistered();
    let pool = PoolSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        max_idle: 0,
        tls: None,
    };
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| {
            let addr = SocketAddr::from(([127, 0, 0, 1], (i + 1) as u16));
            let spec = BackendSpec {
                address: addr.to_string(),
                weight,
                protocol: UpstreamProtocol::Http1,
            };
            Arc::new(Backend::new(spec, addr, pool.clone(), &metrics))
        })
        .collect()
}

/// A config for tests: proxy and admin on 127.0.0.1 port 0, access log off,
/// the given backends. Adjust fields before starting.
pub fn test_config(backends: &[SocketAddr]) -> crate::config::Config {
    let mut c = crate::config::Config::defaults();
    c.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    c.admin = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    c.access_log = crate::config::AccessLog::Off;
    c.backends = backends
        .iter()
        .map(|a| crate::config::BackendSpec {
            address: a.to_string(),
            weight: 1,
            protocol: crate::config::UpstreamProtocol::Http1,
        })
        .collect();
    c
}

/// An address where nothing listens, and that stays so: the port is held by
/// a bound socket that never listens, so connects are refused and the
/// kernel cannot hand the port to anyone else (say, the proxy under test)
/// while this value lives.
pub struct DeadPort {
    pub addr: SocketAddr,
    _socket: socket2::Socket,
}

impl DeadPort {
    pub fn new() -> DeadPort {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .expect("socket");
        socket
            .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
            .expect("bind");
        let addr = socket
            .local_addr()
            .expect("bound")
            .as_socket()
            .expect("an IP socket");
        DeadPort {
            addr,
            _socket: socket,
        }
    }
}

impl Default for DeadPort {
    fn default() -> Self {
        DeadPort::new()
    }
}
