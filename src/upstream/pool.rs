//! A small per-backend pool of keep-alive connections over `hyper::client::conn`.
//!
//! Owning the pool (rather than hyper-util's pooled `Client`) keeps one fact
//! visible that retries depend on: whether any byte of a request reached the
//! backend. A connection is checked out, used for exactly one request, and
//! checked back in only once that response's body has ended.

use std::io;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::config::UpstreamProtocol;
use crate::upstream::body::RequestBody;

/// Pool tuning, from the config.
#[derive(Debug, Clone, Copy)]
pub struct PoolSettings {
    pub connect_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
    /// Idle connections kept at most.
    pub max_idle: usize,
}

/// A connection ready for one request.
pub enum Conn {
    Http1(http1::SendRequest<RequestBody>),
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
    #[error("handshake failed: {0}")]
    Handshake(String),
}

struct Idle {
    conn: http1::SendRequest<RequestBody>,
    since: Instant,
}

/// Keep-alive connections to one backend.
pub struct Pool {
    addr: SocketAddr,
    protocol: UpstreamProtocol,
    settings: PoolSettings,
    /// Idle connections, most recently used last (checked out LIFO: the
    /// warmest connection is the least likely to have been closed by the backend).
    idle: Mutex<Vec<Idle>>,
}

impl Pool {
    pub fn new(addr: SocketAddr, protocol: UpstreamProtocol, settings: PoolSettings) -> Pool {
        Pool {
            addr,
            protocol,
            settings,
            idle: Mutex::new(Vec::new()),
        }
    }

    /// An idle connection that is still open, or a new one.
    /// Returns the connection and whether it was reused.
    pub async fn checkout(&self) -> Result<(Conn, bool), ConnectError> {
        loop {
            let popped = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
            let Some(mut idle) = popped else { break };
            if idle.conn.is_closed() || idle.since.elapsed() > self.settings.idle_timeout {
                continue;
            }
            // Normally ready at once; waits only if the connection task has not
            // yet noticed that the previous response ended. Errors if it closed.
            if idle.conn.ready().await.is_ok() {
                return Ok((Conn::Http1(idle.conn), true));
            }
        }
        Ok((self.connect().await?, false))
    }

    /// Returns a connection whose last response ended cleanly.
    pub fn checkin(&self, conn: Conn) {
        let Conn::Http1(conn) = conn;
        if conn.is_closed() || self.settings.max_idle == 0 {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        let timeout = self.settings.idle_timeout;
        // Drop the oldest ones first: expired, or over the cap.
        let expired = idle
            .iter()
            .take_while(|i| i.since.elapsed() > timeout)
            .count();
        let over = (idle.len() - expired + 1).saturating_sub(self.settings.max_idle);
        idle.drain(..expired + over);
        idle.push(Idle {
            conn,
            since: Instant::now(),
        });
    }

    /// Closes every idle connection.
    pub fn clear(&self) {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).clear();
    }

    /// Idle connections held now.
    pub fn idle_count(&self) -> usize {
        self.idle.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A new connection, never pooled before (health probes use it too).
    pub async fn connect(&self) -> Result<Conn, ConnectError> {
        let timeout = self.settings.connect_timeout;
        let stream = match tokio::time::timeout(timeout, TcpStream::connect(self.addr)).await {
            Err(_) => return Err(ConnectError::Timeout(timeout)),
            Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                return Err(ConnectError::Refused)
            }
            Ok(Err(e)) => return Err(ConnectError::Io(e)),
            Ok(Ok(s)) => s,
        };
        let _ = stream.set_nodelay(true);
        match self.protocol {
            UpstreamProtocol::Http1 => {
                let (send, conn) = http1::Builder::new()
                    .handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| ConnectError::Handshake(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.with_upgrades().await {
                        tracing::debug!(error = %e, "backend connection ended with an error");
                    }
                });
                Ok(Conn::Http1(send))
            }
            other => Err(ConnectError::Handshake(format!(
                "protocol {other:?} is not supported yet"
            ))),
        }
    }
}
