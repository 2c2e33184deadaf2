//! The request path: scrub headers -> pick a backend -> forward -> retry when
//! safe -> respond.
//!
//! Nothing here routes by client identity: the balancer is handed the
//! backends in rotation and nothing of the request.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{self, HeaderValue};
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Incoming};
use tokio::time::Instant;

use crate::affinity::{Rules as AffinityRules, Tracker as AffinityTracker};
use crate::balancer::{self, Balance};
use crate::config::{Config, Retries, Timeouts};
use crate::health::{self, Health};
use crate::hops::{self, Watch};
use crate::metrics::Metrics;
use crate::shutdown::{Phase, TunnelHold};
use crate::upstream::raw::RawConn;
use crate::upstream::{
    Backend, BodyFault, BodyWatch, Checkout, ClientBody, Conn, ConnectError, InFlight, RequestBody,
    State, Upstreams,
};

pub mod access_log;
mod body;
pub mod error;
pub mod h1;
mod h2;
pub mod headers;
mod hold;
pub mod request_head;
pub mod retry;
pub mod target;

pub use access_log::{AccessLogger, Entry};
pub use body::ResponseBody;
pub use error::{GrpcStatus, Kind, ProxyError, Retry, Source};

use body::Completion;
use headers::{RequestId, RequestIds, X_REQUEST_ID};
use retry::RetryBudget;

pub use crate::health::X_UNSTICK_DRAIN;

/// Who sent a request, as the server saw the connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub addr: SocketAddr,
    /// The connection is TLS.
    pub https: bool,
    /// The client's IP as a header value, made once per connection rather
    /// than formatted for every request's `X-Forwarded-For`.
    pub ip: HeaderValue,
}

impl ClientInfo {
    pub fn new(addr: SocketAddr, https: bool) -> ClientInfo {
        let ip =
            HeaderValue::try_from(addr.ip().to_string()).expect("an IP is a valid header value");
        ClientInfo { addr, https, ip }
    }
}

/// The parts of the configuration the request path reads; swapped whole on reload.
pub struct Settings {
    pub balancer: Box<dyn Balance>,
    pub timeouts: Timeouts,
    pub retries: Retries,
    pub budget: RetryBudget,
    /// Which cookies are affinity cookies, and the policy for them.
    pub affinity: AffinityRules,
    /// The response header naming the backend that answered, if asked for.
    pub backend_header: Option<http::HeaderName>,
    /// Request header fields whose names hold `_` are passed on.
    pub underscores_in_headers: bool,
    /// The largest request body taken (0: no limit).
    pub max_request_body: u64,
    /// `[session_watch]`, applied to the proxy's [`Watch`] when swapped in.
    pub session_watch: crate::config::SessionWatch,
    /// HTTP/2 requests without a body reach plain HTTP/1.1 backends over
    /// the fast path's connections (`http1_fast_path`; see `proxy::h2`).
    pub raw_connections: bool,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        let weighted =
            config.backends.iter().any(|b| b.weight != 1) || !config.health.slow_start.is_zero();
        Settings {
            balancer: balancer::build(config.algorithm, weighted, config.health.slow_start),
            timeouts: config.timeouts.clone(),
            retries: config.retries.clone(),
            budget: RetryBudget::new(
                config.retries.budget_ratio,
                config.retries.budget_min_per_second,
            ),
            affinity: AffinityRules::from_config(&config.affinity),
            backend_header: config
                .backend_header
                .as_deref()
                .and_then(|h| http::HeaderName::from_bytes(h.as_bytes()).ok()),
            underscores_in_headers: config.underscores_in_headers,
            max_request_body: config.limits.max_request_body,
            session_watch: config.session_watch.clone(),
            raw_connections: config.http1_fast_path,
        }
    }
}

/// The proxy: shared by every connection.
pub struct Proxy {
    pub upstreams: Arc<Upstreams>,
    pub metrics: Metrics,
    pub access_log: AccessLogger,
    pub health: Arc<Health>,
    /// Refused affinity cookies (kept across reloads, for `/api/affinity`).
    pub affinity: AffinityTracker,
    /// Session hops between backends (kept across reloads, for `/api/statelessness`).
    pub hops: Watch,
    settings: ArcSwap<Settings>,
    ids: RequestIds,
}

/// A successful attempt: the response head, and what the body must hold.
struct Forwarded {
    response: Response<Incoming>,
    conn: Conn,
    in_flight: InFlight,
    /// What was read of the body while it was held (see `hold`).
    held: Option<hold::Held>,
}

/// What the answer to a client needs from its request.
struct ReplyTo {
    /// Kept or generated; returned in `X-Request-Id`.
    request_id: RequestId,
    /// The client's HTTP version.
    version: Version,
    /// The client speaks gRPC: failures become `grpc-status`.
    grpc: bool,
    /// The client takes trailers (`TE: trailers`, or gRPC): the response's
    /// are passed on (those allowed), others' dropped.
    trailers: bool,
    /// An HTTP/1.0 client asked to keep its connection (`Connection:
    /// keep-alive`): the response says it is kept.
    keep_alive_10: bool,
    /// Known session values the request carried, for the session watch.
    session: Option<Box<hops::Carried>>,
}

/// A request begun: its answer's needs, its log line, and why it is
/// refused, if it is.
struct Begun {
    reply: ReplyTo,
    log: Option<Box<Entry>>,
    refused: Option<ProxyError>,
}

/// A failed attempt on the hyper path.
struct Missed {
    error: ProxyError,
    /// The request, if none of it was sent.
    returned: Option<Request<RequestBody>>,
    /// It failed on a pooled connection the backend had closed, before any
    /// response byte: not counted against the backend.
    stale: bool,
}

