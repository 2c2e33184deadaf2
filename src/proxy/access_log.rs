//! Access log: one line per request to stdout, written off the request path.
//!
//! The request path formats its line into a buffer of its own thread's
//! (one of [`SHARDS`], each behind a lock only that thread and the writer
//! take); a dedicated thread swaps the buffers out every [`WRITE_EVERY`] and
//! writes them, as nginx's `access_log ... buffer=` does. If the writer
//! falls behind (stdout blocked), lines are dropped and counted rather than
//! stalling requests.

use std::cell::RefCell;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::headers::RequestId;
use crate::config::AccessLog;
use crate::timefmt::{ClfDate, Rfc3339};

/// One request, as logged. The backend that answered (the last one tried)
/// is given when the line is written ([`AccessLogger::write`]): the request
/// path knows it then, and holding its name here cost a shared reference
/// count bumped per request.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: http::Method,
    /// The client's HTTP version.
    pub version: http::Version,
    /// Path and query as the client sent them.
    pub path: Vec<u8>,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    pub attempts: u32,
    pub request_id: RequestId,
    /// Why the response did not complete: `after_head` (the backend failed
    /// after the head was sent) or `client_closed` (the client left first).
    pub error: Option<&'static str>,
}

thread_local! {
    /// Entries already written on this thread, to be filled again: a logged
    /// request then allocates neither its entry nor its path. Kept boxed,
    /// as requests hold them (unboxing would allocate a box per request).
    #[allow(clippy::vec_box)]
    static SPARE: RefCell<Vec<Box<Entry>>> = const { RefCell::new(Vec::new()) };
}

/// Spare entries kept per thread (about the requests one thread has open).
const SPARE_KEPT: usize = 256;

/// A path longer than this is not kept in a spare entry's buffer.
const SPARE_PATH: usize = 1024;

impl Entry {
    /// The entry of a request starting now; what its response brings
    /// (status, bytes, duration...) is filled in as it comes.
    pub fn start(
        client: SocketAddr,
        method: &http::Method,
        version: http::Version,
        path: &[u8],
        request_id: &RequestId,
    ) -> Box<Entry> {
        let mut spare = SPARE.with(|s| s.borrow_mut().pop());
        // A spare entry's path buffer is filled again; the entry itself is
        // overwritten below.
        let mut path_buf = spare
            .as_mut()
            .map(|e| std::mem::take(&mut e.path))
            .unwrap_or_default();
        path_buf.clear();
        path_buf.extend_from_slice(path);
        let entry = Entry {
            time: SystemTime::now(),
            client,
            method: method.clone(),
            version,
            path: path_buf,
            status: 0,
            bytes: 0,
            duration: Duration::ZERO,
            attempts: 0,
            request_id: request_id.clone(),
            error: None,
        };
        match spare {
            Some(mut e) => {
                *e = entry;
                e
            }
            None => Box::new(entry),
        }
    }

    /// Keeps a written entry for [`Entry::start`] to fill again.
    fn recycle(self: Box<Entry>) {
        if self.path.capacity() <= SPARE_PATH {
            SPARE.with(|s| {
                let mut spare = s.borrow_mut();
                if spare.len() < SPARE_KEPT {
                    spare.push(self);
                }
            });
        }
    }
}

/// Where log lines go: per-thread buffers and the thread that writes them.
pub struct AccessLogger {
    format: AccessLog,
    /// Bytes a buffer may hold before new lines are dropped.
    max_buffered: usize,
    shared: Option<Arc<Shared>>,
    /// The writer thread, joined on drop so the last lines are written.
    writer: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    /// Lines formatted and not yet written, one buffer per shard.
    shards: Box<[Mutex<Vec<u8>>]>,
    dropped: AtomicU64,
    closed: AtomicBool,
}

/// How often the writer wakes to write what was buffered. Waking per line
/// would cost a futex wake-up and a context switch per request (measured:
/// ~10 us of CPU per request with the JSON log on); batching costs lines at
/// most this much delay.
const WRITE_EVERY: Duration = Duration::from_millis(50);

