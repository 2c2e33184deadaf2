//! Connections to one backend over `hyper::client::conn`: a keep-alive pool
//! for HTTP/1.1 (`http1`, `https`), one shared multiplexed connection for
//! HTTP/2 (`h2c`, `h2`).
//!
//! Owning the pool (rather than hyper-util's pooled `Client`) keeps one fact
//! visible that retries depend on: whether any byte of a request reached the
//! backend. An HTTP/1.1 connection is checked out, used for exactly one
//! request, and checked back in only once that response's body has ended. An
//! HTTP/2 connection is shared by every request to the backend and made again
//! once it closes.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, Uri, Version};
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2, TrySendError};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::TlsConnector;

use crate::config::UpstreamProtocol;
use crate::tls::ClientConfigs;
use crate::upstream::body::RequestBody;
use crate::upstream::checked::Checked;
use crate::upstream::keepalive::KeepAlive;
use crate::upstream::raw::RawConn;

/// Pool tuning, from the config.
#[derive(Debug, Clone)]
pub struct PoolSettings {
    /// TCP connect plus, for TLS backends, the handshake.
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Idle HTTP/1.1 connections kept at most.
    pub max_idle: usize,
    /// Client configs for `https` and `h2` backends (None: those fail to connect).
    pub tls: Option<ClientConfigs>,
}

/// A connection ready for one request.
pub enum Conn {
    Http1(http1::SendRequest<RequestBody>),
    /// A handle on the backend's shared HTTP/2 connection.
    Http2(http2::SendRequest<RequestBody>),
}

// === impl Conn ===

impl Conn {
    pub fn is_http2(&self) -> bool {
        matches!(self, Conn::Http2(_))
    }