impl Missed {
    fn new(error: ProxyError, returned: Option<Request<RequestBody>>) -> Missed {
        Missed {
            error,
            returned,
            stale: false,
        }
    }
}

/// A failed forward: the error, and the backend that failed last.
struct Failed {
    error: ProxyError,
    backend: Option<Arc<Backend>>,
}

/// One request's attempts so far (both request paths).
#[derive(Default)]
struct Attempts {
    /// Backends tried: a retry goes elsewhere.
    tried: Vec<Arc<Backend>>,
    last: Option<Failed>,
    /// Why the previous attempt failed, when another one is wanted.
    retry_reason: Option<&'static str>,
    /// Retries counted against `retries.max_per_request` (those after a
    /// failed connect are not: see [`Attempts::failed`]).
    counted: u32,
    /// Some attempt failed otherwise than by a connect error (a connect
    /// timeout is other: it cost its wait).
    other_failure: bool,
    /// The current attempt's backend was out of rotation when picked (see
    /// [`health::TRY_REFUSED_EVERY`]).
    out_of_rotation: bool,
}

// === impl Attempts ===

impl Attempts {
    /// Records a failed attempt on `backend`; true if another is wanted
    /// (retries on, and the failure safe to retry for this request: see
    /// [`retry::may_retry`]). A retry after a failed connect sent nothing
    /// to anyone, and a refused backend has left rotation: it is not
    /// counted against `max_per_request` (the backends in rotation and the
    /// retry budget bound it), so a request finds a live backend, or
    /// learns that none is left, whatever the number of dead ones.
    fn failed(
        &mut self,
        s: &Settings,
        error: ProxyError,
        backend: Arc<Backend>,
        (replay_allowed, body_replayable): (bool, bool),
    ) -> bool {
        let unreached = matches!(error.kind, Kind::Connect(_));
        self.other_failure |= !unreached;
        let max = s.retries.max_per_request;
        let again = s.retries.enabled
            && max > 0
            && (unreached || self.counted < max)
            && retry::may_retry(&error, replay_allowed, body_replayable);
        if again {
            self.retry_reason = Some(error.reason());
            self.counted += u32::from(!unreached);
        }
        self.tried.push(backend.clone());
        self.last = Some(Failed {
            error,
            backend: Some(backend),
        });
        again
    }

    /// The failure to answer with: the last attempt's; or no backend at
    /// all, when none was in rotation, or when no attempt could connect
    /// and none is left in rotation now (all down: the first request after
    /// a mass crash gets the 503 the next ones get, not a 502).
    fn into_failure(self, upstreams: &Upstreams) -> Failed {
        match self.last {
            Some(last) if self.other_failure || !upstreams.load().healthy.is_empty() => last,
            _ => Failed {
                error: ProxyError::no_backends(),
                backend: None,
            },
        }
    }
}

// === impl Proxy ===

impl Proxy {
    pub fn new(
        upstreams: Arc<Upstreams>,
        settings: Settings,
        metrics: Metrics,
        access_log: AccessLogger,
        health: Arc<Health>,
    ) -> Proxy {
        let affinity = AffinityTracker::new(metrics.affinity_refused.clone());
        affinity.expect(&settings.affinity);
        Proxy {
            upstreams,
            affinity,
            hops: Watch::new(
                &settings.session_watch,
                hops::Families {
                    hops: metrics.session_hops.clone(),
                    same_instance: metrics.session_same_instance.clone(),
                },
            ),
            metrics,
            access_log,
            health,
            settings: ArcSwap::from_pointee(settings),
            ids: RequestIds::new(),
        }
    }

    /// Swaps in new settings (hot reload); requests in flight keep the old ones.
    pub fn set_settings(&self, settings: Settings) {
        self.hops.configure(&settings.session_watch);
        self.affinity.expect(&settings.affinity);
        self.settings.store(Arc::new(settings));
    }

    pub fn settings(&self) -> Arc<Settings> {
        self.settings.load_full()
    }

    /// The largest request body held for replay (the fast path serves no larger).
    pub fn replay_limit(&self) -> usize {
        self.settings.load().retries.replay_buffer
    }

