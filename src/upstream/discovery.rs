//! DNS discovery: backend names resolved on an interval, one backend per address.
//!
//! [`Discovery`] owns the set of backends. It is given the configured specs
//! (on start and on every reload) and keeps, for each spec whose host is a
//! name rather than an IP literal, the addresses it last resolved to. The
//! backend list is rebuilt from specs and addresses whenever either changes:
//!
//! - an address that stays keeps its [`Backend`] (state, pool, counters),
//!   unless its spec (weight, protocol) or the pool settings changed: then a
//!   new `Backend` takes over its state ([`Backend::inherit`]), because the
//!   weighted balancer caches schedules by backend identity;
//! - an address that disappears is marked [`State::Removed`](super::State):
//!   it gets no new requests, finishes the ones it has, and is then forgotten
//!   (its metric series too, unless a backend at that address remains);
//! - a good answer is looked up again when its DNS TTL runs out, but never
//!   sooner than `discovery.min_interval` nor later than `discovery.interval`;
//! - a failed lookup (an error, a timeout, or no addresses) keeps the last
//!   good addresses, is logged and counted, and is retried after
//!   `discovery.min_interval`, doubling up to `discovery.interval`. A name
//!   that has never resolved has no backends until it does: startup does not
//!   wait for it, and a config of IP literals never touches the resolver.
//!
//! Lookups go through the [`Resolve`] trait: [`SystemResolver`] (hickory,
//! see [`crate::dns`]) in production, a fake in tests.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Backend, Upstreams};
use crate::config::{self, BackendSpec};
pub use crate::dns::Answer;
use crate::metrics::Metrics;

/// A lookup in progress.
pub type Lookup<'a> = Pin<Box<dyn Future<Output = io::Result<Answer>> + Send + 'a>>;

/// Resolves a host name and a port to socket addresses.
pub trait Resolve: Send + Sync {
    /// Every address `host` has, with `port`, and how long the answer holds.
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a>;
}

/// The host's resolver configuration (`/etc/hosts`, then the name servers
/// of `/etc/resolv.conf`) through [`crate::dns::Resolver`], built on first
/// use so it runs on the runtime that asks.
#[derive(Debug, Default)]
pub struct SystemResolver {
    resolver: std::sync::OnceLock<crate::dns::Resolver>,
}

impl SystemResolver {
    /// Resolves through `resolver` rather than the host's configuration.
    pub fn with(resolver: crate::dns::Resolver) -> SystemResolver {
        SystemResolver {
            resolver: resolver.into(),
        }
    }
}

impl Resolve for SystemResolver {
    fn resolve<'a>(&'a self, host: &'a str, port: u16) -> Lookup<'a> {
        let resolver = self.resolver.get_or_init(crate::dns::Resolver::system);
        Box::pin(resolver.lookup(host, port))
    }
}

/// Builds a backend for a spec at one of its addresses (the pool settings
/// live in the closure).
pub type MakeBackend = Arc<dyn Fn(&BackendSpec, SocketAddr) -> Backend + Send + Sync>;

/// A lookup slower than this counts as a failure.
const LOOKUP_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a removed backend is checked for requests still in flight.
const DRAIN_POLL: Duration = Duration::from_millis(100);

/// What one rebuild of the backend set changed.
#[derive(Default)]
pub struct Change {
    /// New addresses.
    pub added: Vec<Arc<Backend>>,
    /// Addresses gone: no new requests; they finish what they have.
    pub removed: Vec<Arc<Backend>>,
    /// `(old, new)`: the same address with a new weight, protocol or pool.
    pub replaced: Vec<(Arc<Backend>, Arc<Backend>)>,
    /// Configured names that have no addresses yet (never resolved).
    pub unresolved: Vec<String>,
}

/// The backend set: configured specs plus what their names resolve to.
pub struct Discovery {
    upstreams: Arc<Upstreams>,
    metrics: Metrics,
    resolver: Arc<dyn Resolve>,
    members: Mutex<Members>,
    /// Wakes the lookup loop when the names or their schedule changed.
    wake: Notify,
}

struct Members {
    specs: Vec<BackendSpec>,
    make: MakeBackend,
    timing: config::Discovery,
    /// Per configured name (`HOST:PORT` as written), its lookup state.
    names: BTreeMap<String, Name>,
}

struct Name {
    host: String,
    port: u16,
    /// The last good answer, sorted; `None` until the first one.
    addrs: Option<Vec<SocketAddr>>,
    /// Failed lookups in a row.
    failures: u32,
    /// When to look it up next.
    next: Instant,
}

/// The address of a spec whose host is an IP literal.
fn literal(spec: &BackendSpec) -> Option<SocketAddr> {
    let (host, port) = spec.host_port();
    host.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, port))
}

async fn lookup(resolver: &dyn Resolve, host: &str, port: u16) -> io::Result<Answer> {
    match tokio::time::timeout(LOOKUP_TIMEOUT, resolver.resolve(host, port)).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no answer within {LOOKUP_TIMEOUT:?}"),
        )),
    }
}

