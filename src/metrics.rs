//! Prometheus metric families, registered on a registry that is passed in.
//!
//! No globals: [`Metrics::register`] takes the registry, and the request path
//! holds pre-resolved children (see [`BackendMetrics`]) so it never looks up
//! label values or takes a lock to count.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Upper bounds (seconds) of the latency buckets.
const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A response's class: `1xx` .. `5xx`, or `error` when no response came.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CodeClass {
    C1xx = 0,
    C2xx = 1,
    C3xx = 2,
    C4xx = 3,
    C5xx = 4,
    Error = 5,
}

pub const CODE_CLASSES: [&str; 6] = ["1xx", "2xx", "3xx", "4xx", "5xx", "error"];

impl CodeClass {
    pub fn of(status: u16) -> CodeClass {
        match status / 100 {
            1 => CodeClass::C1xx,
            2 => CodeClass::C2xx,
            3 => CodeClass::C3xx,
            4 => CodeClass::C4xx,
            _ => CodeClass::C5xx,
        }
    }
    pub fn as_str(self) -> &'static str {
        CODE_CLASSES[self as usize]
    }
}

/// How a request to a backend failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamErrorKind {
    /// The connection could not be made (refused, unreachable, handshake).
    Connect = 0,
    /// The connection was reset or closed before a response head.
    Reset = 1,
    /// No connection or no response head in time.
    Timeout = 2,
    /// The backend failed after its response head: while the body was
    /// passed on to the client, or while it was held whole (then retried).
    AfterHead = 3,
}

pub const UPSTREAM_ERROR_KINDS: [&str; 4] = ["connect", "reset", "timeout", "after_head"];

impl UpstreamErrorKind {
    pub fn as_str(self) -> &'static str {
        UPSTREAM_ERROR_KINDS[self as usize]
    }
}

/// What a client did wrong (or how it left): the `kind` label of
/// `unstick_client_errors_total`. None of these counts against a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientErrorKind {
    /// A request unstick could not read or refuses by the protocol: 400.
    BadRequest = 0,
    /// The client did not send its request (head or body) in time: 408.
    Timeout = 1,
    /// A request body over `limits.max_request_body`: 413.
    BodyTooLarge = 2,
    /// A request line over `limits.max_header_bytes`: 414.
    UriTooLong = 3,
    /// A request head over the header limits: 431.
    HeaderTooLarge = 4,
    /// A method unstick does not serve (CONNECT: it is no forward proxy): 501.
    NotImplemented = 5,
    /// The client closed or reset its connection (or stream) before its
    /// response was complete.
    Aborted = 6,
    /// The client flooded an HTTP/2 connection with control frames (PING,
    /// SETTINGS, PRIORITY, empty DATA): the connection was closed.
    Flood = 7,
}

pub const CLIENT_ERROR_KINDS: [&str; 8] = [
    "bad_request",
    "timeout",
    "body_too_large",
    "uri_too_long",
    "header_too_large",
    "not_implemented",
    "aborted",
    "flood",
];

impl ClientErrorKind {
    pub fn as_str(self) -> &'static str {
        CLIENT_ERROR_KINDS[self as usize]
    }
}

/// Why a backend left rotation: the `reason` label of `unstick_ejections_total`.
pub const EJECTION_REASONS: [&str; 5] = [
    "connect_refused",
    "failures",
    "health_check",
    "drain",
    "admin",
];

/// What failed before a retry: the `reason` label of `unstick_retries_total`
/// (the retryable kinds of `ProxyError::reason`).
pub const RETRY_REASONS: [&str; 3] = ["connect", "connect_timeout", "reset"];

/// Outcomes of a configuration reload: `unstick_config_reloads_total{result}`.
pub const CONFIG_RELOAD_RESULTS: [&str; 2] = ["success", "failure"];

/// Outcomes of a certificate reload: `unstick_tls_reloads_total{result}`.
pub const TLS_RELOAD_RESULTS: [&str; 2] = ["ok", "error"];