    /// Handles one client request. Never fails: errors become responses.
    ///
    /// The future is kilobytes (the backend's checkout, send and response
    /// wait are inline): the caller boxes it once, where it is made, so
    /// that hyper's per-stream task and the task's cell move a pointer,
    /// not the request's state.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<Incoming>,
        client: ClientInfo,
    ) -> Response<ResponseBody> {
        let start = Instant::now();
        let settings = self.settings.load_full();
        // RFC 9110 7.8: an `Upgrade` on HTTP/1.0 is ignored (and h2c is
        // never an upgrade here: see `headers::is_upgrade`).
        let upgrade = req.version() == Version::HTTP_11 && headers::is_upgrade(req.headers());
        let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
        let hold = req.extensions_mut().remove::<TunnelHold>();
        let (mut parts, body) = req.into_parts();
        if self.takes_raw_path_in_place(&settings, &parts, body.is_end_stream()) {
            let scan = request_head::Scan::of_h2(
                &parts.headers,
                &settings.affinity,
                settings.underscores_in_headers,
            );
            if h2::in_place(&parts, &scan) {
                drop(body);
                let served = self.serve_raw_in_place((parts, scan), &client, &settings, start);
                return served.await;
            }
        }
        let Begun {
            reply,
            log,
            refused,
        } = self.begin(&mut parts, &client, &settings, upgrade);

        let mut done = Completion::new(self.clone(), start, 0);
        done.log = log;
        if let Some(error) = refused {
            let failed = Failed {
                error,
                backend: None,
            };
            return self.fail(failed, done, reply);
        }
        if self.takes_raw_path(&settings, &reply, body.is_end_stream()) {
            drop(body);
            return self.serve_raw(parts, &settings, done, reply).await;
        }
        let result = self.forward(parts, body, &settings, &mut done).await;
        match result {
            Ok(fwd) => {
                let upgrade = client_upgrade.map(|u| (u, hold));
                self.respond(fwd, done, reply, upgrade, &settings)
            }
            Err(failed) => self.fail(failed, done, reply),
        }
    }

    /// The request's side of the work, shared by both request paths: its id,
    /// its access-log line, and, unless its target or `Host` is refused
    /// (see `target`), its head rewritten for the backend (hop-by-hop
    /// fields, affinity cookies and, unless configured, names with `_`
    /// removed; forwarding headers added).
    fn begin(
        &self,
        parts: &mut http::request::Parts,
        client: &ClientInfo,
        settings: &Settings,
        upgrade: bool,
    ) -> Begun {
        let request_id = headers::request_id(&parts.headers, &self.ids);
        let log = self.access_log.enabled().then(|| {
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let path = path.as_bytes();
            self.log_entry(client, &parts.method, parts.version, path, &request_id)
        });
        let mut reply = ReplyTo {
            request_id,
            // The client's version (the backend's is set below).
            version: parts.version,
            grpc: headers::is_grpc(&parts.headers),
            trailers: headers::wants_trailers(&parts.headers) || headers::is_grpc(&parts.headers),
            keep_alive_10: parts.version == Version::HTTP_10
                && headers::has_token(&parts.headers, &header::CONNECTION, "keep-alive"),
            session: None,
        };
        let checked = target::check_codings(&parts.headers).and_then(|()| match parts.version {
            Version::HTTP_2 => target::check_h2(parts),
            _ => target::check_h1(parts),
        });
        if let Err(error) = checked {
            let refused = Some(error);
            return Begun {
                reply,
                log,
                refused,
            };
        }
        if !settings.underscores_in_headers {
            headers::remove_underscored(&mut parts.headers);
        }
        prepare_request(parts, client, &reply.request_id, upgrade);
        settings
            .affinity
            .on_request(&mut parts.headers, &self.affinity);
        headers::join_cookies(&mut parts.headers);
        if let Some(cookie) = parts.headers.get(header::COOKIE) {
            let path = parts.uri.path().as_bytes();
            reply.session = self.hops.on_request(cookie.as_bytes(), &parts.method, path);
        }
        let refused = None;
        Begun {
            reply,
            log,
            refused,
        }
    }

    /// [`Proxy::begin`] for a request head the fast path passes on from
    /// where it lies (`request_head`): its id (`id`: the client's
    /// `X-Request-Id`, if any), its access-log line and its session
    /// values (`cookie`: its `Cookie` field). The head itself is written
    /// for the backend by `request_head::write`.
    fn begin_in_place(
        &self,
        (method, version, target): (&http::Method, Version, &[u8]),
        (id, cookie): (Option<&[u8]>, Option<&[u8]>),
        grpc: bool,
        client: &ClientInfo,
    ) -> (ReplyTo, Option<Box<Entry>>) {
        let request_id = id
            .filter(|v| headers::request_id_kept(v))
            .and_then(|v| HeaderValue::from_bytes(v).ok())
            .map_or_else(|| self.ids.next(), RequestId::Kept);
        let log = self
            .access_log
            .enabled()
            .then(|| self.log_entry(client, method, version, target, &request_id));
        let session = cookie.and_then(|c| self.hops.on_request(c, method, target));
        let reply = ReplyTo {
            request_id,
            version,
            grpc,
            // `TE` sends a request to the map path: only gRPC's here.
            trailers: grpc,
            // HTTP/1.0 is served by hyper.
            keep_alive_10: false,
            session,
        };
        (reply, log)
    }

    /// A request's access-log line, to be completed when it ends.
    fn log_entry(
        &self,
        client: &ClientInfo,
        method: &http::Method,
        version: Version,
        path: &[u8],
        request_id: &RequestId,
    ) -> Box<Entry> {
        Entry::start(client.addr, method, version, path, request_id)
    }

    /// Sends the request, retrying on another backend when that is safe.
    async fn forward(
        &self,
        parts: http::request::Parts,
        body: Incoming,
        s: &Settings,
        done: &mut Completion,
    ) -> Result<Forwarded, Failed> {
        let replay_allowed =
            s.retries.enabled && retry::replay_allowed(&parts.method, &parts.headers);
        let replay = replay_allowed && s.retries.max_per_request > 0;
        let body = request_body(body, s, replay, done)
            .await
            .map_err(|error| Failed {
                error,
                backend: None,
            })?;
        let watch = done.client_body.clone();
        if s.retries.enabled {
            s.budget.record_request();
        }
        // A copy is kept only when a request that was already sent may be
        // sent again; otherwise the request is moved, and comes back from
        // hyper only if none of it was written.
        let keep_copy = replay_allowed && body.try_clone().is_some();
        let mut request = Some(Request::from_parts(parts, body));
        let mut attempts = Attempts::default();
        while request.is_some() {
            let Some(backend) = self.next_backend(s, &mut attempts, done) else {
                break;
            };
            let sending = (&mut request, keep_copy, replay_allowed);
            let tried = self
                .try_backend(&backend, sending, s, watch.as_deref())
                .await;
            // Held only when a failure could still be retried.
            let hold = replay_allowed
                && attempts.counted < s.retries.max_per_request
                && s.retries.response_buffer > 0
                && request.is_some();
            let tried = match tried {
                Ok(fwd) if hold => self.held(fwd, &backend, s).await,
                tried => tried,
            };
            match tried {
                Ok(fwd) => {
                    self.answered_by(&attempts, &backend);
                    return Ok(fwd);
                }
                Err(error) if error.source == Source::Client => {
                    return Err(Failed {
                        error,
                        backend: None,
                    })
                }
                Err(error) => {
                    let error = error.with_backend(&backend.name);
                    let replay = (replay_allowed, request.is_some());
                    if !attempts.failed(s, error, backend, replay) {
                        break;
                    }
                }
            }
        }
        Err(attempts.into_failure(&self.upstreams))
    }

    /// The response of `fwd` held until it is whole, if it is small and
    /// quick (see `hold`); a body the backend cut short meanwhile is its
    /// failure, which the client never sees.
    async fn held(
        &self,
        mut fwd: Forwarded,
        backend: &Arc<Backend>,
        s: &Settings,
    ) -> Result<Forwarded, ProxyError> {
        match hold::hold(&mut fwd.response, &s.retries).await {
            Ok(held) => {
                fwd.held = held;
                Ok(fwd)
            }
            Err(error) => {
                drop(fwd);
                self.upstream_failed(backend, &error, false);
                Err(error)
            }
        }
    }

    /// One attempt on `backend` (the request in `request`, taken, or a
    /// copy of it if `keep_copy`; put back if hyper gives it back unsent).
    /// A pooled connection the backend had closed is not its failure: the
    /// request goes again on a new connection to it, if that is safe (any
    /// request none of which was sent; a replayable one, `replay_allowed`,
    /// otherwise).
    async fn try_backend(
        &self,
        backend: &Arc<Backend>,
        (request, keep_copy, replay_allowed): (&mut Option<Request<RequestBody>>, bool, bool),
        s: &Settings,
        watch: Option<&BodyWatch>,
    ) -> Result<Forwarded, ProxyError> {
        let mut fresh = false;
        loop {
            let to_send = match (keep_copy, request.take()) {
                (true, Some(r)) => {
                    let copy = clone_request(&r);
                    *request = Some(r);
                    copy
                }
                (false, Some(r)) => r,
                (_, None) => {
                    let kind = Kind::Internal("the request was sent already".into());
                    return Err(ProxyError::new(Source::Internal, kind, Retry::Never));
                }
            };
            let missed = match self
                .attempt(backend, to_send, &s.timeouts, watch, fresh)
                .await
            {
                Ok(fwd) => return Ok(fwd),
                Err(missed) => missed,
            };
            if missed.returned.is_some() {
                *request = missed.returned;
            }
            let again = missed.stale
                && !fresh
                && request.is_some()
                && retry::may_retry(&missed.error, replay_allowed, true);
            if !again {
                return Err(missed.error);
            }
            fresh = true;
        }
    }

    /// The backend for the next attempt, one this request has not tried; a
    /// retry is paid for from the budget only once there is a backend to send
    /// it to. None: no attempt is left.
    fn next_backend(
        &self,
        s: &Settings,
        attempts: &mut Attempts,
        done: &mut Completion,
    ) -> Option<Arc<Backend>> {
        let attempt = attempts.tried.len() as u32;
        let backend = self.pick(s, &attempts.tried)?;
        if let Some(reason) = attempts.retry_reason.take() {
            if !self.pay_for_retry(s, reason, &backend, attempts.last.as_ref(), attempt) {
                return None;
            }
        }
        attempts.out_of_rotation = !backend.is_healthy();
        // Recorded before the attempt, so a client that leaves while it runs
        // is counted against this backend.
        done.backend = Some(backend.clone());
        if let Some(log) = &mut done.log {
            log.attempts = attempt + 1;
        }
        Some(backend)
    }

    /// Takes a retry from the budget (false: none left), counts it, and logs
    /// why the previous attempt failed.
    fn pay_for_retry(
        &self,
        s: &Settings,
        reason: &'static str,
        backend: &Backend,
        last: Option<&Failed>,
        attempt: u32,
    ) -> bool {
        if !s.budget.try_withdraw() {
            self.metrics.retry_budget_exhausted.inc();
            return false;
        }
        self.metrics.retries.with_label_values(&[reason]).inc();
        tracing::info!(
            backend = %backend.name,
            cause = %last.map(|f| f.error.to_string()).unwrap_or_default(),
            attempt = attempt + 1,
            "retrying on another backend"
        );
        true
    }

    /// Picks a backend in rotation that has not been tried for this
    /// request; if none is left, one out of rotation after a refused
    /// connect whose try is due (see [`health::TRY_REFUSED_EVERY`]).
    fn pick(&self, s: &Settings, tried: &[Arc<Backend>]) -> Option<Arc<Backend>> {
        let snapshot = self.upstreams.load();
        let untried = |b: &&Arc<Backend>| !tried.iter().any(|t| Arc::ptr_eq(t, b));
        let picked = if tried.is_empty() {
            s.balancer.pick(&snapshot.healthy).cloned()
        } else {
            // Retries only: a small allocation off the common path.
            let others: Vec<Arc<Backend>> =
                snapshot.healthy.iter().filter(untried).cloned().collect();
            s.balancer.pick(&others).cloned()
        };
        picked.or_else(|| {
            let mut out = snapshot.all.iter().filter(untried);
            out.find(|b| b.claim_try(health::TRY_REFUSED_EVERY))
                .cloned()
        })
    }

    /// The backend of the last attempt answered: one tried out of rotation
    /// is back in it.
    fn answered_by(&self, attempts: &Attempts, backend: &Backend) {
        if attempts.out_of_rotation {
            self.health.answered_out_of_rotation(backend);
        }
    }

    /// One attempt on one backend (on a new connection if `fresh`). On
    /// failure, returns the request if none of it was sent. `watch` is the
    /// client's streamed body, if any: a failure it caused is the client's,
    /// not the backend's.
    async fn attempt(
        &self,
        backend: &Arc<Backend>,
        req: Request<RequestBody>,
        timeouts: &Timeouts,
        watch: Option<&BodyWatch>,
        fresh: bool,
    ) -> Result<Forwarded, Missed> {
        let in_flight = backend.start_request();
        let Checkout { mut conn, idle } = match backend.pool.checkout(fresh).await {
            Ok(c) => c,
            Err(e) => {
                let error = self.connect_failed(backend, e);
                return Err(Missed::new(error, Some(req)));
            }
        };
        let mut req = req;
        backend.pool.fit_request(&mut req);
        let sent_at = Instant::now();
        let result =
            tokio::time::timeout(timeouts.response_header, conn.try_send_request(req)).await;
        match result {
            Ok(Ok(response)) => {
                backend
                    .metrics
                    .upstream_duration
                    .observe(sent_at.elapsed().as_secs_f64());
                self.health.on_success(backend);
                Ok(Forwarded {
                    response,
                    conn,
                    in_flight,
                    held: None,
                })
            }
            Ok(Err(mut e)) => match e.take_message() {
                // A pooled connection that closed before we wrote: not the
                // backend's failure, and safe to send anywhere.
                Some(req) => {
                    let kind =
                        Kind::Reset("the connection closed before the request was sent".into());
                    let error = ProxyError::new(Source::Upstream, kind, Retry::Safe);
                    let mut missed = Missed::new(error, Some(req));
                    missed.stale = self.stale_connection(backend, idle);
                    Err(missed)
                }
                None if watch.and_then(BodyWatch::fault).is_none()
                    && closed_unanswered(e.error())
                    && self.stale_connection(backend, idle) =>
                {
                    let kind = Kind::Reset(describe_hyper_error(e.error()));
                    let error = ProxyError::new(Source::Upstream, kind, Retry::IfIdempotent);
                    let mut missed = Missed::new(error, None);
                    missed.stale = true;
                    Err(missed)
                }
                None => Err(Missed::new(
                    self.send_failed(backend, e.error(), watch),
                    None,
                )),
            },
            Err(_elapsed) => {
                let err = ProxyError::new(
                    Source::Upstream,
                    Kind::ResponseTimeout(timeouts.response_header),
                    Retry::Never,
                );
                self.upstream_failed(backend, &err, false);
                Err(Missed::new(err, None))
            }
        }
    }

    /// A request failed on a connection before any response came: if the
    /// connection was pooled (idle for `idle`), the backend had closed it,
    /// which is no failure of the backend's. The pool learns how long the
    /// backend keeps idle connections, the stale connection is counted,
    /// and true is returned.
    fn stale_connection(&self, backend: &Backend, idle: Option<Duration>) -> bool {
        let Some(idle) = idle else {
            return false;
        };
        tracing::debug!(backend = %backend.name, idle_ms = idle.as_millis() as u64, "pooled connection closed by the backend");
        backend.pool.keep_alive.died_idle(idle);
        self.metrics.stale_connections.inc();
        true
    }

    /// A request that was (perhaps partly) sent got no response head: the
    /// client's fault if its body failed (the backend's connection, holding
    /// half a request, is closed by hyper and not blamed), else the
    /// backend's, counted and told to health.
    fn send_failed(
        &self,
        backend: &Arc<Backend>,
        e: &hyper::Error,
        watch: Option<&BodyWatch>,
    ) -> ProxyError {
        if let Some(fault) = watch.and_then(BodyWatch::fault) {
            return body_fault_error(fault);
        }
        let err = ProxyError::new(
            Source::Upstream,
            Kind::Reset(describe_hyper_error(e)),
            Retry::IfIdempotent,
        );
        self.upstream_failed(backend, &err, false);
        err
    }

    /// No connection to `backend` could be made (nothing of the request was
    /// sent, so any request may go elsewhere): the error, counted, and health
    /// told (a refusal ejects at once).
    fn connect_failed(&self, backend: &Arc<Backend>, e: ConnectError) -> ProxyError {
        let (kind, refused) = match e {
            ConnectError::Refused => (Kind::Connect("connection refused".into()), true),
            ConnectError::Timeout(d) => (Kind::ConnectTimeout(d), false),
            other => (Kind::Connect(other.to_string()), false),
        };
        let error = ProxyError::new(Source::Upstream, kind, Retry::Safe);
        self.upstream_failed(backend, &error, refused);
        error
    }

    /// A backend failed one attempt: count it by kind, keep the message for
    /// the admin API, and tell health (which may eject the backend).
    fn upstream_failed(&self, backend: &Arc<Backend>, err: &ProxyError, refused: bool) {
        if let Some(kind) = err.upstream_kind() {
            backend.metrics.error(kind);
        }
        backend.record_error(err.to_string());
        self.health.on_failure(backend, err, refused);
    }

    /// Builds the client's response from the backend's.
    fn respond(
        &self,
        fwd: Forwarded,
        mut done: Completion,
        reply: ReplyTo,
        client_upgrade: Option<(hyper::upgrade::OnUpgrade, Option<TunnelHold>)>,
        settings: &Settings,
    ) -> Response<ResponseBody> {
        let Forwarded {
            mut response,
            conn,
            in_flight,
            held,
        } = fwd;
        let backend = in_flight.backend().clone();
        let switching = response.status() == StatusCode::SWITCHING_PROTOCOLS;
        if switching && client_upgrade.is_none() {
            let kind = Kind::Reset("the backend switched protocols unasked".into());
            return self.reject_response(
                kind,
                (response.into_body(), conn, in_flight),
                done,
                reply,
            );
        }
        let backend_upgrade = switching.then(|| hyper::upgrade::on(&mut response));
        let (mut parts, body) = response.into_parts();
        if let Some(v) = parts.headers.get("keep-alive") {
            backend.pool.keep_alive.announced(v.as_bytes());
        }
        // Both framings: `Transfer-Encoding` framed the body (hyper read it
        // so), the length goes, and so does the connection (RFC 9112 6.3).
        let reusable = !(parts.headers.contains_key(header::TRANSFER_ENCODING)
            && parts.headers.remove(header::CONTENT_LENGTH).is_some());

        if let Err(cookie) = self.scrub_response(&mut parts, &backend, settings, &reply, switching)
        {
            let kind = Kind::AffinityRejected(cookie);
            return self.reject_response(kind, (body, conn, in_flight), done, reply);
        }
        // An HTTP/1.0 client gets its answer in HTTP/1.0 from hyper, which
        // keeps the connection open when the client asked to
        // (`Connection: keep-alive`) only for a response given as HTTP/1.1.
        parts.version = match reply.version {
            Version::HTTP_10 => Version::HTTP_11,
            v => v,
        };
        // Kept only for a body of known length: HTTP/1.0 has no chunks.
        if reply.keep_alive_10 && body.size_hint().exact().is_some() {
            let keep = HeaderValue::from_static("keep-alive");
            parts.headers.insert(header::CONNECTION, keep);
        }

        done.status = parts.status.as_u16();
        if let (Some((client, hold)), Some(upstream)) = (client_upgrade, backend_upgrade) {
            // The connection now belongs to the tunnel, which holds the
            // in-flight count until either side closes.
            done.backend = Some(backend);
            tokio::spawn(tunnel(client, upstream, in_flight, hold));
            return Response::from_parts(parts, ResponseBody::empty().with_completion(done));
        }
        done.in_flight = Some(in_flight);
        done.conn = reusable.then_some(conn);
        let stall = settings.timeouts.upstream_stall;
        let body = match held {
            Some(held) => ResponseBody::held(held, body, stall, done),
            None => ResponseBody::upstream(body, stall, done),
        };
        let body = body.with_trailers(reply.trailers);
        Response::from_parts(parts, body)
    }

    /// The response's side of the work, shared by both request paths: a
    /// backend asking to drain leaves rotation; affinity cookies are refused
    /// (`Err` names one when the policy is `reject`); the session watch
    /// sees the response; hop-by-hop headers go (`Trailer` stays for a
    /// client that takes trailers, naming only those passed on); the
    /// request id (and, if asked for, the backend's name) are added.
    fn scrub_response(
        &self,
        parts: &mut http::response::Parts,
        backend: &Arc<Backend>,
        settings: &Settings,
        reply: &ReplyTo,
        switching: bool,
    ) -> Result<(), String> {
        if asks_to_drain(&parts.headers) && backend.transition(State::Healthy, State::Draining) {
            tracing::info!(backend = %backend.name, "backend asked to drain; out of rotation");
            backend.metrics.ejection("drain");
            self.upstreams.refresh();
            self.health.watch_return(backend);
        }
        let (rules, tracker) = (&settings.affinity, &self.affinity);
        if let Some(cookie) = rules.on_response(&mut parts.headers, &backend.name, tracker) {
            return Err(cookie);
        }
        let status = parts.status.as_u16();
        let session = reply.session.as_deref();
        let is_affinity = |name: &[u8]| rules.matches(name).is_some();
        (self.hops).on_response(session, &backend.name, status, &parts.headers, is_affinity);
        let announced = reply
            .trailers
            .then(|| headers::announced_trailers(&parts.headers));
        headers::remove_hop_by_hop(&mut parts.headers, switching);
        if let Some(names) = announced.filter(|n| !n.is_empty()) {
            let names: Vec<&str> = names.iter().map(http::HeaderName::as_str).collect();
            if let Ok(v) = HeaderValue::from_str(&names.join(", ")) {
                parts.headers.insert(header::TRAILER, v);
            }
        }
        parts.headers.insert(
            X_REQUEST_ID.clone(),
            never_indexed(reply.request_id.to_header()),
        );
        if let Some(name) = &settings.backend_header {
            if let Ok(v) = HeaderValue::from_str(&backend.name) {
                parts.headers.insert(name.clone(), v);
            }
        }
        Ok(())
    }

    /// The session watch's look at a response head passed on in place by
    /// the fast path (it has no `Set-Cookie`: those heads go through
    /// [`Proxy::scrub_response`]): its status, and `Location` if it redirects.
    fn watch_plain(&self, reply: &ReplyTo, backend: &Backend, status: StatusCode, conn: &RawConn) {
        let Some(session) = reply.session.as_deref() else {
            return;
        };
        let location = status
            .is_redirection()
            .then(|| conn.field(b"location"))
            .flatten();
        (self.hops).on_plain_response(session, &backend.name, status.as_u16(), location);
    }

    /// A response the client does not get: the backend set an affinity
    /// cookie under policy `reject`, or answered what was not asked (a
    /// `101`, counted against it). It becomes a 502; the backend's body and
    /// connection are dropped (not pooled: the body was not read) and its
    /// in-flight count released.
    fn reject_response(
        &self,
        kind: Kind,
        upstream: (Incoming, Conn, InFlight),
        done: Completion,
        reply: ReplyTo,
    ) -> Response<ResponseBody> {
        let (body, conn, in_flight) = upstream;
        let backend = in_flight.backend().clone();
        drop((body, conn, in_flight));
        let invalid = matches!(kind, Kind::Reset(_));
        let error =
            ProxyError::new(Source::Upstream, kind, Retry::Never).with_backend(&backend.name);
        if invalid {
            self.upstream_failed(&backend, &error, false);
        }
        let backend = Some(backend);
        self.fail(Failed { error, backend }, done, reply)
    }

    /// Turns a failure into the client's response: status and a one-line
    /// body; for a gRPC client, HTTP 200 with `grpc-status` and
    /// `grpc-message` (metrics and the access log keep the HTTP status the
    /// failure stands for, so failed calls count as failures).
    fn fail(&self, failed: Failed, mut done: Completion, reply: ReplyTo) -> Response<ResponseBody> {
        // Each failed attempt was counted when it failed (`upstream_failed`).
        let Failed { error, backend } = failed;
        tracing::debug!(error = %error, "request failed");
        let status = error.status();
        // A client that left gets nothing: logged as `client_closed`.
        done.status = match error.kind {
            Kind::ClientGone => 0,
            _ => status.as_u16(),
        };
        done.backend = backend;
        done.client_error = error.client_kind();
        let mut response = if reply.grpc {
            grpc_error_response(error.grpc_status(), &error.to_string())
        } else {
            error_response(status, &error.to_string())
        };
        response.headers_mut().insert(
            X_REQUEST_ID.clone(),
            never_indexed(reply.request_id.to_header()),
        );
        // A request refused for what the client sent ends its HTTP/1
        // connection (whose next bytes can no longer be trusted).
        if error.source == Source::Client && reply.version != Version::HTTP_2 {
            let close = HeaderValue::from_static("close");
            response.headers_mut().insert(header::CONNECTION, close);
        }
        let (parts, body) = response.into_parts();
        Response::from_parts(parts, body.with_completion(done))
    }
}

