//! Affinity cookies through the real binary: every policy, request scrubbing, sticky config.

mod support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::collections::HashMap;

use http::{HeaderMap, HeaderValue, Method};
use serde_json::Value;
use support::metrics::{scrape, Scrape};
use support::{admin, run, Files, Rig, Serve};
use unstick::testkit::client::{self, Reply};

/// A backend response that sets two affinity cookies and one app cookie.
const SETS_THREE: &str = "/set-cookie/SERVERID=b1;AWSALB=x;sid=1";
const ROUNDS: usize = 5;

fn set_cookies(r: &Reply) -> Vec<String> {
    r.headers
        .get_all("set-cookie")
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

fn refused(metrics: &Scrape, direction: &str, name: &str) -> f64 {
    metrics.sum(
        "unstick_affinity_cookies_refused_total",
        &[("direction", direction), ("name", name)],
    )
}

async fn api_affinity(admin: std::net::SocketAddr) -> Value {
    admin::get(admin, "/api/affinity").await
}

/// The `/api/affinity` row for (backend, name).
fn row<'a>(api: &'a Value, backend: &str, name: &str) -> &'a Value {
    api["backends"]
        .as_array()
        .expect("backends")
        .iter()
        .find(|r| r["backend"] == backend && r["name"] == name)
        .unwrap_or_else(|| panic!("no row for {backend} {name} in {api}"))
}

/// Every `/api/affinity` row has the same count as the metric, and sane times.
fn agree(api: &Value, metrics: &Scrape) {
    let rows = api["backends"].as_array().expect("backends");
    let mut total = 0;
    for r in rows {
        let count = r["count"].as_u64().expect("count");
        let name = r["name"].as_str().expect("name");
        assert_eq!(refused(metrics, "response", name), count as f64, "{r}");
        total += count;
        let first = humantime::parse_rfc3339(r["first_seen"].as_str().unwrap()).expect("RFC 3339");
        let last = humantime::parse_rfc3339(r["last_seen"].as_str().unwrap()).expect("RFC 3339");
        assert!(first <= last, "{r}");
    }
    let metric_total = metrics.sum(
        "unstick_affinity_cookies_refused_total",
        &[("direction", "response")],
    );
    assert_eq!(metric_total, total as f64);
}

/// One unstick in front of one backend process, with `policy` (None: the default).
fn start(policy: Option<&str>) -> Rig {
    let serve = Serve::child_backends(1);
    match policy {
        Some(p) => serve.env("UNSTICK_AFFINITY_COOKIES_POLICY", p),
        None => serve,
    }
    .start()
}

#[tokio::test]
async fn strip_is_the_default_and_removes_affinity_set_cookies() {
    let rig = start(None);
    let (lb, backend) = (&rig.lb, &rig.backends[0]);
    for _ in 0..ROUNDS {
        let r = client::get(lb.addr, SETS_THREE).await.unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.backend(), backend.id);
        assert_eq!(set_cookies(&r), ["sid=1; Path=/"]);
    }
    let admin = lb.admin();
    let metrics = scrape(admin).await;
    assert_eq!(refused(&metrics, "response", "SERVERID"), ROUNDS as f64);
    assert_eq!(refused(&metrics, "response", "AWSALB"), ROUNDS as f64);
    assert_eq!(refused(&metrics, "response", "sid"), 0.0);
    let api = api_affinity(admin).await;
    assert_eq!(api["policy"], "strip");
    let b = backend.addr.to_string();
    assert_eq!(row(&api, &b, "SERVERID")["count"], ROUNDS);
    assert_eq!(row(&api, &b, "AWSALB")["count"], ROUNDS);
    assert_eq!(api["backends"].as_array().unwrap().len(), 2);
    agree(&api, &metrics);
    // Logged once per backend and name, not once per response.
    let warnings = lb.stderr().all();
    let logged = |name: &str| {
        warnings
            .iter()
            .filter(|l| l.contains("affinity cookie") && l.contains(&format!("cookie={name} ")))
            .count()
    };
    assert_eq!(logged("SERVERID"), 1, "{warnings:#?}");
    assert_eq!(logged("AWSALB"), 1, "{warnings:#?}");
}

