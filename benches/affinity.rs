//! Affinity cookie scrubbing on the hot path: typical headers with and without an affinity cookie.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::{HeaderMap, HeaderValue};
use std::hint::black_box;
use std::sync::Arc;
use unstick::affinity::{Rules, Tracker};
use unstick::config::AffinityPolicy;
use unstick::metrics::Metrics;

const APP_COOKIES: &str =
    "_ga=GA1.2.1234567890.1700000000; sessionid=8f14e45fceea167a5a36dedd4bea2543; \
     csrftoken=Xy9kLm2Nq; theme=dark; lang=en-GB; _gid=GA1.2.987654321.1700000000";

fn headers(cookie: &str, set_cookies: &[&'static str]) -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("cookie", HeaderValue::from_str(cookie).unwrap());
    for v in set_cookies {
        h.append("set-cookie", HeaderValue::from_static(v));
    }
    h
}

fn bench(c: &mut Criterion) {
    let metrics = Metrics::new_unregistered();
    let tracker = Tracker::new(metrics.affinity_refused.clone());
    let rules = Rules::new(AffinityPolicy::Strip, &[], &[]);
    let backend: Arc<str> = "127.0.0.1:3001".into();

    let mut plain = headers(APP_COOKIES, &[]);
    c.bench_function("request: 6 app cookies, no match", |b| {
        b.iter(|| rules.on_request(black_box(&mut plain), &tracker))
    });
    let with_affinity = headers(&format!("{APP_COOKIES}; SERVERID=b2; AWSALB=xyz"), &[]);
    c.bench_function("request: 6 app cookies + 2 affinity, stripped", |b| {
        b.iter_batched_ref(
            || with_affinity.clone(),
            |h| rules.on_request(h, &tracker),
            BatchSize::SmallInput,
        )
    });
    let mut resp = headers("", &["sid=1; Path=/; HttpOnly", "theme=dark; Max-Age=3600"]);
    resp.remove("cookie");
    c.bench_function("response: 2 app Set-Cookies, no match", |b| {
        b.iter(|| rules.on_response(black_box(&mut resp), &backend, &tracker))
    });
    let mut resp = headers(
        "",
        &["sid=1; Path=/", "SERVERID=b1; Path=/", "AWSALB=x; Path=/"],
    );
    resp.remove("cookie");
    c.bench_function("response: 1 app + 2 affinity Set-Cookies, stripped", |b| {
        b.iter_batched_ref(
            || resp.clone(),
            |h| rules.on_response(h, &backend, &tracker),
            BatchSize::SmallInput,
        )
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