/// A value unique to one response (the request id), marked so HPACK sends
/// it as a literal never indexed. Indexed, each one took a slot in the
/// connection's dynamic table that no later response could use, and
/// evicted the fields other responses share (`server`, `content-type`):
/// h2's encoder took 7,800 instructions per response, 4,700 with the mark
/// (callgrind, h2c at 16 connections x 32 streams). HTTP/1.1 writers
/// ignore it.
fn never_indexed(mut v: HeaderValue) -> HeaderValue {
    v.set_sensitive(true);
    v
}

/// A plain-text error response; 503s carry `Retry-After`.
pub fn error_response(status: StatusCode, message: &str) -> Response<ResponseBody> {
    let mut body = String::with_capacity(message.len() + 1);
    body.push_str(message);
    body.push('\n');
    let mut r = Response::new(ResponseBody::full(body));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if status == StatusCode::SERVICE_UNAVAILABLE {
        h.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    }
    r
}

/// Bytes percent-encoded in `grpc-message`: all but printable ASCII, and `%`.
const GRPC_MESSAGE: &percent_encoding::AsciiSet = &percent_encoding::CONTROLS.add(b'%');

/// A gRPC "trailers-only" error: HTTP 200, no body, the status in the head.
pub fn grpc_error_response(status: GrpcStatus, message: &str) -> Response<ResponseBody> {
    let mut r = Response::new(ResponseBody::empty());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static(status.code()));
    let encoded = percent_encoding::utf8_percent_encode(message, GRPC_MESSAGE).to_string();
    if let Ok(v) = HeaderValue::from_str(&encoded) {
        h.insert("grpc-message", v);
    }
    r
}