/// Creates the series of `vec` for each label value in `values` (at 0), so
/// the family is exported with its HELP and TYPE before its first event.
fn at_zero(vec: &IntCounterVec, values: &[&str]) {
    for v in values {
        vec.with_label_values(&[v]);
    }
}

/// Every metric family unstick exports.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub upstream_duration: HistogramVec,
    pub upstream_errors: IntCounterVec,
    /// Client faults by kind, pre-resolved (see [`ClientErrorKind`]).
    pub client_errors: [IntCounter; CLIENT_ERROR_KINDS.len()],
    pub retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounter,
    /// Pooled backend connections found closed by the backend when a
    /// request was sent on them (no failure of the backend's).
    pub stale_connections: IntCounter,
    pub backend_healthy: IntGaugeVec,
    pub backend_in_flight: IntGaugeVec,
    pub ejections: IntCounterVec,
    pub connections_open: IntGauge,
    /// Client connections open on each worker (see `server::balance`).
    pub worker_connections: IntGaugeVec,
    pub affinity_refused: IntCounterVec,
    pub tls_handshake_failures: IntCounter,
    /// Synced from the access logger's count at scrape time.
    pub access_log_dropped: IntCounter,
    pub tls_reloads: IntCounterVec,
    pub discovery_failures: IntCounterVec,
    pub discovery_backends: IntGaugeVec,
    pub config_reloads: IntCounterVec,
    pub build_info: IntGaugeVec,
    pub session_hops: IntCounterVec,
    pub session_same_instance: IntCounterVec,
    /// Synced from the session watch's map at scrape time.
    pub sessions_tracked: IntGauge,
    /// Client-view durations by code class, pre-resolved.
    pub request_duration_by_class: [Histogram; 6],
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let m = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let m = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let m = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let m = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec()),
        labels,
    )
    .expect("valid metric");
    r.register(Box::new(m.clone())).expect("registered once");
    m
}

/// Client requests, their durations and the failures and retries on their way.
struct Traffic {
    requests: IntCounterVec,
    request_duration: HistogramVec,
    upstream_duration: HistogramVec,
    upstream_errors: IntCounterVec,
    client_errors: [IntCounter; CLIENT_ERROR_KINDS.len()],
    retries: IntCounterVec,
    retry_budget_exhausted: IntCounter,
    stale_connections: IntCounter,
    request_duration_by_class: [Histogram; 6],
}

/// The backends: in rotation, in flight, ejected, and found by discovery.
struct Backends {
    backend_healthy: IntGaugeVec,
    backend_in_flight: IntGaugeVec,
    ejections: IntCounterVec,
    discovery_failures: IntCounterVec,
    discovery_backends: IntGaugeVec,
}

/// Client connections, the affinity cookies refused on them, and TLS.
struct Listeners {
    connections_open: IntGauge,
    worker_connections: IntGaugeVec,
    affinity_refused: IntCounterVec,
    tls_handshake_failures: IntCounter,
    tls_reloads: IntCounterVec,
}

/// The access log, configuration reloads and the build.
struct Operations {
    access_log_dropped: IntCounter,
    config_reloads: IntCounterVec,
    build_info: IntGaugeVec,
}

/// The session watch (`hops`).
struct Sessions {
    session_hops: IntCounterVec,
    session_same_instance: IntCounterVec,
    sessions_tracked: IntGauge,
}

// === impl Metrics ===