/// When to ask again after a good answer: when its TTL runs out, but no
/// sooner than `min_interval` and no later than `interval` (an answer
/// without a TTL: `interval`).
pub fn refresh_after(ttl: Option<Duration>, timing: &config::Discovery) -> Duration {
    match ttl {
        Some(ttl) => ttl.min(timing.interval).max(timing.min_interval),
        None => timing.interval,
    }
}

// === impl Discovery ===

impl Discovery {
    /// An empty set; [`Discovery::apply`] gives it the configured backends.
    pub fn new(
        upstreams: Arc<Upstreams>,
        metrics: Metrics,
        resolver: Arc<dyn Resolve>,
        make: MakeBackend,
        timing: config::Discovery,
    ) -> Arc<Discovery> {
        Arc::new(Discovery {
            upstreams,
            metrics,
            resolver,
            members: Mutex::new(Members {
                specs: Vec::new(),
                make,
                timing,
                names: BTreeMap::new(),
            }),
            wake: Notify::new(),
        })
    }

    fn members(&self) -> MutexGuard<'_, Members> {
        self.members.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets the configured backends. Names not seen before are resolved now
    /// (concurrently, each bounded by a timeout); names already known keep
    /// their addresses and schedule. With `make` (new pool settings), every
    /// backend is rebuilt with it, taking over its predecessor's state.
    pub async fn apply(
        self: &Arc<Self>,
        specs: Vec<BackendSpec>,
        make: Option<MakeBackend>,
        timing: config::Discovery,
    ) -> Change {
        let fresh: Vec<(String, String, u16)> = {
            let m = self.members();
            specs
                .iter()
                .filter(|s| literal(s).is_none() && !m.names.contains_key(&s.address))
                .map(|s| {
                    let (host, port) = s.host_port();
                    (s.address.clone(), host.to_owned(), port)
                })
                .collect()
        };
        let results = self.lookup_all(fresh).await;

        let mut m = self.members();
        let now = Instant::now();
        let names: Vec<&BackendSpec> = specs.iter().filter(|s| literal(s).is_none()).collect();
        let gone: Vec<String> = m
            .names
            .keys()
            .filter(|k| !names.iter().any(|s| &s.address == *k))
            .cloned()
            .collect();
        for key in gone {
            m.names.remove(&key);
            let _ = self.metrics.discovery_backends.remove_label_values(&[&key]);
            let _ = self.metrics.discovery_failures.remove_label_values(&[&key]);
        }
        for (key, host, port, result) in results {
            let mut name = Name {
                host,
                port,
                addrs: None,
                failures: 0,
                next: now,
            };
            self.metrics.discovery_name(&key);
            self.record(&key, &mut name, result, &timing);
            m.names.insert(key, name);
        }
        // A shorter interval applies from now on.
        for n in m.names.values_mut() {
            n.next = n.next.min(now + timing.interval);
        }
        m.specs = specs;
        m.timing = timing;
        let renew = make.is_some();
        if let Some(make) = make {
            m.make = make;
        }
        let change = self.rebuild(&m, renew);
        drop(m);
        self.wake.notify_one();
        change
    }

    /// The configured names and how many addresses each has now.
    pub fn names(&self) -> Vec<(String, usize)> {
        self.members()
            .names
            .iter()
            .map(|(k, n)| (k.clone(), n.addrs.as_ref().map_or(0, Vec::len)))
            .collect()
    }