/// Rewrites the request head for the backend.
fn prepare_request(
    parts: &mut http::request::Parts,
    client: &ClientInfo,
    request_id: &RequestId,
    upgrade: bool,
) {
    headers::remove_hop_by_hop(&mut parts.headers, upgrade);
    headers::one_content_length(&mut parts.headers);
    // Room for the four headers added below, so the map grows once, not
    // once per insert (hyper sizes it to the headers the client sent).
    parts.headers.reserve(4);
    let authority = parts.uri.authority().cloned();
    headers::set_forwarded(
        &mut parts.headers,
        &client.ip,
        client.https,
        authority.as_ref().map(|a| a.as_str()),
    );
    parts
        .headers
        .insert(X_REQUEST_ID.clone(), request_id.to_header());
    // HTTP/2 clients send the authority in the URI, HTTP/1.1 backends need Host.
    if !parts.headers.contains_key(header::HOST) {
        if let Some(a) = &authority {
            if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
    }
    // Backends get origin-form (path and query) over HTTP/1.1: the path
    // is shared with the client's URI, not copied and parsed again.
    if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
        let pq = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.uri = Uri::from(pq);
    }
    parts.version = Version::HTTP_11;
}

/// A copy of a request whose body can be replayed.
fn clone_request(r: &Request<RequestBody>) -> Request<RequestBody> {
    let mut copy = Request::new(r.body().try_clone().unwrap_or(RequestBody::Empty));
    *copy.method_mut() = r.method().clone();
    *copy.uri_mut() = r.uri().clone();
    *copy.version_mut() = r.version();
    *copy.headers_mut() = r.headers().clone();
    copy
}

