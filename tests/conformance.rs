//! The conformance corpus: hostile requests and responses from RFC 9112, 9110 and 9113, each sent through unstick to a recording backend, on the fast path and through hyper; what the backend got (nothing, or one unambiguous message) and what the client got are checked case by case.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use support::wire::{self, exchange, Got, Reply};
use unstick::app::App;
use unstick::testkit::scripted::{Received, Scripted, ScriptedBackend};
use unstick::testkit::test_config;

type Check = Result<(), String>;

/// What a case must lead to.
#[derive(Clone, Copy)]
enum Want {
    /// Refused before any backend saw it: one of these statuses, and the
    /// connection closed.
    Refused(&'static [u16]),
    /// As `Refused`, or closed with no answer (the client was still sending
    /// when unstick closed, which may reset the answer away).
    RefusedOrClosed(u16),
    /// Forwarded: the backend got one message `check` accepts, and the
    /// client the backend's answer.
    Forwarded(fn(&Received) -> Check),
    /// Refused (400), or forwarded as one clean message: the RFCs let a
    /// recipient accept it.
    Tolerated,
    /// The backend's response is refused before its head: a 502, nothing
    /// of the response passed on.
    BadGateway,
    /// The client gets an answer `check` accepts.
    Answered(fn(&Reply) -> Check),
    /// A response broken in its body: a 502 if nothing went out yet, else
    /// the client's connection closes mid-message.
    Cut,
}

/// One case of the corpus.
struct Case {
    name: String,
    /// The request, as the client sends it.
    request: Vec<u8>,
    /// The backend's answer, as it writes it (None: a plain 200).
    response: Option<Vec<u8>>,
    method: Method,
    want: Want,
}

const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn req(name: impl Into<String>, request: impl AsRef<[u8]>, want: Want) -> Case {
    Case {
        name: name.into(),
        request: request.as_ref().to_vec(),
        response: None,
        method: Method::GET,
        want,
    }
}

/// A case for a response: the backend answers `GET /r/N` with `response`.
fn res(name: impl Into<String>, response: impl AsRef<[u8]>, want: Want) -> Case {
    Case {
        name: name.into(),
        request: Vec::new(),
        response: Some(response.as_ref().to_vec()),
        method: Method::GET,
        want,
    }
}

/// `GET /` with these header lines (each ending in CRLF) after `Host: t`.
fn get_with(fields: &str) -> String {
    format!("GET / HTTP/1.1\r\nHost: t\r\n{fields}\r\n")
}

/// A POST with these framing fields and body bytes.
fn post(fields: &str, body: &str) -> String {
    format!("POST /p HTTP/1.1\r\nHost: t\r\n{fields}\r\n{body}")
}

fn chunked(body: &str) -> String {
    post("Transfer-Encoding: chunked\r\n", body)
}

// --- what a forwarded message must say ---------------------------------

/// Every field of a received head, names lower-cased.
fn fields(r: &Received) -> Vec<(String, String)> {
    r.head
        .split("\r\n")
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.to_ascii_lowercase(), v.trim().to_owned()))
        .collect()
}

fn all(r: &Received, name: &str) -> Vec<String> {
    fields(r)
        .into_iter()
        .filter(|(n, _)| n == name)
        .map(|(_, v)| v)
        .collect()
}

fn target(r: &Received) -> &str {
    r.head.split(' ').nth(1).unwrap_or("")
}

fn ensure(ok: bool, what: impl FnOnce() -> String) -> Check {
    if ok {
        Ok(())
    } else {
        Err(what())
    }
}

fn host_is(r: &Received, host: &str) -> Check {
    let hosts = all(r, "host");
    ensure(hosts == [host], || {
        format!("Host {hosts:?}, wanted {host:?}")
    })
}

fn target_is(r: &Received, want: &str) -> Check {
    ensure(target(r) == want, || {
        format!("target {:?}, wanted {want:?}", target(r))
    })
}

fn absent(r: &Received, name: &str) -> Check {
    ensure(all(r, name).is_empty(), || {
        format!("`{name}` was passed on")
    })
}

fn body_is(r: &Received, want: &[u8]) -> Check {
    let body = decoded(r);
    ensure(body == want, || {
        format!(
            "body {:?}, wanted {:?}",
            String::from_utf8_lossy(&body),
            String::from_utf8_lossy(want)
        )
    })
}

/// A received body with its chunked framing taken off.
fn decoded(r: &Received) -> Vec<u8> {
    if all(r, "transfer-encoding").is_empty() {
        return r.body.to_vec();
    }
    let mut scanner = unstick::http1::ChunkedScanner::new();
    let mut data = Vec::new();
    let _ = scanner.scan_data(&r.body, |range| data.extend_from_slice(&r.body[range]));
    data
}

/// What every message a backend gets must be: HTTP/1.1, one valid Host,
/// no hop-by-hop field (but an upgrade's), no name with `_`.
fn clean(r: &Received) -> Check {
    let line = r.head.split("\r\n").next().unwrap_or("");
    ensure(line.ends_with(" HTTP/1.1"), || {
        format!("request line {line:?}")
    })?;
    let hosts = all(r, "host");
    ensure(hosts.len() == 1, || format!("Host fields {hosts:?}"))?;
    for (name, value) in fields(r) {
        let hop = [
            "keep-alive",
            "proxy-connection",
            "http2-settings",
            "proxy-authorization",
        ];
        ensure(!hop.contains(&name.as_str()), || {
            format!("hop-by-hop `{name}` passed on")
        })?;
        ensure(!name.contains('_'), || format!("`{name}` passed on"))?;
        let allowed = match name.as_str() {
            "connection" => value.eq_ignore_ascii_case("upgrade"),
            "te" => value == "trailers",
            _ => true,
        };
        ensure(allowed, || format!("`{name}: {value}` passed on"))?;
    }
    Ok(())
}

