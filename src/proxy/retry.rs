//! When a failed request may be sent again, and the budget that bounds retries.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, Method};
use tokio::time::Instant;

use super::error::{ProxyError, Retry};

/// The header that makes a POST or PATCH safe to retry after it was sent.
pub static IDEMPOTENCY_KEY: http::HeaderName = http::HeaderName::from_static("idempotency-key");

/// Methods whose repetition has the same effect as one request (RFC 9110 9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

/// Whether a request that was (maybe) sent may be repeated: idempotent, or a
/// POST/PATCH carrying an `Idempotency-Key`.
pub fn replay_allowed(method: &Method, headers: &HeaderMap) -> bool {
    replay_allowed_with(method, headers.contains_key(&IDEMPOTENCY_KEY))
}

/// [`replay_allowed`], given whether the request has an `Idempotency-Key`.
pub fn replay_allowed_with(method: &Method, idempotency_key: bool) -> bool {
    is_idempotent(method) || (matches!(*method, Method::POST | Method::PATCH) && idempotency_key)
}

/// Whether this failure allows another attempt, given what the request is.
pub fn may_retry(err: &ProxyError, replay_allowed: bool, body_replayable: bool) -> bool {
    match err.retry {
        Retry::Safe => true,
        Retry::IfIdempotent => replay_allowed && body_replayable,
        Retry::Never => false,
    }
}

/// Seconds the budget looks back over.
const WINDOW: usize = 10;

/// Retries allowed: `ratio` of the requests seen in the last 10 s, plus
/// `min_per_second` per second, so a dying fleet is not hit by a retry storm.
pub struct RetryBudget {
    ratio: f64,
    min_per_second: u64,
    base: Instant,
    /// One slot per second: (second it belongs to, requests, retries).
    slots: [Slot; WINDOW],
}

#[derive(Default)]
struct Slot {
    second: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_second: u32) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_second: u64::from(min_per_second),
            base: Instant::now(),
            slots: Default::default(),
        }
    }

    fn slot(&self, now: u64) -> &Slot {
        let slot = &self.slots[(now % WINDOW as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != now
            && slot
                .second
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            slot.requests.store(0, Ordering::Relaxed);
            slot.retries.store(0, Ordering::Relaxed);
        }
        slot
    }

    fn now(&self) -> u64 {
        // +1 so that second 0 is distinguishable from an unused slot.
        self.base.elapsed().as_secs() + 1
    }

    /// Counts a request (a deposit).
    pub fn record_request(&self) {
        self.slot(self.now())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Takes one retry from the budget, if any is left.
    pub fn try_withdraw(&self) -> bool {
        let now = self.now();
        let (mut requests, mut retries) = (0u64, 0u64);
        for s in &self.slots {
            let sec = s.second.load(Ordering::Relaxed);
            if sec + (WINDOW as u64) > now && sec != 0 {
                requests += s.requests.load(Ordering::Relaxed);
                retries += s.retries.load(Ordering::Relaxed);
            }
        }
        // Seconds covered so far (the window is shorter right after start).
        let seconds = now.min(WINDOW as u64);
        let allowed = self.min_per_second * seconds + (self.ratio * requests as f64) as u64;
        if retries >= allowed {
            return false;
        }
        self.slot(now).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_ratio_plus_minimum() {
        let b = RetryBudget::new(0.2, 10);
        for _ in 0..100 {
            b.record_request();
        }
        let allowed = (0..1000).filter(|_| b.try_withdraw()).count();
        // 10 per second (1 s so far) + 20% of 100.
        assert_eq!(allowed, 30);
    }

    #[test]
    fn idempotency() {
        let mut h = HeaderMap::new();
        assert!(replay_allowed(&Method::GET, &h));
        assert!(replay_allowed(&Method::PUT, &h));
        assert!(!replay_allowed(&Method::POST, &h));
        h.insert(IDEMPOTENCY_KEY.clone(), "k1".parse().unwrap());
        assert!(replay_allowed(&Method::POST, &h));
        assert!(replay_allowed(&Method::PATCH, &h));
    }
}
