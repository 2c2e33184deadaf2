//! A request head read where it lies: one pass over its fields finds what the fast path needs to serve it, and whether it can go to the backend without a `HeaderMap`.
//!
//! Why: building a `HeaderMap` for every request (a name lookup, a value
//! check and a hashed insert per field), then inserting the forwarding
//! headers and writing the map out again, was about 6,000 of the fast
//! path's 19,000 instructions per request (callgrind). Most request heads
//! need only fields dropped and unstick's added; those are written for the
//! backend from where they were parsed. A head that needs more (see
//! [`Scan::needs_map`]) goes through the same `HeaderMap` rewriting as the
//! hyper path, so there is one policy.

use crate::affinity;
use crate::http1::{self, Framing, HeadError, HeaderIndices, RequestHead};

use super::headers::{connection_names_fields, is_grpc_value};
use super::target::valid_host;

/// The longest header name `http::HeaderName` takes.
const MAX_NAME: usize = (1 << 16) - 1;

// `Scan::dropped` has a bit for every field a head may carry.
const _: () = assert!(http1::MAX_HEADERS <= 128);

/// What one pass over a request head's fields found.
#[derive(Debug, Default)]
pub struct Scan {
    /// Fields left out when the head is passed on in place (bit i: field
    /// i; heads carry at most `http1::MAX_HEADERS` fields): hop-by-hop
    /// fields, and those unstick writes itself.
    dropped: u128,
    /// A field needs the `HeaderMap` path's rewriting (or its refusal): a
    /// `Cookie` with an affinity cookie in it, several `Cookie` or
    /// `X-Forwarded-For` fields, `TE`, a `Connection` naming other headers,
    /// or not exactly one valid `Host`.
    needs_map: bool,
    /// `Connection: close`.
    pub close: bool,
    /// An `Upgrade` field (a WebSocket handshake, say).
    pub upgrade: bool,
    /// An `Expect` field.
    pub expect: bool,
    /// An `Idempotency-Key` field (a POST or PATCH may then be retried).
    pub idempotency_key: bool,
    /// A gRPC call (errors are answered in gRPC's form).
    pub grpc: bool,
    /// Transfer-Encoding or Content-Length fields: the framing needs a look.
    framed: bool,
    /// The first `Host`, `X-Forwarded-For`, `X-Request-Id` and `Cookie` fields.
    host: Option<usize>,
    forwarded_for: Option<usize>,
    request_id: Option<usize>,
    cookie: Option<usize>,
    /// `Host` and `Cookie` fields so far, and whether a `Content-Type` was.
    hosts: u8,
    cookies: u8,
    content_type: bool,
}

/// What unstick adds to a request head it passes on.
pub struct Forwarding<'a> {
    /// The client's IP, for `X-Forwarded-For`.
    pub client_ip: &'a [u8],
    pub https: bool,
    pub request_id: &'a [u8],
    /// The body's length, if the request had one (`Content-Length`).
    pub body_len: Option<usize>,
}

// === impl Scan ===

impl Scan {
    /// Reads the fields of the request head `head` (its bytes); `affinity`
    /// says which cookies are affinity cookies; names holding `_` are
    /// dropped unless `underscores` (`underscores_in_headers`).
    pub fn of(
        head: &[u8],
        fields: &[HeaderIndices],
        affinity: &affinity::Rules,
        underscores: bool,
    ) -> Scan {
        let fields = fields.iter().map(|f| f.field(head));
        let mut scan = Scan::of_fields(fields, affinity, underscores);
        scan.needs_map |= scan.host.is_none();
        scan
    }

