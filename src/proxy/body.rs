//! The response body sent to the client, and what happens when it ends.
//!
//! A proxied response holds its backend's in-flight guard and connection until
//! the body ends or is dropped: only then does least-connections see the
//! backend as free, does the connection go back to the pool, and are the
//! request's duration and access-log line recorded.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::Instant;

use super::access_log::Entry;
use super::hold::Held;
use super::{headers, Proxy};
use crate::metrics::{ClientErrorKind, CodeClass, UpstreamErrorKind};
use crate::upstream::raw::RawBody;
use crate::upstream::{
    poll_timed, Backend, BodyError, BodyFault, BodyWatch, Conn, InFlight, Stall,
};

/// What happened to the upstream body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still streaming.
    Open,
    /// Ended cleanly: the connection can be reused.
    Clean,
    /// The backend failed mid-body (after the head reached the client).
    Failed,
    /// The client left (or stopped reading) before the body was sent.
    ClientGone,
}

/// Everything recorded when a response finishes.
pub(crate) struct Completion {
    pub proxy: Arc<Proxy>,
    pub start: Instant,
    pub status: u16,
    /// The backend's in-flight guard (None for responses made by unstick).
    pub in_flight: Option<InFlight>,
    /// The backend that failed, for an error response made by unstick.
    pub backend: Option<Arc<Backend>>,
    /// The connection, returned to the pool if the body ended cleanly.
    pub conn: Option<Conn>,
    pub bytes: u64,
    /// The access-log line, filled only when logging is on.
    pub log: Option<Box<Entry>>,
    /// The client's streamed request body: if it failed, a response cut
    /// short is the client's doing, not the backend's.
    pub client_body: Option<Arc<BodyWatch>>,
    /// The client's fault that the response answers (set with an error
    /// response made by unstick).
    pub client_error: Option<ClientErrorKind>,
    end: End,
}

impl Completion {
    pub fn new(proxy: Arc<Proxy>, start: Instant, status: u16) -> Completion {
        Completion {
            proxy,
            start,
            status,
            in_flight: None,
            backend: None,
            conn: None,
            bytes: 0,
            log: None,
            client_body: None,
            client_error: None,
            end: End::Open,
        }
    }
}

impl Completion {
    /// The response body ended: cleanly (`true`), or cut short by the
    /// backend after the head was sent (`false`). Used by the fast path,
    /// which streams bodies itself.
    pub(crate) fn body_ended(&mut self, clean: bool) {
        if self.end == End::Open {
            self.end = if clean { End::Clean } else { End::Failed };
        }
    }

    /// The client left before the response was complete (the fast path
    /// could not write to it).
    pub(crate) fn client_gone(&mut self) {
        if self.end == End::Open {
            self.end = End::ClientGone;
        }
    }

    /// The client's fault that ended this request early, if any: it left
    /// (before a response, or during one), or its request body failed.
    fn client_fault(&self) -> Option<ClientErrorKind> {
        if self.client_error.is_some() {
            return self.client_error;
        }
        let body = self.client_body.as_ref().and_then(|w| w.fault());
        if let Some(fault) = body.filter(|_| self.end != End::Clean) {
            return Some(match fault {
                BodyFault::Malformed => ClientErrorKind::BadRequest,
                BodyFault::Gone => ClientErrorKind::Aborted,
                BodyFault::TimedOut(_) => ClientErrorKind::Timeout,
                BodyFault::TooLarge(_) => ClientErrorKind::BodyTooLarge,
            });
        }
        (self.status == 0 || self.end == End::ClientGone).then_some(ClientErrorKind::Aborted)
    }
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        let client_fault = self.client_fault();
        // A body cut by the client's own failure is not the backend's.
        if client_fault.is_some() && self.end == End::Failed {
            self.end = End::ClientGone;
        }
        let class = match self.end {
            End::Failed | End::ClientGone => CodeClass::Error,
            _ if self.status == 0 => CodeClass::Error,
            _ => CodeClass::of(self.status),
        };
        let metrics = &self.proxy.metrics;
        metrics.request_duration_by_class[class as usize].observe(elapsed.as_secs_f64());
        if let Some(kind) = client_fault {
            metrics.client_error(kind);
        }
        let conn = self.conn.take();
        let backend = self
            .in_flight
            .as_ref()
            .map(InFlight::backend)
            .or(self.backend.as_ref());
        match backend {
            Some(backend) => self.record_on(backend, class, conn),
            None => metrics.request_without_backend(class),
        }
        if let Some(mut entry) = self.log.take() {
            entry.status = self.status;
            entry.bytes = self.bytes;
            entry.duration = elapsed;
            if self.end == End::Failed {
                entry.error = Some("after_head");
            } else if client_fault.is_some() {
                entry.error = Some("client_closed");
            }
            let name = backend.map(|b| &*b.name);
            self.proxy.access_log.write(entry, name);
        }
    }
}

