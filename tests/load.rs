//! `unstick load` and the load engine against in-process servers that count what they get.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::Value;
use tokio::net::TcpListener;
use unstick::load::{Engine, ErrorClass, FixedRequest, Record, Report, Workload};
use unstick::testkit::{BackendOptions, DeadPort, FakeBackend};

mod support;
use support::backends::fake;
use support::load::{self, url};

const BIN: &str = env!("CARGO_BIN_EXE_unstick");

// --- a small counting server -------------------------------------------------------

/// What the test server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    http2: AtomicU64,
    connections: AtomicU64,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Reply = Response<Full<Bytes>>;

fn reply(status: u16, body: &'static str) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = StatusCode::from_u16(status).unwrap();
    r
}

/// Serves `handler` on 127.0.0.1:0 (HTTP/1.1 and h2c; with `tls`, HTTPS with
/// a self-signed certificate and ALPN h2 / http/1.1).
async fn serve<F, Fut>(tls: bool, handler: F) -> Server
where
    F: Fn(Request<Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let acceptor = tls.then(tls_acceptor);
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let (s, handler, acceptor) = (s.clone(), handler.clone(), acceptor.clone());
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<Incoming>| {
                    s.requests.fetch_add(1, Ordering::Relaxed);
                    if req.version() == Version::HTTP_2 {
                        s.http2.fetch_add(1, Ordering::Relaxed);
                    }
                    let fut = handler(req);
                    async move { Ok::<_, std::convert::Infallible>(fut.await) }
                });
                let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                match acceptor {
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), service).await;
                    }
                    Some(a) => {
                        if let Ok(stream) = a.accept(tcp).await {
                            let _ = builder
                                .serve_connection(TokioIo::new(stream), service)
                                .await;
                        }
                    }
                }
            });
        }
    });
    Server { addr, seen, task }
}

fn tls_acceptor() -> tokio_rustls::TlsAcceptor {
    let ck = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(ck.signing_key.serialize_der().into());
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![ck.cert.der().clone()], key)
    .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    tokio_rustls::TlsAcceptor::from(Arc::new(config))
}

async fn ok(_req: Request<Incoming>) -> Reply {
    reply(200, "ok\n")
}

// --- running the binary -------------------------------------------------------------

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
    json: Option<Value>,
}

fn json_path(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("unstick-load-{}-{name}.json", std::process::id()))
}

/// Runs `unstick load ARGS` with `--json` and reads it back.
async fn load(name: &str, args: &[&str]) -> Run {
    let path = json_path(name);
    let _ = std::fs::remove_file(&path);
    let out = tokio::process::Command::new(BIN)
        .arg("load")
        .args(args)
        .arg("--json")
        .arg(&path)
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    let json = std::fs::read_to_string(&path)
        .ok()
        .map(|t| serde_json::from_str(&t).expect("--json writes JSON"));
    let _ = std::fs::remove_file(&path);
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}

/// Runs `unstick load URL FLAGS` (the flags split at spaces) with `--json`.
async fn load_url(name: &str, url: &str, flags: &str) -> Run {
    let mut args = vec![url];
    args.extend(flags.split_whitespace());
    load(name, &args).await
}

/// The words after `key` on the summary line that starts with it.
fn line<'a>(stdout: &'a str, key: &str) -> Vec<&'a str> {
    let l = stdout
        .lines()
        .find(|l| l.starts_with(key))
        .unwrap_or_else(|| panic!("no `{key}` line in:\n{stdout}"));
    l[key.len()..]
        .split(|c: char| c.is_whitespace() || c == ',')
        .filter(|w| !w.is_empty())
        .collect()
}

fn num(word: &str) -> f64 {
    word.trim_end_matches("ms")
        .trim_end_matches("/s")
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("`{word}` is not a number"))
}