/// Buffers; a thread keeps the one it first got. Each worker thread gets
/// its own while there are fewer logging threads than this.
pub const SHARDS: usize = 16;

/// Bytes a buffer may hold before new lines are dropped (the writer is
/// stuck): about 4,000 lines. Counted in `unstick_access_log_dropped_total`.
const MAX_BUFFERED: usize = 1 << 20;

/// Hands each thread that logs the next shard.
static NEXT_SHARD: AtomicUsize = AtomicUsize::new(0);

thread_local! {
    static SHARD: usize = NEXT_SHARD.fetch_add(1, Ordering::Relaxed) % SHARDS;
}

impl AccessLogger {
    /// A logger writing to stdout in `format` (no thread when `off`).
    pub fn stdout(format: AccessLog) -> AccessLogger {
        AccessLogger::new(format, Box::new(std::io::stdout()))
    }

    /// A logger writing to `out`.
    pub fn new(format: AccessLog, out: Box<dyn Write + Send>) -> AccessLogger {
        AccessLogger::with_limit(format, out, MAX_BUFFERED)
    }

    /// [`AccessLogger::new`], dropping lines once a thread's buffer holds
    /// `max_buffered` bytes (tests use a small limit).
    pub fn with_limit(
        format: AccessLog,
        out: Box<dyn Write + Send>,
        max_buffered: usize,
    ) -> AccessLogger {
        if format == AccessLog::Off {
            return AccessLogger {
                format,
                max_buffered,
                shared: None,
                writer: None,
            };
        }
        let shared = Arc::new(Shared {
            shards: (0..SHARDS).map(|_| Mutex::new(Vec::new())).collect(),
            dropped: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        });
        let writer = std::thread::Builder::new()
            .name("unstick-access-log".into())
            .spawn({
                let shared = shared.clone();
                move || write_lines(&shared, out)
            })
            .expect("spawn access log thread");
        AccessLogger {
            format,
            max_buffered,
            shared: Some(shared),
            writer: Some(writer),
        }
    }

    pub fn enabled(&self) -> bool {
        self.shared.is_some()
    }

    pub fn format(&self) -> AccessLog {
        self.format
    }

    /// Buffers the line of `entry`, answered by `backend`; never blocks
    /// on the output.
    pub fn write(&self, entry: Box<Entry>, backend: Option<&str>) {
        let Some(shared) = &self.shared else { return };
        {
            let shard = &shared.shards[SHARD.with(|s| *s)];
            let mut buf = shard.lock().unwrap_or_else(|e| e.into_inner());
            if buf.len() >= self.max_buffered {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            } else {
                format_entry(self.format, &entry, backend, &mut buf);
            }
        }
        entry.recycle();
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.shared
            .as_ref()
            .map_or(0, |s| s.dropped.load(Ordering::Relaxed))
    }
}

impl Drop for AccessLogger {
    fn drop(&mut self) {
        // The writer writes what is buffered, then ends.
        if let Some(shared) = &self.shared {
            shared.closed.store(true, Ordering::Release);
        }
        if let Some(w) = self.writer.take() {
            w.thread().unpark();
            let _ = w.join();
        }
    }
}

/// The writer thread: every [`WRITE_EVERY`] (or when the logger closes),
/// each buffer is swapped for an empty one and written.
fn write_lines(shared: &Shared, mut out: Box<dyn Write + Send>) {
    // The buffer swapped in: the one written last time, emptied (its
    // allocation goes back and forth).
    let mut spare = Vec::new();
    loop {
        // Never blocks on a lock or channel, so the request path never has
        // to wake it.
        std::thread::park_timeout(WRITE_EVERY);
        let closed = shared.closed.load(Ordering::Acquire);
        for shard in shared.shards.iter() {
            {
                let mut buf = shard.lock().unwrap_or_else(|e| e.into_inner());
                if buf.is_empty() {
                    continue;
                }
                std::mem::swap(&mut *buf, &mut spare);
            }
            let _ = out.write_all(&spare);
            // A buffer that grew large in a burst is not kept.
            if spare.capacity() > MAX_BUFFERED {
                spare = Vec::new();
            }
            spare.clear();
        }
        let _ = out.flush();
        if closed {
            return;
        }
    }
}

