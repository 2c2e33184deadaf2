//! Least-connections: the backend with the fewest requests in flight.
//!
//! In-flight counts are held until the response body ends, so a backend that
//! streams a long response counts as busy for all of it. The scan starts at a
//! rotating offset, so equal loads spread instead of piling on the first
//! backend. Weights divide the load: `in_flight / weight` is compared.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Balance;
use crate::upstream::Backend;

#[derive(Debug)]
pub struct LeastConnections {
    start: AtomicUsize,
    /// Weights can differ (configured, or ramping under slow start).
    weighted: bool,
    slow_start: Duration,
}

impl LeastConnections {
    /// `weighted`: whether weights can differ; if not, counts are compared directly.
    pub fn new(weighted: bool, slow_start: Duration) -> LeastConnections {
        LeastConnections {
            start: AtomicUsize::new(0),
            weighted,
            slow_start,
        }
    }
}

impl Balance for LeastConnections {
    fn pick<'a>(&self, healthy: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>> {
        let n = healthy.len();
        if n <= 1 {
            return healthy.first();
        }
        let start = self.start.fetch_add(1, Ordering::Relaxed) % n;
        // Scan from `start` to the end, then from 0: no division per step.
        let (head, tail) = healthy.split_at(start);
        let mut best = &tail[0];
        if !self.weighted {
            // Equal weights: compare counts directly.
            let mut least = best.in_flight();
            for b in tail[1..].iter().chain(head) {
                let l = b.in_flight();
                if l < least {
                    best = b;
                    least = l;
                }
            }
            return Some(best);
        }
        // Compare load / weight as cross products: (in_flight + 1) * other_weight.
        // The +1 makes a zero load still prefer the heavier backend.
        let load = |b: &Backend| u64::from(b.in_flight()) + 1;
        let weight = |b: &Backend| u64::from(b.effective_weight(self.slow_start));
        let (mut best_load, mut best_weight) = (load(best), weight(best));
        for b in tail[1..].iter().chain(head) {
            let (l, w) = (load(b), weight(b));
            if l * best_weight < best_load * w {
                best = b;
                best_load = l;
                best_weight = w;
            }
        }
        Some(best)
    }

    fn name(&self) -> &'static str {
        "least-connections"
    }
}
