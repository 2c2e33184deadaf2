//! `GET /api/status`: one JSON snapshot of what the status page shows (counters are cumulative; the page turns them into rates).

use std::collections::BTreeMap;
use std::time::SystemTime;

use serde::Serialize;

use super::Admin;
use crate::affinity;
use crate::hops;
use crate::metrics::{self, Metrics, CODE_CLASSES, UPSTREAM_ERROR_KINDS};
use crate::reload::LastReload;
use crate::shutdown::Phase;
use crate::timefmt::Rfc3339;
use crate::upstream::{Backend, State};

/// The whole answer (documented in docs/admin-api.md, "Status").
#[derive(Serialize)]
pub struct Status {
    version: &'static str,
    /// RFC 3339, UTC: when this snapshot was taken, and when the process started.
    now: String,
    started: String,
    uptime_seconds: u64,
    /// `running`, `draining` or `closing`.
    phase: &'static str,
    algorithm: &'static str,
    slow_start_seconds: f64,
    connections_open: i64,
    /// Upper bounds of every `latency` array's buckets; each array has one
    /// more entry, the total count.
    latency_bounds_seconds: &'static [f64],
    requests: Requests,
    retries: Retries,
    affinity: affinity::Report,
    reload: Reload,
    statelessness: hops::Report,
    backends: Vec<BackendStatus>,
    endpoints: &'static [Endpoint],
}

/// Client requests, as clients saw them.
#[derive(Serialize)]
struct Requests {
    /// By response class (`1xx` .. `5xx`, `error`: no complete response).
    by_class: BTreeMap<String, u64>,
    /// Requests that failed by the client's doing, by kind.
    client_errors: BTreeMap<&'static str, u64>,
    /// Cumulative counts of client-view durations (every class).
    latency: Vec<u64>,
}

#[derive(Serialize)]
struct Retries {
    /// Retries made on another backend, by the failure that caused them.
    by_reason: BTreeMap<String, u64>,
    /// Retries not made because the retry budget was spent.
    budget_exhausted: u64,
}

#[derive(Serialize)]
struct Reload {
    succeeded: u64,
    failed: u64,
    last: Option<LastReloadView>,
}

#[derive(Serialize)]
struct LastReloadView {
    time: String,
    /// `sighup`, `file-watch` or `admin-api`.
    trigger: &'static str,
    /// `success` or `failure`.
    result: &'static str,
    /// What changed, or why the configuration was refused.
    detail: String,
}

/// One backend, with its state and counters.
#[derive(Serialize)]
struct BackendStatus {
    address: String,
    configured: String,
    weight: u32,
    /// `healthy`, `ejected`, `draining`, `drained` or `removed`.
    state: &'static str,
    in_rotation: bool,
    /// The share of its weight it gets while slow start ramps it up; null
    /// when it gets all of it.
    slow_start_percent: Option<u32>,
    in_flight: u32,
    /// Attempts sent, failed ones included.
    attempts: u64,
    /// Client requests it answered, by response class.
    responses: BTreeMap<&'static str, u64>,
    /// Failed attempts, by kind.
    errors: BTreeMap<&'static str, u64>,
    /// Failed attempts and failed health checks.
    failures: u64,
    /// Times it left rotation, by reason.
    ejections: BTreeMap<String, u64>,
    last_error: Option<String>,
    ejected_since: Option<String>,
    /// Cumulative counts of the times to its response heads.
    latency: Vec<u64>,
}

/// One admin endpoint, for the page's index.
#[derive(Serialize)]
pub struct Endpoint {
    method: &'static str,
    path: &'static str,
    what: &'static str,
}

/// Every endpoint of the admin listener.
pub const ENDPOINTS: &[Endpoint] = &[
    endpoint("GET", "/", "this status page"),
    endpoint("GET", "/api/status", "what the status page shows, as JSON"),
    endpoint("GET", "/healthz", "200 while the process runs"),
    endpoint(
        "GET",
        "/readyz",
        "200 when a backend is in rotation and not draining",
    ),
    endpoint("GET", "/metrics", "Prometheus metrics"),
    endpoint("GET", "/api/backends", "every backend as JSON"),
    endpoint(
        "GET",
        "/api/affinity",
        "affinity cookies refused, by who sent or set them",
    ),
    endpoint(
        "GET",
        "/api/statelessness",
        "session hops between backends: kept and broken",
    ),
    endpoint(
        "POST",
        "/api/backends/{address}/drain",
        "take a backend out of rotation",
    ),
    endpoint(
        "POST",
        "/api/backends/{address}/undrain",
        "put a drained backend back",
    ),
    endpoint(
        "POST",
        "/api/reload",
        "re-read the configuration and apply it",
    ),
];

