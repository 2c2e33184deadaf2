//! Refuses load-balancer affinity cookies in both directions, and records who set them.
//!
//! unstick never routes by client identity. That part is structural: the
//! balancer's [`Balance::pick`](crate::balancer::Balance::pick) is handed the
//! backends in rotation and nothing of the request (no headers, no cookies,
//! no client address), so nothing here feeds routing. What this module does
//! is refuse the *cookies* other load balancers use for stickiness, so that
//! an app leaning on them is found:
//!
//! - [`Rules`] (built from `[affinity_cookies]`, swapped with the settings on
//!   reload) knows which cookie names are affinity cookies: the [`BUILT_IN`]
//!   list, plus the configured `names`, minus the configured `exempt`.
//! - [`scrub_cookies`] and [`scrub_set_cookies`] are pure functions over a
//!   [`HeaderMap`]; they allocate nothing unless a cookie matches.
//! - [`Tracker`] (lives on the proxy, survives reloads) counts every refusal in
//!   `unstick_affinity_cookies_refused_total{direction, name}`, logs it once per
//!   backend and name per minute, and remembers which backend set which cookie
//!   for `GET /api/affinity`.
//!
//! Cookie names are compared case-sensitively, as RFC 6265 says. A prefix
//! pattern (`BIGipServer*`) is reported under the pattern, not the concrete
//! name, so the metric's label set stays bounded.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use dashmap::DashMap;
use http::header::{COOKIE, SET_COOKIE};
use http::{HeaderMap, HeaderValue};
use prometheus::IntCounterVec;
use serde::Serialize;

use crate::config::{Affinity as AffinityConfig, AffinityPolicy};

/// The affinity cookies unstick refuses out of the box, with where each comes
/// from. A trailing `*` makes a prefix pattern.
pub const BUILT_IN: &[(&str, &str)] = &[
    (
        "SERVERID",
        "HAProxy (`cookie SERVERID insert`), Alibaba Cloud SLB",
    ),
    ("AWSALB", "AWS Application Load Balancer"),
    (
        "AWSALBCORS",
        "AWS Application Load Balancer (the `SameSite=None` copy)",
    ),
    (
        "AWSALBTG",
        "AWS Application Load Balancer, target-group stickiness",
    ),
    (
        "AWSALBTGCORS",
        "AWS Application Load Balancer, target-group stickiness (CORS copy)",
    ),
    ("AWSELB", "AWS Classic Load Balancer"),
    (
        "GCLB",
        "Google Cloud load balancing (generated-cookie affinity)",
    ),
    (
        "ARRAffinity",
        "Azure App Service / IIS Application Request Routing",
    ),
    (
        "ARRAffinitySameSite",
        "Azure App Service (the `SameSite=None` copy)",
    ),
    ("BIGipServer*", "F5 BIG-IP (`BIGipServer<pool>`)"),
    ("NSC_*", "Citrix ADC / NetScaler"),
    (
        "INGRESSCOOKIE",
        "ingress-nginx (default `session-cookie-name`)",
    ),
    ("SOZUBALANCEID", "sozu"),
    (
        "ROUTEID",
        "Apache httpd mod_proxy_balancer (the documented `stickysession` cookie)",
    ),
    ("__VCAP_ID__", "Cloud Foundry gorouter"),
    ("heroku-session-affinity", "Heroku session affinity"),
    ("lb", "Caddy (`lb_policy cookie` default name)"),
    (
        "_TRAEFIK_BACKEND",
        "Traefik 1.x (default sticky cookie name)",
    ),
];

/// At most this many backends are remembered one by one for `/api/affinity`
/// (discovery may churn addresses); further ones share [`OTHER_BACKENDS`].
const MAX_TRACKED_BACKENDS: usize = 1024;

/// The `/api/affinity` entry for backends past [`MAX_TRACKED_BACKENDS`].
const OTHER_BACKENDS: &str = "(other backends)";

/// Which way a refused cookie was travelling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// In a client's `Cookie` header.
    Request,
    /// In a backend's `Set-Cookie` header.
    Response,
}

impl Direction {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Request => "request",
            Direction::Response => "response",
        }
    }
}

// === impl Rules ===

/// Which cookie names are affinity cookies, and what to do with them.
#[derive(Debug, Clone)]
pub struct Rules {
    policy: AffinityPolicy,
    /// `true` for every byte an exact name starts with, and a bit for
    /// every exact name's length (63: 63 or longer): most cookie names are
    /// ruled out by two lookups.
    exact_first: [bool; 256],
    exact_lengths: u64,
    /// `true` for every byte a prefix starts with.
    prefix_first: [bool; 256],
    /// Exact names, sorted (binary search).
    exact: Vec<Box<str>>,
    /// Prefix patterns, `*` included (the pattern is the label).
    prefixes: Vec<Box<str>>,
    /// Exempt exact names, sorted.
    exempt: Vec<Box<str>>,
    /// Exempt prefixes, `*` removed.
    exempt_prefixes: Vec<Box<str>>,
}

