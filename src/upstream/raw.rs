//! Plain HTTP/1.1 backend connections without a client state machine: the fast path writes request heads and reads response heads on them itself.
//!
//! A [`RawConn`] is a TCP stream and the bytes read from it that no message
//! has consumed yet. It is checked out for one request and checked back in
//! (see `Pool::checkin_raw`) only after its response ended exactly at a
//! message boundary, so a reused connection never carries stray bytes.

use std::io;
use std::ops::Range;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use hyper::body::{Frame, SizeHint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use super::body::{BodyError, Stall};
use crate::http1::{ChunkedScanner, Framing, HeaderIndices};

/// Read buffer size for a backend connection: a typical response head and
/// a small body arrive in one read.
pub const READ_BUF: usize = 8 * 1024;

/// One backend connection used by the HTTP/1 fast path.
pub struct RawConn {
    pub io: TcpStream,
    /// Bytes read but not yet consumed (the start of a response).
    pub buf: BytesMut,
    /// Where the fields of the response head at the start of `buf` are
    /// (kept with the connection so its allocation is reused).
    pub fields: Vec<HeaderIndices>,
    /// When it last went idle (for the pool's idle timeout).
    pub(crate) since: Instant,
}

// === impl RawConn ===

impl RawConn {
    pub(crate) fn new(io: TcpStream) -> RawConn {
        RawConn {
            io,
            buf: BytesMut::new(),
            fields: Vec::new(),
            since: Instant::now(),
        }
    }

    /// True if the backend has closed an idle connection (or sent bytes no
    /// request asked for). Costs no system call while nothing arrived:
    /// tokio answers `WouldBlock` from its own readiness state.
    pub(crate) fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes all of `bytes`. On failure, says whether any byte was written
    /// (a request none of which left is safe to send elsewhere).
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), (io::Error, bool)> {
        let mut written = 0;
        while written < bytes.len() {
            match self.io.write(&bytes[written..]).await {
                Ok(0) => return Err((io::ErrorKind::WriteZero.into(), written > 0)),
                Ok(n) => written += n,
                Err(e) => return Err((e, written > 0)),
            }
        }
        Ok(())
    }

    /// The value of the response head's first field named `name` (any case).
    pub fn field(&self, name: &[u8]) -> Option<&[u8]> {
        self.fields.iter().find_map(|f| {
            let (n, v) = f.field(&self.buf);
            n.eq_ignore_ascii_case(name).then_some(v)
        })
    }

    /// Reads more bytes into the buffer; `Ok(0)` at the end of the stream.
    pub async fn read_more(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(READ_BUF);
        }
        self.io.read_buf(&mut self.buf).await
    }

    /// Reads more bytes into the buffer, with room for `want` more when it
    /// must grow; `Ok(0)` at the end of the stream.
    pub fn poll_read_more(&mut self, cx: &mut Context<'_>, want: usize) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < 1024 {
            self.buf.reserve(want);
        }
        loop {
            ready!(self.io.poll_read_ready(cx))?;
            match self.io.try_read_buf(&mut self.buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

/// A response body read from a [`RawConn`] by its framing, as HTTP/2 DATA:
/// a length counted down, a chunked body decoded (its trailers dropped),
/// or bytes until the backend closes. Once it has ended at a message
/// boundary, [`RawBody::reusable`] gives the connection back for the pool.
pub struct RawBody {
    /// None once handed back (or never reusable and ended).
    conn: Option<RawConn>,
    framing: Framing,
    /// Bytes still due (`Framing::Length`).
    remaining: u64,
    chunks: Option<ChunkedScanner>,
    /// Where the chunk data of the last bytes scanned lay (kept for its
    /// allocation).
    runs: Vec<Range<usize>>,
    /// Data taken from the buffer and not yet returned.
    pending: Option<Bytes>,
    /// The connection can serve another request once the body ends.
    reusable: bool,
    done: bool,
    stall: Stall,
}

/// The most read at once from a backend for a body still due: larger
/// reads mean fewer system calls and DATA frames for a large body.
const BODY_READ: usize = 64 * 1024;

// === impl RawBody ===

impl RawBody {
    /// The body after a response head (already taken from `conn.buf`);
    /// a backend that sends nothing of it for `stall` fails it.
    pub fn new(conn: RawConn, framing: Framing, reusable: bool, stall: Duration) -> RawBody {
        let remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        RawBody {
            conn: Some(conn),
            framing,
            remaining,
            chunks: (framing == Framing::Chunked).then(ChunkedScanner::new),
            runs: Vec::new(),
            pending: None,
            reusable,
            done: false,
            stall: Stall::new(stall),
        }
    }

    /// The whole body, if it has already been read (a small response
    /// arrives with its head); else what was read of it is kept for the
    /// first frame and None returned.
    pub fn take_whole(&mut self) -> Result<Option<Bytes>, BodyError> {
        let data = self.take()?;
        if self.done {
            return Ok(Some(data.unwrap_or_default()));
        }
        self.pending = data;
        Ok(None)
    }

    /// The connection, once the body ended at a message boundary on a
    /// connection that can serve another request.
    pub fn reusable(&mut self) -> Option<RawConn> {
        (self.done && self.reusable)
            .then(|| self.conn.take())
            .flatten()
    }

    pub fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
    }

    /// The exact length left, when the framing says it.
    pub fn size_hint(&self) -> SizeHint {
        let pending = self.pending.as_ref().map_or(0, |b| b.len() as u64);
        match self.framing {
            Framing::Length(_) => SizeHint::with_exact(self.remaining + pending),
            Framing::None => SizeHint::with_exact(0),
            _ => SizeHint::default(),
        }
    }

    /// The next DATA frame, reading the connection as needed.
    pub fn poll_frame(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if let Some(data) = self.pending.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            let want = (self.remaining as usize).clamp(READ_BUF, BODY_READ);
            let Some(conn) = self.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let read = match conn.poll_read_more(cx, want) {
                Poll::Ready(r) => r,
                Poll::Pending => {
                    return match self.stall.poll_waiting(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(BodyError::Stalled(self.stall.limit()))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            };
            self.stall.moved();
            match read {
                Ok(0) if self.framing == Framing::Close => self.done = true,
                Ok(0) => {
                    let e = io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the backend closed the connection before the body ended",
                    );
                    return Poll::Ready(Some(Err(BodyError::Backend(e))));
                }
                Ok(_) => {
                    if let Some(data) = self.take().transpose() {
                        return Poll::Ready(Some(data.map(Frame::data)));
                    }
                }
                Err(e) => return Poll::Ready(Some(Err(BodyError::Backend(e)))),
            }
        }
    }

    /// Takes what belongs to the body of the bytes read: its data, if
    /// they hold any.
    fn take(&mut self) -> Result<Option<Bytes>, BodyError> {
        let Some(conn) = self.conn.as_mut() else {
            return Ok(None);
        };
        let buf = &mut conn.buf;
        let data = match (self.framing, &mut self.chunks) {
            (Framing::Length(_), _) => {
                let n = (buf.len() as u64).min(self.remaining);
                self.remaining -= n;
                self.done = self.remaining == 0;
                (n > 0).then(|| buf.split_to(n as usize).freeze())
            }
            (Framing::Close, _) => (!buf.is_empty()).then(|| buf.split().freeze()),
            (Framing::Chunked, Some(scanner)) => {
                self.runs.clear();
                let runs = &mut self.runs;
                let (consumed, done) = scanner.scan_data(buf, |r| runs.push(r)).map_err(|e| {
                    BodyError::Backend(io::Error::new(io::ErrorKind::InvalidData, e.0))
                })?;
                self.done = done;
                let taken = buf.split_to(consumed).freeze();
                match self.runs.as_slice() {
                    [] => None,
                    [one] => Some(taken.slice(one.clone())),
                    many => {
                        let len = many.iter().map(|r| r.len()).sum();
                        let mut data = BytesMut::with_capacity(len);
                        for r in many {
                            data.extend_from_slice(&taken[r.clone()]);
                        }
                        Some(data.freeze())
                    }
                }
            }
            _ => {
                self.done = true;
                None
            }
        };
        Ok(data)
    }
}
