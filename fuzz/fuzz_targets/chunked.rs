//! Fuzz target: the chunked-body scanner, fed whole and in pieces, which must agree.
#![no_main]

use libfuzzer_sys::fuzz_target;
use unstick::http1::ChunkedScanner;

fuzz_target!(|data: &[u8]| {
    // The first byte picks how the rest is cut into reads.
    let Some((&step, body)) = data.split_first() else {
        return;
    };
    let whole = ChunkedScanner::new().scan(body);
    let mut pieces = ChunkedScanner::new();
    let step = usize::from(step).max(1);
    let mut taken = 0;
    let mut piecewise = Ok((0, false));
    for chunk in body.chunks(step) {
        match pieces.scan(chunk) {
            Ok((n, done)) => {
                assert!(n <= chunk.len());
                taken += n;
                piecewise = Ok((taken, done));
                if done {
                    break;
                }
            }
            Err(e) => {
                piecewise = Err(e);
                break;
            }
        }
    }
    if let (Ok((n, true)), Ok((m, true))) = (&whole, &piecewise) {
        assert_eq!(n, m, "the body ends at one place however it is read");
    }
});
