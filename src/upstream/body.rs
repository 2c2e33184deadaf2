//! The body of a request on its way to a backend: streamed, or held for replay; a streamed body notes when the client, not the backend, made it fail.

use std::error::Error as _;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// The error a request body yields to the connection sending it.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Its framing was broken (a bad chunk line, a length that does not hold).
    Malformed,
    /// The client closed or reset its connection (or stream) before the end.
    Gone,
    /// The client stopped sending.
    TimedOut,
    /// It grew past this many bytes (`limits.max_request_body`).
    TooLarge(u64),
}

/// What became of a client's streamed body, shared between the body (which
/// notes the first fault) and the request path (which asks, after a failed
/// attempt or a cut response, whether the client was at fault).
#[derive(Debug, Default)]
pub struct BodyWatch(OnceLock<BodyFault>);

impl BodyWatch {
    /// The client's fault, if its body failed.
    pub fn fault(&self) -> Option<BodyFault> {
        self.0.get().copied()
    }

    fn note(&self, fault: BodyFault) {
        let _ = self.0.set(fault);
    }
}

/// A client's request body as it streams to a backend: counted against a
/// limit, and every failure noted in its [`BodyWatch`] (a failure here is
/// always the client's: its bytes are read from the client).
pub struct ClientBody {
    inner: Incoming,
    read: u64,
    /// Most bytes allowed (0: no limit).
    limit: u64,
    watch: Arc<BodyWatch>,
}

impl ClientBody {
    pub fn new(inner: Incoming, limit: u64, watch: Arc<BodyWatch>) -> ClientBody {
        ClientBody {
            inner,
            read: 0,
            limit,
            watch,
        }
    }

    /// True if the body says up front (its length) that it is over the limit.
    pub fn announced_too_large(&self) -> bool {
        self.limit != 0 && self.inner.size_hint().lower() > self.limit
    }

    pub fn watch(&self) -> &Arc<BodyWatch> {
        &self.watch
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                    if this.limit != 0 && this.read > this.limit {
                        this.watch.note(BodyFault::TooLarge(this.limit));
                        return Poll::Ready(Some(Err("the request body is over the limit".into())));
                    }
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.watch.note(fault_of(&e));
                Poll::Ready(Some(Err(e.into())))
            }
            other => other.map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Which client fault a body error from hyper is: broken framing (hyper's
/// decoders report it as invalid data or input, HTTP/2 as a protocol error
/// it found itself), a timeout, or else a client that left.
pub fn fault_of(e: &hyper::Error) -> BodyFault {
    if e.is_timeout() {
        return BodyFault::TimedOut;
    }
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => BodyFault::Malformed,
                io::ErrorKind::TimedOut => BodyFault::TimedOut,
                _ => BodyFault::Gone,
            };
        }
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            let broken = !h2.is_remote() && h2.reason() == Some(h2::Reason::PROTOCOL_ERROR);
            return if broken {
                BodyFault::Malformed
            } else {
                BodyFault::Gone
            };
        }
        cause = c.source();
    }
    if e.is_parse() {
        BodyFault::Malformed
    } else {
        BodyFault::Gone
    }
}

/// A request body sent upstream.
///
/// `Full` bodies can be cloned for a retry; `Stream` and `Prefixed` bodies are
/// read once, so a request carrying one is replayable only if nothing was sent.
pub enum RequestBody {
    Empty,
    /// A body held in memory (at most the replay buffer), sent as one frame.
    Full(Option<Bytes>),
    /// The client's body, streamed through.
    Stream(ClientBody),
    /// A body that outgrew the replay buffer: the part already read, then the rest.
    Prefixed {
        prefix: Option<Bytes>,
        rest: ClientBody,
    },
}

impl RequestBody {
    /// A copy of this body, if it can be sent again.
    pub fn try_clone(&self) -> Option<RequestBody> {
        match self {
            RequestBody::Empty => Some(RequestBody::Empty),
            RequestBody::Full(b) => Some(RequestBody::Full(b.clone())),
            RequestBody::Stream(b) if b.is_end_stream() => Some(RequestBody::Empty),
            RequestBody::Stream(_) | RequestBody::Prefixed { .. } => None,
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        // Every variant is Unpin (ClientBody is), so no projection is needed.
        match self.get_mut() {
            RequestBody::Empty => Poll::Ready(None),
            RequestBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            RequestBody::Stream(b) => Pin::new(b).poll_frame(cx),
            RequestBody::Prefixed { prefix, rest } => match prefix.take() {
                Some(p) => Poll::Ready(Some(Ok(Frame::data(p)))),
                None => Pin::new(rest).poll_frame(cx),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Empty => true,
            RequestBody::Full(b) => b.is_none(),
            RequestBody::Stream(b) => b.is_end_stream(),
            RequestBody::Prefixed { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Empty => SizeHint::with_exact(0),
            RequestBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            RequestBody::Stream(b) => b.size_hint(),
            RequestBody::Prefixed { prefix, rest } => {
                let p = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let r = rest.size_hint();
                let mut h = SizeHint::new();
                h.set_lower(r.lower() + p);
                if let Some(u) = r.upper() {
                    h.set_upper(u + p);
                }
                h
            }
        }
    }
}
