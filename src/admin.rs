//! The admin listener: liveness, readiness, Prometheus metrics and the
//! backend API, apart from the proxy port.
//!
//! Endpoints (see docs/admin-api.md and docs/metrics.md):
//! - `GET /`: the status page (HTML, updating itself from `/api/status`).
//! - `GET /api/status`: what the status page shows, as JSON.
//! - `GET /healthz`: 200 while the process runs.
//! - `GET /readyz`: 200 when a backend is in rotation and the process is not draining, else 503.
//! - `GET /metrics`: Prometheus text exposition.
//! - `GET /api/backends`: every backend as JSON.
//! - `GET /api/affinity`: which backends tried to set affinity cookies.
//! - `GET /api/statelessness`: session hops between backends, kept and broken.
//! - `POST /api/backends/{address}/drain` and `.../undrain`: take a backend out
//!   of rotation for new requests (in-flight ones finish), and back.
//! - `POST /api/reload`: re-read the configuration and apply it (as SIGHUP does).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::proxy::Proxy;
use crate::proxy::ResponseBody;
use crate::reload::{ReloadError, Reloader, Trigger};
use crate::shutdown::{Phase, Shutdown};
use crate::timefmt::Rfc3339;
use crate::upstream::{Backend, State};

mod status;

/// What the admin handlers read.
pub struct Admin {
    pub proxy: Arc<Proxy>,
    pub shutdown: Shutdown,
    /// What `POST /api/reload` calls.
    pub reloader: Arc<Reloader>,
    /// When the process started (the status page's uptime).
    pub started: std::time::SystemTime,
}

/// The status page: static HTML, CSS and script in one file; its data comes
/// from `/api/status` and is set as text, never parsed as HTML.
const STATUS_PAGE: &str = include_str!("admin/status.html");

/// The page loads nothing from elsewhere, and nothing may frame it.
const STATUS_PAGE_CSP: &str = "default-src 'none'; script-src 'unsafe-inline'; \
    style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
    form-action 'none'; frame-ancestors 'none'";

/// The admin API's backend paths start with this.
const BACKENDS: &str = "/api/backends";

/// What `POST /api/backends/{address}/ACTION` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Action {
    Drain,
    Undrain,
}

// === impl Admin ===