impl Rules {
    /// The built-in list plus `names`, minus `exempt`, with `policy`.
    pub fn new(policy: AffinityPolicy, names: &[String], exempt: &[String]) -> Rules {
        let mut exact: Vec<Box<str>> = Vec::new();
        let mut prefixes: Vec<Box<str>> = Vec::new();
        let all = BUILT_IN
            .iter()
            .map(|(n, _)| *n)
            .chain(names.iter().map(String::as_str));
        for n in all {
            let list = if n.ends_with('*') {
                &mut prefixes
            } else {
                &mut exact
            };
            if !n.is_empty() && n != "*" && !list.iter().any(|e| &**e == n) {
                list.push(n.into());
            }
        }
        exact.sort();
        let mut exempt_exact: Vec<Box<str>> = Vec::new();
        let mut exempt_prefixes: Vec<Box<str>> = Vec::new();
        for n in exempt {
            match n.strip_suffix('*') {
                Some(p) => exempt_prefixes.push(p.into()),
                None => exempt_exact.push(n.as_str().into()),
            }
        }
        exempt_exact.sort();
        let (mut exact_first, mut exact_lengths) = ([false; 256], 0);
        for n in &exact {
            exact_first[usize::from(n.as_bytes()[0])] = true;
            exact_lengths |= length_bit(n.len());
        }
        let mut prefix_first = [false; 256];
        for p in &prefixes {
            prefix_first[usize::from(p.as_bytes()[0])] = true;
        }
        Rules {
            policy,
            exact_first,
            exact_lengths,
            prefix_first,
            exact,
            prefixes,
            exempt: exempt_exact,
            exempt_prefixes,
        }
    }

    /// The rules `[affinity_cookies]` asks for.
    pub fn from_config(config: &AffinityConfig) -> Rules {
        Rules::new(config.policy, &config.names, &config.exempt)
    }

    pub fn policy(&self) -> AffinityPolicy {
        self.policy
    }

    /// Every rule's label (exact names, then `prefix*` patterns): the `name`
    /// values `unstick_affinity_cookies_refused_total` can take.
    pub fn labels(&self) -> impl Iterator<Item = &str> {
        self.exact.iter().chain(&self.prefixes).map(|l| &**l)
    }

    /// The rule `name` falls under (the exact name, or the `prefix*`
    /// pattern), or `None`. Case-sensitive; never allocates.
    pub fn matches(&self, name: &[u8]) -> Option<&str> {
        let first = usize::from(*name.first()?);
        let maybe_exact =
            self.exact_first[first] && self.exact_lengths & length_bit(name.len()) != 0;
        let exact = maybe_exact
            .then(|| self.exact.binary_search_by(|e| e.as_bytes().cmp(name)).ok())
            .flatten();
        let label = match exact {
            Some(i) => &*self.exact[i],
            None if !self.prefix_first[first] => return None,
            None => {
                let p = self.prefixes.iter().find(|p| {
                    let body = &p.as_bytes()[..p.len() - 1];
                    name.starts_with(body)
                })?;
                &**p
            }
        };
        if self.is_exempt(name) {
            return None;
        }
        Some(label)
    }

    /// True if a `Cookie` value has a pair with an affinity cookie's name.
    pub fn names_any(&self, cookie: &[u8]) -> bool {
        pairs(cookie).any(|pair| self.matches(pair_name(pair)).is_some())
    }

    fn is_exempt(&self, name: &[u8]) -> bool {
        self.exempt
            .binary_search_by(|e| e.as_bytes().cmp(name))
            .is_ok()
            || self
                .exempt_prefixes
                .iter()
                .any(|p| name.starts_with(p.as_bytes()))
    }

    /// Applies the policy to a request's `Cookie` headers before they are
    /// forwarded: `strip` and `reject` remove affinity pairs, `log` leaves
    /// them. Every match is reported to `tracker`.
    pub fn on_request(&self, headers: &mut HeaderMap, tracker: &Tracker) {
        if !headers.contains_key(COOKIE) {
            return;
        }
        let remove = self.policy != AffinityPolicy::Log;
        scrub_cookies(self, headers, remove, |label, name| {
            tracker.refused(Direction::Request, None, label, name, self.policy);
        });
    }

