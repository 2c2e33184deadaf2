//! HTTP/1.1 head codec: parse and write heads, pick body framing, find the end of a chunked body.

// Everything here is a pure function over bytes: no I/O, no async. Parsed
// header values and URIs share the one frozen `Bytes` of the head, so parsing
// a request costs one `split_to` and no per-header copy (names of non-standard
// headers are the exception: `http` lowercases them into their own buffer).

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};

/// Most headers a head may carry; one more is `HeadError::TooLarge`.
pub const MAX_HEADERS: usize = 100;

/// Why a head could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    /// Unparseable head, bad header value, conflicting framing: 400 (request) / 502 (response).
    #[error("malformed {0}")]
    Malformed(&'static str),
    /// Head longer than the limit, or more than MAX_HEADERS headers: 431 (request) / 502 (response).
    #[error("head too large")]
    TooLarge,
    /// A request line longer than the head limit by itself: 414.
    #[error("request line too long")]
    LineTooLong,
    /// A transfer coding other than `chunked`: 501 (request) / 502 (response).
    #[error("transfer coding not implemented")]
    UnknownCoding,
}

/// Fields a proxy typically adds to a parsed head (see `build_headers`).
const ADDED_FIELDS: usize = 6;

/// Where one header's name and value sit in the head, recorded during the
/// httparse pass (which borrows the buffer) and read from the head's bytes
/// afterwards. Offsets are `u32`: heads are far below 4 GiB.
#[derive(Debug, Clone, Copy)]
pub struct HeaderIndices {
    name: (u32, u32),
    value: (u32, u32),
}

impl HeaderIndices {
    /// Where httparse's `header` (parsed from `bytes`) sits in `bytes`.
    fn of(bytes: &[u8], header: &httparse::Header<'_>) -> HeaderIndices {
        HeaderIndices {
            name: span(range_in(bytes, header.name.as_bytes())),
            value: span(range_in(bytes, header.value)),
        }
    }

    /// This field's name (as sent: any case) and value, in the head it was parsed from.
    pub fn field<'a>(&self, head: &'a [u8]) -> (&'a [u8], &'a [u8]) {
        (&head[range(self.name)], &head[range(self.value)])
    }

    /// This field's whole line, when it was sent as `name: value\r\n`
    /// exactly (one space after the colon, none after the value).
    fn canonical_line<'a>(&self, head: &'a [u8]) -> Option<&'a [u8]> {
        let (name_end, value) = (self.name.1 as usize, range(self.value));
        let line = head.get(self.name.0 as usize..value.end + 2)?;
        let canonical = value.start == name_end + 2
            && head[name_end..value.start] == *b": "
            && line.ends_with(b"\r\n");
        canonical.then_some(line)
    }
}

fn span(r: Range<usize>) -> (u32, u32) {
    // Heads are bounded by `max_head`, far below 4 GiB.
    (r.start as u32, r.end as u32)
}

fn range(s: (u32, u32)) -> Range<usize> {
    s.0 as usize..s.1 as usize
}

/// Offset range of `part` inside `whole`; `part` must be a sub-slice of it
/// (httparse only hands out sub-slices of the input).
fn range_in(whole: &[u8], part: &[u8]) -> Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// Builds a `HeaderMap` whose values are slices of `head` (no copy), in
/// order, repeats kept.
fn build_headers(head: &Bytes, indices: &[HeaderIndices]) -> Result<HeaderMap, HeadError> {
    let mut map = HeaderMap::new();
    fill_headers(&mut map, head, indices)?;
    Ok(map)
}

/// [`build_headers`] into `map` (empty, and perhaps with room already).
fn fill_headers(
    map: &mut HeaderMap,
    head: &Bytes,
    indices: &[HeaderIndices],
) -> Result<(), HeadError> {
    // Room for the fields a proxy adds (forwarding headers, a request id):
    // sized to the head alone, the map grew (reallocated and rehashed) on
    // those inserts, up to three times for a request with one field.
    map.reserve(indices.len() + ADDED_FIELDS);
    for idx in indices {
        append_field(map, head, idx)?;
    }
    Ok(())
}

/// Appends field `idx` of `head` to `map` (its value shares `head`).
fn append_field(map: &mut HeaderMap, head: &Bytes, idx: &HeaderIndices) -> Result<(), HeadError> {
    let name = HeaderName::from_bytes(&head[range(idx.name)])
        .map_err(|_| HeadError::Malformed("header name"))?;
    let value = HeaderValue::from_maybe_shared(head.slice(range(idx.value)))
        .map_err(|_| HeadError::Malformed("header value"))?;
    map.append(name, value);
    Ok(())
}

/// Maps an httparse version digit (`HTTP/1.x`) to `Version`.
fn version(minor: Option<u8>) -> Result<Version, HeadError> {
    match minor {
        Some(0) => Ok(Version::HTTP_10),
        Some(1) => Ok(Version::HTTP_11),
        _ => Err(HeadError::Malformed("version")),
    }
}

/// The outcome of httparse on a window of the buffer.
fn too_large_or_incomplete<T>(buf_len: usize, max_head: usize) -> Result<Option<T>, HeadError> {
    // The window was `max_head` bytes long and still held no complete head:
    // the head is longer than the limit, no need to wait for more bytes.
    if buf_len >= max_head {
        Err(HeadError::TooLarge)
    } else {
        Ok(None)
    }
}

/// Parses a request head at the start of `buf`. Ok(None): incomplete (need more bytes) — but if
/// buf.len() already reaches `max_head` without a complete head, Err(TooLarge).
///
/// On success the head's bytes are removed from `buf` (split_to + freeze) and returned alongside
/// the parts, so the caller can give the raw bytes back (to hand the connection to another
/// server) if it decides not to handle the request. Header values and the URI share those bytes.
/// On Err, `buf` is untouched when httparse refused the head, but a head that parsed and then
/// failed validation (target, header value) has been removed.
/// Only HTTP/1.0 and HTTP/1.1 are accepted; an HTTP/1.0 request carrying Transfer-Encoding is
/// Malformed (RFC 9112 section 6.1: its framing is faulty).
pub fn parse_request(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<(http::request::Parts, Bytes)>, HeadError> {
    let mut fields = Vec::new();
    let Some(head) = parse_request_head(buf, max_head, &mut fields)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(head.len).freeze();
    let parts = request_parts(&bytes, &head, &fields, &mut HeaderMap::new())?;
    Ok(Some((parts, bytes)))
}

/// A request head parsed where it lies: the bytes stay at the start of the
/// buffer, each field's place is in the `fields` given to
/// [`parse_request_head`].
#[derive(Debug, Clone)]
pub struct RequestHead {
    pub method: Method,
    pub version: Version,
    /// The head's length in bytes, final empty line included.
    pub len: usize,
    target: (u32, u32),
}

impl RequestHead {
    /// The request target as sent, in the head it was parsed from.
    pub fn target<'a>(&self, head: &'a [u8]) -> &'a [u8] {
        &head[range(self.target)]
    }
}

/// Parses a request head at the start of `buf` without moving or copying
/// it: the fields' places go in `fields`. Same rules as [`parse_request`],
/// except that the target and the fields are not checked beyond httparse's
/// rules: [`request_parts`] does that, and so does [`plain_target`] for a
/// target passed on as it is (header names and values httparse accepts are
/// exactly those `http` accepts; a test holds the two in agreement).
///
/// Why in place: the fast path passes most request heads on nearly as they
/// are, like response heads (see [`parse_response_head`]).
pub fn parse_request_head(
    buf: &[u8],
    max_head: usize,
    fields: &mut Vec<HeaderIndices>,
) -> Result<Option<RequestHead>, HeadError> {
    fields.clear();
    // Called before each read, on an empty buffer, once per request: skip
    // httparse (~200 instructions, callgrind).
    if buf.is_empty() {
        return Ok(None);
    }
    // Parsing only the first `max_head` bytes bounds the work on a flood,
    // and a complete parse is then within the limit by itself.
    let window = &buf[..buf.len().min(max_head)];
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    let len = match req.parse_with_uninit_headers(window, &mut headers) {
        Ok(httparse::Status::Complete(len)) => len,
        // No line end in the whole window: the request line alone is too long.
        Ok(httparse::Status::Partial) if buf.len() >= max_head && !window.contains(&b'\n') => {
            return Err(HeadError::LineTooLong)
        }
        Ok(httparse::Status::Partial) => return too_large_or_incomplete(buf.len(), max_head),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("request head")),
    };
    let method = req.method.ok_or(HeadError::Malformed("request head"))?;
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|_| HeadError::Malformed("method"))?;
    let target = req.path.ok_or(HeadError::Malformed("request head"))?;
    let target = span(range_in(window, target.as_bytes()));
    let version = version(req.version)?;
    fields.extend(req.headers.iter().map(|h| HeaderIndices::of(window, h)));
    let te = |h: &httparse::Header<'_>| h.name.eq_ignore_ascii_case("transfer-encoding");
    if version == Version::HTTP_10 && req.headers.iter().any(te) {
        return Err(HeadError::Malformed("framing"));
    }
    Ok(Some(RequestHead {
        method,
        version,
        len,
        target,
    }))
}

/// The `http` parts of a head parsed by [`parse_request_head`]; `head` is
/// its bytes (the URI and header values share them). The header map is made
/// in `spare`'s allocation (an empty map a connection keeps from one request
/// to the next: two allocations and frees fewer per request); `spare` is
/// left empty.
pub fn request_parts(
    head: &Bytes,
    parsed: &RequestHead,
    fields: &[HeaderIndices],
    spare: &mut HeaderMap,
) -> Result<http::request::Parts, HeadError> {
    let uri = Uri::from_maybe_shared(head.slice(range(parsed.target)))
        .map_err(|_| HeadError::Malformed("request target"))?;
    spare.clear();
    fill_headers(spare, head, fields)?;
    let (mut parts, ()) = http::Request::new(()).into_parts();
    parts.method = parsed.method.clone();
    parts.uri = uri;
    parts.version = parsed.version;
    parts.headers = std::mem::take(spare);
    Ok(parts)
}