/// Formats one line (with its newline) into `out`.
pub fn format_entry(format: AccessLog, e: &Entry, backend: Option<&str>, out: &mut Vec<u8>) {
    use std::io::Write as _;
    match format {
        AccessLog::Off => {}
        AccessLog::Common => {
            // Common Log Format, then duration (s), backend, attempts and request id.
            let _ = write!(
                out,
                "{} - - [{}] \"{} ",
                e.client.ip(),
                ClfDate(e.time),
                e.method
            );
            escape_clf(&e.path, out);
            let _ = write!(out, " {:?}\" {} ", e.version, e.status);
            if e.bytes == 0 {
                out.push(b'-');
            } else {
                let _ = write!(out, "{}", e.bytes);
            }
            let _ = write!(
                out,
                " {:.6} {} {} ",
                e.duration.as_secs_f64(),
                backend.unwrap_or("-"),
                e.attempts,
            );
            out.extend_from_slice(e.request_id.as_bytes());
            out.push(b'\n');
        }
        AccessLog::Json => {
            // Written by hand, field by field, into the reused line buffer:
            // no intermediate value or string per line, and numbers without
            // `core::fmt` (which took 5,500 of the 7,800 instructions a line
            // cost, callgrind; the writer thread's CPU is the proxy's).
            let mut num = itoa::Buffer::new();
            out.extend_from_slice(b"{\"time\":\"");
            Rfc3339(e.time).push_to(out);
            out.extend_from_slice(b"\",\"client\":\"");
            push_addr(e.client, out);
            out.extend_from_slice(b"\",\"method\":");
            // A method is a token (`http` checks): nothing to escape.
            json_plain(e.method.as_str().as_bytes(), out);
            out.extend_from_slice(b",\"path\":");
            json_str(&e.path, out);
            out.extend_from_slice(b",\"protocol\":\"");
            out.extend_from_slice(version_str(e.version).as_bytes());
            out.extend_from_slice(b"\",\"status\":");
            out.extend_from_slice(num.format(e.status).as_bytes());
            out.extend_from_slice(b",\"bytes\":");
            out.extend_from_slice(num.format(e.bytes).as_bytes());
            // Seconds, to the microsecond.
            out.extend_from_slice(b",\"duration\":");
            let micros = e.duration.as_micros();
            out.extend_from_slice(num.format(micros / 1_000_000).as_bytes());
            out.push(b'.');
            crate::timefmt::push_padded(out, (micros % 1_000_000) as u32, 6);
            out.extend_from_slice(b",\"backend\":");
            match backend {
                Some(b) => json_str(b.as_bytes(), out),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b",\"attempts\":");
            out.extend_from_slice(num.format(e.attempts).as_bytes());
            out.extend_from_slice(b",\"request_id\":");
            match &e.request_id {
                RequestId::Made(hex) => json_plain(hex, out),
                RequestId::Kept(_) => json_str(e.request_id.as_bytes(), out),
            }
            out.extend_from_slice(b",\"error\":");
            match e.error {
                Some(err) => json_plain(err.as_bytes(), out),
                None => out.extend_from_slice(b"null"),
            }
            out.extend_from_slice(b"}\n");
        }
    }
}

/// `HTTP/1.1` and the like, as `{:?}` writes a version.
fn version_str(v: http::Version) -> &'static str {
    match v {
        http::Version::HTTP_09 => "HTTP/0.9",
        http::Version::HTTP_10 => "HTTP/1.0",
        http::Version::HTTP_11 => "HTTP/1.1",
        http::Version::HTTP_2 => "HTTP/2.0",
        http::Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/?",
    }
}

