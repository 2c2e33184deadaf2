//! Unit tests for affinity cookie matching, scrubbing and tracking.

use super::*;
use prometheus::{Opts, Registry};

use crate::balancer::Balance;
use crate::upstream::Backend;

fn rules(policy: AffinityPolicy) -> Rules {
    Rules::new(policy, &[], &[])
}

fn strip() -> Rules {
    rules(AffinityPolicy::Strip)
}

fn counter() -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new("t", "t"), &["direction", "name"]).unwrap();
    Registry::new().register(Box::new(c.clone())).unwrap();
    c
}

fn count(c: &IntCounterVec, direction: &str, name: &str) -> u64 {
    c.with_label_values(&[direction, name]).get()
}

fn cookies(h: &HeaderMap) -> Vec<Vec<u8>> {
    h.get_all(COOKIE)
        .iter()
        .map(|v| v.as_bytes().to_vec())
        .collect()
}

fn set_cookies(h: &HeaderMap) -> Vec<String> {
    h.get_all(SET_COOKIE)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn with(name: http::HeaderName, values: &[&[u8]]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for v in values {
        h.append(name.clone(), HeaderValue::from_bytes(v).unwrap());
    }
    h.insert("x-other", HeaderValue::from_static("kept"));
    h
}

/// Scrubs request cookies with `r`, returning the labels reported.
fn scrub_req(r: &Rules, h: &mut HeaderMap, remove: bool) -> Vec<String> {
    let mut found = Vec::new();
    scrub_cookies(r, h, remove, |label, _| found.push(label.to_owned()));
    found
}

fn scrub_resp(r: &Rules, h: &mut HeaderMap, remove: bool) -> Vec<(String, String)> {
    let mut found = Vec::new();
    scrub_set_cookies(r, h, remove, |label, name| {
        found.push((label.to_owned(), String::from_utf8_lossy(name).into_owned()))
    });
    found
}

#[test]
fn every_built_in_name_matches_itself() {
    let r = strip();
    for (name, origin) in BUILT_IN {
        assert!(!origin.is_empty());
        let concrete = name.replace('*', "pool_web");
        assert_eq!(r.matches(concrete.as_bytes()), Some(*name), "{name}");
    }
}

#[test]
fn names_are_case_sensitive_and_exact() {
    let r = strip();
    for other in [
        "serverid",
        "ServerId",
        "SERVERID2",
        "XSERVERID",
        "awsalb",
        "AWSALBX",
        "bigipserverx",
        "nsc_x",
        "NSC",
        "LB",
        "lbx",
        "sid",
        "",
        "_traefik_backend",
    ] {
        assert_eq!(r.matches(other.as_bytes()), None, "{other}");
    }
    assert_eq!(r.matches(b"BIGipServer"), Some("BIGipServer*"));
    assert_eq!(r.matches(b"NSC_tmaa"), Some("NSC_*"));
}

#[test]
fn configured_names_patterns_and_exemptions() {
    let r = Rules::new(
        AffinityPolicy::Strip,
        &["route".into(), "myapp_*".into(), "SERVERID".into()],
        &[
            "lb".into(),
            "BIGipServerkeep".into(),
            "NSC_ok*".into(),
            "myapp_public".into(),
        ],
    );
    assert_eq!(r.matches(b"route"), Some("route"));
    assert_eq!(r.matches(b"myapp_node"), Some("myapp_*"));
    assert_eq!(r.matches(b"myapp_public"), None);
    assert_eq!(r.matches(b"SERVERID"), Some("SERVERID"));
    assert_eq!(r.matches(b"lb"), None, "exempt built-in");
    assert_eq!(
        r.matches(b"BIGipServerkeep"),
        None,
        "exempt under a pattern"
    );
    assert_eq!(r.matches(b"BIGipServerother"), Some("BIGipServer*"));
    assert_eq!(r.matches(b"NSC_ok_1"), None, "exempt prefix");
    assert_eq!(r.matches(b"NSC_no"), Some("NSC_*"));
    // A duplicate of a built-in is listed once.
    assert_eq!(r.exact.iter().filter(|n| &***n == "SERVERID").count(), 1);
}

#[test]
fn from_config_uses_policy_names_and_exempt() {
    let mut c = crate::config::Config::defaults().affinity;
    assert_eq!(c.policy, AffinityPolicy::Strip, "default policy");
    c.policy = AffinityPolicy::Log;
    c.names = vec!["route".into()];
    c.exempt = vec!["lb".into()];
    let r = Rules::from_config(&c);
    assert_eq!(r.policy(), AffinityPolicy::Log);
    assert_eq!(r.matches(b"route"), Some("route"));
    assert_eq!(r.matches(b"lb"), None);
}

#[test]
fn cookie_pairs_with_odd_spacing_keep_the_others_byte_for_byte() {
    let r = strip();
    let mut h = with(COOKIE, &[b"sid=1;SERVERID=b2 ;  theme=dark;\tAWSALB=x"]);
    let found = scrub_req(&r, &mut h, true);
    assert_eq!(found, ["SERVERID", "AWSALB"]);
    assert_eq!(cookies(&h), [b"sid=1;  theme=dark".to_vec()]);
    assert_eq!(h["x-other"], "kept");

    let mut h = with(COOKIE, &[b"SERVERID=b2; sid=1; theme=dark"]);
    scrub_req(&r, &mut h, true);
    assert_eq!(cookies(&h), [b"sid=1; theme=dark".to_vec()]);

    let mut h = with(COOKIE, &[b"sid=1; SERVERID=b2; theme=dark"]);
    scrub_req(&r, &mut h, true);
    assert_eq!(cookies(&h), [b"sid=1; theme=dark".to_vec()]);

    // Spaces around `=` still name the cookie.
    let mut h = with(COOKIE, &[b"a=1; SERVERID = b2"]);
    assert_eq!(scrub_req(&r, &mut h, true), ["SERVERID"]);
    assert_eq!(cookies(&h), [b"a=1".to_vec()]);
}

#[test]
fn nothing_matching_leaves_the_header_alone() {
    let r = strip();
    let original: &[u8] = b"  sid=1;;theme=dark ; serverid=lower; x=\"quoted\"  ";
    let mut h = with(COOKIE, &[original]);
    assert!(scrub_req(&r, &mut h, true).is_empty());
    assert_eq!(cookies(&h), [original.to_vec()]);
}

#[test]
fn several_cookie_headers_are_scrubbed_one_by_one() {
    let r = strip();
    let mut h = with(
        COOKIE,
        &[b"sid=1", b"SERVERID=b2", b"AWSALB=x; theme=dark", b"z=9"],
    );
    assert_eq!(scrub_req(&r, &mut h, true), ["SERVERID", "AWSALB"]);
    assert_eq!(
        cookies(&h),
        [b"sid=1".to_vec(), b"theme=dark".to_vec(), b"z=9".to_vec()]
    );
}

#[test]
fn a_cookie_header_left_empty_is_removed() {
    let r = strip();
    let mut h = with(COOKIE, &[b"SERVERID=b2; AWSALB=x;  ", b"BIGipServerpool=1"]);
    assert_eq!(
        scrub_req(&r, &mut h, true),
        ["SERVERID", "AWSALB", "BIGipServer*"]
    );
    assert!(!h.contains_key(COOKIE));
    assert_eq!(h["x-other"], "kept");
}

#[test]
fn non_utf8_or_malformed_cookie_headers_pass_untouched() {
    let r = strip();
    for raw in [
        &b"SERVERID=b2; name=\xff\xfe"[..],
        b"\xe9SERVERID=b2",
        b"SERVERID",
        b"=b2; ;;",
        b";",
    ] {
        let mut h = with(COOKIE, &[raw, b"sid=1"]);
        assert!(scrub_req(&r, &mut h, true).is_empty(), "{raw:?}");
        assert_eq!(cookies(&h), [raw.to_vec(), b"sid=1".to_vec()], "{raw:?}");
    }
    // A bad header next to a good one: the good one is scrubbed, the bad one kept.
    let mut h = with(COOKIE, &[b"SERVERID=1; v=\xff", b"SERVERID=2; sid=1"]);
    assert_eq!(scrub_req(&r, &mut h, true), ["SERVERID"]);
    assert_eq!(
        cookies(&h),
        [b"SERVERID=1; v=\xff".to_vec(), b"sid=1".to_vec()]
    );
}

#[test]
fn report_only_leaves_cookies_in_place() {
    let r = strip();
    let mut h = with(COOKIE, &[b"sid=1; SERVERID=b2"]);
    assert_eq!(scrub_req(&r, &mut h, false), ["SERVERID"]);
    assert_eq!(cookies(&h), [b"sid=1; SERVERID=b2".to_vec()]);
}

#[test]
fn several_set_cookies_with_attributes() {
    let r = strip();
    let mut h = with(
        SET_COOKIE,
        &[
            b"a=1; Path=/",
            b"SERVERID=b1; Path=/; HttpOnly",
            b"sid=1; Secure",
            b"AWSALB=x; Expires=Wed, 21 Oct 2015 07:28:00 GMT; Path=/",
            b"BIGipServerpool_web=1677787402.36895.0000",
            b"z=2",
        ],
    );
    let found = scrub_resp(&r, &mut h, true);
    assert_eq!(
        found,
        [
            ("SERVERID".to_owned(), "SERVERID".to_owned()),
            ("AWSALB".into(), "AWSALB".into()),
            ("BIGipServer*".into(), "BIGipServerpool_web".into()),
        ]
    );
    assert_eq!(set_cookies(&h), ["a=1; Path=/", "sid=1; Secure", "z=2"]);
    assert_eq!(h["x-other"], "kept");
}

#[test]
fn set_cookie_names_are_read_as_rfc_6265_says() {
    let r = strip();
    // Spaces around the name; the name is what precedes the first `=`.
    let mut h = with(
        SET_COOKIE,
        &[b" SERVERID = b1", b"serverid=b1", b"x=SERVERID=1"],
    );
    assert_eq!(scrub_resp(&r, &mut h, true).len(), 1);
    assert_eq!(set_cookies(&h), ["serverid=b1", "x=SERVERID=1"]);
    // No `=` before the first `;`: not a cookie; left alone.
    let mut h = with(SET_COOKIE, &[b"SERVERID; Path=/", b"SERVERID"]);
    assert!(scrub_resp(&r, &mut h, true).is_empty());
    assert_eq!(set_cookies(&h).len(), 2);
    // Any bytes after the name: the header goes whole, never rewritten.
    let mut h = with(SET_COOKIE, &[b"SERVERID=\xff\xfe; Path=/", b"sid=\xff"]);
    assert_eq!(scrub_resp(&r, &mut h, true).len(), 1);
    assert_eq!(h.get_all(SET_COOKIE).iter().count(), 1);
    assert_eq!(h[SET_COOKIE].as_bytes(), b"sid=\xff");
}

#[test]
fn all_set_cookies_refused_removes_the_header() {
    let r = strip();
    let mut h = with(SET_COOKIE, &[b"SERVERID=b1; Path=/; HttpOnly"]);
    assert_eq!(scrub_resp(&r, &mut h, true).len(), 1);
    assert!(!h.contains_key(SET_COOKIE));
}

#[test]
fn policies_on_request_and_response() {
    let name: Arc<str> = "b1".into();
    for policy in [
        AffinityPolicy::Strip,
        AffinityPolicy::Reject,
        AffinityPolicy::Log,
    ] {
        let c = counter();
        let t = Tracker::new(c.clone());
        let r = rules(policy);

        let mut req = with(COOKIE, &[b"sid=1; SERVERID=b2; theme=dark"]);
        r.on_request(&mut req, &t);
        let expect: &[u8] = match policy {
            AffinityPolicy::Log => b"sid=1; SERVERID=b2; theme=dark",
            _ => b"sid=1; theme=dark",
        };
        assert_eq!(cookies(&req), [expect.to_vec()], "{policy:?}");
        assert_eq!(count(&c, "request", "SERVERID"), 1);

        let mut resp = with(SET_COOKIE, &[b"SERVERID=b1; Path=/", b"AWSALB=x", b"sid=1"]);
        let rejected = r.on_response(&mut resp, &name, &t);
        let left = set_cookies(&resp);
        match policy {
            AffinityPolicy::Strip => {
                assert_eq!(rejected, None);
                assert_eq!(left, ["sid=1"]);
            }
            AffinityPolicy::Reject => {
                assert_eq!(rejected.as_deref(), Some("SERVERID"));
                assert_eq!(left.len(), 3, "the caller replaces the response");
            }
            AffinityPolicy::Log => {
                assert_eq!(rejected, None);
                assert_eq!(left.len(), 3);
            }
        }
        assert_eq!(count(&c, "response", "SERVERID"), 1, "{policy:?}");
        assert_eq!(count(&c, "response", "AWSALB"), 1, "{policy:?}");
        assert_eq!(count(&c, "response", "sid"), 0);
    }
}

#[test]
fn headers_without_cookies_cost_nothing_and_change_nothing() {
    let c = counter();
    let t = Tracker::new(c.clone());
    let r = strip();
    let mut h = with(COOKIE, &[]);
    r.on_request(&mut h, &t);
    assert_eq!(r.on_response(&mut h, &Arc::from("b"), &t), None);
    assert_eq!(h.len(), 1);
    assert!(t.report(AffinityPolicy::Strip).backends.is_empty());
}

#[test]
fn tracker_reports_backends_and_clients() {
    let c = counter();
    let t = Tracker::new(c.clone());
    let (b1, b2): (Arc<str>, Arc<str>) = ("b1".into(), "b2".into());
    let p = AffinityPolicy::Strip;
    for _ in 0..3 {
        t.refused(Direction::Response, Some(&b1), "SERVERID", b"SERVERID", p);
    }
    t.refused(
        Direction::Response,
        Some(&b1),
        "BIGipServer*",
        b"BIGipServera",
        p,
    );
    t.refused(
        Direction::Response,
        Some(&b1),
        "BIGipServer*",
        b"BIGipServerb",
        p,
    );
    t.refused(Direction::Response, Some(&b2), "AWSALB", b"AWSALB", p);
    t.refused(Direction::Request, None, "SERVERID", b"SERVERID", p);

    let report = t.report(p);
    let rows: Vec<(&str, &str, &str, u64)> = report
        .backends
        .iter()
        .map(|r| (&*r.backend, &*r.name, &*r.last_cookie, r.count))
        .collect();
    assert_eq!(
        rows,
        [
            ("b1", "BIGipServer*", "BIGipServerb", 2),
            ("b1", "SERVERID", "SERVERID", 3),
            ("b2", "AWSALB", "AWSALB", 1),
        ]
    );
    assert_eq!(report.clients.len(), 1);
    assert_eq!(
        (report.clients[0].name.as_str(), report.clients[0].count),
        ("SERVERID", 1)
    );
    for r in &report.backends {
        let first = humantime::parse_rfc3339(&r.first_seen).unwrap();
        let last = humantime::parse_rfc3339(&r.last_seen).unwrap();
        assert!(first <= last);
    }
    assert_eq!(count(&c, "response", "BIGipServer*"), 2);
    assert_eq!(count(&c, "response", "SERVERID"), 3);
    assert_eq!(count(&c, "request", "SERVERID"), 1);
    let json = serde_json::to_value(&report).unwrap();
    assert_eq!(json["policy"], "strip");
    assert_eq!(json["backends"][1]["count"], 3);
}

#[test]
fn logs_once_per_backend_and_name_per_interval() {
    let t = Tracker::new(counter());
    let (b1, b2): (Arc<str>, Arc<str>) = ("b1".into(), "b2".into());
    let p = AffinityPolicy::Strip;
    let hit = |b: Option<&Arc<str>>, label: &str| {
        let d = if b.is_some() {
            Direction::Response
        } else {
            Direction::Request
        };
        t.refused(d, b, label, label.as_bytes(), p)
    };
    assert!(hit(Some(&b1), "SERVERID"));
    assert!(
        !hit(Some(&b1), "SERVERID"),
        "second within a minute is quiet"
    );
    assert!(hit(Some(&b1), "AWSALB"), "another name logs");
    assert!(hit(Some(&b2), "SERVERID"), "another backend logs");
    assert!(hit(None, "SERVERID"));
    assert!(!hit(None, "SERVERID"));

    let t = Tracker::with_log_interval(counter(), Duration::ZERO);
    for _ in 0..3 {
        assert!(t.refused(Direction::Response, Some(&b1), "SERVERID", b"SERVERID", p));
    }
}

#[test]
fn backends_past_the_cap_share_one_entry() {
    let t = Tracker::new(counter());
    for i in 0..MAX_TRACKED_BACKENDS + 10 {
        let b: Arc<str> = format!("10.0.0.{i}:80").into();
        t.refused(
            Direction::Response,
            Some(&b),
            "SERVERID",
            b"SERVERID",
            AffinityPolicy::Strip,
        );
    }
    let report = t.report(AffinityPolicy::Strip);
    assert_eq!(report.backends.len(), MAX_TRACKED_BACKENDS + 1);
    let other = report
        .backends
        .iter()
        .find(|r| r.backend == OTHER_BACKENDS)
        .unwrap();
    assert_eq!(other.count, 10);
}

/// The only signature `pick` may have: the backends in rotation in, one of them out.
type Pick = for<'a> fn(&(dyn Balance + 'static), &'a [Arc<Backend>]) -> Option<&'a Arc<Backend>>;

/// Routing never reads cookies, client addresses or any request header:
/// the balancer's `pick` gets the backends in rotation and nothing else.
/// This does not compile if `pick` is ever given anything of the request.
#[test]
fn routing_cannot_see_the_request() {
    let pick: Pick = <dyn Balance as Balance>::pick;
    let balancer =
        crate::balancer::build(crate::config::Algorithm::RoundRobin, false, Duration::ZERO);
    assert!(pick(&*balancer, &[]).is_none());
}
