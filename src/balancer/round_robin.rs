//! Plain round-robin: equal weights, one shared counter, O(1) per pick.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::Balance;
use crate::upstream::Backend;

/// Each backend in turn. Used when every weight is equal.
#[derive(Debug, Default)]
pub struct RoundRobin {
    next: AtomicUsize,
}

impl RoundRobin {
    pub fn new() -> RoundRobin {
        RoundRobin::default()
    }
}

impl Balance for RoundRobin {
    fn pick<'a>(&self, healthy: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>> {
        if healthy.is_empty() {
            return None;
        }
        // Relaxed is enough: the counter only spreads load, it orders nothing.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        healthy.get(n % healthy.len())
    }

    fn name(&self) -> &'static str {
        "round-robin"
    }
}
