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
    slow_start: Duration,
}

impl LeastConnections {
    pub fn new(slow_start: Duration) -> LeastConnections {
        LeastConnections {
            start: AtomicUsize::new(0),
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
        let mut best = &healthy[start];
        // Compare load / weight as cross products: (in_flight + 1) * other_weight.
        // The +1 makes a zero load still prefer the heavier backend.
        let load = |b: &Backend| u64::from(b.in_flight()) + 1;
        let weight = |b: &Backend| u64::from(b.effective_weight(self.slow_start));
        let (mut best_load, mut best_weight) = (load(best), weight(best));
        for i in 1..n {
            let b = &healthy[(start + i) % n];
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
