//! Hot reload: re-read the configuration and swap it in without dropping a request.
//!
//! One entry point, [`Reloader::reload`], serves every trigger: SIGHUP (see
//! `cli/serve.rs`), the file watcher ([`watch_file`]) and `POST /api/reload`
//! on the admin listener. It loads the configuration as `serve` did at start
//! (file, then the same environment and flags), and either refuses it (the
//! error `unstick check` would print; the running configuration stays) or
//! applies it:
//!
//! - the request path's [`Settings`] (algorithm, weights, response-header
//!   timeout, retries, affinity rules) are swapped whole; requests in flight
//!   keep the settings they started with;
//! - health settings are swapped on [`Health`](crate::health::Health);
//! - backends go through [`Discovery::apply`]: those that stay keep their
//!   state and connections, those that leave finish their requests in flight;
//! - keys in [`RESTART_ONLY`] (listeners, the accept loop's limits and client
//!   timeouts, TLS, the access log format) keep their running values and are
//!   reported as needing a restart.
//!
//! Reloads are serialized; the running configuration is the last one applied.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;

use crate::config::{Config, ConfigError};
use crate::proxy::{Proxy, Settings};
use crate::upstream::discovery::{Change, Discovery};
use crate::upstream::State;

/// Loads the configuration as `serve` did at start.
pub type Source = Arc<dyn Fn() -> Result<Config, ConfigError> + Send + Sync>;

/// What asked for a reload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// SIGHUP.
    Signal,
    /// The config file changed.
    Watch,
    /// `POST /api/reload`.
    Admin,
}

impl Trigger {
    /// The trigger's name in logs and in the API's answer.
    pub fn as_str(self) -> &'static str {
        match self {
            Trigger::Signal => "sighup",
            Trigger::Watch => "file-watch",
            Trigger::Admin => "admin-api",
        }
    }
}

/// Why a reload was refused. The running configuration stays.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new configuration is invalid (or unreadable).
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// Started without a configuration source (an in-process `App`).
    #[error("this instance was started without a configuration source to reload from")]
    NoSource,
}

/// What a reload changed.
#[derive(Debug, Clone, Serialize)]
pub struct ReloadSummary {
    /// `sighup`, `file-watch` or `admin-api`.
    pub trigger: &'static str,
    /// Keys whose new values now apply.
    pub applied: Vec<&'static str>,
    /// Keys that changed but keep their running values until a restart.
    pub restart_required: Vec<&'static str>,
    pub backends: BackendChanges,
}

/// The outcome of the latest reload (SIGHUP, file change or admin API).
#[derive(Debug, Clone)]
pub struct LastReload {
    pub at: std::time::SystemTime,
    pub trigger: Trigger,
    /// Whether the new configuration was applied.
    pub ok: bool,
    /// What changed, or why it was refused.
    pub detail: String,
}

/// How the backend set changed (names are resolved `IP:PORT`).
#[derive(Debug, Clone, Default, Serialize)]
pub struct BackendChanges {
    /// New addresses.
    pub added: Vec<String>,
    /// Out of rotation; their requests in flight finish.
    pub removed: Vec<String>,
    /// New weight, protocol or pool settings (state carried over).
    pub updated: Vec<String>,
    /// Configured names that do not resolve yet.
    pub unresolved: Vec<String>,
    /// Backends configured now.
    pub total: usize,
}

impl ReloadSummary {
    /// Whether anything changed (applied or not).
    pub fn changed(&self) -> bool {
        !self.applied.is_empty() || !self.restart_required.is_empty()
    }

    /// One line for the log.
    pub fn describe(&self) -> String {
        if !self.changed() {
            return "no changes".to_owned();
        }
        let mut out = String::new();
        if !self.applied.is_empty() {
            out.push_str(&format!("applied {}", self.applied.join(", ")));
        }
        if !self.restart_required.is_empty() {
            if !out.is_empty() {
                out.push_str("; ");
            }
            out.push_str(&format!(
                "changed but kept until a restart: {}",
                self.restart_required.join(", ")
            ));
        }
        let b = &self.backends;
        out.push_str(&format!(
            "; backends: {} added, {} removed, {} updated, {} in total",
            b.added.len(),
            b.removed.len(),
            b.updated.len(),
            b.total
        ));
        if !b.unresolved.is_empty() {
            out.push_str(&format!(" ({} unresolved)", b.unresolved.join(", ")));
        }
        out
    }
}

