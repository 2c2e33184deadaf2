//! The admin listener: liveness, readiness and Prometheus metrics, apart
//! from the proxy port.

use std::convert::Infallible;
use std::sync::Arc;

use http::{header, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::proxy::{error_response, Proxy, ResponseBody};
use crate::server::{Phase, Shutdown};

/// What the admin handlers read.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub shutdown: Shutdown,
}

// === impl Admin ===

impl Admin {
    /// Serves admin requests on `listener` until shutdown reaches `Close`.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let mut closing = std::pin::pin!(self.shutdown.reached(Phase::Close));
        loop {
            let (stream, _) = tokio::select! {
                _ = &mut closing => return,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(_) => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }

    /// Routes one admin request.
    pub async fn handle(&self, req: Request<Incoming>) -> Response<ResponseBody> {
        let path = req.uri().path().to_owned();
        match (req.method(), path.as_str()) {
            (&Method::GET, "/healthz") => text(StatusCode::OK, "ok\n"),
            (&Method::GET, "/readyz") => self.readyz(),
            (&Method::GET, "/metrics") => self.metrics(),
            _ => error_response(StatusCode::NOT_FOUND, &format!("no admin endpoint {path}")),
        }
    }

    /// 200 when a backend is in rotation and the process is not draining.
    fn readyz(&self) -> Response<ResponseBody> {
        if self.shutdown.phase() != Phase::Running {
            return text(StatusCode::SERVICE_UNAVAILABLE, "draining\n");
        }
        let healthy = self.proxy.upstreams.load().healthy.len();
        if healthy == 0 {
            return text(StatusCode::SERVICE_UNAVAILABLE, "no backend in rotation\n");
        }
        text(StatusCode::OK, &format!("ready: {healthy} backend(s) in rotation\n"))
    }

    fn metrics(&self) -> Response<ResponseBody> {
        // In-flight gauges are read from the backends at scrape time, so the
        // request path does not update them.
        for b in self.proxy.upstreams.load().all.iter() {
            b.metrics.in_flight.set(i64::from(b.in_flight()));
        }
        let mut r = Response::new(ResponseBody::full(self.proxy.metrics.encode()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}