impl Metrics {
    /// Registers every family on `registry`.
    pub fn register(registry: &Registry) -> Metrics {
        let r = registry;
        let Traffic {
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            client_errors,
            retries,
            retry_budget_exhausted,
            stale_connections,
            request_duration_by_class,
        } = Self::traffic(r);
        let Backends {
            backend_healthy,
            backend_in_flight,
            ejections,
            discovery_failures,
            discovery_backends,
        } = Self::backends(r);
        let Listeners {
            connections_open,
            worker_connections,
            affinity_refused,
            tls_handshake_failures,
            tls_reloads,
        } = Self::listeners(r);
        let Operations {
            access_log_dropped,
            config_reloads,
            build_info,
        } = Self::operations(r);
        let Sessions {
            session_hops,
            session_same_instance,
            sessions_tracked,
        } = Self::sessions(r);
        Metrics {
            registry: registry.clone(),
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            client_errors,
            retries,
            retry_budget_exhausted,
            stale_connections,
            backend_healthy,
            backend_in_flight,
            ejections,
            connections_open,
            worker_connections,
            affinity_refused,
            tls_handshake_failures,
            access_log_dropped,
            tls_reloads,
            discovery_failures,
            discovery_backends,
            config_reloads,
            build_info,
            session_hops,
            session_same_instance,
            sessions_tracked,
            request_duration_by_class,
        }
    }

    /// Registers the families of [`Traffic`].
    fn traffic(r: &Registry) -> Traffic {
        let requests = counter_vec(
            r,
            "unstick_requests_total",
            "Client requests, by the backend that answered (`none`: no backend) and response \
             class (`error`: the response did not complete).",
            &["backend", "code_class"],
        );
        let request_duration = histogram_vec(
            r,
            "unstick_request_duration_seconds",
            "Client-view request duration, from request head to the end of the response body, \
             by response class.",
            &["code_class"],
        );
        let upstream_duration = histogram_vec(
            r,
            "unstick_upstream_duration_seconds",
            "Time from sending a request to a backend to its response head.",
            &["backend"],
        );
        let upstream_errors = counter_vec(
            r,
            "unstick_upstream_errors_total",
            "Failed attempts on backends, by kind: connect, reset, timeout, after_head.",
            &["backend", "kind"],
        );
        let client_errors = counter_vec(
            r,
            "unstick_client_errors_total",
            "Requests that failed by the client's doing, by kind: bad_request (400), timeout \
             (408), body_too_large (413), uri_too_long (414), header_too_large (431), \
             not_implemented (501), aborted (the client left before its response was complete), \
             flood (an HTTP/2 connection closed for a flood of control frames). Never counted against a backend.",
            &["kind"],
        );
        let client_errors = CLIENT_ERROR_KINDS.map(|k| client_errors.with_label_values(&[k]));
        let retries = counter_vec(
            r,
            "unstick_retries_total",
            "Retries made on another backend, by the failure that caused them.",
            &["reason"],
        );
        at_zero(&retries, &RETRY_REASONS);
        let retry_budget_exhausted = counter(
            r,
            "unstick_retry_budget_exhausted_total",
            "Retries not made because the retry budget was spent.",
        );
        let stale_connections = counter(
            r,
            "unstick_stale_connections_total",
            "Pooled backend connections found closed by the backend when a request was sent on them; \
             the request went again on a new connection when that was safe. Not a backend failure.",
        );
        let request_duration_by_class =
            CODE_CLASSES.map(|c| request_duration.with_label_values(&[c]));
        Traffic {
            requests,
            request_duration,
            upstream_duration,
            upstream_errors,
            client_errors,
            retries,
            retry_budget_exhausted,
            stale_connections,
            request_duration_by_class,
        }
    }

    /// Registers the families of [`Backends`].
    fn backends(r: &Registry) -> Backends {
        let backend_healthy = gauge_vec(
            r,
            "unstick_backend_healthy",
            "1 if the backend is in rotation, 0 if not.",
            &["backend"],
        );
        let backend_in_flight = gauge_vec(
            r,
            "unstick_backend_in_flight",
            "Requests in flight on the backend (until their response body ends).",
            &["backend"],
        );
        let ejections = counter_vec(
            r,
            "unstick_ejections_total",
            "Times a backend left rotation, by reason: connect_refused, failures, health_check, \
             drain, admin.",
            &["backend", "reason"],
        );
        let discovery_failures = counter_vec(
            r,
            "unstick_discovery_failures_total",
            "Failed lookups of a backend name (its last good addresses stay in use).",
            &["name"],
        );
        let discovery_backends = gauge_vec(
            r,
            "unstick_discovery_backends",
            "Addresses a backend name resolves to now (its backends).",
            &["name"],
        );
        Backends {
            backend_healthy,
            backend_in_flight,
            ejections,
            discovery_failures,
            discovery_backends,
        }
    }

