//! A raw HTTP/1 client for tests that send bytes no well-behaved client would, and read the answer strictly (unstick's own parser and framing rules), never panicking on what comes back.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http::{Method, StatusCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use unstick::http1::{self, ChunkedScanner, Framing};

/// How long a read may wait for the proxy.
pub const READ_LIMIT: Duration = Duration::from_secs(10);

/// A response as the client read it off the wire.
#[derive(Debug, Clone, Default)]
pub struct Reply {
    pub status: u16,
    /// Field names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body, names lower-cased.
    pub trailers: Vec<(String, String)>,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What the client got for what it sent.
#[derive(Debug, Clone, Default)]
pub struct Got {
    /// The responses, in order (a well-framed prefix of what was read).
    pub replies: Vec<Reply>,
    /// The proxy closed the connection.
    pub closed: bool,
    /// Bytes after the last complete response (a response cut short, or
    /// bytes that are none).
    pub rest: Vec<u8>,
}

/// A client connection that writes raw bytes.
pub struct Wire {
    s: TcpStream,
    buf: BytesMut,
    closed: bool,
}

impl Wire {
    pub async fn open(addr: SocketAddr) -> Wire {
        let s = TcpStream::connect(addr).await.expect("connects");
        s.set_nodelay(true).expect("nodelay");
        Wire {
            s,
            buf: BytesMut::new(),
            closed: false,
        }
    }

    /// Sends bytes; the proxy may have closed already (not an error here).
    pub async fn send(&mut self, bytes: &[u8]) {
        let _ = self.s.write_all(bytes).await;
    }

    /// Reads more; false at the end (or a reset), or after `wait` without bytes.
    async fn fill(&mut self, wait: Duration) -> bool {
        if self.closed {
            return false;
        }
        self.buf.reserve(16 * 1024);
        match tokio::time::timeout(wait, self.s.read_buf(&mut self.buf)).await {
            Ok(Ok(n)) if n > 0 => true,
            Ok(_) => {
                self.closed = true;
                false
            }
            Err(_) => false,
        }
    }

    /// Reads `count` responses to requests with `method` (or fewer, if the
    /// proxy closes first), then, if the last said `connection: close` or
    /// no response came, until the proxy closes.
    pub async fn read(&mut self, method: &Method, count: usize) -> Got {
        let mut got = Got::default();
        while got.replies.len() < count {
            match self.reply(method).await {
                Some(r) => got.replies.push(r),
                None => break,
            }
        }
        let closing = got.replies.last().is_none_or(|r| {
            r.header("connection")
                .is_some_and(|c| c.eq_ignore_ascii_case("close"))
        });
        if closing {
            while self.fill(READ_LIMIT).await {}
        }
        got.closed = self.closed;
        got.rest = self.buf.split().to_vec();
        got
    }

    /// Reads one response; None if the proxy closed (or went silent)
    /// before a complete one.
    async fn reply(&mut self, method: &Method) -> Option<Reply> {
        let mut fields = Vec::new();
        let head = loop {
            match http1::parse_response_head(&self.buf, 1 << 20, &mut fields) {
                Ok(Some(head)) => break head,
                Ok(None) if self.fill(READ_LIMIT).await => {}
                _ => return None,
            }
        };
        let pairs = fields.iter().map(|f| f.field(&self.buf[..head.len]));
        let framing = http1::response_framing_fields(method, head.status, pairs.clone()).ok()?;
        let mut reply = Reply {
            status: head.status.as_u16(),
            headers: pairs
                .map(|(n, v)| (lower(n), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            ..Reply::default()
        };
        self.buf.advance(head.len);
        if head.status == StatusCode::CONTINUE || head.status.is_informational() {
            return Some(reply);
        }
        self.body(framing, &mut reply).await.then_some(reply)
    }

    /// Reads a response body by its framing; false if it was cut short.
    async fn body(&mut self, framing: Framing, reply: &mut Reply) -> bool {
        match framing {
            Framing::None => true,
            Framing::Length(n) => {
                while (self.buf.len() as u64) < n {
                    if !self.fill(READ_LIMIT).await {
                        return false;
                    }
                }
                reply.body = self.buf.split_to(n as usize).to_vec();
                true
            }
            Framing::Close => {
                while self.fill(READ_LIMIT).await {}
                reply.body = self.buf.split().to_vec();
                self.closed
            }
            Framing::Chunked => self.chunked(reply).await,
        }
    }

    async fn chunked(&mut self, reply: &mut Reply) -> bool {
        let mut scanner = ChunkedScanner::keeping_trailers();
        loop {
            let buf = &self.buf;
            let mut data = Vec::new();
            let Ok((n, done)) = scanner.scan_data(buf, |r| data.extend_from_slice(&buf[r])) else {
                return false;
            };
            reply.body.extend_from_slice(&data);
            self.buf.advance(n);
            if done {
                let section = scanner.trailer_section().unwrap_or_default();
                let Ok(fields) = http1::trailer_fields(section) else {
                    return false;
                };
                reply.trailers = fields
                    .into_iter()
                    .map(|(n, v)| (lower(n), String::from_utf8_lossy(v).into_owned()))
                    .collect();
                return true;
            }
            if !self.fill(READ_LIMIT).await {
                return false;
            }
        }
    }
}

fn lower(name: &[u8]) -> String {
    String::from_utf8_lossy(name).to_ascii_lowercase()
}

/// Sends `request` on a new connection and reads up to `count` responses.
pub async fn exchange(addr: SocketAddr, request: &[u8], method: &Method, count: usize) -> Got {
    let mut wire = Wire::open(addr).await;
    wire.send(request).await;
    wire.read(method, count).await
}