    /// Applies the policy to a backend's `Set-Cookie` headers: `strip`
    /// removes affinity cookies, `log` leaves them, `reject` leaves them and
    /// returns the first one's name (the caller answers 502 instead).
    pub fn on_response(
        &self,
        headers: &mut HeaderMap,
        backend: &Arc<str>,
        tracker: &Tracker,
    ) -> Option<String> {
        if !headers.contains_key(SET_COOKIE) {
            return None;
        }
        let remove = self.policy == AffinityPolicy::Strip;
        let mut first = None;
        scrub_set_cookies(self, headers, remove, |label, name| {
            tracker.refused(Direction::Response, Some(backend), label, name, self.policy);
            if first.is_none() {
                first = Some(String::from_utf8_lossy(name).into_owned());
            }
        });
        first.filter(|_| self.policy == AffinityPolicy::Reject)
    }
}

/// A bit standing for a name length (lengths of 63 and over share bit 63).
fn length_bit(len: usize) -> u64 {
    1 << len.min(63)
}

// === cookie parsing ===

/// The name of one `Cookie` pair (`name=value`, surrounding spaces allowed);
/// empty for a pair without `=` (a nameless cookie, RFC 6265bis).
fn pair_name(pair: &[u8]) -> &[u8] {
    match pair.iter().position(|b| *b == b'=') {
        Some(i) => pair[..i].trim_ascii(),
        None => b"",
    }
}

/// The pairs of one `Cookie` value.
fn pairs(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b';')
}

/// The cookie name a `Set-Cookie` value sets (RFC 6265 5.2: up to the first
/// `=` of the part before the first `;`), or `None` if it has no `=`.
fn set_cookie_name(value: &[u8]) -> Option<&[u8]> {
    let pair = value.split(|b| *b == b';').next().unwrap_or(value);
    let eq = pair.iter().position(|b| *b == b'=')?;
    Some(pair[..eq].trim_ascii())
}

/// Calls `found(label, name)` for each affinity pair in every `Cookie` header
/// and, if `remove`, takes those pairs out. Other pairs are kept byte for byte
/// (with the separator and spacing that preceded them); a header left empty
/// is removed. A header that is not UTF-8 is left untouched and not reported.
/// Nothing is allocated unless a pair matches.
pub fn scrub_cookies(
    rules: &Rules,
    headers: &mut HeaderMap,
    remove: bool,
    mut found: impl FnMut(&str, &[u8]),
) {
    let mut any = false;
    for value in headers.get_all(COOKIE) {
        let bytes = value.as_bytes();
        // UTF-8 is checked only once a name matches: the common case reads
        // the header once.
        let mut utf8_checked = false;
        for pair in pairs(bytes) {
            let name = pair_name(pair);
            if let Some(label) = rules.matches(name) {
                if !utf8_checked && std::str::from_utf8(bytes).is_err() {
                    break;
                }
                utf8_checked = true;
                found(label, name);
                any = true;
            }
        }
    }
    if !(any && remove) {
        return;
    }
    let http::header::Entry::Occupied(entry) = headers.entry(COOKIE) else {
        return;
    };
    let (_, values) = entry.remove_entry_mult();
    let values: Vec<HeaderValue> = values.collect();
    for value in values {
        if let Some(kept) = without_affinity_pairs(rules, &value) {
            headers.append(COOKIE, kept);
        }
    }
}

/// One `Cookie` value without its affinity pairs: the value itself if
/// nothing matches (or it is not UTF-8), `None` if nothing is left.
fn without_affinity_pairs(rules: &Rules, value: &HeaderValue) -> Option<HeaderValue> {
    let bytes = value.as_bytes();
    let refused = |pair: &[u8]| rules.matches(pair_name(pair)).is_some();
    if std::str::from_utf8(bytes).is_err() || !pairs(bytes).any(refused) {
        return Some(value.clone());
    }
    let mut out = Vec::with_capacity(bytes.len());
    for pair in pairs(bytes) {
        if pair.trim_ascii().is_empty() || refused(pair) {
            continue;
        }
        if !out.is_empty() {
            out.push(b';');
        }
        out.extend_from_slice(pair);
    }
    let out = out.trim_ascii();
    if out.is_empty() {
        return None;
    }
    // Only bytes of a valid value were kept, so this cannot fail; if it
    // somehow did, forwarding the original beats mangling it.
    Some(HeaderValue::from_bytes(out).unwrap_or_else(|_| value.clone()))
}

