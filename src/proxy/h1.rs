//! The HTTP/1 fast path: a plain HTTP/1.1 request forwarded to plain HTTP/1.1 backends with heads parsed and written here, not by hyper's dispatchers.
//!
//! Why: with hyper on both sides, each proxied request ran two HTTP/1 state
//! machines, a backend connection task, a request channel and a response
//! oneshot between them, and copied a multi-kilobyte request future into
//! place. Those were most of unstick's user CPU per request (see
//! `benches/README.md`). Here the request task owns its backend connection:
//! it writes the head, reads the response head, and streams the body
//! through itself. A request or response head that needs only fields
//! dropped and unstick's added (most do) is written from where it was
//! parsed (`request_head`, `write_plain_head`); others become the same
//! `HeaderMap` types the rest of the proxy uses.
//!
//! What it serves is deliberately narrow; `server::fast` hands everything
//! else (HTTP/1.0, upgrades, `Expect`, chunked or large request bodies,
//! `CONNECT`, HTTP/2, non-HTTP/1 backends) to hyper. Header policy
//! (`Proxy::begin`, `Proxy::scrub_response`, with field rules held to them
//! by tests), retries, health, metrics and the access log are the same code
//! as the hyper path's.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{request, Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::body::Completion;
use super::error::{Kind, ProxyError, Retry, Source};
use super::headers::{self, FieldRule, RequestId, X_REQUEST_ID};
use super::request_head::{self, Forwarding, Scan};
use super::{retry, Attempts, Entry, Failed, Proxy, ReplyTo, ResponseBody, Settings};
use crate::config::Timeouts;
use crate::proxy::ClientInfo;
use crate::shutdown::{Phase, Shutdown};
use crate::upstream::raw::RawConn;
use crate::upstream::{Backend, Checkout, InFlight};

use crate::http1;
use http1::Framing;

/// The longest response head a backend may send.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// A request header map with room for at most this many fields is kept for
/// the connection's next request.
const KEPT_HEADER_CAPACITY: usize = 64;

/// A write to the client's socket that is at most this long goes out in one
/// piece with the response head (one system call for a small response).
const COALESCE: usize = 16 * 1024;

/// A deadline timer that touches tokio's timer wheel only when it must fire
/// earlier than it is armed for, or when it fires early.
///
/// A proxy's deadlines move forward with every request (now + timeout).
/// Re-arming a tokio timer for each, or making a new one, re-inserts it in
/// the timer wheel, and a deadline earlier than the driver's next wake-up
/// (a 30 s response timeout while connections idle for 60 s) also writes to
/// the runtime's eventfd: measured, 0.23 extra system calls per request.
/// Here a later deadline is only recorded; when the armed timer fires before
/// it, it is re-armed then, at most once per timeout period.
pub struct LazyTimer {
    sleep: Pin<Box<Sleep>>,
    deadline: Instant,
}

impl LazyTimer {
    pub fn new() -> LazyTimer {
        let far = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        LazyTimer {
            sleep: Box::pin(tokio::time::sleep_until(far)),
            deadline: far,
        }
    }

    /// Sets the deadline for the next wait.
    pub fn set(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if self.sleep.deadline() > deadline {
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// Ready once the deadline has passed.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            ready!(self.sleep.as_mut().poll(cx));
            if Instant::now() >= self.deadline {
                return Poll::Ready(());
            }
            let deadline = self.deadline;
            self.sleep.as_mut().reset(deadline);
        }
    }

    /// `fut`'s output, or None if the deadline passes first.
    pub async fn race<F: Future>(&mut self, fut: F) -> Option<F::Output> {
        tokio::pin!(fut);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = fut.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            self.poll_expired(cx).map(|()| None)
        })
        .await
    }
}

impl Default for LazyTimer {
    fn default() -> Self {
        LazyTimer::new()
    }
}

/// What a client connection keeps between requests on the fast path.
///
/// Its buffers (`input`, `scratch`, `headers`, `fields`) are held only
/// while a request's bytes are in flight: a connection that goes idle gives
/// them back to its worker thread's pool ([`Reuse::release`]) and takes a
/// set again when its next bytes arrive ([`Reuse::acquire`]), so an idle
/// keep-alive connection holds no buffer (nginx frees its header buffer on
/// idle keep-alive the same way).
pub struct Reuse {
    /// The server's phase: a response written once a drain has begun says
    /// `connection: close`.
    pub shutdown: Shutdown,
    /// Bytes read from the client and not yet served (the next request).
    pub input: BytesMut,
    /// Heads are written here (and small bodies copied after them).
    pub scratch: Vec<u8>,
    /// The backend response-head timeout.
    pub timer: LazyTimer,
    /// The last request's header map, emptied: the next request's is made
    /// in its allocation.
    pub headers: http::HeaderMap,
    /// Where the fields of the request head at the start of `input` are.
    pub fields: Vec<http1::HeaderIndices>,
}

/// A set of request buffers waiting in a worker's pool.
struct Buffers {
    input: BytesMut,
    scratch: Vec<u8>,
    headers: http::HeaderMap,
    fields: Vec<http1::HeaderIndices>,
}

/// Buffer sets a worker thread keeps for its connections' next requests:
/// at most as many as it had requests in flight at once, up to this.
const POOLED_BUFFERS: usize = 256;

/// A buffer grown larger than this by one big request is freed, not pooled.
const POOLED_CAPACITY: usize = 64 * 1024;

