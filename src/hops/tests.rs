//! The session watch driven through its request and response hooks, one rule at a time.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderMap, HeaderValue, Method};
use prometheus::Registry;

use super::*;
use crate::config::SessionWatch;
use crate::metrics::Metrics;

const SID_A: &str = "0123456789abcdef0123456789abcdef";
const SID_B: &str = "fedcba9876543210fedcba9876543210";

fn config() -> SessionWatch {
    SessionWatch {
        enabled: true,
        entries: 1000,
        names: Vec::new(),
        ignore: Vec::new(),
        recent: Duration::from_secs(600),
        warn_share: 0.05,
        warn_window: Duration::from_secs(60),
        warn_min_hops: 20,
    }
}

fn watch(config: SessionWatch) -> (Watch, Metrics) {
    let metrics = Metrics::register(&Registry::new());
    let families = Families {
        hops: metrics.session_hops.clone(),
        same_instance: metrics.session_same_instance.clone(),
    };
    (Watch::new(&config, families), metrics)
}

fn backend(name: &str) -> Arc<str> {
    Arc::from(name)
}

/// A response: status, then `(name, value)` headers.
fn respond(w: &Watch, carried: Option<&Carried>, to: &str, status: u16, headers: &[(&str, &str)]) {
    let mut map = HeaderMap::new();
    for (n, v) in headers {
        map.append(
            http::HeaderName::from_bytes(n.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    w.on_response(carried, &backend(to), status, &map, |n| n == b"SERVERID");
}

/// Logs `sid` in on backend `a` (its Set-Cookie issues `value`).
fn issue(w: &Watch, a: &str, value: &str) {
    let set = format!("sid={value}; Path=/; HttpOnly");
    respond(w, None, a, 200, &[("set-cookie", &set)]);
}

/// A request carrying `cookie`, answered by `to` with `status` and headers.
fn request(
    w: &Watch,
    method: Method,
    path: &str,
    cookie: &str,
    to: &str,
    status: u16,
    headers: &[(&str, &str)],
) -> bool {
    let carried = w.on_request(cookie.as_bytes(), &method, path.as_bytes());
    respond(w, carried.as_deref(), to, status, headers);
    carried.is_some()
}

fn get(w: &Watch, path: &str, value: &str, to: &str, status: u16) -> bool {
    request(
        w,
        Method::GET,
        path,
        &format!("sid={value}"),
        to,
        status,
        &[],
    )
}

fn sid(w: &Watch) -> CookieReport {
    let r = w.report();
    r.cookies
        .into_iter()
        .find(|c| c.name == "sid")
        .expect("sid watched")
}

#[test]
fn session_cookies_are_learned_from_set_cookie_and_others_are_not() {
    let mut c = config();
    c.names = vec!["tok".into()];
    c.ignore = vec!["csrf*".into()];
    let (w, _) = watch(c);
    respond(
        &w,
        None,
        "a:1",
        200,
        &[
            ("set-cookie", &format!("sid={SID_A}; HttpOnly")),
            ("set-cookie", "theme=dark"),
            ("set-cookie", &format!("SERVERID={SID_A}")),
            ("set-cookie", &format!("csrftoken={SID_A}")),
            ("set-cookie", "tok=short"),
            ("set-cookie", &format!("gone=; Max-Age=0; x={SID_A}")),
        ],
    );
    let names: Vec<(String, String)> = w
        .report()
        .cookies
        .into_iter()
        .map(|c| (c.name, c.source))
        .collect();
    assert_eq!(
        names,
        vec![
            ("tok".to_owned(), "configured".to_owned()),
            ("sid".to_owned(), "learned".to_owned())
        ]
    );
    // A configured name is watched whatever its value looks like.
    assert!(request(&w, Method::GET, "/", "tok=short", "b:1", 200, &[]));
}

#[test]
fn nothing_is_carried_without_a_known_value() {
    let (w, _) = watch(config());
    // No name known yet: the header is not even read.
    assert!(w.on_request(b"sid=x", &Method::GET, b"/").is_none());
    issue(&w, "a:1", SID_A);
    assert!(w
        .on_request(b"other=1; theme=dark", &Method::GET, b"/")
        .is_none());
    assert!(w
        .on_request(format!("sid={SID_B}").as_bytes(), &Method::GET, b"/")
        .is_none());
    assert_eq!(sid(&w).untracked, 1);
    assert!(w
        .on_request(
            format!("a=1; sid=\"{SID_A}\"").as_bytes(),
            &Method::GET,
            b"/"
        )
        .is_some());
}

#[test]
fn a_watched_name_is_found_only_as_a_whole_pair_name() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    // The name's bytes inside another name or inside a value are no hit
    // (the search that passes headers over only narrows the pairs read).
    for cookie in [
        format!("xsid={SID_A}; sidx={SID_A}"),
        format!("q=sid; t=sid={SID_A}"),
        format!("sid; {SID_A}"),
    ] {
        assert!(
            w.on_request(cookie.as_bytes(), &Method::GET, b"/")
                .is_none(),
            "{cookie}"
        );
    }
    assert_eq!(sid(&w).untracked, 0);
    // Spaces around the name and the value are trimmed, as RFC 6265 reads them.
    let spaced = format!("theme=dark;  sid = {SID_A} ;lang=en");
    let carried = w.on_request(spaced.as_bytes(), &Method::GET, b"/");
    assert_eq!(carried.map(|c| c.hits().len()), Some(1));
}

#[test]
fn the_report_never_holds_a_cookie_value() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    get(&w, "/whoami", SID_A, "b:1", 401);
    let json = serde_json::to_string(&w.report()).unwrap();
    assert!(!json.contains(SID_A), "{json}");
    assert!(json.contains("/whoami"), "{json}");
}

#[test]
fn same_instance_requests_and_kept_hops_are_counted() {
    let (w, metrics) = watch(config());
    issue(&w, "a:1", SID_A);
    assert!(get(&w, "/whoami", SID_A, "a:1", 200));
    assert!(get(&w, "/whoami", SID_A, "b:1", 200));
    assert!(get(&w, "/cart", SID_A, "c:1", 200));
    let r = sid(&w);
    assert_eq!((r.same_instance, r.hops, r.kept, r.broken), (1, 2, 2, 0));
    assert_eq!(r.broken_share, Some(0.0));
    let text = metrics.encode();
    assert!(
        text.contains(r#"unstick_session_hops_total{cookie="sid",outcome="kept"} 2"#),
        "{text}"
    );
    assert!(
        text.contains(r#"unstick_session_same_instance_total{cookie="sid"} 1"#),
        "{text}"
    );
}

#[test]
fn a_401_from_another_instance_is_broken_with_an_example() {
    let (w, metrics) = watch(config());
    issue(&w, "a:1", SID_A);
    get(&w, "/whoami", SID_A, "b:1", 401);
    let r = sid(&w);
    assert_eq!((r.hops, r.broken, r.broken_by["denied"]), (1, 1, 1));
    let e = &r.examples[0];
    assert_eq!(
        (&*e.method, &*e.path, e.status, &*e.from, &*e.to, &*e.reason),
        ("GET", "/whoami", 401, "a:1", "b:1", "denied")
    );
    assert!(metrics
        .encode()
        .contains(r#"unstick_session_hops_total{cookie="sid",outcome="broken"} 1"#));
}

#[test]
fn a_redirect_to_a_login_page_is_broken_unless_the_request_was_a_login() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    let to_login = [("location", "https://sso.example/login?next=/cart")];
    request(
        &w,
        Method::GET,
        "/cart",
        &format!("sid={SID_A}"),
        "b:1",
        302,
        &to_login,
    );
    let elsewhere = [("location", "/cart/1")];
    request(
        &w,
        Method::POST,
        "/cart",
        &format!("sid={SID_A}"),
        "b:1",
        303,
        &elsewhere,
    );
    let r = sid(&w);
    assert_eq!((r.broken_by["login_redirect"], r.kept), (1, 1));
}

#[test]
fn a_logout_is_not_a_break_and_its_session_is_not_judged_after() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    let clear = [("set-cookie", "sid=; Path=/; Max-Age=0")];
    request(
        &w,
        Method::POST,
        "/logout",
        &format!("sid={SID_A}"),
        "b:1",
        200,
        &clear,
    );
    // A client that keeps the old cookie gets 401s: the session ended.
    get(&w, "/whoami", SID_A, "c:1", 401);
    let r = sid(&w);
    assert_eq!((r.kept, r.broken, r.unjudged.ended), (1, 0, 1));
}

#[test]
fn a_first_login_and_a_login_over_an_old_session_are_not_breaks() {
    let (w, _) = watch(config());
    // First login: no session cookie sent, so no hop at all.
    let carried = w.on_request(b"theme=dark", &Method::POST, b"/login");
    assert!(carried.is_none());
    issue(&w, "a:1", SID_A);
    // Logging in again on another instance rotates the id: a login.
    let new = format!("sid={SID_B}; Path=/");
    request(
        &w,
        Method::POST,
        "/users/sign_in",
        &format!("sid={SID_A}"),
        "b:1",
        302,
        &[("set-cookie", &new)],
    );
    let r = sid(&w);
    assert_eq!((r.hops, r.kept, r.broken), (1, 1, 0));
    assert_eq!(r.issued, 2);
}

#[test]
fn an_expired_session_is_not_a_break() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    issue(&w, "a:1", SID_B);
    // The issuer itself no longer knows SID_A: it expired there ...
    get(&w, "/whoami", SID_A, "a:1", 401);
    // ... so another instance's 401 is no break.
    get(&w, "/whoami", SID_A, "b:1", 401);
    // A session idle for longer than `recent` is not judged either.
    w.advance(601);
    get(&w, "/whoami", SID_B, "b:1", 401);
    let r = sid(&w);
    assert_eq!((r.broken, r.unjudged.ended, r.unjudged.stale), (0, 1, 1));
    // One answered since (by anyone, without a sign) is recent again.
    get(&w, "/whoami", SID_B, "a:1", 200);
    get(&w, "/whoami", SID_B, "b:1", 401);
    assert_eq!(sid(&w).broken, 1);
}

#[test]
fn server_errors_are_not_judged() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    get(&w, "/whoami", SID_A, "b:1", 502);
    let r = sid(&w);
    assert_eq!(
        (r.hops, r.kept, r.broken, r.unjudged.server_error),
        (1, 0, 0, 1)
    );
    assert_eq!(r.broken_share, None);
}

#[test]
fn a_reissued_value_breaks_only_a_name_its_issuer_keeps_stable() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    let new = [("set-cookie", "sid=11112222333344445555666677778888")];
    // Stability unknown yet: a re-issue elsewhere is no sign.
    request(
        &w,
        Method::GET,
        "/",
        &format!("sid={SID_A}"),
        "b:1",
        200,
        &new,
    );
    assert_eq!(sid(&w).kept, 1);
    issue(&w, "a:1", SID_B);
    for _ in 0..judge::STABLE_AFTER {
        get(&w, "/", SID_B, "a:1", 200);
    }
    assert_eq!(sid(&w).reissue, "stable");
    request(
        &w,
        Method::GET,
        "/",
        &format!("sid={SID_B}"),
        "b:1",
        200,
        &new,
    );
    let r = sid(&w);
    assert_eq!((r.broken, r.broken_by["reissued"]), (1, 1));
}

