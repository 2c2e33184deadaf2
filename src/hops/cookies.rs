//! Cookie and path reading for the session watch: `Cookie` pairs, `Set-Cookie` values, and the words that make a path a login or a logout.

use std::time::SystemTime;

/// The value of the `Cookie` pair whose name is `cookie[at..at + len]`, if
/// those bytes are a whole pair's name: only whitespace between them and
/// the `;` (or the start) before, only whitespace between them and an `=`
/// after. The value runs to the next `;`, trimmed, as RFC 6265 5.4 reads
/// pairs (a pair without `=` has no name).
pub fn value_at(cookie: &[u8], at: usize, len: usize) -> Option<&[u8]> {
    let before = &cookie[..at];
    if let Some(k) = before.iter().rev().position(|b| !b.is_ascii_whitespace()) {
        if before[before.len() - 1 - k] != b';' {
            return None;
        }
    }
    let rest = cookie[at + len..].trim_ascii_start().strip_prefix(b"=")?;
    let end = memchr::memchr(b';', rest).unwrap_or(rest.len());
    Some(rest[..end].trim_ascii())
}

/// A value without surrounding double quotes (RFC 6265 allows them).
pub fn unquote(value: &[u8]) -> &[u8] {
    match value {
        [b'"', inner @ .., b'"'] => inner,
        _ => value,
    }
}

/// What one `Set-Cookie` value does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetCookie<'a> {
    pub name: &'a [u8],
    /// The value, without surrounding quotes.
    pub value: &'a [u8],
    /// The cookie is removed: an empty value, `Max-Age` of zero or less, or
    /// (without `Max-Age`) an `Expires` date in the past (RFC 6265 5.2).
    pub cleared: bool,
}

/// Reads a `Set-Cookie` value; `None` if it has no `name=` (RFC 6265 5.2
/// ignores it) or an empty name.
pub fn set_cookie(header: &[u8], now: SystemTime) -> Option<SetCookie<'_>> {
    let mut parts = header.split(|b| *b == b';');
    let pair = parts.next()?;
    let eq = pair.iter().position(|b| *b == b'=')?;
    let name = pair[..eq].trim_ascii();
    if name.is_empty() {
        return None;
    }
    let value = unquote(pair[eq + 1..].trim_ascii());
    let (mut max_age, mut expired) = (None, false);
    for attribute in parts {
        let (key, val) = match attribute.iter().position(|b| *b == b'=') {
            Some(i) => (attribute[..i].trim_ascii(), attribute[i + 1..].trim_ascii()),
            None => (attribute.trim_ascii(), &b""[..]),
        };
        if key.eq_ignore_ascii_case(b"max-age") {
            max_age = parse_max_age(val).or(max_age);
        } else if key.eq_ignore_ascii_case(b"expires") {
            expired = std::str::from_utf8(val)
                .ok()
                .and_then(|d| httpdate::parse_http_date(d).ok())
                .is_some_and(|t| t <= now);
        }
    }
    let cleared = value.is_empty() || max_age.map_or(expired, |age| age <= 0);
    Some(SetCookie {
        name,
        value,
        cleared,
    })
}

/// A `Max-Age` value: an optional `-` and digits (others are ignored, as
/// RFC 6265 5.2.2 says).
fn parse_max_age(v: &[u8]) -> Option<i64> {
    let (negative, digits) = match v.strip_prefix(b"-") {
        Some(d) => (true, d),
        None => (false, v),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = std::str::from_utf8(digits)
        .ok()?
        .parse::<i64>()
        .unwrap_or(i64::MAX);
    Some(if negative { -n } else { n })
}

/// The path of a request target or a `Location`: the query and fragment
/// dropped, and for an absolute URL (`https://host/p`) its path.
pub fn path_of(target: &[u8]) -> &[u8] {
    let mut t = target;
    if let Some(i) = t.windows(3).position(|w| w == b"://") {
        let rest = &t[i + 3..];
        t = rest
            .iter()
            .position(|b| *b == b'/')
            .map_or(&b"/"[..], |j| &rest[j..]);
    } else if let Some(rest) = t.strip_prefix(b"//") {
        // A scheme-relative `Location`.
        t = rest
            .iter()
            .position(|b| *b == b'/')
            .map_or(&b"/"[..], |j| &rest[j..]);
    }
    let end = t.iter().position(|b| *b == b'?' || *b == b'#');
    &t[..end.unwrap_or(t.len())]
}

/// Words that make a path segment a login page or endpoint (`/login`,
/// `/users/sign_in`, `/auth/realms/x`, `/oauth2/authorize`, `/sso`...).
const LOGIN_CONTAINS: &[&[u8]] = &[b"login", b"signin", b"logon"];
const LOGIN_SEGMENTS: &[&[u8]] = &[
    b"auth",
    b"authorize",
    b"authenticate",
    b"authentication",
    b"sso",
    b"oauth",
    b"oauth2",
    b"saml",
    b"saml2",
    b"cas",
    b"openidconnect",
];
/// Words that make a path segment a logout.
const LOGOUT_CONTAINS: &[&[u8]] = &[b"logout", b"signout", b"logoff"];

/// What a request's path says it does to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathKind {
    /// A login (or an identity provider's step of one).
    Login,
    Logout,
    Other,
}

