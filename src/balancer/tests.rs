//! Unit tests for the balancing algorithms.

use std::collections::HashMap;
use std::time::Duration;

use super::*;
use crate::testkit::backends;

fn shares(b: &dyn Balance, healthy: &[Arc<Backend>], picks: usize) -> Vec<usize> {
    let mut counts: HashMap<u16, usize> = HashMap::new();
    for _ in 0..picks {
        let p = b.pick(healthy).unwrap();
        *counts.entry(p.addr.port()).or_default() += 1;
    }
    healthy
        .iter()
        .map(|h| counts.get(&h.addr.port()).copied().unwrap_or(0))
        .collect()
}

#[test]
fn empty_gives_none() {
    for b in [
        build(Algorithm::RoundRobin, false, Duration::ZERO),
        build(Algorithm::RoundRobin, true, Duration::ZERO),
        build(Algorithm::LeastConnections, false, Duration::ZERO),
    ] {
        assert!(b.pick(&[]).is_none(), "{}", b.name());
    }
}

#[test]
fn round_robin_is_even_and_in_order() {
    let healthy = backends(&[1, 1, 1]);
    let rr = RoundRobin::new();
    let order: Vec<u16> = (0..6)
        .map(|_| rr.pick(&healthy).unwrap().addr.port())
        .collect();
    assert_eq!(order, [1, 2, 3, 1, 2, 3]);
    assert_eq!(shares(&rr, &healthy, 3000), [1000, 1000, 1000]);
}

#[test]
fn smooth_weighted_shares_and_interleaving() {
    let healthy = backends(&[1, 2, 3]);
    let w = SmoothWeighted::new(Duration::ZERO);
    assert_eq!(shares(&w, &healthy, 6000), [1000, 2000, 3000]);

    // Weights 3:1 interleave as nginx does: never three of one in a row.
    let healthy = backends(&[3, 1]);
    let w = SmoothWeighted::new(Duration::ZERO);
    let order: Vec<u16> = (0..8)
        .map(|_| w.pick(&healthy).unwrap().addr.port())
        .collect();
    assert_eq!(order, [1, 1, 2, 1, 1, 1, 2, 1]);
    let first_cycle = &order[..4];
    assert_eq!(first_cycle.iter().filter(|&&p| p == 1).count(), 3);
    assert_ne!(first_cycle, [1, 1, 1, 2]);
}

#[test]
fn least_connections_prefers_the_idle_backend() {
    let healthy = backends(&[1, 1, 1]);
    let lc = LeastConnections::new(false, Duration::ZERO);
    let _busy: Vec<_> = (0..5).map(|_| healthy[0].start_request()).collect();
    let _also: Vec<_> = (0..2).map(|_| healthy[2].start_request()).collect();
    for _ in 0..10 {
        assert_eq!(lc.pick(&healthy).unwrap().addr.port(), 2);
    }
}

#[test]
fn least_connections_spreads_ties() {
    let healthy = backends(&[1, 1, 1, 1]);
    let lc = LeastConnections::new(false, Duration::ZERO);
    // All idle: a rotating start spreads picks instead of piling on the first.
    assert_eq!(shares(&lc, &healthy, 400), [100, 100, 100, 100]);
}

#[test]
fn least_connections_counts_until_the_guard_drops() {
    let healthy = backends(&[1, 1]);
    let lc = LeastConnections::new(false, Duration::ZERO);
    let guard = healthy[0].start_request();
    assert_eq!(lc.pick(&healthy).unwrap().addr.port(), 2);
    assert_eq!(lc.pick(&healthy).unwrap().addr.port(), 2);
    drop(guard);
    assert_eq!(healthy[0].in_flight(), 0);
    let picks: Vec<u16> = (0..2)
        .map(|_| lc.pick(&healthy).unwrap().addr.port())
        .collect();
    assert!(picks.contains(&1));
}

#[test]
fn least_connections_weighs_load() {
    // Weight 3 with 2 in flight (2/3) beats weight 1 with 1 in flight (1/1).
    let healthy = backends(&[3, 1]);
    let lc = LeastConnections::new(true, Duration::ZERO);
    let _a: Vec<_> = (0..2).map(|_| healthy[0].start_request()).collect();
    let _b = healthy[1].start_request();
    assert_eq!(lc.pick(&healthy).unwrap().addr.port(), 1);
}

#[test]
fn slow_start_ramps_a_returning_backend() {
    let healthy = backends(&[1, 1]);
    let window = Duration::from_millis(400);
    // Backend 2 leaves and comes back: its weight restarts low.
    healthy[1].set_state(crate::upstream::State::Ejected);
    healthy[1].set_state(crate::upstream::State::Healthy);
    assert!(healthy[1].effective_weight(window) < healthy[0].effective_weight(window));
    let w = SmoothWeighted::new(window);
    let early = shares(&w, &healthy, 1000);
    assert!(early[1] < 250, "returning backend got {early:?} right away");
    std::thread::sleep(window + Duration::from_millis(50));
    let later = shares(&w, &healthy, 1000);
    assert_eq!(later, [500, 500], "after the window the shares are equal");
}
