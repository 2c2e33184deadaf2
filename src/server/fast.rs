//! The HTTP/1 fast path's connection loop: reads request heads and small bodies itself and hands the connection to hyper at the first request it does not serve.
//!
//! Serves (through `Proxy::serve_h1`) HTTP/1.1 requests without `Upgrade`,
//! `Expect` or a chunked body, whose body (if any) fits the retry replay
//! buffer, while every backend speaks plain HTTP/1.1. At any other request
//! it stops, before consuming it, and returns the bytes it read so hyper
//! serves the rest of the connection from exactly that point: the HTTP/2
//! preface, HTTP/1.0 requests, WebSockets and streamed uploads keep
//! hyper's handling.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::{Bytes, BytesMut};
use http::{Method, Version};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use super::clock::SendClock;
use super::{Phase, Reached, ServerOptions, Shutdown, Speak};
use crate::http1;
use crate::metrics::{ClientErrorKind, Metrics};
use crate::proxy::h1::{LazyTimer, Next, Request, Reuse};
use crate::proxy::request_head::Scan;
use crate::proxy::{ClientInfo, Proxy, Settings};

/// Free space kept in the read buffer before each read.
const READ_SPACE: usize = 4 * 1024;

/// The first bytes of an HTTP/2 connection preface (RFC 9113 3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0";

/// How a connection left the fast path.
pub enum Outcome {
    /// Closed (or to be closed): nothing more to serve.
    Closed,
    /// Serve the rest with hyper, starting with these bytes already read.
    /// `served`: the fast path answered requests on it before.
    Handover { input: Bytes, served: bool },
}

/// True if the fast path may serve connections with these options.
pub fn usable(opts: &ServerOptions, speak: Speak) -> bool {
    opts.http1_fast_path && speak != Speak::Http2 && opts.max_headers <= http1::MAX_HEADERS
}

/// Why a wait for client bytes ended.
enum Wait {
    Data,
    Closed,
    TimedOut,
    Draining,
}

/// One connection on the fast path: what it keeps between requests.
struct FastConn<'a> {
    opts: &'a ServerOptions,
    /// Client faults are counted here.
    metrics: &'a Metrics,
    shutdown: &'a Shutdown,
    reuse: Reuse,
    /// Client read deadlines, made once per connection, not per request.
    timer: LazyTimer,
    drain: Reached,
    /// When the first request head is due (the header timeout from the
    /// accept); None once a request was served.
    first_due: Option<Instant>,
}

/// What to do with a request head the fast path has read. (Returned once
/// per request and moved at once: boxing the request would cost an
/// allocation per request.)
#[allow(clippy::large_enum_variant)]
enum Step {
    Serve(Request, Arc<Settings>, bool),
    /// Leave it (and the rest of the connection) to hyper.
    Handover,
    /// The client's fault: answered (unless it left), counted, and closed.
    Reject(ClientErrorKind),
}

/// Serves requests on `io`, accepted at `accepted`, until it closes or a
/// request needs hyper.
pub async fn serve<I>(
    io: &mut I,
    client: &ClientInfo,
    proxy: &Arc<Proxy>,
    opts: &ServerOptions,
    shutdown: &Shutdown,
    accepted: Instant,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut io = SendClock::new(io, opts.client_stall);
    let mut conn = FastConn {
        opts,
        metrics: &proxy.metrics,
        shutdown,
        reuse: Reuse::new(shutdown.clone()),
        timer: LazyTimer::new(),
        drain: shutdown.reached(Phase::Drain),
        first_due: Some(accepted + opts.client_header),
    };
    loop {
        let head = match conn.read_head(&mut io).await {
            Ok(head) => head,
            Err(outcome) => return outcome,
        };
        // The request's state is boxed: the connection's own stays the
        // small one it waits in while idle (the request's is ~4 KiB).
        let served = Box::pin(conn.serve(&mut io, head, proxy, client));
        if let Some(outcome) = served.await {
            return outcome;
        }
    }
}

