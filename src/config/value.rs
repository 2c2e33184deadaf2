//! Typed config values parsed from text: durations, sizes, backends, status ranges.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Parses `250ms`, `1s`, `1.5s`, `2m`, `1h` or `0`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    if t == "0" {
        return Ok(Duration::ZERO);
    }
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .ok_or_else(|| format!("`{text}` has no unit: write e.g. `500ms`, `2s` or `1m`"))?;
    let (number, unit) = t.split_at(split);
    let n: f64 = number
        .parse()
        .map_err(|_| format!("`{text}` is not a duration: write e.g. `500ms`, `2s` or `1m`"))?;
    let seconds = match unit.trim() {
        "ms" => n / 1000.0,
        "s" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "`{other}` is not a duration unit (use ms, s, m or h)"
            ))
        }
    };
    if !seconds.is_finite() || seconds > 365.0 * 86400.0 {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// Parses a byte size: an integer, or `64KiB`, `1MiB`, `1GiB` (also `KB`, `MB`, `GB` as 1000s).
pub fn parse_size(text: &str) -> Result<usize, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let n: usize = number
        .parse()
        .map_err(|_| format!("`{text}` is not a size: write e.g. `65536` or `64KiB`"))?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "k" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{other}` is not a size unit (use KiB, MiB or GiB)")),
    };
    n.checked_mul(factor)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// A duration in the raw config: a string like `2s`, or an integer number of seconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawDuration {
    Seconds(u64),
    Text(String),
}

impl RawDuration {
    pub fn parse(&self) -> Result<Duration, String> {
        match self {
            RawDuration::Seconds(s) => Ok(Duration::from_secs(*s)),
            RawDuration::Text(t) => parse_duration(t),
        }
    }
}

impl From<&str> for RawDuration {
    fn from(s: &str) -> Self {
        RawDuration::Text(s.to_owned())
    }
}

/// A size in the raw config: an integer of bytes, or a string like `64KiB`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RawSize {
    Bytes(u64),
    Text(String),
}

impl RawSize {
    pub fn parse(&self) -> Result<usize, String> {
        match self {
            RawSize::Bytes(b) => usize::try_from(*b).map_err(|_| "too large".to_owned()),
            RawSize::Text(t) => parse_size(t),
        }
    }
}

/// How unstick speaks to a backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 over TCP.
    #[default]
    Http1,
    /// HTTP/2 over TCP with prior knowledge.
    H2c,
    /// HTTP/1.1 over TLS.
    Https,
    /// HTTP/2 over TLS.
    H2,
}

impl UpstreamProtocol {
    pub fn is_tls(self) -> bool {
        matches!(self, UpstreamProtocol::Https | UpstreamProtocol::H2)
    }
    pub fn is_http2(self) -> bool {
        matches!(self, UpstreamProtocol::H2c | UpstreamProtocol::H2)
    }
    fn scheme(self) -> &'static str {
        match self {
            UpstreamProtocol::Http1 => "http",
            UpstreamProtocol::H2c => "h2c",
            UpstreamProtocol::Https => "https",
            UpstreamProtocol::H2 => "h2",
        }
    }
}

/// A backend as configured: `HOST:PORT` (an IP or a name that discovery resolves),
/// a weight and a protocol.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// `HOST:PORT`; HOST is an IP literal (v6 in brackets) or a DNS name.
    pub address: String,
    pub weight: u32,
    pub protocol: UpstreamProtocol,
}

/// The largest weight a backend may have.
pub const MAX_WEIGHT: u32 = 1000;

impl BackendSpec {
    /// Parses the compact form `[SCHEME://]HOST:PORT[=WEIGHT]`, where SCHEME is
    /// `http` (the default), `h2c`, `https` or `h2`.
    pub fn parse(text: &str) -> Result<BackendSpec, String> {
        let t = text.trim();
        let (protocol, rest) = match t.split_once("://") {
            Some(("http", r)) => (UpstreamProtocol::Http1, r),
            Some(("h2c", r)) => (UpstreamProtocol::H2c, r),
            Some(("https", r)) => (UpstreamProtocol::Https, r),
            Some(("h2", r)) => (UpstreamProtocol::H2, r),
            Some((s, _)) => {
                return Err(format!(
                    "backend `{text}`: unknown scheme `{s}` (use http, h2c, https or h2)"
                ))
            }
            None => (UpstreamProtocol::Http1, t),
        };
        let (address, weight) = match rest.rsplit_once('=') {
            Some((a, w)) => (
                a,
                w.parse::<u32>()
                    .map_err(|_| format!("backend `{text}`: weight `{w}` is not a number"))?,
            ),
            None => (rest, 1),
        };
        let spec = BackendSpec {
            address: address.trim_end_matches('/').to_owned(),
            weight,
            protocol,
        };
        spec.check()?;
        Ok(spec)
    }

    /// Checks the address shape and the weight.
    pub fn check(&self) -> Result<(), String> {
        if !(1..=MAX_WEIGHT).contains(&self.weight) {
            return Err(format!(
                "backend `{}`: weight must be between 1 and {MAX_WEIGHT}, got {}",
                self.address, self.weight
            ));
        }
        let (host, port) = split_host_port(&self.address).ok_or_else(|| {
            format!(
                "backend `{}` must be HOST:PORT (e.g. 127.0.0.1:3000 or app:3000)",
                self.address
            )
        })?;
        if port == 0 {
            return Err(format!("backend `{}`: port 0 is not valid", self.address));
        }
        let valid_name = |h: &str| {
            !h.is_empty()
                && h.len() <= 253
                && h.split('.').all(|l| {
                    !l.is_empty()
                        && l.len() <= 63
                        && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
                })
        };
        if host.parse::<std::net::IpAddr>().is_err() && !valid_name(host) {
            return Err(format!(
                "backend `{}`: `{host}` is neither an IP address nor a host name",
                self.address
            ));
        }
        Ok(())
    }

    /// The host part (without brackets) and the port.
    pub fn host_port(&self) -> (&str, u16) {
        split_host_port(&self.address).expect("checked at load")
    }
}

/// Splits `host:port`, `[v6]:port`.
fn split_host_port(s: &str) -> Option<(&str, u16)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, port) = rest.split_once("]:")?;
        return Some((host, port.parse().ok()?));
    }
    let (host, port) = s.rsplit_once(':')?;
    if host.contains(':') {
        return None;
    }
    Some((host, port.parse().ok()?))
}