thread_local! {
    /// This worker thread's idle request buffers (each worker runs its
    /// connections on its own thread).
    static POOL: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Reuse {
    pub fn new(shutdown: Shutdown) -> Reuse {
        Reuse {
            shutdown,
            input: BytesMut::new(),
            scratch: Vec::new(),
            timer: LazyTimer::new(),
            headers: http::HeaderMap::new(),
            fields: Vec::new(),
        }
    }

    /// True while the connection holds a set of buffers.
    pub fn holds_buffers(&self) -> bool {
        self.input.capacity() != 0
    }

    /// Takes a set of buffers from this thread's pool (or new empty ones)
    /// if the connection holds none.
    pub fn acquire(&mut self) {
        if self.holds_buffers() {
            return;
        }
        if let Some(b) = POOL.with(|p| p.borrow_mut().pop()) {
            self.input = b.input;
            self.scratch = b.scratch;
            self.headers = b.headers;
            self.fields = b.fields;
        }
    }

    /// Gives the buffers back to this thread's pool: the connection is
    /// idle, with no byte of a next request read.
    pub fn release(&mut self) {
        if !self.input.is_empty() || !self.holds_buffers() {
            return;
        }
        let b = Buffers {
            input: std::mem::take(&mut self.input),
            scratch: std::mem::take(&mut self.scratch),
            headers: std::mem::take(&mut self.headers),
            fields: std::mem::take(&mut self.fields),
        };
        if b.input.capacity() > POOLED_CAPACITY
            || b.scratch.capacity() > POOLED_CAPACITY
            || b.headers.capacity() > KEPT_HEADER_CAPACITY
        {
            return;
        }
        POOL.with(|p| {
            let mut pool = p.borrow_mut();
            if pool.len() < POOLED_BUFFERS {
                pool.push(b);
            }
        });
    }
}

/// A request the fast path serves.
pub enum Request {
    /// Passed on from where it lies: the head is the first `head.len` bytes
    /// of `Reuse::input` (its fields in `Reuse::fields`), the body (if any)
    /// follows it there.
    InPlace {
        head: http1::RequestHead,
        scan: Scan,
        body_len: Option<usize>,
    },
    /// Rewritten over a `HeaderMap`, as on the hyper path.
    Parts {
        parts: request::Parts,
        body: Option<Bytes>,
    },
}

/// The request as each attempt sends it.
pub(super) struct Outgoing<'a> {
    pub(super) method: &'a Method,
    pub(super) replay_allowed: bool,
    /// A head still to be written (over a `HeaderMap`, at the first
    /// attempt), and its body. None: `scratch` holds the head, and a small
    /// body after it, already.
    pub(super) unwritten: Option<(&'a mut request::Parts, Option<&'a Bytes>)>,
    /// A body too large to copy after the head: sent after it.
    pub(super) large_body: Option<&'a Bytes>,
}

/// What the client connection does after a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    KeepAlive,
    Close,
}

/// What the client's request says about writing its response.
#[derive(Debug, Clone, Copy)]
struct To {
    /// The client keeps the connection open after this response.
    keep_alive: bool,
    /// The request was HEAD: the response has no body.
    head_request: bool,
}

/// A response head from a backend, and what comes with it. The head's
/// bytes are still at the start of `conn.buf`, its fields in `conn.fields`.
pub(super) struct Answered {
    pub(super) head: http1::ResponseHead,
    pub(super) framing: Framing,
    pub(super) conn: RawConn,
    /// The backend keeps the connection open after this response.
    pub(super) reusable: bool,
    pub(super) in_flight: InFlight,
}

/// A fast-path request made ready for its attempts.
struct Prepared {
    method: Method,
    /// A head to rewrite over a `HeaderMap` (None: written in place into
    /// `Reuse::scratch` already, with a small body), and its body.
    parts: Option<request::Parts>,
    body: Option<Bytes>,
    /// A body too large to copy after the head.
    large_body: Option<Bytes>,
    replay_allowed: bool,
    reply: ReplyTo,
    log: Option<Box<Entry>>,
    /// Why the request is refused (its target or `Host`), if it is.
    refused: Option<ProxyError>,
}

/// False for a request refused before any backend saw it.
fn refused_none(forwarded: &Option<Result<Answered, Failed>>) -> bool {
    !matches!(forwarded, Some(Err(f)) if f.error.source == Source::Client)
}

/// A failed attempt: the error, and whether it was the backend's fault
/// (counted against its health).
struct AttemptError {
    error: ProxyError,
    blame: bool,
    /// The connection failed before any byte of a response came (on a
    /// pooled connection: the backend had closed it).
    unanswered: bool,
    /// It did so on a pooled connection: not the backend's failure.
    stale: bool,
}

impl AttemptError {
    /// The backend's failure.
    fn blamed(error: ProxyError) -> AttemptError {
        AttemptError {
            error,
            blame: true,
            unanswered: false,
            stale: false,
        }
    }
}

// === impl Proxy ===

