//! The raw, serde-shaped configuration (every key, with defaults) and its validation.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::value::{RawDuration, RawSize, MAX_WEIGHT};
use super::{
    invalid, AccessLog, ActiveHealth, Affinity, AffinityPolicy, Algorithm, BackendSpec, Config,
    ConfigError, Discovery, Health, Http2, Limits, Locator, Reload, Retries, SessionWatch, SniCert,
    StatusRange, Timeouts, Tls, UpstreamProtocol, UpstreamTls,
};

/// The configuration as written: every key optional, with its default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawConfig {
    pub listen: String,
    /// An address, or `off`.
    pub admin: String,
    pub algorithm: String,
    pub access_log: String,
    /// Worker threads serving clients (0: one per CPU).
    pub workers: u64,
    /// A response header naming the backend that answered ("": none).
    pub backend_header: String,
    /// Serve plain HTTP/1.1 requests without hyper's dispatchers.
    pub http1_fast_path: bool,
    /// Pass request header fields whose names hold `_` on to backends.
    pub underscores_in_headers: bool,
    /// Each entry is `"[SCHEME://]HOST:PORT[=WEIGHT]"` or a table
    /// `{ address, weight, protocol }`.
    pub backends: Vec<toml::Value>,
    pub timeouts: RawTimeouts,
    pub limits: RawLimits,
    pub retries: RawRetries,
    pub health: RawHealth,
    pub affinity_cookies: RawAffinity,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls: Option<RawTls>,
    pub http2: RawHttp2,
    pub upstream_tls: RawUpstreamTls,
    pub discovery: RawDiscovery,
    pub reload: RawReload,
    pub session_watch: RawSessionWatch,
}

