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
use super::Proxy;
use crate::metrics::{CodeClass, UpstreamErrorKind};
use crate::upstream::{poll_timed, Backend, BodyError, Conn, InFlight, Stall};

/// What happened to the upstream body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// Still streaming.
    Open,
    /// Ended cleanly: the connection can be reused.
    Clean,
    /// The backend failed mid-body (after the head reached the client).
    Failed,
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
}

impl Drop for Completion {
    fn drop(&mut self) {
        let elapsed = self.start.elapsed();
        // No status: the client went away before a response was made.
        let client_closed = self.status == 0;
        let class = if self.end == End::Failed || client_closed {
            CodeClass::Error
        } else {
            CodeClass::of(self.status)
        };
        let metrics = &self.proxy.metrics;
        metrics.request_duration_by_class[class as usize].observe(elapsed.as_secs_f64());
        let backend = self
            .in_flight
            .as_ref()
            .map(InFlight::backend)
            .or(self.backend.as_ref());
        match backend {
            Some(backend) => {
                backend.metrics.request(class);
                if self.end == End::Failed {
                    tracing::warn!(
                        backend = %backend.name,
                        status = self.status,
                        bytes = self.bytes,
                        "backend failed after the response head was sent; the client got a truncated response"
                    );
                    backend.metrics.error(UpstreamErrorKind::AfterHead);
                    backend
                        .record_error("the backend failed after sending the response head".into());
                }
                if self.end == End::Clean {
                    if let Some(conn) = self.conn.take() {
                        backend.pool.checkin(conn);
                    }
                }
            }
            None => metrics.request_without_backend(class),
        }
        if let Some(mut entry) = self.log.take() {
            entry.status = self.status;
            entry.bytes = self.bytes;
            entry.duration = elapsed;
            if self.end == End::Failed {
                entry.error = Some("after_head");
            } else if client_closed {
                entry.error = Some("client_closed");
            }
            let name = backend.map(|b| &*b.name);
            self.proxy.access_log.write(entry, name);
        }
    }
}

enum Kind {
    Full(Option<Bytes>),
    /// A backend's body, on the upstream stall clock.
    Upstream(Incoming, Stall),
}

/// A response body: bytes made by unstick, or a backend's body streamed through.
pub struct ResponseBody {
    kind: Kind,
    done: Option<Completion>,
}

impl ResponseBody {
    /// A body made by unstick (errors, redirects, admin answers).
    pub fn full(bytes: impl Into<Bytes>) -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(Some(bytes.into())),
            done: None,
        }
    }

    pub fn empty() -> ResponseBody {
        ResponseBody {
            kind: Kind::Full(None),
            done: None,
        }
    }

    /// A backend's body: one that sends nothing for `stall` fails.
    pub(crate) fn upstream(body: Incoming, stall: Duration, done: Completion) -> ResponseBody {
        ResponseBody {
            kind: Kind::Upstream(body, Stall::new(stall)),
            done: Some(done),
        }
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
        let polled = match &mut this.kind {
            Kind::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(b, stall) => poll_timed(b, stall, cx),
        };
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (&mut this.done, frame.data_ref()) {
                    d.bytes += data.len() as u64;
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(End::Failed),
            Poll::Ready(None) => {
                this.finish(End::Clean);
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
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(b, _) => b.size_hint(),
        }
    }
}

impl Drop for ResponseBody {
    fn drop(&mut self) {
        // A body hyper never polled because it was already empty (HEAD, 204,
        // 304) ended cleanly; any other unfinished body was cut short by the
        // client, and its connection is not reused.
        if self.is_end_stream() {
            self.finish(End::Clean);
        }
    }
}
