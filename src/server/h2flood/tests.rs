//! Tests for the control-frame counter: frame boundaries across reads, what counts, the window.

use super::*;

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let n = payload.len() as u32;
    let mut f = n.to_be_bytes()[1..].to_vec();
    f.extend([kind, flags]);
    f.extend(stream.to_be_bytes());
    f.extend(payload);
    f
}

fn ping() -> Vec<u8> {
    frame(PING, 0, 0, &[7; 8])
}

fn reader() -> ControlFrames {
    ControlFrames::new(Instant::now(), true)
}

/// Feeds `bytes` in pieces of `step`; true if any piece made a flood.
fn feed(c: &mut ControlFrames, bytes: &[u8], step: usize) -> bool {
    let mut flood = false;
    for piece in bytes.chunks(step) {
        flood |= c.read(piece);
    }
    flood
}

fn times(f: &[u8], n: usize) -> Vec<u8> {
    f.repeat(n)
}

#[test]
fn a_ping_flood_is_reported_past_the_limit_whatever_the_read_sizes() {
    for step in [1, 2, 5, 9, 17, 100, 4096, usize::MAX] {
        let mut c = reader();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(times(&ping(), LIMIT as usize));
        assert!(!feed(&mut c, &bytes, step.min(bytes.len())), "step {step}");
        assert!(c.read(&ping()), "step {step}");
        assert!(!c.read(&ping()), "reads nothing after a flood");
    }
}

#[test]
fn settings_priority_and_empty_data_count_acks_and_other_frames_do_not() {
    let counted = [
        frame(SETTINGS, 0, 0, &[0, 3, 0, 0, 0, 100]),
        frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]),
        frame(DATA, 0, 1, b""),
    ];
    for f in &counted {
        let mut c = reader();
        assert!(!c.read(PREFACE));
        assert!(!c.read(&times(f, LIMIT as usize)));
        assert!(c.read(f), "{f:?}");
    }
    let free = [
        frame(SETTINGS, 1, 0, b""),
        frame(PING, 1, 0, &[7; 8]),
        frame(DATA, 1, 1, b""),
        frame(DATA, 0, 1, b"body"),
        frame(8, 0, 0, &[0, 0, 1, 0]),
        frame(3, 0, 1, &[0, 0, 0, 8]),
    ];
    for f in &free {
        let mut c = reader();
        assert!(!c.read(PREFACE));
        assert!(!c.read(&times(f, 3 * LIMIT as usize)), "{f:?}");
    }
}

#[test]
fn payloads_are_passed_over_not_read_as_headers() {
    // A DATA payload made of PING frames is body, not frames.
    let body = times(&ping(), 2 * LIMIT as usize);
    let mut bytes = PREFACE.to_vec();
    let mut at = 0;
    while at < body.len() {
        let end = (at + 16_000).min(body.len());
        bytes.extend(frame(DATA, 0, 1, &body[at..end]));
        at = end;
    }
    for step in [3, 1000, usize::MAX] {
        let mut c = reader();
        assert!(!feed(&mut c, &bytes, step.min(bytes.len())), "step {step}");
    }
}

#[test]
fn each_request_allows_one_more_control_frame() {
    let mut c = reader();
    let mut bytes = PREFACE.to_vec();
    for _ in 0..3 * LIMIT {
        bytes.extend(frame(HEADERS, 5, 1, b"\x82"));
        bytes.extend(ping());
    }
    assert!(!c.read(&bytes));
}

#[test]
fn http1_and_a_wrong_preface_are_not_read() {
    let flood = times(&ping(), 2 * LIMIT as usize);
    let mut off = ControlFrames::new(Instant::now(), false);
    assert!(!off.read(PREFACE));
    assert!(!off.read(&flood));
    let mut h1 = reader();
    assert!(!h1.read(b"GET / HTTP/1.1\r\n"));
    assert!(!h1.read(&flood));
    let mut trickled = reader();
    assert!(!feed(&mut trickled, b"PRI * HTTP/2.0\r\n\r\nXX\r\n\r\n", 1));
    assert!(!trickled.read(&flood));
}

#[tokio::test(start_paused = true)]
async fn the_count_starts_over_once_the_window_has_passed() {
    let mut c = reader();
    assert!(!c.read(PREFACE));
    for _ in 0..5 {
        assert!(!c.read(&times(&ping(), LIMIT as usize)));
        tokio::time::advance(WINDOW).await;
    }
    assert!(!c.read(&times(&ping(), LIMIT as usize)));
    tokio::time::advance(WINDOW / 2).await;
    assert!(c.read(&times(&ping(), LIMIT as usize)));
}