// === impl FastConn ===

impl FastConn<'_> {
    /// Serves the request whose head was read; `Some` if the connection
    /// leaves the fast path with it.
    async fn serve<I>(
        &mut self,
        io: &mut I,
        head: http1::RequestHead,
        proxy: &Arc<Proxy>,
        client: &ClientInfo,
    ) -> Option<Outcome>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let (request, settings, keep_alive) = match self.prepare(io, head, proxy).await {
            Step::Serve(request, settings, keep_alive) => (request, settings, keep_alive),
            Step::Handover => return Some(self.handover()),
            Step::Reject(kind) => {
                self.reject(io, kind).await;
                return Some(Outcome::Closed);
            }
        };
        let reuse = &mut self.reuse;
        let next = proxy
            .serve_h1(request, settings, client, io, reuse, keep_alive)
            .await;
        if next == Next::Close || self.shutdown.phase() != Phase::Running {
            let _ = io.shutdown().await;
            return Some(Outcome::Closed);
        }
        self.first_due = None;
        // Idle until the next request's bytes come: hold no buffer.
        self.reuse.release();
        None
    }

    /// Reads the next request head. The first is due the header timeout
    /// after the accept; a later one may wait the idle timeout for its
    /// first byte, then the header timeout. A head that does not come in
    /// time is answered 408 if it had begun.
    async fn read_head<I>(&mut self, io: &mut I) -> Result<http1::RequestHead, Outcome>
    where
        I: AsyncRead + AsyncWrite + Unpin,
    {
        let mut head_due = self.first_due;
        loop {
            let parsed = http1::parse_request_head(
                &self.reuse.input,
                self.opts.max_header_bytes,
                &mut self.reuse.fields,
            );
            let input = &self.reuse.input;
            match parsed {
                Ok(Some(head)) => return Ok(head),
                Ok(None) => {}
                // HTTP/2 with prior knowledge: hyper serves it, or (with
                // HTTP/2 off) turns it away.
                Err(_) if input.starts_with(H2_PREFACE) => return Err(self.handover()),
                // The start of an HTTP/2 preface that arrived in pieces: wait for the rest.
                Err(_) if H2_PREFACE.starts_with(input) => {}
                Err(e) => {
                    self.reject(io, refusal(e)).await;
                    return Err(Outcome::Closed);
                }
            }
            let empty = self.reuse.input.is_empty();
            // The header timeout is armed only if a head has to wait for
            // more bytes, a few microseconds after its first ones came: a
            // head that came whole reads no clock.
            let deadline = if empty && head_due.is_none() {
                Instant::now() + self.opts.client_idle
            } else {
                *head_due.get_or_insert_with(|| Instant::now() + self.opts.client_header)
            };
            let draining = empty.then_some(&mut self.drain);
            match read_more(io, &mut self.reuse, &mut self.timer, deadline, draining).await {
                Wait::Data => {}
                Wait::TimedOut if self.begun_http1() => {
                    self.reject(io, ClientErrorKind::Timeout).await;
                    return Err(Outcome::Closed);
                }
                Wait::Closed | Wait::TimedOut | Wait::Draining => return Err(Outcome::Closed),
            }
        }
    }

    /// True if part of an HTTP/1 request head has arrived.
    fn begun_http1(&self) -> bool {
        let input = &self.reuse.input;
        !input.is_empty() && !H2_PREFACE.starts_with(input)
    }

    /// Decides what to do with `head`, and reads its body if it is served here.
    async fn prepare<I>(&mut self, io: &mut I, head: http1::RequestHead, proxy: &Proxy) -> Step
    where
        I: AsyncRead + Unpin,
    {
        let settings = proxy.settings();
        let reuse = &mut self.reuse;
        let bytes = &reuse.input[..head.len];
        let underscores = settings.underscores_in_headers;
        let scan = Scan::of(bytes, &reuse.fields, &settings.affinity, underscores);
        let framing = match scan.framing(bytes, &reuse.fields) {
            Ok(framing) => framing,
            Err(e) => return Step::Reject(refusal(e)),
        };
        if let http1::Framing::Length(n) = framing {
            let limit = settings.max_request_body;
            if limit != 0 && n > limit {
                return Step::Reject(ClientErrorKind::BodyTooLarge);
            }
        }
        // A body is read whole before the request goes on, so only one that
        // fits the replay buffer (and so can be retried) is served here.
        let body_len = match framing {
            http1::Framing::None => Some(None),
            http1::Framing::Length(n) if n <= proxy.replay_limit() as u64 => Some(Some(n as usize)),
            _ => None,
        };
        let body_len = match body_len {
            Some(len) if servable(&head, &scan, reuse.fields.len(), self.opts, proxy) => len,
            // Not a byte of it consumed: hyper reads the request afresh.
            _ => return Step::Handover,
        };
        // Most heads go to the backend from where they lie; the rest are
        // rewritten over a `HeaderMap` (see `proxy::request_head`).
        let in_place = !scan.needs_map(bytes, &head);
        let mut parts = None;
        if !in_place {
            let bytes = reuse.input.split_to(head.len).freeze();
            match http1::request_parts(&bytes, &head, &reuse.fields, &mut reuse.headers) {
                Ok(p) => parts = Some(p),
                Err(_) => return Step::Reject(ClientErrorKind::BadRequest),
            }
        }
        // The body follows the head (still in `input` if passed on in place).
        let body_at = if in_place { head.len } else { 0 };
        if let Err(kind) = self.read_body(io, body_at + body_len.unwrap_or(0)).await {
            return Step::Reject(kind);
        }
        let keep_alive = !scan.close && self.shutdown.phase() == Phase::Running;
        let request = match parts {
            None => Request::InPlace {
                head,
                scan,
                body_len,
            },
            Some(parts) => Request::Parts {
                parts,
                body: body_len.map(|n| self.reuse.input.split_to(n).freeze()),
            },
        };
        Step::Serve(request, settings, keep_alive)
    }

    /// Reads until `input` holds `len` bytes: a client that sends none of
    /// them for the stall timeout gets a 408; one that leaves is gone.
    async fn read_body<I>(&mut self, io: &mut I, len: usize) -> Result<(), ClientErrorKind>
    where
        I: AsyncRead + Unpin,
    {
        while self.reuse.input.len() < len {
            let deadline = Instant::now() + self.opts.client_stall;
            match read_more(io, &mut self.reuse, &mut self.timer, deadline, None).await {
                Wait::Data => {}
                Wait::TimedOut => return Err(ClientErrorKind::Timeout),
                Wait::Closed | Wait::Draining => return Err(ClientErrorKind::Aborted),
            }
        }
        Ok(())
    }

    /// Answers a request the client got wrong, counts it, and closes.
    async fn reject<I>(&self, io: &mut I, kind: ClientErrorKind)
    where
        I: AsyncWrite + Unpin,
    {
        self.metrics.client_error(kind);
        reject(io, kind).await;
    }

    /// Hands the connection, and the bytes read from it, to hyper.
    fn handover(&mut self) -> Outcome {
        Outcome::Handover {
            input: std::mem::take(&mut self.reuse.input).freeze(),
            served: self.first_due.is_none(),
        }
    }
}