/// True for an origin-form target (`/path?query`) that `http`'s URI parser
/// takes as it is and [`write_request_head`] would write back byte for
/// byte: every byte one the parser allows, no fragment, and within its
/// length limit. Any other target goes through the `Uri` type.
pub fn plain_target(target: &[u8]) -> bool {
    /// Bytes allowed in the path, as `http::uri::PathAndQuery` allows them.
    fn path_byte(b: u8) -> bool {
        matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x40..=0x5F | 0x61..=0x7A | 0x7C | 0x7E)
            || matches!(b, b'"' | b'{' | b'}')
    }
    /// Bytes allowed in the query (`#`, a fragment, is left out).
    fn query_byte(b: u8) -> bool {
        matches!(b, 0x21 | 0x24..=0x3B | 0x3D | 0x3F..=0x7E)
    }
    if target.first() != Some(&b'/') || target.len() >= usize::from(u16::MAX) - 1 {
        return false;
    }
    let (path, query) = match target.iter().position(|b| *b == b'?') {
        Some(q) => (&target[..q], &target[q + 1..]),
        None => (target, &[][..]),
    };
    path.iter().all(|b| path_byte(*b)) && query.iter().all(|b| query_byte(*b))
}

/// A response head parsed where it lies: the bytes stay at the start of the
/// buffer, and each field's place is in the `fields` given to
/// [`parse_response_head`].
#[derive(Debug, Clone, Copy)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    /// The head's length in bytes, final empty line included.
    pub len: usize,
}

/// Parses a response head at the start of `buf` (bytes from a backend)
/// without moving or copying it: the fields' places go in `fields`. Same
/// rules as [`parse_request`]; the reason phrase is dropped.
///
/// Why in place: a proxy passes most response heads on nearly as they are.
/// Building a `HeaderMap` (a name lookup, a value check and a hashed insert
/// per field) and writing it out again was the largest single cost of the
/// fast path (about 4,700 of 24,400 instructions per request, callgrind).
pub fn parse_response_head(
    buf: &[u8],
    max_head: usize,
    fields: &mut Vec<HeaderIndices>,
) -> Result<Option<ResponseHead>, HeadError> {
    fields.clear();
    if buf.is_empty() {
        return Ok(None);
    }
    let window = &buf[..buf.len().min(max_head)];
    let mut headers = [const { std::mem::MaybeUninit::uninit() }; MAX_HEADERS];
    let mut res = httparse::Response::new(&mut []);
    let parsed = httparse::ParserConfig::default().parse_response_with_uninit_headers(
        &mut res,
        window,
        &mut headers,
    );
    let len = match parsed {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return too_large_or_incomplete(buf.len(), max_head),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(_) => return Err(HeadError::Malformed("response head")),
    };
    let code = res.code.ok_or(HeadError::Malformed("response head"))?;
    fields.extend(res.headers.iter().map(|h| HeaderIndices::of(window, h)));
    Ok(Some(ResponseHead {
        status: StatusCode::from_u16(code).map_err(|_| HeadError::Malformed("status"))?,
        version: version(res.version)?,
        len,
    }))
}

/// The `http` parts of a head parsed by [`parse_response_head`]; `head` is
/// its bytes (header values share them).
pub fn response_parts(
    head: &Bytes,
    parsed: &ResponseHead,
    fields: &[HeaderIndices],
) -> Result<http::response::Parts, HeadError> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = parsed.status;
    parts.version = parsed.version;
    parts.headers = build_headers(head, fields)?;
    Ok(parts)
}

/// [`response_parts`] with only the fields whose bit is set in `kept`
/// (bit i: field i), and room for `extra` fields more: a head whose
/// dropped fields are known field by field is built without inserting them
/// into the map and removing them again.
pub fn response_parts_kept(
    head: &Bytes,
    parsed: &ResponseHead,
    fields: &[HeaderIndices],
    kept: u128,
    extra: usize,
) -> Result<http::response::Parts, HeadError> {
    let (mut parts, ()) = http::Response::new(()).into_parts();
    parts.status = parsed.status;
    parts.version = parsed.version;
    parts.headers = HeaderMap::with_capacity(kept.count_ones() as usize + extra);
    for (i, idx) in fields.iter().enumerate().take(u128::BITS as usize) {
        if kept & (1 << i) != 0 {
            append_field(&mut parts.headers, head, idx)?;
        }
    }
    Ok(parts)
}

/// Parses a response head at the start of `buf` into `http` parts; on
/// success the head is removed from `buf`. See [`parse_response_head`].
pub fn parse_response(
    buf: &mut BytesMut,
    max_head: usize,
) -> Result<Option<http::response::Parts>, HeadError> {
    let mut fields = Vec::new();
    let Some(parsed) = parse_response_head(buf, max_head, &mut fields)? else {
        return Ok(None);
    };
    let head = buf.split_to(parsed.len).freeze();
    response_parts(&head, &parsed, &fields).map(Some)
}

/// How a message's body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    /// Exactly this many bytes (may be 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (responses only).
    Close,
}

/// Strips optional whitespace (SP / HTAB) around a list element.
fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// True if the comma-separated list `value` has `token` (any case).
pub fn list_has(value: &[u8], token: &[u8]) -> bool {
    list_elements(value).any(|t| t.eq_ignore_ascii_case(token))
}

/// The non-empty elements of a comma-separated header list, trimmed
/// (RFC 9110 section 5.6.1: empty elements are ignored).
fn list_elements(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|b| *b == b',')
        .map(trim_ows)
        .filter(|e| !e.is_empty())
}

/// What the Transfer-Encoding fields of a message say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codings {
    /// No Transfer-Encoding field.
    Absent,
    /// `chunked`, alone: the only coding unstick frames and passes on.
    Chunked,
    /// `chunked` twice (RFC 9112 7: never), or no coding at all.
    Broken,
    /// Another coding (`gzip`, `gzip, chunked`...): a body unstick could
    /// frame but not label for the next hop, since Transfer-Encoding is
    /// hop-by-hop.
    Other,
}

/// The [`Codings`] of a message's Transfer-Encoding field values.
pub fn transfer_codings<'a>(values: impl Iterator<Item = &'a [u8]>) -> Codings {
    let mut values = values.peekable();
    if values.peek().is_none() {
        return Codings::Absent;
    }
    let (mut chunked, mut other) = (0u32, false);
    for coding in values.flat_map(list_elements) {
        if coding.eq_ignore_ascii_case(b"chunked") {
            chunked += 1;
        } else {
            other = true;
        }
    }
    match (chunked, other) {
        (0, false) | (2.., _) => Codings::Broken,
        (_, true) => Codings::Other,
        (1, false) => Codings::Chunked,
    }
}

/// Parses a decimal length: digits only (no sign, no whitespace), no overflow.
fn parse_decimal(s: &[u8]) -> Option<u64> {
    if s.is_empty() {
        return None;
    }
    s.iter().try_fold(0u64, |n, &b| {
        let digit = b.checked_sub(b'0').filter(|d| *d < 10)?;
        n.checked_mul(10)?.checked_add(u64::from(digit))
    })
}

/// The Content-Length, if any: every value in every header must be the same
/// number (RFC 9110 section 8.6 lets a recipient accept "5, 5").
fn content_length<'a>(values: impl Iterator<Item = &'a [u8]>) -> Result<Option<u64>, HeadError> {
    let mut len = None;
    for value in values {
        for element in value.split(|b| *b == b',').map(trim_ows) {
            let n = parse_decimal(element).ok_or(HeadError::Malformed("content-length"))?;
            if len.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed("content-length"));
            }
            len = Some(n);
        }
    }
    Ok(len)
}

/// A request's framing: Transfer-Encoding whose last coding is `chunked` → Chunked (any other
/// transfer-coding → Malformed); Content-Length → Length (several values or several headers that
/// are all equal are OK, e.g. "5, 5"; differing or non-digit → Malformed); both TE and CL →
/// Malformed("framing") (request smuggling guard); neither → None.
///
/// Over raw header fields (name, value; names in any case), as the fast path reads them.
pub fn request_framing_fields<'a, F>(fields: F) -> Result<Framing, HeadError>
where
    F: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    let named = |name| values_named(fields.clone(), name);
    let mut content_length_values = named(b"content-length").peekable();
    match transfer_codings(named(b"transfer-encoding")) {
        Codings::Absent => {
            Ok(content_length(content_length_values)?.map_or(Framing::None, Framing::Length))
        }
        _ if content_length_values.peek().is_some() => Err(HeadError::Malformed("framing")),
        Codings::Chunked => Ok(Framing::Chunked),
        Codings::Broken => Err(HeadError::Malformed("transfer-encoding")),
        Codings::Other => Err(HeadError::UnknownCoding),
    }
}

