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
//! - `/echo`: streams the request body back
//! - `/bytes/N`: streams N bytes
//! - `/headers`: the request headers, one `name: value` per line
//! - `/status/CODE`: that status
//! - `/reset`: closes the connection without answering
//! - `/hang`: never answers
//! - `/healthz`: 200, or 503 while draining
//! - `/set-cookie/NAME=VALUE[;NAME=VALUE...]`: one `Set-Cookie` per pair
//!
//! Every response carries `X-Backend-Id: ID`. After [`FakeBackend::drain`]
//! (SIGTERM for the process), every response carries `Connection: close`
//! and `X-Unstick-Drain: 1` and the health check answers 503.

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

pub mod process;

/// How a fake backend behaves.
#[derive(Debug, Clone, Default)]
pub struct BackendOptions {
    /// Returned in `X-Backend-Id` and as the default body.
    pub id: String,
    /// Added to every response.
    pub delay: Duration,
    /// `Set-Cookie` values added to every response.
    pub set_cookies: Vec<String>,
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

    /// Starts on a bound listener.
    pub fn start_on(listener: TcpListener, opts: BackendOptions) -> FakeBackend {
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
                let s = s.clone();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| handle(s.clone(), req));
                    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stopped.changed() => {}
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

async fn handle(state: Arc<State>, req: Request<Incoming>) -> Result<Response<TestBody>, Reset> {
    let path = req.uri().path().to_owned();
    let c = &state.counters;
    if path == "/healthz" {
        c.health_checks.fetch_add(1, Ordering::Relaxed);
        let status = if state.draining.load(Ordering::Relaxed) {
            StatusCode::SERVICE_UNAVAILABLE
        } else {
            StatusCode::OK
        };
        return Ok(finish(&state, status, TestBody::full("ok\n")));
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
        "echo" => (StatusCode::OK, TestBody::Echo(req.into_body())),
        "bytes" => {
            let n = path[7..].parse().unwrap_or(0);
            (StatusCode::OK, TestBody::Bytes(n))
        }
        "headers" => {
            let mut out = String::new();
            for (k, v) in req.headers() {
                out.push_str(k.as_str());
                out.push_str(": ");
                out.push_str(&String::from_utf8_lossy(v.as_bytes()));
                out.push('\n');
            }
            (StatusCode::OK, TestBody::full(out))
        }
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
        "set-cookie" => {
            let mut r = finish(&state, StatusCode::OK, id_body());
            for pair in path[12..].split(';').filter(|p| !p.is_empty()) {
                if let Ok(v) = HeaderValue::from_str(&format!("{pair}; Path=/")) {
                    r.headers_mut().append(header::SET_COOKIE, v);
                }
            }
            return Ok(r);
        }
        _ => (StatusCode::OK, id_body()),
    };
    Ok(finish(&state, status, body))
}

fn finish(state: &State, status: StatusCode, body: TestBody) -> Response<TestBody> {
    let mut r = Response::new(body);
    *r.status_mut() = status;
    let h = r.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&state.opts.id) {
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
}

impl TestBody {
    fn full(s: impl Into<Bytes>) -> TestBody {
        TestBody::Full(Some(s.into()))
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
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            TestBody::Full(b) => b.is_none(),
            TestBody::Bytes(n) => *n == 0,
            TestBody::Echo(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            TestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            TestBody::Bytes(n) => SizeHint::with_exact(*n),
            TestBody::Echo(b) => b.size_hint(),
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

/// A minimal HTTP/1.1 client for tests: one request per connection, or
/// several on one keep-alive connection.
pub mod client {
    use std::net::SocketAddr;

    use bytes::Bytes;
    use http::{HeaderMap, Method, Request, StatusCode};
    use http_body_util::{BodyExt, Full};
    use hyper::client::conn::http1;
    use hyper_util::rt::TokioIo;
    use tokio::net::TcpStream;

    /// Any client failure (connect, protocol).
    pub type Error = Box<dyn std::error::Error + Send + Sync>;

    /// A response, read whole.
    #[derive(Debug, Clone)]
    pub struct Reply {
        pub status: StatusCode,
        pub headers: HeaderMap,
        pub body: Bytes,
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
    }

    /// A keep-alive connection.
    pub struct Conn {
        send: http1::SendRequest<Full<Bytes>>,
        addr: SocketAddr,
    }

    impl Conn {
        pub async fn open(addr: SocketAddr) -> Result<Conn, Error> {
            let stream = TcpStream::connect(addr).await?;
            let _ = stream.set_nodelay(true);
            let (send, conn) = http1::handshake(TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            Ok(Conn { send, addr })
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
            let mut req = Request::builder()
                .method(method)
                .uri(path)
                .header("host", self.addr.to_string());
            for (k, v) in headers {
                req = req.header(*k, *v);
            }
            let req = req.body(Full::new(body.into())).expect("valid request");
            let resp = self.send.send_request(req).await?;
            let (parts, body) = resp.into_parts();
            let body = body.collect().await?.to_bytes();
            Ok(Reply {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        }

        pub async fn get(&mut self, path: &str) -> Result<Reply, Error> {
            self.request(Method::GET, path, &[], Bytes::new()).await
        }
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
