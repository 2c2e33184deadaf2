//! Access log: one line per request to stdout, written off the request path.
//!
//! The request path only pushes an [`Entry`] into a bounded channel; a
//! dedicated thread formats and writes. If the writer falls behind (stdout
//! blocked), entries are dropped and counted rather than stalling requests.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use crate::config::AccessLog;

/// One request, as logged.
#[derive(Debug, Clone)]
pub struct Entry {
    pub time: SystemTime,
    pub client: SocketAddr,
    pub method: http::Method,
    /// Path and query as the client sent them.
    pub path: String,
    pub status: u16,
    pub bytes: u64,
    pub duration: Duration,
    /// The backend that answered (the last one tried), if any.
    pub backend: Option<Arc<str>>,
    pub attempts: u32,
    pub request_id: String,
    /// Set when the response failed after its head was sent.
    pub error: Option<&'static str>,
}

/// Where log lines go: a writer thread behind a bounded channel.
pub struct AccessLogger {
    format: AccessLog,
    tx: Option<SyncSender<Entry>>,
    dropped: Arc<AtomicU64>,
}

/// Entries buffered before new ones are dropped.
const QUEUE: usize = 64 * 1024;

impl AccessLogger {
    /// A logger writing to stdout in `format` (no thread when `off`).
    pub fn stdout(format: AccessLog) -> AccessLogger {
        AccessLogger::new(format, Box::new(std::io::stdout()))
    }

    /// A logger writing to `out`.
    pub fn new(format: AccessLog, out: Box<dyn Write + Send>) -> AccessLogger {
        let dropped = Arc::new(AtomicU64::new(0));
        if format == AccessLog::Off {
            return AccessLogger {
                format,
                tx: None,
                dropped,
            };
        }
        let (tx, rx) = sync_channel::<Entry>(QUEUE);
        std::thread::Builder::new()
            .name("unstick-access-log".into())
            .spawn(move || {
                let mut out = std::io::BufWriter::with_capacity(64 * 1024, out);
                let mut line = String::with_capacity(512);
                while let Ok(entry) = rx.recv() {
                    let mut next = Some(entry);
                    // Write everything queued, then flush once.
                    while let Some(e) = next {
                        line.clear();
                        format_entry(format, &e, &mut line);
                        let _ = out.write_all(line.as_bytes());
                        next = rx.try_recv().ok();
                    }
                    let _ = out.flush();
                }
                let _ = out.flush();
            })
            .expect("spawn access log thread");
        AccessLogger {
            format,
            tx: Some(tx),
            dropped,
        }
    }

    pub fn enabled(&self) -> bool {
        self.tx.is_some()
    }

    pub fn format(&self) -> AccessLog {
        self.format
    }

    /// Queues a line; never blocks.
    pub fn write(&self, entry: Entry) {
        if let Some(tx) = &self.tx {
            if let Err(TrySendError::Full(_)) = tx.try_send(entry) {
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Lines dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// Formats one line (with its newline) into `out`.
pub fn format_entry(format: AccessLog, e: &Entry, out: &mut String) {
    use std::fmt::Write as _;
    let backend = e.backend.as_deref().unwrap_or("-");
    match format {
        AccessLog::Off => {}
        AccessLog::Common => {
            // Common Log Format, plus duration, backend, attempts and request id.
            let _ = writeln!(
                out,
                "{} - - [{}] \"{} {} HTTP/1.1\" {} {} {:.6} {} {} {}",
                e.client.ip(),
                httpdate::fmt_http_date(e.time),
                e.method,
                e.path,
                e.status,
                e.bytes,
                e.duration.as_secs_f64(),
                backend,
                e.attempts,
                e.request_id
            );
        }
        AccessLog::Json => {
            let time = e
                .time
                .duration_since(SystemTime::UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs_f64();
            let v = serde_json::json!({
                "time": time,
                "client": e.client.to_string(),
                "method": e.method.as_str(),
                "path": e.path,
                "status": e.status,
                "bytes": e.bytes,
                "duration": e.duration.as_secs_f64(),
                "backend": e.backend.as_deref(),
                "attempts": e.attempts,
                "request_id": e.request_id,
                "error": e.error,
            });
            let _ = writeln!(out, "{v}");
        }
    }
}