#[tokio::test]
async fn reject_answers_502_naming_the_cookie_and_frees_the_backend() {
    let rig = start(Some("reject"));
    let (lb, backend) = (&rig.lb, &rig.backends[0]);
    for _ in 0..ROUNDS {
        let r = client::get(lb.addr, SETS_THREE).await.unwrap();
        assert_eq!(r.status, 502);
        let body = r.text();
        assert!(body.contains("affinity cookie `SERVERID`"), "{body}");
        assert!(body.contains(&backend.addr.to_string()), "{body}");
        assert!(
            set_cookies(&r).is_empty(),
            "nothing of the backend's response leaks"
        );
        assert!(r.headers.contains_key("x-request-id"));
        assert!(!r.headers.contains_key("x-backend-id"));
    }
    // The backend stays in rotation and its connection and in-flight count
    // were released: plain requests still work, on a keep-alive connection.
    let mut conn = client::Conn::open(lb.addr).await.unwrap();
    for _ in 0..3 {
        let r = conn.get("/").await.unwrap();
        assert_eq!((r.status.as_u16(), r.backend()), (200, backend.id.clone()));
    }
    let admin = lb.admin();
    let metrics = scrape(admin).await;
    let b = backend.addr.to_string();
    assert_eq!(
        metrics.sum("unstick_backend_in_flight", &[("backend", &b)]),
        0.0
    );
    assert_eq!(
        metrics.sum("unstick_backend_healthy", &[("backend", &b)]),
        1.0
    );
    assert_eq!(
        metrics.sum(
            "unstick_requests_total",
            &[("backend", &b), ("code_class", "5xx")]
        ),
        ROUNDS as f64
    );
    assert_eq!(refused(&metrics, "response", "SERVERID"), ROUNDS as f64);
    assert_eq!(refused(&metrics, "response", "AWSALB"), ROUNDS as f64);
    let api = api_affinity(admin).await;
    assert_eq!(api["policy"], "reject");
    assert_eq!(row(&api, &b, "SERVERID")["count"], ROUNDS);
    assert_eq!(row(&api, &b, "AWSALB")["count"], ROUNDS);
    agree(&api, &metrics);
}

#[tokio::test]
async fn log_passes_everything_through_and_counts() {
    let rig = start(Some("log"));
    let (lb, backend) = (&rig.lb, &rig.backends[0]);
    for _ in 0..ROUNDS {
        let r = client::get(lb.addr, SETS_THREE).await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            set_cookies(&r),
            ["SERVERID=b1; Path=/", "AWSALB=x; Path=/", "sid=1; Path=/"]
        );
    }
    // Requests pass through as well.
    let r = client::request(
        lb.addr,
        Method::GET,
        "/headers",
        &[("cookie", "sid=1; SERVERID=b2")],
        "",
    )
    .await
    .unwrap();
    assert!(
        r.text().contains("cookie: sid=1; SERVERID=b2\n"),
        "{}",
        r.text()
    );
    let admin = lb.admin();
    let metrics = scrape(admin).await;
    assert_eq!(refused(&metrics, "response", "SERVERID"), ROUNDS as f64);
    assert_eq!(refused(&metrics, "response", "AWSALB"), ROUNDS as f64);
    assert_eq!(refused(&metrics, "request", "SERVERID"), 1.0);
    let api = api_affinity(admin).await;
    assert_eq!(api["policy"], "log");
    let b = backend.addr.to_string();
    assert_eq!(row(&api, &b, "SERVERID")["count"], ROUNDS);
    assert_eq!(api["clients"][0]["name"], "SERVERID");
    assert_eq!(api["clients"][0]["count"], 1);
    agree(&api, &metrics);
}