impl Default for RawConfig {
    fn default() -> Self {
        RawConfig {
            listen: "127.0.0.1:8080".into(),
            admin: "127.0.0.1:8484".into(),
            algorithm: "round-robin".into(),
            access_log: "json".into(),
            workers: 0,
            backend_header: String::new(),
            http1_fast_path: true,
            underscores_in_headers: false,
            backends: Vec::new(),
            timeouts: RawTimeouts::default(),
            limits: RawLimits::default(),
            retries: RawRetries::default(),
            health: RawHealth::default(),
            affinity_cookies: RawAffinity::default(),
            tls: None,
            http2: RawHttp2::default(),
            upstream_tls: RawUpstreamTls::default(),
            discovery: RawDiscovery::default(),
            reload: RawReload::default(),
            session_watch: RawSessionWatch::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTimeouts {
    pub connect: RawDuration,
    pub response_header: RawDuration,
    pub client_header: RawDuration,
    pub client_idle: RawDuration,
    pub client_stall: RawDuration,
    pub upstream_stall: RawDuration,
    pub upstream_idle: RawDuration,
    pub drain: RawDuration,
}

impl Default for RawTimeouts {
    fn default() -> Self {
        RawTimeouts {
            connect: "1s".into(),
            response_header: "30s".into(),
            client_header: "10s".into(),
            client_idle: "60s".into(),
            client_stall: "30s".into(),
            upstream_stall: "60s".into(),
            upstream_idle: "30s".into(),
            drain: "30s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawLimits {
    pub max_connections: u64,
    pub max_header_bytes: RawSize,
    pub max_headers: u64,
    pub max_request_body: RawSize,
    pub upstream_idle_per_backend: u64,
}

impl Default for RawLimits {
    fn default() -> Self {
        RawLimits {
            max_connections: 10_000,
            max_header_bytes: RawSize::Text("64KiB".into()),
            max_headers: 100,
            max_request_body: RawSize::Text("0".into()),
            upstream_idle_per_backend: 512,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawRetries {
    pub enabled: bool,
    pub max_per_request: u64,
    pub budget_ratio: f64,
    pub budget_min_per_second: u64,
    pub replay_buffer: RawSize,
    pub response_buffer: RawSize,
    pub response_hold: RawDuration,
}

impl Default for RawRetries {
    fn default() -> Self {
        RawRetries {
            enabled: true,
            max_per_request: 2,
            budget_ratio: 0.2,
            budget_min_per_second: 10,
            replay_buffer: RawSize::Text("64KiB".into()),
            response_buffer: RawSize::Text("64KiB".into()),
            response_hold: "20ms".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHealth {
    pub eject_after_failures: u64,
    pub backoff: RawDuration,
    pub slow_start: RawDuration,
    pub active: RawActiveHealth,
}

impl Default for RawHealth {
    fn default() -> Self {
        RawHealth {
            eject_after_failures: 3,
            backoff: "1s".into(),
            slow_start: "0".into(),
            active: RawActiveHealth::default(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawActiveHealth {
    pub enabled: bool,
    pub path: String,
    pub interval: RawDuration,
    pub timeout: RawDuration,
    pub rise: u64,
    pub fall: u64,
    pub expect_status: String,
}

impl Default for RawActiveHealth {
    fn default() -> Self {
        RawActiveHealth {
            enabled: false,
            path: "/healthz".into(),
            interval: "2s".into(),
            timeout: "1s".into(),
            rise: 2,
            fall: 3,
            expect_status: "200-399".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawAffinity {
    pub policy: String,
    pub names: Vec<String>,
    pub exempt: Vec<String>,
}

impl Default for RawAffinity {
    fn default() -> Self {
        RawAffinity {
            policy: "strip".into(),
            names: Vec::new(),
            exempt: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawTls {
    pub cert: String,
    pub key: String,
    pub sni: Vec<RawSniCert>,
    pub reload_interval: RawDuration,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redirect_listen: Option<String>,
}

impl Default for RawTls {
    fn default() -> Self {
        RawTls {
            cert: String::new(),
            key: String::new(),
            sni: Vec::new(),
            reload_interval: "10s".into(),
            redirect_listen: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSniCert {
    pub names: Vec<String>,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawHttp2 {
    pub enabled: bool,
    pub max_concurrent_streams: u64,
    pub initial_stream_window: RawSize,
    pub initial_connection_window: RawSize,
}

impl Default for RawHttp2 {
    fn default() -> Self {
        RawHttp2 {
            enabled: true,
            max_concurrent_streams: 256,
            initial_stream_window: RawSize::Text("1MiB".into()),
            initial_connection_window: RawSize::Text("4MiB".into()),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RawUpstreamTls {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_cert: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawDiscovery {
    pub interval: RawDuration,
    pub min_interval: RawDuration,
}

impl Default for RawDiscovery {
    fn default() -> Self {
        RawDiscovery {
            interval: "5s".into(),
            min_interval: "1s".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawReload {
    pub watch: bool,
}

impl Default for RawReload {
    fn default() -> Self {
        RawReload { watch: true }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RawSessionWatch {
    pub enabled: bool,
    pub entries: u64,
    pub names: Vec<String>,
    pub ignore: Vec<String>,
    pub recent: RawDuration,
    pub warn_share: f64,
    pub warn_window: RawDuration,
    pub warn_min_hops: u64,
}

impl Default for RawSessionWatch {
    fn default() -> Self {
        RawSessionWatch {
            enabled: true,
            entries: 100_000,
            names: Vec::new(),
            ignore: Vec::new(),
            recent: "10m".into(),
            warn_share: 0.05,
            warn_window: "60s".into(),
            warn_min_hops: 20,
        }
    }
}

impl RawSessionWatch {
    fn validate(&self, l: &Locator) -> Result<SessionWatch, ConfigError> {
        let names = check_cookie_names(l, "session_watch.names", &self.names)?;
        if let Some(i) = names.iter().position(|n| n.ends_with('*')) {
            return Err(invalid(
                l,
                &format!("session_watch.names[{i}]"),
                "names to watch are exact cookie names (patterns go in `ignore`)",
            ));
        }
        if !(self.warn_share > 0.0 && self.warn_share <= 1.0) {
            return Err(invalid(
                l,
                "session_watch.warn_share",
                format!("must be above 0 and at most 1, got {}", self.warn_share),
            ));
        }
        Ok(SessionWatch {
            enabled: self.enabled,
            entries: range(l, "session_watch.entries", self.entries, 16, 100_000_000)? as usize,
            names,
            ignore: check_cookie_names(l, "session_watch.ignore", &self.ignore)?,
            recent: positive_dur(l, "session_watch.recent", &self.recent)?,
            warn_share: self.warn_share,
            warn_window: positive_dur(l, "session_watch.warn_window", &self.warn_window)?,
            warn_min_hops: range(
                l,
                "session_watch.warn_min_hops",
                self.warn_min_hops,
                1,
                1 << 32,
            )?,
        })
    }
}

// === validation ===

fn addr(l: &Locator, key: &str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.trim().parse().map_err(|_| {
        invalid(
            l,
            key,
            format!("`{text}` is not an IP:PORT address (e.g. 127.0.0.1:8080)"),
        )
    })
}

fn dur(l: &Locator, key: &str, d: &RawDuration) -> Result<std::time::Duration, ConfigError> {
    d.parse().map_err(|m| invalid(l, key, m))
}

fn positive_dur(
    l: &Locator,
    key: &str,
    d: &RawDuration,
) -> Result<std::time::Duration, ConfigError> {
    let v = dur(l, key, d)?;
    if v.is_zero() {
        return Err(invalid(l, key, "must be greater than zero"));
    }
    Ok(v)
}

fn size(l: &Locator, key: &str, s: &RawSize) -> Result<usize, ConfigError> {
    s.parse().map_err(|m| invalid(l, key, m))
}

fn range(l: &Locator, key: &str, v: u64, low: u64, high: u64) -> Result<u64, ConfigError> {
    if v < low || v > high {
        return Err(invalid(
            l,
            key,
            format!("must be between {low} and {high}, got {v}"),
        ));
    }
    Ok(v)
}

fn parse_backend(l: &Locator, i: usize, v: &toml::Value) -> Result<BackendSpec, ConfigError> {
    let key = format!("backends[{i}]");
    match v {
        toml::Value::String(s) => BackendSpec::parse(s).map_err(|m| invalid(l, &key, m)),
        toml::Value::Table(t) => {
            let mut spec = BackendSpec {
                address: String::new(),
                weight: 1,
                protocol: UpstreamProtocol::Http1,
            };
            for (k, v) in t {
                let field = format!("{key}.{k}");
                match (k.as_str(), v) {
                    ("address", toml::Value::String(s)) => spec.address = s.clone(),
                    ("weight", toml::Value::Integer(w)) => {
                        spec.weight = u32::try_from(*w)
                            .ok()
                            .filter(|w| (1..=MAX_WEIGHT).contains(w))
                            .ok_or_else(|| {
                                invalid(
                                    l,
                                    &field,
                                    format!("must be between 1 and {MAX_WEIGHT}, got {w}"),
                                )
                            })?
                    }
                    ("protocol", toml::Value::String(p)) => {
                        spec.protocol = match p.as_str() {
                            "http1" => UpstreamProtocol::Http1,
                            "h2c" => UpstreamProtocol::H2c,
                            "https" => UpstreamProtocol::Https,
                            "h2" => UpstreamProtocol::H2,
                            _ => {
                                return Err(invalid(
                                    l,
                                    &field,
                                    format!("`{p}` is not one of http1, h2c, https, h2"),
                                ))
                            }
                        }
                    }
                    ("address" | "weight" | "protocol", other) => {
                        return Err(invalid(
                            l,
                            &field,
                            format!("has the wrong type ({})", other.type_str()),
                        ))
                    }
                    (other, _) => {
                        return Err(invalid(
                            l,
                            &field,
                            format!("unknown field `{other}`, expected one of `address`, `weight`, `protocol`"),
                        ))
                    }
                }
            }
            if spec.address.is_empty() {
                return Err(invalid(l, &key, "a backend table needs an `address`"));
            }
            spec.check().map_err(|m| invalid(l, &key, m))?;
            Ok(spec)
        }
        other => Err(invalid(
            l,
            &key,
            format!(
                "must be a string like \"127.0.0.1:3000\" or a table, not {}",
                other.type_str()
            ),
        )),
    }
}

fn one_of<T: Copy>(
    l: &Locator,
    key: &str,
    text: &str,
    options: &[(&str, T)],
) -> Result<T, ConfigError> {
    options
        .iter()
        .find(|(name, _)| *name == text)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<_> = options.iter().map(|(n, _)| *n).collect();
            invalid(
                l,
                key,
                format!("`{text}` is not one of: {}", names.join(", ")),
            )
        })
}

impl RawConfig {
    /// Checks every value and builds the typed [`Config`]. Sections are
    /// checked in the file's order, so the first mistake is the one named.
    pub(crate) fn validate(&self, l: &Locator) -> Result<Config, ConfigError> {
        let algorithm = self.algorithm(l)?;
        let access_log = one_of(
            l,
            "access_log",
            &self.access_log,
            &[
                ("off", AccessLog::Off),
                ("common", AccessLog::Common),
                ("json", AccessLog::Json),
            ],
        )?;
        let (listen, admin) = self.listeners(l)?;
        let backends = self.backends(l, listen)?;
        let timeouts = self.timeouts.validate(l)?;
        let limits = self.limits.validate(l)?;
        let retries = self.retries.validate(l)?;
        let health = self.health.validate(l)?;
        let affinity = self.affinity_cookies.validate(l)?;
        let tls = self.tls.as_ref().map(|t| t.validate(l)).transpose()?;
        let http2 = self.http2.validate(l)?;
        let upstream_tls = self.upstream_tls.validate(l)?;
        let discovery = self.discovery.validate(l)?;
        let workers = range(l, "workers", self.workers, 0, 256)? as usize;
        let backend_header = backend_header(l, &self.backend_header)?;
        let session_watch = self.session_watch.validate(l)?;
        Ok(Config {
            listen,
            workers,
            backend_header,
            http1_fast_path: self.http1_fast_path,
            underscores_in_headers: self.underscores_in_headers,
            admin,
            algorithm,
            access_log,
            backends,
            timeouts,
            limits,
            retries,
            health,
            affinity,
            tls,
            http2,
            upstream_tls,
            discovery,
            reload: Reload {
                watch: self.reload.watch,
            },
            session_watch,
        })
    }

    /// The balancing algorithm; one that routes by client identity is refused.
    fn algorithm(&self, l: &Locator) -> Result<Algorithm, ConfigError> {
        match self.algorithm.as_str() {
            "ip-hash" | "ip_hash" | "hash" | "consistent-hash" | "sticky" | "cookie"
            | "uri-hash" => Err(invalid(
                l,
                "algorithm",
                format!(
                    "`{}` routes by client identity, which is refused. {}",
                    self.algorithm,
                    super::STICKY_EXPLANATION
                ),
            )),
            other => one_of(
                l,
                "algorithm",
                other,
                &[
                    ("round-robin", Algorithm::RoundRobin),
                    ("least-connections", Algorithm::LeastConnections),
                ],
            ),
        }
    }

    /// The proxy and admin listeners (`admin` off: None), not on one address.
    fn listeners(&self, l: &Locator) -> Result<(SocketAddr, Option<SocketAddr>), ConfigError> {
        let admin = match self.admin.trim() {
            "off" | "" => None,
            a => Some(addr(l, "admin", a)?),
        };
        let listen = addr(l, "listen", &self.listen)?;
        // Port 0 asks for any free port: two such listeners never collide.
        if admin == Some(listen) && listen.port() != 0 {
            return Err(invalid(
                l,
                "admin",
                "the admin listener must not share the proxy's address",
            ));
        }
        Ok((listen, admin))
    }

    /// The backends, none listed twice and none that is unstick's own listener.
    fn backends(&self, l: &Locator, listen: SocketAddr) -> Result<Vec<BackendSpec>, ConfigError> {
        let backends = self
            .backends
            .iter()
            .enumerate()
            .map(|(i, v)| parse_backend(l, i, v))
            .collect::<Result<Vec<_>, _>>()?;
        for (i, b) in backends.iter().enumerate() {
            if listen.port() != 0 && b.address.parse::<SocketAddr>().ok() == Some(listen) {
                return Err(invalid(
                    l,
                    &format!("backends[{i}]"),
                    format!(
                        "backend `{}` is unstick's own listener: requests would loop",
                        b.address
                    ),
                ));
            }
            if backends[..i].iter().any(|o| o.address == b.address) {
                return Err(invalid(
                    l,
                    &format!("backends[{i}]"),
                    format!("backend `{}` is listed twice", b.address),
                ));
            }
        }
        Ok(backends)
    }
}

impl RawTimeouts {
    fn validate(&self, l: &Locator) -> Result<Timeouts, ConfigError> {
        Ok(Timeouts {
            connect: positive_dur(l, "timeouts.connect", &self.connect)?,
            response_header: positive_dur(l, "timeouts.response_header", &self.response_header)?,
            client_header: positive_dur(l, "timeouts.client_header", &self.client_header)?,
            client_idle: positive_dur(l, "timeouts.client_idle", &self.client_idle)?,
            client_stall: positive_dur(l, "timeouts.client_stall", &self.client_stall)?,
            upstream_stall: positive_dur(l, "timeouts.upstream_stall", &self.upstream_stall)?,
            upstream_idle: positive_dur(l, "timeouts.upstream_idle", &self.upstream_idle)?,
            drain: dur(l, "timeouts.drain", &self.drain)?,
        })
    }
}

impl RawLimits {
    fn validate(&self, l: &Locator) -> Result<Limits, ConfigError> {
        Ok(Limits {
            max_connections: range(
                l,
                "limits.max_connections",
                self.max_connections,
                1,
                1 << 20,
            )? as usize,
            max_header_bytes: {
                let v = size(l, "limits.max_header_bytes", &self.max_header_bytes)?;
                range(l, "limits.max_header_bytes", v as u64, 8192, 1 << 20)? as usize
            },
            max_headers: range(l, "limits.max_headers", self.max_headers, 8, 1000)? as usize,
            max_request_body: size(l, "limits.max_request_body", &self.max_request_body)? as u64,
            upstream_idle_per_backend: range(
                l,
                "limits.upstream_idle_per_backend",
                self.upstream_idle_per_backend,
                0,
                65536,
            )? as usize,
        })
    }
}

impl RawRetries {
    fn validate(&self, l: &Locator) -> Result<Retries, ConfigError> {
        if !(0.0..=1.0).contains(&self.budget_ratio) {
            return Err(invalid(
                l,
                "retries.budget_ratio",
                format!("must be between 0.0 and 1.0, got {}", self.budget_ratio),
            ));
        }
        Ok(Retries {
            enabled: self.enabled,
            max_per_request: range(l, "retries.max_per_request", self.max_per_request, 0, 10)?
                as u32,
            budget_ratio: self.budget_ratio,
            budget_min_per_second: range(
                l,
                "retries.budget_min_per_second",
                self.budget_min_per_second,
                0,
                1_000_000,
            )? as u32,
            replay_buffer: {
                let v = size(l, "retries.replay_buffer", &self.replay_buffer)?;
                range(l, "retries.replay_buffer", v as u64, 0, 16 << 20)? as usize
            },
            response_buffer: {
                let v = size(l, "retries.response_buffer", &self.response_buffer)?;
                range(l, "retries.response_buffer", v as u64, 0, 16 << 20)? as usize
            },
            response_hold: {
                let key = "retries.response_hold";
                let v = positive_dur(l, key, &self.response_hold)?;
                if v > std::time::Duration::from_secs(1) {
                    return Err(invalid(l, key, "must be at most 1s"));
                }
                v
            },
        })
    }
}

impl RawHealth {
    fn validate(&self, l: &Locator) -> Result<Health, ConfigError> {
        let a = &self.active;
        if !a.path.starts_with('/') {
            return Err(invalid(
                l,
                "health.active.path",
                format!("`{}` must start with `/`", a.path),
            ));
        }
        Ok(Health {
            eject_after_failures: range(
                l,
                "health.eject_after_failures",
                self.eject_after_failures,
                1,
                1000,
            )? as u32,
            backoff: positive_dur(l, "health.backoff", &self.backoff)?,
            slow_start: dur(l, "health.slow_start", &self.slow_start)?,
            active: ActiveHealth {
                enabled: a.enabled,
                path: a.path.clone(),
                interval: positive_dur(l, "health.active.interval", &a.interval)?,
                timeout: positive_dur(l, "health.active.timeout", &a.timeout)?,
                rise: range(l, "health.active.rise", a.rise, 1, 100)? as u32,
                fall: range(l, "health.active.fall", a.fall, 1, 100)? as u32,
                expect_status: StatusRange::parse(&a.expect_status)
                    .map_err(|m| invalid(l, "health.active.expect_status", m))?,
            },
        })
    }
}

impl RawAffinity {
    fn validate(&self, l: &Locator) -> Result<Affinity, ConfigError> {
        Ok(Affinity {
            policy: one_of(
                l,
                "affinity_cookies.policy",
                &self.policy,
                &[
                    ("strip", AffinityPolicy::Strip),
                    ("reject", AffinityPolicy::Reject),
                    ("log", AffinityPolicy::Log),
                ],
            )?,
            names: check_cookie_names(l, "affinity_cookies.names", &self.names)?,
            exempt: check_cookie_names(l, "affinity_cookies.exempt", &self.exempt)?,
        })
    }
}

impl RawTls {
    fn validate(&self, l: &Locator) -> Result<Tls, ConfigError> {
        match (self.cert.is_empty(), self.key.is_empty()) {
            (false, false) => {}
            (false, true) => {
                return Err(invalid(
                    l,
                    "tls.cert",
                    "a certificate without its private key: set `tls.key` too \
                     (--tls-key FILE, UNSTICK_TLS_KEY, or `key` under [tls])",
                ))
            }
            (true, false) => {
                return Err(invalid(
                    l,
                    "tls.key",
                    "a private key without its certificate: set `tls.cert` too \
                     (--tls-cert FILE, UNSTICK_TLS_CERT, or `cert` under [tls])",
                ))
            }
            (true, true) => {
                return Err(invalid(
                    l,
                    "tls",
                    "TLS needs `cert` and `key` (PEM files); remove [tls] to serve plain HTTP",
                ))
            }
        }
        let sni = self
            .sni
            .iter()
            .enumerate()
            .map(|(i, s)| {
                if s.names.is_empty() {
                    return Err(invalid(
                        l,
                        &format!("tls.sni[{i}].names"),
                        "must list at least one server name",
                    ));
                }
                Ok(SniCert {
                    names: s.names.iter().map(|n| n.to_ascii_lowercase()).collect(),
                    cert: PathBuf::from(&s.cert),
                    key: PathBuf::from(&s.key),
                })
            })
            .collect::<Result<_, _>>()?;
        Ok(Tls {
            cert: PathBuf::from(&self.cert),
            key: PathBuf::from(&self.key),
            sni,
            reload_interval: positive_dur(l, "tls.reload_interval", &self.reload_interval)?,
            redirect_listen: self
                .redirect_listen
                .as_deref()
                .map(|a| addr(l, "tls.redirect_listen", a))
                .transpose()?,
        })
    }
}

impl RawHttp2 {
    fn validate(&self, l: &Locator) -> Result<Http2, ConfigError> {
        let window = |key: &str, s: &RawSize| -> Result<u32, ConfigError> {
            let v = size(l, key, s)?;
            Ok(range(l, key, v as u64, 65_535, (1 << 31) - 1)? as u32)
        };
        Ok(Http2 {
            enabled: self.enabled,
            max_concurrent_streams: range(
                l,
                "http2.max_concurrent_streams",
                self.max_concurrent_streams,
                1,
                100_000,
            )? as u32,
            initial_stream_window: window(
                "http2.initial_stream_window",
                &self.initial_stream_window,
            )?,
            initial_connection_window: window(
                "http2.initial_connection_window",
                &self.initial_connection_window,
            )?,
        })
    }
}

impl RawUpstreamTls {
    fn validate(&self, l: &Locator) -> Result<UpstreamTls, ConfigError> {
        match (&self.client_cert, &self.client_key) {
            (Some(_), None) => {
                return Err(invalid(
                    l,
                    "upstream_tls.client_cert",
                    "a client certificate without its key: set `upstream_tls.client_key` too",
                ))
            }
            (None, Some(_)) => {
                return Err(invalid(
                    l,
                    "upstream_tls.client_key",
                    "a client key without its certificate: set `upstream_tls.client_cert` too",
                ))
            }
            _ => {}
        }
        Ok(UpstreamTls {
            ca_file: self.ca_file.as_ref().map(PathBuf::from),
            client_cert: self.client_cert.as_ref().map(PathBuf::from),
            client_key: self.client_key.as_ref().map(PathBuf::from),
        })
    }
}

impl RawDiscovery {
    fn validate(&self, l: &Locator) -> Result<Discovery, ConfigError> {
        let discovery = Discovery {
            interval: positive_dur(l, "discovery.interval", &self.interval)?,
            min_interval: positive_dur(l, "discovery.min_interval", &self.min_interval)?,
        };
        if discovery.interval < discovery.min_interval {
            return Err(invalid(
                l,
                "discovery.interval",
                "must not be shorter than `discovery.min_interval`",
            ));
        }
        Ok(discovery)
    }
}

/// The opt-in header naming the backend that answered: a header name, lower-cased.
fn backend_header(l: &Locator, text: &str) -> Result<Option<String>, ConfigError> {
    match text.trim() {
        "" => Ok(None),
        name => {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if !name.chars().all(token) {
                return Err(invalid(
                    l,
                    "backend_header",
                    format!("`{name}` is not a header name"),
                ));
            }
            Ok(Some(name.to_ascii_lowercase()))
        }
    }
}

/// Cookie names are RFC 6265 tokens, optionally ending in `*` (a prefix pattern).
fn check_cookie_names(
    l: &Locator,
    key: &str,
    names: &[String],
) -> Result<Vec<String>, ConfigError> {
    for (i, n) in names.iter().enumerate() {
        let body = n.strip_suffix('*').unwrap_or(n);
        let token = |c: char| c.is_ascii_graphic() && !"()<>@,;:\\\"/[]?={}".contains(c);
        if body.is_empty() || !body.chars().all(token) {
            return Err(invalid(
                l,
                &format!("{key}[{i}]"),
                format!("`{n}` is not a cookie name (or `prefix*` pattern)"),
            ));
        }
    }
    Ok(names.to_vec())
}
