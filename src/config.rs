//! Configuration: raw TOML (plus env and flag overrides) -> a validated [`Config`].
//!
//! Loading goes in four steps, each of which can fail with a [`ConfigError`]
//! that names where the bad value came from (file and line, environment
//! variable, or flag) and the key:
//!
//! 1. the file is parsed into a TOML table;
//! 2. keys that ask for stickiness are refused with an explanation;
//! 3. overrides (environment variables, then flags) are written over the table;
//! 4. the table is deserialized into [`RawConfig`] (unknown keys are errors) and
//!    validated into [`Config`] (typed addresses, durations, sizes, ranges).
//!
//! This module depends on no other module of the crate, and on neither tokio nor hyper.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod env;
mod keys;
mod raw;
mod value;

pub use env::{check_names as check_env_names, OTHER_VARIABLES};
pub use keys::{markdown_table, KeySpec, Kind, KEYS};
pub use raw::RawConfig;
pub use value::{parse_duration, parse_size, BackendSpec, StatusRange, UpstreamProtocol};

/// Where a configuration value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A line (and column, for a syntax error) of a config file.
    File {
        path: PathBuf,
        line: Option<usize>,
        column: Option<usize>,
    },
    /// An environment variable.
    Env(String),
    /// A command-line flag.
    Flag(String),
    /// A built-in default (only wrong if the code is).
    Default,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File {
                path,
                line: Some(l),
                column: Some(c),
            } => write!(f, "{}:{l}:{c}", path.display()),
            Origin::File {
                path,
                line: Some(l),
                column: None,
            } => write!(f, "{}:{l}", path.display()),
            Origin::File {
                path, line: None, ..
            } => write!(f, "{}", path.display()),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::Flag(name) => write!(f, "flag {name}"),
            Origin::Default => write!(f, "built-in default"),
        }
    }
}

/// A configuration mistake: where it is, which key, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub origin: Origin,
    /// Dotted path of the key, e.g. `timeouts.connect` or `backends[1].weight`;
    /// empty for a mistake no key holds (a syntax error, an unreadable file).
    pub key: String,
    pub message: String,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.key.as_str() {
            "" => write!(f, "{}: {}", self.origin, self.message),
            key => write!(f, "{}: key `{key}`: {}", self.origin, self.message),
        }
    }
}

/// One value set from outside the file: an environment variable or a flag.
#[derive(Debug, Clone)]
pub struct Override {
    pub origin: Origin,
    /// Dotted key path, as in [`KEYS`].
    pub key: String,
    pub value: toml::Value,
}

/// The algorithm that spreads requests. Neither looks at the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    RoundRobin,
    LeastConnections,
}

/// Access log format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AccessLog {
    Off,
    Common,
    Json,
}

/// What to do with known load-balancer affinity cookies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AffinityPolicy {
    /// Remove them in both directions.
    Strip,
    /// Remove them from requests; a response that sets one becomes a 502.
    Reject,
    /// Pass them through, but log and count.
    Log,
}

