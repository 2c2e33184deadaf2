//! Header rewriting on the way in and out: hop-by-hop removal, forwarding
//! headers, and request ids.

use std::sync::atomic::{AtomicU64, Ordering};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

use crate::health::X_UNSTICK_DRAIN;

pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub static X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
/// The settings of an `Upgrade: h2c` request (RFC 7540 3.2.1): one hop's.
static HTTP2_SETTINGS: HeaderName = HeaderName::from_static("http2-settings");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1).
/// `Upgrade` is handled apart: it is kept for a WebSocket handshake.
static HOP_BY_HOP: [&HeaderName; 7] = [
    &header::CONNECTION,
    &KEEP_ALIVE,
    &PROXY_CONNECTION,
    &header::PROXY_AUTHENTICATE,
    &header::PROXY_AUTHORIZATION,
    &header::TRAILER,
    &header::TRANSFER_ENCODING,
];

/// Removes hop-by-hop headers, including every header that `Connection` names.
///
/// If `keep_upgrade` (a WebSocket handshake), `Connection: upgrade` and
/// `Upgrade` are put back afterwards. `TE: trailers` is kept (gRPC needs it).
pub fn remove_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One pass over the names notes which hop-by-hop headers are present
    // (standard names compare as integers); only those are then removed.
    // Most messages carry none or just `Connection: keep-alive`, so this
    // replaces ~9 hashed lookups and an allocation per message with a scan
    // (~2,500 instructions per message saved, measured with callgrind).
    let mut present = 0u32;
    let mut te_or_upgrade = false;
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|h| *h == name) {
            present |= 1 << i;
        } else if name == header::TE || name == header::UPGRADE || name == HTTP2_SETTINGS {
            te_or_upgrade = true;
        }
    }
    if present == 0 && !te_or_upgrade {
        return;
    }
    let upgrade = if keep_upgrade {
        upgrade_protocols(headers)
    } else {
        None
    };
    headers.remove(&HTTP2_SETTINGS);
    // Headers that `Connection` names are hop-by-hop too. `close`,
    // `keep-alive` and `upgrade` (the usual tokens) name nothing extra.
    if present & 1 != 0 {
        if let http::header::Entry::Occupied(e) = headers.entry(header::CONNECTION) {
            let (_, values) = e.remove_entry_mult();
            let mut named: Vec<HeaderName> = Vec::new();
            for value in values {
                let Ok(text) = value.to_str() else { continue };
                for token in text.split(',').map(str::trim) {
                    if !names_no_header(token.as_bytes()) {
                        // HeaderName::from_bytes lowercases; allocates only here.
                        if let Ok(name) = HeaderName::from_bytes(token.as_bytes()) {
                            named.push(name);
                        }
                    }
                }
            }
            for name in named {
                headers.remove(name);
            }
        }
    }
    for (i, name) in HOP_BY_HOP.iter().enumerate().skip(1) {
        if present & (1 << i) != 0 {
            headers.remove(*name);
        }
    }
    if let Some(te) = headers.get(header::TE) {
        let trailers_only = te
            .to_str()
            .map(|v| {
                v.split(',')
                    .any(|p| p.trim().eq_ignore_ascii_case("trailers"))
            })
            .unwrap_or(false);
        if trailers_only {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        } else {
            headers.remove(header::TE);
        }
    }
    match upgrade {
        Some(protocol) => {
            headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
            headers.insert(header::UPGRADE, protocol);
        }
        None => {
            headers.remove(header::UPGRADE);
        }
    }
}

/// True if a `Connection` value names fields of its own (anything but the
/// tokens [`names_no_header`] lists): those fields are hop-by-hop too.
pub(super) fn connection_names_fields(value: &[u8]) -> bool {
    value
        .split(|b| *b == b',')
        .any(|t| !names_no_header(t.trim_ascii()))
}