impl Proxy {
    /// Serves one request on the fast path and writes the response to
    /// `io`. `keep_alive` is false when the client asked to close.
    #[allow(clippy::too_many_arguments)]
    pub async fn serve_h1<W>(
        self: &Arc<Self>,
        request: Request,
        settings: Arc<Settings>,
        client: &ClientInfo,
        io: &mut W,
        reuse: &mut Reuse,
        keep_alive: bool,
    ) -> Next
    where
        W: AsyncRead + AsyncWrite + Unpin,
    {
        let start = Instant::now();
        let mut p = match request {
            Request::InPlace {
                head,
                scan,
                body_len,
            } => self.prepare_in_place(head, scan, body_len, client, reuse),
            Request::Parts { parts, body } => self.prepare_parts(parts, body, client, &settings),
        };
        let mut done = Completion::new(self.clone(), start, 0);
        done.log = p.log.take();
        let refused = p.refused.take();
        let forwarded = match refused {
            Some(error) => Some(Err(Failed {
                error,
                backend: None,
            })),
            None => {
                self.forward_watching(&mut p, &settings, &mut done, io, reuse)
                    .await
            }
        };
        let to = To {
            // Decided now, not when the request came: a drain may have
            // begun. A refused request closes the connection.
            keep_alive: keep_alive
                && refused_none(&forwarded)
                && reuse.shutdown.phase() == Phase::Running,
            // A response to HEAD has no body, not even an error message.
            head_request: p.method == Method::HEAD,
        };
        let Reuse { scratch, timer, .. } = reuse;
        let next = match forwarded {
            Some(Ok(answered)) => {
                let out = (&mut *io, &mut *scratch, timer);
                self.relay(answered, done, p.reply, &settings, out, to)
                    .await
            }
            Some(Err(failed)) => {
                let response = self.fail(failed, done, p.reply);
                write_made(response, io, scratch, to).await
            }
            None => Next::Close,
        };
        // The map is kept for the next request, unless one large head grew it.
        if let Some(mut parts) = p.parts {
            if parts.headers.capacity() <= KEPT_HEADER_CAPACITY {
                parts.headers.clear();
                reuse.headers = std::mem::take(&mut parts.headers);
            }
        }
        next
    }

    /// A request passed on from where it lies: its head is written for the
    /// backend into `reuse.scratch`, with a small body after it; a larger
    /// body is kept apart (it may be sent again).
    fn prepare_in_place(
        &self,
        head: http1::RequestHead,
        scan: Scan,
        body_len: Option<usize>,
        client: &ClientInfo,
        reuse: &mut Reuse,
    ) -> Prepared {
        let Reuse {
            input,
            scratch,
            fields,
            ..
        } = reuse;
        let bytes = &input[..head.len];
        let found = (scan.request_id(bytes, fields), scan.cookie(bytes, fields));
        let line = (&head.method, head.version, head.target(bytes));
        let (reply, log) = self.begin_in_place(line, found, scan.grpc, client);
        scratch.clear();
        let ours = Forwarding {
            client_ip: client.ip.as_bytes(),
            https: client.https,
            request_id: reply.request_id.as_bytes(),
            body_len,
        };
        request_head::write(scratch, bytes, &head, fields, &scan, &ours);
        input.advance(head.len);
        let large_body = match body_len {
            Some(n) if n > COALESCE => Some(input.split_to(n).freeze()),
            Some(n) => {
                scratch.extend_from_slice(&input[..n]);
                input.advance(n);
                None
            }
            None => None,
        };
        Prepared {
            replay_allowed: retry::replay_allowed_with(&head.method, scan.idempotency_key),
            method: head.method,
            parts: None,
            body: None,
            large_body,
            reply,
            log,
            refused: None,
        }
    }

    /// A request rewritten over a `HeaderMap`, as on the hyper path (its
    /// head is written at the first attempt), or refused.
    fn prepare_parts(
        &self,
        mut parts: request::Parts,
        body: Option<Bytes>,
        client: &ClientInfo,
        settings: &Settings,
    ) -> Prepared {
        let begun = self.begin(&mut parts, client, settings, false);
        Prepared {
            replay_allowed: retry::replay_allowed(&parts.method, &parts.headers),
            method: parts.method.clone(),
            large_body: body.clone().filter(|b| b.len() > COALESCE),
            parts: Some(parts),
            body,
            reply: begun.reply,
            log: begun.log,
            refused: begun.refused,
        }
    }

    /// [`Proxy::forward_h1`], while watching the client: one that goes away
    /// meanwhile cancels the request (as hyper does; None): its in-flight
    /// count and backend connection are released at once, and it is logged
    /// as `client_closed`.
    async fn forward_watching<W>(
        &self,
        p: &mut Prepared,
        settings: &Settings,
        done: &mut Completion,
        io: &mut W,
        reuse: &mut Reuse,
    ) -> Option<Result<Answered, Failed>>
    where
        W: AsyncRead + Unpin,
    {
        let Reuse {
            input,
            scratch,
            timer,
            ..
        } = reuse;
        let out = Outgoing {
            method: &p.method,
            replay_allowed: settings.retries.enabled && p.replay_allowed,
            unwritten: p.parts.as_mut().map(|parts| (parts, p.body.as_ref())),
            large_body: p.large_body.as_ref(),
        };
        let forward = self.forward_h1(out, settings, done, scratch, timer);
        tokio::pin!(forward);
        std::future::poll_fn(|cx| {
            if let Poll::Ready(r) = forward.as_mut().poll(cx) {
                return Poll::Ready(Some(r));
            }
            if client_gone(io, input, cx) {
                return Poll::Ready(None);
            }
            Poll::Pending
        })
        .await
    }

