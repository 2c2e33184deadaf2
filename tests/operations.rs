//! Operations: hot reload under traffic, DNS discovery, replicas side by side,
//! and the key table in docs/configuration.md.

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::time::Instant;
use unstick::app::{App, StartOptions};
use unstick::config::{self, BackendSpec, Config, UpstreamProtocol};
use unstick::metrics::Metrics;
use unstick::reload::WatchedFile;
use unstick::testkit::client::{self, Conn};
use unstick::testkit::process::{ChildBackend, ChildUnstick};
use unstick::testkit::{test_config, BackendOptions, FakeBackend};
use unstick::upstream::discovery::{Discovery, Lookup, Resolve};
use unstick::upstream::{State, Upstreams};

mod support;
use support::backends::fake;

const BIN: &str = env!("CARGO_BIN_EXE_unstick");

// === helpers ===

/// Writes a config file listing `backends` (address, weight) plus `extra`
/// TOML, to a temporary file renamed over `path` (as config tools do).
fn write_config(path: &Path, backends: &[(SocketAddr, u32)], extra: &str) {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("\"{a}={w}\""))
        .collect();
    let text = format!(
        "access_log = \"off\"\nbackends = [{}]\n{extra}",
        list.join(", ")
    );
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn admin_json(
    admin: SocketAddr,
    method: Method,
    path: &str,
) -> (StatusCode, serde_json::Value) {
    let r = client::request(admin, method, path, &[], Bytes::new())
        .await
        .unwrap();
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", r.text()));
    (r.status, v)
}

