//! The accept loop: connection limits, HTTP/1.1 and HTTP/2, client timeouts,
//! and graceful drain.
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

use hyper::body::{Body, Frame, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;

use crate::config::{Config, Http2};
use crate::proxy::{ClientInfo, Proxy, ResponseBody};

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
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    shutdown: Shutdown,
) -> io::Result<()> {
    let opts = Arc::new(opts);
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let open = Arc::new(OpenConns::default());
    let builder = Arc::new(http_builder(&opts));

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
            let (proxy, opts, builder, open, shutdown) = (
                proxy.clone(),
                opts.clone(),
                builder.clone(),
                open.clone(),
                shutdown.clone(),
            );
            tokio::spawn(async move {
                let client = ClientInfo { addr, https: false };
                serve_connection(stream, client, proxy.clone(), &opts, &builder, shutdown).await;
                proxy.metrics.connections_open.dec();
                if open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
                    open.zero.notify_waiters();
                }
                drop(permit);
            });
        }
    }
    // New connections are refused from here on.
    drop(listener);
    if tokio::time::timeout(opts.drain, open.wait_zero())
        .await
        .is_err()
    {
        tracing::warn!(
            open = open.count.load(Ordering::Relaxed),
            "drain timeout: closing the connections left"
        );
    }
    shutdown.set(Phase::Close);
    open.wait_zero().await;
    Ok(())
}

fn http_builder(opts: &ServerOptions) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    b.http1()
        .keep_alive(true)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .max_headers(opts.max_headers)
        // Header and idle timeouts are enforced by `serve_connection`.
        .header_read_timeout(None);
    b.http2()
        .max_concurrent_streams(opts.http2.max_concurrent_streams)
        .initial_stream_window_size(opts.http2.initial_stream_window)
        .initial_connection_window_size(opts.http2.initial_connection_window)
        .max_header_list_size(opts.max_header_bytes as u32);
    if !opts.http2.enabled {
        b = b.http1_only();
    }
    b
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
    builder: &auto::Builder<TokioExecutor>,
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
    let service = {
        let activity = activity.clone();
        service_fn(move |req| {
            activity.active.fetch_add(1, Ordering::Relaxed);
            activity.head_started.store(0, Ordering::Relaxed);
            let guard = RequestGuard(activity.clone());
            let proxy = proxy.clone();
            async move {
                let response = proxy.handle(req, client).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody { body, _guard: guard }))
            }
        })
    };
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut conn = pin!(conn);
    let mut phase = shutdown.subscribe();
    let tick = (opts.client_header.min(opts.client_idle) / 4).max(Duration::from_millis(10));
    let mut graceful = false;
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                if let Err(e) = res {
                    tracing::debug!(client = %client.addr, error = %e, "client connection error");
                }
                return;
            }
            changed = phase.changed(), if !graceful => {
                let p = if changed.is_ok() { *phase.borrow() } else { Phase::Close };
                if p != Phase::Running {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = shutdown.reached(Phase::Close), if graceful => return,
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
                    return;
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
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