/// The request body as it goes to a backend: none, held whole for a replay
/// (`replay`), or streamed; a body announced over `limits.max_request_body`
/// is refused before any backend sees the request. A streamed body's watch
/// goes in `done`, so a response it cuts short is the client's doing.
async fn request_body(
    body: Incoming,
    s: &Settings,
    replay: bool,
    done: &mut Completion,
) -> Result<RequestBody, ProxyError> {
    if body.is_end_stream() {
        return Ok(RequestBody::Empty);
    }
    let body = ClientBody::new(body, s.timeouts.client_stall, s.max_request_body);
    if body.announced_too_large() {
        return Err(ProxyError::client(Kind::BodyTooLarge(s.max_request_body)));
    }
    done.client_body = Some(body.watch().clone());
    if replay {
        buffer_for_replay(body, s.retries.replay_buffer).await
    } else {
        Ok(RequestBody::Stream(body))
    }
}

/// The client's error for a body fault.
fn body_fault_error(fault: BodyFault) -> ProxyError {
    ProxyError::client(match fault {
        BodyFault::Malformed => Kind::BadRequest("the request body is malformed".into()),
        BodyFault::Gone => Kind::ClientGone,
        BodyFault::TimedOut(d) => Kind::ClientTimeout(d),
        BodyFault::TooLarge(limit) => Kind::BodyTooLarge(limit),
    })
}