/// A response's framing, given the request method (RFC 9112 section 6.3): HEAD requests, 1xx,
/// 204, 304 and a 2xx answer to CONNECT (the connection becomes a tunnel) → None, whatever the
/// headers say; TE `chunked` alone → Chunked (chunked twice → Malformed; any other coding →
/// UnknownCoding: unstick could not label it for the client, TE being hop-by-hop); CL → Length
/// (same validation as requests; when both TE and CL are present, TE wins and CL is not even
/// validated); neither → Close.
///
/// Over raw header fields (name, value; names in any case): the fast path
/// and the load generator read response heads without a `HeaderMap`.
pub fn response_framing_fields<'a, F>(
    method: &Method,
    status: StatusCode,
    fields: F,
) -> Result<Framing, HeadError>
where
    F: Iterator<Item = (&'a [u8], &'a [u8])> + Clone,
{
    // One pass finds the usual head's framing fields (at most one of each):
    // a pass per name cost ~600 instructions a response (callgrind).
    let (mut te, mut cl) = ((0, None), (0, None));
    for (name, value) in fields.clone() {
        let seen = match name.len() {
            17 if name.eq_ignore_ascii_case(b"transfer-encoding") => &mut te,
            14 if name.eq_ignore_ascii_case(b"content-length") => &mut cl,
            _ => continue,
        };
        *seen = (seen.0 + 1, Some(value));
    }
    if te.0 <= 1 && cl.0 <= 1 {
        return framing_of_response(method, status, te.1.into_iter(), cl.1.into_iter());
    }
    let named = |name| values_named(fields.clone(), name);
    framing_of_response(
        method,
        status,
        named(b"transfer-encoding"),
        named(b"content-length"),
    )
}

/// The values of the fields called `name` (in any case), in order.
fn values_named<'a, F>(fields: F, name: &'static [u8]) -> impl Iterator<Item = &'a [u8]>
where
    F: Iterator<Item = (&'a [u8], &'a [u8])>,
{
    fields
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// The response framing rules of [`response_framing_fields`], over the values of
/// the Transfer-Encoding and Content-Length headers.
fn framing_of_response<'a>(
    method: &Method,
    status: StatusCode,
    transfer_encoding: impl Iterator<Item = &'a [u8]>,
    content_length_values: impl Iterator<Item = &'a [u8]>,
) -> Result<Framing, HeadError> {
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
        || (method == Method::CONNECT && status.is_success());
    if bodiless {
        return Ok(Framing::None);
    }
    match transfer_codings(transfer_encoding) {
        Codings::Chunked => Ok(Framing::Chunked),
        Codings::Broken => Err(HeadError::Malformed("transfer-encoding")),
        Codings::Other => Err(HeadError::UnknownCoding),
        Codings::Absent => {
            Ok(content_length(content_length_values)?.map_or(Framing::Close, Framing::Length))
        }
    }
}

/// Appends `n` in decimal without going through `fmt`.
fn put_decimal(out: &mut Vec<u8>, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
}

/// Appends "name: value\r\n".
fn put_header(out: &mut Vec<u8>, name: &HeaderName, value: &HeaderValue) {
    out.extend_from_slice(name.as_str().as_bytes());
    put_field_value(out, value.as_bytes());
}

/// Bytes the headers take on the wire, to reserve once.
fn headers_len(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(n, v)| n.as_str().len() + v.len() + 4)
        .sum()
}