    /// Sends the request, retrying on another backend when that is safe:
    /// the same rules as `forward`. The head is written once (for a
    /// `HeaderMap` head, at the first attempt, which gives a request
    /// without `Host` the first backend's name) and sent as it is to each.
    pub(super) async fn forward_h1(
        &self,
        mut out: Outgoing<'_>,
        s: &Settings,
        done: &mut Completion,
        scratch: &mut Vec<u8>,
        timer: &mut LazyTimer,
    ) -> Result<Answered, Failed> {
        if s.retries.enabled {
            s.budget.record_request();
        }
        let mut attempts = Attempts::default();
        loop {
            let Some(backend) = self.next_backend(s, &mut attempts, done) else {
                break;
            };
            if let Some((parts, body)) = out.unwritten.take() {
                if !parts.headers.contains_key(header::HOST) {
                    // HTTP/1.1 backends need a Host; a client that sent none gets the backend's.
                    if let Ok(v) = HeaderValue::from_str(&backend.name) {
                        parts.headers.insert(header::HOST, v);
                    }
                }
                scratch.clear();
                http1::write_request_head(scratch, parts, body.map(|b| b.len() as u64));
                if let Some(b) = body.filter(|b| b.len() <= COALESCE) {
                    scratch.extend_from_slice(b);
                }
            }
            let request = (out.method, &scratch[..], out.large_body);
            // Held only when a failure could still be retried.
            let hold = out.replay_allowed
                && attempts.counted < s.retries.max_per_request
                && s.retries.response_buffer > 0;
            let failed = match self
                .try_backend_h1(&backend, request, s, timer, out.replay_allowed)
                .await
            {
                // Checked in place: the usual small response, whole with its
                // head, is not moved through the hold.
                Ok(answered)
                    if !hold || Held::wanted(&answered, s.retries.response_buffer).is_none() =>
                {
                    self.answered_by(&attempts, &backend);
                    return Ok(answered);
                }
                Ok(mut answered) => match hold_whole(&mut answered, &s.retries, timer).await {
                    Ok(()) => {
                        self.answered_by(&attempts, &backend);
                        return Ok(answered);
                    }
                    Err(e) => e,
                },
                Err(e) => e,
            };
            let AttemptError { error, blame, .. } = failed;
            let error = error.with_backend(&backend.name);
            if blame {
                self.upstream_failed(&backend, &error, false);
            }
            // The body is held whole, so it can always be sent again.
            let request = (out.replay_allowed, true);
            if !attempts.failed(s, error, backend, request) {
                break;
            }
        }
        Err(attempts.into_failure(&self.upstreams))
    }

    /// [`Proxy::attempt_h1`] on `backend`, and once more on a new
    /// connection if a pooled one turned out closed by the backend, when
    /// that is safe: nothing was sent, or the request may be replayed
    /// (`replay_allowed`; its body is held whole).
    async fn try_backend_h1(
        &self,
        backend: &Arc<Backend>,
        request: (&Method, &[u8], Option<&Bytes>),
        s: &Settings,
        timer: &mut LazyTimer,
        replay_allowed: bool,
    ) -> Result<Answered, AttemptError> {
        let mut fresh = false;
        loop {
            match self
                .attempt_h1(backend, request, &s.timeouts, timer, fresh)
                .await
            {
                Err(e) if e.stale && !fresh && retry::may_retry(&e.error, replay_allowed, true) => {
                    fresh = true;
                }
                result => return result,
            }
        }
    }

    /// One attempt on one backend (on a new connection if `fresh`): write
    /// the request, read the response head. The request is its method, its
    /// head (and a small body) as written for the backend, and a large body
    /// sent after it.
    async fn attempt_h1(
        &self,
        backend: &Arc<Backend>,
        (method, head, large_body): (&Method, &[u8], Option<&Bytes>),
        timeouts: &Timeouts,
        timer: &mut LazyTimer,
        fresh: bool,
    ) -> Result<Answered, AttemptError> {
        let in_flight = backend.start_request();
        let Checkout { mut conn, idle } = match backend.pool.checkout_raw(fresh).await {
            Ok(c) => c,
            Err(e) => {
                // Counted here (not by the caller), as a refusal if it was one.
                let mut e = AttemptError::blamed(self.connect_failed(backend, e));
                e.blame = false;
                return Err(e);
            }
        };
        let exchanged = async {
            send_request(&mut conn, head, large_body).await?;
            let sent_at = Instant::now();
            timer.set(sent_at + timeouts.response_header);
            let head = await_head(&mut conn, timer, timeouts).await?;
            Ok::<_, AttemptError>((head, sent_at))
        };
        let (head, sent_at) = match exchanged.await {
            Ok(h) => h,
            Err(mut e) => {
                if e.unanswered && self.stale_connection(backend, idle) {
                    e.stale = true;
                    e.blame = false;
                }
                return Err(e);
            }
        };
        let answered = answered(method, head, conn, in_flight)?;
        backend
            .metrics
            .upstream_duration
            .observe(sent_at.elapsed().as_secs_f64());
        self.health.on_success(backend);
        Ok(answered)
    }

    /// Writes the backend's response to the client: the head (rewritten as
    /// on the hyper path), then the body as it arrives, framed by unstick
    /// (a chunked body is decoded and chunked again).
    #[allow(clippy::too_many_arguments)]
    async fn relay<W>(
        &self,
        answered: Answered,
        mut done: Completion,
        reply: ReplyTo,
        settings: &Settings,
        (out, scratch, timer): (&mut W, &mut Vec<u8>, &mut LazyTimer),
        to: To,
    ) -> Next
    where
        W: AsyncWrite + Unpin,
    {
        let Answered {
            head,
            framing,
            mut conn,
            reusable,
            in_flight,
        } = answered;
        let backend = in_flight.backend().clone();
        // A body delimited by the backend closing can only be passed on the
        // same way.
        let keep_alive = to.keep_alive && framing != Framing::Close;
        let head_out = HeadOut {
            head: &head,
            framing,
            keep_alive,
        };
        let trailers = self.write_head(head_out, &mut conn, &reply, settings, &backend, scratch);
        let trailers = match trailers {
            Ok(t) => t,
            Err(kind) => {
                // The backend's connection and in-flight count go with it.
                drop((conn, in_flight));
                let failed = self.bad_response(kind, backend);
                return write_made(self.fail(failed, done, reply), out, scratch, to).await;
            }
        };
        done.status = head.status.as_u16();
        done.in_flight = Some(in_flight);
        let body = BodyCopy::new(framing, trailers);
        let upstream = (conn, reusable, backend);
        let out = (out, scratch, timer, settings.timeouts.upstream_stall);
        self.relay_body(body, upstream, done, reply, out, to, keep_alive)
            .await
    }