#[tokio::test]
async fn request_cookies_are_scrubbed_and_requests_still_spread_evenly() {
    let rig = Serve::child_backends(3)
        .args(&["--algorithm", "round-robin"])
        .start();
    let lb = &rig.lb;
    const N: usize = 30;
    let mut per_backend: HashMap<String, usize> = HashMap::new();
    let mut conn = client::Conn::open(lb.addr).await.unwrap();
    for i in 0..N {
        let headers = [("cookie", "sid=1; SERVERID=b2; theme=dark")];
        // Half on one keep-alive connection, half on fresh connections.
        let r = if i % 2 == 0 {
            conn.request(Method::GET, "/headers", &headers, "").await
        } else {
            client::request(lb.addr, Method::GET, "/headers", &headers, "").await
        }
        .unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let seen: Vec<&str> = r
            .body
            .split(|b| *b == b'\n')
            .filter(|l| l.starts_with(b"cookie:"))
            .map(|l| std::str::from_utf8(l).unwrap())
            .collect();
        assert_eq!(seen, ["cookie: sid=1; theme=dark"], "{}", r.text());
        *per_backend.entry(r.backend()).or_default() += 1;
    }
    assert_eq!(per_backend.len(), 3, "{per_backend:?}");
    let (min, max) = (
        per_backend.values().min().unwrap(),
        per_backend.values().max().unwrap(),
    );
    assert!(max - min <= 2, "uneven spread: {per_backend:?}");

    let admin = lb.admin();
    let metrics = scrape(admin).await;
    assert_eq!(refused(&metrics, "request", "SERVERID"), N as f64);
    assert_eq!(refused(&metrics, "request", "sid"), 0.0);
    let api = api_affinity(admin).await;
    assert_eq!(api["clients"][0]["name"], "SERVERID");
    assert_eq!(api["clients"][0]["count"], N);
    assert!(api["backends"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn configured_names_patterns_and_exemptions() {
    let rig = Serve::child_backends(1)
        .toml("[affinity_cookies]\npolicy = \"strip\"\nnames = [\"route_*\", \"node\"]\nexempt = [\"lb\"]\n")
        .start();
    let (lb, backend) = (&rig.lb, &rig.backends[0]);
    let r = client::get(
        lb.addr,
        "/set-cookie/lb=1;route_a=2;node=3;BIGipServerweb=4;NSC_x=5;sid=1",
    )
    .await
    .unwrap();
    assert_eq!(set_cookies(&r), ["lb=1; Path=/", "sid=1; Path=/"]);
    let admin = lb.admin();
    let metrics = scrape(admin).await;
    for name in ["route_*", "node", "BIGipServer*", "NSC_*"] {
        assert_eq!(refused(&metrics, "response", name), 1.0, "{name}");
    }
    assert_eq!(refused(&metrics, "response", "lb"), 0.0);
    let api = api_affinity(admin).await;
    let b = backend.addr.to_string();
    assert_eq!(
        row(&api, &b, "BIGipServer*")["last_cookie"],
        "BIGipServerweb"
    );
    assert_eq!(row(&api, &b, "route_*")["last_cookie"], "route_a");
    agree(&api, &metrics);
}

/// Runs `unstick ARGS` to its exit: the code and stderr.
fn run_for_stderr(args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    let out = run(args, env);
    (out.code, out.stderr)
}

#[test]
fn sticky_config_fails_check_and_serve_with_the_explanation() {
    let cases: &[(&str, &str)] = &[
        ("sticky", "sticky = true\n"),
        ("affinity", "[affinity]\ncookie = \"SERVERID\"\n"),
        ("hash", "hash = \"$remote_addr\"\n"),
        (
            "backends[0].ip_hash",
            "[[backends]]\naddress = \"127.0.0.1:9\"\nip_hash = true\n",
        ),
        (
            "health.session_cookie",
            "[health]\nsession_cookie = \"JSESSIONID\"\n",
        ),
        ("algorithm", "algorithm = \"ip-hash\"\n"),
    ];
    let files = Files::new();
    for (i, (key, text)) in cases.iter().enumerate() {
        let file = files.write(&format!("{i}.toml"), text);
        let file = file.to_str().unwrap();
        let listen = ["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
        for command in ["check", "serve"] {
            let mut args = vec![command, "--config", file];
            if command == "serve" {
                args.extend(listen);
            }
            let (code, stderr) = run_for_stderr(&args, &[]);
            assert_eq!(code, 2, "{command} {text:?}: {stderr}");
            assert!(
                stderr.contains(&format!("`{key}`")),
                "{command} {key}: {stderr}"
            );
            assert!(stderr.contains("refused"), "{command} {key}: {stderr}");
            assert!(stderr.contains("Redis"), "{command} {key}: {stderr}");
            assert!(
                stderr.contains("unstick chaos"),
                "{command} {key}: {stderr}"
            );
            assert!(!stderr.contains("\"event\":\"started\""), "{stderr}");
        }
    }
    // The same from a flag and from the environment.
    for command in ["check", "serve"] {
        let (code, stderr) = run_for_stderr(&[command, "--algorithm", "ip-hash"], &[]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("--algorithm") && stderr.contains("Redis"),
            "{stderr}"
        );
        let (code, stderr) = run_for_stderr(&[command], &[("UNSTICK_ALGORITHM", "hash")]);
        assert_eq!(code, 2, "{stderr}");
        assert!(
            stderr.contains("UNSTICK_ALGORITHM") && stderr.contains("Redis"),
            "{stderr}"
        );
    }
    // The affinity_cookies section itself is not mistaken for a sticky key.
    let file = files.write(
        "section.toml",
        "[affinity_cookies]\npolicy = \"reject\"\nnames = [\"route\"]\n",
    );
    let (code, stderr) = run_for_stderr(&["check", "--config", file.to_str().unwrap()], &[]);
    assert_eq!(code, 0, "{stderr}");
}

// === allocation on the hot path ===

/// Counts allocations made by the current thread.
struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.alloc(layout)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocations_in(f: impl FnOnce()) -> usize {
    let before = ALLOCATIONS.with(Cell::get);
    f();
    ALLOCATIONS.with(Cell::get) - before
}

#[test]
fn no_allocation_when_no_cookie_matches() {
    use unstick::affinity::{Rules, Tracker};
    use unstick::config::AffinityPolicy;
    let metrics = unstick::metrics::Metrics::new_unregistered();
    let tracker = Tracker::new(metrics.affinity_refused.clone());
    let rules = Rules::new(AffinityPolicy::Strip, &["route_*".into()], &["lb".into()]);
    let backend: std::sync::Arc<str> = "127.0.0.1:1".into();
    let mut req = HeaderMap::new();
    req.append(
        "cookie",
        HeaderValue::from_static("_ga=GA1.2.3; sid=abc123; theme=dark;  lang=en; lb=1"),
    );
    req.append(
        "cookie",
        HeaderValue::from_static("csrftoken=xyz; serverid=lower"),
    );
    let mut resp = HeaderMap::new();
    for v in ["sid=1; Path=/; HttpOnly", "theme=dark", "lb=2; Max-Age=60"] {
        resp.append("set-cookie", HeaderValue::from_static(v));
    }
    let n = allocations_in(|| {
        for _ in 0..100 {
            rules.on_request(&mut req, &tracker);
            assert_eq!(rules.on_response(&mut resp, &backend, &tracker), None);
        }
    });
    assert_eq!(n, 0, "the no-match path allocated");
    // The counter works: a match does allocate (the rewritten header).
    req.append("cookie", HeaderValue::from_static("SERVERID=b1; a=1"));
    assert!(allocations_in(|| rules.on_request(&mut req, &tracker)) > 0);
}
