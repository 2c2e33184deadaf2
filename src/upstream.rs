//! Backends: their state, in-flight counts, connection pools, and the set of them.
//!
//! The set is an immutable [`Snapshot`] swapped with arc-swap, so the request
//! path reads it without a lock. A backend's mutable state (in-flight count,
//! health, pool) lives in atomics and small mutexes on the [`Backend`] itself,
//! so a backend keeps its state and connections across snapshots.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::config::{BackendSpec, Config, UpstreamProtocol};
use crate::metrics::{BackendMetrics, Metrics};
use crate::tls::TlsError;
use discovery::MakeBackend;

mod body;
mod checked;
pub mod discovery;
pub mod keepalive;
mod pool;
pub mod raw;

pub use body::{poll_timed, BodyError, BodyFault, BodyWatch, ClientBody, RequestBody, Stall};
pub use pool::{worker, Checkout, Conn, ConnectError, Pool, PoolSettings};

/// The pool settings a config asks for, with the client configs for TLS
/// backends (`upstream_tls`: CA file or the built-in roots, client certificate).
pub fn pool_settings(config: &Config) -> Result<PoolSettings, TlsError> {
    Ok(PoolSettings {
        connect_timeout: config.timeouts.connect,
        idle_timeout: config.timeouts.upstream_idle,
        max_idle: config.limits.upstream_idle_per_backend,
        tls: Some(crate::tls::client_configs(&config.upstream_tls)?),
    })
}

/// Makes backends as `config` wants them (pool settings, metrics).
pub fn backend_factory(config: &Config, metrics: &Metrics) -> Result<MakeBackend, TlsError> {
    let pool = pool_settings(config)?;
    let metrics = metrics.clone();
    Ok(Arc::new(move |spec: &BackendSpec, addr: SocketAddr| {
        Backend::new(spec.clone(), addr, pool.clone(), &metrics)
    }))
}

/// Why a backend is out of rotation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum State {
    /// In rotation.
    Healthy = 0,
    /// Taken out by failed requests or failed health checks.
    Ejected = 1,
    /// Draining: asked to leave by the backend itself (drain header, 503 health).
    Draining = 2,
    /// Drained by an operator through the admin API.
    AdminDrained = 3,
    /// Removed from the configuration: finishes what it has, gets nothing new.
    Removed = 4,
}

impl State {
    fn from_u8(v: u8) -> State {
        match v {
            0 => State::Healthy,
            1 => State::Ejected,
            2 => State::Draining,
            3 => State::AdminDrained,
            _ => State::Removed,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Healthy => "healthy",
            State::Ejected => "ejected",
            State::Draining => "draining",
            State::AdminDrained => "drained",
            State::Removed => "removed",
        }
    }
}

/// One backend process: where it is, how loaded, how healthy.
pub struct Backend {
    /// The configured spec (address as written, weight, protocol).
    pub spec: BackendSpec,
    /// The resolved socket address.
    pub addr: SocketAddr,
    /// `addr` as text: the label in metrics, logs and the admin API.
    pub name: Arc<str>,
    pub weight: u32,
    /// Requests in flight, held until the response body ends (or is dropped).
    in_flight: AtomicU32,
    /// [`State`] as a u8.
    state: AtomicU8,
    /// Consecutive failed requests or probes.
    pub(crate) consecutive_failures: AtomicU32,
    /// Consecutive successful and failed health probes.
    pub(crate) consecutive_successes: AtomicU32,
    pub(crate) probe_failures: AtomicU32,
    /// Requests sent, and failures seen, over the backend's life.
    pub(crate) requests: AtomicU64,
    pub(crate) failures: AtomicU64,
    /// Wall-clock time (ms since the epoch) the backend left rotation; 0 when in.
    ejected_since_ms: AtomicU64,
    /// Monotonic time it came back (for slow start), in ms since `epoch`.
    returned_at_ms: AtomicU64,
    /// While out of rotation after a refused connect: the monotonic time
    /// (ms since `epoch`) from which a request may try it again (see
    /// [`Backend::claim_try`]); 0 when no request may.
    try_at_ms: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Smooth weighted round-robin's running weight (used under the balancer's lock).
    pub(crate) rr_current: AtomicI64,
    /// Keep-alive connections to this backend.
    pub pool: Pool,
    /// Pre-resolved metric children, so the request path never looks up labels.
    pub metrics: BackendMetrics,
}