impl Completion {
    /// Counts the request on the backend that answered; a body the backend
    /// cut short is its failure; a connection whose body ended cleanly goes
    /// back to the pool.
    fn record_on(&self, backend: &Backend, class: CodeClass, conn: Option<Conn>) {
        backend.metrics.request(class);
        if self.end == End::Failed {
            tracing::warn!(
                backend = %backend.name,
                status = self.status,
                bytes = self.bytes,
                "backend failed after the response head was sent; the client got a truncated response"
            );
            backend.metrics.error(UpstreamErrorKind::AfterHead);
            backend.record_error("the backend failed after sending the response head".into());
        }
        if let (End::Clean, Some(conn)) = (self.end, conn) {
            backend.pool.checkin(conn);
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// A backend's body, on the upstream stall clock.
    Upstream(Incoming, Stall),
    /// A plain HTTP/1.1 backend's body read without hyper (HTTP/2 clients'
    /// requests on the fast path's connections); boxed, as it is rare
    /// beside the small body read whole with its head.
    Raw(Box<RawBody>),
    /// A backend's body read (in part or whole) while it was held, then the
    /// rest of it (boxed: rare beside a body passed on as it comes).
    Held(Box<(Held, Incoming, Stall)>),
}

/// A response body: bytes made by unstick, or a backend's body streamed through.
pub struct ResponseBody {
    kind: Kind,
    done: Option<Completion>,
    /// The client takes trailers: the backend's are passed on (those allowed).
    trailers: bool,
}

impl ResponseBody {
    /// A body made by unstick (errors, redirects, admin answers).
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            done: None,
            trailers: false,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
            done: None,
            trailers: false,
        }
    }