// --- counts -------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_5000_sends_exactly_5000() {
    let backend = fake("b1").await;
    let run = load_url("5000", &url(backend.addr, "/"), "--requests 5000 -c 16").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(backend.requests(), 5000);
    let j = run.json.unwrap();
    assert_eq!(j["requests"], 5000);
    assert_eq!(j["responses"], 5000);
    assert_eq!(j["status"]["200"], 5000);
    assert_eq!(j["connections_opened"], 16);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_500_for_4s_sends_2000() {
    let server = serve(false, ok).await;
    let t = Instant::now();
    let u = url(server.addr, "/");
    let run = load_url("rate", &u, "--rate 500 --duration 4s -c 8").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let sent = server.seen.requests.load(Ordering::Relaxed);
    assert!((1960..=2040).contains(&sent), "sent {sent}");
    let j = run.json.unwrap();
    let rate = j["rate"].as_f64().unwrap();
    assert!((490.0..=510.0).contains(&rate), "rate {rate}");
    assert_eq!(j["target_rate"], 500.0);
    assert_eq!(j["model"], "open");
    // Spread over the duration, not sent in a burst.
    let timeline = j["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 4, "{timeline:?}");
    for s in &timeline[..4] {
        let n = s["requests"].as_u64().unwrap();
        assert!((400..=600).contains(&n), "second {s}");
    }
    assert!(t.elapsed() >= Duration::from_secs(4));
}

// --- coordinated omission ------------------------------------------------------------

/// A server that takes 20 ms per request and, once, freezes for 1 s: every
/// request in it or arriving during it waits for the end of the freeze.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_is_not_hidden_by_the_open_model() {
    let stall_until: Arc<Mutex<Option<tokio::time::Instant>>> = Arc::default();
    let count = Arc::new(AtomicU64::new(0));
    let server = serve(false, move |_req| {
        let (stall_until, count) = (stall_until.clone(), count.clone());
        async move {
            if count.fetch_add(1, Ordering::Relaxed) == 500 {
                let until = tokio::time::Instant::now() + Duration::from_secs(1);
                *stall_until.lock().unwrap() = Some(until);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            let until = *stall_until.lock().unwrap();
            if let Some(u) = until {
                tokio::time::sleep_until(u).await;
            }
            reply(200, "ok\n")
        }
    })
    .await;
    let report = load::run_get(&url(server.addr, "/"), |s| {
        s.connections = 32;
        s.rate = Some(500.0);
        s.duration = Some(Duration::from_secs(3));
    })
    .await;
    eprintln!("{report}");
    let l = report.latency_ms.clone().unwrap();
    assert_eq!(report.requests, 1500);
    assert_eq!(report.errors.total(), 0);
    assert!(l.p99_9 >= 1000.0, "p99.9 {} ms hides the stall", l.p99_9);
    // The requests that waited for a free connection during the stall count
    // from their slot, so the delay spreads over a third of the run. Counted
    // from their send time (coordinated omission), only the ~40 requests
    // caught in flight would be slow, and p90 would be ~20 ms.
    assert!(l.p90 >= 300.0, "p90 {} ms hides the stall", l.p90);
    assert!(report.late >= 100, "late {}", report.late);
    assert!(l.p50 < 200.0, "p50 {} ms", l.p50);
}

// --- error classes -------------------------------------------------------------------

async fn run_engine(u: &str, requests: u64, timeout: Duration) -> Report {
    load::run_get(u, |s| {
        s.connections = 2;
        s.requests = Some(requests);
        s.timeout = timeout;
    })
    .await
}

fn only(report: &Report, class: ErrorClass, n: u64) {
    for c in ErrorClass::ALL {
        let want = if c == class { n } else { 0 };
        assert_eq!(report.errors.get(c), want, "{c:?} in {:?}", report.errors);
    }
    assert_eq!(report.responses, 0);
    assert!(report.error_examples.contains_key(class.name()));
}

#[tokio::test]
async fn refused_when_nothing_listens() {
    let dead = DeadPort::new();
    let report = run_engine(&url(dead.addr, "/"), 20, Duration::from_secs(2)).await;
    only(&report, ErrorClass::Refused, 20);
}

#[tokio::test]
async fn reset_when_the_server_closes_mid_request() {
    let backend = FakeBackend::start(BackendOptions::default()).await;
    let report = run_engine(&url(backend.addr, "/reset"), 20, Duration::from_secs(2)).await;
    only(&report, ErrorClass::Reset, 20);
    assert_eq!(backend.requests(), 20);
}

#[tokio::test]
async fn timeout_when_the_server_never_answers() {
    let backend = FakeBackend::start(BackendOptions::default()).await;
    let t = Instant::now();
    let report = run_engine(&url(backend.addr, "/hang"), 4, Duration::from_millis(300)).await;
    only(&report, ErrorClass::Timeout, 4);
    // Two connections, two rounds of 300 ms.
    assert!(t.elapsed() >= Duration::from_millis(600));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[tokio::test]
async fn the_timeout_is_per_request_not_per_connection() {
    // One connection, 250 ms per answer, 400 ms timeout: every request fits
    // its own timeout although the connection outlives several of them.
    let backend = FakeBackend::start(BackendOptions::default()).await;
    let report = load::run_get(&url(backend.addr, "/slow/250"), |s| {
        s.connections = 1;
        s.requests = Some(4);
        s.timeout = Duration::from_millis(400);
    })
    .await;
    assert_eq!(
        (report.responses, report.errors.total()),
        (4, 0),
        "{report}"
    );
    assert!(report.latency_ms.unwrap().min >= 250.0);
}

// --- the workload hook ---------------------------------------------------------------

/// A workload with per-user state that sends origin-form requests without
/// `Host` and keeps every record.
#[derive(Clone, Default)]
struct Recording {
    records: Arc<Mutex<Vec<Row>>>,
}

/// User, seq, status, `X-Backend-Id`, body.
type Row = (usize, u64, u16, String, String);

impl Workload for Recording {
    type User = u32;

    fn user(&self, _index: usize) -> u32 {
        0
    }

    fn request(&self, sent: &mut u32) -> Option<Request<Bytes>> {
        *sent += 1;
        let path = if (*sent).is_multiple_of(2) {
            "/headers"
        } else {
            "/status/404"
        };
        Some(Request::get(path).body(Bytes::new()).unwrap())
    }

    fn wants_body(&self) -> bool {
        true
    }

    fn record(&self, _sent: &mut u32, r: &Record<'_>) {
        let unstick::load::Outcome::Response(reply) = &r.outcome else {
            panic!("request failed: {:?}", r.outcome);
        };
        let id = reply
            .headers
            .get("x-backend-id")
            .unwrap()
            .to_str()
            .unwrap()
            .to_owned();
        let body = String::from_utf8_lossy(reply.body).into_owned();
        assert_eq!(reply.body_len as usize, reply.body.len());
        assert!(r.done >= r.sent && r.latency() <= r.done - r.intended.min(r.sent));
        self.records
            .lock()
            .unwrap()
            .push((r.user, r.seq, reply.status.as_u16(), id, body));
    }
}

#[tokio::test]
async fn every_request_reaches_the_workload_record_hook() {
    let backend = fake("b7").await;
    let (settings, _) = load::get(&url(backend.addr, "/"), |s| {
        s.connections = 3;
        s.threads = 2;
        s.requests = Some(60);
    });
    let recording = Recording::default();
    let engine = Engine::new(settings, recording.clone()).unwrap();
    let live = engine.live();
    let report = engine.run().await.unwrap();
    assert_eq!(live.snapshot().requests, 60);
    assert_eq!((report.requests, report.responses), (60, 60));
    let mut records = recording.records.lock().unwrap().clone();
    let notfound = records.iter().filter(|r| r.2 == 404).count() as u64;
    assert_eq!(report.status.get(&404), Some(&notfound));
    assert_eq!(report.status.get(&200), Some(&(60 - notfound)));
    // Each user alternates, starting with a 404: 3 users, 60 requests.
    assert!((30..=32).contains(&notfound), "{notfound}");
    records.sort_by_key(|r| r.1);
    let seqs: Vec<u64> = records.iter().map(|r| r.1).collect();
    assert_eq!(seqs, (0..60).collect::<Vec<_>>());
    let host = format!("host: {}", backend.addr);
    for (user, _, status, id, body) in &records {
        assert!(*user < 3);
        assert_eq!(id, "b7");
        match status {
            404 => assert_eq!(body, "b7\n"),
            200 => assert!(body.contains(&host), "{body}"),
            other => panic!("status {other}"),
        }
    }
}

/// User 0 panics while it is made; the others must still start and finish.
struct FirstUserPanics(FixedRequest);

impl Workload for FirstUserPanics {
    type User = ();

    fn user(&self, index: usize) {
        assert!(index != 0, "user 0 fails on purpose");
    }

    fn request(&self, _user: &mut ()) -> Option<Request<Bytes>> {
        Some(self.0.build())
    }
}

#[tokio::test]
async fn a_user_that_panics_does_not_hold_back_the_others() {
    let backend = FakeBackend::start(BackendOptions::default()).await;
    let (settings, fixed) = load::get(&url(backend.addr, "/"), |s| {
        s.connections = 3;
        s.requests = Some(30);
    });
    let engine = Engine::new(settings, FirstUserPanics(fixed)).unwrap();
    let report = tokio::time::timeout(Duration::from_secs(10), engine.run())
        .await
        .expect("the run ends")
        .unwrap();
    assert_eq!((report.requests, report.responses), (30, 30));
}

// --- the CLI: JSON, summary, exit codes -------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_matches_the_printed_summary() {
    let n = Arc::new(AtomicU64::new(0));
    let server = serve(false, move |_req| {
        let n = n.clone();
        async move {
            match n.fetch_add(1, Ordering::Relaxed) % 4 {
                0 => reply(503, "busy\n"),
                _ => reply(200, "ok\n"),
            }
        }
    })
    .await;
    let run = load_url("json", &url(server.addr, "/x?y=1"), "-n 400 -c 4 -t 2").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = run.json.unwrap();
    let out = &run.stdout;

    assert_eq!(
        line(out, "target"),
        ["GET", &url(server.addr, "/x?y=1"), "(HTTP/1.1)"]
    );
    assert_eq!(j["url"], url(server.addr, "/x?y=1"));
    assert_eq!(j["method"], "GET");
    assert_eq!(
        line(out, "model"),
        ["closed:", "4", "connections", "2", "threads"]
    );
    assert_eq!(
        (j["connections"].as_u64(), j["threads"].as_u64()),
        (Some(4), Some(2))
    );

    let req = line(out, "requests");
    assert_eq!(num(req[0]), j["requests"].as_f64().unwrap());
    assert_eq!(num(req[2]), j["elapsed_s"].as_f64().unwrap());
    assert!((num(req[3]) - j["rate"].as_f64().unwrap()).abs() < 0.051);
    assert_eq!(j["requests"], 400);

    let resp = line(out, "responses");
    assert_eq!(num(resp[0]), j["responses"].as_f64().unwrap());
    assert_eq!(num(resp[2]), j["late"].as_f64().unwrap());
    assert_eq!(num(resp[5]), j["connections_opened"].as_f64().unwrap());

    let lat = line(out, "latency");
    let l = &j["latency_ms"];
    for (i, key) in ["p50", "p90", "p99", "p99.9", "max"].iter().enumerate() {
        assert_eq!(lat[2 * i], *key);
        assert_eq!(num(lat[2 * i + 1]), l[key].as_f64().unwrap(), "{key}");
    }
    assert!(l["p50"].as_f64().unwrap() <= l["p99"].as_f64().unwrap());

    assert_eq!(line(out, "status"), ["200", "300", "503", "100"]);
    assert_eq!(j["status"]["200"], 300);
    assert_eq!(j["status"]["503"], 100);

    let err = line(out, "errors");
    for (i, key) in ["refused", "reset", "timeout", "other"].iter().enumerate() {
        assert_eq!(err[2 * i], *key);
        assert_eq!(num(err[2 * i + 1]), j["errors"][key].as_f64().unwrap());
    }

    let timeline = j["timeline"].as_array().unwrap();
    let total: u64 = timeline
        .iter()
        .map(|s| s["requests"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 400);
    // No terminal: no progress bar on stderr.
    assert!(run.stderr.is_empty(), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_one_error_line_and_the_right_exit_code() {
    let run = load("badurl", &["not-a-url"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.lines().next().unwrap().starts_with("error:"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("not-a-url"));

    let run = load("zerorate", &["http://127.0.0.1:1/", "--rate", "0"]).await;
    assert_eq!(run.code, 2);
    assert!(
        run.stderr.lines().next().unwrap().contains("rate"),
        "{}",
        run.stderr
    );

    let run = load_url(
        "both",
        "http://127.0.0.1:1/",
        "--body a --body-file /etc/hostname",
    )
    .await;
    assert_eq!(run.code, 2, "{}", run.stderr);

    // Nothing listening: the run cannot start.
    let dead = DeadPort::new();
    let run = load_url("unreachable", &url(dead.addr, "/"), "-n 5").await;
    assert_eq!(run.code, 1);
    assert_eq!(run.stderr.lines().count(), 1, "{}", run.stderr);
    assert!(
        run.stderr.starts_with("error: cannot connect"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty() && run.json.is_none());

    // It connects but nothing answers: the run happened, and failed.
    let backend = FakeBackend::start(BackendOptions::default()).await;
    let u = url(backend.addr, "/hang");
    let run = load_url("noanswer", &u, "-n 2 -c 2 --timeout 200ms").await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: no request got a response"),
        "{}",
        run.stderr
    );
    assert_eq!(run.json.unwrap()["errors"]["timeout"], 2);
}

// --- request options ----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn method_headers_and_body_are_sent() {
    let server = serve(false, |req: Request<Incoming>| async move {
        let good = req.method() == http::Method::PUT
            && req.headers().get("x-one").is_some_and(|v| v == "1")
            && req.headers().get("x-two").is_some_and(|v| v == "two words");
        let body = req.into_body().collect().await.unwrap().to_bytes();
        if good && body == "payload" {
            reply(200, "ok\n")
        } else {
            reply(400, "bad\n")
        }
    })
    .await;
    let u = url(server.addr, "/");
    let common = [
        "-n",
        "20",
        "-X",
        "PUT",
        "-H",
        "X-One: 1",
        "--header",
        "x-two: two words",
    ];
    let run = load(
        "body",
        &[&[u.as_str(), "--body", "payload"][..], &common[..]].concat(),
    )
    .await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json.unwrap()["status"]["200"], 20);

    let file = json_path("bodyfile-input");
    std::fs::write(&file, "payload").unwrap();
    let f = file.to_str().unwrap();
    let run = load(
        "bodyfile",
        &[&[u.as_str(), "--body-file", f][..], &common[..]].concat(),
    )
    .await;
    let _ = std::fs::remove_file(&file);
    assert_eq!(run.json.unwrap()["status"]["200"], 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_keepalive_opens_a_connection_per_request() {
    let server = serve(false, ok).await;
    let u = url(server.addr, "/");
    let run = load_url("nokeep", &u, "-n 50 -c 2 --no-keepalive").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    let j = run.json.unwrap();
    assert_eq!(j["connections_opened"], 50);
    // 50 for the requests, one for the reachability probe.
    assert_eq!(server.seen.connections.load(Ordering::Relaxed), 51);
    assert_eq!(j["status"]["200"], 50);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_prior_knowledge() {
    let server = serve(false, ok).await;
    let run = load_url("h2c", &url(server.addr, "/"), "-n 100 -c 4 --http2").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json.unwrap()["protocol"], "HTTP/2");
    assert_eq!(server.seen.http2.load(Ordering::Relaxed), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_a_self_signed_certificate() {
    let server = serve(true, ok).await;
    let u = format!("https://localhost:{}/", server.addr.port());

    // Verified by default: a self-signed certificate is refused.
    let run = load_url("tls-verify", &u, "-n 10").await;
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("error: cannot connect"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );
    // In words, with the fix: a self-signed test server wants --insecure.
    assert!(run.stderr.contains("does not trust"), "{}", run.stderr);
    assert!(run.stderr.contains("pass --insecure"), "{}", run.stderr);
    assert!(!run.stderr.contains("UnknownIssuer"), "{}", run.stderr);

    let run = load_url("tls", &u, "-n 50 -c 2 --insecure").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json.unwrap()["status"]["200"], 50);
    assert_eq!(server.seen.http2.load(Ordering::Relaxed), 0);

    let run = load_url("tls-h2", &u, "-n 50 -c 2 -k --http2").await;
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(run.json.unwrap()["protocol"], "HTTP/2");
    assert_eq!(server.seen.http2.load(Ordering::Relaxed), 50);
}

// --- response framing, raw client and hyper alike ----------------------------------

/// What a framing test server saw.
#[derive(Default)]
struct RawSeen {
    requests: AtomicU64,
    connections: AtomicU64,
}

/// A server written against the socket, answering by path. On `/` each
/// connection goes: a chunked body in pieces (7 bytes), `100 Continue` then
/// `204`, a 5-byte body with `Connection: close` (then it closes). Other
/// paths: `/close` a close-delimited 7-byte body, `/idle-close` a 2-byte body
/// then a close without notice, `/truncated` 3 of 10 bytes then a
/// close, `/garbage` an unparsable status line.
async fn framing_server() -> (SocketAddr, Arc<RawSeen>, tokio::task::JoinHandle<()>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(RawSeen::default());
    let s = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                continue;
            };
            s.connections.fetch_add(1, Ordering::Relaxed);
            let s = s.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                for k in 0.. {
                    let end = loop {
                        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break i + 4;
                        }
                        match tcp.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).into_owned();
                    buf.drain(..end);
                    s.requests.fetch_add(1, Ordering::Relaxed);
                    let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                    let pieces: Vec<&[u8]> = match (path.as_str(), k % 3) {
                        ("/", 0) => vec![
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nab",
                            b"c\r\n4\r\ndefg\r",
                            b"\n0\r\n\r\n",
                        ],
                        ("/", 1) => vec![b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n"],
                        ("/", _) => vec![
                            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
                        ],
                        ("/close", _) => vec![b"HTTP/1.1 200 OK\r\n\r\nclo", b"sed!"],
                        ("/idle-close", _) => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"],
                        ("/truncated", _) => vec![b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc"],
                        _ => vec![b"HTTP/1.1 abc\r\n\r\n"],
                    };
                    if path == "/idle-close" {
                        // The close follows the response in the same poll: it
                        // reaches the client before any next request can leave,
                        // however busy the machine.
                        let _ = tcp.write_all(pieces[0]).await;
                        return;
                    }
                    for p in pieces {
                        if tcp.write_all(p).await.is_err() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    match path.as_str() {
                        "/" if k % 3 == 2 => return,
                        "/close" | "/truncated" | "/garbage" => return,
                        _ => {}
                    }
                }
            });
        }
    });
    (addr, seen, task)
}

/// [`FixedRequest`]'s requests through hyper: a workload that does not
/// declare them fixed.
struct ViaHyper(FixedRequest);

impl Workload for ViaHyper {
    type User = ();

    fn user(&self, _index: usize) {}

    fn request(&self, _user: &mut ()) -> Option<Request<Bytes>> {
        Some(self.0.build())
    }
}

/// One connection, `n` requests to `path`, through the raw client (`FixedRequest`)
/// or hyper (`ViaHyper`); `rate` for the open model.
async fn framing_run(path: &str, n: u64, rate: Option<f64>, hyper: bool) -> (Report, Arc<RawSeen>) {
    let (addr, seen, task) = framing_server().await;
    let (settings, fixed) = load::get(&url(addr, path), |s| {
        s.connections = 1;
        s.requests = Some(n);
        s.rate = rate;
        s.timeout = Duration::from_secs(5);
    });
    let report = if hyper {
        Engine::new(settings, ViaHyper(fixed)).unwrap().run().await
    } else {
        Engine::new(settings, fixed).unwrap().run().await
    }
    .unwrap();
    task.abort();
    (report, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_informational_and_close_delimited_responses_are_counted() {
    for hyper in [false, true] {
        // Ten rounds of: chunked, 100 + 204, `Connection: close`.
        let (r, seen) = framing_run("/", 30, None, hyper).await;
        assert_eq!((r.requests, r.responses), (30, 30), "hyper {hyper}: {r}");
        assert_eq!(seen.requests.load(Ordering::Relaxed), 30);
        assert_eq!(r.status.get(&200), Some(&20), "hyper {hyper}: {r}");
        assert_eq!(r.status.get(&204), Some(&10), "hyper {hyper}: {r}");
        assert_eq!(r.body_bytes, 10 * (7 + 5), "hyper {hyper}");
        assert_eq!(r.connections_opened, 10, "hyper {hyper}");
        assert_eq!(seen.connections.load(Ordering::Relaxed), 10);

        let (r, seen) = framing_run("/close", 10, None, hyper).await;
        assert_eq!(
            (r.responses, r.errors.total()),
            (10, 0),
            "hyper {hyper}: {r}"
        );
        assert_eq!(r.body_bytes, 70, "hyper {hyper}");
        assert_eq!(seen.connections.load(Ordering::Relaxed), 10);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_responses_get_the_same_classes_raw_and_through_hyper() {
    for hyper in [false, true] {
        let (r, _) = framing_run("/truncated", 5, None, hyper).await;
        only(&r, ErrorClass::Reset, 5);
        let (r, _) = framing_run("/garbage", 5, None, hyper).await;
        only(&r, ErrorClass::Other, 5);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_closed_while_idle_is_replaced_without_an_error() {
    // 50 ms between requests; the server drops each connection right after
    // its response, without saying so. (Raw client only: through hyper the
    // close is seen only once the next request is queued, and counts as a reset.)
    let (r, seen) = framing_run("/idle-close", 6, Some(20.0), false).await;
    assert_eq!((r.responses, r.errors.total()), (6, 0), "{r}");
    assert_eq!(r.connections_opened, 6);
    assert_eq!(seen.requests.load(Ordering::Relaxed), 6);
}
