//! Smooth weighted round-robin, as nginx does it.
//!
//! Every pick adds each backend's weight to its running total, takes the
//! backend with the largest total and subtracts the sum of weights from it.
//! Weights 3:1 give `a a b a`-like interleavings (never `a a a b`), and the
//! shares are exact over each cycle of `sum(weights)` picks.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::Balance;
use crate::upstream::Backend;

/// Smooth weighted round-robin; honours slow start through effective weights.
#[derive(Debug)]
pub struct SmoothWeighted {
    /// Serializes picks: the running totals must move together. O(n) under
    /// the lock, with no allocation.
    lock: Mutex<()>,
    slow_start: Duration,
}

impl SmoothWeighted {
    pub fn new(slow_start: Duration) -> SmoothWeighted {
        SmoothWeighted {
            lock: Mutex::new(()),
            slow_start,
        }
    }
}

impl Balance for SmoothWeighted {
    fn pick<'a>(&self, healthy: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>> {
        if healthy.len() <= 1 {
            return healthy.first();
        }
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

    fn name(&self) -> &'static str {
        "round-robin (smooth weighted)"
    }
}