/// Calls `found(label, name)` for each `Set-Cookie` header that sets an
/// affinity cookie and, if `remove`, removes those headers (the others keep
/// their order). The name decides: the rest of the header (value,
/// attributes) may hold any bytes, since the header is removed whole or kept
/// whole, never rewritten. A `Set-Cookie` without `=` is left alone.
/// Nothing is allocated unless one matches.
pub fn scrub_set_cookies(
    rules: &Rules,
    headers: &mut HeaderMap,
    remove: bool,
    mut found: impl FnMut(&str, &[u8]),
) {
    let mut any = false;
    for value in headers.get_all(SET_COOKIE) {
        let Some(name) = set_cookie_name(value.as_bytes()) else {
            continue;
        };
        if let Some(label) = rules.matches(name) {
            found(label, name);
            any = true;
        }
    }
    if !(any && remove) {
        return;
    }
    let http::header::Entry::Occupied(entry) = headers.entry(SET_COOKIE) else {
        return;
    };
    let (_, values) = entry.remove_entry_mult();
    let values: Vec<HeaderValue> = values.collect();
    for value in values {
        let refused = set_cookie_name(value.as_bytes()).is_some_and(|n| rules.matches(n).is_some());
        if !refused {
            headers.append(SET_COOKIE, value);
        }
    }
}

// === impl Tracker ===

/// One (backend or client side, cookie) pair seen.
#[derive(Debug, Clone)]
struct Seen {
    /// The rule's label (exact name or `prefix*`).
    label: Box<str>,
    /// The concrete cookie name seen last.
    cookie: Box<str>,
    count: u64,
    first: SystemTime,
    last: SystemTime,
    /// When this pair was last logged.
    logged: Option<Instant>,
}

impl Seen {
    fn new(label: &str, cookie: &[u8], now: SystemTime) -> Seen {
        Seen {
            label: label.into(),
            cookie: String::from_utf8_lossy(cookie).into(),
            count: 0,
            first: now,
            last: now,
            logged: None,
        }
    }

    /// Records one more; returns whether to log it (at most once per `every`).
    fn hit(&mut self, cookie: &[u8], now: SystemTime, every: Duration) -> bool {
        self.count += 1;
        self.last = now;
        if self.cookie.as_bytes() != cookie {
            self.cookie = String::from_utf8_lossy(cookie).into();
        }
        let due = self.logged.is_none_or(|t| t.elapsed() >= every);
        if due {
            self.logged = Some(Instant::now());
        }
        due
    }
}

/// Counts, logs and remembers refused affinity cookies. Touched only when a
/// cookie matches; lives on the proxy so it survives config reloads.
pub struct Tracker {
    refused: IntCounterVec,
    /// Per backend name: the affinity cookies it tried to set.
    backends: DashMap<Arc<str>, Vec<Seen>>,
    /// Per rule label: affinity cookies clients sent.
    clients: DashMap<Box<str>, Seen>,
    log_every: Duration,
}

impl Tracker {
    /// A tracker counting into `refused`
    /// (`unstick_affinity_cookies_refused_total{direction, name}`), logging
    /// each backend and name at most once a minute.
    pub fn new(refused: IntCounterVec) -> Tracker {
        Tracker::with_log_interval(refused, Duration::from_secs(60))
    }

    /// As [`Tracker::new`], logging each backend and name at most once per `every`.
    pub fn with_log_interval(refused: IntCounterVec, every: Duration) -> Tracker {
        Tracker {
            refused,
            backends: DashMap::new(),
            clients: DashMap::new(),
            log_every: every,
        }
    }

    /// Creates the refusal series of every rule, both directions, at 0, so
    /// the family and its rates exist before the first refusal.
    pub fn expect(&self, rules: &Rules) {
        for label in rules.labels() {
            for direction in [Direction::Request, Direction::Response] {
                self.refused.with_label_values(&[direction.as_str(), label]);
            }
        }
    }

    /// Records one affinity cookie: counted, remembered, and logged unless
    /// this backend (or, for requests, any client) and rule were logged less
    /// than a minute ago. Returns whether it was logged.
    pub fn refused(
        &self,
        direction: Direction,
        backend: Option<&Arc<str>>,
        label: &str,
        cookie: &[u8],
        policy: AffinityPolicy,
    ) -> bool {
        self.refused
            .with_label_values(&[direction.as_str(), label])
            .inc();
        let now = SystemTime::now();
        let (log, count) = match backend {
            Some(b) => self.hit_backend(b, label, cookie, now),
            None => {
                if let Some(mut seen) = self.clients.get_mut(label) {
                    (seen.hit(cookie, now, self.log_every), seen.count)
                } else {
                    let mut seen = self
                        .clients
                        .entry(label.into())
                        .or_insert_with(|| Seen::new(label, cookie, now));
                    (seen.hit(cookie, now, self.log_every), seen.count)
                }
            }
        };
        if log {
            let cookie = String::from_utf8_lossy(cookie);
            let action = action(direction, policy);
            match backend {
                Some(b) => tracing::warn!(
                    backend = %b, cookie = %cookie, rule = label, count, action,
                    "a backend set a load-balancer affinity cookie (sticky sessions); \
                     unstick refuses them: see GET /api/affinity"
                ),
                None => tracing::warn!(
                    cookie = %cookie, rule = label, count, action,
                    "a client sent a load-balancer affinity cookie (sticky sessions); \
                     unstick refuses them"
                ),
            }
        }
        log
    }

