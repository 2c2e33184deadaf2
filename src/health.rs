//! Health: passive ejection from request failures, active HTTP checks, and
//! backoff probes that bring ejected backends back when active checks are off.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::{header, Request, StatusCode};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::config;
use crate::upstream::{Backend, RequestBody, State, Upstreams};

/// The header a backend sends (with `Connection: close`, or on a 503 health
/// answer) to leave rotation while its requests in flight finish.
pub static X_UNSTICK_DRAIN: http::HeaderName = http::HeaderName::from_static("x-unstick-drain");

/// The longest wait between backoff probes.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// The first probe of a backend ejected for a refused connect (later ones
/// double from there): nothing listened, as while a process restarts, and a
/// refused probe costs next to nothing, so it is tried again soon.
pub const REFUSED_FIRST_PROBE: Duration = Duration::from_millis(100);

/// How often a request may try a backend ejected for a refused connect,
/// when no backend in rotation is left for it (none is in rotation, or
/// each failed this request): a request the balancer could only answer
/// with a 502 or 503 goes to one that may be listening again. The other
/// requests meanwhile get their 502 or 503 at once, without a connect.
pub const TRY_REFUSED_EVERY: Duration = Duration::from_millis(25);

/// How often a backend out of rotation is probed while none is in
/// rotation: one listening again serves within this (plus its answer).
pub const ALL_DOWN_PROBE: Duration = Duration::from_millis(250);

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Answered with an expected status.
    Up,
    /// Answered 503, or asked to drain: out of rotation until it recovers.
    Draining,
    /// Refused, timed out, reset, or answered with an unexpected status.
    Down(String),
}

/// Health state keeper, shared by the proxy and the checker tasks.
pub struct Health {
    upstreams: Arc<Upstreams>,
    config: ArcSwap<config::Health>,
    /// Backends with a backoff probe running (so one runs per backend).
    probing: Mutex<Vec<Arc<Backend>>>,
}

// === impl Health ===

impl Health {
    pub fn new(upstreams: Arc<Upstreams>, config: config::Health) -> Health {
        Health {
            upstreams,
            config: ArcSwap::from_pointee(config),
            probing: Mutex::new(Vec::new()),
        }
    }

    pub fn set_config(&self, config: config::Health) {
        self.config.store(Arc::new(config));
    }

    pub fn config(&self) -> Arc<config::Health> {
        self.config.load_full()
    }