/// True for a `Connection` token that names no other header: `close`,
/// `keep-alive` and `upgrade` (the usual ones), or an empty list element.
pub(super) fn names_no_header(token: &[u8]) -> bool {
    [&b"close"[..], b"keep-alive", b"upgrade", b""]
        .iter()
        .any(|u| token.eq_ignore_ascii_case(u))
}

/// A bit per length of the names [`response_field_rule`] does not keep.
static RULED_LENGTHS: std::sync::LazyLock<u64> = std::sync::LazyLock::new(|| {
    let others = [
        &header::SET_COOKIE,
        &X_UNSTICK_DRAIN,
        &header::TE,
        &header::UPGRADE,
        &X_REQUEST_ID,
    ];
    HOP_BY_HOP
        .iter()
        .chain(others.iter())
        .fold(0, |bits, n| bits | 1u64 << n.as_str().len().min(63))
});

/// What [`remove_hop_by_hop`] and the rest of a response's scrubbing
/// (`Proxy::scrub_response`) do to one response field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldRule {
    /// Passed on as it is.
    Keep,
    /// Left out: hop-by-hop, or replaced by unstick's own value.
    Drop,
    /// Needs the full scrubbing over a `HeaderMap`: cookies to check, a
    /// drain request, `TE`, or a `Connection` that names other headers.
    Scrub,
}

/// The [`FieldRule`] for a response field (name in any case) that is not a
/// WebSocket handshake's; `backend_header` is the configured header naming
/// the backend. It lets the fast path pass a response head on from where it
/// was parsed, and falls back to the `HeaderMap` path (`Scrub`) for every
/// field that path would do more with than keep or drop.
pub fn response_field_rule(
    name: &[u8],
    value: &[u8],
    backend_header: Option<&HeaderName>,
) -> FieldRule {
    // Most fields (`server`, `date`, `content-length`...) have a length no
    // name below has: kept after one bit test instead of a dozen compares.
    let bit = |len: usize| 1u64 << len.min(63);
    if *RULED_LENGTHS & bit(name.len()) == 0
        && backend_header.is_none_or(|b| b.as_str().len() != name.len())
    {
        return FieldRule::Keep;
    }
    let is = |n: &HeaderName| name.eq_ignore_ascii_case(n.as_str().as_bytes());
    if is(&header::SET_COOKIE) || is(&X_UNSTICK_DRAIN) || is(&header::TE) {
        return FieldRule::Scrub;
    }
    if is(&header::CONNECTION) {
        return if connection_names_fields(value) {
            FieldRule::Scrub
        } else {
            FieldRule::Drop
        };
    }
    if HOP_BY_HOP.iter().any(|h| is(h))
        || is(&header::UPGRADE)
        || is(&X_REQUEST_ID)
        || backend_header.is_some_and(is)
    {
        return FieldRule::Drop;
    }
    FieldRule::Keep
}

/// Fields never passed on in trailers (RFC 9110 6.5.1): those that frame
/// or route a message, authenticate, control a request or a response, or
/// describe the content, which a recipient must know before the content;
/// hop-by-hop fields; cookies (affinity cookies are refused in the head
/// only); and unstick's own.
static NOT_IN_TRAILERS: [&str; 32] = [
    "age",
    "authorization",
    "cache-control",
    "connection",
    "content-encoding",
    "content-length",
    "content-range",
    "content-type",
    "cookie",
    "date",
    "expect",
    "expires",
    "host",
    "http2-settings",
    "keep-alive",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "range",
    "retry-after",
    "set-cookie",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "vary",
    "www-authenticate",
    "x-request-id",
    "x-unstick-drain",
];

/// True if a trailer field (name in any case) may be passed on.
pub fn trailer_allowed(name: &[u8]) -> bool {
    !NOT_IN_TRAILERS
        .iter()
        .any(|n| name.eq_ignore_ascii_case(n.as_bytes()))
}

/// True if the client asked for trailers (`TE: trailers`).
pub fn wants_trailers(headers: &HeaderMap) -> bool {
    has_token(headers, &header::TE, "trailers")
}