    fn hit_backend(
        &self,
        b: &Arc<str>,
        label: &str,
        cookie: &[u8],
        now: SystemTime,
    ) -> (bool, u64) {
        if let Some(mut list) = self.backends.get_mut(&**b) {
            return hit_in(&mut list, label, cookie, now, self.log_every);
        }
        // Discovery may churn addresses: past the cap, new backends share one entry.
        let key = if self.backends.len() >= MAX_TRACKED_BACKENDS {
            Arc::from(OTHER_BACKENDS)
        } else {
            b.clone()
        };
        let mut list = self.backends.entry(key).or_default();
        hit_in(&mut list, label, cookie, now, self.log_every)
    }

    /// What has been refused so far, for `GET /api/affinity`.
    pub fn report(&self, policy: AffinityPolicy) -> Report {
        let mut backends: Vec<BackendCookie> = self
            .backends
            .iter()
            .flat_map(|e| {
                let backend = e.key().to_string();
                e.value()
                    .iter()
                    .map(|s| BackendCookie {
                        backend: backend.clone(),
                        name: s.label.to_string(),
                        last_cookie: s.cookie.to_string(),
                        count: s.count,
                        first_seen: rfc3339(s.first),
                        last_seen: rfc3339(s.last),
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        backends.sort_by(|a, b| (&a.backend, &a.name).cmp(&(&b.backend, &b.name)));
        let mut clients: Vec<ClientCookie> = self
            .clients
            .iter()
            .map(|e| {
                let s = e.value();
                ClientCookie {
                    name: e.key().to_string(),
                    last_cookie: s.cookie.to_string(),
                    count: s.count,
                    first_seen: rfc3339(s.first),
                    last_seen: rfc3339(s.last),
                }
            })
            .collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        Report {
            policy,
            time_format: "RFC 3339, UTC, whole seconds",
            backends,
            clients,
        }
    }
}

fn hit_in(
    list: &mut Vec<Seen>,
    label: &str,
    cookie: &[u8],
    now: SystemTime,
    every: Duration,
) -> (bool, u64) {
    let i = match list.iter().position(|s| &*s.label == label) {
        Some(i) => i,
        None => {
            list.push(Seen::new(label, cookie, now));
            list.len() - 1
        }
    };
    let s = &mut list[i];
    (s.hit(cookie, now, every), s.count)
}

fn action(direction: Direction, policy: AffinityPolicy) -> &'static str {
    match (direction, policy) {
        (_, AffinityPolicy::Log) => "passed through (policy log)",
        (Direction::Request, _) => "removed from the request",
        (Direction::Response, AffinityPolicy::Strip) => "removed from the response",
        (Direction::Response, AffinityPolicy::Reject) => {
            "response replaced by a 502 (policy reject)"
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// The body of `GET /api/affinity`.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `strip`, `reject` or `log`.
    pub policy: AffinityPolicy,
    /// How `first_seen` and `last_seen` are written.
    pub time_format: &'static str,
    /// Affinity cookies backends tried to set, by backend then cookie.
    pub backends: Vec<BackendCookie>,
    /// Affinity cookies clients sent (no backend: requests are scrubbed
    /// before one is picked).
    pub clients: Vec<ClientCookie>,
}

/// A backend that tried to set an affinity cookie.
#[derive(Debug, Clone, Serialize)]
pub struct BackendCookie {
    pub backend: String,
    /// The rule: the cookie name, or the `prefix*` pattern it matched (the
    /// metric's `name` label).
    pub name: String,
    /// The concrete cookie name seen last.
    pub last_cookie: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
}

/// An affinity cookie clients sent.
#[derive(Debug, Clone, Serialize)]
pub struct ClientCookie {
    /// The rule: the cookie name, or the `prefix*` pattern it matched.
    pub name: String,
    pub last_cookie: String,
    pub count: u64,
    pub first_seen: String,
    pub last_seen: String,
}

#[cfg(test)]
mod tests;
