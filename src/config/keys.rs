//! Every config key, its environment variable and its meaning: one table.

/// How an environment variable's text becomes a TOML value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A string (addresses, durations, names).
    Text,
    /// An integer or a float.
    Number,
    Bool,
    /// Comma-separated strings.
    List,
    /// A TOML value written inline, e.g. an array of tables:
    /// `[{ names = ["api.example.com"], cert = "api.pem", key = "api.key" }]`.
    Toml,
}

/// One configuration key.
#[derive(Debug, Clone, Copy)]
pub struct KeySpec {
    /// Dotted path in the TOML file.
    pub path: &'static str,
    pub kind: Kind,
    pub default: &'static str,
    pub help: &'static str,
}

impl KeySpec {
    /// `UNSTICK_` + the path in upper case, dots as underscores.
    pub fn env_var(&self) -> String {
        format!(
            "UNSTICK_{}",
            self.path.replace('.', "_").to_ascii_uppercase()
        )
    }

    /// Reads an environment variable's text as a value of this key's kind.
    /// Text that does not fit the kind stays a string, so validation names it.
    pub fn parse_text(&self, text: &str) -> toml::Value {
        let t = text.trim();
        match self.kind {
            Kind::Text => toml::Value::String(t.to_owned()),
            Kind::Bool => match t.to_ascii_lowercase().as_str() {
                "true" | "1" | "yes" | "on" => toml::Value::Boolean(true),
                "false" | "0" | "no" | "off" => toml::Value::Boolean(false),
                _ => toml::Value::String(t.to_owned()),
            },
            Kind::Number => t
                .parse::<i64>()
                .map(toml::Value::Integer)
                .or_else(|_| t.parse::<f64>().map(toml::Value::Float))
                .unwrap_or_else(|_| toml::Value::String(t.to_owned())),
            Kind::Toml => format!("v = {t}")
                .parse::<toml::Table>()
                .ok()
                .and_then(|mut table| table.remove("v"))
                .unwrap_or_else(|| toml::Value::String(t.to_owned())),
            Kind::List => toml::Value::Array(
                t.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_owned()))
                    .collect(),
            ),
        }
    }
}

const fn key(path: &'static str, kind: Kind, default: &'static str, help: &'static str) -> KeySpec {
    KeySpec {
        path,
        kind,
        default,
        help,
    }
}

use Kind::*;

