//! Bounded condition waits: poll a check until it holds or a deadline passes, instead of sleeping for a guess.

use std::time::{Duration, Instant};

/// A limit for conditions that should hold within moments on an idle
/// machine: long enough for a busy one.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// How often a check is polled.
const POLL: Duration = Duration::from_millis(20);

/// Waits until `check` returns true; panics naming `what` after `limit`.
pub async fn until(what: &str, limit: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until `check` returns `Some`, and returns its value; panics naming
/// `what` after `limit`.
pub async fn until_some<T>(
    what: &str,
    limit: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(POLL).await;
    }
}

/// [`until`] for tests without a runtime: blocks the thread between polls.
pub fn until_blocking(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(POLL);
    }
}

/// Polls `check` until it holds or `limit` passes; whether it held. For
/// conditions whose failure the test reports itself.
pub async fn holds_within(limit: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