    /// [`Scan::of`] over an HTTP/2 request's fields (its `HeaderMap`, in
    /// its order). Its authority is in `:authority`: a `host` field as
    /// well takes the map path, which checks that they agree, and so do
    /// more fields than the scan keeps a bit for.
    pub fn of_h2(headers: &http::HeaderMap, affinity: &affinity::Rules, underscores: bool) -> Scan {
        let fields = headers
            .iter()
            .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()));
        let mut scan = Scan::of_fields(fields, affinity, underscores);
        scan.needs_map |= scan.host.is_some();
        scan
    }

    /// The pass itself, over each field's name and value.
    fn of_fields<'a>(
        fields: impl Iterator<Item = (&'a [u8], &'a [u8])>,
        affinity: &affinity::Rules,
        underscores: bool,
    ) -> Scan {
        let mut scan = Scan::default();
        for (i, (name, value)) in fields.enumerate() {
            if i >= u128::BITS as usize {
                scan.needs_map = true;
                break;
            }
            let drop =
                (!underscores && has_underscore(name)) || scan.field(i, name, value, affinity);
            if drop {
                scan.dropped |= 1 << i;
            }
        }
        scan
    }

    /// Notes what field `i` says; true if it is left out when the head is
    /// passed on in place.
    fn field(&mut self, i: usize, name: &[u8], value: &[u8], affinity: &affinity::Rules) -> bool {
        let is = |n: &[u8]| name.eq_ignore_ascii_case(n);
        // Most names (`accept`, `user-agent`...) are ruled out by their
        // length and one compare at most.
        match name.len() {
            2 if is(b"te") => {
                // Only `TE: trailers` is passed on: the map path says so.
                self.needs_map = true;
                false
            }
            4 if is(b"host") => self.on_host(i, value),
            6 if is(b"cookie") => self.on_cookie(i, value, affinity),
            6 if is(b"expect") => {
                self.expect = true;
                false
            }
            7 if is(b"upgrade") => {
                self.upgrade = true;
                true
            }
            7 if is(b"trailer") => true,
            10 if is(b"connection") => self.on_connection(value),
            10 if is(b"keep-alive") => true,
            12 if is(b"x-request-id") => {
                self.request_id.get_or_insert(i);
                true
            }
            12 if is(b"content-type") => self.on_content_type(value),
            // Written again from the body's length.
            14 if is(b"content-length") => {
                self.framed = true;
                true
            }
            // The settings of an `Upgrade: h2c`, never an upgrade here.
            14 if is(b"http2-settings") => true,
            15 if is(b"x-forwarded-for") => self.on_forwarded_for(i),
            15 if is(b"idempotency-key") => {
                self.idempotency_key = true;
                false
            }
            16 if is(b"proxy-connection") || is(b"x-forwarded-host") => true,
            17 if is(b"transfer-encoding") => {
                self.framed = true;
                true
            }
            17 if is(b"x-forwarded-proto") => true,
            18 if is(b"proxy-authenticate") => true,
            19 if is(b"proxy-authorization") => true,
            // Longer than `http` takes a name: the map path answers 400.
            n if n > MAX_NAME => {
                self.needs_map = true;
                false
            }
            _ => false,
        }
    }

    /// A `Host` field: one valid `Host` is passed on; the map path refuses
    /// the rest.
    #[inline]
    fn on_host(&mut self, i: usize, value: &[u8]) -> bool {
        self.hosts += 1;
        self.host.get_or_insert(i);
        self.needs_map |= self.hosts > 1 || !valid_host(value);
        false
    }

    /// A `Cookie` field: several are joined into one, affinity cookies
    /// taken out and counted: the map path does both.
    #[inline]
    fn on_cookie(&mut self, i: usize, value: &[u8], affinity: &affinity::Rules) -> bool {
        self.cookies += 1;
        self.cookie.get_or_insert(i);
        self.needs_map |= self.cookies > 1 || affinity.names_any(value);
        false
    }

    /// A `Connection` field, dropped: `close` noted; one naming other
    /// fields takes the map path.
    #[inline]
    fn on_connection(&mut self, value: &[u8]) -> bool {
        self.close |= has_close(value);
        self.needs_map |= connection_names_fields(value);
        true
    }

    /// A `Content-Type` field: the first says whether this is gRPC.
    #[inline]
    fn on_content_type(&mut self, value: &[u8]) -> bool {
        if !self.content_type {
            self.grpc = is_grpc_value(value);
            self.content_type = true;
        }
        false
    }

    /// An `X-Forwarded-For` field, dropped (the proxy writes its own); a
    /// second takes the map path, which joins them.
    #[inline]
    fn on_forwarded_for(&mut self, i: usize) -> bool {
        self.needs_map |= self.forwarded_for.is_some();
        self.forwarded_for = Some(i);
        true
    }

    /// True if the head must be rewritten over a `HeaderMap` (see
    /// [`Scan::needs_map`]'s field), or its target is not one passed on as
    /// it is.
    pub fn needs_map(&self, head: &[u8], parsed: &RequestHead) -> bool {
        self.needs_map || !http1::plain_target(parsed.target(head))
    }

    /// [`Scan::needs_map`] for an HTTP/2 request (see [`Scan::of_h2`]),
    /// which also takes the map path with a framing field (`Content-Length`,
    /// `Transfer-Encoding`): the map path checks those.
    pub fn needs_map_h2(&self) -> bool {
        self.needs_map || self.framed
    }

    /// The request's framing (`http1::request_framing_fields`).
    pub fn framing(&self, head: &[u8], fields: &[HeaderIndices]) -> Result<Framing, HeadError> {
        if !self.framed {
            return Ok(Framing::None);
        }
        http1::request_framing_fields(fields.iter().map(|f| f.field(head)))
    }

    /// The client's `Cookie` field (a head passed on in place has one at most).
    pub fn cookie<'a>(&self, head: &'a [u8], fields: &[HeaderIndices]) -> Option<&'a [u8]> {
        self.cookie.map(|i| fields[i].field(head).1)
    }

    /// An HTTP/2 request's `X-Request-Id` and `Cookie` (one at most, for
    /// a head passed on in place), from its map (`headers`, scanned).
    pub fn found_h2<'a>(
        &self,
        headers: &'a http::HeaderMap,
    ) -> (Option<&'a [u8]>, Option<&'a [u8]>) {
        let value = |at: Option<usize>, name: &http::HeaderName| {
            at.and(headers.get(name)).map(http::HeaderValue::as_bytes)
        };
        (
            value(self.request_id, &super::headers::X_REQUEST_ID),
            value(self.cookie, &http::header::COOKIE),
        )
    }

    /// The client's `X-Request-Id`, if it sent one.
    pub fn request_id<'a>(&self, head: &'a [u8], fields: &[HeaderIndices]) -> Option<&'a [u8]> {
        self.request_id.map(|i| fields[i].field(head).1)
    }
}

