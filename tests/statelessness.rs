//! Session hops watched by `unstick serve` in front of real apps: the demo with shared sessions (kept), its memory twin (broken), and an app with one stateful endpoint.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::Value;
use unstick::testkit::client::{Conn, H2Conn, Reply};
use unstick::testkit::process::ChildProcess;

mod support;
use support::{admin, metrics, wait, Rig, Serve, BIN};

// --- the apps ----------------------------------------------------------------

/// `unstick demo-app` instances sharing `store`; (address, process).
fn demo_apps(store: &str, n: usize) -> Vec<(SocketAddr, ChildProcess)> {
    (0..n)
        .map(|_| {
            let mut cmd = Command::new(BIN);
            cmd.args(["demo-app", "--port", "0", "--store", store])
                .env_remove("PORT")
                .env_remove("UNSTICK_DEMO_STORE");
            let p = ChildProcess::spawn(cmd).expect("spawn demo-app");
            let line = p.stdout.wait_for("listening ", Duration::from_secs(20));
            let line = line.unwrap_or_else(|| panic!("demo-app: {}", p.stderr.text()));
            let addr = line["listening ".len()..].parse().expect("an address");
            (addr, p)
        })
        .collect()
}

/// `unstick serve` in front of `backends` (access log off).
fn serve(backends: &[SocketAddr]) -> Rig {
    Serve::new().backends(backends).start()
}

async fn statelessness(rig: &Rig) -> Value {
    admin::get(rig.lb.admin(), "/api/statelessness").await
}

/// The report's entry for cookie `name`, or `Null`.
fn cookie<'a>(report: &'a Value, name: &str) -> &'a Value {
    let list = report["cookies"].as_array().expect("cookies");
    list.iter()
        .find(|c| c["name"] == name)
        .unwrap_or(&Value::Null)
}

// --- users -------------------------------------------------------------------

enum Link {
    H1(Conn),
    H2(H2Conn),
}

/// A client with its own connection and cookie jar (one session cookie).
struct User {
    link: Link,
    cookie: Option<String>,
}

impl User {
    async fn new(addr: SocketAddr, h2: bool) -> User {
        let link = if h2 {
            Link::H2(H2Conn::open(addr).await.expect("h2c connection"))
        } else {
            Link::H1(Conn::open(addr).await.expect("connection"))
        };
        User { link, cookie: None }
    }

    async fn call(&mut self, method: Method, path: &str, body: &str) -> Reply {
        let mut headers = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(c) = &self.cookie {
            headers.push(("cookie", c.as_str()));
        }
        let body = Bytes::from(body.to_owned());
        let r = match &mut self.link {
            Link::H1(c) => c.request(method.clone(), path, &headers, body).await,
            Link::H2(c) => c.request(method.clone(), path, &headers, body).await,
        };
        let r = r.unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        if let Some(set) = r.headers.get("set-cookie") {
            let pair = set.to_str().unwrap().split(';').next().unwrap().to_owned();
            self.cookie = (!pair.ends_with('=')).then_some(pair);
        }
        r
    }
}