    /// Sends a request. If none of it was sent (the connection had closed),
    /// the error gives the request back.
    pub async fn try_send_request(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, TrySendError<Request<RequestBody>>> {
        match self {
            Conn::Http1(s) => s.try_send_request(req).await,
            Conn::Http2(s) => s.try_send_request(req).await,
        }
    }

    /// Sends a request.
    pub async fn send_request(
        &mut self,
        req: Request<RequestBody>,
    ) -> Result<Response<Incoming>, hyper::Error> {
        match self {
            Conn::Http1(s) => s.send_request(req).await,
            Conn::Http2(s) => s.send_request(req).await,
        }
    }
}

/// Why a new connection could not be made. Nothing of the request was sent.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("connection refused")]
    Refused,
    #[error("connect timed out after {0:?}")]
    Timeout(Duration),
    #[error("connect failed: {0}")]
    Io(io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(String),
    #[error("handshake failed: {0}")]
    Handshake(String),
}

impl ConnectError {
    /// The same error again (for callers that waited on a connect that failed).
    fn duplicate(&self) -> ConnectError {
        match self {
            ConnectError::Refused => ConnectError::Refused,
            ConnectError::Timeout(d) => ConnectError::Timeout(*d),
            ConnectError::Io(e) => ConnectError::Io(io::Error::new(e.kind(), e.to_string())),
            ConnectError::Tls(e) => ConnectError::Tls(e.clone()),
            ConnectError::Handshake(e) => ConnectError::Handshake(e.clone()),
        }
    }
}

struct Idle {
    conn: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// The shared HTTP/2 connection and when a request last took it.
type Shared = Option<(http2::SendRequest<RequestBody>, Instant)>;

/// Connections to one backend.
pub struct Pool {
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    settings: PoolSettings,
    /// The name TLS checks the backend's certificate against (and sends as SNI).
    server_name: ServerName<'static>,
    /// `Host` (HTTP/1.1) or `:authority` (HTTP/2) when the request has none.
    authority: Authority,
    /// Idle HTTP/1.1 connections, most recently used last (checked out LIFO:
    /// the warmest connection is the least likely to have been closed by the backend).
    ///
    /// One list per worker thread (see [`worker`]): a connection's task runs
    /// on the worker that made it, so it is reused only there, and workers
    /// never contend for the lock.
    idle: Box<[Mutex<Vec<Idle>>]>,
    /// Idle connections of the HTTP/1 fast path, per worker like `idle`.
    raw_idle: Box<[Mutex<Vec<RawConn>>]>,
    /// HTTP/2: one connection, shared (held briefly, never across an await).
    shared: Mutex<Shared>,
    /// Taken to make the shared connection, so concurrent requests wait for
    /// one connect rather than each making its own; holds the last failure.
    connecting: tokio::sync::Mutex<Option<(Instant, ConnectError)>>,
    /// How long the backend keeps idle connections, as learned.
    pub keep_alive: KeepAlive,
}

/// A connection checked out for one request, and how long it had been idle
/// in the pool (None: it is new).
pub struct Checkout<C> {
    pub conn: C,
    pub idle: Option<Duration>,
}

// === impl Pool ===

impl Pool {
    /// A pool for the backend at `addr`, configured as `host` (a name or an IP).
    pub fn new(
        addr: SocketAddr,
        host: &str,
        protocol: UpstreamProtocol,
        settings: PoolSettings,
    ) -> Pool {
        let server_name = ServerName::try_from(host.to_owned())
            .unwrap_or_else(|_| ServerName::IpAddress(addr.ip().into()));
        let authority =
            Authority::try_from(addr.to_string()).expect("a socket address is an authority");
        Pool {
            addr,
            protocol,
            settings,
            server_name,
            authority,
            idle: (0..worker::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            raw_idle: (0..worker::count())
                .map(|_| Mutex::new(Vec::new()))
                .collect(),
            shared: Mutex::new(None),
            connecting: tokio::sync::Mutex::new(None),
            keep_alive: KeepAlive::new(),
        }
    }

    /// Idle connections older than this are not reused: the configured
    /// idle timeout, or less if the backend keeps them for less.
    fn reuse_limit(&self) -> Duration {
        self.keep_alive.reuse_limit(self.settings.idle_timeout)
    }

    /// This worker's idle list.
    fn shard(&self) -> &Mutex<Vec<Idle>> {
        &self.idle[worker::current() % self.idle.len()]
    }

    /// True if the fast path can talk to this backend (plain HTTP/1.1).
    pub fn is_raw(&self) -> bool {
        self.protocol == UpstreamProtocol::Http1
    }

    /// For the HTTP/1 fast path: an idle connection that is still open
    /// (`fresh`: never), or a new one.
    pub async fn checkout_raw(&self, fresh: bool) -> Result<Checkout<RawConn>, ConnectError> {
        if !self.is_raw() {
            return Err(ConnectError::Handshake(
                "the fast path speaks plain HTTP/1.1 only".into(),
            ));
        }
        if let Some(reused) = (!fresh).then(|| self.reuse_raw()).flatten() {
            return Ok(reused);
        }
        // Boxed for the same reason as in `checkout`.
        let conn = Box::pin(self.connect_raw()).await?;
        Ok(Checkout { conn, idle: None })
    }

    /// This worker's most recently pooled fast-path connection that is
    /// young enough and still open, if any (those that are not are dropped).
    fn reuse_raw(&self) -> Option<Checkout<RawConn>> {
        let shard = &self.raw_idle[worker::current() % self.raw_idle.len()];
        let limit = self.reuse_limit();
        loop {
            let conn = shard.lock().unwrap_or_else(|e| e.into_inner()).pop()?;
            let idle = conn.since.elapsed();
            if idle > limit {
                continue;
            }
            if conn.is_stale() {
                self.keep_alive.died_idle(idle);
                continue;
            }
            let idle = Some(idle);
            return Some(Checkout { conn, idle });
        }
    }

    /// Returns a fast-path connection whose last response ended exactly at
    /// a message boundary.
    pub fn checkin_raw(&self, mut conn: RawConn) {
        let limit = self.reuse_limit();
        if self.settings.max_idle == 0 || !conn.buf.is_empty() || limit.is_zero() {
            return;
        }
        let now = Instant::now();
        conn.since = now;
        let shard = &self.raw_idle[worker::current() % self.raw_idle.len()];
        let mut idle = shard.lock().unwrap_or_else(|e| e.into_inner());
        self.make_room(&mut idle, (now, limit), |c| c.since);
        idle.push(conn);
    }

    /// Before an idle connection is pushed onto `idle` (oldest first): drops
    /// the oldest ones, those idle longer than `timeout` and those over the cap.
    fn make_room<T>(
        &self,
        idle: &mut Vec<T>,
        (now, timeout): (Instant, Duration),
        since: impl Fn(&T) -> Instant,
    ) {
        let expired = idle
            .iter()
            .take_while(|i| now.saturating_duration_since(since(i)) > timeout)
            .count();
        let over = (idle.len() - expired + 1).saturating_sub(self.settings.max_idle);
        idle.drain(..expired + over);
    }

    async fn connect_raw(&self) -> Result<RawConn, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, self.connect_tcp())
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))?;
        Ok(RawConn::new(stream))
    }

    /// An idle connection that is still open (`fresh`: never), or a new one
    /// (for HTTP/2, the shared connection, whose `idle` is always None).
    pub async fn checkout(&self, fresh: bool) -> Result<Checkout<Conn>, ConnectError> {
        if self.protocol.is_http2() {
            // Boxed: its connect path is large and rare (see below).
            let conn = Box::pin(self.checkout_shared()).await?;
            return Ok(Checkout { conn, idle: None });
        }
        if !fresh {
            if let Some(reused) = self.reuse_http1().await {
                return Ok(reused);
            }
        }
        // Boxed: a connect future (TCP, TLS handshake) is kilobytes and
        // rarely runs. Inline, it made every request's future ~11 KB, which
        // hyper memcpy'd on each request (~11,000 instructions, callgrind);
        // boxed, only new connections pay for an allocation.
        let conn = Box::pin(self.connect()).await?;
        Ok(Checkout { conn, idle: None })
    }

    /// This worker's most recently pooled HTTP/1.1 connection that is young
    /// enough and still open, if any (those that are not are dropped).
    async fn reuse_http1(&self) -> Option<Checkout<Conn>> {
        let limit = self.reuse_limit();
        loop {
            let mut idle = self
                .shard()
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop()?;
            let age = idle.since.elapsed();
            if age > limit {
                continue;
            }
            // Normally ready at once; waits only if the connection task has not
            // yet noticed that the previous response ended. Errors if it closed.
            if !idle.conn.is_closed() && idle.conn.ready().await.is_ok() {
                let conn = Conn::Http1(idle.conn);
                return Some(Checkout {
                    conn,
                    idle: Some(age),
                });
            }
            self.keep_alive.died_idle(age);
        }
    }

    /// The shared HTTP/2 connection if it is open and fresh.
    fn live_shared(&self) -> Option<http2::SendRequest<RequestBody>> {
        let mut shared = self.shared.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((conn, last_used)) = &mut *shared {
            if !conn.is_closed() && last_used.elapsed() <= self.settings.idle_timeout {
                *last_used = Instant::now();
                return Some(conn.clone());
            }
            // Closed, or idle so long the backend may have dropped it.
            // Requests still on it keep it open until they end.
            *shared = None;
        }
        None
    }

    async fn checkout_shared(&self) -> Result<Conn, ConnectError> {
        if let Some(conn) = self.live_shared() {
            return Ok(Conn::Http2(conn));
        }
        let asked = Instant::now();
        let mut failed = self.connecting.lock().await;
        // Made by the request that held the lock while this one waited.
        if let Some(conn) = self.live_shared() {
            return Ok(Conn::Http2(conn));
        }
        // A connect that failed while this request waited fails it too,
        // rather than every waiter trying (and timing out) in turn.
        if let Some((at, e)) = &*failed {
            if *at >= asked {
                return Err(e.duplicate());
            }
        }
        match self.connect().await {
            Ok(Conn::Http2(conn)) => {
                *self.shared.lock().unwrap_or_else(|e| e.into_inner()) =
                    Some((conn.clone(), Instant::now()));
                *failed = None;
                Ok(Conn::Http2(conn))
            }
            Ok(other) => Ok(other),
            Err(e) => {
                *failed = Some((Instant::now(), e.duplicate()));
                Err(e)
            }
        }
    }

    /// Returns a connection whose last response ended cleanly. (HTTP/2
    /// handles need no return: the connection stays shared.)
    pub fn checkin(&self, conn: Conn) {
        let Conn::Http1(conn) = conn else { return };
        let limit = self.reuse_limit();
        if conn.is_closed() || self.settings.max_idle == 0 || limit.is_zero() {
            return;
        }
        let now = Instant::now();
        let mut idle = self.shard().lock().unwrap_or_else(|e| e.into_inner());
        self.make_room(&mut idle, (now, limit), |i| i.since);
        idle.push(Idle { conn, since: now });
    }

    /// Closes every idle connection, and lets go of the shared one (requests
    /// still on it finish).
    pub fn clear(&self) {
        self.keep_alive.forget_deaths();
        for shard in self.idle.iter() {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        for shard in self.raw_idle.iter() {
            shard.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        *self.shared.lock().unwrap_or_else(|e| e.into_inner()) = None;
    }

    /// Idle HTTP/1.1 connections held now.
    pub fn idle_count(&self) -> usize {
        let hyper: usize = self
            .idle
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        let raw: usize = self
            .raw_idle
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum();
        hyper + raw
    }

    /// Rewrites a request for this backend's protocol: HTTP/1.1 gets
    /// origin-form and `Host`; HTTP/2 gets the scheme and `:authority` in
    /// the URI (from `Host`, which is then dropped). Either way round, so a
    /// request given back by one backend can be sent to another.
    pub fn fit_request(&self, req: &mut Request<RequestBody>) {
        if !self.protocol.is_http2() {
            // The common case, as the proxy prepares requests: nothing to do.
            if req.uri().authority().is_none() && req.headers().contains_key(header::HOST) {
                *req.version_mut() = Version::HTTP_11;
                return;
            }
            if !req.headers().contains_key(header::HOST) {
                let a = req.uri().authority().unwrap_or(&self.authority);
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            if req.uri().authority().is_some() {
                let path = req
                    .uri()
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| PathAndQuery::from_static("/"));
                *req.uri_mut() = Uri::from(path);
            }
            *req.version_mut() = Version::HTTP_11;
            return;
        }
        let authority = req
            .uri()
            .authority()
            .cloned()
            .or_else(|| {
                req.headers()
                    .get(header::HOST)
                    .and_then(|h| Authority::try_from(h.as_bytes()).ok())
            })
            .unwrap_or_else(|| self.authority.clone());
        let scheme = if self.protocol.is_tls() {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        };
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if let Ok(uri) = Uri::builder()
            .scheme(scheme)
            .authority(authority)
            .path_and_query(path)
            .build()
        {
            *req.uri_mut() = uri;
        }
        // HTTP/2 has no Host (`:authority` says it) and no connection
        // headers (an HTTP/1.1 Upgrade cannot cross it).
        let h = req.headers_mut();
        h.remove(header::HOST);
        h.remove(header::CONNECTION);
        h.remove(header::UPGRADE);
        *req.version_mut() = Version::HTTP_2;
    }

    /// A new connection, never pooled before (health probes use it too):
    /// TCP, TLS for `https`/`h2`, then the HTTP handshake, all within the
    /// connect timeout.
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let timeout = self.settings.connect_timeout;
        tokio::time::timeout(timeout, self.connect_now())
            .await
            .unwrap_or(Err(ConnectError::Timeout(timeout)))
    }

    /// Whether nothing listens at the backend's address now: a TCP
    /// connect (closed at once) is refused.
    pub async fn refuses(&self) -> bool {
        let timeout = self.settings.connect_timeout;
        let connect = tokio::time::timeout(timeout, self.connect_tcp()).await;
        matches!(connect, Ok(Err(ConnectError::Refused)))
    }

    async fn connect_tcp(&self) -> Result<TcpStream, ConnectError> {
        let stream = match TcpStream::connect(self.addr).await {
            Ok(s) => s,
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ConnectError::Refused)
            }
            Err(e) => return Err(ConnectError::Io(e)),
        };
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    async fn connect_now(&self) -> Result<Conn, ConnectError> {
        let stream = self.connect_tcp().await?;
        match self.protocol {
            UpstreamProtocol::Http1 => http1_handshake(stream).await,
            UpstreamProtocol::H2c => http2_handshake(stream).await,
            UpstreamProtocol::Https => http1_handshake(self.tls(stream, false).await?).await,
            UpstreamProtocol::H2 => http2_handshake(self.tls(stream, true).await?).await,
        }
    }

    async fn tls(
        &self,
        stream: TcpStream,
        h2: bool,
    ) -> Result<tokio_rustls::client::TlsStream<TcpStream>, ConnectError> {
        let Some(configs) = &self.settings.tls else {
            return Err(ConnectError::Tls("no TLS client configuration".into()));
        };
        let config = if h2 { &configs.h2 } else { &configs.http1 };
        TlsConnector::from(config.clone())
            .connect(self.server_name.clone(), stream)
            .await
            .map_err(|e| ConnectError::Tls(crate::tls::explain_io(&e).unwrap_or(e.to_string())))
    }
}

