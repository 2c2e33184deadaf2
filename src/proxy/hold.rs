//! Responses held until they are safe, on the hyper path: a small, quick response to a replayable request is read whole before the client sees any of it.
//!
//! A backend that dies after its response head and before its body would
//! otherwise cut the client's response short. Holding the response (up to
//! `retries.response_buffer` bytes, for `retries.response_hold`) turns that
//! into a failed attempt, retried on another backend like a reset before the
//! head. What streams (event streams, gRPC, upgrades, large or slow bodies)
//! is passed on as it comes, with whatever was read while holding it first.
//! The fast path holds its responses the same way in `proxy::h1`.

use bytes::{Bytes, BytesMut};
use http::{header, HeaderMap, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use super::error::{Kind, ProxyError, Retry, Source};
use crate::config::Retries;

/// What was read of a response body while holding it: passed on before
/// the rest of the body (if any is left).
#[derive(Debug, Default)]
pub struct Held {
    pub data: Option<Bytes>,
    pub trailers: Option<HeaderMap>,
    /// The body ended: nothing is left to read.
    pub ended: bool,
    /// The backend framed the body by its length (else the client's
    /// framing stays open-ended too: chunked, with room for trailers).
    pub exact: bool,
}

impl Held {
    /// The held bytes' length.
    pub fn len(&self) -> u64 {
        self.data.as_ref().map_or(0, |d| d.len() as u64)
    }
}

/// A response type that is read as it comes, never held: an event stream
/// or gRPC (`application/grpc`, `+proto`, `-web`...).
pub fn streams(content_type: &[u8]) -> bool {
    let starts = |prefix: &[u8]| {
        content_type.len() >= prefix.len()
            && content_type[..prefix.len()].eq_ignore_ascii_case(prefix)
    };
    starts(b"text/event-stream") || starts(b"application/grpc")
}

/// Whether a response is to be held: one with a body that may still come,
/// no larger than `bound` by its announced length, and not streaming.
fn wanted(response: &Response<Incoming>, bound: usize) -> bool {
    let body = response.body();
    let streaming = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| streams(v.as_bytes()));
    response.status() != StatusCode::SWITCHING_PROTOCOLS
        && !body.is_end_stream()
        && body.size_hint().lower() <= bound as u64
        && !streaming
}

/// Reads the body of `response` until it ends, outgrows
/// `retries.response_buffer`, or `retries.response_hold` is up: what was
/// read is returned to go out first (None: the response is not held). A
/// body the backend cuts short meanwhile fails the attempt, before the
/// client got anything: the request may go to another backend.
pub async fn hold(
    response: &mut Response<Incoming>,
    retries: &Retries,
) -> Result<Option<Held>, ProxyError> {
    if !wanted(response, retries.response_buffer) {
        return Ok(None);
    }
    let deadline = Instant::now() + retries.response_hold;
    let body = response.body_mut();
    let mut data = BytesMut::new();
    let mut held = Held {
        exact: body.size_hint().exact().is_some(),
        ..Held::default()
    };
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_elapsed) => break,
            Ok(None) => {
                held.ended = true;
                break;
            }
            Ok(Some(Err(e))) => {
                let kind = Kind::HeldCut(super::describe_hyper_error(&e));
                return Err(ProxyError::new(Source::Upstream, kind, Retry::IfIdempotent));
            }
            Ok(Some(Ok(frame))) => match frame.into_data() {
                Ok(d) => {
                    data.extend_from_slice(&d);
                    if data.len() > retries.response_buffer {
                        break;
                    }
                }
                Err(frame) => held.trailers = frame.into_trailers().ok(),
            },
        }
    }
    held.data = (!data.is_empty()).then(|| data.freeze());
    Ok(Some(held))
}