// --- the corpus: requests -------------------------------------------------

fn host_and_target() -> Vec<Case> {
    use Want::*;
    vec![
        req(
            "no Host (HTTP/1.1)",
            "GET / HTTP/1.1\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "no Host (HTTP/1.0)",
            "GET / HTTP/1.0\r\n\r\n",
            Forwarded(|r| target_is(r, "/")),
        ),
        req(
            "two Host, same",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "two Host, different",
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "two Host (HTTP/1.0)",
            "GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "empty Host",
            "GET / HTTP/1.1\r\nHost:\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host list",
            "GET / HTTP/1.1\r\nHost: a, b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host list, no space",
            "GET / HTTP/1.1\r\nHost: a,b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host with userinfo",
            "GET / HTTP/1.1\r\nHost: user@a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host with a path",
            "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host with a query",
            "GET / HTTP/1.1\r\nHost: a?b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host port not a number",
            "GET / HTTP/1.1\r\nHost: a:80x\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host port too long",
            "GET / HTTP/1.1\r\nHost: a:123456\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host with a space",
            "GET / HTTP/1.1\r\nHost: a b\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host IPv6 unclosed",
            "GET / HTTP/1.1\r\nHost: [::1\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "Host IPv6",
            "GET / HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n",
            Forwarded(|r| host_is(r, "[::1]:8080")),
        ),
        req(
            "Host with a port",
            "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n",
            Forwarded(|r| host_is(r, "a.example:8080")),
        ),
        req(
            "Host, final dot",
            "GET / HTTP/1.1\r\nHost: a.example.\r\n\r\n",
            Forwarded(|r| host_is(r, "a.example.")),
        ),
        req(
            "Host, percent-encoded",
            "GET / HTTP/1.1\r\nHost: a%41\r\n\r\n",
            Forwarded(|r| host_is(r, "a%41")),
        ),
        req(
            "absolute-form: its authority replaces Host",
            "GET http://other.example/x?y HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| host_is(r, "other.example").and(target_is(r, "/x?y"))),
        ),
        req(
            "absolute-form, https, a port",
            "GET https://other.example:8443/x HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| host_is(r, "other.example:8443").and(target_is(r, "/x"))),
        ),
        req(
            "absolute-form, no path",
            "GET http://other.example HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| host_is(r, "other.example").and(target_is(r, "/"))),
        ),
        req(
            "absolute-form (HTTP/1.0), no Host",
            "GET http://other.example/x HTTP/1.0\r\n\r\n",
            Forwarded(|r| host_is(r, "other.example")),
        ),
        req(
            "absolute-form, no Host",
            "GET http://other.example/x HTTP/1.1\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "absolute-form with userinfo",
            "GET http://u:p@other.example/x HTTP/1.1\r\nHost: other.example\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "absolute-form, ftp",
            "GET ftp://other.example/x HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "absolute-form, no authority",
            "GET http:///x HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "absolute-form, Host with userinfo",
            "GET http://other.example/x HTTP/1.1\r\nHost: u@a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "authority-form, GET",
            "GET other.example:80 HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "CONNECT",
            "CONNECT other.example:443 HTTP/1.1\r\nHost: other.example:443\r\n\r\n",
            Refused(&[501]),
        ),
        req(
            "CONNECT, origin-form",
            "CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400, 501]),
        ),
        req(
            "OPTIONS *",
            "OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| target_is(r, "*")),
        ),
        req(
            "GET *",
            "GET * HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "a fragment is dropped",
            "GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| target_is(r, "/a")),
        ),
        req(
            "percent-encoding kept",
            "GET /a%20b?c=%2F HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| target_is(r, "/a%20b?c=%2F")),
        ),
        req(
            "query kept",
            "GET /a?b=c&d HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| target_is(r, "/a?b=c&d")),
        ),
        req(
            "target with a space",
            "GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "target with NUL",
            "GET /a\0b HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "target with a control byte",
            "GET /a\x01b HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "target with a high byte",
            &b"GET /a\xffb HTTP/1.1\r\nHost: a\r\n\r\n"[..],
            Refused(&[400]),
        ),
        req(
            "target of 60,000 bytes",
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(60_000)),
            Forwarded(|r| ensure(target(r).len() == 60_001, || "target changed".into())),
        ),
        req(
            "request line as long as the head limit",
            format!("GET /{}", "a".repeat((64 << 10) - 5)),
            Refused(&[414]),
        ),
        req(
            "request line of 1 MB",
            format!("GET /{} HTTP/1.1\r\nHost: a\r\n\r\n", "a".repeat(1 << 20)),
            RefusedOrClosed(414),
        ),
    ]
}