    /// Writes the response body after its head (in `scratch`): the part
    /// that came with the head goes out with it, in one write for a small
    /// response; a body broken before anything was sent is a 502.
    #[allow(clippy::too_many_arguments)]
    async fn relay_body<W>(
        &self,
        mut body: BodyCopy,
        (mut conn, reusable, backend): (RawConn, bool, Arc<Backend>),
        mut done: Completion,
        reply: ReplyTo,
        (out, scratch, timer, stall): (&mut W, &mut Vec<u8>, &mut LazyTimer, Duration),
        to: To,
        keep_alive: bool,
    ) -> Next
    where
        W: AsyncWrite + Unpin,
    {
        let first = match body.take(&conn.buf, scratch) {
            Ok(taken) => taken,
            Err(e) => {
                // Nothing has reached the client yet: it gets a 502.
                drop(conn);
                done.in_flight = None;
                let kind = Kind::Reset(format!("invalid response from the backend: {e}"));
                let failed = self.bad_response(kind, backend);
                return write_made(self.fail(failed, done, reply), out, scratch, to).await;
            }
        };
        let copied = !first.raw || first.consumed <= COALESCE;
        if copied {
            if first.raw {
                scratch.extend_from_slice(&conn.buf[..first.consumed]);
            }
            conn.buf.advance(first.consumed);
            done.bytes += first.written() as u64;
        }
        let written = if copied && body.is_done() {
            // The whole response is in hand (the usual small one): the
            // request ends now, as on the hyper path, where the body's end
            // is seen before its last bytes are written. Whoever reads the
            // response then sees the backend free and the request counted.
            end_body(done, conn, reusable, &backend);
            out.write_all(scratch).await.is_ok() && out.flush().await.is_ok()
        } else {
            let sent = (copied, first.consumed);
            let upstream = (&mut conn, timer, stall);
            match stream_body(&mut body, upstream, sent, out, scratch, &mut done).await {
                Ok(()) => {
                    end_body(done, conn, reusable, &backend);
                    true
                }
                Err(Cut::Backend) => {
                    done.body_ended(false);
                    false
                }
                Err(Cut::Client) => {
                    done.client_gone();
                    false
                }
            }
        };
        if written && keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        }
    }

    /// Writes the response head for the client into `scratch` and moves
    /// `conn.buf` past the backend's. Most heads need only fields dropped
    /// and unstick's added: they are written from where they were parsed;
    /// the rest are scrubbed as on the hyper path, over a `HeaderMap`.
    /// Returns the trailer fields the client gets (None: none), or why the
    /// response is refused.
    fn write_head(
        &self,
        h: HeadOut<'_>,
        conn: &mut RawConn,
        reply: &ReplyTo,
        settings: &Settings,
        backend: &Arc<Backend>,
        scratch: &mut Vec<u8>,
    ) -> Result<Option<Vec<http::HeaderName>>, Kind> {
        let backend_header = settings
            .backend_header
            .as_ref()
            .map(|name| (name, &*backend.name));
        let ours = Ours {
            request_id: &reply.request_id,
            backend_header,
            trailers: reply.trailers,
        };
        if write_plain_head(scratch, h, conn, ours) {
            self.watch_plain(reply, backend, h.head.status, conn);
            conn.buf.advance(h.head.len);
            return Ok(None);
        }
        let bytes = conn.buf.split_to(h.head.len).freeze();
        let mut parts = http1::response_parts(&bytes, h.head, &conn.fields)
            .map_err(|e| Kind::Reset(format!("invalid response from the backend: {e}")))?;
        self.scrub_response(&mut parts, backend, settings, reply, false)
            .map_err(Kind::AffinityRejected)?;
        http1::write_response_head(scratch, &parts, h.framing, h.keep_alive);
        let chunked = h.framing == Framing::Chunked;
        Ok((reply.trailers && chunked).then(|| headers::announced_trailers(&parts.headers)))
    }

    /// A response the client does not get: the error, counted against the
    /// backend if it was malformed (not for an affinity cookie refused).
    pub(super) fn bad_response(&self, kind: Kind, backend: Arc<Backend>) -> Failed {
        let invalid = matches!(kind, Kind::Reset(_));
        let error =
            ProxyError::new(Source::Upstream, kind, Retry::Never).with_backend(&backend.name);
        if invalid {
            self.upstream_failed(&backend, &error, false);
        }
        Failed {
            error,
            backend: Some(backend),
        }
    }
}

/// A response body went out whole: the request is recorded, and the
/// backend's connection goes back to the pool if it can serve another.
fn end_body(mut done: Completion, conn: RawConn, reusable: bool, backend: &Backend) {
    done.body_ended(true);
    if reusable {
        backend.pool.checkin_raw(conn);
    }
    drop(done);
}

/// Why a response body stopped before its end.
enum Cut {
    /// The backend closed, failed, or broke the body's framing.
    Backend,
    /// The client could not be written to.
    Client,
}

