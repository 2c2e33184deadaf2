//! The body of a request on its way to a backend: streamed, or held for replay; the stall clock every streamed body runs on; and which side a streamed body's failure belongs to.

use std::error::Error as _;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};

/// An inactivity deadline for a streamed body: armed when the body's
/// sender makes it wait, disarmed when a frame comes. The timer is made
/// (and the clock read) only when a body has to wait.
pub struct Stall {
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl Stall {
    pub fn new(limit: Duration) -> Stall {
        Stall {
            limit,
            sleep: None,
            armed: false,
        }
    }

    /// After the body returned `Pending`: ready once it has waited `limit`
    /// since it last moved.
    pub fn poll_waiting(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = Instant::now() + self.limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.armed {
            sleep.as_mut().reset(deadline);
            self.armed = true;
        }
        sleep.as_mut().poll(cx)
    }

    /// The body moved (a frame, or its end).
    pub fn moved(&mut self) {
        self.armed = false;
    }

    pub fn limit(&self) -> Duration {
        self.limit
    }
}

/// Why a streamed body ended before its end.
#[derive(Debug)]
pub enum BodyError {
    /// Its connection failed.
    Read(hyper::Error),
    /// A plain HTTP/1.1 backend connection (read without hyper) failed,
    /// closed early, or broke the body's framing.
    Backend(std::io::Error),
    /// Its sender sent nothing for this long.
    Stalled(Duration),
    /// It grew past this many bytes (`limits.max_request_body`).
    TooLarge(u64),
}

impl std::fmt::Display for BodyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BodyError::Read(e) => write!(f, "{e}"),
            BodyError::Backend(e) => write!(f, "{e}"),
            BodyError::Stalled(d) => write!(f, "no byte of the body for {d:?}"),
            BodyError::TooLarge(n) => write!(f, "the body is over {n} bytes"),
        }
    }
}

impl std::error::Error for BodyError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            BodyError::Read(e) => Some(e),
            BodyError::Backend(e) => Some(e),
            BodyError::Stalled(_) | BodyError::TooLarge(_) => None,
        }
    }
}

/// How a client's request body failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFault {
    /// Its framing was broken (a bad chunk line, a length that does not hold).
    Malformed,
    /// The client closed or reset its connection (or stream) before the end.
    Gone,
    /// The client sent nothing for this long.
    TimedOut(Duration),
    /// It grew past this many bytes (`limits.max_request_body`).
    TooLarge(u64),
}

impl BodyFault {
    fn of(e: &BodyError) -> BodyFault {
        match e {
            BodyError::Read(e) => fault_of(e),
            BodyError::Backend(_) => BodyFault::Gone,
            BodyError::Stalled(d) => BodyFault::TimedOut(*d),
            BodyError::TooLarge(n) => BodyFault::TooLarge(*n),
        }
    }
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

/// Which client fault a body error from hyper is: broken framing (hyper's
/// decoders report it as invalid data or input, HTTP/2 as a protocol error
/// it found itself), a timeout, or else a client that left.
pub fn fault_of(e: &hyper::Error) -> BodyFault {
    let mut cause = e.source();
    while let Some(c) = cause {
        if let Some(io) = c.downcast_ref::<io::Error>() {
            return match io.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => BodyFault::Malformed,
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

/// Polls `body` for a frame on the clock `stall`: a body that keeps its
/// reader waiting `stall.limit()` fails with [`BodyError::Stalled`].
pub fn poll_timed(
    body: &mut Incoming,
    stall: &mut Stall,
    cx: &mut Context<'_>,
) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
    match Pin::new(body).poll_frame(cx) {
        Poll::Ready(r) => {
            stall.moved();
            Poll::Ready(r.map(|f| f.map_err(BodyError::Read)))
        }
        Poll::Pending => match stall.poll_waiting(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(BodyError::Stalled(stall.limit())))),
            Poll::Pending => Poll::Pending,
        },
    }
}

/// A client's request body, read on the clock (a client that sends no
/// byte of it for the client stall timeout fails it) and counted against
/// `limits.max_request_body`; every failure is noted in its [`BodyWatch`]
/// (a failure here is always the client's: its bytes come from the client).
pub struct ClientBody {
    body: Incoming,
    stall: Stall,
    read: u64,
    /// Most bytes taken (0: no limit).
    limit: u64,
    watch: Arc<BodyWatch>,
}

impl ClientBody {
    pub fn new(body: Incoming, stall: Duration, limit: u64) -> ClientBody {
        ClientBody {
            body,
            stall: Stall::new(stall),
            read: 0,
            limit,
            watch: Arc::default(),
        }
    }

    /// True if the body says up front (its length) that it is over the limit.
    pub fn announced_too_large(&self) -> bool {
        self.limit != 0 && self.body.size_hint().lower() > self.limit
    }

    pub fn watch(&self) -> &Arc<BodyWatch> {
        &self.watch
    }
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = self.get_mut();
        let mut polled = poll_timed(&mut this.body, &mut this.stall, cx);
        if let Poll::Ready(Some(Ok(frame))) = &polled {
            this.read += frame.data_ref().map_or(0, |d| d.len() as u64);
            if this.limit != 0 && this.read > this.limit {
                polled = Poll::Ready(Some(Err(BodyError::TooLarge(this.limit))));
            }
        }
        if let Poll::Ready(Some(Err(e))) = &polled {
            this.watch.note(BodyFault::of(e));
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
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
    type Error = BodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
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
