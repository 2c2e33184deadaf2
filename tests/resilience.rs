//! Resilience: zero client errors while backend processes are killed,
//! stopped and restarted.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use tokio::time::Instant;
use unstick::app::App;
use unstick::config::Config;
use unstick::testkit::client::{self, Conn};
use unstick::testkit::process::ChildBackend;
use unstick::testkit::{test_config, DeadPort, FakeBackend};
use unstick::upstream::State;

mod support;
use support::backends::{addrs, children, fake, fakes_named};
use support::local::front;

const BIN: &str = env!("CARGO_BIN_EXE_unstick");

/// `n` backend processes `b0`, `b1`, ... that drain for 300 ms on SIGTERM.
fn spawn_backends(n: usize) -> Vec<ChildBackend> {
    children(n, &["--drain", "300ms"])
}

/// Health checks as the chaos runner would set them: fast.
fn fast_health(config: &mut Config) {
    config.health.active.enabled = true;
    config.health.active.interval = Duration::from_millis(200);
    config.health.active.timeout = Duration::from_millis(200);
    config.health.active.rise = 1;
    config.health.active.fall = 2;
}

fn counter(app: &App, family: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.proxy.metrics.encode();
    text.lines()
        .filter(|l| l.starts_with(family) && !l.starts_with('#'))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter(|l| l[family.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// What the clients saw.
#[derive(Default)]
struct Tally {
    sent: AtomicU64,
    ok: AtomicU64,
    /// (start, end, status, body) of every failed request.
    failures: Mutex<Vec<(Instant, Instant, u16, String)>>,
}

/// `clients` loops sending `method` requests until `stop`.
fn start_clients(
    addr: SocketAddr,
    clients: usize,
    method: Method,
    stop: Arc<AtomicBool>,
    tally: Arc<Tally>,
) -> Vec<tokio::task::JoinHandle<()>> {
    (0..clients)
        .map(|i| {
            let (stop, tally, method) = (stop.clone(), tally.clone(), method.clone());
            tokio::spawn(async move {
                let mut conn = Conn::open(addr).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let body = if method == Method::POST {
                        Bytes::from(format!("client {i} request {n}"))
                    } else {
                        Bytes::new()
                    };
                    let start = Instant::now();
                    tally.sent.fetch_add(1, Ordering::Relaxed);
                    let result = conn.request(method.clone(), "/", &[], body).await;
                    let end = Instant::now();
                    match result {
                        Ok(r) if r.status.is_success() => {
                            tally.ok.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(r) => {
                            let text = r.text();
                            tally.failures.lock().unwrap().push((
                                start,
                                end,
                                r.status.as_u16(),
                                text,
                            ));
                        }
                        Err(e) => {
                            tally
                                .failures
                                .lock()
                                .unwrap()
                                .push((start, end, 0, e.to_string()));
                            conn = Conn::open(addr).await.unwrap();
                        }
                    }
                }
            })
        })
        .collect()
}

/// Kills one backend every `every` (round robin over them), restarting it
/// `restart_after` later, for `duration`. Returns each kill's time and the
/// time until unstick had it out of rotation.
async fn kill_loop(
    app: &App,
    backends: &mut [ChildBackend],
    duration: Duration,
    every: Duration,
    restart_after: Duration,
) -> Vec<(Instant, Option<Duration>)> {
    let start = Instant::now();
    let mut kills = Vec::new();
    let mut i = 0;
    tokio::time::sleep(every / 2).await;
    while start.elapsed() + restart_after < duration {
        let b = &mut backends[i % backends.len()];
        let killed_at = Instant::now();
        assert!(b.process.signal(libc::SIGKILL));
        let name = b.addr.to_string();
        let mut ejected = None;
        while killed_at.elapsed() < restart_after {
            let out = app
                .proxy
                .upstreams
                .find(&name)
                .is_some_and(|b| b.state() != State::Healthy);
            if out && ejected.is_none() {
                ejected = Some(killed_at.elapsed());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let addr = b.addr;
        let b = &mut backends[i % backends.len()];
        b.restart(BIN, &["--drain", "300ms"]);
        assert_eq!(b.addr, addr);
        kills.push((killed_at, ejected));
        i += 1;
        let next = killed_at + every;
        tokio::time::sleep_until(next).await;
    }
    let left = duration.saturating_sub(start.elapsed());
    tokio::time::sleep(left).await;
    kills
}

/// 3 backend processes, `clients` clients sending `method` requests for
/// 10 s, and one backend SIGKILLed every 2 s and restarted 1 s later.
async fn under_sigkill(
    method: Method,
    clients: usize,
) -> (App, Arc<Tally>, Vec<(Instant, Option<Duration>)>) {
    let mut backends = spawn_backends(3);
    let app = front(&addrs(&backends), fast_health).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let tasks = start_clients(app.proxy_addr, clients, method, stop.clone(), tally.clone());
    let kills = kill_loop(
        &app,
        &mut backends,
        Duration::from_secs(10),
        Duration::from_secs(2),
        Duration::from_secs(1),
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    (app, tally, kills)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_every_2s_gives_zero_errors_for_gets() {
    let (app, tally, kills) = under_sigkill(Method::GET, 8).await;

    let sent = tally.sent.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap();
    let retries = counter(&app, "unstick_retries_total", &[]);
    let eject_ms: Vec<u128> = kills
        .iter()
        .filter_map(|(_, e)| e.map(|d| d.as_millis()))
        .collect();
    eprintln!(
        "SIGKILL test: {sent} requests, {} errors, {retries} retries, {} kills, kill-to-ejection ms: {eject_ms:?}",
        failures.len(),
        kills.len()
    );
    assert!(kills.len() >= 4, "only {} kills", kills.len());
    assert!(sent > 1000, "only {sent} requests");
    assert!(
        failures.is_empty(),
        "client errors: {:?}",
        &failures[..failures.len().min(5)]
    );
    assert!(retries > 0.0, "no retry happened: the test did not test");
    assert!(
        eject_ms.len() == kills.len(),
        "a killed backend stayed in rotation: {kills:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_loses_only_posts_in_flight_at_the_kill() {
    let clients = 8;
    let (_app, tally, kills) = under_sigkill(Method::POST, clients).await;
    let sent = tally.sent.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap();
    eprintln!(
        "POST SIGKILL test: {sent} requests, {} failed, {} kills",
        failures.len(),
        kills.len()
    );
    assert!(sent > 1000, "only {sent} requests");
    // Each client has one request in flight at a time, so a kill can catch at most
    // `clients` of them.
    assert!(
        failures.len() <= kills.len() * clients,
        "{} failures for {} kills",
        failures.len(),
        kills.len()
    );
    for (start, end, status, body) in failures.iter() {
        assert!(
            !body.contains("could not connect") && !body.contains("no backend"),
            "a connect failure reached the client: {status} {body}"
        );
        assert_eq!(*status, 502, "{body}");
        // The request was in flight when some backend was killed.
        let slack = Duration::from_millis(50);
        assert!(
            kills
                .iter()
                .any(|(k, _)| *start <= *k + slack && *k <= *end + slack),
            "a failed request did not overlap any kill: {body}"
        );
    }
}

/// The kill bench's backend route (`benches/kills.sh`): `/split/MS` sends
/// the head alone, so a kill can land before the body; the body follows.
#[tokio::test]
async fn the_split_route_sends_the_head_before_the_body() {
    use tokio::io::AsyncWriteExt;
    let backend = fake("b7").await;
    // A body an hour away: whatever was read so far is the head alone.
    let mut s = tokio::net::TcpStream::connect(backend.addr).await.unwrap();
    s.write_all(b"GET /split/3600000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let head = read_until_head(&mut s).await;
    let text = String::from_utf8_lossy(&head).to_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("content-length: 3\r\n"), "{text}");
    assert!(
        text.ends_with("\r\n\r\n"),
        "body bytes came with the head: {text}"
    );
    // With a short gap the body follows, whole.
    let reply = client::get(backend.addr, "/split/20").await.unwrap();
    assert_eq!(
        (reply.status, reply.text()),
        (StatusCode::OK, "b7\n".to_owned())
    );
}

/// Reads from `s` until the end of a response head (10 s at most per read).
async fn read_until_head(s: &mut tokio::net::TcpStream) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .expect("the head within 10 s")
            .unwrap();
        assert!(n > 0, "closed before the head");
        got.extend_from_slice(&buf[..n]);
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_backend_leaves_rotation_and_nothing_waits_on_it() {
    let backends = spawn_backends(3);
    let mut config = test_config(&addrs(&backends));
    fast_health(&mut config);
    config.timeouts.response_header = Duration::from_secs(10);
    let interval = config.health.active.interval;
    let fall = config.health.active.fall;
    let timeout = config.health.active.timeout;
    let app = App::start(config).await.unwrap();
    for _ in 0..30 {
        assert_eq!(
            client::get(app.proxy_addr, "/").await.unwrap().status,
            StatusCode::OK
        );
    }

    let stopped = &backends[1];
    assert!(stopped.process.signal(libc::SIGSTOP));
    let at = Instant::now();
    let name = stopped.addr.to_string();
    let backend = app.proxy.upstreams.find(&name).unwrap();
    while backend.state() == State::Healthy && at.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = at.elapsed();
    eprintln!("SIGSTOP: out of rotation after {} ms", took.as_millis());
    assert_ne!(backend.state(), State::Healthy);
    // interval x fall, plus one probe timeout and one interval of phase.
    let bound = interval * (fall + 1) + timeout + Duration::from_millis(300);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");

    let mut slowest = Duration::ZERO;
    for _ in 0..60 {
        let t = Instant::now();
        let r = client::get(app.proxy_addr, "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        assert_ne!(r.backend(), "b1");
        slowest = slowest.max(t.elapsed());
    }
    // Nothing waited for the 10 s response timeout of the stopped backend.
    assert!(
        slowest < Duration::from_secs(2),
        "a request took {slowest:?}"
    );
    stopped.process.signal(libc::SIGCONT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_restart_with_sigterm_gives_zero_errors() {
    let mut backends = spawn_backends(3);
    let app = front(&addrs(&backends), fast_health).await;
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let mut tasks = start_clients(app.proxy_addr, 4, Method::GET, stop.clone(), tally.clone());
    tasks.extend(start_clients(
        app.proxy_addr,
        4,
        Method::POST,
        stop.clone(),
        tally.clone(),
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;

    for b in backends.iter_mut() {
        assert!(b.process.signal(libc::SIGTERM));
        let exited = tokio::task::block_in_place(|| b.process.wait_timeout(Duration::from_secs(5)));
        assert_eq!(
            exited.and_then(|s| s.code()),
            Some(0),
            "backend did not drain and exit"
        );
        b.restart(BIN, &["--drain", "300ms"]);
        let name = b.addr.to_string();
        let backend = app.proxy.upstreams.find(&name).unwrap();
        let t = Instant::now();
        while backend.state() != State::Healthy && t.elapsed() < Duration::from_secs(5) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            backend.state(),
            State::Healthy,
            "restarted backend not readmitted"
        );
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let sent = tally.sent.load(Ordering::Relaxed);
    let failures = tally.failures.lock().unwrap();
    eprintln!(
        "rolling restart: {sent} requests (GET and POST), {} errors",
        failures.len()
    );
    assert!(sent > 500, "only {sent} requests");
    assert!(
        failures.is_empty(),
        "errors: {:?}",
        &failures[..failures.len().min(5)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_backends_down_gives_503_at_once() {
    let backends = spawn_backends(3);
    let app = front(&addrs(&backends), fast_health).await;
    assert_eq!(
        client::get(app.proxy_addr, "/").await.unwrap().status,
        StatusCode::OK
    );
    for b in &backends {
        b.process.signal(libc::SIGKILL);
    }
    let t = Instant::now();
    while !app.proxy.upstreams.load().healthy.is_empty() && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut times = Vec::new();
    let mut conn = Conn::open(app.proxy_addr).await.unwrap();
    for _ in 0..11 {
        let t = Instant::now();
        let r = conn.get("/").await.unwrap();
        times.push(t.elapsed());
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers["retry-after"], "1");
    }
    times.sort();
    let median = times[times.len() / 2];
    eprintln!("all down: median 503 in {} us", median.as_micros());
    assert!(median < Duration::from_millis(50), "median {median:?}");
}

/// How a client reaches unstick in [`mass_crash`].
#[derive(Clone, Copy, Debug)]
enum Via {
    FastPath,
    Hyper,
    H2,
}

/// One GET the way `path` sends it.
async fn get_by(via: Via, addr: SocketAddr) -> client::Reply {
    match via {
        Via::FastPath | Via::Hyper => client::get(addr, "/").await.unwrap(),
        Via::H2 => {
            let conn = client::H2Conn::open(addr).await.unwrap();
            conn.get("/").await.unwrap()
        }
    }
}

/// Every backend SIGKILLed at once (active checks off, pooled connections
/// to each): the first request already gets the 503 with `Retry-After`
/// the next ones get, and they try no connect (no upstream error, retry
/// or budget spent is counted); a backend listening again on its port
/// serves again (the all-down probe: the time is printed, the bound is
/// generous).
async fn mass_crash(via: Via) {
    let mut backends = spawn_backends(3);
    let app = front(&addrs(&backends), |c| {
        c.http1_fast_path = !matches!(via, Via::Hyper)
    })
    .await;
    let mut served = std::collections::HashSet::new();
    for _ in 0..30 {
        let r = get_by(via, app.proxy_addr).await;
        assert_eq!(r.status, StatusCode::OK);
        served.insert(r.backend());
        if served.len() == backends.len() {
            break;
        }
    }
    assert_eq!(served.len(), backends.len(), "served by {served:?}");
    for b in &mut backends {
        assert!(b.process.signal(libc::SIGKILL));
        assert!(b.process.wait_timeout(Duration::from_secs(5)).is_some());
    }

    let first = get_by(via, app.proxy_addr).await;
    assert_eq!(
        first.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        first.text()
    );
    assert_eq!(first.headers["retry-after"], "1");
    assert!(
        first.text().starts_with("no backend available"),
        "{}",
        first.text()
    );
    assert!(app.proxy.upstreams.load().healthy.is_empty());
    let connects = counter(
        &app,
        "unstick_upstream_errors_total",
        &[("kind", "connect")],
    );
    assert!(
        (1.0..=3.0).contains(&connects),
        "{connects} connect errors for 3 backends"
    );
    let retries = counter(&app, "unstick_retries_total", &[]);
    let down = Instant::now();
    for _ in 0..20 {
        let r = get_by(via, app.proxy_addr).await;
        assert_eq!((r.status, r.text()), (first.status, first.text()));
        assert_eq!(r.headers["retry-after"], "1");
    }
    // Requests try a refused backend at most once per TRY_REFUSED_EVERY each.
    let every = unstick::health::TRY_REFUSED_EVERY.as_secs_f64();
    let tries = 3.0 * (down.elapsed().as_secs_f64() / every).ceil();
    let tried = counter(&app, "unstick_upstream_errors_total", &[]) - connects;
    assert!(
        tried <= tries,
        "{tried} connects in {:?} while none was in rotation",
        down.elapsed()
    );
    assert!(counter(&app, "unstick_retries_total", &[]) - retries <= tries);

    backends[1].restart(BIN, &[]);
    let listening = Instant::now();
    let mut r = get_by(via, app.proxy_addr).await;
    while r.status != StatusCode::OK && listening.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
        r = get_by(via, app.proxy_addr).await;
    }
    eprintln!(
        "mass crash ({via:?}): served again {} ms after the backend listened",
        listening.elapsed().as_millis()
    );
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.backend(), "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_crash_gives_503_at_once_then_serves_again_fast_path() {
    mass_crash(Via::FastPath).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_crash_gives_503_at_once_then_serves_again_hyper_path() {
    mass_crash(Via::Hyper).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mass_crash_gives_503_at_once_then_serves_again_h2() {
    mass_crash(Via::H2).await;
}

/// A backend ejected after its process died (active checks off, a long
/// `health.backoff`) is probed again soon, as its port refuses connects:
/// it is back in rotation well within the backoff once it listens again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_backend_listening_again_is_back_well_within_the_backoff() {
    let mut backends = spawn_backends(2);
    let mut config = test_config(&backends.iter().map(|b| b.addr).collect::<Vec<_>>());
    config.health.backoff = Duration::from_secs(10);
    let app = App::start(config).await.unwrap();
    let b = app
        .proxy
        .upstreams
        .find(&backends[0].addr.to_string())
        .unwrap();
    backends[0].process.signal(libc::SIGKILL);
    let _ = backends[0].process.wait_timeout(Duration::from_secs(5));
    let t = Instant::now();
    while b.state() != State::Ejected && t.elapsed() < Duration::from_secs(5) {
        let r = client::get(app.proxy_addr, "/").await.unwrap();
        assert_eq!((r.status, r.backend()), (StatusCode::OK, "b1".into()));
    }
    assert_eq!(b.state(), State::Ejected);
    backends[0].restart(BIN, &[]);
    let listening = Instant::now();
    while b.state() != State::Healthy && listening.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let back = listening.elapsed();
    eprintln!("back in rotation {} ms after listening", back.as_millis());
    assert_eq!(b.state(), State::Healthy);
    assert!(back < Duration::from_secs(5), "back after {back:?}");
}

/// Every backend ejected and no probe bringing one back (their health
/// path answers 500): a request still goes to one that refused before,
/// and once it listens again, it serves the request and is back in
/// rotation, rather than everyone getting 503s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_backend_ejected_one_that_listens_again_serves() {
    let mut backends = spawn_backends(2);
    let mut config = test_config(&backends.iter().map(|b| b.addr).collect::<Vec<_>>());
    config.health.active.path = "/status/500".into();
    let app = App::start(config).await.unwrap();
    for b in &mut backends {
        assert!(b.process.signal(libc::SIGKILL));
        assert!(b.process.wait_timeout(Duration::from_secs(5)).is_some());
    }
    let t = Instant::now();
    while !app.proxy.upstreams.load().healthy.is_empty() && t.elapsed() < Duration::from_secs(5) {
        let r = client::get(app.proxy_addr, "/").await.unwrap();
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    }
    assert!(app.proxy.upstreams.load().healthy.is_empty());
    backends[1].restart(BIN, &[]);
    let listening = Instant::now();
    let mut r = client::get(app.proxy_addr, "/").await.unwrap();
    while r.status != StatusCode::OK && listening.elapsed() < Duration::from_secs(5) {
        assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
        tokio::time::sleep(Duration::from_millis(5)).await;
        r = client::get(app.proxy_addr, "/").await.unwrap();
    }
    eprintln!(
        "served {} ms after the backend listened",
        listening.elapsed().as_millis()
    );
    assert_eq!((r.status, r.backend()), (StatusCode::OK, "b1".into()));
    let b1 = app
        .proxy
        .upstreams
        .find(&backends[1].addr.to_string())
        .unwrap();
    assert_eq!(b1.state(), State::Healthy);
    let b0 = app
        .proxy
        .upstreams
        .find(&backends[0].addr.to_string())
        .unwrap();
    assert_eq!(b0.state(), State::Ejected);
}

/// With more dead backends than `max_per_request` allows retries, a
/// request still finds the live one: a refused connect sent nothing and
/// is not counted against the request's retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_connects_do_not_use_up_a_request_s_retries() {
    let live = fake("live").await;
    let dead: Vec<DeadPort> = (0..4).map(|_| DeadPort::new()).collect();
    let mut addrs: Vec<SocketAddr> = dead.iter().map(|d| d.addr).collect();
    addrs.push(live.addr);
    let mut config = test_config(&addrs);
    config.retries.max_per_request = 1;
    let app = App::start(config).await.unwrap();
    for _ in 0..20 {
        let r = client::get(app.proxy_addr, "/").await.unwrap();
        assert_eq!((r.status, r.backend()), (StatusCode::OK, "live".into()));
        if app.proxy.upstreams.load().healthy.len() == 1 {
            break;
        }
    }
    assert_eq!(app.proxy.upstreams.load().healthy.len(), 1);
    assert_eq!(
        counter(
            &app,
            "unstick_upstream_errors_total",
            &[("kind", "connect")]
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget() {
    let fakes = fakes_named("r", 3).await;
    let mut config = test_config(&addrs(&fakes));
    // Keep every backend in rotation so each request can be retried.
    config.health.eject_after_failures = 1000;
    let ratio = config.retries.budget_ratio;
    let per_second = f64::from(config.retries.budget_min_per_second);
    let app = App::start(config).await.unwrap();
    let start = Instant::now();
    let requests = 600u64;
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let addr = app.proxy_addr;
        tasks.push(tokio::spawn(async move {
            for _ in 0..requests / 6 {
                let r = client::get(addr, "/reset").await.unwrap();
                assert_eq!(r.status, StatusCode::BAD_GATEWAY);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let seconds = start.elapsed().as_secs_f64().ceil().min(10.0);
    let retries = counter(&app, "unstick_retries_total", &[]);
    let exhausted = counter(&app, "unstick_retry_budget_exhausted_total", &[]);
    let budget = ratio * requests as f64 + per_second * seconds;
    eprintln!("budget test: {requests} requests, {retries} retries (budget {budget:.0}), {exhausted} refused by the budget");
    assert!(
        retries <= budget,
        "{retries} retries over a budget of {budget}"
    );
    assert!(exhausted > 0.0, "the budget never refused a retry");
    // Without a budget each request would have been retried twice.
    assert!(retries < (2 * requests) as f64 / 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_ejection_and_backoff_probe_readmission() {
    // Active checks off: a refused connect ejects at once, and a backoff
    // probe brings the backend back once it listens again.
    let mut backends = spawn_backends(2);
    let app = front(&addrs(&backends), |c| {
        c.health.backoff = Duration::from_millis(200)
    })
    .await;
    backends[0].process.signal(libc::SIGKILL);
    let _ = backends[0].process.wait_timeout(Duration::from_secs(2));
    for _ in 0..4 {
        let r = client::get(app.proxy_addr, "/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    let name = backends[0].addr.to_string();
    let b = app.proxy.upstreams.find(&name).unwrap();
    assert_eq!(b.state(), State::Ejected);
    assert_eq!(
        counter(
            &app,
            "unstick_ejections_total",
            &[("backend", &name), ("reason", "connect_refused")]
        ),
        1.0
    );
    backends[0].restart(BIN, &[]);
    let t = Instant::now();
    while b.state() != State::Healthy && t.elapsed() < Duration::from_secs(5) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(b.state(), State::Healthy);
    let mut seen = std::collections::HashSet::new();
    for _ in 0..6 {
        seen.insert(client::get(app.proxy_addr, "/").await.unwrap().backend());
    }
    assert!(
        seen.contains("b0"),
        "readmitted backend got no traffic: {seen:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn post_with_idempotency_key_is_retried_after_a_reset() {
    let fakes = fakes_named("k", 2).await;
    let mut config = test_config(&addrs(&fakes));
    config.health.eject_after_failures = 1000;
    let app = App::start(config).await.unwrap();
    // Without the key: one attempt, 502.
    let r = client::request(app.proxy_addr, Method::POST, "/reset", &[], "body")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    assert_eq!(fakes.iter().map(FakeBackend::requests).sum::<u64>(), 1);
    // With it: retried on the other backend (which resets too). A retry
    // never goes back to a backend that failed this request.
    let r = client::request(
        app.proxy_addr,
        Method::POST,
        "/reset",
        &[("idempotency-key", "abc")],
        "body",
    )
    .await
    .unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY);
    let counts: Vec<u64> = fakes.iter().map(FakeBackend::requests).collect();
    assert_eq!(counts.iter().sum::<u64>(), 3, "{counts:?}");
    assert!(counts.iter().all(|&c| c >= 1), "{counts:?}");
    assert_eq!(
        counter(&app, "unstick_retries_total", &[("reason", "reset")]),
        1.0
    );
}

/// A backend that closes its connection after every response without
/// saying so (no `Connection: close`), as one whose keep-alive timeout
/// races the proxy's reuse: every request is answered 200 (a pooled
/// connection found closed is not the backend's failure: the request
/// goes again on a new connection), and the backend never leaves rotation.
async fn closing_backend_is_never_a_failure(fast_path: bool) {
    use unstick::testkit::scripted::{Scripted, ScriptedBackend};
    let backend = ScriptedBackend::start(|_| {
        Scripted::bytes(&b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n"[..]).then_close()
    })
    .await;
    let mut config = test_config(&[backend.addr]);
    config.http1_fast_path = fast_path;
    let app = App::start(config).await.unwrap();
    let mut conn = Conn::open(app.proxy_addr).await.unwrap();
    for i in 0..300 {
        let r = conn.get("/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "sequential GET {i}: {}", r.text());
    }
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let addr = app.proxy_addr;
        tasks.push(tokio::spawn(async move {
            let mut conn = Conn::open(addr).await.unwrap();
            for i in 0..250 {
                let r = conn.get("/").await.unwrap();
                assert_eq!(r.status, StatusCode::OK, "concurrent GET {i}: {}", r.text());
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let name = backend.addr.to_string();
    let b = app.proxy.upstreams.find(&name).unwrap();
    assert_eq!(b.state(), State::Healthy);
    assert_eq!(counter(&app, "unstick_ejections_total", &[]), 0.0);
    assert_eq!(counter(&app, "unstick_upstream_errors_total", &[]), 0.0);
    let stale = counter(&app, "unstick_stale_connections_total", &[]);
    eprintln!(
        "fast path {fast_path}: 1,300 GETs, {} connections, {stale} stale",
        backend.accepts()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_after_each_response_is_not_failing_fast_path() {
    closing_backend_is_never_a_failure(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_closing_after_each_response_is_not_failing_hyper_path() {
    closing_backend_is_never_a_failure(false).await;
}

/// A backend announcing `Keep-Alive: timeout=1`: its connections are
/// reused back to back, and not once they have idled half a second (the
/// announced timeout less a margin).
async fn announced_keep_alive_is_kept(fast_path: bool) {
    use unstick::testkit::scripted::{Scripted, ScriptedBackend};
    let backend = ScriptedBackend::start(|_| {
        Scripted::bytes(
            &b"HTTP/1.1 200 OK\r\nkeep-alive: timeout=1, max=100\r\ncontent-length: 3\r\n\r\nok\n"
                [..],
        )
    })
    .await;
    let mut config = test_config(&[backend.addr]);
    config.http1_fast_path = fast_path;
    let app = App::start(config).await.unwrap();
    let mut conn = Conn::open(app.proxy_addr).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(backend.accepts(), 1);
    // Idle for longer than the backend keeps connections (less the margin):
    // a new one is made.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(conn.get("/").await.unwrap().status, StatusCode::OK);
    assert_eq!(backend.accepts(), 2, "fast path {fast_path}");
    assert_eq!(counter(&app, "unstick_stale_connections_total", &[]), 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_keep_alive_timeout_is_kept_fast_path() {
    announced_keep_alive_is_kept(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announced_keep_alive_timeout_is_kept_hyper_path() {
    announced_keep_alive_is_kept(false).await;
}

/// What one request met on a connection the backend closed under it.
struct StaleCase {
    status: StatusCode,
    stale: f64,
    upstream_errors: f64,
    connections: u64,
}

/// A backend that closes each connection a second after answering on it
/// (reading nothing more): a first GET, then `method` with `headers` sent
/// at once on the pooled connection, which the backend closes before it
/// answers.
async fn request_on_a_closing_connection(
    fast_path: bool,
    method: Method,
    headers: &[(&str, &str)],
) -> StaleCase {
    use unstick::testkit::scripted::{Scripted, ScriptedBackend};
    let backend = ScriptedBackend::start(|_| Scripted {
        pieces: vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_vec(),
            Vec::new(),
        ],
        pause: Duration::from_secs(1),
        close: true,
    })
    .await;
    let mut config = test_config(&[backend.addr]);
    config.http1_fast_path = fast_path;
    let app = App::start(config).await.unwrap();
    // One client connection: its requests are served by one worker, which
    // reuses its own pooled backend connections.
    let mut conn = Conn::open(app.proxy_addr).await.unwrap();
    assert_eq!(conn.get("/").await.unwrap().status, StatusCode::OK);
    let r = conn.request(method, "/", headers, "body").await.unwrap();
    let b = app.proxy.upstreams.find(&backend.addr.to_string()).unwrap();
    assert_eq!(b.state(), State::Healthy);
    assert_eq!(b.consecutive_failures(), 0);
    StaleCase {
        status: r.status,
        stale: counter(&app, "unstick_stale_connections_total", &[]),
        upstream_errors: counter(&app, "unstick_upstream_errors_total", &[]),
        connections: backend.accepts(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_on_a_connection_the_backend_closed_goes_again_on_a_new_one() {
    for fast_path in [true, false] {
        // A GET, and a POST with a key, are sent again: the client never knows.
        let key = [("idempotency-key", "k1")];
        for (method, headers) in [(Method::GET, &[][..]), (Method::POST, &key[..])] {
            let case = request_on_a_closing_connection(fast_path, method.clone(), headers).await;
            let what = format!("{method} fast path {fast_path}");
            assert_eq!(case.status, StatusCode::OK, "{what}");
            assert_eq!(case.stale, 1.0, "{what}");
            assert_eq!(case.connections, 2, "{what}");
            assert_eq!(case.upstream_errors, 0.0, "{what}");
        }
        // A POST without a key, written before the backend closed, is not
        // sent twice: 502, and still no failure of the backend's.
        let case = request_on_a_closing_connection(fast_path, Method::POST, &[]).await;
        assert_eq!(
            case.status,
            StatusCode::BAD_GATEWAY,
            "fast path {fast_path}"
        );
        assert_eq!(case.stale, 1.0);
        assert_eq!(case.connections, 1);
        assert_eq!(case.upstream_errors, 0.0);
    }
}

/// A backend that sends a response head promising a 20-byte body and then
/// closes its connection (as one SIGKILLed between its head and its body
/// writes), beside a healthy one (`ok`), with unstick in front; `edit`
/// tweaks the config.
async fn dying_after_head(
    edit: impl FnOnce(&mut Config),
) -> (
    App,
    unstick::testkit::scripted::ScriptedBackend,
    FakeBackend,
) {
    use unstick::testkit::scripted::{Scripted, ScriptedBackend};
    let dying = ScriptedBackend::start(|_| {
        Scripted::bytes(&b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n"[..]).then_close()
    })
    .await;
    let healthy = fake("ok").await;
    let mut config = test_config(&[dying.addr, healthy.addr]);
    config.health.eject_after_failures = 1000;
    edit(&mut config);
    (App::start(config).await.unwrap(), dying, healthy)
}

/// Sends `method path` with `headers` until the dying backend has received
/// one such request (round robin alternates; bounded), checking that every
/// answer from the healthy backend is its whole 200. Returns the answer to
/// the request the dying backend took.
async fn until_the_dying_backend_takes_one(
    app: &App,
    dying: &unstick::testkit::scripted::ScriptedBackend,
    (method, path, headers): (Method, &str, &[(&str, &str)]),
) -> Result<client::Reply, client::Error> {
    let taken = |d: &unstick::testkit::scripted::ScriptedBackend| {
        d.received().iter().filter(|r| r.path() == path).count()
    };
    let before = taken(dying);
    for _ in 0..8 {
        let r = client::request(app.proxy_addr, method.clone(), path, headers, "body").await;
        if taken(dying) > before {
            return r;
        }
        let r = r.expect("the healthy backend answers");
        assert_eq!((r.status, r.text()), (StatusCode::OK, "ok\n".into()));
    }
    panic!("the dying backend never got a {method} {path}");
}

/// A response held until whole (it is small): the backend that dies after
/// its head is retried on the other, and a GET and a keyed POST get the
/// complete 200 as if nothing had happened, counted as retries caused by
/// `after_head`. A POST without a key is not sent twice: its client sees
/// the cut response, as without holding.
async fn held_responses_hide_a_backend_dying_after_its_head(fast_path: bool) {
    let (app, dying, healthy) = dying_after_head(|c| c.http1_fast_path = fast_path).await;
    let key = [("idempotency-key", "k1")];
    for (method, path, headers) in [
        (Method::GET, "/get", &[][..]),
        (Method::POST, "/keyed", &key[..]),
    ] {
        let what = format!("{method} fast path {fast_path}");
        let r = until_the_dying_backend_takes_one(&app, &dying, (method, path, headers))
            .await
            .unwrap_or_else(|e| panic!("{what}: the client saw the failure: {e}"));
        assert_eq!(
            (r.status, r.text()),
            (StatusCode::OK, "ok\n".into()),
            "{what}"
        );
        assert_eq!(r.backend(), "ok", "{what}");
    }
    let retried = [("reason", "after_head")];
    assert_eq!(counter(&app, "unstick_retries_total", &retried), 2.0);
    let after_head = [("kind", "after_head")];
    assert_eq!(
        counter(&app, "unstick_upstream_errors_total", &after_head),
        2.0
    );
    assert_eq!(counter(&app, "unstick_client_errors_total", &[]), 0.0);

    let healthy_before = healthy.requests();
    let plain = (Method::POST, "/plain", &[][..]);
    let r = until_the_dying_backend_takes_one(&app, &dying, plain).await;
    assert!(
        r.is_err(),
        "fast path {fast_path}: a non-keyed POST was replayed: {r:?}"
    );
    let answered = healthy.requests() - healthy_before;
    let plain_on_dying = dying
        .received()
        .iter()
        .filter(|r| r.path() == "/plain")
        .count();
    assert_eq!(plain_on_dying, 1);
    // Only the POSTs answered whole before the one the dying backend took.
    assert!(answered <= 7, "{answered}");
    assert_eq!(counter(&app, "unstick_retries_total", &retried), 2.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_responses_hide_a_backend_dying_after_its_head_fast_path() {
    held_responses_hide_a_backend_dying_after_its_head(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_responses_hide_a_backend_dying_after_its_head_hyper_path() {
    held_responses_hide_a_backend_dying_after_its_head(false).await;
}

/// `retries.response_buffer = 0`: nothing is held; a GET whose backend dies
/// after its head reaches the client cut short, as a failure after the head.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn response_buffer_zero_passes_the_head_on_at_once() {
    for fast_path in [true, false] {
        let (app, dying, _healthy) = dying_after_head(|c| {
            c.retries.response_buffer = 0;
            c.http1_fast_path = fast_path;
        })
        .await;
        let get = (Method::GET, "/get", &[][..]);
        let r = until_the_dying_backend_takes_one(&app, &dying, get).await;
        assert!(r.is_err(), "fast path {fast_path}: {r:?}");
        assert_eq!(counter(&app, "unstick_retries_total", &[]), 0.0);
        let after_head = [("kind", "after_head")];
        let cut = counter(&app, "unstick_upstream_errors_total", &after_head);
        assert_eq!(cut, 1.0, "fast path {fast_path}");
    }
}

/// A backend answering with `head` then, a minute later, `rest` (the
/// connection open meanwhile), behind unstick (on the fast path or not)
/// with a 1 s hold time;
/// returns what a GET's client has read once `seen` holds of it, and how
/// long that took. Panics if it never does within 10 s.
async fn read_while_the_backend_waits(
    head: &'static [u8],
    rest: &'static [u8],
    (response_buffer, fast_path): (usize, bool),
    seen: impl Fn(&[u8]) -> bool,
) -> (Vec<u8>, Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use unstick::testkit::scripted::{Scripted, ScriptedBackend};
    let backend =
        ScriptedBackend::start(move |_| Scripted::pieces(&[head, rest], Duration::from_secs(60)))
            .await;
    let mut config = test_config(&[backend.addr]);
    config.retries.response_buffer = response_buffer;
    config.retries.response_hold = Duration::from_secs(1);
    config.http1_fast_path = fast_path;
    let app = App::start(config).await.unwrap();
    let mut s = tokio::net::TcpStream::connect(app.proxy_addr)
        .await
        .unwrap();
    let start = Instant::now();
    s.write_all(b"GET /stream HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .unwrap();
    let mut got = Vec::new();
    let read = async {
        while !seen(&got) {
            let mut buf = [0u8; 4096];
            let n = s.read(&mut buf).await.unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the first bytes arrive while the backend waits");
    (got, start.elapsed())
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// An event stream is never held: its first event reaches the client while
/// the backend keeps the stream open, well before the hold time (1 s here)
/// would have let it go. A chunked body of another type, as slow, is held
/// for that time first (which shows the hold was in force).
async fn an_event_stream_is_never_held(fast_path: bool) {
    let sse = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n\
        transfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n";
    let rest = b"b\r\ndata: two\n\n\r\n0\r\n\r\n";
    let held = (64 * 1024, fast_path);
    let (got, took) =
        read_while_the_backend_waits(sse, rest, held, |g| contains(g, b"data: one")).await;
    assert!(!contains(&got, b"data: two"));
    assert!(
        took < Duration::from_secs(1),
        "the first event took {took:?}"
    );
    eprintln!("fast path {fast_path}: first event after {took:?}");

    let plain = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\
        transfer-encoding: chunked\r\n\r\nb\r\ndata: one\n\n\r\n";
    let (_, took) =
        read_while_the_backend_waits(plain, rest, held, |g| contains(g, b"data: one")).await;
    assert!(took >= Duration::from_secs(1), "not held: {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_never_held_fast_path() {
    an_event_stream_is_never_held(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_is_never_held_hyper_path() {
    an_event_stream_is_never_held(false).await;
}

/// A body larger than `retries.response_buffer` is not held: its head
/// reaches the client while the backend has sent only part of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_buffer_streams() {
    let head = b"HTTP/1.1 200 OK\r\ncontent-length: 2048\r\n\r\nfirst part";
    let rest = &[b'x'; 2038];
    for fast_path in [true, false] {
        let (got, took) = read_while_the_backend_waits(head, rest, (1024, fast_path), |g| {
            contains(g, b"first part")
        })
        .await;
        assert!(got.starts_with(b"HTTP/1.1 200 OK\r\n"));
        assert!(
            took < Duration::from_secs(1),
            "fast path {fast_path}: held: {took:?}"
        );
    }
}
