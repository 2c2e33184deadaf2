//! The accept loop: connection limits, TLS, HTTP/1.1 and HTTP/2, client
//! timeouts, graceful drain, and the optional HTTP->HTTPS redirect listener.
//!
//! On a TLS listener the handshake runs in the connection's own task,
//! bounded by the client header timeout; ALPN picks HTTP/2 or HTTP/1.1.
//! Cleartext connections are HTTP/1.1, or HTTP/2 with prior knowledge (h2c)
//! when HTTP/2 is enabled.
//!
//! Shutdown has two phases. On `Drain` the listener closes (new connections
//! are refused) and every connection finishes the requests it has, then
//! closes; after the drain timeout, `Close` drops whatever is left.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use std::future::Future;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Http2};
use crate::metrics::Metrics;
use crate::proxy::{ClientInfo, Proxy, ResponseBody};
use crate::tls::ALPN_H2;

/// Client-side settings of the listener.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_connections: usize,
    pub client_header: Duration,
    pub client_idle: Duration,
    pub drain: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    pub http2: Http2,
    /// The listener's TLS config (None: cleartext). Made by `tls::ServerCerts`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerOptions {
    pub fn from_config(c: &Config) -> ServerOptions {
        ServerOptions {
            max_connections: c.limits.max_connections,
            client_header: c.timeouts.client_header,
            client_idle: c.timeouts.client_idle,
            drain: c.timeouts.drain,
            max_header_bytes: c.limits.max_header_bytes,
            max_headers: c.limits.max_headers,
            http2: c.http2.clone(),
            tls: None,
        }
    }
}

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Running,
    /// Stop accepting; finish requests in flight.
    Drain,
    /// Drop every connection now.
    Close,
}

/// Tells every part of the server which [`Phase`] it is in.
#[derive(Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<Phase>>,
}

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            tx: Arc::new(watch::channel(Phase::Running).0),
        }
    }

    pub fn set(&self, phase: Phase) {
        self.tx.send_replace(phase);
    }

    pub fn phase(&self) -> Phase {
        *self.tx.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.tx.subscribe()
    }

    /// Resolves once the phase is at least `phase`.
    pub async fn reached(&self, phase: Phase) {
        let mut rx = self.subscribe();
        let _ = rx
            .wait_for(|p| match phase {
                Phase::Running => true,
                Phase::Drain => *p != Phase::Running,
                Phase::Close => *p == Phase::Close,
            })
            .await;
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// Counts open connections and wakes the drain when the last one closes.
#[derive(Default)]
struct OpenConns {
    count: AtomicUsize,
    zero: Notify,
}

impl OpenConns {
    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Serves `listener` until `shutdown` reaches `Drain`, then drains: waits for
/// open connections to finish, at most `opts.drain`, and returns.
///
/// `limit` caps client connections; workers share one.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    shutdown: Shutdown,
    limit: Arc<Semaphore>,
) -> io::Result<()> {
    let opts = Arc::new(opts);
    let open = Arc::new(OpenConns::default());
    let builders = Arc::new(Builders::new(&opts));
    let acceptor = opts.tls.clone().map(TlsAcceptor::from);

    {
        let mut drain = pin!(shutdown.reached(Phase::Drain));
        loop {
            let permit = tokio::select! {
                _ = &mut drain => break,
                p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let (stream, addr) = tokio::select! {
                _ = &mut drain => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        // Out of file descriptors and the like: back off, don't spin.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            open.count.fetch_add(1, Ordering::AcqRel);
            proxy.metrics.connections_open.inc();
            let (proxy, opts, builders, open, shutdown, acceptor) = (
                proxy.clone(),
                opts.clone(),
                builders.clone(),
                open.clone(),
                shutdown.clone(),
                acceptor.clone(),
            );
            tokio::spawn(async move {
                match acceptor {
                    None => {
                        let client = ClientInfo::new(addr, false);
                        let speak = builders.cleartext();
                        serve_connection(
                            stream,
                            client,
                            proxy.clone(),
                            &opts,
                            &builders,
                            speak,
                            shutdown,
                        )
                        .await;
                    }
                    Some(acceptor) => {
                        let handshake = tokio::select! {
                            r = accept_tls(stream, &acceptor, opts.client_header) => r,
                            _ = shutdown.reached(Phase::Close) => Err(HandshakeError::Shutdown),
                        };
                        match handshake {
                            Ok(tls) => {
                                let client = ClientInfo::new(addr, true);
                                let speak = builders.negotiated(tls.get_ref().1.alpn_protocol());
                                serve_connection(
                                    tls,
                                    client,
                                    proxy.clone(),
                                    &opts,
                                    &builders,
                                    speak,
                                    shutdown,
                                )
                                .await;
                            }
                            Err(e) => handshake_failed(&proxy.metrics, addr, &e),
                        }
                    }
                }
                proxy.metrics.connections_open.dec();
                if open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                    open.zero.notify_waiters();
                }
                drop(permit);
            });
        }
    }
    // New connections are refused from here on. Connections finish what
    // they have; at `Close` (set by `drain_deadline` when the drain timeout
    // passes, with every worker's connections in mind) they are dropped.
    drop(listener);
    open.wait_zero().await;
    Ok(())
}

/// Ends the drain: once `Drain` is reached, waits `drain` and then moves
/// every worker to `Close`, which drops the connections still open.
pub async fn drain_deadline(shutdown: Shutdown, drain: Duration) {
    shutdown.reached(Phase::Drain).await;
    tokio::select! {
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("drain timeout: closing the connections left");
            shutdown.set(Phase::Close);
        }
        _ = shutdown.reached(Phase::Close) => {}
    }
}

/// Which HTTP a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speak {
    /// HTTP/1.1, or HTTP/2 if the client opens with the HTTP/2 preface.
    Auto,
    Http1,
    Http2,
}