async fn http1_handshake<I>(io: I) -> Result<Conn, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http1::Builder::new()
        .handshake(TokioIo::new(Checked::new(io)))
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "backend connection ended with an error");
        }
    });
    Ok(Conn::Http1(send))
}

/// Pings on the shared HTTP/2 connection: a backend that stops answering
/// (host gone, no RST) has its connection closed within about 15 s, so new
/// requests get a new one.
const H2_PING_INTERVAL: Duration = Duration::from_secs(10);
const H2_PING_TIMEOUT: Duration = Duration::from_secs(5);

async fn http2_handshake<I>(io: I) -> Result<Conn, ConnectError>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .adaptive_window(true)
        .keep_alive_interval(H2_PING_INTERVAL)
        .keep_alive_timeout(H2_PING_TIMEOUT)
        .keep_alive_while_idle(true)
        .handshake(TokioIo::new(io))
        .await
        .map_err(|e| ConnectError::Handshake(e.to_string()))?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "backend HTTP/2 connection ended with an error");
        }
    });
    Ok(Conn::Http2(send))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(protocol: UpstreamProtocol) -> Pool {
        let settings = PoolSettings {
            connect_timeout: Duration::from_secs(1),
            idle_timeout: Duration::from_secs(1),
            max_idle: 1,
            tls: None,
        };
        Pool::new(
            "127.0.0.1:9".parse().unwrap(),
            "127.0.0.1",
            protocol,
            settings,
        )
    }

    #[test]
    fn requests_fit_each_protocol_and_back() {
        let mut req = Request::get("/a?b=1")
            .header(header::HOST, "example.test")
            .header(header::CONNECTION, "upgrade")
            .header(header::UPGRADE, "websocket")
            .body(RequestBody::Empty)
            .unwrap();
        pool(UpstreamProtocol::H2).fit_request(&mut req);
        assert_eq!(req.uri(), "https://example.test/a?b=1");
        assert_eq!(req.version(), Version::HTTP_2);
        assert!(req.headers().is_empty(), "{:?}", req.headers());

        // Given back by an HTTP/2 backend, sent to an HTTP/1.1 one.
        pool(UpstreamProtocol::Http1).fit_request(&mut req);
        assert_eq!(req.uri(), "/a?b=1");
        assert_eq!(req.headers()[header::HOST], "example.test");
        assert_eq!(req.version(), Version::HTTP_11);

        // No Host at all: the backend's address.
        let mut req = Request::get("/").body(RequestBody::Empty).unwrap();
        pool(UpstreamProtocol::H2c).fit_request(&mut req);
        assert_eq!(req.uri(), "http://127.0.0.1:9/");
    }
}

/// Which worker thread runs the current task, for per-worker pools.
///
/// `serve` runs one single-threaded runtime per worker thread (thread per
/// core); each sets its index here when it starts. Other threads (tests, the
/// control runtime) count as worker 0.
pub mod worker {
    use std::cell::Cell;
    use std::sync::atomic::{AtomicUsize, Ordering};

    static COUNT: AtomicUsize = AtomicUsize::new(1);

    thread_local! {
        static CURRENT: Cell<usize> = const { Cell::new(0) };
    }

    /// Declares how many workers there are (before backends are made).
    pub fn set_count(n: usize) {
        COUNT.fetch_max(n.max(1), Ordering::Relaxed);
    }

    pub fn count() -> usize {
        COUNT.load(Ordering::Relaxed)
    }

    /// Marks the calling thread as worker `i`.
    pub fn enter(i: usize) {
        CURRENT.with(|c| c.set(i));
    }

    pub fn current() -> usize {
        CURRENT.with(Cell::get)
    }
}
