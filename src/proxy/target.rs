//! A request's target, Host and transfer codings by RFC 9112 3.2-3.3 and 6.1 and RFC 9113 8.3.1: the one authority a backend is given, or why the request is refused before any backend sees it.
//!
//! unstick is a reverse proxy: it serves origin-form targets (`/path?q`),
//! `OPTIONS *`, and absolute-form (`http://host/path`, whose authority then
//! replaces `Host`); it refuses authority-form and `CONNECT` (it is no
//! forward proxy), a missing, repeated or malformed `Host`, userinfo
//! anywhere, and over HTTP/2 a `host` that contradicts `:authority`.

use http::header::{self, HeaderValue};
use http::{Method, Version};

use super::error::{Kind, ProxyError};
use crate::http1::Codings;

/// Checks an HTTP/1 request's target and `Host`, and gives an absolute-form
/// target's authority to `Host` (the target itself becomes origin-form
/// when the head is written for the backend).
pub fn check_h1(parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    refuse_connect(&parts.method)?;
    let uri = &parts.uri;
    if uri.scheme().is_some() {
        let scheme = uri.scheme_str().unwrap_or("");
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(bad("the request target's scheme is not http or https"));
        }
        let authority = uri.authority().map_or("", |a| a.as_str());
        if !valid_host(authority.as_bytes()) {
            return Err(bad("the request target's authority is not a valid host"));
        }
        // RFC 9112 3.2.2: the target's authority wins over `Host`, which
        // must still be there (one, and valid) in HTTP/1.1.
        one_host(parts, parts.version == Version::HTTP_11)?;
        let host = HeaderValue::from_str(authority).map_err(|_| bad("invalid authority"))?;
        parts.headers.insert(header::HOST, host);
        return Ok(());
    }
    if uri.authority().is_some() {
        return Err(bad("an authority-form target is only for CONNECT"));
    }
    if uri.path() == "*" && parts.method != Method::OPTIONS {
        return Err(bad("an asterisk-form target is only for OPTIONS"));
    }
    one_host(parts, parts.version == Version::HTTP_11)
}

/// Checks an HTTP/2 request: `:authority` (in the URI) is the target's
/// authority; a `host` field is allowed only if it says the same, and
/// without `:authority` exactly one valid `host` is needed.
pub fn check_h2(parts: &mut http::request::Parts) -> Result<(), ProxyError> {
    refuse_connect(&parts.method)?;
    let Some(authority) = parts.uri.authority() else {
        return one_host(parts, true);
    };
    if !valid_host(authority.as_str().as_bytes()) {
        return Err(bad("`:authority` is not a valid host"));
    }
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    let contradicts = hosts.any(|h| {
        !h.as_bytes()
            .eq_ignore_ascii_case(authority.as_str().as_bytes())
    });
    if contradicts {
        return Err(bad("`host` contradicts `:authority`"));
    }
    parts.headers.remove(header::HOST);
    Ok(())
}

/// Refuses a body in a transfer coding other than `chunked` (501, RFC 9112
/// 6.1: the coding could not be passed on, `Transfer-Encoding` being one
/// hop's), `chunked` twice, and `Transfer-Encoding` with `Content-Length`
/// (400: RFC 9112 6.3 lets a server refuse it, and a request framed two
/// ways is how requests are smuggled).
pub fn check_codings(headers: &http::HeaderMap) -> Result<(), ProxyError> {
    let values = headers.get_all(header::TRANSFER_ENCODING).iter();
    let codings = crate::http1::transfer_codings(values.map(HeaderValue::as_bytes));
    if codings != Codings::Absent && headers.contains_key(header::CONTENT_LENGTH) {
        return Err(bad("both Transfer-Encoding and Content-Length"));
    }
    match codings {
        Codings::Absent | Codings::Chunked => Ok(()),
        Codings::Broken => Err(bad("`Transfer-Encoding` applies chunked twice")),
        Codings::Other => Err(ProxyError::client(Kind::NotImplemented(
            "a transfer coding other than chunked".into(),
        ))),
    }
}

/// CONNECT asks for a tunnel to anywhere: not served.
fn refuse_connect(method: &Method) -> Result<(), ProxyError> {
    if method == Method::CONNECT {
        return Err(ProxyError::client(Kind::NotImplemented(
            "CONNECT: unstick is a reverse proxy, not a forward proxy".into(),
        )));
    }
    Ok(())
}

/// At most one `Host`, and one if `required`; a valid one.
fn one_host(parts: &http::request::Parts, required: bool) -> Result<(), ProxyError> {
    let mut hosts = parts.headers.get_all(header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (None, _) if required => Err(bad("no `Host` field")),
        (None, _) => Ok(()),
        (Some(_), Some(_)) => Err(bad("more than one `Host` field")),
        (Some(h), None) if !valid_host(h.as_bytes()) => {
            Err(bad("the `Host` field is not a valid host"))
        }
        (Some(_), None) => Ok(()),
    }
}

fn bad(why: &str) -> ProxyError {
    ProxyError::client(Kind::BadRequest(why.into()))
}

/// True for a valid `Host` value or target authority without userinfo:
/// `uri-host [":" port]` (RFC 9110 7.2), not empty. A host is an IP
/// literal in brackets, or a name of unreserved characters,
/// percent-encodings and sub-delimiters other than `,` (a `Host` that
/// reads as a list is refused); a port is at most five digits.
pub fn valid_host(v: &[u8]) -> bool {
    let (host, port) = match v.first() {
        Some(b'[') => match v.iter().position(|b| *b == b']') {
            Some(end) => (&v[..=end], &v[end + 1..]),
            None => return false,
        },
        _ => match v.iter().position(|b| *b == b':') {
            Some(colon) => (&v[..colon], &v[colon..]),
            None => (v, &[][..]),
        },
    };
    let port_ok = match port {
        [] => true,
        [b':', digits @ ..] => digits.len() <= 5 && digits.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    port_ok && !host.is_empty() && valid_host_name(host)
}

/// The host part of [`valid_host`].
fn valid_host_name(host: &[u8]) -> bool {
    if let [b'[', inner @ .., b']'] = host {
        return !inner.is_empty()
            && inner
                .iter()
                .all(|b| b.is_ascii_hexdigit() || matches!(b, b':' | b'.'));
    }
    let mut at = 0;
    while at < host.len() {
        match host[at] {
            b'%' => {
                let hex = host.get(at + 1..at + 3);
                if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                at += 3;
            }
            b if b.is_ascii_alphanumeric() => at += 1,
            b'-' | b'.' | b'_' | b'~' | b'!' | b'$' | b'&' | b'\'' | b'(' | b')' | b'*' | b'+'
            | b';' | b'=' => at += 1,
            _ => return false,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts() {
        for ok in [
            "a",
            "example.com",
            "example.com.",
            "a_b.example",
            "a%41",
            "a:80",
            "a:",
            "127.0.0.1:8080",
            "[::1]",
            "[::1]:443",
            "[2001:db8::7]",
            "xn--bcher-kva.example",
        ] {
            assert!(valid_host(ok.as_bytes()), "{ok}");
        }
        for bad in [
            "",
            ":80",
            "a b",
            "a, b",
            "a,b",
            "user@a",
            "a/b",
            "a?b",
            "a#b",
            "a:80x",
            "a:123456",
            "a:80:80",
            "[::1",
            "[]",
            "[::1]x",
            "[::g]",
            "a%4",
            "a%zz",
            "a\tb",
            "a\\b",
            "\u{e9}.example",
        ] {
            assert!(!valid_host(bad.as_bytes()), "{bad:?}");
        }
    }
}