/// True if a list field `name` holds `token` (any case).
pub fn has_token(headers: &HeaderMap, name: &HeaderName, token: &str) -> bool {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Writes a `Content-Length` the client sent as a list of one number
/// (`5, 5`, or the field twice: RFC 9110 8.6 lets a recipient take it) as
/// that number, once.
pub fn one_content_length(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::CONTENT_LENGTH).iter();
    let (Some(first), second) = (values.next(), values.next()) else {
        return;
    };
    if second.is_none() && !first.as_bytes().contains(&b',') {
        return;
    }
    let length = first
        .as_bytes()
        .split(|b| *b == b',')
        .next()
        .map(<[u8]>::trim_ascii)
        .and_then(|n| HeaderValue::from_bytes(n).ok());
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, length);
    }
}

/// The trailer fields a response announces (`Trailer`) that may be passed
/// on, lower-cased.
pub fn announced_trailers(headers: &HeaderMap) -> Vec<HeaderName> {
    headers
        .get_all(header::TRAILER)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .filter(|n| trailer_allowed(n.as_str().as_bytes()))
        .collect()
}

/// Removes the trailer fields that may not be passed on.
pub fn scrub_trailers(trailers: &mut HeaderMap) {
    let refused: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| !trailer_allowed(n.as_str().as_bytes()))
        .cloned()
        .collect();
    for name in refused {
        trailers.remove(name);
    }
}

/// Joins several `Cookie` headers into one, pairs separated by `; `.
///
/// HTTP/2 clients may send each cookie in its own header (RFC 9113 8.2.3);
/// an HTTP/1.1 backend must get them as one (RFC 6265 5.4). A request with
/// one `Cookie` header (the usual case) is left as it is.
pub fn join_cookies(headers: &mut HeaderMap) {
    let mut values = headers.get_all(header::COOKIE).iter();
    if values.next().is_none() || values.next().is_none() {
        return;
    }
    let mut joined: Vec<u8> = Vec::new();
    for v in headers.get_all(header::COOKIE) {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(v.as_bytes());
    }
    if let Ok(v) = HeaderValue::from_bytes(&joined) {
        headers.insert(header::COOKIE, v);
    }
}

/// True if the request asks to switch to a protocol unstick tunnels (a
/// WebSocket, say). `h2c` is never one: an HTTP/1.1 request asking for it
/// is served as plain HTTP/1.1 (tunnelled, it would reach the backend as
/// HTTP/2 past every rule here: "h2c smuggling").
pub fn is_upgrade(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        && upgrade_protocols(headers).is_some()
}

/// The protocols an `Upgrade` asks for, but `h2c`; None if no other.
fn upgrade_protocols(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut values = headers.get_all(header::UPGRADE).iter();
    let (first, second) = (values.next()?, values.next());
    let h2c = |t: &str| t.trim().eq_ignore_ascii_case("h2c") || t.trim().is_empty();
    let text = first.to_str().ok()?;
    if second.is_none() && !text.split(',').any(h2c) {
        return Some(first.clone());
    }
    let kept: Vec<&str> = headers
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter(|t| !h2c(t))
        .map(str::trim)
        .collect();
    if kept.is_empty() {
        return None;
    }
    HeaderValue::from_str(&kept.join(", ")).ok()
}

/// Removes every field whose name holds `_` (unless
/// `underscores_in_headers`): a backend (CGI, PHP, many frameworks) may
/// read `X_Forwarded_For` as `X-Forwarded-For` and so trust a field unstick
/// never checked.
pub fn remove_underscored(headers: &mut HeaderMap) {
    let underscored = |n: &HeaderName| n.as_str().as_bytes().contains(&b'_');
    if !headers.keys().any(underscored) {
        return;
    }
    let names: Vec<HeaderName> = headers.keys().filter(|n| underscored(n)).cloned().collect();
    for name in names {
        headers.remove(name);
    }
}

