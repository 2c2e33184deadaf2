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
use std::task::Poll;

use bytes::{Bytes, BytesMut};
use http::{Method, Version};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::time::Instant;

use super::{Phase, Reached, ServerOptions, Shutdown, Speak};
use crate::http1;
use crate::metrics::ClientErrorKind;
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
    Handover(Bytes),
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

/// Why the fast path stops serving a connection.
enum Stop {
    /// Close it: the client left, idled out, or the server drains.
    Close,
    /// Hand it to hyper with every byte read so far.
    Handover,
    /// Answer the client's fault with its status, count it, and close.
    Refuse(ClientErrorKind),
}

/// A request ready for `Proxy::serve_h1`.
struct Ready {
    request: Request,
    settings: Arc<Settings>,
    keep_alive: bool,
}

/// Serves requests on `io` until it closes or a request needs hyper.
pub async fn serve<I>(
    io: &mut I,
    client: &ClientInfo,
    proxy: &Arc<Proxy>,
    opts: &ServerOptions,
    shutdown: &Shutdown,
) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut reuse = Reuse::new(shutdown.clone());
    // Timers (client reads, backend response heads) and a drain watch made
    // once per connection, not per request.
    let mut timer = LazyTimer::new();
    let mut drain = shutdown.reached(Phase::Drain);
    loop {
        let next = match read_request(io, &mut reuse, &mut timer, &mut drain, proxy, opts).await {
            Ok(ready) => {
                proxy
                    .serve_h1(
                        ready.request,
                        ready.settings,
                        client,
                        io,
                        &mut reuse,
                        ready.keep_alive,
                    )
                    .await
            }
            Err(Stop::Close) => Next::Close,
            Err(Stop::Handover) => {
                // Not a byte of the request consumed: hyper reads it afresh.
                return Outcome::Handover(std::mem::take(&mut reuse.input).freeze());
            }
            Err(Stop::Refuse(kind)) => {
                proxy.metrics.client_error(kind);
                reject(io, kind).await;
                return Outcome::Closed;
            }
        };
        if next == Next::Close || shutdown.phase() != Phase::Running {
            let _ = io.shutdown().await;
            return Outcome::Closed;
        }
        // Give back a large buffer grown by one big request.
        if reuse.scratch.capacity() > 64 * 1024 {
            reuse.scratch = Vec::new();
        }
    }
}

/// Reads the next request the fast path serves: its head, then a body that
/// fits the replay buffer (read whole: it may be sent again). Heads that
/// go to the backend as they are stay in `reuse.input`; others are made
/// into `http` parts (see `proxy::request_head`).
async fn read_request<I>(
    io: &mut I,
    reuse: &mut Reuse,
    timer: &mut LazyTimer,
    drain: &mut Reached,
    proxy: &Proxy,
    opts: &ServerOptions,
) -> Result<Ready, Stop>
where
    I: AsyncRead + Unpin,
{
    let head = read_head(io, reuse, timer, drain, opts).await?;
    let settings = proxy.settings();
    let bytes = &reuse.input[..head.len];
    let scan = Scan::of(
        bytes,
        &reuse.fields,
        &settings.affinity,
        settings.underscores_in_headers,
    );
    let body_len = body_len(&head, &scan, &reuse.fields, reuse, opts, proxy, &settings)?;

    // Most heads go to the backend from where they lie; the rest are
    // rewritten over a `HeaderMap` (see `proxy::request_head`).
    let in_place = !scan.needs_map(bytes, &head);
    let mut parts = None;
    if !in_place {
        let bytes = reuse.input.split_to(head.len).freeze();
        let p = http1::request_parts(&bytes, &head, &reuse.fields, &mut reuse.headers);
        parts = Some(p.map_err(|_| Stop::Refuse(ClientErrorKind::BadRequest))?);
    }
    // The body follows the head (still in `input` if passed on in place).
    let body_at = if in_place { head.len } else { 0 };
    read_body(io, reuse, timer, body_at + body_len.unwrap_or(0), opts).await?;
    let keep_alive = !scan.close && reuse.shutdown.phase() == Phase::Running;
    let request = match parts {
        None => Request::InPlace {
            head,
            scan,
            body_len,
        },
        Some(parts) => Request::Parts {
            parts,
            body: body_len.map(|n| reuse.input.split_to(n).freeze()),
        },
    };
    Ok(Ready {
        request,
        settings,
        keep_alive,
    })
}

