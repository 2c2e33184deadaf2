//! One client connection: hyper's builders, client header and idle timeouts, and the
//! bookkeeping that lets a drain know when a connection is done.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};

use atomic_waker::AtomicWaker;
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

use super::h2flood::{self, ControlFrames};
use super::{Phase, ServerOptions, Shutdown, TunnelHold};
use crate::metrics::ClientErrorKind;
use crate::proxy::{ClientInfo, Proxy, ResponseBody};
use crate::tls::ALPN_H2;
use crate::upstream::BodyError;

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

    /// Serves `io` with the builder for `speak`.
    fn serve<'a, I, S>(
        &'a self,
        speak: Speak,
        io: TokioIo<I>,
        service: S,
    ) -> Pin<Box<dyn ServedConn + 'a>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        S: hyper::service::Service<
                Request<Incoming>,
                Response = http::Response<TrackedBody>,
                Error = Infallible,
            > + Send
            + 'static,
        S::Future: Send + 'static,
    {
        match speak {
            Speak::Auto => served(self.auto.serve_connection_with_upgrades(io, service), |c| {
                c.graceful_shutdown()
            }),
            Speak::Http1 => served(
                self.http1.serve_connection(io, service).with_upgrades(),
                |c| c.graceful_shutdown(),
            ),
            Speak::Http2 => served(self.http2.serve_connection(io, service), |c| {
                c.graceful_shutdown()
            }),
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

/// What serving one accepted connection needs from its worker.
pub(super) struct Accept<'a> {
    pub proxy: &'a Arc<Proxy>,
    pub opts: &'a ServerOptions,
    pub builders: &'a Builders,
    pub shutdown: &'a Shutdown,
    /// When the connection was accepted: its first request head is due
    /// the header timeout after this.
    pub at: Instant,
}

/// Serves one connection until it closes, its clock runs out, or shutdown
/// closes it.
pub(super) async fn serve_connection<I>(io: I, client: ClientInfo, speak: Speak, a: Accept<'_>)
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // Plain HTTP/1.1 requests first go through the fast path; it returns
    // the connection, and the bytes it read, at the first request it leaves
    // to hyper.
    let (io, prefix, served) = if super::fast::usable(a.opts, speak) {
        let mut io = io;
        let fast = super::fast::serve(&mut io, &client, a.proxy, a.opts, a.shutdown, a.at);
        let outcome = tokio::select! {
            o = fast => o,
            _ = a.shutdown.reached(Phase::Close) => super::fast::Outcome::Closed,
        };
        match outcome {
            super::fast::Outcome::Closed => return,
            super::fast::Outcome::Handover { input, served } => (io, input, served),
        }
    } else {
        (io, bytes::Bytes::new(), false)
    };
    // Boxed: hyper's state is made only for connections handed to it, and
    // a fast-path connection's task does not carry room for it.
    Box::pin(serve_hyper(io, prefix, served, client, speak, a)).await;
}

/// Serves a connection with hyper, from `prefix` (bytes the fast path read
/// and left); `served`: requests were served on it before.
async fn serve_hyper<I>(
    io: I,
    prefix: bytes::Bytes,
    served: bool,
    client: ClientInfo,
    speak: Speak,
    a: Accept<'_>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(ConnActivity::new(a.at, served));
    let io = WatchedIo {
        inner: io,
        prefix,
        activity: activity.clone(),
        first_read: true,
        answered: false,
        line: LineWatch::new(a.opts.max_header_bytes),
        last_word: TIMED_OUT_408,
        frames: ControlFrames::new(a.at, speak != Speak::Http1),
    };
    // Every tunnel made from this connection holds a sender: the connection
    // stays counted as open (for the drain and the connection limit) until
    // the last tunnel closes.
    let (tunnels, mut tunnels_closed) = tokio::sync::mpsc::channel::<()>(1);
    let service = {
        let activity = activity.clone();
        let shutdown = a.shutdown.clone();
        let proxy = a.proxy.clone();
        service_fn(move |mut req: Request<Incoming>| {
            if crate::proxy::headers::is_upgrade(req.headers()) {
                req.extensions_mut()
                    .insert(TunnelHold::new(tunnels.clone(), shutdown.clone()));
            }
            let guard = activity.request_started();
            let proxy = proxy.clone();
            let client = client.clone();
            // Boxed here, where it is made: hyper moves the service's
            // future into each HTTP/2 stream's task, and tokio into the
            // task's cell; a pointer moves instead of the request's state.
            Box::pin(async move {
                let response = proxy.handle(req, client).await;
                Ok::<_, Infallible>(response.map(|body| TrackedBody {
                    body,
                    _guard: guard,
                }))
            })
        })
    };
    let conn = a.builders.serve(speak, TokioIo::new(io), service);
    let fault = keep_time(conn, &activity, a.opts, a.shutdown).await;
    if activity.uri_too_long.load(Ordering::Relaxed) {
        a.proxy.metrics.client_error(ClientErrorKind::UriTooLong);
    } else if activity.flood.load(Ordering::Relaxed) {
        a.proxy.metrics.client_error(ClientErrorKind::Flood);
    } else if let Some(kind) = fault {
        a.proxy.metrics.client_error(kind);
    }
    // An upgraded connection lives on in its tunnel (which closes itself at
    // `Phase::Close`); wait for it.
    let _ = tunnels_closed.recv().await;
}

/// Runs `conn` on its clock (see [`ConnActivity::due`]) until it ends, the
/// clock cuts it off, or shutdown closes it. Returns the client's fault if
/// hyper refused a request head (and answered it).
async fn keep_time(
    mut conn: Pin<Box<dyn ServedConn + '_>>,
    activity: &ConnActivity,
    opts: &ServerOptions,
    shutdown: &Shutdown,
) -> Option<ClientErrorKind> {
    let limits = Limits::of(opts);
    let mut phase = shutdown.subscribe();
    let mut graceful = false;
    // Once the clock has run out but the connection was given a last word
    // (a GOAWAY, a 408), it closes by this time whatever the client does.
    let mut hard_stop: Option<u64> = None;
    let wake = tokio::time::sleep_until(activity.at(limits.shortest));
    tokio::pin!(wake);
    loop {
        tokio::select! {
            res = conn.as_mut() => {
                let e = res.err()?;
                tracing::debug!(error = %e, "client connection error");
                return client_fault(&*e);
            }
            changed = phase.changed(), if !graceful => {
                let p = if changed.is_ok() { *phase.borrow() } else { Phase::Close };
                if p != Phase::Running {
                    graceful = true;
                    conn.as_mut().graceful_shutdown();
                }
            }
            _ = shutdown.reached(Phase::Close), if graceful => return None,
            _ = &mut wake => {
                let now = activity.now();
                if hard_stop.is_some_and(|t| now >= t) {
                    return None;
                }
                let next = match activity.due(now, &limits) {
                    Ok(next) => next,
                    Err(due) => {
                        tracing::debug!(due = ?due, "client connection cut off by its clock");
                        match due {
                            Due::Stalled | Due::NoRequest | Due::Head { begun: false } => return None,
                            Due::Head { begun: true } => activity.answer_408(),
                            Due::Idle if !graceful => {
                                graceful = true;
                                conn.as_mut().graceful_shutdown();
                            }
                            Due::Idle => {}
                        }
                        *hard_stop.get_or_insert(now + limits.shortest.min(LAST_WORD))
                    }
                };
                let next = next.min(hard_stop.unwrap_or(u64::MAX));
                wake.as_mut().reset(activity.at(next));
            }
        }
    }
}

/// A request hyper refused before it became one (a head it could not
/// parse, or one too large: hyper answered it 400 or 431).
fn client_fault(e: &(dyn std::error::Error + 'static)) -> Option<ClientErrorKind> {
    let e = e.downcast_ref::<hyper::Error>()?;
    if e.is_parse_too_large() {
        Some(ClientErrorKind::HeaderTooLarge)
    } else if e.is_parse() {
        Some(ClientErrorKind::BadRequest)
    } else {
        None
    }
}

/// How long a connection whose clock ran out gets to deliver its last
/// word (a GOAWAY, a 408) before it is closed regardless, in milliseconds.
const LAST_WORD: u64 = 1000;

/// The connection's timeouts, in milliseconds.
struct Limits {
    header: u64,
    idle: u64,
    stall: u64,
    /// The shortest: no state that begins later can be due sooner than
    /// this after it began.
    shortest: u64,
}

impl Limits {
    fn of(opts: &ServerOptions) -> Limits {
        let ms = |d: Duration| (d.as_millis() as u64).max(1);
        let (header, idle, stall) = (
            ms(opts.client_header),
            ms(opts.client_idle),
            ms(opts.client_stall),
        );
        Limits {
            header,
            idle,
            stall,
            shortest: header.min(idle).min(stall),
        }
    }
}

/// What a connection's clock ran out on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Due {
    /// A request head did not come in time (`begun`: part of it had come).
    Head { begun: bool },
    /// HTTP/2: no request (stream) came within the header timeout of the
    /// accept, whatever else (preface, SETTINGS, PINGs) did.
    NoRequest,
    /// No request came within the idle timeout of the last one's end.
    Idle,
    /// The client took no byte written to it for the stall timeout.
    Stalled,
}

/// Activity on one client connection, shared by its I/O, its requests, and
/// its clock. Times are milliseconds since the accept (`start`); a stored
/// time of 0 means "none", so times that can be 0 are stored plus one.
struct ConnActivity {
    /// Requests whose response has not finished.
    active: AtomicU32,
    /// A request has started (here or on the fast path before).
    served: AtomicBool,
    /// When the connection last became idle.
    idle_since: AtomicU64,
    /// When the first byte of a new request head arrived while idle (+1).
    head_started: AtomicU64,
    /// When a write to the client began to wait (+1).
    write_waiting: AtomicU64,
    /// Set once an HTTP/2 preface is seen: no per-request head timeout.
    http2: AtomicBool,
    /// The head timeout ran out on a begun head: the next read answers 408.
    answer_408: AtomicBool,
    /// A request line too long was answered 414.
    uri_too_long: AtomicBool,
    /// The client flooded the connection with HTTP/2 control frames: it was closed.
    flood: AtomicBool,
    /// Wakes the connection's reader to answer that 408.
    reader: AtomicWaker,
    start: Instant,
}

// === impl ConnActivity ===

impl ConnActivity {
    fn new(start: Instant, served: bool) -> ConnActivity {
        ConnActivity {
            active: AtomicU32::new(0),
            served: AtomicBool::new(served),
            idle_since: AtomicU64::new(0),
            head_started: AtomicU64::new(0),
            write_waiting: AtomicU64::new(0),
            http2: AtomicBool::new(false),
            answer_408: AtomicBool::new(false),
            uri_too_long: AtomicBool::new(false),
            flood: AtomicBool::new(false),
            reader: AtomicWaker::new(),
            start,
        }
    }

    fn now(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn at(&self, ms: u64) -> Instant {
        self.start + Duration::from_millis(ms)
    }

    fn request_started(self: &Arc<Self>) -> RequestGuard {
        self.active.fetch_add(1, Ordering::Relaxed);
        self.head_started.store(0, Ordering::Relaxed);
        if !self.served.load(Ordering::Relaxed) {
            self.served.store(true, Ordering::Relaxed);
        }
        RequestGuard(self.clone())
    }

    fn answer_408(&self) {
        self.answer_408.store(true, Ordering::Relaxed);
        self.reader.wake();
    }

    /// What is due at `now`: `Ok` with when to look again, or what ran out.
    ///
    /// A write the client takes nothing of may wait the stall timeout. With
    /// no request under way, the first request is due the header timeout
    /// after the accept (PINGs and SETTINGS do not count); a later HTTP/1
    /// head, the header timeout after its first byte; and with none begun,
    /// the connection closes the idle timeout after the last request ended.
    /// Nothing that begins after `now` can be due before `now +
    /// limits.shortest`, so the clock looks again by then at the latest.
    fn due(&self, now: u64, limits: &Limits) -> Result<u64, Due> {
        let mut next = now + limits.shortest;
        let waiting = self.write_waiting.load(Ordering::Relaxed);
        if waiting != 0 {
            let due = waiting - 1 + limits.stall;
            if now >= due {
                return Err(Due::Stalled);
            }
            next = next.min(due);
        }
        if self.active.load(Ordering::Relaxed) == 0 {
            let (due, what) = self.quiet_due(limits);
            if now >= due {
                return Err(what);
            }
            next = next.min(due);
        }
        Ok(next)
    }

    /// When a connection with no request under way is due, and why.
    fn quiet_due(&self, limits: &Limits) -> (u64, Due) {
        let http2 = self.http2.load(Ordering::Relaxed);
        let head = self.head_started.load(Ordering::Relaxed);
        if !self.served.load(Ordering::Relaxed) {
            let what = if http2 {
                Due::NoRequest
            } else {
                Due::Head { begun: head != 0 }
            };
            return (limits.header, what);
        }
        if head != 0 && !http2 {
            return (head - 1 + limits.header, Due::Head { begun: true });
        }
        (
            self.idle_since.load(Ordering::Relaxed) + limits.idle,
            Due::Idle,
        )
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
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<bytes::Bytes>, BodyError>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// The client socket, noting when a new request head starts to arrive and
/// when writes to the client wait; it answers 408 when the clock says so.
struct WatchedIo<I> {
    inner: I,
    /// Bytes the fast path read before handing the connection over: read first.
    prefix: bytes::Bytes,
    activity: Arc<ConnActivity>,
    first_read: bool,
    /// The last word (a 408, a 414) was written: reads see the end of the stream.
    answered: bool,
    line: LineWatch,
    /// What the connection is told before it closes.
    last_word: &'static [u8],
    /// HTTP/2 frames read, counted for control-frame floods.
    frames: ControlFrames,
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
}

impl LineWatch {
    fn new(limit: usize) -> LineWatch {
        LineWatch { limit, read: None }
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

/// What a connection whose request line is too long is told.
const URI_TOO_LONG: &[u8] =
    b"HTTP/1.1 414 URI Too Long\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

/// What a connection whose request head did not come in time is told.
const TIMED_OUT_408: &[u8] =
    b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

impl<I: AsyncRead + AsyncWrite + Unpin> WatchedIo<I> {
    /// Writes the 408 (best effort: it is small, and the connection is
    /// idle, so the socket has room) and ends the reads.
    fn answer_408(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if !self.answered {
            self.answered = true;
            let _ = Pin::new(&mut self.inner).poll_write(cx, self.last_word);
            let _ = Pin::new(&mut self.inner).poll_shutdown(cx);
        }
        Poll::Ready(Ok(()))
    }

    /// Notes what the bytes just read mean for the clock; true if they
    /// make a request line too long (they are then not passed on).
    fn saw(&mut self, got: &[u8]) -> bool {
        let a = &self.activity;
        if self.first_read {
            if got.starts_with(b"PRI * HTTP/2") {
                a.http2.store(true, Ordering::Relaxed);
            }
            self.first_read = false;
        }
        let head_starts =
            a.active.load(Ordering::Relaxed) == 0 && a.head_started.load(Ordering::Relaxed) == 0;
        if head_starts {
            a.head_started.store(a.now() + 1, Ordering::Relaxed);
        }
        let too_long = !a.http2.load(Ordering::Relaxed) && self.line.read(got, head_starts);
        if too_long {
            a.uri_too_long.store(true, Ordering::Relaxed);
            self.last_word = URI_TOO_LONG;
        }
        too_long
    }
}

impl<I> WatchedIo<I> {
    /// Ends a connection whose client floods it with HTTP/2 control frames:
    /// this read fails, and every later one, so the connection closes
    /// without writing the acknowledgements the client asked for.
    fn flooded(&mut self) -> Poll<io::Result<()>> {
        if !self.answered {
            self.answered = true;
            self.activity.flood.store(true, Ordering::Relaxed);
            tracing::debug!(
                limit = h2flood::LIMIT,
                window = ?h2flood::WINDOW,
                "client connection closed: HTTP/2 control frame flood"
            );
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "HTTP/2 control frame flood",
        )))
    }

    /// Notes whether a write (or flush) waits on the client.
    fn wrote<T>(&self, polled: Poll<io::Result<T>>) -> Poll<io::Result<T>> {
        let waiting = &self.activity.write_waiting;
        match polled {
            Poll::Pending => {
                if waiting.load(Ordering::Relaxed) == 0 {
                    waiting.store(self.activity.now() + 1, Ordering::Relaxed);
                }
            }
            Poll::Ready(_) => {
                if waiting.load(Ordering::Relaxed) != 0 {
                    waiting.store(0, Ordering::Relaxed);
                }
            }
        }
        polled
    }
}

impl<I: AsyncRead + AsyncWrite + Unpin> AsyncRead for WatchedIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.answered || this.activity.answer_408.load(Ordering::Relaxed) {
            if this.activity.flood.load(Ordering::Relaxed) {
                return this.flooded();
            }
            return this.answer_408(cx);
        }
        let before = buf.filled().len();
        let res = if this.prefix.is_empty() {
            Pin::new(&mut this.inner).poll_read(cx, buf)
        } else {
            let n = this.prefix.len().min(buf.remaining());
            buf.put_slice(&this.prefix.split_to(n));
            Poll::Ready(Ok(()))
        };
        match &res {
            Poll::Pending => this.activity.reader.register(cx.waker()),
            Poll::Ready(_) if buf.filled().len() > before => {
                if this.saw(&buf.filled()[before..]) {
                    buf.set_filled(before);
                    return this.answer_408(cx);
                }
                if this.frames.read(&buf.filled()[before..]) {
                    buf.set_filled(before);
                    return this.flooded();
                }
            }
            Poll::Ready(_) => {}
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
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.wrote(polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.wrote(polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.wrote(polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
