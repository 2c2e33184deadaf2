//! The HTTP/1 codec (`unstick::http1`, used by the fast path and `unstick load`): request and response heads parsed and written, and a chunked body scanned.

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use http::HeaderValue;
use std::hint::black_box;
use unstick::affinity;
use unstick::config::AffinityPolicy;
use unstick::http1;
use unstick::proxy::headers::{self, FieldRule};
use unstick::proxy::request_head::{self, Forwarding, Scan};

/// A browser-like request head (what wrk sends is much shorter).
const REQUEST: &[u8] = b"GET /api/cart?page=2 HTTP/1.1\r\n\
Host: shop.example\r\n\
User-Agent: Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0\r\n\
Accept: application/json\r\n\
Accept-Language: en-GB,en;q=0.5\r\n\
Accept-Encoding: gzip, deflate, br\r\n\
Cookie: sessionid=8f14e45fceea167a5a36dedd4bea2543; theme=dark\r\n\
Connection: keep-alive\r\n\r\n";

/// nginx's answer in the peer bench.
const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\n\
Server: nginx\r\n\
Date: Thu, 26 Nov 2026 07:22:36 GMT\r\n\
Content-Type: text/plain\r\n\
Content-Length: 100\r\n\
Connection: keep-alive\r\n\r\n";

fn bench(c: &mut Criterion) {
    c.bench_function("parse_request: 7 headers", |b| {
        b.iter_batched_ref(
            || BytesMut::from(REQUEST),
            |buf| http1::parse_request(black_box(buf), 64 * 1024).unwrap(),
            BatchSize::SmallInput,
        )
    });
    c.bench_function("parse_response: 5 headers", |b| {
        b.iter_batched_ref(
            || BytesMut::from(RESPONSE),
            |buf| http1::parse_response(black_box(buf), 64 * 1024).unwrap(),
            BatchSize::SmallInput,
        )
    });
    // The fast path's request side: fields located in place, one pass of
    // the request rules, and the head written for the backend with the
    // forwarding fields...
    let rules = affinity::Rules::new(AffinityPolicy::Strip, &[], &[]);
    let mut fields = Vec::with_capacity(16);
    let mut head_out = Vec::with_capacity(1024);
    let ours = Forwarding {
        client_ip: b"192.0.2.7",
        https: false,
        request_id: b"5f0c3a9e21b4d870-0000000000000001",
        body_len: None,
    };
    c.bench_function("request head in place: 7 headers", |b| {
        b.iter(|| {
            let request = black_box(REQUEST);
            let head = http1::parse_request_head(request, 64 * 1024, &mut fields)
                .unwrap()
                .unwrap();
            let scan = Scan::of(request, &fields, &rules, false);
            assert!(!scan.needs_map(request, &head));
            head_out.clear();
            request_head::write(&mut head_out, request, &head, &fields, &scan, &ours);
        })
    });
    // ... and the same over a `HeaderMap`, as the hyper path does it.
    let client_ip = HeaderValue::from_static("192.0.2.7");
    let id = HeaderValue::from_static("5f0c3a9e21b4d870-0000000000000001");
    c.bench_function("request head over a HeaderMap: 7 headers", |b| {
        b.iter_batched_ref(
            || BytesMut::from(REQUEST),
            |buf| {
                let (mut parts, _) = http1::parse_request(black_box(buf), 64 * 1024)
                    .unwrap()
                    .unwrap();
                headers::remove_hop_by_hop(&mut parts.headers, false);
                headers::set_forwarded(&mut parts.headers, &client_ip, false, None);
                parts
                    .headers
                    .insert(headers::X_REQUEST_ID.clone(), id.clone());
                head_out.clear();
                http1::write_request_head(&mut head_out, &parts, None);
            },
            BatchSize::SmallInput,
        )
    });

    // The fast path's response side: fields located in place, each kept or
    // dropped by the response rules, and the head written again.
    c.bench_function("parse_response_head + rewrite: 5 headers", |b| {
        b.iter(|| {
            let head = http1::parse_response_head(black_box(RESPONSE), 64 * 1024, &mut fields)
                .unwrap()
                .unwrap();
            head_out.clear();
            http1::write_status_line(&mut head_out, head.status);
            for f in &fields {
                let (name, value) = f.field(RESPONSE);
                if headers::response_field_rule(name, value, None) == FieldRule::Keep {
                    http1::put_response_field(
                        &mut head_out,
                        RESPONSE,
                        f,
                        http1::Framing::Length(100),
                    );
                }
            }
            http1::end_response_head(&mut head_out, http1::Framing::Length(100), true);
        })
    });

    let (request, _) = http1::parse_request(&mut BytesMut::from(REQUEST), 64 * 1024)
        .unwrap()
        .unwrap();
    let response = http1::parse_response(&mut BytesMut::from(RESPONSE), 64 * 1024)
        .unwrap()
        .unwrap();
    let mut out = Vec::with_capacity(1024);
    c.bench_function("write_request_head: 7 headers", |b| {
        b.iter(|| {
            out.clear();
            http1::write_request_head(&mut out, black_box(&request), None);
        })
    });
    c.bench_function("write_response_head: 5 headers", |b| {
        b.iter(|| {
            out.clear();
            http1::write_response_head(
                &mut out,
                black_box(&response),
                http1::Framing::Length(100),
                true,
            );
        })
    });

    // 64 chunks of 1 KiB, then the last chunk.
    let mut chunked = Vec::new();
    for _ in 0..64 {
        chunked.extend_from_slice(b"400\r\n");
        chunked.extend_from_slice(&[b'x'; 1024]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    c.bench_function("ChunkedScanner: 64 KiB in 64 chunks", |b| {
        b.iter(|| {
            let mut s = http1::ChunkedScanner::new();
            s.scan(black_box(&chunked)).unwrap()
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