/// Monotonic base for the ms timestamps kept in atomics.
fn epoch() -> Instant {
    use std::sync::OnceLock;
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn now_ms() -> u64 {
    epoch().elapsed().as_millis() as u64
}

// === impl Backend ===

impl Backend {
    pub fn new(
        spec: BackendSpec,
        addr: SocketAddr,
        pool: PoolSettings,
        metrics: &Metrics,
    ) -> Backend {
        let name: Arc<str> = addr.to_string().into();
        Backend {
            weight: spec.weight,
            metrics: metrics.backend(&name),
            pool: Pool::new(addr, spec.host_port().0, spec.protocol, pool),
            spec,
            addr,
            name,
            in_flight: AtomicU32::new(0),
            state: AtomicU8::new(State::Healthy as u8),
            consecutive_failures: AtomicU32::new(0),
            consecutive_successes: AtomicU32::new(0),
            probe_failures: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            failures: AtomicU64::new(0),
            ejected_since_ms: AtomicU64::new(0),
            returned_at_ms: AtomicU64::new(0),
            try_at_ms: AtomicU64::new(0),
            last_error: Mutex::new(None),
            rr_current: AtomicI64::new(0),
        }
    }

    pub fn protocol(&self) -> UpstreamProtocol {
        self.spec.protocol
    }

    /// Requests in flight on this backend now.
    pub fn in_flight(&self) -> u32 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Counts a request as in flight until the returned guard drops.
    pub fn start_request(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
        InFlight {
            backend: Arc::clone(self),
        }
    }

    pub fn state(&self) -> State {
        State::from_u8(self.state.load(Ordering::Acquire))
    }

    pub fn is_healthy(&self) -> bool {
        self.state() == State::Healthy
    }

    /// Moves to `to` if the current state is `from`. Returns whether it moved.
    pub fn transition(&self, from: State, to: State) -> bool {
        let moved = self
            .state
            .compare_exchange(from as u8, to as u8, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if moved {
            self.on_state_change(to);
        }
        moved
    }

    /// Failed requests in a row (passive health ejects at a threshold).
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures.load(Ordering::Relaxed)
    }

    /// Sets the state whatever it was. Returns the previous state.
    pub fn set_state(&self, to: State) -> State {
        let prev = State::from_u8(self.state.swap(to as u8, Ordering::AcqRel));
        if prev != to {
            self.on_state_change(to);
        }
        prev
    }

    /// Lets requests try this backend out of rotation (a connect tells at
    /// once whether something listens again), one every `every`, the first
    /// `every` from now. Cleared by any change of state.
    pub fn allow_tries(&self, every: Duration) {
        let at = now_ms() + every.as_millis() as u64;
        self.try_at_ms.store(at, Ordering::Relaxed);
    }

    /// Claims a request's try of this backend out of rotation, if tries are
    /// allowed ([`Backend::allow_tries`]) and the last was `every` ago.
    pub fn claim_try(&self, every: Duration) -> bool {
        let at = self.try_at_ms.load(Ordering::Relaxed);
        let now = now_ms();
        if at == 0 || now < at || self.state() != State::Ejected {
            return false;
        }
        let next = now + every.as_millis() as u64;
        self.try_at_ms
            .compare_exchange(at, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    fn on_state_change(&self, to: State) {
        self.try_at_ms.store(0, Ordering::Relaxed);
        if to == State::Healthy {
            self.ejected_since_ms.store(0, Ordering::Relaxed);
            self.returned_at_ms
                .store(now_ms().max(1), Ordering::Relaxed);
            self.consecutive_failures.store(0, Ordering::Relaxed);
            self.metrics.healthy.set(1);
        } else {
            let since = SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(1);
            let _ = self.ejected_since_ms.compare_exchange(
                0,
                since,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            self.consecutive_successes.store(0, Ordering::Relaxed);
            self.metrics.healthy.set(0);
            // Idle connections to a backend out of rotation are not reused.
            self.pool.clear();
        }
    }

    /// Wall-clock time it left rotation, if it is out.
    pub fn ejected_since(&self) -> Option<SystemTime> {
        match self.ejected_since_ms.load(Ordering::Relaxed) {
            0 => None,
            ms => Some(SystemTime::UNIX_EPOCH + Duration::from_millis(ms)),
        }
    }

    /// The weight the balancer should use now: ramps from 1 to `weight`
    /// (scaled by 10 for resolution) over `slow_start` after the backend returns.
    pub fn effective_weight(&self, slow_start: Duration) -> u32 {
        let full = self.weight * 10;
        if slow_start.is_zero() {
            return full;
        }
        let back = self.returned_at_ms.load(Ordering::Relaxed);
        if back == 0 {
            return full;
        }
        let elapsed = now_ms().saturating_sub(back);
        let window = slow_start.as_millis() as u64;
        if elapsed >= window {
            return full;
        }
        ((u64::from(full) * elapsed / window) as u32).max(1)
    }

    pub fn record_error(&self, message: String) {
        self.failures.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(message);
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    /// Takes over what `old` (the same address, before a reload changed its
    /// weight, protocol or pool settings) knew: its state (an ejected or
    /// drained backend stays out), slow-start ramp, health streaks, counters
    /// and last error. Call before the new backend is published.
    pub fn inherit(&self, old: &Backend) {
        let state = match old.state() {
            State::Removed => State::Healthy,
            s => s,
        };
        self.state.store(state as u8, Ordering::Release);
        self.metrics.healthy.set(i64::from(state == State::Healthy));
        let copy = |to: &AtomicU32, from: &AtomicU32| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        copy(&self.consecutive_failures, &old.consecutive_failures);
        copy(&self.consecutive_successes, &old.consecutive_successes);
        copy(&self.probe_failures, &old.probe_failures);
        let copy = |to: &AtomicU64, from: &AtomicU64| {
            to.store(from.load(Ordering::Relaxed), Ordering::Relaxed)
        };
        copy(&self.requests, &old.requests);
        copy(&self.failures, &old.failures);
        copy(&self.ejected_since_ms, &old.ejected_since_ms);
        copy(&self.returned_at_ms, &old.returned_at_ms);
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = old.last_error();
    }
}

impl std::fmt::Debug for Backend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Backend")
            .field("addr", &self.addr)
            .field("weight", &self.weight)
            .field("state", &self.state())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

/// A request in flight on a backend; the count drops with this guard.
pub struct InFlight {
    backend: Arc<Backend>,
}

impl InFlight {
    pub fn backend(&self) -> &Arc<Backend> {
        &self.backend
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.backend.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

// === impl Upstreams ===

/// An immutable view of the backends, swapped whole when anything changes.
#[derive(Default)]
pub struct Snapshot {
    /// Every configured backend, in configuration order.
    pub all: Vec<Arc<Backend>>,
    /// Backends in rotation, in configuration order.
    pub healthy: Vec<Arc<Backend>>,
    /// Every backend speaks plain HTTP/1.1: the fast path can serve requests
    /// (see `proxy::h1`).
    pub all_raw: bool,
}

/// The live set of backends.
pub struct Upstreams {
    snapshot: ArcSwap<Snapshot>,
    /// Backends removed from the configuration whose requests are still
    /// finishing (shown by the admin API until they are forgotten).
    leaving: Mutex<Vec<Arc<Backend>>>,
    /// Serializes writers (health changes, reloads); readers never take it.
    write: Mutex<()>,
    /// Woken whenever the snapshot changes.
    changed: Notify,
}

impl Upstreams {
    pub fn new(backends: Vec<Arc<Backend>>) -> Upstreams {
        let up = Upstreams {
            snapshot: ArcSwap::from_pointee(Snapshot::default()),
            leaving: Mutex::new(Vec::new()),
            write: Mutex::new(()),
            changed: Notify::new(),
        };
        up.replace(backends);
        up
    }

    /// The current snapshot (lock-free).
    pub fn load(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Rebuilds the healthy list after a backend changed state.
    pub fn refresh(&self) {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let all = self.snapshot.load().all.clone();
        self.publish(all);
    }

    /// Replaces the set of backends. Backends present in both sets (the same
    /// `Arc`) keep their state and connections; the rest are marked
    /// [`State::Removed`], listed in [`Upstreams::leaving`] and returned, so
    /// the caller can let them finish and then [`forget`](Upstreams::forget) them.
    pub fn replace(&self, backends: Vec<Arc<Backend>>) -> Vec<Arc<Backend>> {
        let _w = self.write.lock().unwrap_or_else(|e| e.into_inner());
        let old = self.snapshot.load().all.clone();
        let removed: Vec<_> = old
            .iter()
            .filter(|o| !backends.iter().any(|n| Arc::ptr_eq(n, o)))
            .cloned()
            .collect();
        for r in &removed {
            r.set_state(State::Removed);
        }
        // A backend replaced by a new one at the same address shares its
        // metric series: marking the old one removed zeroed the gauge.
        for b in &backends {
            b.metrics.healthy.set(i64::from(b.is_healthy()));
        }
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(removed.iter().cloned());
        self.publish(backends);
        removed
    }

    /// Removed backends still finishing their requests.
    pub fn leaving(&self) -> Vec<Arc<Backend>> {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Drops a removed backend from [`Upstreams::leaving`].
    pub fn forget(&self, backend: &Arc<Backend>) {
        self.leaving
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|b| !Arc::ptr_eq(b, backend));
    }

    fn publish(&self, all: Vec<Arc<Backend>>) {
        let healthy = all.iter().filter(|b| b.is_healthy()).cloned().collect();
        let all_raw = all.iter().all(|b| b.pool.is_raw());
        self.snapshot.store(Arc::new(Snapshot {
            all,
            healthy,
            all_raw,
        }));
        self.changed.notify_waiters();
    }

    /// Every backend's name (`IP:PORT`), in configuration order.
    pub fn names(&self) -> Vec<String> {
        self.load().all.iter().map(|b| b.name.to_string()).collect()
    }

    /// Finds a backend by its name (`IP:PORT`) or configured address.
    pub fn find(&self, name: &str) -> Option<Arc<Backend>> {
        self.load()
            .all
            .iter()
            .find(|b| &*b.name == name || b.spec.address == name)
            .cloned()
    }

    /// Resolves when the snapshot next changes.
    pub async fn changed(&self) {
        self.changed.notified().await
    }
}
