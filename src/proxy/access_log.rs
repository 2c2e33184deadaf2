//! Access log: one line per request to stdout, written off the request path.
//!
//! The request path formats its line into a buffer of its own thread's
//! (one of [`SHARDS`], each behind a lock only that thread and the writer
//! take); a dedicated thread swaps the buffers out every [`WRITE_EVERY`] and
//! writes them, as nginx's `access_log ... buffer=` does. If the writer
//! falls behind (stdout blocked), lines are dropped and counted rather than
//! stalling requests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::config::AccessLog;
use crate::timefmt::{ClfDate, Rfc3339};

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: http::Method,
    /// The client's HTTP version.
    pub version: http::Version,
    /// Path and query as the client sent them.
    pub path: http::uri::PathAndQuery,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    /// The backend that answered (the last one tried), if any.
    pub backend: Option<Arc<str>>,
    pub attempts: u32,
    pub request_id: http::HeaderValue,
    /// Why the response did not complete: `after_head` (the backend failed
    /// after the head was sent) or `client_closed` (the client left first).
    pub error: Option<&'static str>,
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
    shards: Box<[Mutex<String>]>,
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
            shards: (0..SHARDS).map(|_| Mutex::new(String::new())).collect(),
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

    /// Buffers a line; never blocks on the output.
    pub fn write(&self, entry: &Entry) {
        let Some(shared) = &self.shared else { return };
        let shard = &shared.shards[SHARD.with(|s| *s)];
        let mut buf = shard.lock().unwrap_or_else(|e| e.into_inner());
        if buf.len() >= self.max_buffered {
            shared.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        format_entry(self.format, entry, &mut buf);
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
    let mut spare = String::new();
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
            let _ = out.write_all(spare.as_bytes());
            // A buffer that grew large in a burst is not kept.
            if spare.capacity() > MAX_BUFFERED {
                spare = String::new();
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
pub fn format_entry(format: AccessLog, e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
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
            escape_clf(e.path.as_str(), out);
            let _ = write!(out, " {:?}\" {} ", e.version, e.status);
            if e.bytes == 0 {
                out.push('-');
            } else {
                let _ = write!(out, "{}", e.bytes);
            }
            let _ = writeln!(
                out,
                " {:.6} {} {} {}",
                e.duration.as_secs_f64(),
                e.backend.as_deref().unwrap_or("-"),
                e.attempts,
                String::from_utf8_lossy(e.request_id.as_bytes())
            );
        }
        AccessLog::Json => {
            // Written by hand, field by field, into the reused line buffer:
            // no intermediate value or string per line, and numbers without
            // `core::fmt` (which took 5,500 of the 7,800 instructions a line
            // cost, callgrind; the writer thread's CPU is the proxy's).
            let mut num = itoa::Buffer::new();
            out.push_str("{\"time\":\"");
            Rfc3339(e.time).push_to(out);
            out.push_str("\",\"client\":\"");
            push_addr(e.client, out);
            out.push_str("\",\"method\":");
            json_str(e.method.as_str(), out);
            out.push_str(",\"path\":");
            json_str(e.path.as_str(), out);
            out.push_str(",\"protocol\":\"");
            out.push_str(version_str(e.version));
            out.push_str("\",\"status\":");
            out.push_str(num.format(e.status));
            out.push_str(",\"bytes\":");
            out.push_str(num.format(e.bytes));
            // Seconds, to the microsecond.
            out.push_str(",\"duration\":");
            let micros = e.duration.as_micros();
            out.push_str(num.format(micros / 1_000_000));
            out.push('.');
            crate::timefmt::push_padded(out, (micros % 1_000_000) as u32, 6);
            out.push_str(",\"backend\":");
            match e.backend.as_deref() {
                Some(b) => json_str(b, out),
                None => out.push_str("null"),
            }
            out.push_str(",\"attempts\":");
            out.push_str(num.format(e.attempts));
            out.push_str(",\"request_id\":");
            json_str(&String::from_utf8_lossy(e.request_id.as_bytes()), out);
            out.push_str(",\"error\":");
            match e.error {
                Some(err) => json_str(err, out),
                None => out.push_str("null"),
            }
            out.push_str("}\n");
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
fn push_addr(addr: SocketAddr, out: &mut String) {
    use std::fmt::Write as _;
    let mut num = itoa::Buffer::new();
    match addr {
        SocketAddr::V4(a) => {
            for (i, octet) in a.ip().octets().iter().enumerate() {
                if i > 0 {
                    out.push('.');
                }
                out.push_str(num.format(*octet));
            }
            out.push(':');
            out.push_str(num.format(a.port()));
        }
        SocketAddr::V6(_) => {
            let _ = write!(out, "{addr}");
        }
    }
}

/// Writes `s` as a JSON string (quoted and escaped).
fn json_str(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    out.push('"');
    // The usual field needs no escape: copied whole.
    if !s.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Writes `s` for a quoted CLF field: `"` and `\` escaped, and bytes outside
/// printable ASCII as `\xHH` (as Apache does), so a line always splits the same way.
fn escape_clf(s: &str, out: &mut String) {
    use std::fmt::Write as _;
    for &b in s.as_bytes() {
        match b {
            b'"' => out.push_str("\\\""),
            b'\\' => out.push_str("\\\\"),
            0x20..=0x7e => out.push(b as char),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            time: SystemTime::UNIX_EPOCH + Duration::from_millis(971_186_136_250),
            client: "10.1.2.3:5555".parse().unwrap(),
            method: http::Method::GET,
            version: http::Version::HTTP_11,
            path: http::uri::PathAndQuery::from_static("/a?b=%22c%22"),
            status: 200,
            bytes: 1234,
            duration: Duration::from_micros(1500),
            backend: Some("127.0.0.1:3001".into()),
            attempts: 2,
            request_id: http::HeaderValue::from_static("req-1"),
            error: None,
        }
    }

    #[test]
    fn common_format() {
        let mut line = String::new();
        format_entry(AccessLog::Common, &entry(), &mut line);
        assert_eq!(
            line,
            "10.1.2.3 - - [10/Oct/2000:13:55:36 +0000] \"GET /a?b=%22c%22 HTTP/1.1\" 200 1234 \
             0.001500 127.0.0.1:3001 2 req-1\n"
        );
        let mut e = entry();
        e.bytes = 0;
        e.backend = None;
        e.attempts = 0;
        e.status = 503;
        e.version = http::Version::HTTP_2;
        line.clear();
        format_entry(AccessLog::Common, &e, &mut line);
        assert!(
            line.contains("\"GET /a?b=%22c%22 HTTP/2.0\" 503 - 0.001500 - 0 req-1\n"),
            "{line}"
        );
    }

    #[test]
    fn fields_are_escaped() {
        // Quotes, backslashes, non-ASCII and control bytes cannot break a line
        // apart, whatever a field holds.
        let mut clf = String::new();
        escape_clf("/\u{e9}\\\"x\n", &mut clf);
        assert_eq!(clf, "/\\xc3\\xa9\\\\\\\"x\\x0a");
        let mut json = String::new();
        json_str("/\u{e9}\\\"x\n\u{1}", &mut json);
        let back: String = serde_json::from_str(&json).unwrap();
        assert_eq!(back, "/\u{e9}\\\"x\n\u{1}");
        assert!(!json.contains('\n'));
    }

    #[test]
    fn json_format() {
        let mut line = String::new();
        format_entry(AccessLog::Json, &entry(), &mut line);
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
    }

    #[test]
    fn json_numbers_and_addresses_match_display() {
        let mut e = entry();
        e.duration = Duration::from_micros(75_000_001);
        e.client = "[2001:db8::1]:443".parse().unwrap();
        e.version = http::Version::HTTP_2;
        let mut line = String::new();
        format_entry(AccessLog::Json, &e, &mut line);
        assert!(line.contains("\"duration\":75.000001,"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["client"], "[2001:db8::1]:443");
        assert_eq!(v["protocol"], "HTTP/2.0");
        for addr in ["0.0.0.0:0", "255.255.255.255:65535", "10.20.3.4:8080"] {
            let addr: SocketAddr = addr.parse().unwrap();
            let mut out = String::new();
            push_addr(addr, &mut out);
            assert_eq!(out, addr.to_string());
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
                        logger.write(&e);
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
        let line_len = {
            let mut line = String::new();
            format_entry(AccessLog::Json, &entry(), &mut line);
            line.len()
        };
        // The buffer fills to its limit (the writer, blocked or not yet
        // awake, cannot empty it), then lines are dropped. None is lost.
        let lines = 3 * MAX_BUFFERED / line_len;
        for _ in 0..lines {
            logger.write(&entry());
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
        let mut line = String::new();
        format_entry(AccessLog::Off, &entry(), &mut line);
        assert!(line.is_empty());
        assert!(!AccessLogger::new(AccessLog::Off, Box::new(std::io::sink())).enabled());
    }
}