/// The configured backends (not the removed ones) as (address, weight), sorted.
async fn configured(admin: SocketAddr) -> Vec<(String, u64)> {
    let (_, list) = admin_json(admin, Method::GET, "/api/backends").await;
    let mut out: Vec<(String, u64)> = list
        .as_array()
        .unwrap()
        .iter()
        .filter(|b| b["state"] != "removed")
        .map(|b| {
            (
                b["address"].as_str().unwrap().to_owned(),
                b["weight"].as_u64().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits (at most 5 s) until the admin API lists exactly `want`.
async fn wait_configured(admin: SocketAddr, want: &[(SocketAddr, u32)]) {
    let mut want: Vec<(String, u64)> = want
        .iter()
        .map(|(a, w)| (a.to_string(), u64::from(*w)))
        .collect();
    want.sort();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let now = configured(admin).await;
        if now == want {
            return;
        }
        assert!(Instant::now() < deadline, "backends {now:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Sums the samples of `family` whose labels include `labels`.
fn metric(text: &str, family: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(family) && l[family.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// `id`'s share of the responses counted.
fn share(counts: &HashMap<String, u64>, id: &str) -> f64 {
    let total: u64 = counts.values().sum();
    assert!(total > 50, "too few responses counted: {counts:?}");
    counts.get(id).copied().unwrap_or(0) as f64 / total as f64
}

/// Steady traffic from keep-alive clients, with counting windows.
#[derive(Default)]
struct Traffic {
    stop: AtomicBool,
    pause: AtomicBool,
    /// Responses are counted under this window number (0: not counted).
    window: AtomicUsize,
    counts: Mutex<HashMap<(usize, String), u64>>,
    ok: AtomicU64,
    errors: Mutex<Vec<String>>,
}

impl Traffic {
    fn start(
        addr: SocketAddr,
        clients: usize,
        path: &'static str,
    ) -> (Arc<Traffic>, Vec<tokio::task::JoinHandle<()>>) {
        let t = Arc::new(Traffic::default());
        let tasks = (0..clients)
            .map(|_| {
                let t = t.clone();
                tokio::spawn(async move {
                    let mut conn = Conn::open(addr).await.unwrap();
                    while !t.stop.load(Ordering::Relaxed) {
                        if t.pause.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        }
                        match conn.get(path).await {
                            Ok(r) if r.status == StatusCode::OK => {
                                t.ok.fetch_add(1, Ordering::Relaxed);
                                let w = t.window.load(Ordering::Relaxed);
                                if w != 0 {
                                    *t.counts
                                        .lock()
                                        .unwrap()
                                        .entry((w, r.backend()))
                                        .or_default() += 1;
                                }
                            }
                            Ok(r) => {
                                t.errors
                                    .lock()
                                    .unwrap()
                                    .push(format!("{} {}", r.status, r.text()))
                            }
                            Err(e) => {
                                t.errors.lock().unwrap().push(e.to_string());
                                conn = Conn::open(addr).await.unwrap();
                            }
                        }
                    }
                })
            })
            .collect();
        (t, tasks)
    }

    /// Counts responses by backend for `d` under window `w`.
    async fn measure(&self, w: usize, d: Duration) -> HashMap<String, u64> {
        self.window.store(w, Ordering::Relaxed);
        tokio::time::sleep(d).await;
        self.window.store(0, Ordering::Relaxed);
        self.counts
            .lock()
            .unwrap()
            .iter()
            .filter(|((win, _), _)| *win == w)
            .map(|((_, id), n)| (id.clone(), *n))
            .collect()
    }
}

/// A resolver that answers what the test says.
#[derive(Default)]
struct FakeResolver {
    answers: Mutex<HashMap<String, Result<Vec<SocketAddr>, String>>>,
    calls: Mutex<HashMap<String, usize>>,
}

impl FakeResolver {
    fn set(&self, host: &str, answer: Result<Vec<SocketAddr>, &str>) {
        self.answers
            .lock()
            .unwrap()
            .insert(host.to_owned(), answer.map_err(str::to_owned));
    }

    fn calls(&self, host: &str) -> usize {
        self.calls.lock().unwrap().get(host).copied().unwrap_or(0)
    }
}

impl Resolve for FakeResolver {
    fn resolve<'a>(&'a self, host: &'a str, _port: u16) -> Lookup<'a> {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(host.to_owned())
            .or_default() += 1;
        let answer = self.answers.lock().unwrap().get(host).cloned();
        Box::pin(async move {
            match answer {
                Some(Ok(addrs)) => Ok(addrs.into()),
                Some(Err(e)) => Err(io::Error::other(e)),
                None => Err(io::Error::new(io::ErrorKind::NotFound, "no such host")),
            }
        })
    }
}

fn spec(address: &str, weight: u32) -> BackendSpec {
    BackendSpec {
        address: address.to_owned(),
        weight,
        protocol: UpstreamProtocol::Http1,
    }
}

fn addrs_of(upstreams: &Upstreams) -> Vec<SocketAddr> {
    upstreams.load().all.iter().map(|b| b.addr).collect()
}

async fn ids(addr: SocketAddr, n: usize) -> HashMap<String, u64> {
    let mut conn = Conn::open(addr).await.unwrap();
    let mut out = HashMap::new();
    for _ in 0..n {
        let r = conn.get("/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        *out.entry(r.backend()).or_default() += 1;
    }
    out
}

// === hot reload ===

/// Three SIGHUPs under 8 clients' steady traffic: add a backend, remove one
/// (with requests in flight on it), change weights. No client sees an error,
/// and after each change the traffic follows the new config.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sighup_changes_backends_under_traffic_without_an_error() {
    let b: Vec<ChildBackend> = (0..3)
        .map(|i| ChildBackend::spawn(BIN, &format!("b{i}"), &[]))
        .collect();
    let (b0, b1, b2) = (b[0].addr, b[1].addr, b[2].addr);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unstick.toml");
    write_config(&file, &[(b0, 1), (b1, 1)], "");
    // SIGHUP alone: the file watcher is off, so each change is the signal's.
    let u = ChildUnstick::spawn(
        BIN,
        &["--config", file.to_str().unwrap()],
        &[("UNSTICK_RELOAD_WATCH", "false")],
    );
    let admin = u.admin.unwrap();
    let (traffic, clients) = Traffic::start(u.addr, 8, "/slow/20");
    let window = Duration::from_millis(1200);
    let settle = Duration::from_millis(150);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let w1 = traffic.measure(1, window).await;
    for id in ["b0", "b1"] {
        assert!((0.35..0.65).contains(&share(&w1, id)), "start: {w1:?}");
    }

    // 1. Add a backend.
    write_config(&file, &[(b0, 1), (b1, 1), (b2, 1)], "");
    assert!(u.process.signal(libc::SIGHUP));
    wait_configured(admin, &[(b0, 1), (b1, 1), (b2, 1)]).await;
    tokio::time::sleep(settle).await;
    let w2 = traffic.measure(2, window).await;
    for id in ["b0", "b1", "b2"] {
        assert!((0.2..0.47).contains(&share(&w2, id)), "added b2: {w2:?}");
    }

    // 2. Remove b0 while it has a slow request in flight. With the clients
    // paused, three requests in a row go to the three backends in turn.
    traffic.pause.store(true, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        let addr = u.addr;
        slow.push(tokio::spawn(async move {
            client::get(addr, "/slow/1500").await
        }));
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    traffic.pause.store(false, Ordering::Relaxed);
    write_config(&file, &[(b1, 1), (b2, 1)], "");
    assert!(u.process.signal(libc::SIGHUP));
    wait_configured(admin, &[(b1, 1), (b2, 1)]).await;
    let (_, list) = admin_json(admin, Method::GET, "/api/backends").await;
    let leaving = list
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["address"] == b0.to_string())
        .unwrap_or_else(|| panic!("b0 is not listed while it drains: {list:#}"));
    assert_eq!(leaving["state"], "removed");
    assert!(leaving["in_flight"].as_u64().unwrap() >= 1, "{leaving}");
    tokio::time::sleep(settle).await;
    let w3 = traffic.measure(3, window).await;
    assert_eq!(w3.get("b0"), None, "removed b0 still gets requests: {w3:?}");
    for id in ["b1", "b2"] {
        assert!((0.35..0.65).contains(&share(&w3, id)), "removed b0: {w3:?}");
    }
    let mut slow_ids = Vec::new();
    for s in slow {
        let r = s.await.unwrap().expect("a slow request failed");
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        slow_ids.push(r.backend());
    }
    assert!(slow_ids.contains(&"b0".to_owned()), "{slow_ids:?}");
    // Drained: b0 is forgotten, metric series and all.
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let (_, list) = admin_json(admin, Method::GET, "/api/backends").await;
        let text = client::get(admin, "/metrics").await.unwrap().text();
        let listed = list
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v["address"] == b0.to_string());
        if !listed && !text.contains(&format!("backend=\"{b0}\"")) {
            break;
        }
        assert!(Instant::now() < deadline, "b0 still known after draining");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 3. Change weights: 3:1.
    write_config(&file, &[(b1, 3), (b2, 1)], "");
    assert!(u.process.signal(libc::SIGHUP));
    wait_configured(admin, &[(b1, 3), (b2, 1)]).await;
    tokio::time::sleep(settle).await;
    let w4 = traffic.measure(4, window).await;
    assert!(
        (0.62..0.88).contains(&share(&w4, "b1")),
        "weights 3:1: {w4:?}"
    );
    assert_eq!(w4.get("b0"), None);

    traffic.stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let errors = traffic.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "client errors: {errors:?}");
    let ok = traffic.ok.load(Ordering::Relaxed);
    let reloads = u
        .process
        .stderr
        .all()
        .iter()
        .filter(|l| l.contains("configuration reloaded (sighup)"))
        .count();
    assert_eq!(reloads, 3, "{}", u.process.stderr.text());
    let text = client::get(admin, "/metrics").await.unwrap().text();
    assert_eq!(
        metric(
            &text,
            "unstick_config_reloads_total",
            &[("result", "success")]
        ),
        3.0
    );
    eprintln!("sighup reloads: {ok} requests, 0 errors; shares {w1:?} {w2:?} {w3:?} {w4:?}");
}

/// An invalid edit is refused with `unstick check`'s error (logged, and
/// answered by `POST /api/reload`) while the old config keeps serving; the
/// file watcher applies a valid edit without a signal, and a key that needs
/// a restart is reported while everything else applies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_edit_keeps_the_running_config_and_the_watcher_applies_a_valid_one() {
    let b0 = ChildBackend::spawn(BIN, "b0", &[]);
    let b1 = ChildBackend::spawn(BIN, "b1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unstick.toml");
    let path = file.to_str().unwrap();
    write_config(&file, &[(b0.addr, 1)], "");
    let u = ChildUnstick::spawn(BIN, &["--config", path], &[]);
    let admin = u.admin.unwrap();

    // An invalid edit, written in place.
    std::fs::write(
        &file,
        format!(
            "backends = [\"{}\"]\n\n[timeouts]\nconect = \"1s\"\n",
            b1.addr
        ),
    )
    .unwrap();
    let check = Command::new(BIN)
        .args(["check", "--config", path])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(2));
    let check_err = String::from_utf8(check.stderr).unwrap();
    let expected = check_err
        .lines()
        .find_map(|l| l.strip_prefix("error: "))
        .unwrap_or_else(|| panic!("no error from check: {check_err}"))
        .to_owned();
    assert!(expected.contains("timeouts.conect"), "{expected}");
    let logged = u
        .process
        .stderr
        .wait_for(&expected, Duration::from_secs(5))
        .unwrap_or_else(|| panic!("not logged: {}", u.process.stderr.text()));
    assert!(logged.contains("(file-watch) refused"), "{logged}");
    assert!(logged.contains(&format!("error: {expected}")), "{logged}");
    // The old config still serves.
    assert_eq!(ids(u.addr, 6).await, HashMap::from([("b0".to_owned(), 6)]));
    // The admin API reports the same error.
    let (status, v) = admin_json(admin, Method::POST, "/api/reload").await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{v}");
    assert_eq!(v["error"], expected.as_str());
    assert_eq!(v["key"], "timeouts.conect");
    let (status, _) = admin_json(admin, Method::GET, "/api/reload").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);

    // A valid edit, picked up by the watcher alone; one of its keys needs a restart.
    std::fs::write(
        &file,
        format!(
            "access_log = \"off\"\nbackends = [\"{}\"]\n\n[limits]\nmax_connections = 5000\n",
            b1.addr
        ),
    )
    .unwrap();
    wait_configured(admin, &[(b1.addr, 1)]).await;
    assert_eq!(ids(u.addr, 6).await, HashMap::from([("b1".to_owned(), 6)]));
    let applied = u
        .process
        .stderr
        .wait_for(
            "configuration reloaded (file-watch)",
            Duration::from_secs(2),
        )
        .unwrap();
    assert!(applied.contains("applied backends"), "{applied}");
    assert!(
        applied.contains("kept until a restart: limits.max_connections"),
        "{applied}"
    );
    // Asked again, the admin API says what still waits for a restart.
    let (status, v) = admin_json(admin, Method::POST, "/api/reload").await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["applied"], serde_json::json!([]));
    assert_eq!(
        v["restart_required"],
        serde_json::json!(["limits.max_connections"])
    );
    assert_eq!(v["backends"]["total"], 1);

    let text = client::get(admin, "/metrics").await.unwrap().text();
    assert_eq!(
        metric(
            &text,
            "unstick_config_reloads_total",
            &[("result", "failure")]
        ),
        2.0
    );
    assert_eq!(
        metric(
            &text,
            "unstick_config_reloads_total",
            &[("result", "success")]
        ),
        2.0
    );
}

/// An edit made after the config was read but before the watcher's first
/// look is still applied: the watcher's first fingerprint comes before the
/// read (`WatchedFile::before_read`), as `unstick serve` takes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_before_the_watcher_starts_is_applied() {
    let a = fake("a").await;
    let b = fake("b").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("unstick.toml");
    let extra = "listen = \"127.0.0.1:0\"\nadmin = \"off\"\n";
    write_config(&file, &[(a.addr, 1)], extra);
    let watch = WatchedFile::before_read(file.clone());
    let config = Config::load(Some(&file), &[]).unwrap();
    // The edit lands before the app (and its watcher) starts.
    write_config(&file, &[(b.addr, 1)], extra);
    let source_file = file.clone();
    let app = App::start_opts(
        config,
        StartOptions {
            source: Some(Arc::new(move || Config::load(Some(&source_file), &[]))),
            watch: Some(watch),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    assert_eq!(addrs_of(&app.proxy.upstreams), [a.addr]);
    let deadline = Instant::now() + Duration::from_secs(10);
    while addrs_of(&app.proxy.upstreams) != [b.addr] {
        assert!(Instant::now() < deadline, "the edit was not applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        ids(app.proxy_addr, 4).await,
        HashMap::from([("b".to_owned(), 4)])
    );
}

/// In process: a reload that changes a backend's weight makes it a new
/// backend that keeps its state (a drained backend stays drained).
#[tokio::test]
async fn a_weight_change_keeps_the_backend_state() {
    let a = fake("a").await;
    let b = fake("b").await;
    let config = test_config(&[a.addr, b.addr]);
    let app = App::start(config.clone()).await.unwrap();
    let seen = ids(app.proxy_addr, 4).await;
    assert_eq!((seen["a"], seen["b"]), (2, 2));
    let old_a = app.proxy.upstreams.find(&a.addr.to_string()).unwrap();
    let old_b = app.proxy.upstreams.find(&b.addr.to_string()).unwrap();
    old_a.set_state(State::AdminDrained);
    app.proxy.upstreams.refresh();

    let mut new = config.clone();
    new.backends[0].weight = 2;
    new.backends[1].weight = 5;
    new.retries.max_per_request = 1;
    let summary = app
        .reloader
        .apply(new, unstick::reload::Trigger::Admin)
        .await;
    assert_eq!(summary.applied, ["backends", "retries.max_per_request"]);
    assert_eq!(summary.backends.updated.len(), 2);
    let new_a = app.proxy.upstreams.find(&a.addr.to_string()).unwrap();
    assert!(!Arc::ptr_eq(&old_a, &new_a));
    assert_eq!((new_a.weight, new_a.state()), (2, State::AdminDrained));
    assert_eq!(old_a.state(), State::Removed);
    assert_eq!(app.proxy.settings().retries.max_per_request, 1);
    // Only b is in rotation, with its new weight and old counters.
    let snapshot = app.proxy.upstreams.load();
    assert_eq!(snapshot.healthy.len(), 1);
    assert_eq!(snapshot.healthy[0].weight, 5);
    assert_eq!(snapshot.healthy[0].requests(), 2);
    assert_eq!(old_b.requests(), 2);
    assert_eq!(
        ids(app.proxy_addr, 4).await,
        HashMap::from([("b".to_owned(), 4)])
    );
    // The healthy gauge follows the new backends, not the removed twins.
    let text = app.proxy.metrics.encode();
    assert_eq!(
        metric(
            &text,
            "unstick_backend_healthy",
            &[("backend", &b.addr.to_string())]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &text,
            "unstick_backend_healthy",
            &[("backend", &a.addr.to_string())]
        ),
        0.0
    );
    // Without a source (an in-process app), a reload is refused.
    assert!(app
        .reloader
        .reload(unstick::reload::Trigger::Admin)
        .await
        .is_err());
}

// === DNS discovery ===

/// The discovery logic with a fake resolver and paused time: changes are
/// picked up on the next interval, removed addresses drain out, and failed
/// or empty lookups keep the last good set and retry after `min_interval`.
#[tokio::test(start_paused = true)]
async fn discovery_follows_the_resolver_and_keeps_the_last_good_set() {
    let a = |n: u8| SocketAddr::from(([10, 0, 0, n], 80));
    let metrics = Metrics::new_unregistered();
    let upstreams = Arc::new(Upstreams::new(Vec::new()));
    let resolver = Arc::new(FakeResolver::default());
    resolver.set("app", Ok(vec![a(2), a(1), a(2)]));
    resolver.set("down", Err("temporary failure in name resolution"));
    let timing = config::Discovery {
        interval: Duration::from_secs(5),
        min_interval: Duration::from_secs(1),
    };
    let make = unstick::upstream::backend_factory(&Config::defaults(), &metrics).unwrap();
    let d = Discovery::new(
        upstreams.clone(),
        metrics.clone(),
        resolver.clone(),
        make,
        timing.clone(),
    );
    let specs = vec![
        spec("app:80", 1),
        spec("10.0.0.9:80", 1),
        spec("down:80", 1),
    ];
    let start = Instant::now();
    let at = |secs: f64| start + Duration::from_secs_f64(secs);
    // Startup: the name that fails has no backends yet; the others are there.
    let change = d.apply(specs, None, timing).await;
    assert_eq!(change.unresolved, ["down:80"]);
    assert_eq!(addrs_of(&upstreams), [a(1), a(2), a(9)]);
    assert_eq!(
        resolver.calls("10.0.0.9"),
        0,
        "IP literals are not looked up"
    );
    tokio::spawn(d.clone().run());

    // a(1) has a request in flight when the resolver drops it.
    let kept = upstreams.find("10.0.0.2:80").unwrap();
    let leaving = upstreams.find("10.0.0.1:80").unwrap();
    let in_flight = leaving.start_request();
    leaving.metrics.ejection("failures");
    resolver.set("app", Ok(vec![a(2), a(3)]));
    tokio::time::sleep_until(at(4.9)).await;
    assert_eq!(
        addrs_of(&upstreams),
        [a(1), a(2), a(9)],
        "before the interval"
    );
    tokio::time::sleep_until(at(5.1)).await;
    assert_eq!(addrs_of(&upstreams), [a(2), a(3), a(9)], "on the interval");
    assert!(Arc::ptr_eq(&kept, &upstreams.find("10.0.0.2:80").unwrap()));
    assert_eq!(leaving.state(), State::Removed);
    assert_eq!(upstreams.leaving().len(), 1);
    assert!(metrics.encode().contains("backend=\"10.0.0.1:80\""));
    drop(in_flight);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(upstreams.leaving().is_empty());
    assert!(
        !metrics.encode().contains("backend=\"10.0.0.1:80\""),
        "series forgotten"
    );

    // `down` failed at 0, 1 and 3 s (retries after 1 s, then 2 s, ...), and
    // joins once it resolves (next try at 7 s).
    let failures = |name: &str| {
        metric(
            &metrics.encode(),
            "unstick_discovery_failures_total",
            &[("name", name)],
        )
    };
    assert_eq!(failures("down:80"), 3.0);
    resolver.set("down", Ok(vec![a(7)]));
    tokio::time::sleep_until(at(7.1)).await;
    assert_eq!(addrs_of(&upstreams), [a(2), a(3), a(9), a(7)]);
    let gauge = |name: &str| {
        metric(
            &metrics.encode(),
            "unstick_discovery_backends",
            &[("name", name)],
        )
    };
    assert_eq!((gauge("app:80"), gauge("down:80")), (2.0, 1.0));

    // A failed lookup (10 s) keeps the set and is retried after min_interval (11 s).
    resolver.set("app", Err("SERVFAIL"));
    tokio::time::sleep_until(at(10.1)).await;
    assert_eq!(failures("app:80"), 1.0);
    assert_eq!(addrs_of(&upstreams), [a(2), a(3), a(9), a(7)]);
    tokio::time::sleep_until(at(11.1)).await;
    assert_eq!(failures("app:80"), 2.0);
    // An empty answer (13 s) is a failure too: the pool is never emptied.
    resolver.set("app", Ok(vec![]));
    tokio::time::sleep_until(at(13.1)).await;
    assert_eq!(failures("app:80"), 3.0);
    assert_eq!(addrs_of(&upstreams), [a(2), a(3), a(9), a(7)]);
    assert_eq!(gauge("app:80"), 2.0);
    // Recovery (next try at 17 s).
    resolver.set("app", Ok(vec![a(3)]));
    tokio::time::sleep_until(at(17.1)).await;
    assert_eq!(addrs_of(&upstreams), [a(3), a(9), a(7)]);

    // A name that leaves the config stops being resolved; its series go.
    let calls = resolver.calls("down");
    let timing = config::Discovery {
        interval: Duration::from_secs(5),
        min_interval: Duration::from_secs(1),
    };
    d.apply(vec![spec("app:80", 1)], None, timing).await;
    assert_eq!(addrs_of(&upstreams), [a(3)]);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert_eq!(resolver.calls("down"), calls);
    assert_eq!(gauge("down:80"), 0.0);
    assert!(!metrics.encode().contains("name=\"down:80\""));
}

/// `localhost:PORT` through the system resolver: every address it has is a
/// backend. Where localhost is only 127.0.0.1 (some containers), the
/// dual-stack case runs with a resolver that answers as such a host does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn localhost_yields_a_backend_per_address() {
    let v4 = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = v4.local_addr().unwrap().port();
    let v6 = match tokio::net::TcpListener::bind(("::1", port)).await {
        Ok(l) => Some(l),
        Err(e) => {
            eprintln!("skipping the IPv6 part: cannot bind [::1]:{port}: {e}");
            None
        }
    };
    let opts = |id: &str| BackendOptions {
        id: id.into(),
        ..Default::default()
    };
    let _b4 = FakeBackend::start_on(v4, opts("v4"));
    let b6 = v6.map(|l| FakeBackend::start_on(l, opts("v6")));
    let mut system: Vec<SocketAddr> = tokio::net::lookup_host(("localhost", port))
        .await
        .unwrap()
        .collect();
    system.sort();
    system.dedup();

    let mut config = test_config(&[]);
    config.backends = vec![spec(&format!("localhost:{port}"), 1)];
    let app = App::start(config.clone()).await.unwrap();
    assert_eq!(addrs_of(&app.proxy.upstreams), system);
    let both = system.iter().any(|a| a.is_ipv4()) && system.iter().any(|a| a.is_ipv6());
    if both && b6.is_some() {
        let seen = ids(app.proxy_addr, 20).await;
        assert_eq!((seen["v4"], seen["v6"]), (10, 10));
    } else {
        eprintln!("localhost is {system:?} here: the dual-stack case uses a fake resolver");
    }

    let Some(_b6) = b6 else { return };
    let resolver = Arc::new(FakeResolver::default());
    let dual = vec![
        SocketAddr::from(([127, 0, 0, 1], port)),
        SocketAddr::new(std::net::Ipv6Addr::LOCALHOST.into(), port),
    ];
    resolver.set("localhost", Ok(dual.clone()));
    let opts = StartOptions {
        resolver,
        ..Default::default()
    };
    let app = App::start_opts(config, opts).await.unwrap();
    assert_eq!(addrs_of(&app.proxy.upstreams), dual);
    let seen = ids(app.proxy_addr, 20).await;
    assert_eq!((seen["v4"], seen["v6"]), (10, 10));
}

/// Through a running balancer: a resolver change reaches the traffic on the
/// next interval, a failing resolver changes nothing, and an address that
/// disappears stops getting requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resolver_change_reaches_the_traffic() {
    let a = fake("a").await;
    let b = fake("b").await;
    let resolver = Arc::new(FakeResolver::default());
    resolver.set("app", Ok(vec![a.addr]));
    let mut config = test_config(&[]);
    config.backends = vec![spec("app:80", 1)];
    config.discovery.interval = Duration::from_millis(300);
    config.discovery.min_interval = Duration::from_millis(100);
    let opts = StartOptions {
        resolver: resolver.clone(),
        ..Default::default()
    };
    let app = App::start_opts(config, opts).await.unwrap();
    assert_eq!(
        ids(app.proxy_addr, 4).await,
        HashMap::from([("a".to_owned(), 4)])
    );

    let wait_for = |want: Vec<SocketAddr>| {
        let up = app.proxy.upstreams.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(3);
            while addrs_of(&up) != want {
                assert!(Instant::now() < deadline, "{:?} != {want:?}", addrs_of(&up));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let mut both = vec![a.addr, b.addr];
    both.sort();
    resolver.set("app", Ok(both.clone()));
    wait_for(both.clone()).await;
    let seen = ids(app.proxy_addr, 10).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5));

    resolver.set("app", Err("SERVFAIL"));
    let calls = resolver.calls("app");
    while resolver.calls("app") < calls + 2 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(addrs_of(&app.proxy.upstreams), both);
    let seen = ids(app.proxy_addr, 10).await;
    assert_eq!((seen["a"], seen["b"]), (5, 5));
    let text = app.proxy.metrics.encode();
    assert!(
        metric(
            &text,
            "unstick_discovery_failures_total",
            &[("name", "app:80")]
        ) >= 2.0
    );

    resolver.set("app", Ok(vec![b.addr]));
    wait_for(vec![b.addr]).await;
    assert_eq!(
        ids(app.proxy_addr, 4).await,
        HashMap::from([("b".to_owned(), 4)])
    );
}

// === replicas ===

/// Two unstick processes in front of the same backends; clients spread over
/// both and, as behind DNS round-robin, retry on the other when one fails.
/// One is SIGKILLed mid-traffic, then a new one takes its place: the
/// survivor serves throughout without an error, both spread load the same
/// way, and neither writes a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_one_of_two_instances_does_not_affect_the_other() {
    let b0 = ChildBackend::spawn(BIN, "b0", &[]);
    let b1 = ChildBackend::spawn(BIN, "b1", &[]);
    let backends = format!("{},{}", b0.addr, b1.addr);
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_owned();
    let env = [
        ("UNSTICK_BACKENDS", backends.as_str()),
        ("UNSTICK_ACCESS_LOG", "off"),
        ("TMPDIR", dir_s.as_str()),
        ("HOME", dir_s.as_str()),
    ];
    let spawn = || ChildUnstick::spawn_in(BIN, &[], &env, Some(dir.path()));
    let mut u1 = spawn();
    let u2 = spawn();
    let addrs = Arc::new(RwLock::new([u1.addr, u2.addr]));

    #[derive(Default)]
    struct Tally {
        ok: [AtomicU64; 2],
        /// Requests that failed on an instance (then retried on the other).
        failed: [AtomicU64; 2],
        errors: Mutex<Vec<String>>,
        /// Per instance, responses by backend.
        by_backend: Mutex<[HashMap<String, u64>; 2]>,
    }
    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let (addrs, tally, stop) = (addrs.clone(), tally.clone(), stop.clone());
            tokio::spawn(async move {
                let mut conns: [Option<(SocketAddr, Conn)>; 2] = [None, None];
                while !stop.load(Ordering::Relaxed) {
                    let mut served = false;
                    let mut why = Vec::new();
                    for inst in [i % 2, 1 - i % 2] {
                        let addr = addrs.read().unwrap()[inst];
                        if conns[inst].as_ref().is_none_or(|(a, _)| *a != addr) {
                            conns[inst] = Conn::open(addr).await.ok().map(|c| (addr, c));
                        }
                        let result = match &mut conns[inst] {
                            Some((_, c)) => c.get("/slow/20").await.map_err(|e| e.to_string()),
                            None => Err("connection refused".to_owned()),
                        };
                        match result {
                            Ok(r) if r.status == StatusCode::OK => {
                                tally.ok[inst].fetch_add(1, Ordering::Relaxed);
                                *tally.by_backend.lock().unwrap()[inst]
                                    .entry(r.backend())
                                    .or_default() += 1;
                                served = true;
                                break;
                            }
                            other => {
                                let e = match other {
                                    Ok(r) => format!("{} {}", r.status, r.text()),
                                    Err(e) => e,
                                };
                                tally.failed[inst].fetch_add(1, Ordering::Relaxed);
                                why.push(format!("instance {inst}: {e}"));
                                conns[inst] = None;
                            }
                        }
                    }
                    if !served {
                        tally.errors.lock().unwrap().push(why.join("; "));
                    }
                }
            })
        })
        .collect();

    let ok2 = || tally.ok[1].load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let before = ok2();
    assert!(u1.process.signal(libc::SIGKILL));
    u1.process.wait_timeout(Duration::from_secs(5)).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let during = ok2() - before;
    // A new instance takes the dead one's place (as a new DNS record would).
    let u3 = spawn();
    addrs.write().unwrap()[0] = u3.addr;
    let ok3_start = tally.ok[0].load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let after = ok2() - before - during;
    let restarted = tally.ok[0].load(Ordering::Relaxed) - ok3_start;

    let errors = tally.errors.lock().unwrap().clone();
    assert!(errors.is_empty(), "requests no instance served: {errors:?}");
    assert_eq!(
        tally.failed[1].load(Ordering::Relaxed),
        0,
        "the survivor failed requests"
    );
    assert!(
        tally.failed[0].load(Ordering::Relaxed) >= 1,
        "the kill was not mid-traffic"
    );
    assert!(
        before > 50 && during > 50 && after > 50,
        "{before} {during} {after}"
    );
    assert!(restarted > 50, "the new instance served {restarted}");
    // Both instances spread requests over both backends alike.
    for (inst, counts) in tally.by_backend.lock().unwrap().iter().enumerate() {
        let counts: HashMap<String, u64> = counts.clone();
        for id in ["b0", "b1"] {
            let s = share(&counts, id);
            assert!((0.4..0.6).contains(&s), "instance {inst}: {counts:?}");
        }
    }
    // Nothing was written to the working directory or TMPDIR.
    let written: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(written.is_empty(), "files written: {written:?}");
    eprintln!(
        "two instances: survivor served {before}/{during}/{after} (before/after kill/after restart), \
         {} failed on the killed one and were retried, the new one served {restarted}",
        tally.failed[0].load(Ordering::Relaxed)
    );
    drop((u1, u2, u3));
}