/// Reads a request head into `reuse.input` (its fields in `reuse.fields`):
/// the idle timeout runs until its first byte, the header timeout from
/// then on.
async fn read_head<I>(
    io: &mut I,
    reuse: &mut Reuse,
    timer: &mut LazyTimer,
    drain: &mut Reached,
    opts: &ServerOptions,
) -> Result<http1::RequestHead, Stop>
where
    I: AsyncRead + Unpin,
{
    let mut head_deadline: Option<Instant> = None;
    loop {
        match http1::parse_request_head(&reuse.input, opts.max_header_bytes, &mut reuse.fields) {
            Ok(Some(head)) => return Ok(head),
            Ok(None) => {}
            // HTTP/2 with prior knowledge: hyper serves it, or (with
            // HTTP/2 off) turns it away, as it did before the fast path.
            Err(_) if reuse.input.starts_with(H2_PREFACE) => return Err(Stop::Handover),
            // The start of an HTTP/2 preface that arrived in pieces: wait for the rest.
            Err(_) if H2_PREFACE.starts_with(&reuse.input) => {}
            Err(e) => return Err(refusal(e)),
        }
        let idle = reuse.input.is_empty();
        let deadline = if idle {
            Instant::now() + opts.client_idle
        } else {
            *head_deadline.get_or_insert_with(|| Instant::now() + opts.client_header)
        };
        let draining = if idle { Some(&mut *drain) } else { None };
        // The header timeout is armed (above) only if a head has to wait
        // for more bytes, a few microseconds after its first ones came: a
        // head that came whole reads no clock.
        match read_more(io, &mut reuse.input, timer, deadline, draining).await {
            Wait::Data => {}
            // A head begun and not finished in time is answered 408.
            Wait::TimedOut if !idle => return Err(Stop::Refuse(ClientErrorKind::Timeout)),
            Wait::Closed | Wait::TimedOut | Wait::Draining => return Err(Stop::Close),
        }
    }
}

/// The length of the body the fast path reads for this request (None: no
/// body), or why it does not serve it: hyper serves what the fast path
/// does not (`Stop::Handover`), and a client's broken framing or a body
/// over the limit is refused.
fn body_len(
    head: &http1::RequestHead,
    scan: &Scan,
    fields: &[http1::HeaderIndices],
    reuse: &Reuse,
    opts: &ServerOptions,
    proxy: &Proxy,
    settings: &Settings,
) -> Result<Option<usize>, Stop> {
    let bytes = &reuse.input[..head.len];
    let framing = scan.framing(bytes, fields).map_err(refusal)?;
    if let http1::Framing::Length(n) = framing {
        if settings.max_request_body != 0 && n > settings.max_request_body {
            return Err(Stop::Refuse(ClientErrorKind::BodyTooLarge));
        }
    }
    // A body is read whole before the request goes on, so only one that
    // fits the replay buffer (and so can be retried) is served here.
    let len = match framing {
        http1::Framing::None => None,
        http1::Framing::Length(n) if n <= proxy.replay_limit() as u64 => Some(n as usize),
        _ => return Err(Stop::Handover),
    };
    if !servable(head, scan, fields.len(), opts, proxy) {
        return Err(Stop::Handover);
    }
    Ok(len)
}

/// Reads until `reuse.input` holds `len` bytes: a client that stops
/// sending for the idle timeout is answered 408, one that leaves is gone.
async fn read_body<I>(
    io: &mut I,
    reuse: &mut Reuse,
    timer: &mut LazyTimer,
    len: usize,
    opts: &ServerOptions,
) -> Result<(), Stop>
where
    I: AsyncRead + Unpin,
{
    while reuse.input.len() < len {
        let deadline = Instant::now() + opts.client_idle;
        match read_more(io, &mut reuse.input, timer, deadline, None).await {
            Wait::Data => {}
            Wait::TimedOut => return Err(Stop::Refuse(ClientErrorKind::Timeout)),
            Wait::Closed | Wait::Draining => return Err(Stop::Refuse(ClientErrorKind::Aborted)),
        }
    }
    Ok(())
}

/// The answer to a request head the client got wrong.
fn refusal(e: http1::HeadError) -> Stop {
    Stop::Refuse(match e {
        http1::HeadError::TooLarge => ClientErrorKind::HeaderTooLarge,
        http1::HeadError::LineTooLong => ClientErrorKind::UriTooLong,
        http1::HeadError::UnknownCoding => ClientErrorKind::NotImplemented,
        http1::HeadError::Malformed(_) => ClientErrorKind::BadRequest,
    })
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

/// Reads more bytes from the client, waiting at most until `deadline`
/// (and, while idle, until the server starts draining).
async fn read_more<I>(
    io: &mut I,
    buf: &mut BytesMut,
    timer: &mut LazyTimer,
    deadline: Instant,
    mut drain: Option<&mut Reached>,
) -> Wait
where
    I: AsyncRead + Unpin,
{
    if buf.capacity() - buf.len() < READ_SPACE {
        buf.reserve(READ_SPACE);
    }
    let read = io.read_buf(buf);
    tokio::pin!(read);
    std::future::poll_fn(|cx| {
        if let Poll::Ready(r) = read.as_mut().poll(cx) {
            return Poll::Ready(match r {
                Ok(0) | Err(_) => Wait::Closed,
                Ok(_) => Wait::Data,
            });
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
        ClientErrorKind::Aborted => {
            let _ = io.shutdown().await;
            return;
        }
    };
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}