/// `users` users (HTTP/1.1, or h2c) log in to the demo app and run its
/// whoami, cart and counter steps `rounds` times each, at once.
async fn demo_traffic(addr: SocketAddr, users: usize, rounds: usize, h2: bool) {
    let mut tasks = tokio::task::JoinSet::new();
    for u in 0..users {
        tasks.spawn(async move {
            let mut user = User::new(addr, h2).await;
            let r = user
                .call(Method::POST, "/login", &format!("user=vu{u}"))
                .await;
            assert_eq!(r.status, StatusCode::OK, "{}", r.text());
            for i in 0..rounds {
                user.call(Method::GET, "/whoami", "").await;
                user.call(Method::POST, "/cart", &format!("item=i{i}"))
                    .await;
                user.call(Method::GET, "/cart", "").await;
                user.call(Method::POST, "/counter", "").await;
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a user ran");
    }
}

// --- the demo, shared sessions -------------------------------------------------

#[tokio::test]
async fn shared_sessions_hop_between_instances_and_none_breaks() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    let apps = demo_apps(&store, 3);
    let addrs: Vec<SocketAddr> = apps.iter().map(|(a, _)| *a).collect();
    let rig = serve(&addrs);

    // HTTP/1.1 users (the fast path) ...
    demo_traffic(rig.lb.addr, 8, 40, false).await;
    let after_h1 = statelessness(&rig).await;
    let sid = cookie(&after_h1, "sid");
    assert_eq!(sid["source"], "learned", "{after_h1:#}");
    let h1_hops = sid["hops"].as_u64().unwrap();
    assert!(h1_hops > 500, "{after_h1:#}");
    // ... then h2c users (hyper's path).
    demo_traffic(rig.lb.addr, 8, 40, true).await;
    let report = statelessness(&rig).await;
    let sid = cookie(&report, "sid");
    assert!(sid["hops"].as_u64().unwrap() > h1_hops + 500, "{report:#}");
    assert!(sid["same_instance"].as_u64().unwrap() > 100, "{report:#}");
    assert_eq!(sid["broken"], 0, "{report:#}");
    assert_eq!(sid["broken_share"], 0.0, "{report:#}");
    assert_eq!(sid["examples"].as_array().unwrap().len(), 0);
    assert_eq!(sid["issued"], 16);

    let scrape = metrics::scrape(rig.lb.admin()).await;
    let kept = [("cookie", "sid"), ("outcome", "kept")];
    let want = sid["kept"].as_f64().unwrap();
    scrape.assert_value("unstick_session_hops_total", &kept, want);
    assert!(!rig.lb.stderr().text().contains("sessions break"));
}

// --- the demo's memory twin ------------------------------------------------------

#[tokio::test]
async fn sessions_in_process_memory_break_and_a_warning_names_them() {
    let apps = demo_apps("memory", 3);
    let addrs: Vec<SocketAddr> = apps.iter().map(|(a, _)| *a).collect();
    let rig = serve(&addrs);
    let addr = rig.lb.addr;
    let traffic = tokio::spawn(async move { demo_traffic(addr, 8, 200, false).await });

    // Within a few seconds the broken share is above half.
    let report = wait::until_some("50 judged hops", wait::PATIENCE, async || {
        let report = statelessness(&rig).await;
        let sid = cookie(&report, "sid");
        let judged = sid["kept"].as_u64().unwrap_or(0) + sid["broken"].as_u64().unwrap_or(0);
        (judged >= 50).then_some(report)
    })
    .await;
    let sid = cookie(&report, "sid");
    let share = sid["broken_share"].as_f64().unwrap_or(0.0);
    assert!(share > 0.5, "{report:#}");
    let examples = sid["examples"].as_array().unwrap();
    let named = examples.iter().any(|e| {
        e["path"] == "/whoami" && e["status"] == 401 && e["method"] == "GET" && e["from"] != e["to"]
    });
    assert!(named, "{report:#}");
    let warning = rig.lb.stderr().wait_for(
        "sessions break when another instance answers",
        Duration::from_secs(10),
    );
    let warning = warning.unwrap_or_else(|| panic!("no warning: {}", rig.lb.stderr().text()));
    assert!(warning.contains("sid"), "{warning}");
    traffic.abort();
}

// --- an app with one stateful endpoint ------------------------------------------

/// Sessions in a store every instance shares, except for `/dashboard`,
/// which reads a per-process cache filled at login (and redirects to the
/// login page when the session is not in it).
struct HiddenState {
    store: Arc<Mutex<HashMap<String, String>>>,
    cache: Mutex<HashMap<String, String>>,
    id: String,
}

impl HiddenState {
    fn answer(
        &self,
        method: &Method,
        path: &str,
        cookie: Option<&str>,
    ) -> http::Response<Full<Bytes>> {
        let sid = cookie
            .and_then(|c| c.split(';').find_map(|p| p.trim().strip_prefix("sid=")))
            .map(str::to_owned);
        let user = sid
            .as_ref()
            .and_then(|s| self.store.lock().unwrap().get(s).cloned());
        let reply = http::Response::builder().header("x-instance-id", &self.id);
        let reply = match (method.as_str(), path, user) {
            ("POST", "/login", _) => {
                let sid = format!("{:032x}", rand::random::<u128>());
                self.store.lock().unwrap().insert(sid.clone(), "u".into());
                self.cache.lock().unwrap().insert(sid.clone(), "u".into());
                reply.header("set-cookie", format!("sid={sid}; Path=/; HttpOnly"))
            }
            ("GET", "/dashboard", _) => {
                let cached = sid.is_some_and(|s| self.cache.lock().unwrap().contains_key(&s));
                if cached {
                    reply
                } else {
                    let r = reply.status(302);
                    r.header("location", "/login?next=/dashboard")
                }
            }
            (_, "/profile" | "/notes", Some(_)) => reply,
            _ => reply.status(401),
        };
        reply.body(Full::new(Bytes::from_static(b"ok\n"))).unwrap()
    }
}

async fn hidden_state_instances(n: usize) -> Vec<SocketAddr> {
    let store = Arc::new(Mutex::new(HashMap::new()));
    let mut addrs = Vec::new();
    for i in 0..n {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        addrs.push(listener.local_addr().unwrap());
        let app = Arc::new(HiddenState {
            store: store.clone(),
            cache: Mutex::new(HashMap::new()),
            id: format!("instance-{i}"),
        });
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let app = app.clone();
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(
                        move |req: http::Request<hyper::body::Incoming>| {
                            let cookie = req.headers().get("cookie").and_then(|v| v.to_str().ok());
                            let r = app.answer(req.method(), req.uri().path(), cookie);
                            async move { Ok::<_, Infallible>(r) }
                        },
                    );
                    let io = hyper_util::rt::TokioIo::new(stream);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(io, service)
                        .await;
                });
            }
        });
    }
    addrs
}

#[tokio::test]
async fn only_the_stateful_endpoints_hops_break() {
    let addrs = hidden_state_instances(3).await;
    let rig = serve(&addrs);
    let redirected = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for u in 0..8 {
        let (addr, redirected) = (rig.lb.addr, redirected.clone());
        tasks.spawn(async move {
            let mut user = User::new(addr, u % 2 == 1).await;
            user.call(Method::POST, "/login", "").await;
            for _ in 0..30 {
                assert_eq!(user.call(Method::GET, "/profile", "").await.status, 200);
                assert_eq!(user.call(Method::POST, "/notes", "n=1").await.status, 200);
                if user.call(Method::GET, "/dashboard", "").await.status == 302 {
                    redirected.fetch_add(1, Ordering::Relaxed);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.expect("a user ran");
    }
    let report = statelessness(&rig).await;
    let sid = cookie(&report, "sid");
    let redirected = redirected.load(Ordering::Relaxed);
    assert!(redirected > 0);
    // Every redirect was a hop to an instance without the cache entry, and
    // nothing else broke.
    assert_eq!(sid["broken"], redirected, "{report:#}");
    assert_eq!(sid["broken_by"]["login_redirect"], redirected, "{report:#}");
    assert!(sid["kept"].as_u64().unwrap() > 200, "{report:#}");
    for e in sid["examples"].as_array().unwrap() {
        assert_eq!(e["path"], "/dashboard", "{report:#}");
        assert_eq!(e["status"], 302);
        assert_eq!(e["reason"], "login_redirect");
    }
}