/// The answer to a request head the client got wrong.
fn refusal(e: http1::HeadError) -> ClientErrorKind {
    match e {
        http1::HeadError::TooLarge => ClientErrorKind::HeaderTooLarge,
        http1::HeadError::LineTooLong => ClientErrorKind::UriTooLong,
        http1::HeadError::UnknownCoding => ClientErrorKind::NotImplemented,
        http1::HeadError::Malformed(_) => ClientErrorKind::BadRequest,
    }
}

/// True if the fast path serves this request (given a small body) with
/// `fields` fields.
fn servable(
    head: &http1::RequestHead,
    scan: &Scan,
    fields: usize,
    opts: &ServerOptions,
    proxy: &Proxy,
) -> bool {
    head.version == Version::HTTP_11
        && head.method != Method::CONNECT
        && fields <= opts.max_headers
        && !scan.upgrade
        && !scan.expect
        && proxy.upstreams.load().all_raw
}

/// Reads more bytes from the client into `reuse.input`, waiting at most
/// until `deadline` (and, while idle, until the server starts draining).
///
/// A connection that holds no buffers (it is idle) waits with none: each
/// wake-up reads into a buffer on the stack, and only bytes that came take
/// a set of buffers from the pool.
async fn read_more<I>(
    io: &mut I,
    reuse: &mut Reuse,
    timer: &mut LazyTimer,
    deadline: Instant,
    mut drain: Option<&mut Reached>,
) -> Wait
where
    I: AsyncRead + Unpin,
{
    std::future::poll_fn(|cx| {
        let read = if reuse.holds_buffers() {
            poll_read_into(io, &mut reuse.input, cx)
        } else {
            poll_read_idle(io, reuse, cx)
        };
        if let Poll::Ready(wait) = read {
            return Poll::Ready(wait);
        }
        if let Some(d) = drain.as_mut() {
            if Pin::new(&mut **d).poll(cx).is_ready() {
                return Poll::Ready(Wait::Draining);
            }
        }
        timer.set(deadline);
        timer.poll_expired(cx).map(|()| Wait::TimedOut)
    })
    .await
}