impl fmt::Display for BackendSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.protocol != UpstreamProtocol::Http1 {
            write!(f, "{}://", self.protocol.scheme())?;
        }
        write!(f, "{}", self.address)?;
        if self.weight != 1 {
            write!(f, "={}", self.weight)?;
        }
        Ok(())
    }
}

/// An inclusive range of HTTP status codes, written `200`, `200-399` or `2xx`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRange {
    pub low: u16,
    pub high: u16,
}

impl StatusRange {
    pub fn parse(text: &str) -> Result<StatusRange, String> {
        let t = text.trim();
        let bad = || format!("`{text}` is not a status range: write `200`, `200-399` or `2xx`");
        let (low, high) = if let Some(class) = t.strip_suffix("xx") {
            let c: u16 = class.parse().map_err(|_| bad())?;
            (c * 100, c * 100 + 99)
        } else if let Some((a, b)) = t.split_once('-') {
            (
                a.trim().parse().map_err(|_| bad())?,
                b.trim().parse().map_err(|_| bad())?,
            )
        } else {
            let c = t.parse().map_err(|_| bad())?;
            (c, c)
        };
        if !(100..=599).contains(&low) || !(100..=599).contains(&high) || low > high {
            return Err(bad());
        }
        Ok(StatusRange { low, high })
    }

    pub fn contains(&self, status: u16) -> bool {
        (self.low..=self.high).contains(&status)
    }
}
