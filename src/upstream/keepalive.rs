//! How long an idle connection to one backend may still be reused, learned from what the backend says (`Keep-Alive: timeout=N`) and does (connections it closed while idle).
//!
//! A backend closes idle keep-alive connections on its own clock. A
//! connection reused just as the backend closes it fails the request sent
//! on it (the classic spurious 502 of proxies). unstick sends such a
//! request again on a new connection (see `proxy`), and this keeps it from
//! happening twice: a pooled connection idle for longer than the backend
//! keeps one is not reused.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// A limit learned from connections that died idle holds this long, then
/// is forgotten (so one burst of closes, a restart say, does not stop
/// reuse for good).
const FORGET_DEATHS_AFTER: Duration = Duration::from_secs(60);

/// What a backend's keep-alive behaviour has taught. Shared by every worker
/// (atomics, written only when a value changes).
pub struct KeepAlive {
    /// Base for the millisecond times below.
    epoch: Instant,
    /// What the backend announced (`Keep-Alive: timeout=N`), less a margin,
    /// in ms; `u64::MAX`: nothing announced.
    announced_ms: AtomicU64,
    /// Half the shortest idle time after which a pooled connection was
    /// found closed by the backend, in ms; `u64::MAX`: none was.
    died_ms: AtomicU64,
    /// When `died_ms` was last lowered (ms since `epoch`).
    died_at_ms: AtomicU64,
}

// === impl KeepAlive ===

impl KeepAlive {
    pub fn new() -> KeepAlive {
        KeepAlive {
            epoch: Instant::now(),
            announced_ms: AtomicU64::new(u64::MAX),
            died_ms: AtomicU64::new(u64::MAX),
            died_at_ms: AtomicU64::new(0),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The longest a connection may have been idle and still be reused:
    /// `configured` (`timeouts.upstream_idle`), or less if the backend
    /// said or showed it keeps connections for less.
    pub fn reuse_limit(&self, configured: Duration) -> Duration {
        let announced = self.announced_ms.load(Ordering::Relaxed);
        let mut limit_ms = announced;
        let died = self.died_ms.load(Ordering::Relaxed);
        if died != u64::MAX {
            let at = self.died_at_ms.load(Ordering::Relaxed);
            if self.now_ms().saturating_sub(at) <= FORGET_DEATHS_AFTER.as_millis() as u64 {
                limit_ms = limit_ms.min(died);
            } else {
                self.died_ms.store(u64::MAX, Ordering::Relaxed);
            }
        }
        if limit_ms == u64::MAX {
            return configured;
        }
        configured.min(Duration::from_millis(limit_ms))
    }

    /// The backend's response said `Keep-Alive: <value>`: its `timeout=N`
    /// (seconds) is kept, less a margin (a second, or half of it for
    /// shorter ones) for the request's time on the wire.
    pub fn announced(&self, value: &[u8]) {
        let Some(timeout) = timeout_param(value) else {
            return;
        };
        let margin = (timeout / 2).min(Duration::from_secs(1));
        let ms = (timeout - margin).as_millis() as u64;
        if self.announced_ms.load(Ordering::Relaxed) != ms {
            self.announced_ms.store(ms, Ordering::Relaxed);
        }
    }

    /// A pooled connection idle for `idle` turned out closed by the
    /// backend: connections idle half as long are the most reused from now
    /// on (for a while; see [`FORGET_DEATHS_AFTER`]).
    pub fn died_idle(&self, idle: Duration) {
        let ms = (idle / 2).as_millis() as u64;
        if ms < self.died_ms.load(Ordering::Relaxed) {
            self.died_ms.store(ms, Ordering::Relaxed);
        }
        self.died_at_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Forgets what deaths taught (the backend left rotation: the one that
    /// returns may be another process).
    pub fn forget_deaths(&self) {
        if self.died_ms.load(Ordering::Relaxed) != u64::MAX {
            self.died_ms.store(u64::MAX, Ordering::Relaxed);
        }
    }
}

impl Default for KeepAlive {
    fn default() -> Self {
        KeepAlive::new()
    }
}

/// The `timeout` parameter of a `Keep-Alive` field value (`timeout=5,
/// max=100`), in whole seconds as RFC 2068 19.7.1.1 has it; None if there
/// is none or it does not parse.
pub fn timeout_param(value: &[u8]) -> Option<Duration> {
    let text = std::str::from_utf8(value).ok()?;
    text.split(',').find_map(|param| {
        let (name, v) = param.split_once('=')?;
        if !name.trim().eq_ignore_ascii_case("timeout") {
            return None;
        }
        let secs: u64 = v.trim().trim_matches('"').parse().ok()?;
        Some(Duration::from_secs(secs.min(24 * 3600)))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_timeout_parameter() {
        assert_eq!(
            timeout_param(b"timeout=5, max=100"),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            timeout_param(b"max=9,Timeout = \"2\""),
            Some(Duration::from_secs(2))
        );
        assert_eq!(timeout_param(b"max=100"), None);
        assert_eq!(timeout_param(b"timeout=-1"), None);
        assert_eq!(timeout_param(b"timeout=\xff"), None);
    }

    #[test]
    fn the_limit_is_the_shortest_learned() {
        let k = KeepAlive::new();
        let configured = Duration::from_secs(30);
        assert_eq!(k.reuse_limit(configured), configured);
        k.announced(b"timeout=5");
        assert_eq!(k.reuse_limit(configured), Duration::from_secs(4));
        k.announced(b"timeout=1");
        assert_eq!(k.reuse_limit(configured), Duration::from_millis(500));
        k.died_idle(Duration::from_millis(300));
        assert_eq!(k.reuse_limit(configured), Duration::from_millis(150));
        // A later, longer death does not raise it.
        k.died_idle(Duration::from_millis(900));
        assert_eq!(k.reuse_limit(configured), Duration::from_millis(150));
        k.forget_deaths();
        assert_eq!(k.reuse_limit(configured), Duration::from_millis(500));
        // A connection dead at once: nothing is reused.
        k.died_idle(Duration::ZERO);
        assert_eq!(k.reuse_limit(configured), Duration::ZERO);
    }

    #[tokio::test(start_paused = true)]
    async fn deaths_are_forgotten_after_a_while() {
        let k = KeepAlive::new();
        let configured = Duration::from_secs(30);
        k.died_idle(Duration::from_millis(10));
        assert_eq!(k.reuse_limit(configured), Duration::from_millis(5));
        tokio::time::advance(FORGET_DEATHS_AFTER + Duration::from_secs(1)).await;
        assert_eq!(k.reuse_limit(configured), configured);
    }
}