/// Streams the rest of a response body after its head (`scratch` holds
/// what is still to be written; `sent` says whether the `first` bytes of
/// `conn.buf` are in it, or still to go as they are). A backend that sends
/// nothing for `stall` has cut it.
async fn stream_body<W>(
    body: &mut BodyCopy,
    (conn, timer, stall): (&mut RawConn, &mut LazyTimer, Duration),
    (sent, first): (bool, usize),
    out: &mut W,
    scratch: &mut Vec<u8>,
    done: &mut Completion,
) -> Result<(), Cut>
where
    W: AsyncWrite + Unpin,
{
    out.write_all(scratch).await.map_err(|_| Cut::Client)?;
    if !sent {
        out.write_all(&conn.buf[..first])
            .await
            .map_err(|_| Cut::Client)?;
        conn.buf.advance(first);
        done.bytes += first as u64;
    }
    while !body.is_done() {
        out.flush().await.map_err(|_| Cut::Client)?;
        match read_within(conn, timer, stall).await {
            Ok(0) if body.framing == Framing::Close => break,
            Ok(0) | Err(_) => return Err(Cut::Backend),
            Ok(_) => {}
        }
        scratch.clear();
        let taken = body.take(&conn.buf, scratch).map_err(|_| Cut::Backend)?;
        let bytes = if taken.raw {
            &conn.buf[..taken.consumed]
        } else {
            &scratch[..]
        };
        out.write_all(bytes).await.map_err(|_| Cut::Client)?;
        done.bytes += bytes.len() as u64;
        conn.buf.advance(taken.consumed);
    }
    out.flush().await.map_err(|_| Cut::Client)
}

/// A response head as the backend sent it, and how it goes to the client.
#[derive(Clone, Copy)]
struct HeadOut<'a> {
    head: &'a http1::ResponseHead,
    framing: Framing,
    keep_alive: bool,
}

/// The fields unstick adds to every response head it passes on.
#[derive(Clone, Copy)]
struct Ours<'a> {
    request_id: &'a RequestId,
    /// The configured header naming the backend, and the backend's name.
    backend_header: Option<(&'a http::HeaderName, &'a str)>,
    /// The client takes trailers: a `Trailer` field is scrubbed.
    trailers: bool,
}

/// Writes the response head at the start of `conn.buf` into `out` (emptied
/// first) from where it was parsed: each field kept or dropped by
/// `headers::response_field_rule`, then unstick's own fields. False, with
/// `out` emptied again, at the first field that needs the full scrubbing
/// over a `HeaderMap` (and at `Trailer`, for a client that takes trailers).
fn write_plain_head(out: &mut Vec<u8>, h: HeadOut<'_>, conn: &RawConn, ours: Ours<'_>) -> bool {
    let backend_header = ours.backend_header.map(|(name, _)| name);
    out.clear();
    http1::write_status_line(out, h.head.status);
    for f in &conn.fields {
        let (name, value) = f.field(&conn.buf);
        match headers::response_field_rule(name, value, backend_header) {
            FieldRule::Keep => http1::put_response_field(out, &conn.buf, f, h.framing),
            FieldRule::Drop if ours.trailers && name.eq_ignore_ascii_case(b"trailer") => {
                out.clear();
                return false;
            }
            FieldRule::Drop => {}
            FieldRule::Scrub => {
                out.clear();
                return false;
            }
        }
    }
    out.extend_from_slice(X_REQUEST_ID.as_str().as_bytes());
    http1::put_field_value(out, ours.request_id.as_bytes());
    if let Some((name, backend)) = ours.backend_header {
        out.extend_from_slice(name.as_str().as_bytes());
        http1::put_field_value(out, backend.as_bytes());
    }
    http1::end_response_head(out, h.framing, h.keep_alive);
    true
}

/// Writes a request (its head, with a small body, then a large body) to a
/// backend connection.
async fn send_request(
    conn: &mut RawConn,
    head: &[u8],
    large_body: Option<&Bytes>,
) -> Result<(), AttemptError> {
    let mut sent = conn.write_all(head).await;
    if let (Ok(()), Some(b)) = (&sent, large_body) {
        sent = conn.write_all(b).await.map_err(|(e, _)| (e, true));
    }
    let Err((e, any_written)) = sent else {
        return Ok(());
    };
    let (kind, retry) = if any_written {
        let kind = Kind::Reset(format!("error writing the request: {e}"));
        (kind, Retry::IfIdempotent)
    } else {
        // Nothing reached the backend: safe to send anywhere.
        let kind = Kind::Reset("the connection closed before the request was sent".into());
        (kind, Retry::Safe)
    };
    let mut e = AttemptError::blamed(ProxyError::new(Source::Upstream, kind, retry));
    e.unanswered = true;
    Err(e)
}

/// Waits for the response head, until `timer` (armed for the response
/// head timeout) fires.
async fn await_head(
    conn: &mut RawConn,
    timer: &mut LazyTimer,
    timeouts: &Timeouts,
) -> Result<http1::ResponseHead, AttemptError> {
    let head = timer.race(read_head(conn)).await;
    let (kind, retry, unanswered) = match head {
        Some(Ok(h)) => return Ok(h),
        Some(Err((kind, unanswered))) => (kind, Retry::IfIdempotent, unanswered),
        None => (
            Kind::ResponseTimeout(timeouts.response_header),
            Retry::Never,
            false,
        ),
    };
    let mut e = AttemptError::blamed(ProxyError::new(Source::Upstream, kind, retry));
    e.unanswered = unanswered;
    Err(e)
}

