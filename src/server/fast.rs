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
use crate::proxy::h1::{LazyTimer, Next, Request, Reuse};
use crate::proxy::request_head::Scan;
use crate::proxy::{ClientInfo, Proxy};

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
        // A request head: the idle timeout runs until its first byte, the
        // header timeout from then on.
        let mut head_deadline: Option<Instant> = None;
        let head = loop {
            match http1::parse_request_head(&reuse.input, opts.max_header_bytes, &mut reuse.fields)
            {
                Ok(Some(head)) => break head,
                Ok(None) => {}
                // HTTP/2 with prior knowledge: hyper serves it, or (with
                // HTTP/2 off) turns it away, as it did before the fast path.
                Err(_) if reuse.input.starts_with(H2_PREFACE) => {
                    return Outcome::Handover(std::mem::take(&mut reuse.input).freeze());
                }
                // The start of an HTTP/2 preface that arrived in pieces: wait for the rest.
                Err(_) if H2_PREFACE.starts_with(&reuse.input) => {}
                Err(e) => {
                    let status = match e {
                        http1::HeadError::TooLarge => "431 Request Header Fields Too Large",
                        http1::HeadError::Malformed(_) => "400 Bad Request",
                    };
                    reject(io, status).await;
                    return Outcome::Closed;
                }
            }
            let idle = reuse.input.is_empty();
            let deadline = if idle {
                Instant::now() + opts.client_idle
            } else {
                *head_deadline.get_or_insert_with(|| Instant::now() + opts.client_header)
            };
            let draining = if idle { Some(&mut drain) } else { None };
            // The header timeout is armed (above) only if a head has to
            // wait for more bytes, a few microseconds after its first ones
            // came: a head that came whole reads no clock.
            match read_more(io, &mut reuse.input, &mut timer, deadline, draining).await {
                Wait::Data => {}
                Wait::Closed | Wait::TimedOut | Wait::Draining => return Outcome::Closed,
            }
        };

        let settings = proxy.settings();
        let bytes = &reuse.input[..head.len];
        let scan = Scan::of(bytes, &reuse.fields, &settings.affinity);
        let framing = match scan.framing(bytes, &reuse.fields) {
            Ok(f) => f,
            Err(_) => {
                reject(io, "400 Bad Request").await;
                return Outcome::Closed;
            }
        };
        // A body is read whole before the request goes on, so only one that
        // fits the replay buffer (and so can be retried) is served here.
        let body_len = match framing {
            http1::Framing::None => Some(None),
            http1::Framing::Length(n) if n <= proxy.replay_limit() as u64 => Some(Some(n as usize)),
            _ => None,
        };
        let body_len = match body_len {
            Some(len) if servable(&head, &scan, reuse.fields.len(), opts, proxy) => len,
            // Not a byte of it consumed: hyper reads the request afresh.
            _ => return Outcome::Handover(std::mem::take(&mut reuse.input).freeze()),
        };

        // Most heads go to the backend from where they lie; the rest are
        // rewritten over a `HeaderMap` (see `proxy::request_head`).
        let in_place = !scan.needs_map(bytes, &head);
        let mut parts = None;
        if !in_place {
            let bytes = reuse.input.split_to(head.len).freeze();
            match http1::request_parts(&bytes, &head, &reuse.fields, &mut reuse.headers) {
                Ok(p) => parts = Some(p),
                Err(_) => {
                    reject(io, "400 Bad Request").await;
                    return Outcome::Closed;
                }
            }
        }
        // The body follows the head (still in `input` if passed on in place).
        let body_at = if in_place { head.len } else { 0 };
        let n = body_len.unwrap_or(0);
        while reuse.input.len() < body_at + n {
            let deadline = Instant::now() + opts.client_idle;
            match read_more(io, &mut reuse.input, &mut timer, deadline, None).await {
                Wait::Data => {}
                _ => return Outcome::Closed,
            }
        }
        let keep_alive = !scan.close && shutdown.phase() == Phase::Running;
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
        let next = proxy
            .serve_h1(request, settings, client, io, &mut reuse, keep_alive)
            .await;
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

/// Answers a request the server cannot read, and closes.
async fn reject<I>(io: &mut I, status: &str)
where
    I: AsyncWrite + Unpin,
{
    let response = format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    let _ = io.write_all(response.as_bytes()).await;
    let _ = io.shutdown().await;
}
