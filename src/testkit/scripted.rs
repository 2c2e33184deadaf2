//! A backend that answers each request with raw bytes from a script, for response framings hyper will not write, and records what reached it.
//!
//! [`ScriptedBackend`] accepts TCP on 127.0.0.1, reads HTTP/1.1 requests
//! (bodies by `Content-Length` or chunked) and answers each with the bytes
//! its script gives for the request path: trailers written by hand,
//! close-delimited bodies, interim (1xx) responses, HTTP/1.0, stray bytes
//! after a body, a connection cut mid-body. It counts accepted connections
//! and records every request it read, head and body, as received. It reads
//! requests strictly (unstick's own head parser and framing rules): bytes
//! that do not make one unambiguous request are recorded apart
//! ([`ScriptedBackend::stray`]), so a test can tell that a backend got
//! nothing, or exactly one clear message.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::http1::{self, ChunkedScanner, Framing};

/// Longest request (head and body) the backend reads; a longer one closes
/// the connection.
const MAX_REQUEST: usize = 1 << 20;

/// One scripted answer.
#[derive(Debug, Clone, Default)]
pub struct Scripted {
    /// Written in order, with `pause` between pieces (so the proxy reads
    /// them in separate reads).
    pub pieces: Vec<Vec<u8>>,
    pub pause: Duration,
    /// Close the connection after the answer.
    pub close: bool,
}

impl Scripted {
    /// These bytes, in one write; the connection stays open.
    pub fn bytes(bytes: impl Into<Vec<u8>>) -> Scripted {
        Scripted {
            pieces: vec![bytes.into()],
            ..Default::default()
        }
    }

    /// These pieces, `pause` apart; the connection stays open.
    pub fn pieces(pieces: &[&[u8]], pause: Duration) -> Scripted {
        Scripted {
            pieces: pieces.iter().map(|p| p.to_vec()).collect(),
            pause,
            close: false,
        }
    }

    /// Closes the connection after the answer.
    pub fn then_close(mut self) -> Scripted {
        self.close = true;
        self
    }
}

/// A request as the backend read it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The head, request line to the empty line, as bytes on the wire.
    pub head: String,
    /// The body as it came (chunked framing included).
    pub body: Bytes,
}

impl Received {
    /// The request path (request-target) from the head.
    pub fn path(&self) -> &str {
        self.head.split(' ').nth(1).unwrap_or("")
    }

    /// The first value of header `name` (case-insensitive), if any.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.head.lines().skip(1).find_map(|line| {
            let (n, v) = line.split_once(':')?;
            n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
        })
    }
}

type Script = dyn Fn(&Received) -> Scripted + Send + Sync;

/// A running scripted backend; stops (and drops every connection) when dropped.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    accepts: Arc<AtomicU64>,
    received: Arc<Mutex<Vec<Received>>>,
    stray: Arc<Mutex<Vec<Bytes>>>,
    cut: Arc<Mutex<Vec<Bytes>>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl ScriptedBackend ===

