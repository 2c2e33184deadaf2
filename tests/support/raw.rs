//! Raw TCP clients: write exact bytes, parse the answer by hand (framings hyper would refuse), see when the peer closes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long any single read may wait before the test fails.
pub const READ_LIMIT: Duration = Duration::from_secs(5);

/// `GET path HTTP/1.1` with `Host: t`, as bytes to send.
pub fn get(path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n")
}

/// A response as the client read it off the wire.
#[derive(Debug)]
pub struct Response {
    /// `HTTP/1.1` or `HTTP/1.0`.
    pub version: String,
    pub status: u16,
    /// Field lines in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Trailer fields of a chunked body, names lower-cased.
    pub trailers: Vec<(String, String)>,
}

impl Response {
    /// The first field named `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).into_iter().next()
    }

    /// Every field named `name` (any case), in order.
    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
            .collect()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A client connection that writes raw bytes and parses responses itself;
/// every read fails the test after [`READ_LIMIT`].
pub struct Raw {
    pub stream: TcpStream,
    /// Bytes read and not yet parsed.
    pub buf: BytesMut,
}

impl Raw {
    pub async fn open(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// Reads more bytes; false at the end of the stream (or a reset).
    pub async fn fill(&mut self) -> bool {
        self.buf.reserve(16 * 1024);
        let n = tokio::time::timeout(READ_LIMIT, self.stream.read_buf(&mut self.buf))
            .await
            .expect("the peer answers within 5 s")
            .unwrap_or(0);
        n > 0
    }

    /// Reads a CRLF-terminated line (without the CRLF).
    pub async fn line(&mut self) -> String {
        loop {
            if let Some(i) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buf[..i].to_vec()).expect("a UTF-8 line");
                self.buf.advance(i + 2);
                return line;
            }
            assert!(self.fill().await, "closed mid-line: {:?}", self.buf);
        }
    }

    /// Reads exactly `n` bytes.
    pub async fn exact(&mut self, n: usize) -> Vec<u8> {
        while self.buf.len() < n {
            assert!(self.fill().await, "closed mid-body");
        }
        self.buf.split_to(n).to_vec()
    }

    /// Reads one response to a request with `method` (`HEAD` has no body).
    pub async fn response(&mut self, method: &str) -> Response {
        let status_line = self.line().await;
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or_default().to_owned();
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("a status line: {status_line:?}"));
        let headers = self.fields("a header line").await;
        let mut resp = Response {
            version,
            status,
            headers,
            body: Vec::new(),
            trailers: Vec::new(),
        };
        let bodiless = method == "HEAD" || status < 200 || status == 204 || status == 304;
        if !bodiless {
            self.body(&mut resp).await;
        }
        resp
    }

    /// Field lines up to the empty line.
    async fn fields(&mut self, what: &str) -> Vec<(String, String)> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            if line.is_empty() {
                return out;
            }
            let (n, v) = line
                .split_once(':')
                .unwrap_or_else(|| panic!("{what}: {line:?}"));
            out.push((n.trim().to_ascii_lowercase(), v.trim().to_owned()));
        }
    }

    /// The body as the head frames it: chunked, Content-Length or until close.
    async fn body(&mut self, resp: &mut Response) {
        let chunked = resp
            .header("transfer-encoding")
            .is_some_and(|te| te.eq_ignore_ascii_case("chunked"));
        if chunked {
            resp.body = self.chunks().await;
            resp.trailers = self.fields("a trailer line").await;
        } else if let Some(len) = resp.header("content-length") {
            let len: usize = len.parse().expect("a Content-Length");
            resp.body = self.exact(len).await;
        } else {
            resp.body = self.until_closed().await;
        }
    }

    /// Chunk data up to the last chunk (its trailers are left to read).
    async fn chunks(&mut self) -> Vec<u8> {
        let mut body = Vec::new();
        loop {
            let size_line = self.line().await;
            let size = size_line.split(';').next().unwrap_or_default().trim();
            let size = usize::from_str_radix(size, 16).expect("a chunk size");
            if size == 0 {
                return body;
            }
            body.extend_from_slice(&self.exact(size).await);
            assert_eq!(self.line().await, "", "CRLF after chunk data");
        }
    }

    /// Reads until the peer closes; the bytes read meanwhile.
    pub async fn until_closed(&mut self) -> Vec<u8> {
        while self.fill().await {}
        self.buf.split().to_vec()
    }
}

/// Sends `request` on a new connection and reads until the peer closes (at
/// most 10 s); the bytes read.
pub async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
        }
    }
}

/// Sends `request` on a new connection; the status line of the answer
/// (empty if the peer closed without one).
pub async fn status_line(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(request).await.expect("write");
    let mut buf = vec![0u8; 1024];
    let mut got = Vec::new();
    while !got.windows(2).any(|w| w == b"\r\n") {
        let n = tokio::time::timeout(READ_LIMIT, s.read(&mut buf))
            .await
            .expect("an answer")
            .expect("read");
        if n == 0 {
            break;
        }
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap_or("")
        .to_owned()
}

/// Reads (and drops) until the peer closes or `limit` passes; true if it closed.
pub async fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
        }
    }
}

/// Sends `bytes` (maybe none) on a new connection and reads until the peer
/// closes; panics if it has not closed within `limit`. The read's result
/// (an error for a reset) and the bytes read.
pub async fn sent_then_closed(
    addr: SocketAddr,
    bytes: &[u8],
    limit: Duration,
) -> (std::io::Result<usize>, Vec<u8>) {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    let mut got = Vec::new();
    let r = tokio::time::timeout(limit, s.read_to_end(&mut got))
        .await
        .unwrap_or_else(|_| panic!("not closed within {limit:?}: hung"));
    (r, got)
}
