//! Fuzz target: affinity-cookie scrubbing of `Cookie` and `Set-Cookie` headers under every policy.
#![no_main]

use std::sync::Arc;

use http::header::{HeaderMap, HeaderValue, COOKIE, SET_COOKIE};
use libfuzzer_sys::fuzz_target;
use unstick::affinity::{Rules, Tracker};
use unstick::config::AffinityPolicy;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let policy = [AffinityPolicy::Strip, AffinityPolicy::Reject, AffinityPolicy::Log][pick as usize % 3];
    let rules = Rules::new(policy, &["route".into(), "myapp_node*".into()], &["lb".into()]);
    let refused = prometheus::IntCounterVec::new(
        prometheus::Opts::new("fuzz_refused", "fuzz"),
        &["direction", "name"],
    )
    .unwrap();
    let tracker = Tracker::new(refused);
    let backend: Arc<str> = Arc::from("fuzz:1");
    // Each line of the rest is one header value.
    let mut request = HeaderMap::new();
    let mut response = HeaderMap::new();
    for line in rest.split(|&b| b == b'\n') {
        if let Ok(v) = HeaderValue::from_bytes(line) {
            request.append(COOKIE, v.clone());
            response.append(SET_COOKIE, v);
        }
    }
    rules.on_request(&mut request, &tracker);
    let rejected = rules.on_response(&mut response, &backend, &tracker);
    if policy != AffinityPolicy::Reject {
        assert!(rejected.is_none());
    }
});
