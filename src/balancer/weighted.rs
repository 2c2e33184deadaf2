//! Smooth weighted round-robin, as nginx does it.
//!
//! Every pick adds each backend's weight to its running total, takes the
//! backend with the largest total and subtracts the sum of weights from it.
//! Weights 3:1 give `a a b a` (never `a a a b`), and the shares are exact over
//! each cycle of `sum(weights)` picks.
//!
//! The sequence depends only on the weights, so it is computed once per set
//! of backends (a *schedule*, one cycle long) and each pick is then a counter
//! increment and a table lookup: O(1) instead of nginx's O(n) scan under a
//! lock. While slow start ramps a backend's weight, schedules expire every
//! 100 ms so the share follows the ramp.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tokio::time::Instant;

use super::Balance;
use crate::upstream::Backend;

/// Schedules longer than this are not built; picks then scan (O(n)) instead.
const MAX_SCHEDULE: u64 = 1 << 20;
/// How long a schedule built while some weight was ramping stays valid.
const RAMP_REFRESH: Duration = Duration::from_millis(100);

/// One cycle of smooth weighted round-robin for one set of backends.
struct Schedule {
    /// Identifies the set it was built for: a hash of the backend pointers.
    fingerprint: u64,
    /// The backends it was built for. Holding them keeps their addresses
    /// from being reused by new backends, so a pointer hash cannot match a
    /// different set. (A backend's weight never changes: a new weight is a
    /// new `Backend`.)
    _members: Box<[Arc<Backend>]>,
    len: usize,
    /// Indexes into the healthy slice, one cycle long.
    order: Box<[u32]>,
    /// Set when a weight was ramping (slow start) at build time.
    expires: Option<Instant>,
}

/// Smooth weighted round-robin; honours slow start through effective weights.
pub struct SmoothWeighted {
    slow_start: Duration,
    next: AtomicUsize,
    schedule: ArcSwapOption<Schedule>,
    /// Serializes rebuilds and the O(n) fallback.
    lock: Mutex<()>,
}

impl SmoothWeighted {
    pub fn new(slow_start: Duration) -> SmoothWeighted {
        SmoothWeighted {
            slow_start,
            next: AtomicUsize::new(0),
            schedule: ArcSwapOption::empty(),
            lock: Mutex::new(()),
        }
    }

    /// Cheap identity of a backend set: a hash of the pointers alone, read
    /// from the slice without touching the backends.
    fn fingerprint(healthy: &[Arc<Backend>]) -> u64 {
        healthy.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ Arc::as_ptr(b) as u64).wrapping_mul(0x100_0000_01b3)
        })
    }

    fn build(&self, healthy: &[Arc<Backend>], fingerprint: u64) -> Option<Arc<Schedule>> {
        let weights: Vec<i64> = healthy
            .iter()
            .map(|b| i64::from(b.effective_weight(self.slow_start)))
            .collect();
        let ramping = weights
            .iter()
            .zip(healthy)
            .any(|(&w, b)| w != i64::from(b.weight) * 10);
        let g = weights.iter().fold(0, |g, &w| gcd(g, w)).max(1);
        let weights: Vec<i64> = weights.iter().map(|w| w / g).collect();
        let total: i64 = weights.iter().sum();
        if total as u64 * healthy.len() as u64 > MAX_SCHEDULE * 4 || total as u64 > MAX_SCHEDULE {
            return None;
        }
        let mut current = vec![0i64; weights.len()];
        let mut order = Vec::with_capacity(total as usize);
        for _ in 0..total {
            let mut best = 0;
            for (i, w) in weights.iter().enumerate() {
                current[i] += w;
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            order.push(best as u32);
        }
        Some(Arc::new(Schedule {
            fingerprint,
            _members: healthy.into(),
            len: healthy.len(),
            order: order.into_boxed_slice(),
            expires: ramping.then(|| Instant::now() + RAMP_REFRESH),
        }))
    }

    /// nginx's O(n) scan, for sets whose schedule would be too long.
    fn scan<'a>(&self, healthy: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>> {
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        let mut best: Option<(&Arc<Backend>, i64)> = None;
        for b in healthy {
            let w = i64::from(b.effective_weight(self.slow_start));
            total += w;
            let current = b.rr_current.load(Ordering::Relaxed) + w;
            b.rr_current.store(current, Ordering::Relaxed);
            if best.is_none_or(|(_, c)| current > c) {
                best = Some((b, current));
            }
        }
        let (chosen, current) = best?;
        chosen.rr_current.store(current - total, Ordering::Relaxed);
        Some(chosen)
    }
}

fn gcd(a: i64, b: i64) -> i64 {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

impl Balance for SmoothWeighted {
    fn pick<'a>(&self, healthy: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>> {
        if healthy.len() <= 1 {
            return healthy.first();
        }
        let fingerprint = Self::fingerprint(healthy);
        let fresh = |s: &Schedule| {
            s.fingerprint == fingerprint
                && s.len == healthy.len()
                && s.expires.is_none_or(|t| Instant::now() < t)
        };
        let mut current = self.schedule.load_full();
        if !current.as_deref().is_some_and(fresh) {
            let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            current = self.schedule.load_full();
            if !current.as_deref().is_some_and(fresh) {
                current = self.build(healthy, fingerprint);
                self.schedule.store(current.clone());
            }
        }
        match current {
            Some(s) => {
                let n = self.next.fetch_add(1, Ordering::Relaxed);
                healthy.get(s.order[n % s.order.len()] as usize)
            }
            None => self.scan(healthy),
        }
    }

    fn name(&self) -> &'static str {
        "round-robin (smooth weighted)"
    }
}
