//! Fuzz target: the HTTP/1 response-head parser, the framing it picks, and the head rebuilt as `http` parts.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unstick::http1;

fuzz_target!(|data: &[u8]| {
    let mut fields = Vec::new();
    let Ok(Some(head)) = http1::parse_response_head(data, 64 * 1024, &mut fields) else {
        return;
    };
    assert!(head.len <= data.len());
    for method in [http::Method::GET, http::Method::HEAD] {
        let named = fields.iter().map(|f| f.field(data));
        let _ = http1::response_framing_fields(&method, head.status, named);
    }
    let bytes = bytes::Bytes::copy_from_slice(&data[..head.len]);
    let _ = http1::response_parts(&bytes, &head, &fields);
});