#[test]
fn a_name_its_issuer_rotates_is_never_broken_by_a_reissue() {
    let (w, _) = watch(config());
    let mut value = 1000u128;
    let mut next = || {
        value += 1;
        format!("{value:032x}")
    };
    let v = next();
    issue(&w, "a:1", &v);
    let mut current = v;
    // Signed client-side sessions: every answer carries a new value.
    for i in 0..40 {
        let to = if i % 2 == 0 { "a:1" } else { "b:1" };
        let fresh = next();
        let set = format!("sid={fresh}");
        request(
            &w,
            Method::GET,
            "/",
            &format!("sid={current}"),
            to,
            200,
            &[("set-cookie", &set)],
        );
        current = fresh;
    }
    let r = sid(&w);
    assert_eq!(r.reissue, "rotating");
    assert_eq!(r.broken, 0);
    assert!(r.same_instance > 0 && r.kept > 0);
}

#[test]
fn a_403_the_issuer_gives_on_the_same_route_is_the_routes_answer() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    get(&w, "/admin/42", SID_A, "a:1", 403);
    get(&w, "/admin/7", SID_A, "b:1", 403);
    assert_eq!(sid(&w).broken, 0);
    get(&w, "/reports", SID_A, "b:1", 403);
    assert_eq!(sid(&w).broken, 1);
}

#[test]
fn disabled_watches_nothing() {
    let mut c = config();
    c.enabled = false;
    let (w, _) = watch(c);
    issue(&w, "a:1", SID_A);
    assert!(w.report().cookies.is_empty());
    c = config();
    w.configure(&c);
    issue(&w, "a:1", SID_A);
    assert!(get(&w, "/", SID_A, "b:1", 200));
}

#[test]
fn ignoring_a_learned_name_on_reload_stops_watching_it() {
    let (w, _) = watch(config());
    issue(&w, "a:1", SID_A);
    let mut c = config();
    c.ignore = vec!["sid".into()];
    w.configure(&c);
    assert!(!get(&w, "/", SID_A, "b:1", 200));
    assert!(sid(&w).ignored);
}

#[test]
fn the_map_keeps_its_bound() {
    let mut c = config();
    c.entries = 64;
    let (w, _) = watch(c);
    for i in 0..10_000u128 {
        issue(&w, "a:1", &format!("{i:032x}"));
    }
    let r = w.report();
    assert!(r.sessions.tracked <= 64, "{:?}", r.sessions);
    assert_eq!(r.sessions.capacity, 64);
    assert_eq!(r.sessions.evicted, 10_000 - r.sessions.tracked);
}
