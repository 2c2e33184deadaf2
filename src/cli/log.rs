//! Diagnostics on stderr, all in one format: `--log-format text` (the default) or `json` (one JSON object a line), filtered by `--log-level` or `RUST_LOG`.

use std::fmt;
use std::sync::OnceLock;

use clap::ValueEnum;
use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

use crate::timefmt::Rfc3339;

/// How diagnostics are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// `TIME  LEVEL message key=value ...`, for people.
    Text,
    /// One JSON object a line (`timestamp`, `level`, `message` and the
    /// event's fields), for log pipelines.
    Json,
}

static FORMAT: OnceLock<LogFormat> = OnceLock::new();

/// The format chosen at start (text until then).
pub fn format() -> LogFormat {
    FORMAT.get().copied().unwrap_or(LogFormat::Text)
}

/// Installs the subscriber: `level` (`--log-level`) if given, else
/// `RUST_LOG`, else info, for unstick's own events.
pub fn init(format: LogFormat, level: Option<tracing::Level>) {
    let _ = FORMAT.set(format);
    let filter = match level {
        Some(l) => EnvFilter::new(format!("unstick={l}")),
        None => {
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("unstick=info"))
        }
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // A closed stderr must not panic the task that logs (the default
        // reports write errors with `eprintln!`, which panics then).
        .log_internal_errors(false)
        .with_target(false);
    let _ = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .try_init(),
        LogFormat::Json => builder.with_ansi(false).event_format(JsonLines).try_init(),
    };
}

/// A diagnostic outside `tracing` (a refused configuration, the startup
/// line), in the chosen format: `error: MESSAGE` or `{"level":"error",...}`.
pub fn error(message: &str) {
    match format() {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => eprintln!("{}", json_line("error", message, serde_json::Map::new())),
    }
}

/// An event with structured fields, written whatever the level filter says
/// (the startup line): `TIME  INFO MESSAGE {fields}` as text, or the fields
/// with `timestamp`, `level` and `message` as one JSON object.
pub fn record(message: &str, fields: serde_json::Map<String, serde_json::Value>) {
    match format() {
        LogFormat::Text => eprintln!(
            "{}  INFO {message} {}",
            Rfc3339(std::time::SystemTime::now()),
            serde_json::Value::Object(fields)
        ),
        LogFormat::Json => eprintln!("{}", json_line("info", message, fields)),
    }
}

fn json_line(
    level: &str,
    message: &str,
    mut fields: serde_json::Map<String, serde_json::Value>,
) -> serde_json::Value {
    let now = Rfc3339(std::time::SystemTime::now()).to_string();
    fields.insert("timestamp".into(), now.into());
    fields.insert("level".into(), level.into());
    fields.insert("message".into(), message.into());
    serde_json::Value::Object(fields)
}

/// The JSON event format: one object a line.
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut fields = serde_json::Map::new();
        event.record(&mut Fields(&mut fields));
        let message = match fields.remove("message") {
            Some(serde_json::Value::String(m)) => m,
            Some(other) => other.to_string(),
            None => String::new(),
        };
        let level = event.metadata().level().as_str().to_ascii_lowercase();
        writeln!(writer, "{}", json_line(&level, &message, fields))
    }
}

/// Collects an event's fields as JSON values.
struct Fields<'a>(&'a mut serde_json::Map<String, serde_json::Value>);

impl Visit for Fields<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        self.0
            .insert(field.name().into(), format!("{value:?}").into());
    }
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_f64(&mut self, field: &Field, value: f64) {
        self.0.insert(field.name().into(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().into(), value.into());
    }
}