    /// Resolves names again as they come due, until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            let (due, next) = {
                let mut m = self.members();
                let now = Instant::now();
                let interval = m.timing.interval;
                let mut due = Vec::new();
                for (key, n) in m.names.iter_mut().filter(|(_, n)| n.next <= now) {
                    // Set now, so a lookup that never reports back is retried.
                    n.next = now + interval;
                    due.push((key.clone(), n.host.clone(), n.port));
                }
                (due, m.names.values().map(|n| n.next).min())
            };
            if due.is_empty() {
                match next {
                    Some(at) => tokio::select! {
                        _ = tokio::time::sleep_until(at) => {}
                        _ = self.wake.notified() => {}
                    },
                    None => self.wake.notified().await,
                }
                continue;
            }
            let results = self.lookup_all(due).await;
            let mut m = self.members();
            let timing = m.timing.clone();
            let mut changed = false;
            for (key, _, _, result) in results {
                // A name that left the configuration meanwhile is ignored.
                if let Some(name) = m.names.get_mut(&key) {
                    changed |= self.record(&key, name, result, &timing);
                }
            }
            if changed {
                self.rebuild(&m, false);
            }
        }
    }

    /// Looks every `(key, host, port)` up concurrently.
    async fn lookup_all(
        &self,
        names: Vec<(String, String, u16)>,
    ) -> Vec<(String, String, u16, io::Result<Answer>)> {
        let mut lookups = JoinSet::new();
        for (key, host, port) in names {
            let resolver = self.resolver.clone();
            lookups.spawn(async move {
                let result = lookup(&*resolver, &host, port).await;
                (key, host, port, result)
            });
        }
        let mut out = Vec::new();
        while let Some(joined) = lookups.join_next().await {
            if let Ok(r) = joined {
                out.push(r);
            }
        }
        out
    }

    /// Applies one lookup's result to `name`. Returns whether its addresses changed.
    fn record(
        &self,
        key: &str,
        name: &mut Name,
        result: io::Result<Answer>,
        timing: &config::Discovery,
    ) -> bool {
        let now = Instant::now();
        let changed = match result {
            Ok(Answer { mut addrs, ttl }) if !addrs.is_empty() => {
                addrs.sort();
                addrs.dedup();
                name.failures = 0;
                name.next = now + refresh_after(ttl, timing);
                if name.addrs.as_ref() == Some(&addrs) {
                    false
                } else {
                    tracing::info!(name = key, addresses = ?addrs, "backend name resolved");
                    name.addrs = Some(addrs);
                    true
                }
            }
            other => {
                let why = match other {
                    Ok(_) => "it has no addresses".to_owned(),
                    Err(e) => e.to_string(),
                };
                name.failures = name.failures.saturating_add(1);
                let doublings = (name.failures - 1).min(16);
                let retry = timing
                    .min_interval
                    .saturating_mul(1 << doublings)
                    .min(timing.interval);
                name.next = now + retry;
                self.metrics
                    .discovery_failures
                    .with_label_values(&[key])
                    .inc();
                match &name.addrs {
                    None => tracing::error!(
                        name = key,
                        error = %why,
                        retry_in = ?retry,
                        "cannot resolve a backend name: it has no backends until it resolves"
                    ),
                    Some(kept) => tracing::warn!(
                        name = key,
                        error = %why,
                        kept = kept.len(),
                        retry_in = ?retry,
                        "cannot resolve a backend name: keeping its last addresses"
                    ),
                }
                false
            }
        };
        let count = name.addrs.as_ref().map_or(0, Vec::len);
        self.metrics
            .discovery_backends
            .with_label_values(&[key])
            .set(count as i64);
        changed
    }

    /// Builds the backend list from specs and addresses and publishes it.
    /// Called with the members locked, so rebuilds and forgetting are serialized.
    fn rebuild(self: &Arc<Self>, m: &Members, renew: bool) -> Change {
        let current = self.upstreams.load().all.clone();
        let mut change = Change::default();
        let mut next: Vec<Arc<Backend>> = Vec::new();
        for spec in &m.specs {
            let addrs = match literal(spec) {
                Some(addr) => vec![addr],
                None => match m.names.get(&spec.address).and_then(|n| n.addrs.clone()) {
                    Some(addrs) => addrs,
                    None => {
                        change.unresolved.push(spec.address.clone());
                        Vec::new()
                    }
                },
            };
            for addr in addrs {
                // An address two specs lead to is one backend: the first spec's.
                if next.iter().any(|b| b.addr == addr) {
                    continue;
                }
                let backend = match current.iter().find(|b| b.addr == addr) {
                    Some(old) if !renew && old.spec == *spec => old.clone(),
                    Some(old) => {
                        let new = Arc::new((m.make)(spec, addr));
                        new.inherit(old);
                        change.replaced.push((old.clone(), new.clone()));
                        new
                    }
                    None => {
                        let new = Arc::new((m.make)(spec, addr));
                        change.added.push(new.clone());
                        new
                    }
                };
                next.push(backend);
            }
        }
        let removed = self.upstreams.replace(next);
        for b in &change.added {
            tracing::info!(backend = %b.name, configured = %b.spec, "backend added");
        }
        for (_, b) in &change.replaced {
            tracing::info!(backend = %b.name, configured = %b.spec, "backend updated");
        }
        for b in removed {
            let replaced = change.replaced.iter().any(|(o, _)| Arc::ptr_eq(o, &b));
            if !replaced {
                tracing::info!(
                    backend = %b.name,
                    in_flight = b.in_flight(),
                    "backend removed: it finishes its requests in flight"
                );
                change.removed.push(b.clone());
            }
            self.forget_when_drained(b);
        }
        change
    }

    /// Once `b` has no request in flight, drops it from the leaving list and
    /// forgets its metric series (unless a backend at its address remains).
    fn forget_when_drained(self: &Arc<Self>, b: Arc<Backend>) {
        let this = self.clone();
        tokio::spawn(async move {
            while b.in_flight() > 0 {
                tokio::time::sleep(DRAIN_POLL).await;
            }
            let _m = this.members();
            this.upstreams.forget(&b);
            let still = this.upstreams.load().all.iter().any(|o| o.name == b.name);
            if !still {
                this.metrics.remove_backend(&b.name);
                tracing::info!(backend = %b.name, "removed backend finished its requests");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ttl_sets_the_refresh_within_the_intervals() {
        let timing = config::Discovery {
            interval: Duration::from_secs(5),
            min_interval: Duration::from_secs(1),
        };
        let secs = |s: u64| Some(Duration::from_secs(s));
        assert_eq!(refresh_after(secs(3), &timing), Duration::from_secs(3));
        assert_eq!(refresh_after(secs(600), &timing), timing.interval, "capped");
        assert_eq!(
            refresh_after(secs(0), &timing),
            timing.min_interval,
            "floor"
        );
        assert_eq!(refresh_after(None, &timing), timing.interval);
    }
}