    /// A backend's body: one that sends nothing for `stall` fails.
    pub(crate) fn upstream(body: Incoming, stall: Duration, done: Completion) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(body, Stall::new(stall)),
            done: Some(done),
            trailers: false,
        }
    }

    /// A backend's body whose start (or whole) was read while holding it:
    /// that goes out first, then the rest as [`ResponseBody::upstream`].
    pub(crate) fn held(
        held: Held,
        body: Incoming,
        stall: Duration,
        done: Completion,
    ) -> ResponseBody {
        ResponseBody {
            kind: Kind::Held(Box::new((held, body, Stall::new(stall)))),
            done: Some(done),
            trailers: false,
        }
    }

    /// A plain HTTP/1.1 backend's body, read from its connection here; the
    /// connection goes back to the pool when the body ends cleanly.
    pub(crate) fn raw(body: RawBody, done: Completion) -> ResponseBody {
        ResponseBody {
            kind: Kind::Raw(Box::new(body)),
            done: Some(done),
            trailers: false,
        }
    }

    /// Passes the backend's trailers on (those allowed): the client takes them.
    pub(crate) fn with_trailers(mut self, trailers: bool) -> ResponseBody {
        self.trailers = trailers;
        self
    }

    /// Takes the bytes of a body made by unstick (counted as sent).
    pub(crate) fn take_full(&mut self) -> Option<Bytes> {
        let Kind::Full(b) = &mut self.kind else {
            return None;
        };
        let b = b.take();
        if let (Some(d), Some(b)) = (&mut self.done, &b) {
            d.bytes += b.len() as u64;
        }
        b
    }

    pub(crate) fn with_completion(mut self, done: Completion) -> ResponseBody {
        self.done = Some(done);
        self
    }

    /// A raw body that ended at a message boundary: its connection goes
    /// back to the backend's pool.
    fn check_in_raw(&mut self) {
        let Kind::Raw(body) = &mut self.kind else {
            return;
        };
        let backend = self.done.as_ref().and_then(|d| d.in_flight.as_ref());
        if let (Some(conn), Some(in_flight)) = (body.reusable(), backend) {
            in_flight.backend().pool.checkin_raw(conn);
        }
    }

    fn finish(&mut self, end: End) {
        if let Some(d) = &mut self.done {
            if d.end == End::Open {
                d.end = end;
            }
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(b, stall) => poll_timed(b, stall, cx),
            Kind::Raw(b) => b.poll_frame(cx),
            Kind::Held(h) => poll_held(h, cx),
        };
        // Trailers (the last frame): scrubbed, or dropped for a client
        // that did not ask for them.
        if let Poll::Ready(Some(Ok(frame))) = &mut polled {
            if let Some(trailers) = frame.trailers_mut() {
                headers::scrub_trailers(trailers);
                if !this.trailers || trailers.is_empty() {
                    polled = Poll::Ready(None);
                }
            }
        }
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (&mut this.done, frame.data_ref()) {
                    d.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(End::Failed),
            Poll::Ready(None) => {
                this.finish(End::Clean);
                this.check_in_raw();
                // Record now rather than when hyper drops the body.
                this.done = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(b) => b.is_none(),
            Kind::Upstream(b, _) => b.is_end_stream(),
            Kind::Raw(b) => b.is_end_stream(),
            Kind::Held(h) => {
                let (held, body, _) = &**h;
                held.data.is_none()
                    && held.trailers.is_none()
                    && (held.ended || body.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(b, _) => b.size_hint(),
            Kind::Raw(b) => b.size_hint(),
            Kind::Held(h) => {
                let (held, body, _) = &**h;
                if held.ended && held.exact {
                    return SizeHint::with_exact(held.len());
                }
                let rest = body.size_hint();
                let mut hint = SizeHint::new();
                if held.ended {
                    hint.set_lower(held.len());
                    return hint;
                }
                hint.set_lower(rest.lower() + held.len());
                if let Some(upper) = rest.upper() {
                    hint.set_upper(upper + held.len());
                }
                hint
            }
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was already empty (HEAD, 204,
        // 304) ended cleanly, as did one made by unstick (a HEAD answer's is
        // never polled); a backend's body dropped unfinished was cut short by
        // the client, and its connection is not reused.
        if self.is_end_stream() || matches!(self.kind, Kind::Full(_)) {
            self.finish(End::Clean);
            // hyper's HTTP/2 stops polling a body that says it has ended.
            self.check_in_raw();
        } else {
            self.finish(End::ClientGone);
        }
    }
}

/// A held body's next frame: the bytes read while holding it, its
/// trailers if they came, then (unless it had ended) the rest.
fn poll_held(
    h: &mut (Held, Incoming, Stall),
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    let (held, body, stall) = h;
    if let Some(data) = held.data.take() {
        return Poll::Ready(Some(Ok(Frame::data(data))));
    }
    if let Some(trailers) = held.trailers.take() {
        return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
    }
    if held.ended {
        return Poll::Ready(None);
    }
    poll_timed(body, stall, cx)
}