    /// Registers the families of [`Listeners`].
    fn listeners(r: &Registry) -> Listeners {
        let connections_open =
            IntGauge::new("unstick_connections_open", "Client connections open.")
                .expect("valid metric");
        r.register(Box::new(connections_open.clone()))
            .expect("registered once");
        let worker_connections = gauge_vec(
            r,
            "unstick_worker_connections",
            "Client connections open on each worker thread (they are spread evenly).",
            &["worker"],
        );
        let affinity_refused = counter_vec(
            r,
            "unstick_affinity_cookies_refused_total",
            "Affinity cookies refused, by direction (request, response) and cookie name.",
            &["direction", "name"],
        );
        let tls_handshake_failures = counter(
            r,
            "unstick_tls_handshake_failures_total",
            "TLS handshakes that failed on the listener (including plain HTTP sent to it).",
        );
        let tls_reloads = counter_vec(
            r,
            "unstick_tls_reloads_total",
            "Certificate reloads after the files changed, by result: ok, or error (the old \
             certificates stay in use).",
            &["result"],
        );
        at_zero(&tls_reloads, &TLS_RELOAD_RESULTS);
        Listeners {
            connections_open,
            worker_connections,
            affinity_refused,
            tls_handshake_failures,
            tls_reloads,
        }
    }

    /// Registers the families of [`Operations`].
    fn operations(r: &Registry) -> Operations {
        let access_log_dropped = counter(
            r,
            "unstick_access_log_dropped_total",
            "Access-log lines dropped because standard output did not keep up.",
        );
        let config_reloads = counter_vec(
            r,
            "unstick_config_reloads_total",
            "Configuration reloads (SIGHUP, file change, admin API), by result: success, failure.",
            &["result"],
        );
        at_zero(&config_reloads, &CONFIG_RELOAD_RESULTS);
        let build_info = gauge_vec(
            r,
            "unstick_build_info",
            "Always 1; the version is a label.",
            &["version"],
        );
        build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        Operations {
            access_log_dropped,
            config_reloads,
            build_info,
        }
    }

    /// Registers the families of [`Sessions`].
    fn sessions(r: &Registry) -> Sessions {
        let session_hops = counter_vec(
            r,
            "unstick_session_hops_total",
            "Requests carrying a session value (by its cookie name) that a backend other than \
             the one that issued it answered, by outcome: kept, broken (answered as if the \
             session were unknown), unjudged.",
            &["cookie", "outcome"],
        );
        let session_same_instance = counter_vec(
            r,
            "unstick_session_same_instance_total",
            "Requests carrying a session value answered by the backend that issued it, by cookie name.",
            &["cookie"],
        );
        let sessions_tracked = IntGauge::new(
            "unstick_sessions_tracked",
            "Session values remembered (as keyed hashes) to watch their hops.",
        )
        .expect("valid metric");
        r.register(Box::new(sessions_tracked.clone()))
            .expect("registered once");
        Sessions {
            session_hops,
            session_same_instance,
            sessions_tracked,
        }
    }

    /// A fresh registry with every family (for tests and tools).
    pub fn new_unregistered() -> Metrics {
        Metrics::register(&Registry::new())
    }

    /// Pre-resolved children for one backend.
    pub fn backend(&self, name: &str) -> BackendMetrics {
        let healthy = self.backend_healthy.with_label_values(&[name]);
        healthy.set(1);
        for reason in EJECTION_REASONS {
            self.ejections.with_label_values(&[name, reason]);
        }
        BackendMetrics {
            name: name.to_owned(),
            requests: CODE_CLASSES.map(|c| self.requests.with_label_values(&[name, c])),
            upstream_duration: self.upstream_duration.with_label_values(&[name]),
            errors: UPSTREAM_ERROR_KINDS
                .map(|k| self.upstream_errors.with_label_values(&[name, k])),
            healthy,
            in_flight: self.backend_in_flight.with_label_values(&[name]),
            ejections: self.ejections.clone(),
        }
    }