/// hyper's default request header count limit.
const HYPER_DEFAULT_MAX_HEADERS: usize = 100;

/// hyper's connection builders, configured once from the options.
pub struct Builders {
    auto: auto::Builder<TokioExecutor>,
    http1: http1::Builder,
    http2: http2::Builder<TokioExecutor>,
    http2_enabled: bool,
}

impl Builders {
    pub fn new(opts: &ServerOptions) -> Builders {
        let buf = opts.max_header_bytes.max(8192);
        let mut auto = auto::Builder::new(TokioExecutor::new());
        // Header and idle timeouts are enforced by `serve_connection`.
        auto.http1()
            .keep_alive(true)
            .max_buf_size(buf)
            .header_read_timeout(None);
        auto.http2()
            .max_concurrent_streams(opts.http2.max_concurrent_streams)
            .initial_stream_window_size(opts.http2.initial_stream_window)
            .initial_connection_window_size(opts.http2.initial_connection_window)
            .max_header_list_size(opts.max_header_bytes as u32);
        let mut http1 = http1::Builder::new();
        http1
            .keep_alive(true)
            .max_buf_size(buf)
            .header_read_timeout(None);
        // hyper's own limit is 100 headers, parsed into an uninitialized
        // stack array; setting any limit switches it to a buffer initialized
        // on every request (~1,700 instructions each, callgrind). Only set
        // it when it differs.
        if opts.max_headers != HYPER_DEFAULT_MAX_HEADERS {
            auto.http1().max_headers(opts.max_headers);
            http1.max_headers(opts.max_headers);
        }
        let mut http2 = http2::Builder::new(TokioExecutor::new());
        http2
            .max_concurrent_streams(opts.http2.max_concurrent_streams)
            .initial_stream_window_size(opts.http2.initial_stream_window)
            .initial_connection_window_size(opts.http2.initial_connection_window)
            .max_header_list_size(opts.max_header_bytes as u32);
        Builders {
            auto,
            http1,
            http2,
            http2_enabled: opts.http2.enabled,
        }
    }

    /// A cleartext connection: h2c by prior knowledge only if HTTP/2 is on.
    /// (hyper-util's `http1_only` is ignored with upgrades, hence the
    /// separate HTTP/1 builder.)
    pub fn cleartext(&self) -> Speak {
        if self.http2_enabled {
            Speak::Auto
        } else {
            Speak::Http1
        }
    }

