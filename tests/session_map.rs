//! The session watch's map under a million distinct sessions: it keeps its bound, and its heap per entry is measured (a counting allocator).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use prometheus::Registry;
use unstick::config::Config;
use unstick::hops::sessions::{Entry, Sessions};
use unstick::hops::{Families, Watch};
use unstick::metrics::Metrics;

/// Heap bytes live now, over the whole process.
static LIVE: AtomicIsize = AtomicIsize::new(0);

struct Counting;

// SAFETY: every call is passed to the system allocator unchanged; only a
// counter is kept beside it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new: usize) -> *mut u8 {
        LIVE.fetch_add(new as isize - layout.size() as isize, Ordering::Relaxed);
        System.realloc(ptr, layout, new)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Heap bytes one remembered session may cost at most (the measured
/// figure is printed; docs/ and benches/README.md give it).
const MAX_BYTES_PER_ENTRY: isize = 80;

/// A distinct, well-spread 64-bit key per `i` (as the keyed hash gives).
fn key(i: u64) -> u64 {
    i.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(17) ^ 0x5851_f42d_4c95_7f2d
}

#[test]
fn a_million_sessions_stay_within_the_bound_at_a_measured_cost() {
    let entries = Config::defaults().session_watch.entries;
    assert_eq!(entries, 100_000);
    let before = LIVE.load(Ordering::Relaxed);
    let map = Sessions::new(entries);
    let mut peak = 0;
    for i in 0..1_000_000u64 {
        let entry = Entry {
            issuer: (i % 3) as u16,
            name: 0,
            flags: 0,
            active: 0,
        };
        assert!(map.issue(key(i), entry));
        if i % 50_000 == 0 {
            peak = peak.max(LIVE.load(Ordering::Relaxed) - before);
        }
    }
    assert_eq!(map.len(), entries);
    assert_eq!(map.evicted(), 900_000);
    // The most recent are the ones kept.
    assert!(map.get(key(999_999)).is_some() && map.get(key(0)).is_none());
    let held = LIVE.load(Ordering::Relaxed) - before;
    let peak = peak.max(held);
    let per_entry = held / entries as isize;
    println!(
        "session map: {held} bytes held for {entries} entries ({per_entry} per entry), peak {peak}"
    );
    assert!(
        per_entry <= MAX_BYTES_PER_ENTRY,
        "{per_entry} bytes per entry"
    );
    assert!(peak <= held + held / 10, "peak {peak}, held {held}");
    drop(map);
    // One test in this binary: the allocator's count is this test's alone.
    through_responses();
}

/// The same through the watch's response hook: `Set-Cookie` values issued
/// past the bound.
fn through_responses() {
    let mut config = Config::defaults().session_watch;
    config.entries = 50_000;
    let metrics = Metrics::register(&Registry::new());
    let families = Families {
        hops: metrics.session_hops.clone(),
        same_instance: metrics.session_same_instance.clone(),
    };
    let watch = Watch::new(&config, families);
    let backend: Arc<str> = Arc::from("10.0.0.1:8080");
    let mut headers = HeaderMap::new();
    for i in 0..120_000u128 {
        let set = format!("sid={i:032x}; Path=/; HttpOnly");
        headers.insert("set-cookie", HeaderValue::from_str(&set).unwrap());
        watch.on_response(None, &backend, 200, &headers, |_| false);
    }
    let report = watch.report();
    assert_eq!(report.sessions.tracked, 50_000, "{:?}", report.sessions);
    assert_eq!(report.sessions.evicted, 70_000);
    let last = format!("sid={:032x}", 119_999);
    assert!(watch
        .on_request(last.as_bytes(), &Method::GET, b"/")
        .is_some());
    let first = format!("sid={:032x}", 0);
    assert!(watch
        .on_request(first.as_bytes(), &Method::GET, b"/")
        .is_none());
}
