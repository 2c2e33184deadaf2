//! The session watch on the request path: a request and its response with no session cookie, with one the watch does not know, and with a known session value.

use criterion::{criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue, Method};
use std::hint::black_box;
use std::sync::Arc;
use unstick::config::Config;
use unstick::hops::{Families, Watch};
use unstick::metrics::Metrics;

const APP_COOKIES: &str = "_ga=GA1.2.1234567890.1700000000; csrftoken=Xy9kLm2Nq; theme=dark; \
     lang=en-GB; sid=8f14e45fceea167a5a36dedd4bea2543";

fn watch() -> Watch {
    let metrics = Metrics::new_unregistered();
    let families = Families {
        hops: metrics.session_hops.clone(),
        same_instance: metrics.session_same_instance.clone(),
    };
    Watch::new(&Config::defaults().session_watch, families)
}

fn bench(c: &mut Criterion) {
    let (a, b): (Arc<str>, Arc<str>) = ("127.0.0.1:3001".into(), "127.0.0.1:3002".into());
    let empty = HeaderMap::new();
    let w = watch();
    c.bench_function("no session cookie known: request + response", |bench| {
        bench.iter(|| {
            let carried = w.on_request(black_box(APP_COOKIES.as_bytes()), &Method::GET, b"/cart");
            w.on_response(carried.as_deref(), &b, 200, black_box(&empty), |_| false);
        })
    });

    let mut issue = HeaderMap::new();
    issue.insert(
        "set-cookie",
        HeaderValue::from_static("sid=00000000000000000000000000000001; Path=/; HttpOnly"),
    );
    w.on_response(None, &a, 200, &issue, |_| false);
    c.bench_function("untracked session value: request + response", |bench| {
        bench.iter(|| {
            let carried = w.on_request(black_box(APP_COOKIES.as_bytes()), &Method::GET, b"/cart");
            w.on_response(carried.as_deref(), &b, 200, black_box(&empty), |_| false);
        })
    });

    let known = APP_COOKIES.replace(
        "8f14e45fceea167a5a36dedd4bea2543",
        "00000000000000000000000000000001",
    );
    c.bench_function(
        "known session value, kept hop: request + plain response",
        |bench| {
            bench.iter(|| {
                let carried = w.on_request(black_box(known.as_bytes()), &Method::GET, b"/cart");
                w.on_plain_response(carried.as_deref().unwrap(), &b, 200, None);
            })
        },
    );
    c.bench_function("a Set-Cookie issuing a session value", |bench| {
        let mut i = 0u64;
        bench.iter(|| {
            i += 1;
            let set = format!("sid={i:032x}; Path=/; HttpOnly");
            let mut h = HeaderMap::new();
            h.insert("set-cookie", HeaderValue::from_str(&set).unwrap());
            w.on_response(None, &a, 200, black_box(&h), |_| false);
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