/// Keys a reload cannot change: they keep their running values (and are
/// reported) until a restart. The listeners are bound once; the accept loop,
/// TLS and the access logger are built from the rest at start.
pub const RESTART_ONLY: &[&str] = &[
    "listen",
    "workers",
    "http1_fast_path",
    "admin",
    "access_log",
    "timeouts.client_header",
    "timeouts.client_idle",
    "timeouts.client_stall",
    "timeouts.drain",
    "limits.max_connections",
    "limits.max_header_bytes",
    "limits.max_headers",
    "tls.cert",
    "tls.key",
    "tls.sni",
    "tls.reload_interval",
    "tls.redirect_listen",
    "http2.enabled",
    "http2.max_concurrent_streams",
    "http2.initial_stream_window",
    "http2.initial_connection_window",
    "upstream_tls.ca_file",
    "upstream_tls.client_cert",
    "upstream_tls.client_key",
];

/// Keys whose change rebuilds every backend (they shape its connection pool).
const POOL_KEYS: &[&str] = &[
    "timeouts.connect",
    "timeouts.upstream_idle",
    "limits.upstream_idle_per_backend",
];

/// Reads one key's value, for comparing two configurations.
type Field = fn(&Config) -> String;

fn d(v: impl std::fmt::Debug) -> String {
    format!("{v:?}")
}

/// Every key (as in [`KEYS`](crate::config::KEYS)) and how to read it.
const FIELDS: &[(&str, Field)] = &[
    ("listen", |c| d(c.listen)),
    ("workers", |c| d(c.workers)),
    ("backend_header", |c| d(&c.backend_header)),
    ("http1_fast_path", |c| d(c.http1_fast_path)),
    ("underscores_in_headers", |c| d(c.underscores_in_headers)),
    ("admin", |c| d(c.admin)),
    ("algorithm", |c| d(c.algorithm)),
    ("access_log", |c| d(c.access_log)),
    ("backends", |c| d(&c.backends)),
    ("timeouts.connect", |c| d(c.timeouts.connect)),
    ("timeouts.response_header", |c| {
        d(c.timeouts.response_header)
    }),
    ("timeouts.client_header", |c| d(c.timeouts.client_header)),
    ("timeouts.client_idle", |c| d(c.timeouts.client_idle)),
    ("timeouts.client_stall", |c| d(c.timeouts.client_stall)),
    ("timeouts.upstream_stall", |c| d(c.timeouts.upstream_stall)),
    ("timeouts.upstream_idle", |c| d(c.timeouts.upstream_idle)),
    ("timeouts.drain", |c| d(c.timeouts.drain)),
    ("limits.max_connections", |c| d(c.limits.max_connections)),
    ("limits.max_header_bytes", |c| d(c.limits.max_header_bytes)),
    ("limits.max_headers", |c| d(c.limits.max_headers)),
    ("limits.max_request_body", |c| d(c.limits.max_request_body)),
    ("limits.upstream_idle_per_backend", |c| {
        d(c.limits.upstream_idle_per_backend)
    }),
    ("retries.enabled", |c| d(c.retries.enabled)),
    ("retries.max_per_request", |c| d(c.retries.max_per_request)),
    ("retries.budget_ratio", |c| d(c.retries.budget_ratio)),
    ("retries.budget_min_per_second", |c| {
        d(c.retries.budget_min_per_second)
    }),
    ("retries.replay_buffer", |c| d(c.retries.replay_buffer)),
    ("retries.response_buffer", |c| d(c.retries.response_buffer)),
    ("retries.response_hold", |c| d(c.retries.response_hold)),
    ("health.eject_after_failures", |c| {
        d(c.health.eject_after_failures)
    }),
    ("health.backoff", |c| d(c.health.backoff)),
    ("health.slow_start", |c| d(c.health.slow_start)),
    ("health.active.enabled", |c| d(c.health.active.enabled)),
    ("health.active.path", |c| d(&c.health.active.path)),
    ("health.active.interval", |c| d(c.health.active.interval)),
    ("health.active.timeout", |c| d(c.health.active.timeout)),
    ("health.active.rise", |c| d(c.health.active.rise)),
    ("health.active.fall", |c| d(c.health.active.fall)),
    ("health.active.expect_status", |c| {
        d(c.health.active.expect_status)
    }),
    ("affinity_cookies.policy", |c| d(c.affinity.policy)),
    ("affinity_cookies.names", |c| d(&c.affinity.names)),
    ("affinity_cookies.exempt", |c| d(&c.affinity.exempt)),
    ("tls.cert", |c| d(c.tls.as_ref().map(|t| &t.cert))),
    ("tls.key", |c| d(c.tls.as_ref().map(|t| &t.key))),
    ("tls.sni", |c| d(c.tls.as_ref().map(|t| &t.sni))),
    ("tls.reload_interval", |c| {
        d(c.tls.as_ref().map(|t| t.reload_interval))
    }),
    ("tls.redirect_listen", |c| {
        d(c.tls.as_ref().map(|t| t.redirect_listen))
    }),
    ("http2.enabled", |c| d(c.http2.enabled)),
    ("http2.max_concurrent_streams", |c| {
        d(c.http2.max_concurrent_streams)
    }),
    ("http2.initial_stream_window", |c| {
        d(c.http2.initial_stream_window)
    }),
    ("http2.initial_connection_window", |c| {
        d(c.http2.initial_connection_window)
    }),
    ("upstream_tls.ca_file", |c| d(&c.upstream_tls.ca_file)),
    ("upstream_tls.client_cert", |c| {
        d(&c.upstream_tls.client_cert)
    }),
    ("upstream_tls.client_key", |c| d(&c.upstream_tls.client_key)),
    ("discovery.interval", |c| d(c.discovery.interval)),
    ("discovery.min_interval", |c| d(c.discovery.min_interval)),
    ("reload.watch", |c| d(c.reload.watch)),
    ("session_watch.enabled", |c| d(c.session_watch.enabled)),
    ("session_watch.entries", |c| d(c.session_watch.entries)),
    ("session_watch.names", |c| d(&c.session_watch.names)),
    ("session_watch.ignore", |c| d(&c.session_watch.ignore)),
    ("session_watch.recent", |c| d(c.session_watch.recent)),
    ("session_watch.warn_share", |c| {
        d(c.session_watch.warn_share)
    }),
    ("session_watch.warn_window", |c| {
        d(c.session_watch.warn_window)
    }),
    ("session_watch.warn_min_hops", |c| {
        d(c.session_watch.warn_min_hops)
    }),
];