const fn endpoint(method: &'static str, path: &'static str, what: &'static str) -> Endpoint {
    Endpoint { method, path, what }
}

/// Takes the snapshot.
pub fn build(admin: &Admin) -> Status {
    let proxy = &admin.proxy;
    let now = SystemTime::now();
    let settings = proxy.settings();
    let slow_start = proxy.health.config().slow_start;
    let snapshot = proxy.upstreams.load();
    let leaving = proxy.upstreams.leaving();
    let backends = snapshot.all.iter().chain(leaving.iter());
    Status {
        version: env!("CARGO_PKG_VERSION"),
        now: Rfc3339(now).to_string(),
        started: Rfc3339(admin.started).to_string(),
        uptime_seconds: now.duration_since(admin.started).map_or(0, |d| d.as_secs()),
        phase: phase_name(admin.shutdown.phase()),
        algorithm: settings.balancer.name(),
        slow_start_seconds: slow_start.as_secs_f64(),
        connections_open: proxy.metrics.connections_open.get(),
        latency_bounds_seconds: metrics::latency_bounds(),
        requests: requests(&proxy.metrics),
        retries: Retries {
            by_reason: metrics::sum_by_label(&proxy.metrics.retries, "reason", &[]),
            budget_exhausted: proxy.metrics.retry_budget_exhausted.get(),
        },
        affinity: proxy.affinity.report(settings.affinity.policy()),
        reload: reload(&proxy.metrics, admin.reloader.last()),
        statelessness: proxy.hops.report(),
        backends: backends
            .map(|b| backend(b, &proxy.metrics, slow_start))
            .collect(),
        endpoints: ENDPOINTS,
    }
}

fn phase_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Running => "running",
        Phase::Drain => "draining",
        Phase::Close => "closing",
    }
}

fn requests(m: &Metrics) -> Requests {
    let mut latency = vec![0; metrics::latency_bounds().len() + 1];
    for h in &m.request_duration_by_class {
        for (sum, n) in latency.iter_mut().zip(metrics::cumulative_counts(h)) {
            *sum += n;
        }
    }
    Requests {
        by_class: metrics::sum_by_label(&m.requests, "code_class", &[]),
        client_errors: metrics::CLIENT_ERROR_KINDS
            .iter()
            .zip(&m.client_errors)
            .map(|(k, c)| (*k, c.get()))
            .collect(),
        latency,
    }
}

fn reload(m: &Metrics, last: Option<LastReload>) -> Reload {
    let counts = metrics::sum_by_label(&m.config_reloads, "result", &[]);
    let count = |result: &str| counts.get(result).copied().unwrap_or(0);
    Reload {
        succeeded: count("success"),
        failed: count("failure"),
        last: last.map(|l| LastReloadView {
            time: Rfc3339(l.at).to_string(),
            trigger: l.trigger.as_str(),
            result: if l.ok { "success" } else { "failure" },
            detail: l.detail,
        }),
    }
}

fn backend(b: &Backend, m: &Metrics, slow_start: std::time::Duration) -> BackendStatus {
    let state = b.state();
    let full = b.weight * 10;
    let ramped = b.effective_weight(slow_start);
    let named = |names: &[&'static str], counters: &[prometheus::IntCounter]| {
        names
            .iter()
            .zip(counters)
            .map(|(k, c)| (*k, c.get()))
            .collect()
    };
    BackendStatus {
        address: b.name.to_string(),
        configured: b.spec.address.clone(),
        weight: b.weight,
        state: state.as_str(),
        in_rotation: state == State::Healthy,
        slow_start_percent: (state == State::Healthy && ramped < full)
            .then(|| ramped * 100 / full.max(1)),
        in_flight: b.in_flight(),
        attempts: b.requests(),
        responses: named(&CODE_CLASSES, &b.metrics.requests),
        errors: named(&UPSTREAM_ERROR_KINDS, &b.metrics.errors),
        failures: b.failures(),
        ejections: metrics::sum_by_label(&m.ejections, "reason", &[("backend", &b.name)]),
        last_error: b.last_error(),
        ejected_since: b.ejected_since().map(|t| Rfc3339(t).to_string()),
        latency: metrics::cumulative_counts(&b.metrics.upstream_duration),
    }
}
