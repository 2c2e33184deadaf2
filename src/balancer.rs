//! Load-balancing algorithms behind one trait that never sees a request.
//!
//! [`Balance::pick`] gets the backends in rotation and nothing else: no
//! headers, no cookies, no client address. Routing by client identity (sticky
//! sessions) therefore cannot be built by accident: the information is not there.

use std::sync::Arc;
use std::time::Duration;

use crate::config::Algorithm;
use crate::upstream::Backend;

mod least_connections;
mod round_robin;
mod weighted;

pub use least_connections::LeastConnections;
pub use round_robin::RoundRobin;
pub use weighted::SmoothWeighted;

/// An algorithm that picks one backend out of those in rotation.
pub trait Balance: Send + Sync {
    /// Picks a backend from `healthy` (in configuration order), or `None` if it is empty.
    fn pick<'a>(&self, healthy: &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>>;

    /// The algorithm's name, for logs.
    fn name(&self) -> &'static str;
}

/// Builds the balancer for `algorithm`.
///
/// `weighted` says whether weights can differ (configured weights other than 1,
/// or slow start ramping a returning backend): plain round-robin is then
/// replaced by the smooth weighted variant.
pub fn build(algorithm: Algorithm, weighted: bool, slow_start: Duration) -> Box<dyn Balance> {
    match (algorithm, weighted) {
        (Algorithm::RoundRobin, false) => Box::new(RoundRobin::new()),
        (Algorithm::RoundRobin, true) => Box::new(SmoothWeighted::new(slow_start)),
        (Algorithm::LeastConnections, w) => Box::new(LeastConnections::new(w, slow_start)),
    }
}

#[cfg(test)]
mod tests;