/// The keys whose values differ, in [`KEYS`](crate::config::KEYS) order.
pub fn changed_keys(old: &Config, new: &Config) -> Vec<&'static str> {
    FIELDS
        .iter()
        .filter(|(_, read)| read(old) != read(new))
        .map(|(key, _)| *key)
        .collect()
}

/// Puts the running values of every [`RESTART_ONLY`] key back into `new`.
fn keep_restart_only(new: &mut Config, running: &Config) {
    new.listen = running.listen;
    new.workers = running.workers;
    new.http1_fast_path = running.http1_fast_path;
    new.admin = running.admin;
    new.access_log = running.access_log;
    new.timeouts.client_header = running.timeouts.client_header;
    new.timeouts.client_idle = running.timeouts.client_idle;
    new.timeouts.client_stall = running.timeouts.client_stall;
    new.timeouts.drain = running.timeouts.drain;
    new.limits.max_connections = running.limits.max_connections;
    new.limits.max_header_bytes = running.limits.max_header_bytes;
    new.limits.max_headers = running.limits.max_headers;
    new.tls = running.tls.clone();
    new.http2 = running.http2.clone();
    new.upstream_tls = running.upstream_tls.clone();
}

/// Applies new configurations to a running balancer.
pub struct Reloader {
    proxy: Arc<Proxy>,
    discovery: Arc<Discovery>,
    source: Option<Source>,
    /// The configuration running now (restart-only keys as at start).
    running: tokio::sync::Mutex<Config>,
    /// `reload.watch` of the running configuration.
    watch: AtomicBool,
    last: std::sync::Mutex<Option<LastReload>>,
}

