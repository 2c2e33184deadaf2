//! Plain HTTP/1.1 backend connections without a client state machine: the fast path writes request heads and reads response heads on them itself.
//!
//! A [`RawConn`] is a TCP stream and the bytes read from it that no message
//! has consumed yet. It is checked out for one request and checked back in
//! (see `Pool::checkin_raw`) only after its response ended exactly at a
//! message boundary, so a reused connection never carries stray bytes.

use std::io;

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http1::HeaderIndices;

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
}
