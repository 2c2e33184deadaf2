//! A backend connection whose responses are checked against HTTP/1.1 framing, strictly, as hyper's client reads them.
//!
//! Why: hyper's HTTP/1 client is lenient where a proxy should not be (it
//! takes `Transfer-Encoding: chunked, chunked`, whitespace after a chunk
//! size, control bytes in a chunk extension). Its output is framed again
//! by hyper's server, so nothing ambiguous reaches the client, but the
//! fast path refuses those responses (`http1::ChunkedScanner`,
//! `http1::response_framing_fields`), and both paths must answer a
//! backend alike. Here every byte hyper reads from the backend is checked
//! by the same rules first; a violation is a read error, which hyper turns
//! into a failed response (a 502 before the head, a cut body after it).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{Method, StatusCode};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::http1::{self, ChunkedScanner, Framing, HeaderIndices};

/// The longest response head checked (hyper refuses longer ones too).
const MAX_RESPONSE_HEAD: usize = 64 * 1024;

/// Where the connection is in its exchange.
enum Phase {
    /// No request sent since the last response ended.
    Idle,
    /// A request was sent: its response head is awaited (or a 1xx came).
    Head,
    /// The response body: bytes left, a chunked body, or until close.
    Length(u64),
    Chunked(ChunkedScanner),
    Close,
    /// After a `101`: the bytes are another protocol's.
    Tunnel,
    /// Bytes came after a response ended: the connection takes no more
    /// requests (a later one could be answered by those bytes).
    Spent,
    /// A violation was reported; it is reported again.
    Failed(String),
}

/// An HTTP/1.1 backend connection with its responses checked.
pub struct Checked<I> {
    inner: I,
    phase: Phase,
    /// The method of the request in flight (answers to HEAD have no body).
    method: Method,
    /// The start of a response head that came in pieces.
    partial: Vec<u8>,
    fields: Vec<HeaderIndices>,
}

impl<I> Checked<I> {
    pub fn new(inner: I) -> Checked<I> {
        Checked {
            inner,
            phase: Phase::Idle,
            method: Method::GET,
            partial: Vec::new(),
            fields: Vec::new(),
        }
    }

    /// Notes a request being written: its method, from the first bytes.
    /// Refused on a spent connection.
    fn on_write(&mut self, bytes: &[u8]) -> Result<(), String> {
        if matches!(self.phase, Phase::Spent) {
            return Err("bytes came after the last response".into());
        }
        if !matches!(self.phase, Phase::Idle) || bytes.is_empty() {
            return Ok(());
        }
        let end = bytes.iter().position(|b| *b == b' ').unwrap_or(bytes.len());
        self.method = Method::from_bytes(&bytes[..end]).unwrap_or(Method::GET);
        self.phase = Phase::Head;
        Ok(())
    }

    /// Checks the next bytes from the backend.
    fn on_read(&mut self, mut bytes: &[u8]) -> Result<(), String> {
        while !bytes.is_empty() {
            if matches!(self.phase, Phase::Head) {
                let used = self.head(bytes)?;
                bytes = &bytes[used..];
                continue;
            }
            let used = match &mut self.phase {
                Phase::Failed(why) => return Err(why.clone()),
                // hyper drops what follows a response; no request follows it.
                Phase::Idle | Phase::Spent => {
                    self.phase = Phase::Spent;
                    bytes.len()
                }
                Phase::Head => 0,
                Phase::Length(left) => {
                    let n = (*left).min(bytes.len() as u64);
                    *left -= n;
                    if *left == 0 {
                        self.phase = Phase::Idle;
                    }
                    n as usize
                }
                Phase::Chunked(scanner) => {
                    let (n, done) = scanner.scan(bytes).map_err(|e| e.to_string())?;
                    if done {
                        self.phase = Phase::Idle;
                    }
                    n
                }
                Phase::Close | Phase::Tunnel => bytes.len(),
            };
            bytes = &bytes[used..];
        }
        Ok(())
    }

    /// Reads (the rest of) a response head from `bytes`; how many of them
    /// it took (all, if the head is not complete yet).
    fn head(&mut self, bytes: &[u8]) -> Result<usize, String> {
        let before = self.partial.len();
        let parsed = if before == 0 {
            http1::parse_response_head(bytes, MAX_RESPONSE_HEAD, &mut self.fields)
        } else {
            self.partial.extend_from_slice(bytes);
            http1::parse_response_head(&self.partial, MAX_RESPONSE_HEAD, &mut self.fields)
        };
        let head = match parsed.map_err(|e| e.to_string())? {
            Some(head) => head,
            None => {
                if before == 0 {
                    self.partial.extend_from_slice(bytes);
                }
                return Ok(bytes.len());
            }
        };
        let all = if before == 0 {
            bytes
        } else {
            &self.partial[..]
        };
        self.phase = match head.status {
            StatusCode::SWITCHING_PROTOCOLS => Phase::Tunnel,
            s if s.is_informational() => Phase::Head,
            s => {
                let fields = self.fields.iter().map(|f| f.field(all));
                match http1::response_framing_fields(&self.method, s, fields)
                    .map_err(|e| e.to_string())?
                {
                    Framing::None | Framing::Length(0) => Phase::Idle,
                    Framing::Length(n) => Phase::Length(n),
                    Framing::Chunked => Phase::Chunked(ChunkedScanner::new()),
                    Framing::Close => Phase::Close,
                }
            }
        };
        self.partial.clear();
        Ok(head.len - before)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Checked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Phase::Failed(why) = &this.phase {
            return Poll::Ready(Err(invalid(why)));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = &polled {
            if let Err(why) = this.on_read(&buf.filled()[before..]) {
                let error = invalid(&why);
                this.phase = Phase::Failed(why);
                return Poll::Ready(Err(error));
            }
        }
        polled
    }
}

fn invalid(why: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("invalid response from the backend: {why}"),
    )
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Checked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Err(why) = this.on_write(buf) {
            return Poll::Ready(Err(invalid(&why)));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if let Some(first) = bufs.iter().find(|b| !b.is_empty()) {
            if let Err(why) = this.on_write(first) {
                return Poll::Ready(Err(invalid(&why)));
            }
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(method: &str, response: &[u8], split: usize) -> Result<(), String> {
        let mut c = Checked::new(());
        c.on_write(format!("{method} / HTTP/1.1\r\n\r\n").as_bytes())?;
        c.on_read(&response[..split])?;
        c.on_read(&response[split..])
    }

    #[test]
    fn responses_are_checked_however_they_arrive() {
        let good: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\"b c\"\r\nok\r\n0\r\nX: 1\r\n\r\n",
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x00anything",
        ];
        let bad: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2  \r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;a=\x01\r\nok\r\n0\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
            b"HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok",
        ];
        for response in good {
            for split in 0..=response.len() {
                assert_eq!(
                    check("GET", response, split),
                    Ok(()),
                    "{split} {response:?}"
                );
            }
        }
        for response in bad {
            for split in 0..=response.len() {
                assert!(
                    check("GET", response, split).is_err(),
                    "{split} {response:?}"
                );
            }
        }
        // An answer to HEAD has no body, whatever its length says.
        let head = b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\n";
        assert_eq!(check("HEAD", head, 5), Ok(()));
        // Bytes after a response: no request goes on that connection.
        let mut c = Checked::new(());
        c.on_write(b"HEAD / HTTP/1.1\r\n\r\n").unwrap();
        c.on_read(b"HTTP/1.1 200 OK\r\nContent-Length: 20\r\n\r\nx")
            .unwrap();
        assert!(c.on_write(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