// === impl Reloader ===

impl Reloader {
    /// A reloader for a balancer started with `running`. Without a
    /// `source`, [`Reloader::reload`] refuses ([`Reloader::apply`] still works).
    pub fn new(
        proxy: Arc<Proxy>,
        discovery: Arc<Discovery>,
        running: Config,
        source: Option<Source>,
    ) -> Reloader {
        Reloader {
            proxy,
            discovery,
            source,
            watch: AtomicBool::new(running.reload.watch),
            running: tokio::sync::Mutex::new(running),
            last: std::sync::Mutex::new(None),
        }
    }

    /// The latest reload's outcome, if there was one.
    pub fn last(&self) -> Option<LastReload> {
        self.last.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn record(&self, trigger: Trigger, ok: bool, detail: String) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(LastReload {
            at: std::time::SystemTime::now(),
            trigger,
            ok,
            detail,
        });
    }

    /// The configuration running now.
    pub async fn running(&self) -> Config {
        self.running.lock().await.clone()
    }

    /// Whether the file watcher should reload on a change.
    pub fn watching(&self) -> bool {
        self.watch.load(Ordering::Relaxed)
    }

    /// Loads the configuration again and applies it; logs and counts the
    /// outcome. An invalid configuration is refused with the error `unstick
    /// check` prints, and the running one stays.
    pub async fn reload(&self, trigger: Trigger) -> Result<ReloadSummary, ReloadError> {
        let Some(source) = self.source.clone() else {
            return Err(ReloadError::NoSource);
        };
        let loaded = tokio::task::spawn_blocking(move || source())
            .await
            .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
        let counter = &self.proxy.metrics.config_reloads;
        match loaded {
            Err(e) => {
                counter.with_label_values(&["failure"]).inc();
                self.record(trigger, false, e.to_string());
                tracing::error!(
                    "configuration reload ({}) refused, the running configuration stays: error: {e}",
                    trigger.as_str()
                );
                Err(ReloadError::Config(e))
            }
            Ok(config) => {
                let summary = self.apply(config, trigger).await;
                if trigger == Trigger::Watch && !summary.changed() {
                    tracing::debug!("config file rewritten without changes");
                    return Ok(summary);
                }
                counter.with_label_values(&["success"]).inc();
                self.record(trigger, true, summary.describe());
                tracing::info!(
                    "configuration reloaded ({}): {}",
                    trigger.as_str(),
                    summary.describe()
                );
                if !summary.restart_required.is_empty() {
                    tracing::warn!(
                        keys = %summary.restart_required.join(", "),
                        "these keys changed but apply only after a restart"
                    );
                }
                Ok(summary)
            }
        }
    }

    /// Applies a validated configuration: everything but [`RESTART_ONLY`]
    /// keys, which are reported.
    pub async fn apply(&self, new: Config, trigger: Trigger) -> ReloadSummary {
        let mut running = self.running.lock().await;
        let changed = changed_keys(&running, &new);
        let (restart_required, applied): (Vec<&str>, Vec<&str>) =
            changed.into_iter().partition(|k| RESTART_ONLY.contains(k));
        let mut summary = ReloadSummary {
            trigger: trigger.as_str(),
            applied,
            restart_required,
            backends: BackendChanges {
                total: self.proxy.upstreams.load().all.len(),
                ..Default::default()
            },
        };
        if summary.applied.is_empty() {
            return summary;
        }
        let mut new = new;
        keep_restart_only(&mut new, &running);

        let proxy = &self.proxy;
        proxy.set_settings(Settings::from_config(&new));
        let was_active = running.health.active.enabled;
        proxy.health.set_config(new.health.clone());
        self.watch.store(new.reload.watch, Ordering::Relaxed);
        let renew = summary.applied.iter().any(|k| POOL_KEYS.contains(k));
        let make = match renew.then(|| crate::upstream::backend_factory(&new, &proxy.metrics)) {
            Some(Ok(make)) => Some(make),
            Some(Err(e)) => {
                tracing::error!(error = %e, "backend TLS settings could not be loaded: pools keep their old settings");
                None
            }
            None => None,
        };
        let change = self
            .discovery
            .apply(new.backends.clone(), make, new.discovery.clone())
            .await;

        // Backends out of rotation need something to bring them back.
        let out = |b: &Arc<crate::upstream::Backend>| {
            matches!(b.state(), State::Ejected | State::Draining)
        };
        if was_active && !new.health.active.enabled {
            for b in proxy.upstreams.load().all.iter().filter(|b| out(b)) {
                proxy.health.watch_return(b);
            }
        }
        for (_, b) in change.replaced.iter().filter(|(_, b)| out(b)) {
            proxy.health.watch_return(b);
        }
        summary.backends = backend_changes(&change, proxy.upstreams.load().all.len());
        *running = new;
        summary
    }
}