/// Every key `unstick serve` reads, each with its environment variable.
pub const KEYS: &[KeySpec] = &[
    key("listen", Text, "127.0.0.1:8080", "proxy listener address"),
    key(
        "workers",
        Number,
        "0",
        "worker threads serving clients, each with its own runtime and pools (0: one per CPU)",
    ),
    key(
        "backend_header",
        Text,
        "",
        "a response header naming the backend that answered, e.g. `x-unstick-backend` (empty: off)",
    ),
    key(
        "http1_fast_path",
        Bool,
        "true",
        "serve plain HTTP/1.1 requests to plain HTTP/1.1 backends without hyper's dispatchers (false: hyper serves everything)",
    ),
    key(
        "underscores_in_headers",
        Bool,
        "false",
        "pass on request header fields whose names hold `_` (false: they are dropped, as nginx does)",
    ),
    key(
        "admin",
        Text,
        "127.0.0.1:8484",
        "admin listener address, or `off`",
    ),
    key(
        "algorithm",
        Text,
        "round-robin",
        "`round-robin` or `least-connections`",
    ),
    key(
        "access_log",
        Text,
        "json",
        "`off`, `common` or `json` (to stdout)",
    ),
    key(
        "backends",
        List,
        "",
        "backends, `[SCHEME://]HOST:PORT[=WEIGHT]`, comma-separated",
    ),
    key("timeouts.connect", Text, "1s", "connect to a backend"),
    key(
        "timeouts.response_header",
        Text,
        "30s",
        "request sent -> response head from the backend",
    ),
    key(
        "timeouts.client_header",
        Text,
        "10s",
        "a client must send its request head within this",
    ),
    key(
        "timeouts.client_idle",
        Text,
        "60s",
        "idle client keep-alive connections close after this",
    ),
    key(
        "timeouts.client_stall",
        Text,
        "30s",
        "a client that sends no byte of its request body, or takes no byte of its response, for this long is cut off (408 if no response began)",
    ),
    key(
        "timeouts.upstream_stall",
        Text,
        "60s",
        "a backend that sends no byte of its response body for this long is cut off (the client's response ends short)",
    ),
    key(
        "timeouts.upstream_idle",
        Text,
        "30s",
        "idle pooled backend connections close after this",
    ),
    key(
        "timeouts.drain",
        Text,
        "30s",
        "on shutdown, requests in flight get this long",
    ),
    key(
        "limits.max_connections",
        Number,
        "10000",
        "client connections open at once",
    ),
    key(
        "limits.max_header_bytes",
        Text,
        "64KiB",
        "larger request heads get 431",
    ),
    key(
        "limits.max_headers",
        Number,
        "100",
        "more request headers than this get 431",
    ),
    key(
        "limits.max_request_body",
        Text,
        "0",
        "a request body larger than this gets 413 (0: no limit)",
    ),
    key(
        "limits.upstream_idle_per_backend",
        Number,
        "512",
        "idle keep-alive connections kept per backend",
    ),
    key(
        "retries.enabled",
        Bool,
        "true",
        "retry failed requests when it is safe",
    ),
    key(
        "retries.max_per_request",
        Number,
        "2",
        "retries per request",
    ),
    key(
        "retries.budget_ratio",
        Number,
        "0.2",
        "retries at most this fraction of requests...",
    ),
    key(
        "retries.budget_min_per_second",
        Number,
        "10",
        "...plus this many per second",
    ),
    key(
        "retries.replay_buffer",
        Text,
        "64KiB",
        "request bodies up to this size can be replayed",
    ),
    key(
        "retries.response_buffer",
        Text,
        "64KiB",
        "a retryable request's response body up to this size is held until whole (0: off)",
    ),
    key(
        "retries.response_hold",
        Text,
        "20ms",
        "...if it arrives within this; a slower one streams",
    ),
    key(
        "health.eject_after_failures",
        Number,
        "3",
        "consecutive failures that eject a backend",
    ),
    key(
        "health.backoff",
        Text,
        "1s",
        "probe backoff for ejected backends when active checks are off",
    ),
    key(
        "health.slow_start",
        Text,
        "0",
        "ramp a returning backend's share over this window (0: off)",
    ),
    key(
        "health.active.enabled",
        Bool,
        "false",
        "active HTTP health checks",
    ),
    key(
        "health.active.path",
        Text,
        "/healthz",
        "path probed with GET",
    ),
    key("health.active.interval", Text, "2s", "time between probes"),
    key(
        "health.active.timeout",
        Text,
        "1s",
        "a probe slower than this fails",
    ),
    key(
        "health.active.rise",
        Number,
        "2",
        "successes that bring a backend back",
    ),
    key(
        "health.active.fall",
        Number,
        "3",
        "failures that take a backend out",
    ),
    key(
        "health.active.expect_status",
        Text,
        "200-399",
        "statuses that count as healthy",
    ),
    key(
        "affinity_cookies.policy",
        Text,
        "strip",
        "`strip`, `reject` or `log`",
    ),
    key(
        "affinity_cookies.names",
        List,
        "",
        "extra affinity cookie names or `prefix*` patterns",
    ),
    key(
        "affinity_cookies.exempt",
        List,
        "",
        "cookie names never refused",
    ),
    key(
        "tls.cert",
        Text,
        "",
        "PEM certificate chain for the listener (enables TLS)",
    ),
    key("tls.key", Text, "", "PEM private key for the listener"),
    key(
        "tls.sni",
        Toml,
        "",
        "more certificates chosen by SNI; in the environment an inline TOML array, \
         `[{ names = [\"api.example.com\"], cert = \"api.pem\", key = \"api.key\" }]`",
    ),
    key(
        "tls.reload_interval",
        Text,
        "10s",
        "how often certificate files are checked for changes",
    ),
    key(
        "tls.redirect_listen",
        Text,
        "",
        "a cleartext listener that redirects to https",
    ),
    key(
        "http2.enabled",
        Bool,
        "true",
        "accept HTTP/2 (ALPN on TLS, prior knowledge on cleartext)",
    ),
    key(
        "http2.max_concurrent_streams",
        Number,
        "256",
        "streams per client connection",
    ),
    key(
        "http2.initial_stream_window",
        Text,
        "1MiB",
        "flow-control window per stream",
    ),
    key(
        "http2.initial_connection_window",
        Text,
        "4MiB",
        "flow-control window per connection",
    ),
    key(
        "upstream_tls.ca_file",
        Text,
        "",
        "CA bundle for https/h2 backends (default: built-in Mozilla roots)",
    ),
    key(
        "upstream_tls.client_cert",
        Text,
        "",
        "client certificate for mTLS to backends",
    ),
    key(
        "upstream_tls.client_key",
        Text,
        "",
        "client key for mTLS to backends",
    ),
    key(
        "discovery.interval",
        Text,
        "5s",
        "backend names are resolved again at least this often (sooner when the DNS TTL is shorter)",
    ),
    key(
        "discovery.min_interval",
        Text,
        "1s",
        "no name is resolved more often, whatever the TTL; failed lookups retry after this, doubling",
    ),
    key(
        "reload.watch",
        Bool,
        "true",
        "re-read the config file when it changes (SIGHUP and `POST /api/reload` always work)",
    ),
    key(
        "session_watch.enabled",
        Bool,
        "true",
        "watch session cookies for hops between instances (`GET /api/statelessness`)",
    ),
    key(
        "session_watch.entries",
        Number,
        "100000",
        "session values remembered at most (keyed hashes, least recently used dropped first)",
    ),
    key(
        "session_watch.names",
        List,
        "",
        "cookie names always watched (others are learned from backends' `Set-Cookie`)",
    ),
    key(
        "session_watch.ignore",
        List,
        "",
        "cookie names or `prefix*` patterns never watched",
    ),
    key(
        "session_watch.recent",
        Text,
        "10m",
        "a hop is judged only if its session was issued or answered within this",
    ),
    key(
        "session_watch.warn_share",
        Number,
        "0.05",
        "log a warning when this share of a cookie's judged hops broke...",
    ),
    key(
        "session_watch.warn_window",
        Text,
        "60s",
        "...over this window (at most one warning per cookie per window)...",
    ),
    key(
        "session_watch.warn_min_hops",
        Number,
        "20",
        "...with at least this many judged hops in it",
    ),
];

/// [`KEYS`] as a Markdown table (key, environment variable, default,
/// meaning): the key table in docs/configuration.md is this text.
pub fn markdown_table() -> String {
    let mut out =
        String::from("| key | environment variable | default | meaning |\n|---|---|---|---|\n");
    for k in KEYS {
        let default = if k.default.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", k.default)
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {} |\n",
            k.path,
            k.env_var(),
            default,
            k.help.replace('|', "\\|")
        ));
    }
    out
}