/// Reads up to `limit` bytes of the body so the request can be replayed.
/// A larger body is streamed on (with the part already read in front) and
/// cannot be replayed.
async fn buffer_for_replay(mut body: ClientBody, limit: usize) -> Result<RequestBody, ProxyError> {
    if body.size_hint().exact().is_some_and(|n| n as usize > limit) || limit == 0 {
        return Ok(RequestBody::Stream(body));
    }
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else {
            let fault = body.watch().fault().unwrap_or(BodyFault::Gone);
            return Err(body_fault_error(fault));
        };
        if let Ok(data) = frame.into_data() {
            buf.extend_from_slice(&data);
            if buf.len() > limit {
                return Ok(RequestBody::Prefixed {
                    prefix: Some(buf.freeze()),
                    rest: body,
                });
            }
        }
        if body.is_end_stream() {
            break;
        }
    }
    Ok(RequestBody::Full(Some(buf.freeze())))
}

fn asks_to_drain(h: &http::HeaderMap) -> bool {
    h.get(&X_UNSTICK_DRAIN)
        .is_some_and(|v| v.as_bytes() == b"1")
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"))
}

/// A send failed because the connection closed (or was reset) before a
/// response came: what a pooled connection the backend closed looks like.
fn closed_unanswered(e: &hyper::Error) -> bool {
    use std::error::Error as _;
    if e.is_incomplete_message() {
        return true;
    }
    let io = e.source().and_then(|c| c.downcast_ref::<std::io::Error>());
    io.is_some_and(|io| {
        matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionReset
                | std::io::ErrorKind::BrokenPipe
                | std::io::ErrorKind::ConnectionAborted
                | std::io::ErrorKind::UnexpectedEof
        )
    })
}