/// Appends a client address as `Display` writes it (`1.2.3.4:5`, `[::1]:5`).
fn push_addr(addr: SocketAddr, out: &mut Vec<u8>) {
    use std::io::Write as _;
    let mut num = itoa::Buffer::new();
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(num.format(*octet).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(num.format(a.port()).as_bytes());
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Writes `s` as a JSON string (quoted and escaped; bytes that are not
/// UTF-8 replaced, so a line is always valid JSON).
fn json_str(s: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    out.push(b'"');
    // The usual field (printable ASCII) is copied whole.
    if !json_escapes(s) {
        out.extend_from_slice(s);
        out.push(b'"');
        return;
    }
    let mut utf8 = [0; 4];
    for c in String::from_utf8_lossy(s).chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes()),
        }
    }
    out.push(b'"');
}

/// Writes `s`, which has nothing to escape (a token, hex digits, one of our
/// own words), as a JSON string: the escape test skipped for fields that
/// cannot need it (~110 instructions a field, callgrind).
fn json_plain(s: &[u8], out: &mut Vec<u8>) {
    debug_assert!(!json_escapes(s), "{s:?}");
    out.push(b'"');
    out.extend_from_slice(s);
    out.push(b'"');
}

/// True if `s` has a byte [`json_str`] cannot copy as it is: a control
/// byte, `"`, `\` or a byte past ASCII. Tests eight bytes at a time (a
/// byte at a time cost ~5 instructions per byte, the largest part of a
/// JSON line's formatting).
fn json_escapes(s: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    // High bit set in some byte iff a byte of `x` is below `n` (n <= 0x80),
    // or (with `x & HIGH`) past ASCII.
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    let zero = |x: u64| below(x, 1);
    let mut words = s.chunks_exact(8);
    for w in &mut words {
        let x = u64::from_ne_bytes(w.try_into().expect("eight bytes"));
        let hits = below(x, 0x20)
            | zero(x ^ (ONES * u64::from(b'"')))
            | zero(x ^ (ONES * u64::from(b'\\')))
            | (x & HIGH);
        if hits != 0 {
            return true;
        }
    }
    words
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80)
}