impl ScriptedBackend {
    /// Starts on 127.0.0.1, port 0; `script` picks the answer to each request.
    pub async fn start<F>(script: F) -> ScriptedBackend
    where
        F: Fn(&Received) -> Scripted + Send + Sync + 'static,
    {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("bound");
        let accepts = Arc::new(AtomicU64::new(0));
        let received = Arc::new(Mutex::new(Vec::new()));
        let stray = Arc::new(Mutex::new(Vec::new()));
        let cut = Arc::new(Mutex::new(Vec::new()));
        let script: Arc<Script> = Arc::new(script);
        let record = Record {
            received: received.clone(),
            stray: stray.clone(),
            cut: cut.clone(),
        };
        let (a, r) = (accepts.clone(), record);
        let task = tokio::spawn(async move {
            // Dropped with this task (on abort): every connection ends too.
            let mut conns = JoinSet::new();
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let _ = stream.set_nodelay(true);
                a.fetch_add(1, Ordering::Relaxed);
                conns.spawn(serve(stream, script.clone(), r.clone()));
                // Reap finished connections so the set stays small.
                while conns.try_join_next().is_some() {}
            }
        });
        ScriptedBackend {
            addr,
            accepts,
            received,
            stray,
            cut,
            task,
        }
    }

    /// Connections accepted so far.
    pub fn accepts(&self) -> u64 {
        self.accepts.load(Ordering::Relaxed)
    }

    /// Every request read so far, in order.
    pub fn received(&self) -> Vec<Received> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Bytes that made no request, one entry per connection that had
    /// them: a head that does not parse, or ambiguous framing.
    pub fn stray(&self) -> Vec<Bytes> {
        self.stray.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The start of a request that the connection's end cut short (valid
    /// as far as it went), one entry per connection that had one.
    pub fn cut(&self) -> Vec<Bytes> {
        self.cut.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a connection records what it read.
#[derive(Clone)]
struct Record {
    received: Arc<Mutex<Vec<Received>>>,
    stray: Arc<Mutex<Vec<Bytes>>>,
    cut: Arc<Mutex<Vec<Bytes>>>,
}

/// Why a connection read no request.
enum NoRequest {
    /// It ended (cleanly, or cut short if bytes are left).
    Ended,
    /// Its bytes are not one unambiguous request.
    Invalid,
}

/// Serves one connection: read a request, answer from the script, repeat.
async fn serve(mut stream: TcpStream, script: Arc<Script>, record: Record) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    loop {
        let request = match read_request(&mut stream, &mut buf).await {
            Ok(request) => request,
            Err(why) => {
                let list = match why {
                    NoRequest::Invalid => &record.stray,
                    NoRequest::Ended => &record.cut,
                };
                if !buf.is_empty() {
                    let left = buf.split().freeze();
                    list.lock().unwrap_or_else(|e| e.into_inner()).push(left);
                }
                return;
            }
        };
        let answer = script(&request);
        record
            .received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(request);
        for (i, piece) in answer.pieces.iter().enumerate() {
            if i > 0 && !answer.pause.is_zero() {
                tokio::time::sleep(answer.pause).await;
            }
            if stream.write_all(piece).await.is_err() {
                return;
            }
        }
        if answer.close {
            let _ = stream.shutdown().await;
            return;
        }
    }
}

/// Reads one request, or says why there is none (what was read is left in
/// `buf`).
async fn read_request(stream: &mut TcpStream, buf: &mut BytesMut) -> Result<Received, NoRequest> {
    let mut fields = Vec::new();
    let head = loop {
        match http1::parse_request_head(buf, MAX_REQUEST, &mut fields) {
            Ok(Some(head)) => break head,
            Ok(None) => {}
            Err(_) => return Err(NoRequest::Invalid),
        }
        if !read_some(stream, buf).await {
            return Err(NoRequest::Ended);
        }
    };
    let fields = fields.iter().map(|f| f.field(&buf[..head.len]));
    let framing = http1::request_framing_fields(fields).map_err(|_| NoRequest::Invalid)?;
    let body_len = match framing {
        Framing::None => 0,
        Framing::Length(n) if n as usize <= MAX_REQUEST => n as usize,
        Framing::Chunked => chunked_len(stream, buf, head.len).await?,
        _ => return Err(NoRequest::Invalid),
    };
    while buf.len() < head.len + body_len {
        if !read_some(stream, buf).await {
            return Err(NoRequest::Ended);
        }
    }
    let head_bytes = buf.split_to(head.len);
    Ok(Received {
        head: String::from_utf8_lossy(&head_bytes).into_owned(),
        body: buf.split_to(body_len).freeze(),
    })
}

/// The length of the chunked body after the head (`at`), read whole.
async fn chunked_len(
    stream: &mut TcpStream,
    buf: &mut BytesMut,
    at: usize,
) -> Result<usize, NoRequest> {
    let mut scanner = ChunkedScanner::new();
    let mut seen = 0;
    loop {
        let (n, done) = scanner
            .scan(&buf[at + seen..])
            .map_err(|_| NoRequest::Invalid)?;
        seen += n;
        if done {
            return Ok(seen);
        }
        if !read_some(stream, buf).await {
            return Err(NoRequest::Ended);
        }
    }
}

/// Reads more bytes; false at the end of the stream, on an error, or once
/// the buffer holds more than a request may.
async fn read_some(stream: &mut TcpStream, buf: &mut BytesMut) -> bool {
    if buf.len() > MAX_REQUEST {
        return false;
    }
    buf.reserve(8 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}