/// Reads a path (no query) for login or logout words, segment by segment:
/// a segment, lower-cased, without `-`, `_` and any `.extension`, that
/// contains `logout`, `signout` or `logoff` is a logout; one that contains
/// `login`, `signin` or `logon`, or is `auth`, `authorize`, `sso`, `oauth2`,
/// `saml`, `cas`... is a login. A logout word wins.
pub fn path_kind(path: &[u8]) -> PathKind {
    let mut kind = PathKind::Other;
    for segment in path.split(|b| *b == b'/') {
        let mut word = [0u8; 32];
        let Some(word) = squeeze(segment, &mut word) else {
            continue;
        };
        let contains = |w: &[u8]| word.windows(w.len()).any(|x| x == w);
        if LOGOUT_CONTAINS.iter().any(|w| contains(w)) {
            return PathKind::Logout;
        }
        if LOGIN_CONTAINS.iter().any(|w| contains(w)) || LOGIN_SEGMENTS.contains(&word) {
            kind = PathKind::Login;
        }
    }
    kind
}

/// A segment lower-cased without `-`, `_` and its `.extension`, in `buf`;
/// `None` if empty or longer than `buf` (no word above is that long).
fn squeeze<'b>(segment: &[u8], buf: &'b mut [u8; 32]) -> Option<&'b [u8]> {
    let stem = segment.split(|b| *b == b'.').next().unwrap_or(segment);
    let mut n = 0;
    for b in stem {
        if matches!(b, b'-' | b'_') {
            continue;
        }
        *buf.get_mut(n)? = b.to_ascii_lowercase();
        n += 1;
    }
    (n > 0).then_some(&buf[..n])
}

/// Calls `each` with a path's segments as a route: a segment with a digit
/// in it, or longer than 32 bytes, stands for an id and is given as `*`
/// (`/users/42/edit` and `/users/7/edit` are one route).
pub fn route(path: &[u8], mut each: impl FnMut(&[u8])) {
    for segment in path.split(|b| *b == b'/') {
        let id = segment.len() > 32 || segment.iter().any(u8::is_ascii_digit);
        each(if id { b"*" } else { segment });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_value_is_read_where_its_name_is_a_whole_pair_name() {
        let c = b"a=1; sid = xyz ;flag; b=; xsid=2; q=sid=3;sid";
        let at = |from: usize| from + c[from..].windows(3).position(|w| w == b"sid").unwrap();
        let value = |i: usize| value_at(c, i, 3);
        assert_eq!(value(at(0)), Some(&b"xyz"[..]));
        assert_eq!(value_at(c, 0, 1), Some(&b"1"[..]));
        assert_eq!(value_at(c, 22, 1), Some(&b""[..]), "b=");
        // Inside another name, inside a value, and without `=`: no pair.
        let xsid = at(at(0) + 1);
        assert_eq!(&c[xsid - 1..xsid], b"x");
        assert_eq!(value(xsid), None);
        let in_value = at(xsid + 1);
        assert_eq!(value(in_value), None);
        assert_eq!(value(c.len() - 3), None);
        assert_eq!(value_at(c, 16, 4), None, "flag");
    }

    #[test]
    fn set_cookie_reads_name_value_and_whether_it_clears() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let c = |h: &'static str| set_cookie(h.as_bytes(), now).unwrap();
        assert_eq!(c("sid=abc; Path=/; HttpOnly").value, b"abc");
        assert!(!c("sid=abc; Path=/; HttpOnly").cleared);
        assert_eq!(c("sid=\"q\"; Path=/").value, b"q");
        assert!(c("sid=; Path=/").cleared);
        assert!(c("sid=abc; Max-Age=0").cleared);
        assert!(c("sid=abc; max-age=-1").cleared);
        assert!(c("sid=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT").cleared);
        assert!(!c("sid=abc; Expires=Fri, 01 Jan 2100 00:00:00 GMT").cleared);
        // Max-Age wins over Expires; a bad Max-Age is ignored.
        assert!(!c("sid=abc; Expires=Thu, 01 Jan 1970 00:00:00 GMT; Max-Age=60").cleared);
        assert!(!c("sid=abc; Max-Age=soon").cleared);
        assert!(set_cookie(b"novalue", now).is_none());
        assert!(set_cookie(b"=v", now).is_none());
    }

    #[test]
    fn paths_of_targets_and_locations() {
        assert_eq!(path_of(b"/a/b?c=d#e"), b"/a/b");
        assert_eq!(path_of(b"https://idp.example/login?next=/x"), b"/login");
        assert_eq!(path_of(b"//idp.example/sso"), b"/sso");
        assert_eq!(path_of(b"http://host"), b"/");
    }

    #[test]
    fn login_and_logout_words() {
        use PathKind::*;
        for (path, kind) in [
            ("/login", Login),
            ("/users/sign_in", Login),
            ("/account/Log-In.php", Login),
            ("/adminlogin", Login),
            ("/realms/x/protocol/openid-connect/auth", Login),
            ("/oauth2/authorize", Login),
            ("/sso", Login),
            ("/logout", Logout),
            ("/users/sign_out", Logout),
            ("/auth/logout", Logout),
            ("/authors/12", Other),
            ("/whoami", Other),
            ("/blog/cassandra", Other),
            ("/", Other),
        ] {
            assert_eq!(path_kind(path.as_bytes()), kind, "{path}");
        }
    }

    #[test]
    fn routes_stand_ids_for_star() {
        let mut out = Vec::new();
        route(b"/users/42/edit/a1b2", |s| out.push(s.to_vec()));
        assert_eq!(
            out,
            vec![
                b"".to_vec(),
                b"users".to_vec(),
                b"*".to_vec(),
                b"edit".to_vec(),
                b"*".to_vec()
            ]
        );
    }
}