fn describe_hyper_error(e: &hyper::Error) -> String {
    use std::error::Error as _;
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// After the client closes its side of a tunnel, the backend gets this long
/// to finish (e.g. answer a WebSocket close) before the tunnel is closed.
const HALF_CLOSED_GRACE: Duration = Duration::from_secs(10);

/// Copies bytes both ways between an upgraded client and backend connection
/// (a WebSocket, say). The tunnel ends when the backend closes (or fails):
/// the client's socket is then closed at once; when the client closes, the
/// backend sees the end and gets [`HALF_CLOSED_GRACE`] to close too; and at
/// shutdown once it reaches `Close` (after the drain timeout). Both sockets
/// are shut down cleanly. The backend's in-flight count and the server's
/// hold on the client connection last as long as the tunnel.
async fn tunnel(
    client: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    in_flight: InFlight,
    hold: Option<TunnelHold>,
) {
    use tokio::io::AsyncWriteExt;

    let (client, upstream) = match tokio::try_join!(client, upstream) {
        Ok(pair) => pair,
        Err(e) => {
            tracing::debug!(error = %e, "upgrade failed");
            return;
        }
    };
    let (mut client_rx, mut client_tx) = tokio::io::split(hyper_util::rt::TokioIo::new(client));
    let (mut upstream_rx, mut upstream_tx) =
        tokio::io::split(hyper_util::rt::TokioIo::new(upstream));
    let closing = {
        let up = async {
            let r = tokio::io::copy(&mut client_rx, &mut upstream_tx).await;
            let _ = upstream_tx.shutdown().await;
            r
        };
        let down = async {
            let r = tokio::io::copy(&mut upstream_rx, &mut client_tx).await;
            let _ = client_tx.shutdown().await;
            r
        };
        let close = async {
            match &hold {
                Some(h) => h.shutdown.reached(Phase::Close).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(up, down, close);
        let mut up_done = false;
        let grace = tokio::time::sleep(Duration::MAX);
        tokio::pin!(grace);
        loop {
            tokio::select! {
                r = &mut up, if !up_done => {
                    up_done = true;
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "tunnel: client side ended with an error");
                    }
                }
                r = &mut down => {
                    if let Err(e) = r {
                        tracing::debug!(error = %e, "tunnel: backend side ended with an error");
                    }
                    break false;
                }
                _ = &mut close => break true,
                _ = &mut grace => break false,
            }
            grace.as_mut().reset(Instant::now() + HALF_CLOSED_GRACE);
        }
    };
    if closing {
        tracing::debug!(backend = %in_flight.backend().name, "tunnel closed at shutdown");
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = client_tx.shutdown().await;
        let _ = upstream_tx.shutdown().await;
    })
    .await;
    drop(in_flight);
    drop(hold);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_errors_are_trailers_only_with_an_encoded_message() {
        let r = grpc_error_response(GrpcStatus::Unavailable, "100% naïve\n");
        assert_eq!(r.status(), StatusCode::OK);
        assert!(r.body().is_end_stream());
        assert_eq!(r.headers()["content-type"], "application/grpc");
        assert_eq!(r.headers()["grpc-status"], "14");
        assert_eq!(r.headers()["grpc-message"], "100%25 na%C3%AFve%0A");
    }
}