/// Writes `s` for a quoted CLF field: `"` and `\` escaped, and bytes outside
/// printable ASCII as `\xHH` (as Apache does), so a line always splits the same way.
fn escape_clf(s: &[u8], out: &mut Vec<u8>) {
    use std::io::Write as _;
    for &b in s {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BACKEND: Option<&str> = Some("127.0.0.1:3001");

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_136_250),
            client: "10.1.2.3:5555".parse().unwrap(),
            method: http::Method::GET,
            version: http::Version::HTTP_11,
            path: b"/a?b=%22c%22".to_vec(),
            status: 200,
            bytes: 1234,
            duration: Duration::from_micros(1500),
            attempts: 2,
            request_id: RequestId::Kept(http::HeaderValue::from_static("req-1")),
            error: None,
        }
    }

    /// `format_entry`'s line, which must be UTF-8.
    fn line(format: AccessLog, e: &Entry, backend: Option<&str>) -> String {
        let mut out = Vec::new();
        format_entry(format, e, backend, &mut out);
        String::from_utf8(out).unwrap()
    }

    /// What `f` writes, which must be UTF-8.
    fn text(f: impl FnOnce(&mut Vec<u8>)) -> String {
        let mut out = Vec::new();
        f(&mut out);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn common_format() {
        let line = line(AccessLog::Common, &entry(), BACKEND);
        assert_eq!(
            line,
            "10.1.2.3 - - [10/Oct/2000:13:55:36 +0000] \"GET /a?b=%22c%22 HTTP/1.1\" 200 1234 \
             0.001500 127.0.0.1:3001 2 req-1\n"
        );
        let mut e = entry();
        e.bytes = 0;
        e.attempts = 0;
        e.status = 503;
        e.version = http::Version::HTTP_2;
        let line = super::tests::line(AccessLog::Common, &e, None);
        assert!(
            line.contains("\"GET /a?b=%22c%22 HTTP/2.0\" 503 - 0.001500 - 0 req-1\n"),
            "{line}"
        );
    }

    #[test]
    fn fields_are_escaped() {
        // Quotes, backslashes, non-ASCII and control bytes cannot break a line
        // apart, whatever a field holds.
        let clf = text(|out| escape_clf("/\u{e9}\\\"x\n".as_bytes(), out));
        assert_eq!(clf, "/\\xc3\\xa9\\\\\\\"x\\x0a");
        let json = text(|out| json_str("/\u{e9}\\\"x\n\u{1}".as_bytes(), out));
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "/\u{e9}\\\"x\n\u{1}");
        assert!(!json.contains('\n'));
        // Any text comes back whole: runs of plain bytes around escapes,
        // multi-byte characters next to them.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::SmallRng::seed_from_u64(0x1095);
        let pieces = [
            "a",
            "/x?y=1",
            "\"",
            "\\",
            "\n",
            "\r",
            "\t",
            "\u{0}",
            "\u{1f}",
            "\u{7f}",
            "\u{e9}",
            "\u{1f600}",
        ];
        for _ in 0..2_000 {
            let n = rng.random_range(0..12);
            let s: String = (0..n)
                .map(|_| pieces[rng.random_range(0..pieces.len())])
                .collect();
            let json = text(|out| json_str(s.as_bytes(), out));
            assert_eq!(serde_json::from_str::<String>(&json).unwrap(), s, "{json}");
            assert!(!json.contains(|c: char| c < ' '), "{json}");
        }
        // The word-at-a-time test answers as a byte-by-byte one, wherever in
        // a word the byte falls.
        let bytes = [
            b'a', b'/', b' ', b'~', b'"', b'\\', 0, 0x1f, 0x7f, 0x80, 0xe9, 0xff,
        ];
        for _ in 0..20_000 {
            let n = rng.random_range(0..40);
            let s: Vec<u8> = (0..n).map(|_| bytes[rng.random_range(0..4)]).collect();
            let mut s = s;
            if rng.random_bool(0.5) && n > 0 {
                s[rng.random_range(0..n)] = bytes[rng.random_range(0..bytes.len())];
            }
            let naive = s
                .iter()
                .any(|&b| b < 0x20 || b == b'"' || b == b'\\' || b >= 0x80);
            assert_eq!(json_escapes(&s), naive, "{s:?}");
        }
    }

    #[test]
    fn written_entries_are_filled_again_from_scratch() {
        let logger = AccessLogger::new(AccessLog::Json, Box::new(std::io::sink()));
        let client = "10.0.0.1:1".parse().unwrap();
        let id = |v| RequestId::Kept(http::HeaderValue::from_static(v));
        let (post, get) = (http::Method::POST, http::Method::GET);
        let mut a = Entry::start(client, &post, http::Version::HTTP_2, b"/a?q=1", &id("a"));
        a.status = 502;
        a.bytes = 9;
        a.attempts = 3;
        a.duration = Duration::from_secs(1);
        a.error = Some("after_head");
        let at: *const Entry = &*a;
        logger.write(a, BACKEND);
        let b = Entry::start(client, &get, http::Version::HTTP_11, b"/b", &id("b"));
        assert!(std::ptr::eq(at, &*b), "the written entry was not reused");
        assert_eq!(
            (
                &b.path[..],
                b.status,
                b.bytes,
                b.attempts,
                b.duration,
                b.error
            ),
            (&b"/b"[..], 0, 0, 0, Duration::ZERO, None)
        );
        assert_eq!((&b.method, b.version), (&get, http::Version::HTTP_11));
        assert_eq!(b.request_id.as_bytes(), b"b");
    }

    #[test]
    fn json_format() {
        let line = line(AccessLog::Json, &entry(), BACKEND);
        assert!(line.ends_with('\n') && line.matches('\n').count() == 1);
        assert!(
            line.starts_with("{\"time\":\"2000-10-10T13:55:36.250Z\",\"client\":"),
            "{line}"
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["time"], "2000-10-10T13:55:36.250Z");
        assert_eq!(v["client"], "10.1.2.3:5555");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["path"], "/a?b=%22c%22");
        assert_eq!(v["protocol"], "HTTP/1.1");
        assert_eq!(v["status"], 200);
        assert_eq!(v["bytes"], 1234);
        assert_eq!(v["duration"], 0.0015);
        assert_eq!(v["backend"], "127.0.0.1:3001");
        assert_eq!(v["attempts"], 2);
        assert_eq!(v["request_id"], "req-1");
        assert!(v["error"].is_null());

        // Fields written without the escape test: any method `http`
        // accepts, a made id, our error words.
        for b in 0..=255u8 {
            if http::Method::from_bytes(&[b]).is_ok() {
                assert!(!json_escapes(&[b]), "method byte {b:#x}");
            }
        }
        let mut e = entry();
        e.method = http::Method::from_bytes(b"PURGE").unwrap();
        e.request_id = crate::proxy::headers::RequestIds::new().next();
        e.error = Some("client_closed");
        let text = super::tests::line(AccessLog::Json, &e, BACKEND);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["method"], "PURGE");
        assert_eq!(
            v["request_id"].as_str().unwrap().as_bytes(),
            e.request_id.as_bytes()
        );
        assert_eq!(v["error"], "client_closed");
    }

    #[test]
    fn json_numbers_and_addresses_match_display() {
        let mut e = entry();
        e.duration = Duration::from_micros(75_000_001);
        e.client = "[2001:db8::1]:443".parse().unwrap();
        e.version = http::Version::HTTP_2;
        let line = line(AccessLog::Json, &e, BACKEND);
        assert!(line.contains("\"duration\":75.000001,"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["client"], "[2001:db8::1]:443");
        assert_eq!(v["protocol"], "HTTP/2.0");
        for addr in ["0.0.0.0:0", "255.255.255.255:65535", "10.20.3.4:8080"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(text(|out| push_addr(addr, out)), addr.to_string());
        }
    }

    /// A `Write` into shared memory, which can be made to block.
    #[derive(Clone, Default)]
    struct Capture {
        bytes: Arc<Mutex<Vec<u8>>>,
        gate: Arc<std::sync::RwLock<()>>,
    }

    impl Write for Capture {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            let _open = self.gate.read().unwrap();
            self.bytes.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn every_line_from_every_thread_is_written_whole() {
        let capture = Capture::default();
        let logger = Arc::new(AccessLogger::new(
            AccessLog::Json,
            Box::new(capture.clone()),
        ));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let logger = logger.clone();
                std::thread::spawn(move || {
                    for i in 0..1000 {
                        let mut e = entry();
                        e.attempts = t * 1000 + i;
                        logger.write(Box::new(e), BACKEND);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        // Dropping the logger writes what is still buffered.
        drop(Arc::into_inner(logger).unwrap());
        let text = String::from_utf8(capture.bytes.lock().unwrap().clone()).unwrap();
        let mut seen: Vec<u64> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .map(|v| v["attempts"].as_u64().unwrap())
            .collect();
        seen.sort();
        assert_eq!(seen, (0..4000).collect::<Vec<u64>>());
    }

    #[test]
    fn lines_are_dropped_and_counted_while_the_output_is_stuck() {
        let capture = Capture::default();
        let stuck = capture.gate.write().unwrap();
        let logger = AccessLogger::new(AccessLog::Json, Box::new(capture.clone()));
        let line_len = line(AccessLog::Json, &entry(), BACKEND).len();
        // The buffer fills to its limit (the writer, blocked or not yet
        // awake, cannot empty it), then lines are dropped. None is lost.
        let lines = 3 * MAX_BUFFERED / line_len;
        for _ in 0..lines {
            logger.write(Box::new(entry()), BACKEND);
        }
        assert!(logger.dropped() > 0, "none dropped");
        drop(stuck);
        let dropped = logger.dropped();
        drop(logger);
        let written = capture.bytes.lock().unwrap().len() / line_len;
        assert_eq!(written as u64 + dropped, lines as u64);
    }

    #[test]
    fn off_writes_nothing() {
        assert!(line(AccessLog::Off, &entry(), BACKEND).is_empty());
        assert!(!AccessLogger::new(AccessLog::Off, Box::new(std::io::sink())).enabled());
    }
}