// === twelve-factor ===

/// The key table in docs/configuration.md is generated from `KEYS`: every
/// key, its variable and its default. `UNSTICK_BLESS=1` rewrites it.
#[test]
fn keys_table_in_docs_lists_every_key() {
    const START: &str = "<!-- keys:start (generated from src/config/keys.rs; UNSTICK_BLESS=1 cargo test --test operations keys_table) -->\n";
    const END: &str = "<!-- keys:end -->";
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let page = std::fs::read_to_string(path).unwrap();
    let table = config::markdown_table();
    let (Some(s), Some(e)) = (page.find(START), page.find(END)) else {
        panic!("docs/configuration.md has no generated key table (markers {START:?} .. {END:?})");
    };
    let current = &page[s + START.len()..e];
    if current != table && std::env::var_os("UNSTICK_BLESS").is_some() {
        let updated = format!("{}{START}{table}{}", &page[..s], &page[e..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    assert_eq!(current, table, "docs/configuration.md key table is stale: run UNSTICK_BLESS=1 cargo test --test operations keys_table");
    for k in config::KEYS {
        let default = if k.default.is_empty() {
            "none".to_owned()
        } else {
            format!("`{}`", k.default)
        };
        let row = format!("| `{}` | `{}` | {default} |", k.path, k.env_var());
        assert!(current.contains(&row), "{row}");
    }
}

/// A log collector that goes away (stderr closed) must not stop unstick
/// from reloading or draining: logging to a closed stderr is not an error.
#[test]
fn a_closed_stderr_does_not_stop_reload_or_shutdown() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0", "--admin", "off"])
        .args(["--backend", "127.0.0.1:1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("\"event\":\"started\"") {
        line.clear();
        assert!(stderr.read_line(&mut line).unwrap() > 0, "no startup line");
    }
    drop(stderr);
    let pid = child.id() as i32;
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0);
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("unstick did not stop after SIGTERM with its stderr closed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}