    /// A TLS connection, by the protocol ALPN settled on.
    pub fn negotiated(&self, alpn: Option<&[u8]>) -> Speak {
        match alpn {
            Some(p) if p == ALPN_H2 && self.http2_enabled => Speak::Http2,
            Some(_) => Speak::Http1,
            None => self.cleartext(),
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pin_project_lite::pin_project! {
    /// A connection served by one of hyper's builders, with its graceful shutdown.
    struct Served<F> {
        #[pin]
        conn: F,
        graceful: fn(Pin<&mut F>),
    }
}

/// A connection being served, whichever builder serves it.
trait ServedConn: Future<Output = Result<(), BoxError>> + Send {
    fn graceful_shutdown(self: Pin<&mut Self>);
}

impl<F, E> Future for Served<F>
where
    F: Future<Output = Result<(), E>>,
    E: Into<BoxError>,
{
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().conn.poll(cx).map_err(Into::into)
    }
}

impl<F, E> ServedConn for Served<F>
where
    F: Future<Output = Result<(), E>> + Send,
    E: Into<BoxError>,
{
    fn graceful_shutdown(self: Pin<&mut Self>) {
        let this = self.project();
        (this.graceful)(this.conn);
    }
}

fn served<'a, F, E>(conn: F, graceful: fn(Pin<&mut F>)) -> Pin<Box<dyn ServedConn + 'a>>
where
    F: Future<Output = Result<(), E>> + Send + 'a,
    E: Into<BoxError> + 'a,
{
    Box::pin(Served { conn, graceful })
}

/// Activity on one client connection, shared by its I/O, its requests, and
/// its timer.
struct ConnActivity {
    /// Requests whose response has not finished.
    active: AtomicU32,
    /// When the connection last became idle (ms since `start`).
    idle_since: AtomicU64,
    /// When the first byte of a new request head arrived while idle (ms + 1; 0: none).
    head_started: AtomicU64,
    /// Set once an HTTP/2 preface is seen: no per-request head timeout.
    http2: AtomicBool,
    start: Instant,
}

impl ConnActivity {
    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

/// Serves one connection until it closes, idles out, or shutdown closes it.
pub async fn serve_connection<I>(
    io: I,
    client: ClientInfo,
    proxy: Arc<Proxy>,
    opts: &ServerOptions,
    builders: &Builders,
    speak: Speak,
    shutdown: Shutdown,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(ConnActivity {
        active: AtomicU32::new(0),
        idle_since: AtomicU64::new(0),
        head_started: AtomicU64::new(0),
        http2: AtomicBool::new(false),
        start: Instant::now(),
    });
    let io = WatchedIo {
        inner: io,
        activity: activity.clone(),
        first_read: true,
    };
    // Every tunnel made from this connection holds a sender: the connection
    // stays counted as open (for the drain and the connection limit) until
    // the last tunnel closes.
    let (tunnels, mut tunnels_closed) = tokio::sync::mpsc::channel::<()>(1);
    let service = {
        let activity = activity.clone();
        let shutdown = shutdown.clone();
        let client = client.clone();
        service_fn(move |mut req: Request<Incoming>| {
            if crate::proxy::headers::is_upgrade(req.headers()) {
                req.extensions_mut().insert(TunnelHold {
                    _open: tunnels.clone(),
                    shutdown: shutdown.clone(),
                });
            }
            activity.active.fetch_add(1, Ordering::Relaxed);
            activity.head_started.store(0, Ordering::Relaxed);
            let guard = RequestGuard(activity.clone());
            let proxy = proxy.clone();
            let client = client.clone();
            async move {
                let response = proxy.handle(req, client).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _guard: guard,
                }))
            }
        })
    };
    let io = TokioIo::new(io);
    let mut conn = match speak {
        Speak::Auto => served(
            builders.auto.serve_connection_with_upgrades(io, service),
            |c| c.graceful_shutdown(),
        ),
        Speak::Http1 => served(
            builders.http1.serve_connection(io, service).with_upgrades(),
            |c| c.graceful_shutdown(),
        ),
        Speak::Http2 => served(builders.http2.serve_connection(io, service), |c| {
            c.graceful_shutdown()
        }),
    };
    let mut phase = shutdown.subscribe();
    let tick = (opts.client_header.min(opts.client_idle) / 4).max(Duration::from_millis(10));
    let mut graceful = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(client = %client.addr, error = %e, "client connection error");
                }
                break;
            }
            changed = phase.changed(), if !graceful => {
                let p = if changed.is_ok() { *phase.borrow() } else { Phase::Close };
                if p != Phase::Running {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = shutdown.reached(Phase::Close), if graceful => break,
            _ = tokio::time::sleep(tick) => {
                if activity.active.load(Ordering::Relaxed) != 0 {
                    continue;
                }
                let now = activity.now();
                let head = activity.head_started.load(Ordering::Relaxed);
                if head != 0 && !activity.http2.load(Ordering::Relaxed)
                    && now.saturating_sub(head - 1) > opts.client_header.as_millis() as u64
                {
                    tracing::debug!(client = %client.addr, "client sent no complete request head in time");
                    break;
                }
                let idle = activity.idle_since.load(Ordering::Relaxed);
                if head == 0 && !graceful
                    && now.saturating_sub(idle) > opts.client_idle.as_millis() as u64
                {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
        }
    }
    // An upgraded connection lives on in its tunnel (which closes itself at
    // `Phase::Close`); wait for it.
    drop(conn);
    let _ = tunnels_closed.recv().await;
}

/// Put on an upgrade request by the server: the tunnel that the upgrade
/// becomes holds it, so the client connection counts as open until the
/// tunnel closes, and the tunnel learns when shutdown reaches `Close`.
#[derive(Clone)]
pub struct TunnelHold {
    _open: tokio::sync::mpsc::Sender<()>,
    pub shutdown: Shutdown,
}

/// Marks a request finished on its connection when its response body is done.
struct RequestGuard(Arc<ConnActivity>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now(), Ordering::Relaxed);
        a.active.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The proxy's response body, holding its connection's request guard.
pub struct TrackedBody {
    body: ResponseBody,
    _guard: RequestGuard,
}

impl Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, hyper::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, noting when a new request head starts to arrive.
struct WatchedIo<I> {
    inner: I,
    activity: Arc<ConnActivity>,
    first_read: bool,
}

impl<I: AsyncRead + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let res = Pin::new(&mut self.inner).poll_read(cx, buf);
        let got = &buf.filled()[before..];
        if !got.is_empty() {
            let this = &mut *self;
            let a = &this.activity;
            if this.first_read {
                if got.starts_with(b"PRI * HTTP/2") {
                    a.http2.store(true, Ordering::Relaxed);
                }
                this.first_read = false;
            }
            if a.active.load(Ordering::Relaxed) == 0 && a.head_started.load(Ordering::Relaxed) == 0
            {
                a.head_started.store(a.now() + 1, Ordering::Relaxed);
            }
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for WatchedIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Binds a listener on `addr` with `SO_REUSEADDR`, a deep backlog, and
/// `TCP_NODELAY` on accepted sockets.
/// Binds `n` listeners on one address for `n` worker threads, with
/// `SO_REUSEPORT` so the kernel spreads connections over them evenly.
///
/// The address is first bound once without `SO_REUSEPORT`: that fails if
/// anyone else holds it (so a second unstick cannot silently share the port)
/// and resolves port 0 to a real port. Listeners are std sockets, to be
/// registered with each worker's own runtime.
pub fn bind_workers(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..n.max(1))
        .map(|_| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}

pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

// === TLS handshake ===

/// Why a connection to the TLS listener got no TLS session.
#[derive(Debug)]
enum HandshakeError {
    /// The client closed before sending anything (a port check): not counted.
    Closed,
    /// The first bytes were not a TLS handshake (`http`: they looked like a
    /// plain HTTP request, which got a 400).
    NotTls {
        http: bool,
    },
    Failed(io::Error),
    Timeout(Duration),
    /// The server closed while the handshake ran.
    Shutdown,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => f.write_str("closed before the handshake"),
            HandshakeError::NotTls { http: true } => {
                f.write_str("plain HTTP sent to the TLS port (answered 400)")
            }
            HandshakeError::NotTls { http: false } => f.write_str("not a TLS handshake"),
            HandshakeError::Failed(e) => write!(f, "{e}"),
            HandshakeError::Timeout(d) => write!(f, "no complete handshake within {d:?}"),
            HandshakeError::Shutdown => f.write_str("server shutting down"),
        }
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the TLS handshake, bounded by `timeout`. A client that speaks plain
/// HTTP gets a short 400 instead of a TLS alert it could not read.
async fn accept_tls(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let work = async move {
        let mut first = [0u8; 1];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(HandshakeError::Failed)?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            let http = first[0].is_ascii_uppercase();
            if http {
                reply_plain_http(stream).await;
            }
            return Err(HandshakeError::NotTls { http });
        }
        acceptor
            .accept(stream)
            .await
            .map_err(HandshakeError::Failed)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)))
}