    /// A request to `b` got a response head.
    pub fn on_success(&self, b: &Backend) {
        // Read first: most requests succeed, and a store would bounce the cache line.
        if b.consecutive_failures.load(Ordering::Relaxed) != 0 {
            b.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// A request to `b` failed. A refused connect ejects at once (nothing
    /// listens there); other failures eject after `eject_after_failures` in a row.
    pub fn on_failure(
        self: &Arc<Self>,
        b: &Arc<Backend>,
        err: &dyn std::fmt::Display,
        refused: bool,
    ) {
        if refused {
            self.eject(b, "connect_refused", &err.to_string());
            return;
        }
        let n = b.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if n >= self.config.load().eject_after_failures {
            self.eject(
                b,
                "failures",
                &format!("{n} failures in a row, last: {err}"),
            );
        }
    }

    /// Takes a healthy backend out of rotation. One that refused a connect
    /// is probed first after [`REFUSED_FIRST_PROBE`] (at most
    /// `health.backoff`), and requests left without a backend in rotation
    /// may try it ([`TRY_REFUSED_EVERY`]).
    pub fn eject(self: &Arc<Self>, b: &Arc<Backend>, reason: &str, detail: &str) {
        if b.transition(State::Healthy, State::Ejected) {
            tracing::warn!(backend = %b.name, reason, detail, "backend ejected");
            b.metrics.ejection(reason);
            let mut first = self.config.load().backoff;
            if reason == "connect_refused" {
                b.allow_tries(TRY_REFUSED_EVERY);
                first = first.min(REFUSED_FIRST_PROBE);
            }
            self.upstreams.refresh();
            self.watch_return_after(b, first);
        }
    }

    /// A backend out of rotation answered a request that tried it (see
    /// [`TRY_REFUSED_EVERY`]): it is back in rotation, as after a probe.
    pub fn answered_out_of_rotation(&self, b: &Backend) {
        if b.transition(State::Ejected, State::Healthy) {
            tracing::info!(backend = %b.name, "backend back in rotation (answered a request)");
            self.upstreams.refresh();
        }
    }

    /// Makes sure something will bring `b` back: a probe task per
    /// backend out of rotation (see [`Health::return_probe`]).
    pub fn watch_return(self: &Arc<Self>, b: &Arc<Backend>) {
        self.watch_return_after(b, self.config.load().backoff);
    }

    /// [`Health::watch_return`], the first backoff probe after `first`.
    fn watch_return_after(self: &Arc<Self>, b: &Arc<Backend>, first: Duration) {
        {
            let mut probing = self.probing.lock().unwrap_or_else(|e| e.into_inner());
            if probing.iter().any(|p| Arc::ptr_eq(p, b)) {
                return;
            }
            probing.push(b.clone());
        }
        let this = self.clone();
        let b = b.clone();
        tokio::spawn(async move {
            this.return_probe(&b, first).await;
            this.probing
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .retain(|p| !Arc::ptr_eq(p, &b));
        });
    }

    /// Probes a backend out of rotation until it is back (or gone). With
    /// active checks off: after `first`, doubling to 30 s, and
    /// leniently, since the app may have no health path (any answer below
    /// 500 without a drain request counts). While no backend at all is in
    /// rotation, every [`ALL_DOWN_PROBE`] whatever the backoff, and with
    /// active checks on as well (strictly, and one good answer is enough:
    /// a backend that answers its health check beats a 503 for everyone).
    async fn return_probe(&self, b: &Arc<Backend>, first: Duration) {
        let mut wait = first;
        if wait > REFUSED_FIRST_PROBE && self.gone(b).await {
            wait = REFUSED_FIRST_PROBE;
        }
        let mut due = Instant::now() + wait;
        loop {
            tokio::time::sleep_until(due.min(Instant::now() + ALL_DOWN_PROBE)).await;
            let config = self.config.load_full();
            let state = b.state();
            if !matches!(state, State::Ejected | State::Draining) {
                return;
            }
            let all_down = self.upstreams.load().healthy.is_empty();
            let backoff_due = !config.active.enabled && Instant::now() >= due;
            if !(all_down || backoff_due) {
                continue;
            }
            match probe(b, &config.active, !config.active.enabled).await {
                Probe::Up => {
                    if b.transition(state, State::Healthy) {
                        let how = if all_down { "all down" } else { "backoff" };
                        tracing::info!(backend = %b.name, probe = how, "backend back in rotation (probe)");
                        self.upstreams.refresh();
                    }
                    return;
                }
                Probe::Draining | Probe::Down(_) if backoff_due => {
                    wait = (wait * 2).min(MAX_BACKOFF);
                    due = Instant::now() + wait;
                }
                Probe::Draining | Probe::Down(_) => {}
            }
        }
    }

    /// Whether a backend ejected for failed requests has gone (its process
    /// died: the failures were its connections closing): a connect
    /// [`REFUSED_FIRST_PROBE`] after is refused. Then it is treated as one
    /// ejected for a refused connect (probed soon, tried by requests left
    /// without a backend).
    async fn gone(&self, b: &Backend) -> bool {
        tokio::time::sleep(REFUSED_FIRST_PROBE).await;
        if b.state() != State::Ejected || !b.pool.refuses().await {
            return false;
        }
        tracing::debug!(backend = %b.name, "ejected backend refuses connections");
        b.allow_tries(TRY_REFUSED_EVERY);
        true
    }

    /// Runs active checks until the task is dropped.
    pub async fn run_active(self: Arc<Self>) {
        loop {
            let config = self.config.load_full();
            let active = &config.active;
            if !active.enabled {
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            let next = tokio::time::Instant::now() + active.interval;
            let backends = self.upstreams.load().all.clone();
            let mut probes = JoinSet::new();
            for b in backends {
                let active = active.clone();
                probes.spawn(async move {
                    let result = probe(&b, &active, false).await;
                    (b, result)
                });
            }
            while let Some(Ok((b, result))) = probes.join_next().await {
                self.apply_probe(&b, result, active);
            }
            tokio::time::sleep_until(next).await;
        }
    }

    /// Applies one active-check result with rise/fall thresholds.
    fn apply_probe(
        self: &Arc<Self>,
        b: &Arc<Backend>,
        result: Probe,
        active: &config::ActiveHealth,
    ) {
        let state = b.state();
        if matches!(state, State::AdminDrained | State::Removed) {
            return;
        }
        match result {
            Probe::Up => {
                b.probe_failures.store(0, Ordering::Relaxed);
                let n = b.consecutive_successes.fetch_add(1, Ordering::Relaxed) + 1;
                if state != State::Healthy
                    && n >= active.rise
                    && b.transition(state, State::Healthy)
                {
                    tracing::info!(backend = %b.name, "backend back in rotation (health check)");
                    self.upstreams.refresh();
                }
            }
            Probe::Draining => {
                b.consecutive_successes.store(0, Ordering::Relaxed);
                if b.transition(State::Healthy, State::Draining) {
                    tracing::info!(backend = %b.name, "backend draining (health check answered 503)");
                    b.metrics.ejection("drain");
                    self.upstreams.refresh();
                    self.watch_return(b);
                }
            }
            Probe::Down(why) => {
                b.consecutive_successes.store(0, Ordering::Relaxed);
                let n = b.probe_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if n >= active.fall && b.transition(State::Healthy, State::Ejected) {
                    tracing::warn!(backend = %b.name, reason = %why, "backend ejected (health check)");
                    b.metrics.ejection("health_check");
                    b.record_error(format!("health check: {why}"));
                    self.upstreams.refresh();
                    self.watch_return(b);
                }
            }
        }
    }
}

/// One health probe: a GET of the health path on a new connection.
///
/// Strict probes need a status in `expect_status`; lenient ones (backoff
/// probes with active checks off) accept any status below 500.
pub async fn probe(b: &Backend, active: &config::ActiveHealth, lenient: bool) -> Probe {
    let attempt = async {
        let mut conn = b.pool.connect().await.map_err(|e| e.to_string())?;
        let mut req = Request::get(active.path.as_str())
            .header(header::HOST, b.name.as_ref())
            .header(header::USER_AGENT, "unstick-health-check")
            .body(RequestBody::Empty)
            .map_err(|e| e.to_string())?;
        if !conn.is_http2() {
            req.headers_mut().insert(
                header::CONNECTION,
                header::HeaderValue::from_static("close"),
            );
        }
        b.pool.fit_request(&mut req);
        conn.send_request(req).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(active.timeout, attempt).await {
        Err(_) => Probe::Down(format!("no answer within {:?}", active.timeout)),
        Ok(Err(e)) => Probe::Down(e),
        Ok(Ok(resp)) => {
            let status = resp.status();
            let drain = resp
                .headers()
                .get(&X_UNSTICK_DRAIN)
                .is_some_and(|v| v == "1");
            if status == StatusCode::SERVICE_UNAVAILABLE || drain {
                Probe::Draining
            } else if (lenient && status.as_u16() < 500)
                || (!lenient && active.expect_status.contains(status.as_u16()))
            {
                Probe::Up
            } else {
                Probe::Down(format!("unexpected status {status}"))
            }
        }
    }
}