/// Appends the request target: the authority for CONNECT, else origin-form
/// (path and query; "/" when the URI has no path; `*` stays `*`).
fn put_target(out: &mut Vec<u8>, method: &Method, uri: &Uri) {
    if *method == Method::CONNECT {
        if let Some(authority) = uri.authority() {
            out.extend_from_slice(authority.as_str().as_bytes());
            return;
        }
    }
    // `path()` is "" only for an authority-form URI, and "/" for
    // "http://host?q" (so the query is appended separately, not via
    // `path_and_query()`, whose string would then lack the slash).
    let path = uri.path();
    out.extend_from_slice(if path.is_empty() {
        b"/"
    } else {
        path.as_bytes()
    });
    if let Some(query) = uri.query() {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
}

/// Appends an HTTP/1.1 request head for a backend: "{METHOD} {target} HTTP/1.1\r\n", then every
/// header as "name: value\r\n" in map order EXCEPT content-length and transfer-encoding, then
/// "content-length: {n}\r\n" if `body_len` is Some(n), then "\r\n". The target is the URI's
/// path-and-query (origin-form; "/" if the URI has none), or for method CONNECT the authority, or
/// "*" for `OPTIONS *`. Never panics. (Header names are written as stored: lowercase.)
pub fn write_request_head(out: &mut Vec<u8>, parts: &http::request::Parts, body_len: Option<u64>) {
    out.reserve(64 + headers_len(&parts.headers));
    out.extend_from_slice(parts.method.as_str().as_bytes());
    out.push(b' ');
    put_target(out, &parts.method, &parts.uri);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    for (name, value) in &parts.headers {
        if name != CONTENT_LENGTH && name != TRANSFER_ENCODING {
            put_header(out, name, value);
        }
    }
    if let Some(n) = body_len {
        out.extend_from_slice(b"content-length: ");
        put_decimal(out, n);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Appends an HTTP/1.1 response head for a client: "HTTP/1.1 {code} {canonical reason or empty}\r\n",
/// every header except transfer-encoding and connection, then "transfer-encoding: chunked\r\n" if
/// framing is Chunked, then "connection: close\r\n" if !keep_alive, then "\r\n".
///
/// content-length passes through as it is when `framing` is Length or None (a HEAD or 304
/// response keeps the length of the full representation), and is dropped when `framing` is
/// Chunked or Close: there it is not what delimits the body (a backend sent both TE and CL), and
/// passing it on would give the client two conflicting framings.
pub fn write_response_head(
    out: &mut Vec<u8>,
    parts: &http::response::Parts,
    framing: Framing,
    keep_alive: bool,
) {
    let keep_length = matches!(framing, Framing::Length(_) | Framing::None);
    out.reserve(64 + headers_len(&parts.headers));
    write_status_line(out, parts.status);
    for (name, value) in &parts.headers {
        let skip = name == TRANSFER_ENCODING
            || name == CONNECTION
            || (name == CONTENT_LENGTH && !keep_length);
        if !skip {
            put_header(out, name, value);
        }
    }
    end_response_head(out, framing, keep_alive);
}

/// Starts a response head: `HTTP/1.1 <code> <reason>`.
pub fn write_status_line(out: &mut Vec<u8>, status: StatusCode) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// Appends one field of a response head parsed in place, as
/// [`write_response_head`] would: the framing fields (`Transfer-Encoding`,
/// `Connection`, and `Content-Length` unless `framing` keeps it) are left
/// to [`end_response_head`]; the name is written in lower case.
pub fn put_response_field(out: &mut Vec<u8>, head: &[u8], f: &HeaderIndices, framing: Framing) {
    let name = f.field(head).0;
    let keep_length = matches!(framing, Framing::Length(_) | Framing::None);
    let skip = name.eq_ignore_ascii_case(b"transfer-encoding")
        || name.eq_ignore_ascii_case(b"connection")
        || (!keep_length && name.eq_ignore_ascii_case(b"content-length"));
    if !skip {
        put_field_lowercase(out, head, f);
    }
}

/// Appends field `f` of `head` as "name: value\r\n" with the name in lower
/// case (as `HeaderName` writes it).
pub fn put_field_lowercase(out: &mut Vec<u8>, head: &[u8], f: &HeaderIndices) {
    let at = out.len();
    let (name, value) = f.field(head);
    match f.canonical_line(head) {
        // The usual layout is copied in one piece, not three (saved about
        // 300 of the 670 instructions the fields of a head took, callgrind).
        Some(line) => out.extend_from_slice(line),
        None => {
            out.extend_from_slice(name);
            put_field_value(out, value);
        }
    }
    lowercase_ascii(&mut out[at..at + name.len()]);
}

/// `make_ascii_lowercase`, eight bytes at a time: a byte at a time cost
/// about 7 instructions per byte of every field name written (callgrind).
fn lowercase_ascii(bytes: &mut [u8]) {
    let mut words = bytes.chunks_exact_mut(8);
    for w in &mut words {
        let x = u64::from_ne_bytes((&*w).try_into().expect("eight bytes"));
        w.copy_from_slice(&lowercase_word(x).to_ne_bytes());
    }
    let rest = words.into_remainder();
    let mut w = [0; 8];
    w[..rest.len()].copy_from_slice(rest);
    let lower = lowercase_word(u64::from_ne_bytes(w)).to_ne_bytes();
    rest.copy_from_slice(&lower[..rest.len()]);
}

/// Each byte of `x` in `A..=Z` gets its 0x20 bit; no other byte changes.
fn lowercase_word(x: u64) -> u64 {
    const ONES: u64 = u64::from_ne_bytes([1; 8]);
    const HIGH: u64 = ONES * 0x80;
    // Per byte, with no carry between bytes (the low 7 bits plus at most 0x3f):
    let low = x & !HIGH;
    let from_a = low + ONES * u64::from(0x80 - b'A'); // high bit: low >= 'A'
    let past_z = low + ONES * u64::from(0x80 - b'Z' - 1); // high bit: low > 'Z'
    let upper = from_a & !past_z & !x & HIGH; // and x itself is ASCII
    x | (upper >> 2)
}

/// Appends `: value` and the line end.
pub fn put_field_value(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Ends a response head: the framing it goes out with, `connection: close`
/// unless kept alive, and the empty line.
pub fn end_response_head(out: &mut Vec<u8>, framing: Framing, keep_alive: bool) {
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Longest chunk-size line (size and extensions, without the CRLF).
const MAX_SIZE_LINE: usize = 4096;
/// Most bytes of trailer fields (CRLFs included, the final empty line not).
const MAX_TRAILERS: usize = 64 * 1024;

/// A malformed chunked body.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(pub &'static str);

/// Where the scanner is in the chunked grammar (RFC 9112 7.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum State {
    /// At the start of a chunk-size line: a hex digit must come.
    #[default]
    SizeStart,
    /// Inside the hex size.
    Size,
    /// Whitespace after the size: only more of it, or `;`, may follow.
    SizeWs,
    /// After a `;`: whitespace, then an extension name.
    ExtStart,
    /// Inside an extension name (a token).
    ExtName,
    /// Whitespace after an extension name: `=`, or `;` may follow.
    ExtAfterName,
    /// After `=`: whitespace, then a token or a quoted string.
    ExtValueStart,
    /// Inside a token value.
    ExtToken,
    /// Inside a quoted-string value, after a backslash in one, and after
    /// its closing quote.
    ExtQuoted,
    ExtQuotedPair,
    ExtQuoteEnd,
    /// Whitespace after a value: only `;` may follow.
    ExtAfterValue,
    /// After the size line's CR.
    SizeLf,
    /// Inside chunk data; `remaining` counts down.
    Data,
    /// After chunk data: CR.
    DataCr,
    /// After chunk data: LF.
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart,
    /// Inside a trailer field, up to the CR.
    Trailer,
    /// After a trailer field's CR.
    TrailerLf,
    /// After the final empty line's CR.
    EndLf,
    /// The body is complete.
    Done,
    /// An error was returned; it is returned again.
    Failed(&'static str),
}

/// Reads a chunked body by the grammar of RFC 9112 7.1, strictly: CRLF
/// line ends everywhere; after the size only extensions (`;` name, and
/// `=` token or quoted string, whitespace only around `;` and `=`); no
/// control bytes. It finds where the body ends (so a connection can be
/// reused), where its data lies ([`ChunkedScanner::scan_data`]), and keeps
/// its trailer section if asked ([`ChunkedScanner::keeping_trailers`]).
/// Feed it consecutive slices of the body bytes.
#[derive(Debug, Default)]
pub struct ChunkedScanner {
    state: State,
    /// The chunk size being read, then the data bytes still to skip.
    remaining: u64,
    /// Bytes of the current size line so far.
    line: usize,
    /// Bytes of trailer fields so far.
    trailers: usize,
    /// Chunk data bytes so far (the decoded body's length).
    data: u64,
    /// The trailer section's bytes (fields and their CRLFs), if kept.
    kept: Option<Vec<u8>>,
}

// === impl ChunkedScanner ===

impl ChunkedScanner {
    /// A scanner at the start of a chunked body.
    pub fn new() -> ChunkedScanner {
        ChunkedScanner::default()
    }

    /// A scanner that keeps the trailer section's bytes (see
    /// [`ChunkedScanner::trailer_section`]).
    pub fn keeping_trailers() -> ChunkedScanner {
        ChunkedScanner {
            kept: Some(Vec::new()),
            ..ChunkedScanner::default()
        }
    }

    /// Whether the whole body (last chunk, trailers, final CRLF) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Chunk data bytes scanned so far: the length of the decoded body.
    pub fn data_len(&self) -> u64 {
        self.data
    }

    /// The trailer section seen so far (each field line with its CRLF), if
    /// the scanner keeps it.
    pub fn trailer_section(&self) -> Option<&[u8]> {
        self.kept.as_deref()
    }

    /// Scans the next bytes of the body. Returns how many bytes of `data` belong to this body
    /// (all of them, unless the body ends inside `data`: then the count up to and including the
    /// final CRLF after the last chunk / trailers) and whether the body is complete.
    /// Errors: a size line or extension off the grammar, size overflow (> u64), missing CRLF
    /// after chunk data or a line, a chunk-size line (with extensions) longer than 4096 bytes,
    /// trailers longer than 64 KiB in total. After an error, every call returns the same error.
    pub fn scan(&mut self, data: &[u8]) -> Result<(usize, bool), ChunkError> {
        self.scan_data(data, |_| {})
    }

    /// [`ChunkedScanner::scan`], telling `on_data` where each run of chunk
    /// data lies in `data`.
    pub fn scan_data(
        &mut self,
        data: &[u8],
        mut on_data: impl FnMut(Range<usize>),
    ) -> Result<(usize, bool), ChunkError> {
        let mut at = 0;
        while at < data.len() {
            match self.state {
                State::Done => return Ok((at, true)),
                State::Failed(why) => return Err(ChunkError(why)),
                State::Data => {
                    // Skip the whole run of data at once, whatever its size.
                    let available = (data.len() - at) as u64;
                    let skip = self.remaining.min(available);
                    self.remaining -= skip;
                    self.data += skip;
                    on_data(at..at + skip as usize);
                    at += skip as usize;
                    if self.remaining == 0 {
                        self.state = State::DataCr;
                    }
                }
                _ => {
                    if let Err(why) = self.step(data[at]) {
                        self.state = State::Failed(why);
                        return Err(ChunkError(why));
                    }
                    at += 1;
                }
            }
        }
        match self.state {
            State::Failed(why) => Err(ChunkError(why)),
            state => Ok((at, state == State::Done)),
        }
    }

    /// Advances over one byte outside chunk data.
    fn step(&mut self, byte: u8) -> Result<(), &'static str> {
        if self.in_size_line() && byte != b'\r' {
            self.count_line()?;
        }
        self.state = match self.state {
            State::SizeStart => {
                self.line = 1;
                self.remaining = u64::from(hex_digit(byte).ok_or("bad chunk size")?);
                State::Size
            }
            State::Size => match (hex_digit(byte), byte) {
                (Some(d), _) => {
                    // After `* 16` the low nibble is zero: OR adds without overflow.
                    self.remaining = self
                        .remaining
                        .checked_mul(16)
                        .ok_or("chunk size overflow")?
                        | u64::from(d);
                    State::Size
                }
                (None, b' ' | b'\t') => State::SizeWs,
                (None, b';') => State::ExtStart,
                (None, b'\r') => State::SizeLf,
                (None, _) => return Err("bad chunk size"),
            },
            State::SizeWs => match byte {
                b' ' | b'\t' => State::SizeWs,
                b';' => State::ExtStart,
                _ => return Err("bad chunk size"),
            },
            State::SizeLf => match byte {
                b'\n' if self.remaining == 0 => State::TrailerStart,
                b'\n' => State::Data,
                _ => return Err("missing LF after chunk size"),
            },
            State::DataCr => match byte {
                b'\r' => State::DataLf,
                _ => return Err("missing CRLF after chunk data"),
            },
            State::DataLf => match byte {
                b'\n' => State::SizeStart,
                _ => return Err("missing CRLF after chunk data"),
            },
            State::TrailerStart => match byte {
                b'\r' => State::EndLf,
                _ => self.trailer_byte(byte)?,
            },
            State::Trailer => self.trailer_byte(byte)?,
            State::TrailerLf => match byte {
                b'\n' => {
                    self.count_trailer()?;
                    self.keep(byte);
                    State::TrailerStart
                }
                _ => return Err("missing LF after trailer"),
            },
            State::EndLf => match byte {
                b'\n' => State::Done,
                _ => return Err("missing LF at end of chunked body"),
            },
            // `scan` handles these without stepping.
            State::Data | State::Done | State::Failed(_) => self.state,
            ext => extension_step(ext, byte)?,
        };
        Ok(())
    }

    /// True inside a chunk-size line, after its first byte.
    fn in_size_line(&self) -> bool {
        !matches!(
            self.state,
            State::SizeStart
                | State::SizeLf
                | State::Data
                | State::DataCr
                | State::DataLf
                | State::TrailerStart
                | State::Trailer
                | State::TrailerLf
                | State::EndLf
                | State::Done
                | State::Failed(_)
        )
    }

    /// One byte of a trailer field (not at the start of the final empty
    /// line): a bare LF or a control byte is refused.
    fn trailer_byte(&mut self, byte: u8) -> Result<State, &'static str> {
        self.count_trailer()?;
        self.keep(byte);
        match byte {
            b'\r' => Ok(State::TrailerLf),
            b'\n' => Err("bare LF in trailer"),
            b'\t' => Ok(State::Trailer),
            0..=0x1f | 0x7f => Err("control byte in trailer"),
            _ => Ok(State::Trailer),
        }
    }

    fn keep(&mut self, byte: u8) {
        if let Some(kept) = &mut self.kept {
            kept.push(byte);
        }
    }

    /// Counts one more byte of the size line against its limit.
    fn count_line(&mut self) -> Result<(), &'static str> {
        self.line += 1;
        if self.line > MAX_SIZE_LINE {
            return Err("chunk size line too long");
        }
        Ok(())
    }

    /// Counts one more byte of trailers against their limit.
    fn count_trailer(&mut self) -> Result<(), &'static str> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err("trailers too large");
        }
        Ok(())
    }
}

/// One byte of a chunk extension: `;` BWS name [ BWS `=` BWS ( token /
/// quoted-string ) ] (RFC 9112 7.1.1), ending at the line's CR.
fn extension_step(state: State, byte: u8) -> Result<State, &'static str> {
    const BAD: &str = "bad chunk extension";
    let ws = matches!(byte, b' ' | b'\t');
    Ok(match state {
        State::ExtStart if ws => State::ExtStart,
        State::ExtStart if is_tchar(byte) => State::ExtName,
        State::ExtName if is_tchar(byte) => State::ExtName,
        State::ExtName | State::ExtAfterName if ws => State::ExtAfterName,
        State::ExtName | State::ExtAfterName if byte == b'=' => State::ExtValueStart,
        State::ExtValueStart if ws => State::ExtValueStart,
        State::ExtValueStart if byte == b'"' => State::ExtQuoted,
        State::ExtValueStart if is_tchar(byte) => State::ExtToken,
        State::ExtToken if is_tchar(byte) => State::ExtToken,
        State::ExtQuoted => match byte {
            b'"' => State::ExtQuoteEnd,
            b'\\' => State::ExtQuotedPair,
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => State::ExtQuoted,
            _ => return Err(BAD),
        },
        State::ExtQuotedPair => match byte {
            b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => State::ExtQuoted,
            _ => return Err(BAD),
        },
        State::ExtToken | State::ExtQuoteEnd | State::ExtAfterValue if ws => State::ExtAfterValue,
        State::ExtName
        | State::ExtAfterName
        | State::ExtToken
        | State::ExtQuoteEnd
        | State::ExtAfterValue
            if byte == b';' =>
        {
            State::ExtStart
        }
        // Whitespace may not end the line (it is only allowed around `;`
        // and `=`).
        State::ExtName | State::ExtToken | State::ExtQuoteEnd if byte == b'\r' => State::SizeLf,
        _ if byte == b'\n' => return Err("bare LF in chunk extension"),
        _ => return Err(BAD),
    })
}

