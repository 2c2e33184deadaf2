//! The TLS handshake on the listener: bounded, counted, and a clean answer to plain HTTP.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::metrics::Metrics;

/// Why a connection to the TLS listener got no TLS session.
#[derive(Debug)]
pub(super) enum HandshakeError {
    /// The client closed before sending anything (a port check): not counted.
    Closed,
    /// The first bytes were not a TLS handshake (`http`: they looked like a
    /// plain HTTP request, which got a 400).
    NotTls {
        http: bool,
    },
    Failed(io::Error),
    Timeout(Duration),
    /// The server closed while the handshake ran.
    Shutdown,
}

impl std::fmt::Display for HandshakeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HandshakeError::Closed => f.write_str("closed before the handshake"),
            HandshakeError::NotTls { http: true } => {
                f.write_str("plain HTTP sent to the TLS port (answered 400)")
            }
            HandshakeError::NotTls { http: false } => f.write_str("not a TLS handshake"),
            HandshakeError::Failed(e) => write!(f, "{e}"),
            HandshakeError::Timeout(d) => write!(f, "no complete handshake within {d:?}"),
            HandshakeError::Shutdown => f.write_str("server shutting down"),
        }
    }
}

/// The first byte of a TLS record carrying a handshake message.
const TLS_HANDSHAKE_RECORD: u8 = 0x16;

/// Runs the TLS handshake, bounded by `timeout`. A client that speaks plain
/// HTTP gets a short 400 instead of a TLS alert it could not read.
pub(super) async fn accept_tls(
    stream: TcpStream,
    acceptor: &TlsAcceptor,
    timeout: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let work = async move {
        let mut first = [0u8; 1];
        let n = stream
            .peek(&mut first)
            .await
            .map_err(HandshakeError::Failed)?;
        if n == 0 {
            return Err(HandshakeError::Closed);
        }
        if first[0] != TLS_HANDSHAKE_RECORD {
            let http = first[0].is_ascii_uppercase();
            if http {
                reply_plain_http(stream).await;
            }
            return Err(HandshakeError::NotTls { http });
        }
        acceptor
            .accept(stream)
            .await
            .map_err(HandshakeError::Failed)
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(HandshakeError::Timeout(timeout)))
}

/// Answers a plain HTTP request on the TLS port with a 400 and closes.
async fn reply_plain_http(mut stream: TcpStream) {
    const BODY: &str = "this port speaks HTTPS: use https://\n";
    let reply = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{BODY}",
        BODY.len()
    );
    if stream.write_all(reply.as_bytes()).await.is_err() {
        return;
    }
    let _ = stream.shutdown().await;
    // Read what the client sent (bounded) so closing does not reset the
    // connection before it has read the answer.
    let mut sink = [0u8; 4096];
    let mut left: usize = 64 * 1024;
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while left > 0 {
            match stream.read(&mut sink).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    })
    .await;
}

pub(super) fn handshake_failed(metrics: &Metrics, client: SocketAddr, e: &HandshakeError) {
    match e {
        HandshakeError::Closed | HandshakeError::Shutdown => {
            tracing::debug!(client = %client, error = %e, "no TLS handshake");
        }
        _ => {
            tracing::debug!(client = %client, error = %e, "TLS handshake failed");
            metrics.tls_handshake_failures.inc();
        }
    }
}
