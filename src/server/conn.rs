//! One client connection: hyper's builders, client header and idle timeouts, and the
//! bookkeeping that lets a drain know when a connection is done.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Request;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::server::conn::{http1, http2};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

use super::{Phase, ServerOptions, Shutdown};
use crate::proxy::{ClientInfo, Proxy, ResponseBody};
use crate::tls::ALPN_H2;

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
    /// Set when a request line too long was answered 414.
    uri_too_long: AtomicBool,
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
    // Plain HTTP/1.1 requests first go through the fast path; it returns
    // the connection, and the bytes it read, at the first request it leaves
    // to hyper.
    let (io, prefix) = if super::fast::usable(opts, speak) {
        let mut io = io;
        let outcome = tokio::select! {
            o = super::fast::serve(&mut io, &client, &proxy, opts, &shutdown) => o,
            _ = shutdown.reached(Phase::Close) => super::fast::Outcome::Closed,
        };
        match outcome {
            super::fast::Outcome::Closed => return,
            super::fast::Outcome::Handover(prefix) => (io, prefix),
        }
    } else {
        (io, bytes::Bytes::new())
    };
    let activity = Arc::new(ConnActivity {
        active: AtomicU32::new(0),
        idle_since: AtomicU64::new(0),
        head_started: AtomicU64::new(0),
        http2: AtomicBool::new(false),
        uri_too_long: AtomicBool::new(false),
        start: Instant::now(),
    });
    let io = WatchedIo {
        inner: io,
        prefix,
        activity: activity.clone(),
        first_read: true,
        line: LineWatch::new(opts.max_header_bytes),
    };
    // Every tunnel made from this connection holds a sender: the connection
    // stays counted as open (for the drain and the connection limit) until
    // the last tunnel closes.
    let (tunnels, mut tunnels_closed) = tokio::sync::mpsc::channel::<()>(1);
    let metrics = proxy.metrics.clone();
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
                    count_client_fault(&metrics, &*e);
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
    if activity.uri_too_long.load(Ordering::Relaxed) {
        metrics.client_error(crate::metrics::ClientErrorKind::UriTooLong);
    }
    // An upgraded connection lives on in its tunnel (which closes itself at
    // `Phase::Close`); wait for it.
    drop(conn);
    let _ = tunnels_closed.recv().await;
}

/// Counts a request hyper refused before it became one (a head it could
/// not parse, or one too large: hyper answered it 400, 414 or 431).
fn count_client_fault(metrics: &crate::metrics::Metrics, e: &(dyn std::error::Error + 'static)) {
    use crate::metrics::ClientErrorKind;
    let Some(e) = e.downcast_ref::<hyper::Error>() else {
        return;
    };
    if e.is_parse_too_large() {
        metrics.client_error(ClientErrorKind::HeaderTooLarge);
    } else if e.is_parse() {
        metrics.client_error(ClientErrorKind::BadRequest);
    }
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
    /// Bytes the fast path read before handing the connection over: read first.
    prefix: bytes::Bytes,
    activity: Arc<ConnActivity>,
    first_read: bool,
    line: LineWatch,
}

/// A request line that grows past the head limit is answered `414 URI Too
/// Long` here: hyper would read it as a head too large (431), since it only
/// tells a long target from a large head once the whole head is in. Lines
/// are watched from the first byte read while no request is in flight
/// (a request pipelined behind another is hyper's to judge).
struct LineWatch {
    limit: usize,
    /// Bytes of the request line read so far (None: not in one).
    read: Option<usize>,
    /// Bytes of the 414 answer written, once the line is refused.
    refused: Option<usize>,
}

const URI_TOO_LONG: &[u8] =
    b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

impl LineWatch {
    fn new(limit: usize) -> LineWatch {
        LineWatch {
            limit,
            read: None,
            refused: None,
        }
    }

    /// Notes bytes read; true once the line is too long.
    fn read(&mut self, got: &[u8], head_starts: bool) -> bool {
        if head_starts {
            self.read = Some(0);
        }
        let Some(so_far) = self.read else {
            return false;
        };
        if got.contains(&b'\n') {
            self.read = None;
            return false;
        }
        self.read = Some(so_far + got.len());
        so_far + got.len() >= self.limit
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.line.refused.is_some() {
            return self.refuse_line(cx);
        }
        let before = buf.filled().len();
        let res = if self.prefix.is_empty() {
            Pin::new(&mut self.inner).poll_read(cx, buf)
        } else {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
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
            let head_starts = a.active.load(Ordering::Relaxed) == 0
                && a.head_started.load(Ordering::Relaxed) == 0;
            if head_starts {
                a.head_started.store(a.now() + 1, Ordering::Relaxed);
            }
            let http2 = a.http2.load(Ordering::Relaxed);
            if !http2 && this.line.read(got, head_starts) {
                // Not passed on: hyper sees the connection end instead.
                buf.set_filled(before);
                this.line.refused = Some(0);
                this.activity.uri_too_long.store(true, Ordering::Relaxed);
                return this.refuse_line(cx);
            }
        }
        res
    }
}

impl<I: AsyncWrite + Unpin> WatchedIo<I> {
    /// Writes the 414 answer to a request line too long, then reads as the
    /// end of the connection.
    fn refuse_line(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut written = self.line.refused.unwrap_or(0);
        while written < URI_TOO_LONG.len() {
            match Pin::new(&mut self.inner).poll_write(cx, &URI_TOO_LONG[written..]) {
                Poll::Ready(Ok(n)) if n > 0 => written += n,
                Poll::Ready(_) => break,
                Poll::Pending => {
                    self.line.refused = Some(written);
                    return Poll::Pending;
                }
            }
        }
        self.line.refused = Some(URI_TOO_LONG.len());
        let _ = Pin::new(&mut self.inner).poll_flush(cx);
        Poll::Ready(Ok(()))
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