/// Writes the request head `head` (its bytes; `parsed`, `fields` and
/// `scan` from reading them) into `out` for a backend: the request line in
/// HTTP/1.1, every field the scan kept (names in lower case, as the map path
/// writes them), then the forwarding fields, the request id and the body's
/// length. Only for a head that does not [`Scan::needs_map`].
pub fn write(
    out: &mut Vec<u8>,
    head: &[u8],
    parsed: &RequestHead,
    fields: &[HeaderIndices],
    scan: &Scan,
    ours: &Forwarding<'_>,
) {
    out.reserve(head.len() + 128);
    out.extend_from_slice(parsed.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(parsed.target(head));
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (i, f) in fields.iter().enumerate() {
        if scan.dropped & (1 << i) == 0 {
            http1::put_field_lowercase(out, head, f);
        }
    }
    let value = |at: Option<usize>| at.map(|i| fields[i].field(head).1);
    write_ours(out, value(scan.forwarded_for), value(scan.host), ours);
}

/// [`write`] for an HTTP/2 request without a body (`parts`, as the client
/// sent it, and `scan`, of its fields, not [`Scan::needs_map`]): the
/// request line with its origin-form `path`, every field the scan kept,
/// `Host` from `:authority` (`authority`), then the forwarding fields and
/// the request id, and `content-length: 0` if `ours.body_len` says so.
pub fn write_h2(
    out: &mut Vec<u8>,
    parts: &http::request::Parts,
    (path, authority): (&[u8], &[u8]),
    scan: &Scan,
    ours: &Forwarding<'_>,
) {
    out.reserve(256);
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(path);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (i, (name, value)) in parts.headers.iter().enumerate() {
        if scan.dropped & (1 << i) == 0 {
            out.extend_from_slice(name.as_str().as_bytes());
            http1::put_field_value(out, value.as_bytes());
        }
    }
    out.extend_from_slice(b"host");
    http1::put_field_value(out, authority);
    let forwarded_for = scan.forwarded_for.and(parts.headers.get("x-forwarded-for"));
    write_ours(
        out,
        forwarded_for.map(|v| v.as_bytes()),
        Some(authority),
        ours,
    );
}

/// The fields unstick adds to a request for a backend, then the head's end:
/// `X-Forwarded-For` (the client's `forwarded_for` list, if any, then its
/// address), `X-Forwarded-Proto`, `X-Forwarded-Host` (the client's `host`,
/// if known), the request id and the body's length.
fn write_ours(
    out: &mut Vec<u8>,
    forwarded_for: Option<&[u8]>,
    host: Option<&[u8]>,
    ours: &Forwarding<'_>,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    if let Some(list) = forwarded_for {
        out.extend_from_slice(list);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ours.client_ip);
    out.extend_from_slice(if ours.https {
        b"\r\nx-forwarded-proto: https\r\n"
    } else {
        b"\r\nx-forwarded-proto: http\r\n"
    });
    if let Some(host) = host {
        out.extend_from_slice(b"x-forwarded-host");
        http1::put_field_value(out, host);
    }
    out.extend_from_slice(b"x-request-id");
    http1::put_field_value(out, ours.request_id);
    if let Some(n) = ours.body_len {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// True if a field name holds `_`: eight bytes at a time, since every name
/// of every request is looked at (the zero-byte test of "Bit Twiddling
/// Hacks", on the name XOR `_`).
fn has_underscore(name: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    let has = |w: [u8; 8]| {
        let x = u64::from_ne_bytes(w) ^ (ONES * u64::from(b'_'));
        x.wrapping_sub(ONES) & !x & HIGH != 0
    };
    let mut words = name.chunks_exact(8);
    if words
        .by_ref()
        .any(|w| has(w.try_into().expect("eight bytes")))
    {
        return true;
    }
    // The rest, padded with bytes that are not `_`.
    let rest = words.remainder();
    let mut w = [0u8; 8];
    w[..rest.len()].copy_from_slice(rest);
    has(w)
}

/// True if a `Connection` value carries `close` (a value with bytes that
/// are not visible ASCII is not read, as `HeaderValue::to_str` would not).
fn has_close(value: &[u8]) -> bool {
    value
        .iter()
        .all(|b| *b == b'\t' || (0x20..0x7f).contains(b))
        && value
            .split(|b| *b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(b"close"))
}

#[cfg(test)]
mod tests {
    use bytes::BytesMut;
    use http::header::{HeaderValue, CONNECTION, EXPECT, UPGRADE};
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    use super::*;
    use crate::config::AffinityPolicy;
    use crate::proxy::headers::RequestId;
    use crate::proxy::{headers, prepare_request, ClientInfo};

    /// Fields a request head is made of below.
    const POOL: &[(&str, &str)] = &[
        ("Host", "t.example"),
        ("User-Agent", "u/1"),
        ("Accept", "a"),
        ("Accept", "b"),
        ("X-Forwarded-For", "10.0.0.1"),
        ("X-Forwarded-Proto", "https"),
        ("X-Forwarded-Host", "forged"),
        ("X-Request-Id", "rid-1"),
        ("Connection", "keep-alive"),
        ("Connection", "Close"),
        ("Connection", "x-hop"),
        ("X-Hop", "h"),
        ("Keep-Alive", "timeout=5"),
        ("Proxy-Connection", "keep-alive"),
        ("Proxy-Authenticate", "Basic"),
        ("Proxy-Authorization", "Basic eA=="),
        ("Trailer", "x-sum"),
        ("TE", "trailers"),
        ("Cookie", "app=1"),
        ("Cookie", "AWSALB=2; b=3"),
        ("Content-Type", "application/grpc"),
        ("Idempotency-Key", "k"),
        ("Content-Length", "3"),
        ("Upgrade", "websocket"),
        ("Expect", "100-continue"),
    ];

    /// The request line, then the fields (names in lower case) sorted.
    fn normalized(head: &[u8]) -> (String, Vec<(String, String)>) {
        let text = String::from_utf8(head.to_vec()).unwrap();
        let mut lines = text.split("\r\n");
        let line = lines.next().unwrap().to_owned();
        let mut fields: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(": "))
            .map(|(n, v)| (n.to_ascii_lowercase(), v.to_owned()))
            .collect();
        fields.sort();
        (line, fields)
    }

    fn random_case(rng: &mut SmallRng, name: &str) -> String {
        name.chars()
            .map(|c| match rng.random_range(0..3) {
                0 => c.to_ascii_uppercase(),
                1 => c.to_ascii_lowercase(),
                _ => c,
            })
            .collect()
    }

    #[test]
    fn underscores_are_found_in_names_of_every_length() {
        for len in 0..20 {
            let plain = vec![b'a'; len];
            assert!(!has_underscore(&plain), "{len}");
            for at in 0..len {
                let mut name = plain.clone();
                name[at] = b'_';
                assert!(has_underscore(&name), "{len} {at}");
            }
        }
        // Bytes next to `_` (0x5e, 0x60, and with the high bit) are not it.
        assert!(!has_underscore(b"^`\xdf\xde\x5e\x60"));
    }

    /// Up to eight fields drawn from [`POOL`], repeats allowed.
    fn random_fields(rng: &mut SmallRng) -> Vec<(&'static str, &'static str)> {
        (0..rng.random_range(0..9))
            .map(|_| POOL[rng.random_range(0..POOL.len())])
            .collect()
    }

    /// For random heads, the scan's facts match what the `HeaderMap` says,
    /// it sends to the map exactly the heads that need it, and the head
    /// written in place is the map path's, field for field.
    #[test]
    fn heads_written_in_place_are_the_map_paths() {
        let affinity = affinity::Rules::new(AffinityPolicy::Strip, &[], &[]);
        let targets = ["/", "/a/b?c=d&e", "http://h/x?y", "*", "/p#frag"];
        let mut rng = SmallRng::seed_from_u64(0x4ead);
        let (mut in_place, mut via_map) = (0, 0);
        for _ in 0..5000 {
            let method = ["GET", "POST", "HEAD", "DELETE"][rng.random_range(0..4)];
            let target = targets[rng.random_range(0..targets.len())];
            let mut chosen = random_fields(&mut rng);
            if rng.random_bool(0.7) {
                chosen.insert(0, POOL[0]);
            }
            let mut raw = format!("{method} {target} HTTP/1.1\r\n");
            for (name, value) in &chosen {
                raw += &format!("{}: {value}\r\n", random_case(&mut rng, name));
            }
            raw += "\r\n";
            let raw = raw.as_bytes();

            let mut fields = Vec::new();
            let head = http1::parse_request_head(raw, 8192, &mut fields)
                .unwrap()
                .unwrap();
            let scan = Scan::of(raw, &fields, &affinity, true);
            let (mut parts, _) = http1::parse_request(&mut BytesMut::from(raw), 8192)
                .unwrap()
                .unwrap();

            // The facts, against the map.
            let h = &parts.headers;
            let count = |name: &str| chosen.iter().filter(|(n, _)| *n == name).count();
            let has = |name: &str, value: &str| chosen.contains(&(name, value));
            let close = h.get_all(CONNECTION).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
            });
            assert_eq!(scan.close, close, "{chosen:?}");
            assert_eq!(scan.upgrade, h.contains_key(UPGRADE));
            assert_eq!(scan.expect, h.contains_key(EXPECT));
            assert_eq!(scan.grpc, headers::is_grpc(h));
            assert_eq!(scan.idempotency_key, h.contains_key("idempotency-key"));
            let map_fields: Vec<(&[u8], &[u8])> =
                h.iter().map(|(n, v)| (n.as_ref(), v.as_bytes())).collect();
            assert_eq!(
                scan.framing(raw, &fields),
                http1::request_framing_fields(map_fields.into_iter())
            );
            let needs_map = count("Host") != 1
                || count("Cookie") > 1
                || count("X-Forwarded-For") > 1
                || has("Cookie", "AWSALB=2; b=3")
                || has("Connection", "x-hop")
                || has("TE", "trailers")
                || !target.starts_with('/')
                || target.contains('#');
            assert_eq!(scan.needs_map(raw, &head), needs_map, "{chosen:?} {target}");
            if needs_map {
                via_map += 1;
                continue;
            }
            in_place += 1;

            // The head, against the map path's.
            let client = ClientInfo::new(([127, 0, 0, 1], 4000).into(), rng.random());
            let id = RequestId::Kept(HeaderValue::from_static("id-1"));
            let body_len = h.contains_key("content-length").then_some(3);
            let mut written = Vec::new();
            let ours = Forwarding {
                client_ip: client.ip.as_bytes(),
                https: client.https,
                request_id: id.as_bytes(),
                body_len,
            };
            write(&mut written, raw, &head, &fields, &scan, &ours);
            prepare_request(&mut parts, &client, &id, false);
            let mut by_map = Vec::new();
            http1::write_request_head(&mut by_map, &parts, body_len.map(|n| n as u64));
            assert_eq!(normalized(&written), normalized(&by_map), "{chosen:?}");
        }
        assert!(in_place > 500 && via_map > 500, "{in_place} / {via_map}");
    }

    /// For random HTTP/2 requests without a body, the scan sends to the map
    /// exactly the heads that need it, and the head written from the
    /// client's fields is the map path's (`check_h2`, then the rewriting
    /// and writing of `Proxy::begin` and `serve_raw`), field for field.
    #[test]
    fn h2_heads_written_from_their_fields_are_the_map_paths() {
        let affinity = affinity::Rules::new(AffinityPolicy::Strip, &[], &[]);
        let paths = ["/", "/a/b?c=d&e", "/x%20y?"];
        let mut rng = SmallRng::seed_from_u64(0x42);
        let (mut in_place, mut via_map) = (0, 0);
        for _ in 0..5000 {
            let method = ["GET", "POST", "HEAD", "DELETE"][rng.random_range(0..4)];
            let path = paths[rng.random_range(0..paths.len())];
            let mut chosen = random_fields(&mut rng);
            chosen.retain(|(n, _)| !["Connection", "Upgrade", "Transfer-Encoding"].contains(n));
            if rng.random_bool(0.8) {
                chosen.retain(|(n, _)| *n != "Host");
            }
            let mut request = http::Request::builder()
                .method(method)
                .uri(format!("https://t.example{path}"))
                .version(http::Version::HTTP_2);
            for (name, value) in &chosen {
                request = request.header(name.to_ascii_lowercase(), *value);
            }
            let (mut parts, ()) = request.body(()).unwrap().into_parts();
            let scan = Scan::of_h2(&parts.headers, &affinity, true);
            let count = |name: &str| chosen.iter().filter(|(n, _)| *n == name).count();
            let has = |name: &str, value: &str| chosen.contains(&(name, value));
            let needs_map = count("Host") > 0
                || count("Cookie") > 1
                || count("X-Forwarded-For") > 1
                || count("Content-Length") > 0
                || has("Cookie", "AWSALB=2; b=3")
                || has("TE", "trailers");
            assert_eq!(scan.needs_map_h2(), needs_map, "{chosen:?}");
            if needs_map {
                via_map += 1;
                continue;
            }
            in_place += 1;

            let (id, cookie) = scan.found_h2(&parts.headers);
            assert_eq!(id.is_some(), count("X-Request-Id") > 0);
            assert_eq!(cookie, parts.headers.get("cookie").map(|v| v.as_bytes()));
            let client = ClientInfo::new(([127, 0, 0, 1], 4000).into(), rng.random());
            let id = RequestId::Kept(HeaderValue::from_static("id-1"));
            let body_len = (method == "POST").then_some(0);
            let mut written = Vec::new();
            let ours = Forwarding {
                client_ip: client.ip.as_bytes(),
                https: client.https,
                request_id: id.as_bytes(),
                body_len,
            };
            let target = (path.as_bytes(), &b"t.example"[..]);
            write_h2(&mut written, &parts, target, &scan, &ours);
            crate::proxy::target::check_h2(&mut parts).unwrap();
            prepare_request(&mut parts, &client, &id, false);
            let mut by_map = Vec::new();
            http1::write_request_head(&mut by_map, &parts, body_len.map(|n| n as u64));
            assert_eq!(normalized(&written), normalized(&by_map), "{chosen:?}");
        }
        assert!(in_place > 500 && via_map > 500, "{in_place} / {via_map}");
    }
}
