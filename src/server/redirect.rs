//! The optional cleartext listener that redirects every request to https.

use std::convert::Infallible;
use std::io;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::{Phase, ServerOptions, Shutdown};

/// Serves the cleartext redirect listener until `shutdown` reaches `Drain`:
/// every request gets a 308 to the same host and path over https on
/// `https_port`.
pub async fn serve_redirect(
    listener: TcpListener,
    https_port: u16,
    opts: ServerOptions,
    shutdown: Shutdown,
) -> io::Result<()> {
    let limit = Arc::new(Semaphore::new(opts.max_connections));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(opts.client_header)
        .max_buf_size(opts.max_header_bytes.max(8192))
        .keep_alive(false);
    let builder = Arc::new(builder);
    let mut drain = pin!(shutdown.reached(Phase::Drain));
    loop {
        let permit = tokio::select! {
            _ = &mut drain => return Ok(()),
            p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
        };
        let (stream, _) = tokio::select! {
            _ = &mut drain => return Ok(()),
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed (redirect listener)");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let (builder, shutdown) = (builder.clone(), shutdown.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| async move {
                Ok::<_, Infallible>(redirect_response(&req, https_port))
            });
            let conn = builder.serve_connection(TokioIo::new(stream), service);
            tokio::select! {
                _ = conn => {}
                _ = shutdown.reached(Phase::Close) => {}
            }
            drop(permit);
        });
    }
}

/// A 308 to `https://HOST[:PORT]/path?query`, or a 400 without a usable Host.
fn redirect_response(req: &Request<Incoming>, https_port: u16) -> Response<Full<Bytes>> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .and_then(|h| h.parse::<http::uri::Authority>().ok());
    let Some(host) = host else {
        let mut r = Response::new(Full::new(Bytes::from_static(
            b"bad request: no Host to redirect to\n",
        )));
        *r.status_mut() = StatusCode::BAD_REQUEST;
        return r;
    };
    let port = if https_port == 443 {
        String::new()
    } else {
        format!(":{https_port}")
    };
    let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{}{port}{path}", host.host());
    let mut r = Response::new(Full::new(Bytes::from(format!("{location}\n"))));
    *r.status_mut() = StatusCode::PERMANENT_REDIRECT;
    if let Ok(v) = http::HeaderValue::from_str(&location) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r
}