/// A `tchar` of RFC 9110 5.6.2: the bytes of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// A field's name and value, as they lie in the bytes read.
pub type Field<'a> = (&'a [u8], &'a [u8]);

/// A chunked body decoded and framed again: its data goes out in chunks of
/// unstick's own (extensions dropped), its trailer section is kept for the
/// caller to judge, field by field.
///
/// Why not pass the backend's chunks on: a proxy that relays framing
/// bytes it did not write relays every ambiguity in them too (a size line
/// the next parser reads otherwise, an extension with control bytes).
#[derive(Debug, Default)]
pub struct Rechunker {
    scanner: ChunkedScanner,
    /// Where the data of the last input lay (kept for its allocation).
    runs: Vec<Range<usize>>,
}

impl Rechunker {
    pub fn new() -> Rechunker {
        Rechunker {
            scanner: ChunkedScanner::keeping_trailers(),
            runs: Vec::new(),
        }
    }

    /// Reads the next bytes of the body, and appends the data they hold to
    /// `out` as one chunk (nothing if they hold none). Returns how many
    /// bytes of `input` belong to the body and whether it ended; then
    /// [`Rechunker::trailers`] has the trailer fields, and the caller ends
    /// the body with [`write_last_chunk`].
    pub fn rechunk(
        &mut self,
        input: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(usize, bool), ChunkError> {
        self.runs.clear();
        let runs = &mut self.runs;
        let scanned = self.scanner.scan_data(input, |r| runs.push(r))?;
        let len: usize = self.runs.iter().map(|r| r.len()).sum();
        if len > 0 {
            out.reserve(len + 20);
            out.extend_from_slice(format!("{len:x}\r\n").as_bytes());
            for r in &self.runs {
                out.extend_from_slice(&input[r.clone()]);
            }
            out.extend_from_slice(b"\r\n");
        }
        Ok(scanned)
    }

    /// The trailer fields, once the body ended: every line must be a field
    /// (`name: value`; obs-fold and lines without a colon are refused, as
    /// in a head).
    pub fn trailers(&self) -> Result<Vec<Field<'_>>, ChunkError> {
        let section = self.scanner.trailer_section().unwrap_or_default();
        trailer_fields(section)
    }
}

/// The fields of a trailer section (field lines with their CRLFs), parsed
/// as a head's fields are.
pub fn trailer_fields(section: &[u8]) -> Result<Vec<Field<'_>>, ChunkError> {
    if section.is_empty() {
        return Ok(Vec::new());
    }
    let mut buf = section.to_vec();
    buf.extend_from_slice(b"\r\n");
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(&buf, &mut headers) {
        Ok(httparse::Status::Complete((_, fields))) => Ok(fields
            .iter()
            .map(|h| {
                let name = range_in(&buf, h.name.as_bytes());
                let value = range_in(&buf, h.value);
                (&section[name], &section[value])
            })
            .collect()),
        _ => Err(ChunkError("malformed trailer field")),
    }
}

/// Ends a chunked body: the last chunk, `fields` as its trailers, the
/// empty line.
pub fn write_last_chunk<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = (&'a [u8], &'a [u8])>) {
    out.extend_from_slice(b"0\r\n");
    for (name, value) in fields {
        let at = out.len();
        out.extend_from_slice(name);
        lowercase_ascii(&mut out[at..]);
        put_field_value(out, value);
    }
    out.extend_from_slice(b"\r\n");
}