/// Answers a plain HTTP request on the TLS port with a 400 and closes.
async fn reply_plain_http(mut stream: TcpStream) {
    const BODY: &str = "this port speaks HTTPS: use https://\n";
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Read what the client sent (bounded) so closing does not reset the
    // connection before it has read the answer.
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

fn handshake_failed(metrics: &Metrics, client: SocketAddr, e: &HandshakeError) {
    match e {
        HandshakeError::Closed | HandshakeError::Shutdown => {
            tracing::debug!(client = %client, error = %e, "no TLS handshake");
        }
        _ => {
            tracing::debug!(client = %client, error = %e, "TLS handshake failed");
            metrics.tls_handshake_failures.inc();
        }
    }
}

// === redirect listener ===

/// Serves the cleartext redirect listener until `shutdown` reaches `Drain`:
/// every request gets a 308 to the same host and path over https on
/// `https_port`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    opts: ServerOptions,
    shutdown: Shutdown,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.client_header)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(false);
    let builder = Arc::new(builder);
    let mut drain = pin!(shutdown.reached(Phase::Drain));
    loop {
        let permit = tokio::select! {
            _ = &mut drain => return Ok(()),
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut drain => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed (redirect listener)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| async move {
                Ok::<_, Infallible>(redirect_response(&req, https_port))
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.reached(Phase::Close) => {}
            }
            drop(permit);
        });
    }
}

/// A 308 to `https://HOST[:PORT]/path?query`, or a 400 without a usable Host.
fn redirect_response(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"bad request: no Host to redirect to\n",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", host.host());
    let mut r = Response::new(Full::new(Bytes::from(format!("{location}\n"))));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