/// True for a gRPC call: `content-type: application/grpc` or
/// `application/grpc+FORMAT` (not gRPC-Web, which carries its status in the body).
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| is_grpc_value(v.as_bytes()))
}

/// [`is_grpc`] over a `Content-Type` value.
pub fn is_grpc_value(v: &[u8]) -> bool {
    let prefix = b"application/grpc";
    v.len() >= prefix.len()
        && v[..prefix.len()].eq_ignore_ascii_case(prefix)
        && matches!(v.get(prefix.len()), None | Some(b'+') | Some(b';'))
}

/// Appends the client to `X-Forwarded-For` and sets `X-Forwarded-Proto` and
/// `X-Forwarded-Host` (from `Host`, or the request's authority).
///
/// `client_ip` is made once per connection; without an incoming
/// `X-Forwarded-For` nothing is formatted or allocated here.
pub fn set_forwarded(
    headers: &mut HeaderMap,
    client_ip: &HeaderValue,
    https: bool,
    authority: Option<&str>,
) {
    let xff = match headers.get(&X_FORWARDED_FOR) {
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + client_ip.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(client_ip.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
        None => Some(client_ip.clone()),
    };
    if let Some(v) = xff {
        headers.insert(X_FORWARDED_FOR.clone(), v);
    }
    headers.insert(
        X_FORWARDED_PROTO.clone(),
        HeaderValue::from_static(if https { "https" } else { "http" }),
    );
    let host = match headers.get(header::HOST) {
        Some(h) => Some(h.clone()),
        None => authority.and_then(|a| HeaderValue::from_str(a).ok()),
    };
    if let Some(h) = host {
        headers.insert(X_FORWARDED_HOST.clone(), h);
    }
}

/// Keeps a well-formed incoming `X-Request-Id`, or makes a new one.
pub fn request_id(headers: &HeaderMap, ids: &RequestIds) -> RequestId {
    match headers.get(&X_REQUEST_ID) {
        Some(v) if request_id_kept(v.as_bytes()) => RequestId::Kept(v.clone()),
        _ => ids.next(),
    }
}

/// A request's id: made here, or the client's passed on as sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum RequestId {
    /// Held inline: a `HeaderValue` would allocate (and validate) per
    /// request, though the fast path only ever needs the bytes.
    Made([u8; MADE_ID_LEN]),
    Kept(HeaderValue),
}

/// A made id: 16 hex digits of prefix, `-`, 16 of counter.
const MADE_ID_LEN: usize = 33;

impl RequestId {
    /// The id's bytes: visible ASCII either way (see [`request_id_kept`]).
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            RequestId::Made(b) => b,
            RequestId::Kept(v) => v.as_bytes(),
        }
    }

    /// The id as a header value, for heads built over a `HeaderMap`.
    pub fn to_header(&self) -> HeaderValue {
        match self {
            RequestId::Made(b) => {
                HeaderValue::from_bytes(b).expect("hex digits are a valid header value")
            }
            RequestId::Kept(v) => v.clone(),
        }
    }
}

/// True for an incoming `X-Request-Id` value that is passed on: 1 to 200
/// visible ASCII characters.
pub fn request_id_kept(v: &[u8]) -> bool {
    !v.is_empty() && v.len() <= 200 && v.iter().all(|c| c.is_ascii_graphic())
}

/// Generates request ids: a random per-process prefix and a counter, so ids
/// are unique across restarts and cost no syscall or lock.
///
/// Each thread takes the counter's values in blocks of [`ID_BLOCK`] and
/// counts through its block alone: one shared atomic add per block, not one
/// per request (that cache line went back and forth between the workers on
/// every request).
pub struct RequestIds {
    prefix: u64,
    /// The prefix in hex, written once (it starts every id).
    prefix_hex: [u8; 16],
    counter: AtomicU64,
}

/// How many ids a thread takes from the shared counter at a time.
const ID_BLOCK: u64 = 1 << 16;