/// The validated configuration that `serve` runs with.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub listen: SocketAddr,
    /// The admin listener (`None`: off).
    pub admin: Option<SocketAddr>,
    pub algorithm: Algorithm,
    pub access_log: AccessLog,
    /// Worker threads serving clients, each with its own runtime and
    /// connection pools (0: one per CPU).
    pub workers: usize,
    /// A response header (lower case) naming the backend that answered, as
    /// `IP:PORT`. Off by default: it shows internal addresses to clients.
    /// `unstick chaos` turns it on to tell instances apart.
    pub backend_header: Option<String>,
    /// Plain HTTP/1.1 requests to plain HTTP/1.1 backends skip hyper's
    /// dispatchers (`server::fast`, `proxy::h1`). On by default; off sends
    /// every request through hyper.
    pub http1_fast_path: bool,
    /// Request header fields whose names hold `_` are passed on (off: they
    /// are dropped, as nginx does, since a backend may read `X_Forwarded_For`
    /// and `X-Forwarded-For` as one header).
    pub underscores_in_headers: bool,
    pub backends: Vec<BackendSpec>,
    pub timeouts: Timeouts,
    pub limits: Limits,
    pub retries: Retries,
    pub health: Health,
    pub affinity: Affinity,
    pub tls: Option<Tls>,
    pub http2: Http2,
    pub upstream_tls: UpstreamTls,
    pub discovery: Discovery,
    pub reload: Reload,
    pub session_watch: SessionWatch,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Timeouts {
    /// TCP (and TLS) connect to a backend.
    pub connect: Duration,
    /// From the request sent to the backend's response head.
    pub response_header: Duration,
    /// A client must send a complete request head within this time.
    pub client_header: Duration,
    /// A client keep-alive connection with no request in flight is closed after this.
    pub client_idle: Duration,
    /// While a request is under way, a client that sends none of its body
    /// or takes none of its response for this long is cut off.
    pub client_stall: Duration,
    /// Once a response head is in, a backend that sends none of its body for
    /// this long is cut off (the client's response ends short).
    pub upstream_stall: Duration,
    /// A pooled backend connection unused for this long is closed.
    pub upstream_idle: Duration,
    /// On shutdown, requests in flight get this long to finish.
    pub drain: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Limits {
    pub max_connections: usize,
    /// Request head larger than this gets a 431.
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// A request body larger than this gets a 413 (0: no limit).
    pub max_request_body: u64,
    /// Idle keep-alive connections kept per backend.
    pub upstream_idle_per_backend: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Retries {
    pub enabled: bool,
    pub max_per_request: u32,
    /// Retries may be at most this fraction of requests...
    pub budget_ratio: f64,
    /// ... plus this many per second.
    pub budget_min_per_second: u32,
    /// Request bodies up to this size are held so the request can be replayed.
    pub replay_buffer: usize,
    /// A retryable request's response whose body is at most this many
    /// bytes is held until it is whole, so a backend that dies mid-response
    /// is retried unseen (0: never held).
    pub response_buffer: usize,
    /// ... if the whole response arrives within this; a slower one streams.
    pub response_hold: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Health {
    /// Consecutive failures (other than a refused connect) that eject a backend.
    pub eject_after_failures: u32,
    /// With active checks off, an ejected backend is probed again after this
    /// (doubling up to 30 s while it keeps failing).
    pub backoff: Duration,
    /// A backend returning to rotation ramps up its share over this window (zero: off).
    pub slow_start: Duration,
    pub active: ActiveHealth,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ActiveHealth {
    pub enabled: bool,
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    /// Consecutive successes that bring a backend back.
    pub rise: u32,
    /// Consecutive failures that take it out.
    pub fall: u32,
    pub expect_status: StatusRange,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Affinity {
    pub policy: AffinityPolicy,
    /// Extra cookie names (or `prefix*` patterns) to refuse.
    pub names: Vec<String>,
    /// Names never refused, even if built in.
    pub exempt: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tls {
    /// The default certificate chain and key (PEM).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Extra certificates chosen by SNI.
    pub sni: Vec<SniCert>,
    /// How often certificate files are checked for changes.
    pub reload_interval: Duration,
    /// A cleartext listener that redirects to https.
    pub redirect_listen: Option<SocketAddr>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SniCert {
    pub names: Vec<String>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Http2 {
    /// Accept HTTP/2 (h2c prior knowledge on cleartext, ALPN on TLS).
    pub enabled: bool,
    pub max_concurrent_streams: u32,
    pub initial_stream_window: u32,
    pub initial_connection_window: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct UpstreamTls {
    /// CA bundle for `https`/`h2` backends (None: the built-in Mozilla roots, webpki-roots).
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Discovery {
    /// How often each backend name is resolved again.
    pub interval: Duration,
    /// No name is resolved more often than this (a failed lookup is retried
    /// after this, doubling up to `interval`).
    pub min_interval: Duration,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// Re-read the config file when it changes (SIGHUP and the admin API always work).
    pub watch: bool,
}

/// Watching session cookies for hops between instances (`[session_watch]`).
#[derive(Debug, Clone, PartialEq)]
pub struct SessionWatch {
    pub enabled: bool,
    /// At most this many session values (as keyed hashes) are remembered.
    pub entries: usize,
    /// Cookie names always watched, whatever their values look like.
    pub names: Vec<String>,
    /// Cookie names (or `prefix*` patterns) never watched.
    pub ignore: Vec<String>,
    /// A hop is judged only if its session was issued or answered within this.
    pub recent: Duration,
    /// A warning is logged when this share of a cookie's judged hops broke...
    pub warn_share: f64,
    /// ... over this window ...
    pub warn_window: Duration,
    /// ... with at least this many judged hops in it.
    pub warn_min_hops: u64,
}

// === impl Config ===

impl Config {
    /// Loads and validates: the file (if any), then `overrides` in order (later wins).
    pub fn load(file: Option<&Path>, overrides: &[Override]) -> Result<Config, ConfigError> {
        RawConfig::load(file, overrides).map(|(_, config)| config)
    }

    /// The configuration used when no file and no overrides are given.
    pub fn defaults() -> Config {
        RawConfig::default()
            .validate(&Locator::none())
            .expect("built-in defaults are valid")
    }
}

impl RawConfig {
    /// Loads the merged raw configuration (for printing) and its validated form.
    pub fn load(
        file: Option<&Path>,
        overrides: &[Override],
    ) -> Result<(RawConfig, Config), ConfigError> {
        let text = match file {
            Some(path) => std::fs::read_to_string(path).map_err(|e| ConfigError {
                origin: Origin::File {
                    path: path.to_owned(),
                    line: None,
                    column: None,
                },
                key: String::new(),
                message: format!("cannot read the config file: {e}"),
            })?,
            None => String::new(),
        };
        RawConfig::parse(&text, file, overrides)
    }

    /// [`RawConfig::load`] for a file's text (`file` names it in errors).
    pub fn parse(
        text: &str,
        file: Option<&Path>,
        overrides: &[Override],
    ) -> Result<(RawConfig, Config), ConfigError> {
        let locator = Locator {
            path: file.map(Path::to_owned),
            text,
            overrides,
        };
        let mut table: toml::Table = text.parse().map_err(|e: toml::de::Error| ConfigError {
            origin: locator.syntax_origin(e.span().map(|s| s.start)),
            key: String::new(),
            message: format!("not valid TOML: {}", e.message().trim()),
        })?;
        refuse_stickiness(&table, &locator)?;
        for o in overrides {
            set_path(&mut table, &o.key, o.value.clone()).map_err(|message| ConfigError {
                origin: o.origin.clone(),
                key: o.key.clone(),
                message,
            })?;
        }
        let raw: RawConfig = serde_path_to_error::deserialize(toml::Value::Table(table))
            .map_err(|e| locator.serde_error(e))?;
        let config = raw.validate(&locator)?;
        Ok((raw, config))
    }

    /// The effective configuration as TOML, every key included.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a RawConfig always serializes")
    }
}

// === stickiness ===

/// Keys that ask a load balancer for session affinity. unstick refuses them.
const STICKY_KEYS: &[&str] = &[
    "sticky",
    "sticky_sessions",
    "sticky_session",
    "stickiness",
    "affinity",
    "session_affinity",
    "hash",
    "hash_key",
    "hash_on",
    "ip_hash",
    "consistent_hash",
    "session_cookie",
    "sticky_cookie",
    "affinity_cookie",
];

/// The explanation every refused sticky setting carries.
pub const STICKY_EXPLANATION: &str =
    "unstick never routes by client identity (no sticky sessions, \
cookie affinity or client hashing): any instance must be able to serve any request. Keep session \
state in a backing service that every instance shares (a database, Redis) instead of in a \
process's memory or disk, then run `unstick chaos` to prove the app survives losing an instance";

fn refuse_stickiness(table: &toml::Table, locator: &Locator) -> Result<(), ConfigError> {
    fn walk(table: &toml::Table, prefix: &str, found: &mut Vec<String>) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if STICKY_KEYS.contains(&k.to_ascii_lowercase().as_str()) {
                found.push(path.clone());
            }
            match v {
                toml::Value::Table(t) => walk(t, &path, found),
                toml::Value::Array(items) => {
                    for (i, item) in items.iter().enumerate() {
                        if let toml::Value::Table(t) = item {
                            walk(t, &format!("{path}[{i}]"), found);
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let mut found = Vec::new();
    walk(table, "", &mut found);
    if let Some(key) = found.into_iter().next() {
        return Err(ConfigError {
            origin: locator.origin_of(&key),
            message: format!("session affinity is refused. {STICKY_EXPLANATION}"),
            key,
        });
    }
    Ok(())
}

/// Writes `value` at a dotted `path`, creating tables on the way.
fn set_path(table: &mut toml::Table, path: &str, value: toml::Value) -> Result<(), String> {
    let mut parts = path.split('.').peekable();
    let mut current = table;
    while let Some(part) = parts.next() {
        if parts.peek().is_none() {
            current.insert(part.to_owned(), value);
            return Ok(());
        }
        let entry = current
            .entry(part.to_owned())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        current = match entry {
            toml::Value::Table(t) => t,
            _ => return Err(format!("`{part}` is not a table in the config file")),
        };
    }
    Ok(())
}

// === impl Locator ===

/// Finds where a key came from: an override, or a line of the file.
pub(crate) struct Locator<'a> {
    path: Option<PathBuf>,
    text: &'a str,
    overrides: &'a [Override],
}

impl<'a> Locator<'a> {
    pub(crate) fn none() -> Locator<'static> {
        Locator {
            path: None,
            text: "",
            overrides: &[],
        }
    }

    fn file_origin(&self, offset: Option<usize>) -> Origin {
        match &self.path {
            Some(path) => Origin::File {
                path: path.clone(),
                line: offset.map(|o| line_of(self.text, o)),
                column: None,
            },
            None => Origin::Default,
        }
    }

    /// Where a syntax error is: line and column (1-based, in characters).
    fn syntax_origin(&self, offset: Option<usize>) -> Origin {
        match (self.file_origin(offset), offset) {
            (Origin::File { path, line, .. }, Some(o)) => {
                let o = o.min(self.text.len());
                let start = self.text[..o].rfind('\n').map_or(0, |i| i + 1);
                let column = self.text.get(start..o).map(|t| t.chars().count() + 1);
                Origin::File { path, line, column }
            }
            (origin, _) => origin,
        }
    }

    /// Origin of a dotted key path such as `backends[1].weight`.
    pub(crate) fn origin_of(&self, key: &str) -> Origin {
        // The last override of this key (or of a parent, e.g. `backends`) wins.
        let base = key.split(['.', '[']).next().unwrap_or(key);
        if let Some(o) = self
            .overrides
            .iter()
            .rev()
            .find(|o| o.key == key || key.starts_with(&format!("{}.", o.key)) || o.key == base)
        {
            return o.origin.clone();
        }
        let span = self.span_of(key);
        // A table the file does not have, set through one of its keys by a
        // flag or variable (`--tls-cert` sets `tls`): that flag or variable.
        if span.is_none() {
            let child = format!("{key}.");
            if let Some(o) = self
                .overrides
                .iter()
                .rev()
                .find(|o| o.key.starts_with(&child))
            {
                return o.origin.clone();
            }
        }
        self.file_origin(span)
    }

    fn span_of(&self, key: &str) -> Option<usize> {
        use toml::de::{DeTable, DeValue};
        let doc = DeTable::parse(self.text).ok()?;
        let mut value: Option<&toml::Spanned<DeValue>> = None;
        let mut table: Option<&DeTable> = Some(doc.get_ref());
        let mut key_start = None;
        for segment in key_path_segments(key) {
            match segment {
                Segment::Key(k) => {
                    let (name, v) = table?.get_key_value(k)?;
                    key_start = Some(name.span().start);
                    table = v.get_ref().as_table();
                    value = Some(v);
                }
                Segment::Index(i) => {
                    let v = value?.get_ref().get(i)?;
                    key_start = Some(v.span().start);
                    table = v.get_ref().as_table();
                    value = Some(v);
                }
            }
        }
        key_start
    }

    fn serde_error(&self, e: serde_path_to_error::Error<toml::de::Error>) -> ConfigError {
        let mut key = e.path().to_string();
        let message = e.inner().message().trim().to_owned();
        // serde reports an unknown field at its parent: name the field itself.
        if let Some(rest) = message.strip_prefix("unknown field `") {
            if let Some(name) = rest.split('`').next().filter(|n| !key.ends_with(n)) {
                key = if key == "." || key.is_empty() {
                    name.to_owned()
                } else {
                    format!("{key}.{name}")
                };
            }
        }
        if key == "." {
            key.clear();
        }
        ConfigError {
            origin: self.origin_of(&key),
            key,
            message,
        }
    }
}

enum Segment<'k> {
    Key(&'k str),
    Index(usize),
}

fn key_path_segments(key: &str) -> Vec<Segment<'_>> {
    let mut out = Vec::new();
    for part in key.split('.') {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            out.push(Segment::Key(&rest[..open]));
            rest = &rest[open..];
            while let Some(close) = rest.find(']') {
                if let Ok(i) = rest[1..close].parse() {
                    out.push(Segment::Index(i));
                }
                rest = &rest[close + 1..];
            }
        } else if !rest.is_empty() {
            out.push(Segment::Key(rest));
        }
    }
    out
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// Where `key`'s value came from: the last flag or environment variable
/// that set it (or the table it is in), else its line in `file`.
pub fn origin_of_key(file: Option<&Path>, overrides: &[Override], key: &str) -> Origin {
    let text = file
        .and_then(|p| std::fs::read_to_string(p).ok())
        .unwrap_or_default();
    let locator = Locator {
        path: file.map(Path::to_owned),
        text: &text,
        overrides,
    };
    locator.origin_of(key)
}

/// Shortcut used by validation: an error at `key`.
pub(crate) fn invalid(locator: &Locator, key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError {
        origin: locator.origin_of(key),
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The overrides that environment variables give, for every key in [`KEYS`].
///
/// `lookup` is `std::env::var` in production and a map in tests.
pub fn env_overrides(lookup: impl Fn(&str) -> Option<String>) -> Vec<Override> {
    let mut out = Vec::new();
    for spec in KEYS {
        if let Some(text) = lookup(&spec.env_var()) {
            out.push(Override {
                origin: Origin::Env(spec.env_var()),
                key: spec.path.to_owned(),
                value: spec.parse_text(&text),
            });
        }
    }
    out
}

/// A map of key path -> origin, for printing where each effective value came from.
pub fn describe_origins(overrides: &[Override]) -> BTreeMap<String, String> {
    overrides
        .iter()
        .map(|o| (o.key.clone(), o.origin.to_string()))
        .collect()
}

#[cfg(test)]
mod tests;