fn request_line() -> Vec<Case> {
    use Want::*;
    vec![
        req(
            "method in lower case",
            "get / HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| ensure(r.head.starts_with("get / "), || "method changed".into())),
        ),
        req(
            "unknown method",
            "PURGE /x HTTP/1.1\r\nHost: a\r\n\r\n",
            Forwarded(|r| ensure(r.head.starts_with("PURGE /x "), || "method changed".into())),
        ),
        req(
            "method not a token",
            "GE(T / HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "HTTP/1.2",
            "GET / HTTP/1.2\r\nHost: a\r\n\r\n",
            Refused(&[400, 505]),
        ),
        req(
            "HTTP/2.0 in a request line",
            "GET / HTTP/2.0\r\nHost: a\r\n\r\n",
            Refused(&[400, 505]),
        ),
        req(
            "version in lower case",
            "GET / http/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req("no version (HTTP/0.9)", "GET /\r\n\r\n", Refused(&[400])),
        req(
            "two spaces",
            "GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "tab for a space",
            "GET\t/ HTTP/1.1\r\nHost: a\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "bare CR line ends",
            "GET / HTTP/1.1\rHost: a\r\r",
            RefusedOrClosed(400),
        ),
        req(
            "bare LF line ends",
            "GET / HTTP/1.1\nHost: a\n\n",
            Forwarded(|r| {
                ensure(r.head.ends_with("\r\n\r\n"), || {
                    "not written with CRLF".into()
                })
            }),
        ),
        req(
            "mixed line ends",
            "GET / HTTP/1.1\r\nHost: a\nX: 1\r\n\r\n",
            Forwarded(|r| host_is(r, "a")),
        ),
        req(
            "garbage",
            &b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n"[..],
            Refused(&[400]),
        ),
    ]
}

fn header_fields() -> Vec<Case> {
    use Want::*;
    let mut cases = vec![
        req("obs-fold", get_with("X: a\r\n b\r\n"), Refused(&[400])),
        req(
            "space before the colon",
            get_with("X : a\r\n"),
            Refused(&[400]),
        ),
        req(
            "line without a colon",
            get_with("nocolon\r\n"),
            Refused(&[400]),
        ),
        req("empty name", get_with(": a\r\n"), Refused(&[400])),
        req(
            "CR inside a value",
            get_with("X: a\rb\r\n"),
            Refused(&[400]),
        ),
        req(
            "tab inside a value",
            get_with("X: a\tb\r\n"),
            Forwarded(|r| ensure(all(r, "x") == ["a\tb"], || format!("{:?}", all(r, "x")))),
        ),
        req(
            "high bytes in a value",
            &[
                get_with("").trim_end().as_bytes(),
                b"\r\nX: \xe9t\xe9\r\n\r\n",
            ]
            .concat()[..],
            Forwarded(|r| {
                ensure(
                    r.head.as_bytes().windows(3).any(|w| w == "x: ".as_bytes()),
                    || "x dropped".into(),
                )
            }),
        ),
        req(
            "value with spaces around",
            get_with("X:   a b   \r\n"),
            Forwarded(|r| ensure(all(r, "x") == ["a b"], || format!("{:?}", all(r, "x")))),
        ),
        req(
            "name with `_` is dropped",
            get_with("X_Forwarded_For: 1.2.3.4\r\nX-Ok: 1\r\n"),
            Forwarded(|r| {
                absent(r, "x_forwarded_for")
                    .and(ensure(all(r, "x-ok") == ["1"], || "x-ok lost".into()))
            }),
        ),
        req(
            "X-Forwarded-For is appended to",
            get_with("X-Forwarded-For: 10.0.0.1\r\n"),
            Forwarded(|r| {
                let xff = all(r, "x-forwarded-for");
                ensure(xff == ["10.0.0.1, 127.0.0.1"], || format!("{xff:?}"))
            }),
        ),
        req(
            "X-Forwarded-Host and -Proto are unstick's",
            get_with("X-Forwarded-Host: evil\r\nX-Forwarded-Proto: https\r\n"),
            Forwarded(|r| {
                ensure(
                    all(r, "x-forwarded-host") == ["t"] && all(r, "x-forwarded-proto") == ["http"],
                    || r.head.clone(),
                )
            }),
        ),
        req(
            "Connection-named fields are dropped",
            get_with("Connection: x-secret\r\nX-Secret: 1\r\n"),
            Forwarded(|r| absent(r, "x-secret")),
        ),
        req(
            "Keep-Alive and Proxy-Connection are dropped",
            get_with("Keep-Alive: 5\r\nProxy-Connection: keep-alive\r\n"),
            Forwarded(clean),
        ),
        req(
            "TE other than trailers is dropped",
            get_with("TE: gzip\r\n"),
            Forwarded(|r| absent(r, "te")),
        ),
        req(
            "TE: trailers is kept",
            get_with("TE: trailers\r\n"),
            Forwarded(|r| {
                ensure(all(r, "te") == ["trailers"], || {
                    format!("{:?}", all(r, "te"))
                })
            }),
        ),
        req(
            "95 fields",
            get_with(
                &(1..95)
                    .map(|i| format!("X-{i}: {i}\r\n"))
                    .collect::<String>(),
            ),
            Forwarded(|r| ensure(all(r, "x-94") == ["94"], || "x-94 lost".into())),
        ),
        req(
            "101 fields",
            get_with(
                &(1..101)
                    .map(|i| format!("X-{i}: {i}\r\n"))
                    .collect::<String>(),
            ),
            Refused(&[431]),
        ),
        req(
            "a value of 60,000 bytes",
            get_with(&format!("X: {}\r\n", "v".repeat(60_000))),
            Forwarded(|r| ensure(all(r, "x")[0].len() == 60_000, || "value changed".into())),
        ),
        req(
            "a head of 70,000 bytes",
            get_with(&format!("X: {}\r\n", "v".repeat(70_000))),
            Refused(&[431]),
        ),
    ];
    // Every control byte but HTAB, in a value and in a name.
    for b in (0u8..0x20).chain([0x7f]).filter(|b| *b != b'\t') {
        let value = [
            &b"GET / HTTP/1.1\r\nHost: t\r\nX: a"[..],
            &[b],
            b"b\r\n\r\n",
        ]
        .concat();
        cases.push(req(
            format!("control byte {b:#04x} in a value"),
            value,
            Refused(&[400]),
        ));
    }
    for b in [
        0u8, 0x01, 0x7f, b' ', b'(', b')', b'"', b'/', b'[', b']', b'{', b'@', b'=', b'\\', 0x80,
        0xff,
    ] {
        let name = [
            &b"GET / HTTP/1.1\r\nHost: t\r\nX"[..],
            &[b],
            b"Y: a\r\n\r\n",
        ]
        .concat();
        cases.push(req(
            format!("byte {b:#04x} in a name"),
            name,
            Refused(&[400]),
        ));
    }
    cases
}

fn framing() -> Vec<Case> {
    use Want::*;
    let mut cases = vec![
        req(
            "Content-Length",
            post("Content-Length: 5\r\n", "hello"),
            Forwarded(|r| body_is(r, b"hello")),
        ),
        // RFC 9110 8.6 lets a recipient take a list of one length, or refuse
        // it (hyper does).
        req(
            "Content-Length: 5, 5",
            post("Content-Length: 5, 5\r\n", "hello"),
            Tolerated,
        ),
        req(
            "Content-Length twice, same",
            post("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"),
            Forwarded(|r| body_is(r, b"hello")),
        ),
        req(
            "Content-Length twice, different",
            post("Content-Length: 5\r\nContent-Length: 6\r\n", "hello!"),
            Refused(&[400]),
        ),
        req(
            "Content-Length: 5, 6",
            post("Content-Length: 5, 6\r\n", "hello!"),
            Refused(&[400]),
        ),
        // Refused on the fast path (as nginx does); hyper reads the body by
        // Transfer-Encoding and drops the length (RFC 9112 6.3, as HAProxy
        // does): either way one message reaches the backend, or none.
        req(
            "Content-Length and Transfer-Encoding",
            post(
                "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Tolerated,
        ),
        req(
            "Transfer-Encoding and Content-Length",
            post(
                "Transfer-Encoding: chunked\r\nContent-Length: 30\r\n",
                "0\r\n\r\n",
            ),
            Tolerated,
        ),
        req(
            "chunked",
            chunked("5\r\nhello\r\n0\r\n\r\n"),
            Forwarded(|r| body_is(r, b"hello")),
        ),
        req(
            "chunked, in capitals",
            post("Transfer-Encoding: Chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"),
            Forwarded(|r| body_is(r, b"hello")),
        ),
        req(
            "chunked, in pieces",
            chunked("2\r\nhe\r\n3\r\nllo\r\n0\r\n\r\n"),
            Forwarded(|r| body_is(r, b"hello")),
        ),
        req(
            "chunk extensions are dropped",
            chunked("5;a=b;c=\"d e\"\r\nhello\r\n0\r\n\r\n"),
            Forwarded(|r| {
                body_is(r, b"hello").and(ensure(
                    !String::from_utf8_lossy(&r.body).contains("a=b"),
                    || "extension passed on".into(),
                ))
            }),
        ),
        req(
            "chunked, a trailer",
            chunked("5\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"),
            Forwarded(|r| body_is(r, b"hello")),
        ),
        req(
            "chunked, trailers that frame",
            chunked("5\r\nhello\r\n0\r\nContent-Length: 50\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Forwarded(|r| {
                let body = String::from_utf8_lossy(&r.body).to_ascii_lowercase();
                ensure(
                    !body.contains("content-length") && !body.contains("transfer-encoding"),
                    || body.clone(),
                )
            }),
        ),
        req(
            "chunked twice",
            post("Transfer-Encoding: chunked, chunked\r\n", "0\r\n\r\n"),
            Refused(&[400]),
        ),
        req(
            "chunked in two fields",
            post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
            Refused(&[400]),
        ),
        req(
            "Transfer-Encoding: gzip",
            post("Transfer-Encoding: gzip\r\n", "x"),
            Refused(&[400, 501]),
        ),
        req(
            "Transfer-Encoding: gzip, chunked",
            post(
                "Transfer-Encoding: gzip, chunked\r\n",
                "1\r\nx\r\n0\r\n\r\n",
            ),
            Refused(&[400, 501]),
        ),
        req(
            "Transfer-Encoding: identity",
            post("Transfer-Encoding: identity\r\n", "x"),
            Refused(&[400, 501]),
        ),
        req(
            "empty Transfer-Encoding",
            post("Transfer-Encoding:\r\n", ""),
            Refused(&[400]),
        ),
        req(
            "Transfer-Encoding on HTTP/1.0",
            "POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
            Refused(&[400]),
        ),
        req(
            "chunk size not hex",
            chunked("zz\r\nhello\r\n0\r\n\r\n"),
            Refused(&[400]),
        ),
        req(
            "chunk size overflows",
            chunked("fffffffffffffffffff\r\nx\r\n0\r\n\r\n"),
            Refused(&[400]),
        ),
        req(
            "chunk size line, bare LF",
            chunked("5\nhello\r\n0\r\n\r\n"),
            Refused(&[400]),
        ),
        req(
            "chunk data without CRLF",
            chunked("5\r\nhelloX\r\n0\r\n\r\n"),
            Refused(&[400]),
        ),
        req(
            "chunk size, spaces after",
            chunked("5  \r\nhello\r\n0\r\n\r\n"),
            Tolerated,
        ),
        req(
            "chunk extension, a control byte",
            chunked("5;a=\x01\r\nhello\r\n0\r\n\r\n"),
            Tolerated,
        ),
        req(
            "last chunk, bare LF",
            chunked("5\r\nhello\r\n0\n\n"),
            Refused(&[400]),
        ),
        req(
            "a body larger than the replay buffer",
            chunked(&format!(
                "{:x}\r\n{}\r\n0\r\n\r\n",
                100_000,
                "b".repeat(100_000)
            )),
            Forwarded(|r| ensure(decoded(r).len() == 100_000, || "body changed".into())),
        ),
        req(
            "a body announced over max_request_body",
            post(&format!("Content-Length: {}\r\n", 2 << 20), ""),
            Refused(&[413]),
        ),
        req(
            "a chunked body over max_request_body",
            chunked(&format!(
                "{:x}\r\n{}",
                (1 << 20) + 10,
                "b".repeat((1 << 20) + 10)
            )),
            RefusedOrClosed(413),
        ),
    ];
    for bad in [
        "+5",
        "-5",
        "0x5",
        "5.0",
        "5e0",
        "",
        "five",
        "99999999999999999999999",
    ] {
        let request = post(&format!("Content-Length: {bad}\r\n"), "hello");
        cases.push(req(
            format!("Content-Length: {bad:?}"),
            request,
            Refused(&[400]),
        ));
    }
    cases
}

fn upgrades() -> Vec<Case> {
    use Want::*;
    vec![
        req(
            "Upgrade on HTTP/1.0 is ignored",
            "GET /ws HTTP/1.0\r\nHost: t\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
            Forwarded(|r| absent(r, "upgrade").and(clean(r))),
        ),
        req(
            "Upgrade: h2c is removed",
            get_with("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
            Forwarded(|r| absent(r, "upgrade").and(absent(r, "http2-settings")).and(absent(r, "connection"))),
        ),
        req(
            "Upgrade: h2c without Connection",
            get_with("Upgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n"),
            Forwarded(|r| absent(r, "upgrade").and(absent(r, "http2-settings"))),
        ),
        req(
            "Upgrade without Connection: upgrade",
            get_with("Upgrade: websocket\r\n"),
            Forwarded(|r| absent(r, "upgrade")),
        ),
        req(
            "Upgrade: h2c among others",
            get_with("Connection: upgrade\r\nUpgrade: h2c, websocket\r\n"),
            Forwarded(|r| ensure(all(r, "upgrade") == ["websocket"], || format!("{:?}", all(r, "upgrade")))),
        ),
    ]
}

// --- the corpus: responses ------------------------------------------------

fn response_framing() -> Vec<Case> {
    use Want::*;
    let chunked =
        |body: &str| format!("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{body}");
    let mut cases = vec![
        res("Content-Length", OK, Answered(|r| text_is(r, "ok"))),
        res("Content-Length twice, same", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok", Answered(|r| text_is(r, "ok"))),
        res("Content-Length twice, different", "HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nok", BadGateway),
        res(
            "Transfer-Encoding wins over Content-Length",
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 50\r\n\r\n2\r\nok\r\n0\r\n\r\n",
            Answered(|r| text_is(r, "ok").and(ensure(r.header("content-length").is_none(), || "both framings".into()))),
        ),
        res("chunked twice", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
        res("chunked in two fields", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", BadGateway),
        res("Transfer-Encoding: gzip", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nxx", BadGateway),
        res("Transfer-Encoding: gzip, chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n2\r\nxx\r\n0\r\n\r\n", BadGateway),
        res("chunked, framed again", chunked("1\r\no\r\n1\r\nk\r\n0\r\n\r\n"), Answered(|r| text_is(r, "ok"))),
        res("chunk extensions are dropped", chunked("2;a=b;c=\"d e\"\r\nok\r\n0\r\n\r\n"), Answered(|r| text_is(r, "ok"))),
        res("chunk size, spaces after", chunked("2  \r\nok\r\n0\r\n\r\n"), BadGateway),
        res("chunk extension, a control byte", chunked("2;a=\x01b\r\nok\r\n0\r\n\r\n"), BadGateway),
        res("chunk extension, spaces at the end", chunked("2;a=b \r\nok\r\n0\r\n\r\n"), BadGateway),
        res("chunk size not hex", chunked("zz\r\nok\r\n0\r\n\r\n"), BadGateway),
        res("chunk size overflows", chunked("fffffffffffffffffff\r\nok\r\n0\r\n\r\n"), BadGateway),
        res("chunk size line, bare LF", chunked("2\nok\r\n0\r\n\r\n"), BadGateway),
        res("chunk data without CRLF", chunked("2\r\nokX\r\n0\r\n\r\n"), BadGateway),
        res("trailer with a control byte", chunked("2\r\nok\r\n0\r\nX: \x01\r\n\r\n"), BadGateway),
        res("trailer, obs-fold", chunked("2\r\nok\r\n0\r\nX: a\r\n b\r\n\r\n"), Cut),
        res("trailer without a colon", chunked("2\r\nok\r\n0\r\nnocolon\r\n\r\n"), Cut),
        res("HTTP/1.0, until close", "HTTP/1.0 200 OK\r\n\r\nokok", Answered(|r| text_is(r, "okok"))),
        res("a body cut short", "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nok", Cut),
        res("a chunked body cut short", chunked("a\r\nok"), Cut),
        res("204 with a body", "HTTP/1.1 204 No Content\r\nContent-Length: 2\r\n\r\nok", Answered(|r| status_is(r, 204))),
        res("Content-Length: -1", "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\nok", BadGateway),
        res("Content-Length: +2", "HTTP/1.1 200 OK\r\nContent-Length: +2\r\n\r\nok", BadGateway),
        res("Content-Length: 2, 3", "HTTP/1.1 200 OK\r\nContent-Length: 2, 3\r\n\r\nok", BadGateway),
    ];
    let trailers = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, Content-Length, Set-Cookie, Transfer-Encoding\r\n\r\n\
                    2\r\nok\r\n0\r\nX-Sum: 1\r\nContent-Length: 5\r\nSet-Cookie: a=1\r\nTransfer-Encoding: chunked\r\n\r\n";
    cases.push(res(
        "trailers, not asked for",
        trailers,
        Answered(|r| {
            ensure(
                r.trailers.is_empty() && r.header("trailer").is_none(),
                || format!("{:?}", r.trailers),
            )
        }),
    ));
    let mut asked = res(
        "trailers, asked for: only those allowed",
        trailers,
        Answered(|r| {
            let names: Vec<&str> = r.trailers.iter().map(|(n, _)| n.as_str()).collect();
            ensure(names == ["x-sum"], || format!("{names:?}"))
                .and(ensure(r.header("trailer") == Some("x-sum"), || {
                    format!("{:?}", r.header("trailer"))
                }))
        }),
    );
    asked.request = b"GET /r/N HTTP/1.1\r\nHost: t\r\nTE: trailers\r\n\r\n".to_vec();
    cases.push(asked);
    cases
}

fn response_heads() -> Vec<Case> {
    use Want::*;
    vec![
        res("status without a reason", "HTTP/1.1 200\r\nContent-Length: 2\r\n\r\nok", Answered(|r| text_is(r, "ok"))),
        res("status 599", "HTTP/1.1 599 Weird\r\nContent-Length: 2\r\n\r\nok", Answered(|r| status_is(r, 599))),
        res("status of two digits", "HTTP/1.1 20 OK\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("status of four digits", "HTTP/1.1 1000 OK\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("status glued to its reason", "HTTP/1.1 200OK\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("HTTP/2.0 status line", "HTTP/2.0 200 OK\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("HTTP/1.2 status line", "HTTP/1.2 200 OK\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("garbage", "HELLO\r\n\r\n", BadGateway),
        res("obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("line without a colon", "HTTP/1.1 200 OK\r\nnocolon\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("space before the colon", "HTTP/1.1 200 OK\r\nX-A : a\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("a control byte in a value", "HTTP/1.1 200 OK\r\nX-A: a\x01b\r\nContent-Length: 2\r\n\r\nok", BadGateway),
        res("bare LF line ends", "HTTP/1.1 200 OK\nContent-Length: 2\n\nok", Answered(|r| text_is(r, "ok"))),
        res("101 not asked for", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\nConnection: Upgrade\r\n\r\n", BadGateway),
        res("100 Continue first", "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Answered(|r| text_is(r, "ok"))),
        res("103 Early Hints first", "HTTP/1.1 103 Early Hints\r\nLink: </s>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", Answered(|r| text_is(r, "ok"))),
        res(
            "hop-by-hop fields are dropped",
            "HTTP/1.1 200 OK\r\nConnection: x-secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: x\r\nUpgrade: h2c\r\nContent-Length: 2\r\n\r\nok",
            Answered(|r| {
                let kept: Vec<&str> = r.headers.iter().map(|(n, _)| n.as_str()).collect();
                let hop = ["x-secret", "keep-alive", "proxy-connection", "upgrade", "connection"];
                ensure(!kept.iter().any(|n| hop.contains(n)), || format!("{kept:?}"))
            }),
        ),
        res("a head of 70,000 bytes", format!("HTTP/1.1 200 OK\r\nX: {}\r\nContent-Length: 2\r\n\r\nok", "v".repeat(70_000)), BadGateway),
        res(
            "101 fields",
            format!("HTTP/1.1 200 OK\r\n{}Content-Length: 2\r\n\r\nok", (0..101).map(|i| format!("X-{i}: 1\r\n")).collect::<String>()),
            BadGateway,
        ),
    ]
}

fn text_is(r: &Reply, want: &str) -> Check {
    ensure(r.status == 200 && r.text() == want, || {
        format!("{} {:?}", r.status, r.text())
    })
}

fn status_is(r: &Reply, want: u16) -> Check {
    let bodiless = want != 204 || r.body.is_empty();
    ensure(r.status == want && bodiless, || {
        format!("{} {:?}", r.status, r.text())
    })
}

fn corpus() -> Vec<Case> {
    let mut cases = Vec::new();
    for group in [
        host_and_target(),
        request_line(),
        header_fields(),
        framing(),
        upgrades(),
    ] {
        cases.extend(group);
    }
    for (i, mut case) in response_framing()
        .into_iter()
        .chain(response_heads())
        .enumerate()
    {
        case.name = format!("response: {}", case.name);
        let line = if case.request.is_empty() {
            format!("GET /r/{i} HTTP/1.1\r\nHost: t\r\n\r\n")
        } else {
            String::from_utf8_lossy(&case.request).replace("/r/N", &format!("/r/{i}"))
        };
        case.request = line.into_bytes();
        cases.push(case);
    }
    for case in &mut cases {
        if case.request.starts_with(b"POST") {
            case.method = Method::POST;
        }
    }
    cases
}

// --- running it -------------------------------------------------------------

/// Judges one case: what the client got, and the messages the backend got
/// for it.
fn judge(case: &Case, got: &Got, received: &[Received]) -> Check {
    for r in received {
        clean(r).map_err(|e| format!("the backend got an unclean message ({e}): {:?}", r.head))?;
    }
    let first = got.replies.first();
    let status = first.map(|r| r.status);
    let nothing_sent = || {
        ensure(received.is_empty(), || {
            format!("the backend got {:?}", received[0].head)
        })
    };
    match case.want {
        Want::Refused(statuses) => {
            ensure(status.is_some_and(|s| statuses.contains(&s)), || {
                format!("answered {status:?}, wanted {statuses:?}")
            })?;
            ensure(got.closed, || "the connection stayed open".into())?;
            nothing_sent()
        }
        Want::RefusedOrClosed(want) => {
            ensure(status.is_none_or(|s| s == want) && got.closed, || {
                format!("answered {status:?}")
            })?;
            nothing_sent()
        }
        Want::Forwarded(check) => {
            ensure(received.len() == 1, || {
                format!("the backend got {} messages", received.len())
            })?;
            ensure(status == Some(200), || format!("answered {status:?}"))?;
            check(&received[0])
        }
        Want::Tolerated => match status {
            Some(400) => nothing_sent(),
            Some(200) => ensure(received.len() == 1, || {
                format!("{} messages", received.len())
            }),
            other => Err(format!("answered {other:?}")),
        },
        Want::BadGateway => ensure(status == Some(502), || {
            format!("answered {status:?}: {:?}", first.map(Reply::text))
        }),
        Want::Answered(check) => check(first.ok_or("no answer")?),
        Want::Cut => match status {
            Some(502) => Ok(()),
            _ => ensure(got.replies.is_empty() && got.closed, || {
                format!("answered {status:?}, connection closed: {}", got.closed)
            }),
        },
    }
}

/// Runs every case against unstick (`fast_path` on or off) in front of a
/// recording backend; returns the failures.
async fn run(fast_path: bool) -> (usize, Vec<String>) {
    let cases = Arc::new(corpus());
    let answers = cases.clone();
    let backend = ScriptedBackend::start(move |r| {
        let answer = r
            .path()
            .strip_prefix("/r/")
            .and_then(|i| i.parse::<usize>().ok())
            .and_then(|i| answers.iter().filter(|c| c.response.is_some()).nth(i))
            .and_then(|c| c.response.clone())
            .unwrap_or_else(|| OK.to_vec());
        // A response case's connection ends after its answer (some are
        // close-delimited or cut short).
        let s = Scripted::bytes(answer);
        if r.path().starts_with("/r/") {
            s.then_close()
        } else {
            s
        }
    })
    .await;
    let mut config = test_config(&[backend.addr]);
    config.http1_fast_path = fast_path;
    config.limits.max_request_body = 1 << 20;
    // The backend's malformed answers are its failures, counted as such;
    // ejecting it would turn the cases after them into 503s.
    config.health.eject_after_failures = 1_000_000;
    let app = App::start(config).await.unwrap();
    let mut failures = Vec::new();
    for case in cases.iter() {
        let before = backend.received().len();
        let got = exchange(app.proxy_addr, &case.request, &case.method, 1).await;
        let received = settled(&backend, before).await;
        if let Err(e) = judge(case, &got, &received) {
            failures.push(format!("{}: {e}", case.name));
        }
    }
    let stray = backend.stray();
    if !stray.is_empty() {
        failures.push(format!(
            "the backend got bytes that make no request: {stray:?}"
        ));
    }
    (cases.len(), failures)
}

/// The messages the backend got since `before`, once the exchange is over
/// (a message is recorded before the backend answers it, so there is no
/// race for forwarded ones).
async fn settled(backend: &ScriptedBackend, before: usize) -> Vec<Received> {
    tokio::time::sleep(Duration::from_millis(1)).await;
    backend.received()[before..].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_on_the_fast_path() {
    let (count, failures) = run(true).await;
    assert!(count > 200, "{count} cases");
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_corpus_through_hyper() {
    let (count, failures) = run(false).await;
    assert!(
        failures.is_empty(),
        "{} of {count} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// HTTP/1.0 keep-alive is honoured: two requests, two answers, one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http10_keep_alive_is_honoured() {
    let backend = ScriptedBackend::start(|_| Scripted::bytes(OK)).await;
    for fast_path in [true, false] {
        let mut config = test_config(&[backend.addr]);
        config.http1_fast_path = fast_path;
        let app = App::start(config).await.unwrap();
        let one = "GET /a HTTP/1.0\r\nHost: t\r\nConnection: keep-alive\r\n\r\n";
        let mut c = wire::Wire::open(app.proxy_addr).await;
        c.send(one.as_bytes()).await;
        let first = c.read(&Method::GET, 1).await;
        assert_eq!(first.replies.len(), 1, "{first:?}");
        assert!(!first.closed);
        let keep = first.replies[0].header("connection");
        assert!(
            keep.is_some_and(|k| k.eq_ignore_ascii_case("keep-alive")),
            "{first:?}"
        );
        c.send(one.as_bytes()).await;
        let second = c.read(&Method::GET, 1).await;
        assert_eq!(
            second.replies.first().map(|r| r.status),
            Some(200),
            "{second:?}"
        );
        // Without keep-alive, HTTP/1.0 closes.
        let mut c = wire::Wire::open(app.proxy_addr).await;
        c.send(b"GET /a HTTP/1.0\r\nHost: t\r\n\r\n").await;
        let got = c.read(&Method::GET, 1).await;
        assert_eq!(got.replies.len(), 1, "{got:?}");
        assert!(c.read(&Method::GET, 0).await.closed, "HTTP/1.0 closes");
    }
}

/// Bytes as a `Bytes`, for h2 bodies.
fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

/// HTTP/2 requests (RFC 9113 8.3.1): `:authority` wins, a `host` that says
/// otherwise is refused, names with `_` are dropped, CONNECT is refused;
/// trailers reach a client that asks for them, scrubbed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_requests_by_rfc_9113() {
    let trailers =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, Content-Length\r\n\r\n\
                    2\r\nok\r\n0\r\nX-Sum: 1\r\nContent-Length: 5\r\n\r\n";
    let backend = ScriptedBackend::start(move |r| match r.path() {
        "/trailers" => Scripted::bytes(trailers),
        _ => Scripted::bytes(OK),
    })
    .await;
    let app = App::start(test_config(&[backend.addr])).await.unwrap();
    let addr = app.proxy_addr;
    let cases: Vec<(&str, http::Request<()>, u16, Option<&str>)> = vec![
        (
            "authority, same host",
            h2("http://a.example/x", &[("host", "a.example")]),
            200,
            Some("a.example"),
        ),
        (
            "authority, other host",
            h2("http://a.example/x", &[("host", "b.example")]),
            400,
            None,
        ),
        (
            "authority with userinfo",
            h2("http://u@a.example/x", &[]),
            400,
            None,
        ),
        (
            "authority, a list as host",
            h2("http://a.example/x", &[("host", "a.example, b")]),
            400,
            None,
        ),
        (
            "underscore name",
            h2("http://a.example/x", &[("x_a", "1")]),
            200,
            Some("a.example"),
        ),
    ];
    for (name, request, status, host) in cases {
        let before = backend.received().len();
        let (got, _) = h2_send(addr, request, None).await;
        assert_eq!(got, status, "{name}");
        let received = &backend.received()[before..];
        match host {
            Some(h) => {
                assert_eq!(received.len(), 1, "{name}");
                assert_eq!(host_is(&received[0], h), Ok(()), "{name}");
                assert_eq!(clean(&received[0]), Ok(()), "{name}");
            }
            None => assert!(received.is_empty(), "{name}: {received:?}"),
        }
    }
    // Trailers: scrubbed when asked for, none when not.
    let ask = h2("http://a.example/trailers", &[("te", "trailers")]);
    let (_, trailers) = h2_send(addr, ask, None).await;
    let names: Vec<String> = trailers
        .iter()
        .flat_map(|t| t.keys().map(|k| k.to_string()))
        .collect();
    assert_eq!(names, ["x-sum"]);
    let (_, trailers) = h2_send(addr, h2("http://a.example/trailers", &[]), Some(b(""))).await;
    assert!(trailers.is_none(), "{trailers:?}");
}

fn h2(uri: &str, headers: &[(&str, &str)]) -> http::Request<()> {
    let mut r = http::Request::get(uri);
    for (n, v) in headers {
        r = r.header(*n, *v);
    }
    r.body(()).expect("a request")
}

/// Sends one HTTP/2 request; its status and trailers.
async fn h2_send(
    addr: SocketAddr,
    request: http::Request<()>,
    body: Option<Bytes>,
) -> (u16, Option<http::HeaderMap>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (send, conn) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(conn);
    let mut send = send.ready().await.unwrap();
    let (response, mut stream) = send.send_request(request, body.is_none()).unwrap();
    if let Some(b) = body {
        stream.send_data(b, true).unwrap();
    }
    let response = response.await.unwrap();
    let status = response.status().as_u16();
    let mut body = response.into_body();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    (status, body.trailers().await.unwrap())
}
