//! The body of a request on its way to a backend: streamed, or held for replay.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};

/// A request body sent upstream.
///
/// `Full` bodies can be cloned for a retry; `Stream` and `Prefixed` bodies are
/// read once, so a request carrying one is replayable only if nothing was sent.
pub enum RequestBody {
    Empty,
    /// A body held in memory (at most the replay buffer), sent as one frame.
    Full(Option<Bytes>),
    /// The client's body, streamed through.
    Stream(Incoming),
    /// A body that outgrew the replay buffer: the part already read, then the rest.
    Prefixed {
        prefix: Option<Bytes>,
        rest: Incoming,
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
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        // Every variant is Unpin (Incoming is), so no projection is needed.
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