impl Admin {
    /// Serves admin requests on `listener` until shutdown reaches `Close`
    /// (so it keeps answering while the proxy drains).
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
        if req.uri().path() == "/api/reload" {
            return self.reload(req.method()).await;
        }
        self.route(req.method(), req.uri().path())
    }

    /// `POST /api/reload`: 200 with what changed, 422 with the error
    /// `unstick check` would print (the running configuration stays), 409
    /// when there is no configuration source.
    async fn reload(&self, method: &Method) -> Response<ResponseBody> {
        if method != Method::POST {
            return json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST", Some("POST"));
        }
        match self.reloader.reload(Trigger::Admin).await {
            Ok(summary) => json_response(StatusCode::OK, &summary),
            Err(ReloadError::Config(e)) => json_response(
                StatusCode::UNPROCESSABLE_ENTITY,
                &json!({
                    "error": e.to_string(),
                    "origin": e.origin.to_string(),
                    "key": e.key,
                    "message": e.message,
                }),
            ),
            Err(e @ ReloadError::NoSource) => {
                json_error(StatusCode::CONFLICT, &e.to_string(), None)
            }
        }
    }

    /// Routes by method and (still percent-encoded) path.
    fn route(&self, method: &Method, path: &str) -> Response<ResponseBody> {
        let get = method == Method::GET || method == Method::HEAD;
        match path {
            "/" | "/healthz" | "/readyz" | "/metrics" if !get => text_error(
                StatusCode::METHOD_NOT_ALLOWED,
                "use GET\n",
                Some("GET, HEAD"),
            ),
            "/" => status_page(),
            "/healthz" => text(StatusCode::OK, "ok\n"),
            "/readyz" => self.readyz(),
            "/metrics" => self.metrics(),
            BACKENDS | "/api/backends/" if !get => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET", Some("GET, HEAD"))
            }
            BACKENDS | "/api/backends/" => self.list_backends(),
            "/api/affinity" if !get => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET", Some("GET, HEAD"))
            }
            "/api/affinity" => self.affinity(),
            "/api/statelessness" if !get => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET", Some("GET, HEAD"))
            }
            "/api/statelessness" => json(StatusCode::OK, &self.proxy.hops.report()),
            "/api/status" if !get => {
                json_error(StatusCode::METHOD_NOT_ALLOWED, "use GET", Some("GET, HEAD"))
            }
            "/api/status" => json(StatusCode::OK, &status::build(self)),
            _ => match parse_action(path) {
                Some((_, _)) if method != Method::POST => {
                    json_error(StatusCode::METHOD_NOT_ALLOWED, "use POST", Some("POST"))
                }
                Some((address, action)) => self.act(&address, action),
                None if path.starts_with("/api/") => json_error(
                    StatusCode::NOT_FOUND,
                    &format!("no admin endpoint {path}"),
                    None,
                ),
                None => text_error(
                    StatusCode::NOT_FOUND,
                    &format!("no admin endpoint {path}\n"),
                    None,
                ),
            },
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
        text(
            StatusCode::OK,
            &format!("ready: {healthy} backend(s) in rotation\n"),
        )
    }

    fn metrics(&self) -> Response<ResponseBody> {
        // In-flight gauges are read from the backends at scrape time, so the
        // request path does not update them.
        for b in self.proxy.upstreams.load().all.iter() {
            b.metrics.in_flight.set(i64::from(b.in_flight()));
        }
        // So are dropped access-log lines (the logger counts them itself).
        let dropped = &self.proxy.metrics.access_log_dropped;
        dropped.inc_by(
            self.proxy
                .access_log
                .dropped()
                .saturating_sub(dropped.get()),
        );
        let tracked = i64::try_from(self.proxy.hops.tracked()).unwrap_or(i64::MAX);
        self.proxy.metrics.sessions_tracked.set(tracked);
        let mut r = Response::new(ResponseBody::full(self.proxy.metrics.encode()));
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        r
    }

    /// Every configured backend, then removed ones still finishing requests.
    fn list_backends(&self) -> Response<ResponseBody> {
        let snapshot = self.proxy.upstreams.load();
        let leaving = self.proxy.upstreams.leaving();
        let list: Vec<BackendView> = snapshot
            .all
            .iter()
            .chain(leaving.iter())
            .map(|b| backend_view(b))
            .collect();
        json_response(StatusCode::OK, &list)
    }

    /// Drains or undrains every backend `address` names; answers with them.
    fn act(&self, address: &str, action: Action) -> Response<ResponseBody> {
        let targets = self.find(address);
        if targets.is_empty() {
            let known = self.proxy.upstreams.names();
            return json_response(
                StatusCode::NOT_FOUND,
                &json!({
                    "error": format!("no backend `{address}`"),
                    "backends": known,
                }),
            );
        }
        let mut changed = false;
        for b in &targets {
            let outcome = match action {
                Action::Drain => drain(b),
                Action::Undrain => undrain(b),
            };
            match outcome {
                Ok(moved) => changed |= moved,
                Err(why) => {
                    if changed {
                        self.proxy.upstreams.refresh();
                    }
                    return json_response(
                        StatusCode::CONFLICT,
                        &json!({ "error": format!("backend {}: {why}", b.name) }),
                    );
                }
            }
        }
        if changed {
            self.proxy.upstreams.refresh();
        }
        let list: Vec<BackendView> = targets.iter().map(|b| backend_view(b)).collect();
        json_response(StatusCode::OK, &list)
    }

    /// The backends an address names: the one whose resolved `IP:PORT` it
    /// is, else every backend configured with that address (a DNS name may
    /// resolve to several).
    fn find(&self, address: &str) -> Vec<Arc<Backend>> {
        let snapshot = self.proxy.upstreams.load();
        let as_addr = address.parse::<SocketAddr>().ok();
        let by_name: Vec<_> = snapshot
            .all
            .iter()
            .filter(|b| &*b.name == address || Some(b.addr) == as_addr)
            .cloned()
            .collect();
        if !by_name.is_empty() {
            return by_name;
        }
        snapshot
            .all
            .iter()
            .filter(|b| b.spec.address == address)
            .cloned()
            .collect()
    }
}

/// Takes `b` out of rotation for new requests. Returns whether its state
/// changed; counts an ejection (`admin`) if it was in rotation.
fn drain(b: &Backend) -> Result<bool, String> {
    loop {
        let state = b.state();
        match state {
            State::AdminDrained => return Ok(false),
            State::Removed => return Err("it was removed from the configuration".into()),
            State::Healthy | State::Ejected | State::Draining => {
                if b.transition(state, State::AdminDrained) {
                    if state == State::Healthy {
                        b.metrics.ejection("admin");
                    }
                    tracing::info!(backend = %b.name, was = state.as_str(), "backend drained by the admin API");
                    return Ok(true);
                }
                // The state changed under us (a health event): look again.
            }
        }
    }
}