/// Reads into `buf`, with at least `READ_SPACE` free.
fn poll_read_into<I>(io: &mut I, buf: &mut BytesMut, cx: &mut Context<'_>) -> Poll<Wait>
where
    I: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_SPACE {
        buf.reserve(READ_SPACE);
    }
    let mut rb = ReadBuf::uninit(buf.spare_capacity_mut());
    match ready!(Pin::new(&mut *io).poll_read(cx, &mut rb)) {
        Ok(()) if !rb.filled().is_empty() => {
            let n = rb.filled().len();
            // SAFETY: the reader initialized and filled these `n` bytes
            // of the spare capacity (as `AsyncReadExt::read_buf` does).
            unsafe { buf.set_len(buf.len() + n) };
            Poll::Ready(Wait::Data)
        }
        _ => Poll::Ready(Wait::Closed),
    }
}

/// Reads on a connection that holds no buffers: into the stack, then into
/// a set of buffers taken once bytes came.
fn poll_read_idle<I>(io: &mut I, reuse: &mut Reuse, cx: &mut Context<'_>) -> Poll<Wait>
where
    I: AsyncRead + Unpin,
{
    // Uninitialized: zeroing it would cost more than the read.
    let mut stack = [std::mem::MaybeUninit::<u8>::uninit(); READ_SPACE];
    let mut rb = ReadBuf::uninit(&mut stack);
    match ready!(Pin::new(&mut *io).poll_read(cx, &mut rb)) {
        Ok(()) if !rb.filled().is_empty() => {
            reuse.acquire();
            reuse.input.reserve(READ_SPACE);
            reuse.input.extend_from_slice(rb.filled());
            Poll::Ready(Wait::Data)
        }
        _ => Poll::Ready(Wait::Closed),
    }
}

/// Answers a request the server will not serve with its status (nothing
/// to a client that left), and closes.
async fn reject<I>(io: &mut I, kind: ClientErrorKind)
where
    I: AsyncWrite + Unpin,
{
    let status = match kind {
        ClientErrorKind::BadRequest => "400 Bad Request",
        ClientErrorKind::Timeout => "408 Request Timeout",
        ClientErrorKind::BodyTooLarge => "413 Payload Too Large",
        ClientErrorKind::UriTooLong => "414 URI Too Long",
        ClientErrorKind::HeaderTooLarge => "431 Request Header Fields Too Large",
        ClientErrorKind::NotImplemented => "501 Not Implemented",
        ClientErrorKind::Aborted | ClientErrorKind::Flood => {
            let _ = io.shutdown().await;
            return;
        }
    };
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}
