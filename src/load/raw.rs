//! The HTTP/1.1 fast path for plain `http://` and a fixed request: bytes serialized once, responses parsed with httparse and skipped by their framing, no hyper.
//!
//! It serves workloads that send the same request every time and need no
//! response headers or body ([`Workload::fixed_request`],
//! [`Workload::needs_headers`], [`Workload::wants_body`]), such as
//! `unstick load URL`. Everything else goes through hyper (`client.rs`).
//! Errors get the classes hyper's path gives them: the connection ending
//! before the response did is `reset`, an unparsable response `other`.

use std::io;
use std::mem::MaybeUninit;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{Method, Request, StatusCode, Version};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::client::{Connector, ErrorClass, RequestError};
use super::workload::Workload;
use crate::http1::{self, write_request_head, ChunkedScanner};

/// Most headers a response head may have (hyper's limit too).
const MAX_HEADERS: usize = 100;
/// Longest response head.
const MAX_HEAD: usize = 64 * 1024;
/// Initial read buffer: a typical response arrives in one read.
const READ_BUF: usize = 16 * 1024;
/// A connection idle for longer than this is checked for a close by the
/// server before it is reused (cheaper than a check per request, which costs
/// a system call; a close within this time is a race hyper loses too).
const PROBE_AFTER: Duration = Duration::from_millis(1);

/// A request serialized once, head and body.
pub(crate) struct RawRequest {
    bytes: Box<[u8]>,
    /// A HEAD request: responses have no body whatever they say.
    head: bool,
}

// === impl RawRequest ===

impl RawRequest {
    /// The request to send for `workload` on the fast path, or `None` when
    /// the run needs hyper (TLS, HTTP/2, a workload that changes its
    /// requests or reads response headers or bodies, CONNECT). `prepare`
    /// adds what the run's settings ask for (`Host`, `Connection: close`).
    pub fn for_run<W: Workload>(
        workload: &W,
        connector: &Connector,
        http2: bool,
        prepare: impl FnOnce(&mut Request<Bytes>),
    ) -> Option<RawRequest> {
        if !connector.is_plain_http1() || workload.needs_headers() || workload.wants_body() || http2
        {
            return None;
        }
        let mut req = workload.fixed_request()?;
        if req.method() == Method::CONNECT {
            return None;
        }
        prepare(&mut req);
        Some(RawRequest::new(req))
    }

    /// Serializes `req` (origin-form target, `Host` already set) the way
    /// hyper would: `Content-Length` for a non-empty body, none for an
    /// empty one unless the request had one.
    fn new(req: Request<Bytes>) -> RawRequest {
        let (parts, body) = req.into_parts();
        let body_len = if body.is_empty() && !parts.headers.contains_key(CONTENT_LENGTH) {
            None
        } else {
            Some(body.len() as u64)
        };
        let mut bytes = Vec::with_capacity(256 + body.len());
        write_request_head(&mut bytes, &parts, body_len);
        bytes.extend_from_slice(&body);
        RawRequest {
            bytes: bytes.into_boxed_slice(),
            head: parts.method == Method::HEAD,
        }
    }

    /// Sends the request on `conn` (opened if needed; a kept one the server
    /// closed while idle is replaced without an error) and reads the whole
    /// response. Returns its head and body length. `conn` is left `None`
    /// when the connection cannot carry another request. The caller bounds
    /// it in time.
    pub async fn exchange(
        &self,
        connector: &Connector,
        conn: &mut Option<RawConn>,
        sent: Instant,
        opened: &mut u64,
    ) -> Result<(http::response::Parts, u64), RequestError> {
        if let Some(c) = conn {
            if sent.saturating_duration_since(c.last_sent) > PROBE_AFTER && c.is_stale() {
                *conn = None;
            }
        }
        let c = match conn {
            Some(c) => c,
            None => {
                let io = connector.connect_tcp().await?;
                *opened += 1;
                conn.insert(RawConn::new(io))
            }
        };
        c.last_sent = sent;
        let result = match c.io.write_all(&self.bytes).await {
            Ok(()) => c.read_response(self.head).await,
            Err(e) => Err(RequestError::io(&e)),
        };
        match result {
            Ok((parts, len, true)) => Ok((parts, len)),
            Ok((parts, len, false)) => {
                *conn = None;
                Ok((parts, len))
            }
            Err(e) => {
                *conn = None;
                Err(e)
            }
        }
    }
}