/// The value of a hex digit.
fn hex_digit(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    fn req(bytes: &[u8]) -> Result<Option<(http::request::Parts, Bytes)>, HeadError> {
        parse_request(&mut BytesMut::from(bytes), 8192)
    }

    fn res(bytes: &[u8]) -> Result<Option<http::response::Parts>, HeadError> {
        parse_response(&mut BytesMut::from(bytes), 8192)
    }

    /// Header (name, value) pairs, in order.
    type Pairs<'a> = &'a [(&'a str, &'a str)];

    /// A parse result without the parts (they have no `PartialEq`): Ok(true) when complete.
    fn outcome<T>(parsed: Result<Option<T>, HeadError>) -> Result<bool, HeadError> {
        parsed.map(|p| p.is_some())
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(
                HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    /// "{n} headers" request head.
    fn many_headers(n: usize) -> Vec<u8> {
        let mut head = b"GET / HTTP/1.1\r\n".to_vec();
        for i in 0..n {
            head.extend_from_slice(format!("x-h{i}: {i}\r\n").as_bytes());
        }
        head.extend_from_slice(b"\r\n");
        head
    }

    // --- parse_request ---

    #[test]
    fn request_simple_get() {
        let raw = b"GET /path?q=1 HTTP/1.1\r\nHost: example.com\r\nAccept: */*\r\n\r\n";
        let mut buf = BytesMut::from(&raw[..]);
        let (parts, head) = parse_request(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(parts.method, Method::GET);
        assert_eq!(parts.uri, "/path?q=1");
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["host"], "example.com");
        assert_eq!(parts.headers["accept"], "*/*");
        assert_eq!(parts.headers.len(), 2);
        assert_eq!(&head[..], &raw[..]);
        assert!(buf.is_empty());
    }

    #[test]
    fn request_keeps_header_order_and_repeats() {
        let raw = b"POST / HTTP/1.1\r\nX-A: 1\r\nx-b: 2\r\nX-A: 3\r\nCookie: c=1\r\n\r\n";
        let (parts, _) = req(raw).unwrap().unwrap();
        let seen: Vec<(&str, &[u8])> = parts
            .headers
            .iter()
            .map(|(n, v)| (n.as_str(), v.as_bytes()))
            .collect();
        // HeaderMap groups repeats under the first occurrence, values in arrival order.
        let want: Vec<(&str, &[u8])> = vec![
            ("x-a", b"1"),
            ("x-a", b"3"),
            ("x-b", b"2"),
            ("cookie", b"c=1"),
        ];
        assert_eq!(seen, want);
    }

    #[test]
    fn request_values_and_uri_share_the_head() {
        let raw = b"GET /a/long/path HTTP/1.1\r\nx-custom: some value\r\nhost: h\r\n\r\n";
        let (parts, head) = req(raw).unwrap().unwrap();
        let span = head.as_ptr() as usize..head.as_ptr() as usize + head.len();
        for value in parts.headers.values() {
            assert!(
                span.contains(&(value.as_bytes().as_ptr() as usize)),
                "{value:?} was copied"
            );
        }
        assert!(
            span.contains(&(parts.uri.path().as_ptr() as usize)),
            "uri was copied"
        );
    }

    #[test]
    fn request_byte_by_byte_then_pipelined_rest_stays() {
        let first = b"GET /one HTTP/1.1\r\nHost: a\r\n\r\n";
        let second = b"GET /two HTTP/1.1\r\nHost: b\r\n\r\n";
        let mut buf = BytesMut::new();
        for (i, byte) in first.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let parsed = parse_request(&mut buf, 8192).unwrap();
            if i + 1 < first.len() {
                assert!(parsed.is_none(), "complete after {} bytes", i + 1);
                assert_eq!(buf.len(), i + 1, "partial parse must not consume");
            } else {
                assert_eq!(parsed.unwrap().0.uri, "/one");
            }
        }
        assert!(buf.is_empty());

        let mut buf = BytesMut::new();
        buf.extend_from_slice(first);
        buf.extend_from_slice(second);
        buf.extend_from_slice(b"GET /thr");
        let (one, head) = parse_request(&mut buf, 8192).unwrap().unwrap();
        assert_eq!((one.uri.path(), &head[..]), ("/one", &first[..]));
        let (two, _) = parse_request(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(two.uri, "/two");
        assert_eq!(two.headers["host"], "b");
        assert_eq!(outcome(parse_request(&mut buf, 8192)), Ok(false));
        assert_eq!(&buf[..], b"GET /thr");
    }

    #[test]
    fn request_http10_and_target_forms() {
        let (parts, _) = req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert_eq!(parts.version, Version::HTTP_10);

        let (parts, _) = req(b"GET http://example.com/x?y HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(parts.uri.host(), Some("example.com"));
        assert_eq!(parts.uri.path(), "/x");

        let (parts, _) = req(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(parts.method, Method::CONNECT);
        assert_eq!(parts.uri.authority().unwrap(), "example.com:443");

        let (parts, _) = req(b"OPTIONS * HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(parts.uri, "*");

        let (parts, _) = req(b"PURGE /x HTTP/1.1\r\n\r\n").unwrap().unwrap();
        assert_eq!(parts.method.as_str(), "PURGE");
    }

    #[test]
    fn request_too_large() {
        let raw = b"GET / HTTP/1.1\r\nHost: example.com\r\n\r\n";
        // Exactly at the limit: fine; one byte under the head's length: too large.
        let mut buf = BytesMut::from(&raw[..]);
        assert!(parse_request(&mut buf, raw.len()).unwrap().is_some());
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            outcome(parse_request(&mut buf, raw.len() - 1)),
            Err(HeadError::TooLarge)
        );
        // Incomplete: None while under the limit, TooLarge once the limit is reached.
        let mut buf = BytesMut::from(&raw[..20]);
        assert_eq!(outcome(parse_request(&mut buf, 21)), Ok(false));
        assert_eq!(
            outcome(parse_request(&mut buf, 20)),
            Err(HeadError::TooLarge)
        );
        // A huge flood without CRLF is refused without reading it all: a
        // request line that long is a 414, not a 431.
        let mut buf = BytesMut::from(&vec![b'A'; 1 << 20][..]);
        assert_eq!(
            outcome(parse_request(&mut buf, 8192)),
            Err(HeadError::LineTooLong)
        );
        let long_target = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(9000));
        let mut buf = BytesMut::from(long_target.as_bytes());
        assert_eq!(
            outcome(parse_request(&mut buf, 8192)),
            Err(HeadError::LineTooLong)
        );
        // A long field after a short request line is the head's size.
        let long_field = format!("GET / HTTP/1.1\r\nx: {}\r\n\r\n", "a".repeat(9000));
        let mut buf = BytesMut::from(long_field.as_bytes());
        assert_eq!(
            outcome(parse_request(&mut buf, 8192)),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn request_header_count_limit() {
        assert_eq!(
            req(&many_headers(MAX_HEADERS))
                .unwrap()
                .unwrap()
                .0
                .headers
                .len(),
            MAX_HEADERS
        );
        let mut buf = BytesMut::from(&many_headers(MAX_HEADERS + 1)[..]);
        assert_eq!(
            outcome(parse_request(&mut buf, 1 << 20)),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn request_malformed() {
        for raw in [
            &b"garbage\r\n\r\n"[..],
            b"GET / HTTP/2.0\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nbad header\r\n\r\n",
            b"GET / HTTP/1.1\r\nx: a\x01b\r\n\r\n",
            b"G(T / HTTP/1.1\r\n\r\n",
            b"GET /a b HTTP/1.1\r\n\r\n",
        ] {
            assert!(
                matches!(req(raw), Err(HeadError::Malformed(_))),
                "{:?} gave {:?}",
                String::from_utf8_lossy(raw),
                req(raw)
            );
        }
        // HTTP/1.0 has no Transfer-Encoding (RFC 9112 section 6.1).
        let raw = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(outcome(req(raw)), Err(HeadError::Malformed("framing")));
    }

    // --- parse_response ---

    #[test]
    fn response_status_headers_and_body_left() {
        let head = b"HTTP/1.1 404 Whatever Reason\r\nContent-Length: 5\r\nX-A: 1\r\nX-A: 2\r\n\r\n";
        let mut buf = BytesMut::from(&head[..]);
        buf.extend_from_slice(b"hello");
        let parts = parse_response(&mut buf, 8192).unwrap().unwrap();
        assert_eq!(parts.status, StatusCode::NOT_FOUND);
        assert_eq!(parts.version, Version::HTTP_11);
        assert_eq!(parts.headers["content-length"], "5");
        let xa: Vec<_> = parts.headers.get_all("x-a").iter().collect();
        assert_eq!(xa, ["1", "2"]);
        assert_eq!(&buf[..], b"hello");

        let parts = res(b"HTTP/1.0 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!(parts.version, Version::HTTP_10);
        let parts = res(b"HTTP/1.1 599 \r\n\r\n").unwrap().unwrap();
        assert_eq!(parts.status.as_u16(), 599);
    }

    #[test]
    fn response_partial_and_limits() {
        let raw = b"HTTP/1.1 200 OK\r\nServer: x\r\n\r\n";
        let mut buf = BytesMut::new();
        for (i, byte) in raw.iter().enumerate() {
            buf.extend_from_slice(&[*byte]);
            let parsed = parse_response(&mut buf, 8192).unwrap();
            assert_eq!(
                parsed.is_some(),
                i + 1 == raw.len(),
                "after {} bytes",
                i + 1
            );
        }
        let mut buf = BytesMut::from(&raw[..]);
        assert_eq!(
            outcome(parse_response(&mut buf, raw.len() - 1)),
            Err(HeadError::TooLarge)
        );
        let mut many = b"HTTP/1.1 200 OK\r\n".to_vec();
        many.extend_from_slice(&many_headers(MAX_HEADERS + 1)[16..]);
        let mut buf = BytesMut::from(&many[..]);
        assert_eq!(
            outcome(parse_response(&mut buf, 1 << 20)),
            Err(HeadError::TooLarge)
        );
    }

    #[test]
    fn response_malformed() {
        for raw in [
            &b"HTTP/1.1 abc OK\r\n\r\n"[..],
            b"HTTP/2 200\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nno colon\r\n\r\n",
            b"<html>\r\n\r\n",
        ] {
            assert!(
                matches!(res(raw), Err(HeadError::Malformed(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
        // httparse reads any 3 digits; http's StatusCode needs 100..=999.
        assert!(matches!(
            res(b"HTTP/1.1 099 X\r\n\r\n"),
            Err(HeadError::Malformed(_))
        ));
    }

    // --- framing ---

    #[test]
    fn request_framing_table() {
        let m = |e| Err(HeadError::Malformed(e));
        let cases: &[(Pairs, Result<Framing, HeadError>)] = &[
            (&[], Ok(Framing::None)),
            (&[("content-length", "0")], Ok(Framing::Length(0))),
            (&[("content-length", "42")], Ok(Framing::Length(42))),
            (&[("content-length", "5, 5")], Ok(Framing::Length(5))),
            (
                &[("content-length", "5"), ("content-length", "5")],
                Ok(Framing::Length(5)),
            ),
            (
                &[("content-length", "5"), ("content-length", "6")],
                m("content-length"),
            ),
            (&[("content-length", "5, 6")], m("content-length")),
            (&[("content-length", "+5")], m("content-length")),
            (&[("content-length", "-1")], m("content-length")),
            (&[("content-length", "0x10")], m("content-length")),
            (&[("content-length", "")], m("content-length")),
            (&[("content-length", "5,")], m("content-length")),
            (
                &[("content-length", "99999999999999999999")],
                m("content-length"),
            ),
            (&[("transfer-encoding", "chunked")], Ok(Framing::Chunked)),
            (&[("transfer-encoding", "Chunked")], Ok(Framing::Chunked)),
            // A coding unstick could not label for the backend: 501.
            (
                &[("transfer-encoding", "gzip, chunked")],
                Err(HeadError::UnknownCoding),
            ),
            (
                &[
                    ("transfer-encoding", "gzip"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(HeadError::UnknownCoding),
            ),
            (
                &[("transfer-encoding", "chunked, gzip")],
                Err(HeadError::UnknownCoding),
            ),
            (
                &[("transfer-encoding", "chunked, chunked")],
                m("transfer-encoding"),
            ),
            (
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                m("transfer-encoding"),
            ),
            (
                &[("transfer-encoding", "gzip")],
                Err(HeadError::UnknownCoding),
            ),
            (&[("transfer-encoding", "")], m("transfer-encoding")),
            (
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
                m("framing"),
            ),
            (
                &[("content-length", "5"), ("transfer-encoding", "chunked")],
                m("framing"),
            ),
        ];
        for (pairs, want) in cases {
            let fields = pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()));
            assert_eq!(&request_framing_fields(fields), want, "{pairs:?}");
        }
    }

    #[test]
    fn response_framing_table() {
        let (get, head, connect) = (Method::GET, Method::HEAD, Method::CONNECT);
        let s = |code| StatusCode::from_u16(code).unwrap();
        let cl5: &[(&str, &str)] = &[("content-length", "5")];
        let te: &[(&str, &str)] = &[("transfer-encoding", "chunked")];
        let cases: &[(&Method, u16, Pairs, Result<Framing, HeadError>)] = &[
            (&get, 200, cl5, Ok(Framing::Length(5))),
            (
                &get,
                200,
                &[("content-length", "5, 5")],
                Ok(Framing::Length(5)),
            ),
            (
                &get,
                200,
                &[("content-length", "5, 6")],
                Err(HeadError::Malformed("content-length")),
            ),
            (
                &get,
                200,
                &[("content-length", "x")],
                Err(HeadError::Malformed("content-length")),
            ),
            (&get, 200, te, Ok(Framing::Chunked)),
            (
                &get,
                200,
                &[("transfer-encoding", "gzip")],
                Err(HeadError::UnknownCoding),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "chunked, chunked")],
                Err(HeadError::Malformed("transfer-encoding")),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "5")],
                Ok(Framing::Chunked),
            ),
            (
                &get,
                200,
                &[("transfer-encoding", "chunked"), ("content-length", "bad")],
                Ok(Framing::Chunked),
            ),
            (&get, 200, &[], Ok(Framing::Close)),
            (
                &get,
                500,
                &[("content-length", "0")],
                Ok(Framing::Length(0)),
            ),
            (&head, 200, cl5, Ok(Framing::None)),
            (&head, 200, te, Ok(Framing::None)),
            (&get, 100, &[], Ok(Framing::None)),
            (&get, 101, te, Ok(Framing::None)),
            (&get, 204, cl5, Ok(Framing::None)),
            (&get, 304, cl5, Ok(Framing::None)),
            (&get, 304, &[("content-length", "bad")], Ok(Framing::None)),
            (&connect, 200, &[], Ok(Framing::None)),
            (&connect, 407, cl5, Ok(Framing::Length(5))),
            // Names in any case; a field given twice (the one-pass lookup
            // hands these to a pass per name).
            (
                &get,
                200,
                &[("Transfer-Encoding", "chunked"), ("Server", "x")],
                Ok(Framing::Chunked),
            ),
            (
                &get,
                200,
                &[("Content-Length", "5"), ("CONTENT-LENGTH", "5")],
                Ok(Framing::Length(5)),
            ),
            (
                &get,
                200,
                &[("content-length", "5"), ("Content-Length", "6")],
                Err(HeadError::Malformed("content-length")),
            ),
            (
                &get,
                200,
                &[
                    ("transfer-encoding", "gzip"),
                    ("Transfer-Encoding", "chunked"),
                ],
                Err(HeadError::UnknownCoding),
            ),
            (
                &get,
                200,
                &[
                    ("transfer-encoding", "chunked"),
                    ("transfer-encoding", "chunked"),
                ],
                Err(HeadError::Malformed("transfer-encoding")),
            ),
        ];
        for (method, code, pairs, want) in cases {
            assert_eq!(
                &response_framing_fields(
                    method,
                    s(*code),
                    pairs.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes()))
                ),
                want,
                "{method} {code} {pairs:?}"
            );
        }
    }

    // --- writers ---

    fn request_parts(method: &str, uri: &str, pairs: &[(&str, &str)]) -> http::request::Parts {
        let (mut parts, ()) = http::Request::new(()).into_parts();
        parts.method = Method::from_bytes(method.as_bytes()).unwrap();
        parts.uri = uri.parse().unwrap();
        parts.headers = headers(pairs);
        parts
    }

    fn written_request(parts: &http::request::Parts, body_len: Option<u64>) -> String {
        let mut out = b"left alone|".to_vec();
        write_request_head(&mut out, parts, body_len);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn write_request_head_exact() {
        let pairs = [
            ("host", "example.com"),
            ("content-length", "99"),
            ("transfer-encoding", "chunked"),
            ("x-a", "1"),
            ("x-a", "2"),
        ];
        let parts = request_parts("POST", "/submit?x=1", &pairs);
        assert_eq!(
            written_request(&parts, Some(12345)),
            "left alone|POST /submit?x=1 HTTP/1.1\r\nhost: example.com\r\nx-a: 1\r\nx-a: 2\r\n\
             content-length: 12345\r\n\r\n"
        );
        let parts = request_parts("GET", "/", &[]);
        assert_eq!(
            written_request(&parts, None),
            "left alone|GET / HTTP/1.1\r\n\r\n"
        );
        assert_eq!(
            written_request(&parts, Some(0)),
            "left alone|GET / HTTP/1.1\r\ncontent-length: 0\r\n\r\n"
        );
        assert_eq!(
            written_request(&parts, Some(u64::MAX)),
            format!(
                "left alone|GET / HTTP/1.1\r\ncontent-length: {}\r\n\r\n",
                u64::MAX
            )
        );
    }

    #[test]
    fn write_request_head_targets() {
        let target = |method: &str, uri: &str| {
            let mut out = Vec::new();
            write_request_head(&mut out, &request_parts(method, uri, &[]), None);
            let line = String::from_utf8(out).unwrap();
            line.split(' ').nth(1).unwrap().to_string()
        };
        assert_eq!(target("GET", "http://example.com/a/b?c=d"), "/a/b?c=d");
        assert_eq!(target("GET", "http://example.com"), "/");
        assert_eq!(target("GET", "http://example.com?x=1"), "/?x=1");
        assert_eq!(target("CONNECT", "example.com:443"), "example.com:443");
        assert_eq!(target("CONNECT", "/nohost"), "/nohost");
        assert_eq!(target("OPTIONS", "*"), "*");
        assert_eq!(target("GET", "example.com:80"), "/");
    }

    fn written_response(
        code: u16,
        pairs: &[(&str, &str)],
        framing: Framing,
        keep_alive: bool,
    ) -> String {
        let (mut parts, ()) = http::Response::new(()).into_parts();
        parts.status = StatusCode::from_u16(code).unwrap();
        parts.headers = headers(pairs);
        let mut out = Vec::new();
        write_response_head(&mut out, &parts, framing, keep_alive);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn write_response_head_exact() {
        let pairs = [
            ("content-type", "text/plain"),
            ("connection", "keep-alive"),
            ("content-length", "5"),
            ("set-cookie", "a=1"),
            ("set-cookie", "b=2"),
        ];
        assert_eq!(
            written_response(200, &pairs, Framing::Length(5), true),
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: 5\r\n\
             set-cookie: a=1\r\nset-cookie: b=2\r\n\r\n"
        );
        let pairs = [
            ("transfer-encoding", "chunked"),
            ("content-length", "5"),
            ("x", "y"),
        ];
        assert_eq!(
            written_response(404, &pairs, Framing::Chunked, false),
            "HTTP/1.1 404 Not Found\r\nx: y\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(
            written_response(599, &[], Framing::Close, false),
            "HTTP/1.1 599 \r\nconnection: close\r\n\r\n"
        );
        // A HEAD / 304 answer keeps its content-length.
        assert_eq!(
            written_response(304, &[("content-length", "10")], Framing::None, true),
            "HTTP/1.1 304 Not Modified\r\ncontent-length: 10\r\n\r\n"
        );
    }

    #[test]
    fn lowercase_is_make_ascii_lowercase() {
        // Every byte value at every place in a word, and every length.
        for b in 0..=255u8 {
            for at in 0..8 {
                let mut word = [b'Q'; 8];
                word[at] = b;
                let mut want = word;
                want.make_ascii_lowercase();
                lowercase_ascii(&mut word);
                assert_eq!(word, want, "{b:#x} at {at}");
            }
        }
        let text = b"Content-TYPE: X-Forwarded-For@[`{\x80\xc1\xda\xff~Zz";
        for len in 0..=text.len() {
            let mut got = text[..len].to_vec();
            lowercase_ascii(&mut got);
            assert_eq!(got, text[..len].to_ascii_lowercase());
        }
    }

    /// A field is written `name: value\r\n`, name lower-cased, however it
    /// was laid out: copied whole or in pieces.
    #[test]
    fn fields_are_written_in_one_layout() {
        let head = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nX-A:b\r\nX-Long-Name:  v w \t\r\n\
                     Content-Length: 0\nETAG: \"x\"\r\nE:\r\n\r\n";
        let mut fields = Vec::new();
        parse_response_head(head, 1024, &mut fields)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        for f in &fields {
            put_field_lowercase(&mut out, head, f);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "server: nginx\r\nx-a: b\r\nx-long-name: v w\r\ncontent-length: 0\r\n\
             etag: \"x\"\r\ne: \r\n"
        );
    }

    // --- ChunkedScanner ---

    const SAMPLE: &[u8] =
        b"5;name=value;other\r\nhello\r\n1A \t;x\r\nabcdefghijklmnopqrstuvwxyz\r\n\
        0\r\nExpires: never\r\nX-Trailer: 1\r\n\r\n";

    #[test]
    fn chunked_whole_body() {
        for body in [
            &b"0\r\n\r\n"[..],
            b"3\r\nabc\r\n0\r\n\r\n",
            b"A\r\n0123456789\r\n000\r\n\r\n",
            SAMPLE,
        ] {
            let mut scanner = ChunkedScanner::new();
            assert_eq!(
                scanner.scan(body),
                Ok((body.len(), true)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert!(scanner.is_done());
            assert_eq!(scanner.scan(b"more"), Ok((0, true)));
        }
    }

    #[test]
    fn chunked_every_split_point() {
        for split in 0..=SAMPLE.len() {
            let mut scanner = ChunkedScanner::new();
            let (a, done_a) = scanner.scan(&SAMPLE[..split]).unwrap();
            assert_eq!((a, done_a), (split, split == SAMPLE.len()));
            let (b, done_b) = scanner.scan(&SAMPLE[split..]).unwrap();
            assert_eq!((a + b, done_b), (SAMPLE.len(), true), "split at {split}");
            assert_eq!(scanner.data_len(), 5 + 26, "split at {split}");
        }
        // And byte by byte: done exactly at the last byte.
        let mut scanner = ChunkedScanner::new();
        for (i, byte) in SAMPLE.iter().enumerate() {
            assert_eq!(scanner.scan(&[*byte]), Ok((1, i + 1 == SAMPLE.len())));
        }
        assert_eq!(scanner.data_len(), 5 + 26);
    }

    #[test]
    fn chunked_extra_bytes_not_counted() {
        let mut data = SAMPLE.to_vec();
        data.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.scan(&data), Ok((SAMPLE.len(), true)));
        // Ending inside a second slice.
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.scan(&data[..10]), Ok((10, false)));
        assert_eq!(scanner.scan(&data[10..]), Ok((SAMPLE.len() - 10, true)));
    }

    #[test]
    fn chunked_large_chunk_is_counted_down() {
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.scan(b"FFFFFFFFFFFF\r\n"), Ok((14, false)));
        let block = vec![b'x'; 1 << 16];
        for _ in 0..16 {
            assert_eq!(scanner.scan(&block), Ok((block.len(), false)));
        }
        assert_eq!(scanner.remaining, 0xFFFF_FFFF_FFFF - 16 * (1 << 16));
    }

    /// A chunked body framed again reads as the same data, split anywhere,
    /// with its trailer fields kept apart.
    #[test]
    fn rechunked_bodies_carry_the_same_data() {
        for split in 0..=SAMPLE.len() {
            let mut r = Rechunker::new();
            let mut out = Vec::new();
            let (a, _) = r.rechunk(&SAMPLE[..split], &mut out).unwrap();
            let (b, done) = r.rechunk(&SAMPLE[split..], &mut out).unwrap();
            assert_eq!((a + b, done), (SAMPLE.len(), true));
            let trailers = r.trailers().unwrap();
            assert_eq!(
                trailers,
                vec![(&b"Expires"[..], &b"never"[..]), (b"X-Trailer", b"1")]
            );
            write_last_chunk(&mut out, trailers.into_iter().skip(1));
            let mut check = ChunkedScanner::new();
            let mut data = Vec::new();
            let scanned = check.scan_data(&out, |r| data.extend_from_slice(&out[r]));
            assert_eq!(scanned, Ok((out.len(), true)), "{split}");
            assert_eq!(data, b"helloabcdefghijklmnopqrstuvwxyz");
            let text = String::from_utf8_lossy(&out);
            assert!(!text.contains("name=value"), "{text}");
            assert!(text.ends_with("0\r\nx-trailer: 1\r\n\r\n"), "{text}");
        }
        // Lines that are no fields are refused.
        for bad in [&b"0\r\nnocolon\r\n\r\n"[..], b"0\r\nX: a\r\n b\r\n\r\n"] {
            let mut r = Rechunker::new();
            let (_, done) = r.rechunk(bad, &mut Vec::new()).unwrap();
            assert!(done);
            assert!(r.trailers().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunked_errors() {
        let long_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE));
        let ok_ext = format!("1;{}\r\nx\r\n0\r\n\r\n", "e".repeat(MAX_SIZE_LINE - 2));
        let big_trailers = format!("0\r\nx: {}\r\n\r\n", "t".repeat(MAX_TRAILERS));
        let cases: &[(&[u8], &str)] = &[
            (b"x\r\n", "bad chunk size"),
            (b"\r\n", "bad chunk size"),
            (b" 5\r\n", "bad chunk size"),
            (b"0x5\r\n", "bad chunk size"),
            (b"5 5\r\n", "bad chunk size"),
            (b"-1\r\n", "bad chunk size"),
            (b"10000000000000000\r\n", "chunk size overflow"),
            (b"5\n", "bad chunk size"),
            (b"5\rx", "missing LF after chunk size"),
            (b"5;a\nb\r\n", "bare LF in chunk extension"),
            (b"3\r\nabcd", "missing CRLF after chunk data"),
            (b"3\r\nabc\rx", "missing CRLF after chunk data"),
            (b"3\r\nabc\n", "missing CRLF after chunk data"),
            (b"0\r\nx: 1\ny: 2\r\n\r\n", "bare LF in trailer"),
            (b"0\r\nx: 1\rn", "missing LF after trailer"),
            (b"0\r\n\rx", "missing LF at end of chunked body"),
            (b"0\r\n\n", "bare LF in trailer"),
            (long_ext.as_bytes(), "chunk size line too long"),
            // Whitespace only around `;` and `=`; extensions by the grammar.
            (b"2  \r\nok\r\n", "bad chunk size"),
            (b"2;a \r\n", "bad chunk extension"),
            (b"2;a=\x01b\r\n", "bad chunk extension"),
            (b"2;\r\n", "bad chunk extension"),
            (b"2;a=\"b\x7f\"\r\n", "bad chunk extension"),
            (b"2;a=b c\r\n", "bad chunk extension"),
            (b"0\r\nx: \x01\r\n\r\n", "control byte in trailer"),
            (big_trailers.as_bytes(), "trailers too large"),
        ];
        for (body, why) in cases {
            let mut scanner = ChunkedScanner::new();
            assert_eq!(
                scanner.scan(body),
                Err(ChunkError(why)),
                "{:?}",
                String::from_utf8_lossy(body)
            );
            assert_eq!(
                scanner.scan(b"0\r\n\r\n"),
                Err(ChunkError(why)),
                "errors stick"
            );
            assert!(!scanner.is_done());
        }
        // Extensions by the grammar are fine.
        for body in [
            &b"2;a\r\nok\r\n0\r\n\r\n"[..],
            b"2 ; a = b ; c\r\nok\r\n0\r\n\r\n",
            b"2;a=\"b \\\" c\"\r\nok\r\n0;z=\"\"\r\n\r\n",
        ] {
            let mut scanner = ChunkedScanner::new();
            assert_eq!(scanner.scan(body), Ok((body.len(), true)), "{body:?}");
        }
        // Just under the line limit is fine.
        let mut scanner = ChunkedScanner::new();
        assert_eq!(scanner.scan(ok_ext.as_bytes()), Ok((ok_ext.len(), true)));
    }

    // --- no panic on any input ---

    /// A head passed on in place is checked only by httparse, so what
    /// httparse accepts in a field must be what `http` accepts: every byte,
    /// in a name and in a value.
    #[test]
    fn httparse_and_http_accept_the_same_fields() {
        for b in 0..=255u8 {
            let name = [b'x', b, b'y'];
            let raw = [&b"GET / HTTP/1.1\r\n"[..], &name, b": v\r\n\r\n"].concat();
            let parsed = parse_request_head(&raw, 8192, &mut Vec::new());
            let by_http = HeaderName::from_bytes(&name).is_ok();
            // A colon ends the name ("x" with the value "y: v").
            if b != b':' {
                assert_eq!(matches!(parsed, Ok(Some(_))), by_http, "name byte {b:#04x}");
            }

            let value = [b'a', b, b'z'];
            let raw = [&b"GET / HTTP/1.1\r\nx: "[..], &value, b"\r\n\r\n"].concat();
            let parsed = parse_request_head(&raw, 8192, &mut Vec::new());
            let by_http = HeaderValue::from_bytes(&value).is_ok();
            // httparse ends a line at CR or LF; those are no value bytes.
            if b != b'\r' && b != b'\n' {
                assert_eq!(
                    matches!(parsed, Ok(Some(_))),
                    by_http,
                    "value byte {b:#04x}"
                );
            }
        }
    }

    /// A target [`plain_target`] passes on as it is would be parsed by
    /// `http` and written back by [`write_request_head`] byte for byte.
    #[test]
    fn plain_targets_are_written_back_unchanged() {
        let mut rng = SmallRng::seed_from_u64(0x7a26e7);
        let mut plain = 0;
        for _ in 0..20_000 {
            let len = rng.random_range(1..12);
            let mut target: Vec<u8> = (0..len).map(|_| rng.random_range(0x20..0x80)).collect();
            if rng.random_bool(0.8) {
                target[0] = b'/';
            }
            if !plain_target(&target) {
                continue;
            }
            plain += 1;
            let uri = Uri::try_from(&target[..]).expect("http takes a plain target");
            let (mut parts, ()) = http::Request::new(()).into_parts();
            parts.uri = uri;
            let mut out = Vec::new();
            write_request_head(&mut out, &parts, None);
            let line = String::from_utf8_lossy(&target).into_owned();
            let written = &out[4..4 + target.len()];
            assert_eq!(written, &target[..], "{line}");
        }
        assert!(plain > 1000, "{plain} plain targets");
        assert!(!plain_target(b"*"));
        assert!(!plain_target(b"http://h/p"));
        assert!(!plain_target(b"/p#frag"));
        assert!(!plain_target(b"/p?\x80"));
    }

    /// A valid message, or a mutation of one, or noise.
    fn random_input(rng: &mut SmallRng, samples: &[&[u8]]) -> Vec<u8> {
        const ALPHABET: &[u8] = b"\r\n :;,0123456789aAfFzZ\t/*?%\x00\x7f\x80\xff";
        let mut data = samples[rng.random_range(0..samples.len())].to_vec();
        match rng.random_range(0..4) {
            0 => {
                data = (0..rng.random_range(0..200))
                    .map(|_| rng.random())
                    .collect()
            }
            _ => {
                for _ in 0..rng.random_range(0..6) {
                    let byte = ALPHABET[rng.random_range(0..ALPHABET.len())];
                    let at = rng.random_range(0..=data.len());
                    match rng.random_range(0..3) {
                        0 if at < data.len() => data[at] = byte,
                        1 if at < data.len() => {
                            data.remove(at);
                        }
                        _ => data.insert(at, byte),
                    }
                }
            }
        }
        data
    }

    #[test]
    fn random_inputs_never_panic() {
        let requests: &[&[u8]] = &[
            b"GET /a?b HTTP/1.1\r\nHost: h\r\nContent-Length: 5, 5\r\n\r\nhello",
            b"POST http://x.y/z HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
            b"CONNECT a.b:443 HTTP/1.0\r\n\r\n",
            b"OPTIONS * HTTP/1.1\r\nX: \x80\r\n\r\n",
        ];
        let responses: &[&[u8]] = &[
            b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc",
            b"HTTP/1.0 304 Not Modified\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
            b"HTTP/1.1 101 Switching\r\nConnection: upgrade\r\n\r\n",
        ];
        let bodies: &[&[u8]] = &[SAMPLE, b"0\r\n\r\n", b"FFFFFFFFFFFFFFFF\r\n"];
        let methods = [Method::GET, Method::HEAD, Method::CONNECT];
        let mut rng = SmallRng::seed_from_u64(0x5eed_c0de);
        let (mut parsed, mut done) = (0, 0);
        for _ in 0..3000 {
            let max_head = rng.random_range(0..300);
            let input = random_input(&mut rng, requests);
            let mut fields = Vec::new();
            if let Ok(Some(head)) = parse_request_head(&input, max_head, &mut fields) {
                let _ = request_framing_fields(fields.iter().map(|f| f.field(&input)));
                let _ = plain_target(head.target(&input));
            }
            let mut buf = BytesMut::from(&input[..]);
            if let Ok(Some((parts, _))) = parse_request(&mut buf, max_head) {
                parsed += 1;
                write_request_head(&mut Vec::new(), &parts, Some(rng.random()));
            }

            let input = random_input(&mut rng, responses);
            let mut buf = BytesMut::from(&input[..]);
            if let Ok(Some(parts)) = parse_response(&mut buf, max_head) {
                parsed += 1;
                let method = &methods[rng.random_range(0..methods.len())];
                let fields: Vec<(&[u8], &[u8])> = parts
                    .headers
                    .iter()
                    .map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes()))
                    .collect();
                let framing = response_framing_fields(method, parts.status, fields.iter().copied())
                    .unwrap_or(Framing::Close);
                write_response_head(&mut Vec::new(), &parts, framing, rng.random());
            }

            // The scanner, fed in random pieces, never counts past the input.
            let input = random_input(&mut rng, bodies);
            let mut scanner = ChunkedScanner::new();
            let mut at = 0;
            while at < input.len() {
                let end = rng.random_range(at..=input.len());
                match scanner.scan(&input[at..end]) {
                    Ok((n, finished)) => {
                        assert!(n <= end - at);
                        assert_eq!(finished, scanner.is_done());
                        at += n;
                        if finished {
                            done += 1;
                            break;
                        }
                    }
                    Err(_) => break,
                }
            }
        }
        // The mutations still reach the success paths often enough to matter.
        assert!(parsed > 500 && done > 300, "parsed {parsed}, done {done}");
    }
}