/// A response head's framing (strictly: see `http1::response_framing_fields`)
/// and whether its connection can serve another request: HTTP/1.1, not
/// closing, and not framed twice (`Transfer-Encoding` with `Content-Length`
/// is read by the former, RFC 9112 6.3, and the connection then dropped).
fn answered(
    method: &Method,
    head: http1::ResponseHead,
    conn: RawConn,
    in_flight: InFlight,
) -> Result<Answered, AttemptError> {
    let fields = conn.fields.iter().map(|f| f.field(&conn.buf));
    let framing = match http1::response_framing_fields(method, head.status, fields.clone()) {
        Ok(f) => f,
        Err(e) => {
            let kind = Kind::Reset(format!("invalid response from the backend: {e}"));
            let error = ProxyError::new(Source::Upstream, kind, Retry::Never);
            return Err(AttemptError::blamed(error));
        }
    };
    let mut fields = fields;
    let reusable = head.version == http::Version::HTTP_11
        && framing != Framing::Close
        && !fields.any(|(name, value)| {
            (name.eq_ignore_ascii_case(b"connection") && http1::list_has(value, b"close"))
                || (framing == Framing::Chunked && name.eq_ignore_ascii_case(b"content-length"))
        });
    if let Some(v) = conn.field(b"keep-alive").filter(|_| reusable) {
        in_flight.backend().pool.keep_alive.announced(v);
    }
    Ok(Answered {
        head,
        framing,
        conn,
        reusable,
        in_flight,
    })
}

/// Reads a backend's response head (left at the start of `conn.buf`, its
/// fields in `conn.fields`), skipping interim (1xx) responses. A failure
/// says whether the connection ended before any response byte came.
async fn read_head(conn: &mut RawConn) -> Result<http1::ResponseHead, (Kind, bool)> {
    let mut interim = false;
    loop {
        match http1::parse_response_head(&conn.buf, MAX_RESPONSE_HEAD, &mut conn.fields) {
            Ok(Some(h)) if h.status == StatusCode::SWITCHING_PROTOCOLS => {
                let kind = Kind::Reset("the backend switched protocols unasked".into());
                return Err((kind, false));
            }
            // 100 Continue, 103 Early Hints: not forwarded; the final response follows.
            Ok(Some(h)) if h.status.is_informational() => {
                conn.buf.advance(h.len);
                interim = true;
                continue;
            }
            Ok(Some(h)) => return Ok(h),
            Ok(None) => {}
            Err(e) => {
                let kind = Kind::Reset(format!("invalid response from the backend: {e}"));
                return Err((kind, false));
            }
        }
        let unanswered = conn.buf.is_empty() && !interim;
        match conn.read_more().await {
            Ok(0) => {
                let kind = Kind::Reset("connection closed before message completed".into());
                return Err((kind, unanswered));
            }
            Ok(_) => {}
            Err(e) => return Err((Kind::Reset(format!("connection error: {e}")), unanswered)),
        }
    }
}

/// Holds the response to a request that may be sent again until its body
/// is whole in `conn.buf`, behind its head, so that a backend failing
/// before then fails an attempt the client never sees (a `HeldCut`, retried
/// on another backend). A response with nothing to wait for (the usual
/// small one, read whole with its head), one that streams (an event
/// stream, gRPC; one framed by the backend closing), one larger than
/// `retries.response_buffer` or not whole within `retries.response_hold`
/// is returned as it stands, to be passed on as it comes.
async fn hold_whole(
    a: &mut Answered,
    retries: &crate::config::Retries,
    timer: &mut LazyTimer,
) -> Result<(), AttemptError> {
    let Some(mut held) = Held::wanted(a, retries.response_buffer) else {
        return Ok(());
    };
    timer.set(Instant::now() + retries.response_hold);
    loop {
        match read_before(&mut a.conn, timer).await {
            None => return Ok(()),
            Some(Ok(0)) => return Err(held_cut("the connection closed".into())),
            Some(Err(e)) => return Err(held_cut(format!("connection error: {e}"))),
            Some(Ok(_)) => {}
        }
        match held.more(&a.conn.buf) {
            Some(true) => return Ok(()),
            Some(false) if a.conn.buf.len() - a.head.len <= retries.response_buffer => {}
            // Outgrown, or framed wrongly (refused when it is passed on).
            _ => return Ok(()),
        }
    }
}

/// The failed attempt of a held response the backend cut short.
fn held_cut(how: String) -> AttemptError {
    let kind = Kind::HeldCut(how);
    AttemptError::blamed(ProxyError::new(Source::Upstream, kind, Retry::IfIdempotent))
}

/// A response body being held: how its end is found.
enum Held {
    /// It ends at this offset of `conn.buf`.
    Length(usize),
    /// Chunked: scanned up to this offset of `conn.buf`.
    Chunked(http1::ChunkedScanner, usize),
}

impl Held {
    /// The body to wait for, if the response is to be held: not whole yet,
    /// not streaming, and not over `bound` already.
    fn wanted(a: &Answered, bound: usize) -> Option<Held> {
        let buf = &a.conn.buf;
        let start = a.head.len;
        let held = match a.framing {
            Framing::Length(n) if (buf.len() - start) as u64 >= n || n > bound as u64 => None,
            Framing::Length(n) => Some(Held::Length(start + n as usize)),
            Framing::Chunked if buf.len() - start <= bound => {
                let mut held = Held::Chunked(http1::ChunkedScanner::new(), start);
                held.more(buf).filter(|done| !done).map(|_| held)
            }
            Framing::Chunked | Framing::None | Framing::Close => None,
        }?;
        let streams = a
            .conn
            .field(b"content-type")
            .is_some_and(super::hold::streams);
        (!streams).then_some(held)
    }

    /// Whether the body is whole in `buf` now; None if its framing is wrong.
    fn more(&mut self, buf: &[u8]) -> Option<bool> {
        match self {
            Held::Length(end) => Some(buf.len() >= *end),
            Held::Chunked(scanner, scanned) => {
                let (n, done) = scanner.scan(&buf[*scanned..]).ok()?;
                *scanned += n;
                Some(done)
            }
        }
    }
}