    /// Forgets a backend's series once it has left the configuration.
    pub fn remove_backend(&self, name: &str) {
        for c in CODE_CLASSES {
            let _ = self.requests.remove_label_values(&[name, c]);
        }
        for k in UPSTREAM_ERROR_KINDS {
            let _ = self.upstream_errors.remove_label_values(&[name, k]);
        }
        let _ = self.upstream_duration.remove_label_values(&[name]);
        let _ = self.backend_healthy.remove_label_values(&[name]);
        let _ = self.backend_in_flight.remove_label_values(&[name]);
        for r in EJECTION_REASONS {
            let _ = self.ejections.remove_label_values(&[name, r]);
        }
    }

    /// Creates a backend name's discovery series at 0 (its lookups are
    /// expected from the moment it is configured).
    pub fn discovery_name(&self, name: &str) {
        self.discovery_failures.with_label_values(&[name]);
        self.discovery_backends.with_label_values(&[name]);
    }

    /// Counts a client fault.
    pub fn client_error(&self, kind: ClientErrorKind) {
        self.client_errors[kind as usize].inc();
    }

    /// Counts a request answered without any backend (e.g. none healthy).
    pub fn request_without_backend(&self, class: CodeClass) {
        self.requests
            .with_label_values(&["none", class.as_str()])
            .inc();
    }

    /// Prometheus text exposition of the registry.
    pub fn encode(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("prometheus text is UTF-8")
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

/// One backend's metric children, resolved once.
#[derive(Clone)]
pub struct BackendMetrics {
    name: String,
    pub requests: [IntCounter; 6],
    pub upstream_duration: Histogram,
    pub errors: [IntCounter; 4],
    pub healthy: IntGauge,
    pub in_flight: IntGauge,
    ejections: IntCounterVec,
}

impl BackendMetrics {
    pub fn request(&self, class: CodeClass) {
        self.requests[class as usize].inc();
    }

    pub fn error(&self, kind: UpstreamErrorKind) {
        self.errors[kind as usize].inc();
    }

    /// Counts an ejection (rare, so the label is looked up here).
    pub fn ejection(&self, reason: &str) {
        self.ejections
            .with_label_values(&[&self.name, reason])
            .inc();
    }
}

/// The upper bounds (seconds) of every latency histogram's buckets, in order.
pub fn latency_bounds() -> &'static [f64] {
    LATENCY_BUCKETS
}

/// A histogram's cumulative bucket counts (one per [`latency_bounds`]),
/// then its sample count (the `+Inf` bucket).
pub fn cumulative_counts(h: &Histogram) -> Vec<u64> {
    use prometheus::core::Metric;
    let m = h.metric();
    let hist = m.get_histogram();
    let mut out: Vec<u64> = hist
        .get_bucket()
        .iter()
        .map(|b| b.cumulative_count())
        .collect();
    out.push(hist.get_sample_count());
    out
}

/// The series of `vec` whose labels include every pair of `only`, summed by
/// the value of their label `label`.
pub fn sum_by_label(
    vec: &IntCounterVec,
    label: &str,
    only: &[(&str, &str)],
) -> std::collections::BTreeMap<String, u64> {
    use prometheus::core::Collector;
    let mut out = std::collections::BTreeMap::new();
    for family in vec.collect() {
        for m in family.get_metric() {
            let labels = m.get_label();
            let has = |name: &str, value: &str| {
                labels
                    .iter()
                    .any(|p| p.name() == name && p.value() == value)
            };
            if !only.iter().all(|(n, v)| has(n, v)) {
                continue;
            }
            let Some(pair) = labels.iter().find(|p| p.name() == label) else {
                continue;
            };
            *out.entry(pair.value().to_owned()).or_insert(0) += m.get_counter().get_value() as u64;
        }
    }
    out
}
