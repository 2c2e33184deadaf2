//! criterion bench of `pick()` for each algorithm with 3, 32 and 1000 backends.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use unstick::balancer::{Balance, LeastConnections, RoundRobin, SmoothWeighted};
use unstick::testkit::backends;

fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for n in [3usize, 32, 1000] {
        let equal = backends(&vec![1; n]);
        let weighted = backends(&(0..n).map(|i| (i % 5 + 1) as u32).collect::<Vec<_>>());
        // Some load, so least-connections compares real counts.
        let _load: Vec<_> = equal
            .iter()
            .enumerate()
            .flat_map(|(i, b)| (0..i % 3).map(|_| b.start_request()).collect::<Vec<_>>())
            .collect();

        let rr = RoundRobin::new();
        group.bench_with_input(BenchmarkId::new("round-robin", n), &equal, |b, h| {
            b.iter(|| black_box(rr.pick(black_box(h))))
        });
        let sw = SmoothWeighted::new(Duration::ZERO);
        group.bench_with_input(
            BenchmarkId::new("round-robin-weighted", n),
            &weighted,
            |b, h| b.iter(|| black_box(sw.pick(black_box(h)))),
        );
        let lc = LeastConnections::new(false, Duration::ZERO);
        group.bench_with_input(BenchmarkId::new("least-connections", n), &equal, |b, h| {
            b.iter(|| black_box(lc.pick(black_box(h))))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = pick
}
criterion_main!(benches);