/// Reads more of a held response until `timer` fires (None).
async fn read_before(conn: &mut RawConn, timer: &mut LazyTimer) -> Option<std::io::Result<usize>> {
    timer.race(conn.read_more()).await
}

/// Reads more of a response body: a backend that sends nothing for
/// `stall` fails the read (`TimedOut`).
async fn read_within(
    conn: &mut RawConn,
    timer: &mut LazyTimer,
    stall: Duration,
) -> std::io::Result<usize> {
    timer.set(Instant::now() + stall);
    (timer.race(conn.read_more()).await).unwrap_or_else(|| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Bytes a client may send ahead (pipelined) while its request is served.
const READ_AHEAD: usize = 64 * 1024;

/// Watches the client while its request is at a backend: true if it closed
/// (or its connection failed). Bytes it sends meanwhile (a pipelined
/// request) are kept in `input`, up to [`READ_AHEAD`].
fn client_gone<I>(io: &mut I, input: &mut BytesMut, cx: &mut Context<'_>) -> bool
where
    I: AsyncRead + Unpin,
{
    let mut raw = [std::mem::MaybeUninit::<u8>::uninit(); 1024];
    while input.len() < READ_AHEAD {
        let mut rb = ReadBuf::uninit(&mut raw);
        match Pin::new(&mut *io).poll_read(cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => return true,
            Poll::Ready(Ok(())) => input.extend_from_slice(rb.filled()),
            Poll::Ready(Err(_)) => return true,
            // Nothing yet: tokio answers from its readiness state, without a
            // system call, and wakes the task if the client sends or closes.
            Poll::Pending => return false,
        }
    }
    false
}

/// Writes a response made by unstick (an error) with its body (none for
/// HEAD: the head alone, with the length the body would have).
async fn write_made<W>(
    response: http::Response<ResponseBody>,
    out: &mut W,
    scratch: &mut Vec<u8>,
    to: To,
) -> Next
where
    W: AsyncWrite + Unpin,
{
    let (mut parts, mut body) = response.into_parts();
    let bytes = body.take_full().unwrap_or_default();
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    scratch.clear();
    http1::write_response_head(
        scratch,
        &parts,
        Framing::Length(bytes.len() as u64),
        to.keep_alive,
    );
    if !to.head_request {
        scratch.extend_from_slice(&bytes);
    }
    // Dropping the body records the request (metrics, access log): before
    // the write, as on the hyper path.
    drop(body);
    let written = out.write_all(scratch).await.is_ok() && out.flush().await.is_ok();
    if written && to.keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    }
}

/// How much of a response body is left, by its framing, and the body
/// framed for the client.
struct BodyCopy {
    framing: Framing,
    remaining: u64,
    /// A chunked body's decoder.
    chunks: Option<http1::Rechunker>,
    /// The trailer fields the client gets (None: the client gets none).
    trailers: Option<Vec<http::HeaderName>>,
    done: bool,
}

/// What [`BodyCopy::take`] took of the bytes read.
#[derive(Debug, Clone, Copy)]
struct Taken {
    /// Bytes that belong to the body.
    consumed: usize,
    /// They go to the client as they are (else framed again, in `out`).
    raw: bool,
    /// Bytes appended to `out`.
    appended: usize,
}

impl Taken {
    /// Bytes the client gets for them.
    fn written(&self) -> usize {
        if self.raw {
            self.consumed
        } else {
            self.appended
        }
    }
}

impl BodyCopy {
    fn new(framing: Framing, trailers: Option<Vec<http::HeaderName>>) -> BodyCopy {
        let (remaining, done) = match framing {
            Framing::None => (0, true),
            Framing::Length(n) => (n, n == 0),
            Framing::Chunked | Framing::Close => (0, false),
        };
        BodyCopy {
            framing,
            remaining,
            chunks: (framing == Framing::Chunked).then(http1::Rechunker::new),
            trailers,
            done,
        }
    }

    fn is_done(&self) -> bool {
        self.done
    }

    /// Takes what belongs to the body of the bytes read (`buf`): passed on
    /// as they are, or (chunked) decoded, with the data framed again and
    /// appended to `out`, and at the end the last chunk and the trailers
    /// the client gets.
    fn take(&mut self, buf: &[u8], out: &mut Vec<u8>) -> Result<Taken, http1::ChunkError> {
        let raw = |consumed| Taken {
            consumed,
            raw: true,
            appended: 0,
        };
        if self.done {
            return Ok(raw(0));
        }
        match (self.framing, &mut self.chunks) {
            (Framing::Length(_), _) => {
                let n = (buf.len() as u64).min(self.remaining);
                self.remaining -= n;
                self.done = self.remaining == 0;
                Ok(raw(n as usize))
            }
            (Framing::Chunked, Some(chunks)) => {
                let before = out.len();
                let (consumed, done) = chunks.rechunk(buf, out)?;
                if done {
                    let fields = chunks.trailers()?;
                    let wanted = |name: &[u8]| {
                        self.trailers.as_ref().is_some_and(|t| {
                            t.iter()
                                .any(|n| name.eq_ignore_ascii_case(n.as_str().as_bytes()))
                        })
                    };
                    let passed = fields.into_iter().filter(|(n, _)| wanted(n));
                    http1::write_last_chunk(out, passed);
                }
                self.done = done;
                Ok(Taken {
                    consumed,
                    raw: false,
                    appended: out.len() - before,
                })
            }
            (Framing::Close, _) => Ok(raw(buf.len())),
            _ => Ok(raw(0)),
        }
    }
}