fn backend_changes(change: &Change, total: usize) -> BackendChanges {
    let names = |list: &mut dyn Iterator<Item = &Arc<crate::upstream::Backend>>| {
        list.map(|b| b.name.to_string()).collect()
    };
    BackendChanges {
        added: names(&mut change.added.iter()),
        removed: names(&mut change.removed.iter()),
        updated: names(&mut change.replaced.iter().map(|(_, b)| b)),
        unresolved: change.unresolved.clone(),
        total,
    }
}

// === the file watcher ===

/// How often the config file is checked.
const WATCH_POLL: Duration = Duration::from_secs(1);
/// Files larger than this are not hashed (metadata alone tells changes).
const MAX_HASHED: u64 = 16 << 20;

/// What tells one version of the file from another.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
    hash: u64,
}

fn fingerprint(path: &Path) -> Option<Fingerprint> {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks, so a swapped Kubernetes ConfigMap
    // (`..data` symlink) shows as a new inode.
    let meta = std::fs::metadata(path).ok()?;
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    if meta.len() <= MAX_HASHED {
        std::fs::read(path).ok()?.hash(&mut hasher);
    }
    Some(Fingerprint {
        modified: meta.modified().ok(),
        len: meta.len(),
        inode: meta.ino(),
        hash: hasher.finish(),
    })
}

/// [`fingerprint`] off the runtime's threads.
async fn fingerprint_blocking(path: &Path) -> Option<Fingerprint> {
    let path = path.to_owned();
    tokio::task::spawn_blocking(move || fingerprint(&path))
        .await
        .ok()
        .flatten()
}

// === impl WatchedFile ===

/// A config file to watch, with the version of it seen before the running
/// configuration was read from it.
#[derive(Debug, Clone)]
pub struct WatchedFile {
    path: PathBuf,
    seen: Option<Fingerprint>,
}

impl WatchedFile {
    /// Takes the file's fingerprint now: call it *before* reading the
    /// configuration, so an edit made between the read and the watcher's
    /// start is still seen (one made before the read reloads the same text,
    /// which changes nothing).
    pub fn before_read(path: PathBuf) -> WatchedFile {
        let seen = fingerprint(&path);
        WatchedFile { path, seen }
    }
}