/// One connection of the fast path: the stream and a reused read buffer.
pub(crate) struct RawConn {
    io: TcpStream,
    buf: Vec<u8>,
    /// Bytes `pos..end` of `buf` are read and not yet consumed.
    pos: usize,
    end: usize,
    last_sent: Instant,
}

/// How a response body ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    Length(u64),
    Chunked,
    /// When the server closes the connection.
    Close,
}

/// What the fast path takes from a response head.
#[derive(Debug)]
struct Head {
    /// Bytes of the head.
    len: usize,
    status: StatusCode,
    version: Version,
    framing: Framing,
    /// The connection may carry another request after this response.
    keep_alive: bool,
}

// === impl RawConn ===

impl RawConn {
    pub fn new(io: TcpStream) -> RawConn {
        RawConn {
            io,
            buf: vec![0; READ_BUF],
            pos: 0,
            end: 0,
            last_sent: Instant::now(),
        }
    }

    /// True if the server closed the idle connection (or sent bytes nothing
    /// asked for).
    fn is_stale(&self) -> bool {
        let mut probe = [0u8; 1];
        !matches!(self.io.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Reads more bytes after `end`; `Ok(0)` at the end of the stream.
    async fn fill(&mut self) -> Result<usize, RequestError> {
        if self.pos == self.end {
            self.pos = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            if self.pos > 0 {
                self.buf.copy_within(self.pos..self.end, 0);
                self.end -= self.pos;
                self.pos = 0;
            } else {
                self.buf.resize(self.buf.len() * 2, 0);
            }
        }
        let n = self
            .io
            .read(&mut self.buf[self.end..])
            .await
            .map_err(|e| RequestError::io(&e))?;
        self.end += n;
        Ok(n)
    }

    /// Reads one response (skipping 1xx heads) and its body. Returns the
    /// head, the body length, and whether the connection may be reused.
    async fn read_response(
        &mut self,
        head_request: bool,
    ) -> Result<(http::response::Parts, u64, bool), RequestError> {
        let head = loop {
            match parse_head(&self.buf[self.pos..self.end], head_request)? {
                Some(h) => {
                    self.pos += h.len;
                    if h.status.is_informational() && h.status != StatusCode::SWITCHING_PROTOCOLS {
                        continue;
                    }
                    break h;
                }
                None if self.end - self.pos >= MAX_HEAD => {
                    return Err(RequestError::new(
                        ErrorClass::Other,
                        "the response head is too large",
                    ))
                }
                None => {
                    if self.fill().await? == 0 {
                        return Err(incomplete());
                    }
                }
            }
        };
        let len = match head.framing {
            Framing::Length(n) => {
                let mut left = n;
                loop {
                    let take = left.min((self.end - self.pos) as u64);
                    self.pos += take as usize;
                    left -= take;
                    if left == 0 {
                        break n;
                    }
                    if self.fill().await? == 0 {
                        return Err(incomplete());
                    }
                }
            }
            Framing::Chunked => {
                let mut scanner = ChunkedScanner::new();
                loop {
                    let (used, done) = scanner
                        .scan(&self.buf[self.pos..self.end])
                        .map_err(|e| RequestError::new(ErrorClass::Other, e.to_string()))?;
                    self.pos += used;
                    if done {
                        break scanner.data_len();
                    }
                    if self.fill().await? == 0 {
                        return Err(incomplete());
                    }
                }
            }
            Framing::Close => {
                let mut len = 0u64;
                loop {
                    len += (self.end - self.pos) as u64;
                    self.pos = self.end;
                    if self.fill().await? == 0 {
                        break len;
                    }
                }
            }
        };
        // Bytes after the response that no request asked for: the
        // connection is out of step, so it is not reused.
        let reuse = head.keep_alive
            && head.framing != Framing::Close
            && head.status != StatusCode::SWITCHING_PROTOCOLS
            && self.pos == self.end;
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = head.status;
        parts.version = head.version;
        Ok((parts, len, reuse))
    }
}

fn incomplete() -> RequestError {
    RequestError::new(
        ErrorClass::Reset,
        "the connection closed before the response was complete",
    )
}

fn malformed(what: &str) -> RequestError {
    RequestError::new(ErrorClass::Other, format!("invalid response: {what}"))
}

/// Parses the response head at the start of `buf`: `Ok(None)` if it is not
/// complete yet. Only status, version and the framing headers are looked at.
fn parse_head(buf: &[u8], head_request: bool) -> Result<Option<Head>, RequestError> {
    let mut headers = [const { MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let len = match httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        buf,
        &mut headers,
    ) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(malformed("too many headers")),
        Err(e) => return Err(malformed(&e.to_string())),
    };
    let status = res
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or_else(|| malformed("status"))?;
    let version = match res.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(malformed("version")),
    };
    // The framing rules are the proxy's (`http1`); only the load client's
    // requests are never CONNECT, so HEAD or not is all the method says here.
    let method = if head_request {
        &Method::HEAD
    } else {
        &Method::GET
    };
    let fields = res.headers.iter().map(|h| (h.name.as_bytes(), h.value));
    let framing = match http1::response_framing_fields(method, status, fields.clone()) {
        Ok(http1::Framing::None) => Framing::Length(0),
        Ok(http1::Framing::Length(n)) => Framing::Length(n),
        Ok(http1::Framing::Chunked) => Framing::Chunked,
        Ok(http1::Framing::Close) => Framing::Close,
        // A coding the proxy would refuse: a client reads the body by the
        // last one (RFC 9112 6.3), and the load generator only counts it.
        Err(http1::HeadError::UnknownCoding) => {
            let te = fields.filter(|(n, _)| n.eq_ignore_ascii_case(b"transfer-encoding"));
            let last = te.flat_map(|(_, v)| elements(v)).last();
            match last {
                Some(c) if c.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
                _ => Framing::Close,
            }
        }
        Err(e) => return Err(malformed(&e.to_string())),
    };
    let (mut close, mut keep_alive) = (false, false);
    for h in res.headers.iter() {
        if h.name.eq_ignore_ascii_case("connection") {
            for v in elements(h.value) {
                close |= v.eq_ignore_ascii_case(b"close");
                keep_alive |= v.eq_ignore_ascii_case(b"keep-alive");
            }
        }
    }
    let keep_alive = !close && (version == Version::HTTP_11 || keep_alive);
    Ok(Some(Head {
        len,
        status,
        version,
        framing,
        keep_alive,
    }))
}

/// The non-empty, trimmed elements of a comma-separated header value.
fn elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|e| e.trim_ascii())
        .filter(|e| !e.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(bytes: &[u8]) -> Head {
        parse_head(bytes, false).unwrap().unwrap()
    }

    #[test]
    fn framing_from_the_headers() {
        let h = head(b"HTTP/1.1 200 OK\r\nContent-Length: 12\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(12), true));
        let h = head(b"HTTP/1.1 200 OK\r\ncontent-length: 5, 5\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(5));
        let h = head(
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, Chunked\r\nContent-Length: 3\r\n\r\n",
        );
        assert_eq!(h.framing, Framing::Chunked);
        let h = head(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n");
        assert_eq!(h.framing, Framing::Close);
        let h = head(b"HTTP/1.1 200 OK\r\nConnection: keep-alive, close\r\n\r\n");
        assert_eq!((h.framing, h.keep_alive), (Framing::Close, false));
        let h = head(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!((h.version, h.keep_alive), (Version::HTTP_10, false));
        let h = head(b"HTTP/1.0 200 OK\r\nConnection: Keep-Alive\r\nContent-Length: 0\r\n\r\n");
        assert!(h.keep_alive);
        let h = head(b"HTTP/1.1 204 No Content\r\nContent-Length: 10\r\n\r\n");
        assert_eq!(h.framing, Framing::Length(0));
        let h = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Length(0));
    }

    #[test]
    fn partial_and_bad_heads() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le", false)
            .unwrap()
            .is_none());
        for bad in [
            &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 2x0 OK\r\n\r\n",
            b"HTTP/2.0 200 OK\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let e = parse_head(bad, false).map(|_| ()).unwrap_err();
            assert_eq!(
                e.class,
                ErrorClass::Other,
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn request_bytes() {
        let req = Request::post("/p?q=1")
            .header("host", "h:1")
            .header("x-a", "b")
            .body(Bytes::from_static(b"hello"))
            .unwrap();
        let r = RawRequest::new(req);
        assert_eq!(
            &*r.bytes,
            &b"POST /p?q=1 HTTP/1.1\r\nhost: h:1\r\nx-a: b\r\ncontent-length: 5\r\n\r\nhello"[..]
        );
        let req = Request::head("/").body(Bytes::new()).unwrap();
        let r = RawRequest::new(req);
        assert_eq!(&*r.bytes, &b"HEAD / HTTP/1.1\r\n\r\n"[..]);
        assert!(r.head);
    }
}
