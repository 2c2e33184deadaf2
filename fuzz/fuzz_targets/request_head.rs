//! Fuzz target: the HTTP/1 request-head parser, and the fast path's scan and rewrite of what it accepts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unstick::http1;

fuzz_target!(|data: &[u8]| {
    let mut fields = Vec::new();
    let Ok(Some(head)) = http1::parse_request_head(data, 64 * 1024, &mut fields) else {
        return;
    };
    assert!(head.len <= data.len());
    let bytes = bytes::Bytes::copy_from_slice(&data[..head.len]);
    let _ = head.target(&bytes);
    let mut map = http::HeaderMap::new();
    let _ = http1::request_parts(&bytes, &head, &fields, &mut map);
});