/// Puts a drained `b` back in rotation. Only undoes a drain: a backend out
/// for health reasons comes back when it passes its checks.
fn undrain(b: &Backend) -> Result<bool, String> {
    loop {
        let state = b.state();
        match state {
            State::Healthy => return Ok(false),
            State::AdminDrained => {
                if b.transition(State::AdminDrained, State::Healthy) {
                    tracing::info!(backend = %b.name, "backend undrained by the admin API");
                    return Ok(true);
                }
            }
            State::Ejected | State::Draining => {
                return Err(format!(
                    "it is not drained but {} by health checks; it returns when it passes them",
                    state.as_str()
                ))
            }
            State::Removed => return Err("it was removed from the configuration".into()),
        }
    }
}

/// `/api/backends/{address}/{drain|undrain}` -> the decoded address and action.
fn parse_action(path: &str) -> Option<(String, Action)> {
    let rest = path.strip_prefix(BACKENDS)?.strip_prefix('/')?;
    let (address, action) = rest.rsplit_once('/')?;
    let action = match action {
        "drain" => Action::Drain,
        "undrain" => Action::Undrain,
        _ => return None,
    };
    let address = percent_encoding::percent_decode_str(address)
        .decode_utf8()
        .ok()?
        .into_owned();
    (!address.is_empty()).then_some((address, action))
}

/// One backend as the API shows it (fields serialize in this order).
#[derive(serde::Serialize)]
struct BackendView<'a> {
    /// The resolved `IP:PORT`: the `backend` label in metrics.
    address: &'a str,
    /// The address as configured (a DNS name may resolve to several backends).
    configured: &'a str,
    weight: u32,
    healthy: bool,
    state: &'static str,
    in_flight: u32,
    /// Attempts sent, failed ones included.
    requests: u64,
    /// Failed attempts and failed health checks.
    failures: u64,
    last_error: Option<String>,
    /// RFC 3339, when it left rotation; null while in.
    ejected_since: Option<String>,
}

fn backend_view(b: &Backend) -> BackendView<'_> {
    let state = b.state();
    BackendView {
        address: &b.name,
        configured: &b.spec.address,
        weight: b.weight,
        healthy: state == State::Healthy,
        state: state.as_str(),
        in_flight: b.in_flight(),
        requests: b.requests(),
        failures: b.failures(),
        last_error: b.last_error(),
        ejected_since: b.ejected_since().map(|t| Rfc3339(t).to_string()),
    }
}

fn json_response(status: StatusCode, v: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut body = serde_json::to_string_pretty(v).expect("admin answers serialize");
    body.push('\n');
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

fn json_error(
    status: StatusCode,
    message: &str,
    allow: Option<&'static str>,
) -> Response<ResponseBody> {
    let mut r = json_response(status, &json!({ "error": message }));
    if let Some(allow) = allow {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

// === impl Admin: /api/affinity ===

impl Admin {
    /// Which backends tried to set which affinity cookies (and which ones
    /// clients sent): counts, first and last seen (RFC 3339, UTC).
    fn affinity(&self) -> Response<ResponseBody> {
        let policy = self.proxy.settings().affinity.policy();
        let report = self.proxy.affinity.report(policy);
        json(StatusCode::OK, &report)
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ResponseBody> {
    let mut body = serde_json::to_vec_pretty(value).unwrap_or_default();
    body.push(b'\n');
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    r
}

/// `GET /`: the status page.
fn status_page() -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(STATUS_PAGE));
    let headers = r.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(STATUS_PAGE_CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

fn text(status: StatusCode, body: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::full(body.to_owned()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn text_error(
    status: StatusCode,
    body: &str,
    allow: Option<&'static str>,
) -> Response<ResponseBody> {
    let mut r = text(status, body);
    if let Some(allow) = allow {
        r.headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static(allow));
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_paths() {
        assert_eq!(
            parse_action("/api/backends/127.0.0.1:3001/drain"),
            Some(("127.0.0.1:3001".into(), Action::Drain))
        );
        assert_eq!(
            parse_action("/api/backends/127.0.0.1%3A3001/undrain"),
            Some(("127.0.0.1:3001".into(), Action::Undrain))
        );
        assert_eq!(
            parse_action("/api/backends/%5B%3A%3A1%5D%3A80/drain"),
            Some(("[::1]:80".into(), Action::Drain))
        );
        assert_eq!(
            parse_action("/api/backends/app.internal:80/drain"),
            Some(("app.internal:80".into(), Action::Drain))
        );
        assert_eq!(parse_action("/api/backends/127.0.0.1:1/kill"), None);
        assert_eq!(parse_action("/api/backends//drain"), None);
        assert_eq!(parse_action("/api/backends/drain"), None);
        assert_eq!(parse_action("/api/backendsx/1/drain"), None);
        // Not UTF-8 once decoded.
        assert_eq!(parse_action("/api/backends/%ff/drain"), None);
    }
}