/// Checks the file every second (modification time, size, inode and a hash
/// of the content) and reloads when it changed and `reload.watch` is on.
/// A change is applied once the file has been stable for 100 ms, so a
/// file being written is not read half-way.
pub async fn watch_file(reloader: Arc<Reloader>, file: WatchedFile) {
    let WatchedFile { path, mut seen } = file;
    let mut missing_logged = false;
    loop {
        tokio::time::sleep(WATCH_POLL).await;
        let mut now = fingerprint_blocking(&path).await;
        if now == seen {
            continue;
        }
        for _ in 0..20 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let again = fingerprint_blocking(&path).await;
            if again == now {
                break;
            }
            now = again;
        }
        seen = now.clone();
        if now.is_none() {
            if !missing_logged {
                tracing::warn!(file = %path.display(), "config file is gone; the running configuration stays");
                missing_logged = true;
            }
            continue;
        }
        missing_logged = false;
        if reloader.watching() {
            let _ = reloader.reload(Trigger::Watch).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{env_overrides, KEYS};

    /// A value other than the default for every key, as environment text.
    fn other_value(key: &str) -> Option<&'static str> {
        Some(match key {
            "listen" => "127.0.0.1:1",
            "workers" => "3",
            "backend_header" => "x-served-by",
            "admin" => "off",
            "algorithm" => "least-connections",
            "access_log" => "common",
            "backends" => "127.0.0.1:2",
            "timeouts.connect"
            | "timeouts.response_header"
            | "timeouts.client_header"
            | "timeouts.client_idle"
            | "timeouts.client_stall"
            | "timeouts.upstream_stall"
            | "timeouts.upstream_idle"
            | "timeouts.drain" => "7s",
            "retries.response_hold" => "70ms",
            "limits.max_connections"
            | "limits.max_headers"
            | "limits.upstream_idle_per_backend" => "9",
            "limits.max_header_bytes"
            | "retries.replay_buffer"
            | "retries.response_buffer"
            | "limits.max_request_body" => "9KiB",
            "underscores_in_headers" => "true",
            "retries.enabled" | "http2.enabled" | "reload.watch" | "http1_fast_path" => "false",
            "health.active.enabled" => "true",
            "retries.max_per_request" => "5",
            "retries.budget_ratio" => "0.5",
            "retries.budget_min_per_second" => "3",
            "health.eject_after_failures" | "health.active.rise" | "health.active.fall" => "7",
            "health.backoff"
            | "health.slow_start"
            | "health.active.interval"
            | "health.active.timeout" => "7s",
            "health.active.path" => "/up",
            "health.active.expect_status" => "2xx",
            "affinity_cookies.policy" => "log",
            "affinity_cookies.names" | "affinity_cookies.exempt" => "x",
            "tls.cert" => "other.pem",
            "tls.key" => "other.key",
            "tls.sni" => r#"[{ names = ["a.example"], cert = "a.pem", key = "a.key" }]"#,
            "tls.reload_interval" => "7s",
            "tls.redirect_listen" => "127.0.0.1:3",
            "http2.max_concurrent_streams" => "9",
            "http2.initial_stream_window" | "http2.initial_connection_window" => "2MiB",
            "upstream_tls.ca_file" => "ca.pem",
            "upstream_tls.client_cert" => "c.pem",
            "upstream_tls.client_key" => "c.key",
            "discovery.interval" => "9s",
            "discovery.min_interval" => "2s",
            "session_watch.enabled" => "false",
            "session_watch.entries" | "session_watch.warn_min_hops" => "99",
            "session_watch.names" | "session_watch.ignore" => "x",
            "session_watch.recent" | "session_watch.warn_window" => "7s",
            "session_watch.warn_share" => "0.5",
            _ => return None,
        })
    }

    fn load(vars: &[(&str, &str)]) -> Config {
        let env = env_overrides(|name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        });
        Config::load(None, &env).unwrap_or_else(|e| panic!("{vars:?}: {e}"))
    }

    #[test]
    fn every_key_is_compared_and_classified() {
        // With TLS on and a client certificate, so every tls key has a value to change.
        let tls = [
            ("UNSTICK_TLS_CERT", "a.pem"),
            ("UNSTICK_TLS_KEY", "a.key"),
            ("UNSTICK_UPSTREAM_TLS_CLIENT_CERT", "u.pem"),
            ("UNSTICK_UPSTREAM_TLS_CLIENT_KEY", "u.key"),
        ];
        let base = load(&tls);
        assert_eq!(
            FIELDS.iter().map(|(k, _)| *k).collect::<Vec<_>>(),
            KEYS.iter().map(|k| k.path).collect::<Vec<_>>(),
            "FIELDS must list KEYS in order"
        );
        for spec in KEYS {
            let value = other_value(spec.path)
                .unwrap_or_else(|| panic!("no test value for `{}`", spec.path));
            let env = spec.env_var();
            let mut vars = tls.to_vec();
            vars.retain(|(k, _)| *k != env);
            vars.push((&env, value));
            let new = load(&vars);
            assert_eq!(changed_keys(&base, &new), [spec.path], "{}", spec.path);
            let mut kept = new.clone();
            keep_restart_only(&mut kept, &base);
            let restart = RESTART_ONLY.contains(&spec.path);
            // A restart-only key is put back; any other key is left as loaded.
            assert_eq!(kept == base, restart, "{}", spec.path);
            assert_eq!(kept == new, !restart, "{}", spec.path);
        }
    }
}