thread_local! {
    /// This thread's block: (the generator's prefix, next value, end).
    static ID_RANGE: std::cell::Cell<(u64, u64, u64)> = const { std::cell::Cell::new((0, 0, 0)) };
}

impl RequestIds {
    pub fn new() -> RequestIds {
        let prefix = rand::random::<u64>();
        let mut prefix_hex = [0; 16];
        hex(prefix, &mut prefix_hex);
        RequestIds {
            prefix,
            prefix_hex,
            counter: AtomicU64::new(0),
        }
    }

    pub fn next(&self) -> RequestId {
        let n = ID_RANGE.with(|range| {
            let (prefix, mut next, mut end) = range.get();
            // A new block when this one is used up, or belongs to another
            // generator (tests run several in one process).
            if prefix != self.prefix || next == end {
                next = self.counter.fetch_add(ID_BLOCK, Ordering::Relaxed);
                end = next + ID_BLOCK;
            }
            range.set((self.prefix, next + 1, end));
            next
        });
        let mut buf = [0u8; MADE_ID_LEN];
        buf[..16].copy_from_slice(&self.prefix_hex);
        buf[16] = b'-';
        hex(n, &mut buf[17..]);
        RequestId::Made(buf)
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds::new()
    }
}

fn hex(v: u64, out: &mut [u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The field rules keep exactly what `remove_hop_by_hop` keeps, for
    /// every head they do not hand to it.
    #[test]
    fn field_rules_agree_with_remove_hop_by_hop() {
        let heads: &[&[(&str, &str)]] = &[
            &[
                ("Server", "x"),
                ("Connection", "keep-alive"),
                ("Keep-Alive", "timeout=5"),
            ],
            &[
                ("connection", "close, Upgrade"),
                ("upgrade", "h2c"),
                ("x-a", "1"),
            ],
            &[
                ("Proxy-Connection", "keep-alive"),
                ("Trailer", "x-sum"),
                ("ETag", "\"v\""),
            ],
            &[
                ("Transfer-Encoding", "chunked"),
                ("Proxy-Authenticate", "Basic"),
            ],
            &[
                ("X-Request-Id", "theirs"),
                ("X-Backend", "forged"),
                ("Vary", "a"),
            ],
            &[("Connection", "x-secret"), ("X-Secret", "1")],
            &[("Set-Cookie", "a=1"), ("TE", "trailers")],
        ];
        let backend_header = HeaderName::from_static("x-backend");
        for fields in heads {
            let rules: Vec<FieldRule> = fields
                .iter()
                .map(|(n, v)| {
                    response_field_rule(n.as_bytes(), v.as_bytes(), Some(&backend_header))
                })
                .collect();
            if rules.contains(&FieldRule::Scrub) {
                continue;
            }
            let mut map = HeaderMap::new();
            for (n, v) in fields.iter() {
                map.append(
                    HeaderName::from_bytes(n.as_bytes()).unwrap(),
                    HeaderValue::from_static(v),
                );
            }
            remove_hop_by_hop(&mut map, false);
            map.remove(&X_REQUEST_ID);
            map.remove(&backend_header);
            let kept: Vec<String> = fields
                .iter()
                .zip(&rules)
                .filter(|(_, r)| **r == FieldRule::Keep)
                .map(|((n, _), _)| n.to_ascii_lowercase())
                .collect();
            let mapped: Vec<String> = map.keys().map(|n| n.to_string()).collect();
            assert_eq!(kept, mapped, "{fields:?}");
        }
        // Those left to the full scrubbing.
        let scrub = |n: &str, v: &str| response_field_rule(n.as_bytes(), v.as_bytes(), None);
        assert_eq!(scrub("Connection", "x-secret"), FieldRule::Scrub);
        assert_eq!(scrub("set-cookie", "a=1"), FieldRule::Scrub);
        assert_eq!(scrub("X-Unstick-Drain", "1"), FieldRule::Scrub);
        assert_eq!(scrub("x-backend", "b"), FieldRule::Keep);
    }

    #[test]
    fn request_ids_are_unique_across_threads_and_generators() {
        let a = std::sync::Arc::new(RequestIds::new());
        let b = RequestIds::new();
        let threads: Vec<_> = (0..3)
            .map(|_| {
                let a = a.clone();
                std::thread::spawn(move || (0..ID_BLOCK + 10).map(|_| a.next()).collect::<Vec<_>>())
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        // Interleaving two generators on one thread switches blocks each time.
        for _ in 0..100 {
            assert!(seen.insert(a.next()));
            assert!(seen.insert(b.next()));
        }
        for t in threads {
            for id in t.join().unwrap() {
                assert_eq!(id.as_bytes().len(), 33);
                assert!(seen.insert(id), "duplicate request id");
            }
        }
        assert_eq!(seen.len(), 200 + 3 * (ID_BLOCK as usize + 10));
    }

    #[test]
    fn removes_hop_by_hop_and_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        h.insert(header::TE, "trailers, deflate".parse().unwrap());
        h.insert("x-keep", "yes".parse().unwrap());
        remove_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2, "{h:?}");
        assert_eq!(h["x-keep"], "yes");
        assert_eq!(h[header::TE], "trailers");
    }

    #[test]
    fn joins_cookie_headers() {
        let mut h = HeaderMap::new();
        h.append(header::COOKIE, "a=1".parse().unwrap());
        h.append(header::COOKIE, "b=2; c=3".parse().unwrap());
        join_cookies(&mut h);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2; c=3");
        let mut one = HeaderMap::new();
        one.insert(header::COOKIE, "a=1;b=2".parse().unwrap());
        join_cookies(&mut one);
        assert_eq!(
            one[header::COOKIE],
            "a=1;b=2",
            "a single header is untouched"
        );
    }

    #[test]
    fn keeps_upgrade_for_websocket() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "Upgrade".parse().unwrap());
        h.insert(header::UPGRADE, "websocket".parse().unwrap());
        assert!(is_upgrade(&h));
        remove_hop_by_hop(&mut h, true);
        assert_eq!(h[header::CONNECTION], "upgrade");
        assert_eq!(h[header::UPGRADE], "websocket");
    }

    #[test]
    fn grpc_content_types() {
        let ct = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_grpc(&h)
        };
        assert!(ct("application/grpc"));
        assert!(ct("application/grpc+proto"));
        assert!(ct("Application/GRPC; charset=utf-8"));
        assert!(!ct("application/grpc-web"));
        assert!(!ct("application/grpcx"));
        assert!(!ct("application/json"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn forwarded_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, "example.com".parse().unwrap());
        h.insert(X_FORWARDED_FOR.clone(), "10.0.0.1".parse().unwrap());
        set_forwarded(&mut h, &HeaderValue::from_static("127.0.0.1"), true, None);
        assert_eq!(h[&X_FORWARDED_FOR], "10.0.0.1, 127.0.0.1");
        assert_eq!(h[&X_FORWARDED_PROTO], "https");
        assert_eq!(h[&X_FORWARDED_HOST], "example.com");
    }

    #[test]
    fn request_ids_are_kept_or_made() {
        let ids = RequestIds::new();
        let a = ids.next();
        let b = ids.next();
        assert_ne!(a, b);
        assert_eq!(a.as_bytes().len(), 33);
        assert_eq!(a.to_header().as_bytes(), a.as_bytes());
        assert!(a
            .as_bytes()
            .iter()
            .all(|c| c.is_ascii_hexdigit() || *c == b'-'));
        let mut h = HeaderMap::new();
        h.insert(X_REQUEST_ID.clone(), "abc-123".parse().unwrap());
        assert_eq!(request_id(&h, &ids).as_bytes(), b"abc-123");
        h.insert(X_REQUEST_ID.clone(), "".parse().unwrap());
        assert_eq!(request_id(&h, &ids).as_bytes().len(), 33);
    }
}
