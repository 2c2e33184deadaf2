//! `unstick demo-app` across instances with each store, and `unstick demo` end to end (real processes).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use unstick::testkit::client::{self, Reply};
use unstick::testkit::process::{signal, ChildProcess};

mod support;

const BIN: &str = env!("CARGO_BIN_EXE_unstick");

/// A demo app on a `store` it cannot open: it runs, and a login gets a 503
/// naming the store.
async fn login_fails_naming(store: &str) {
    let dead = spawn_app(store);
    let r = call(
        dead.addr,
        &mut Jar::default(),
        Method::POST,
        "/login",
        "user=ada",
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().contains(store), "{}", r.text());
}

/// One `unstick demo-app` process.
struct AppProcess {
    addr: SocketAddr,
    process: ChildProcess,
}

fn spawn_app(store: &str) -> AppProcess {
    let mut cmd = Command::new(BIN);
    cmd.args(["demo-app", "--port", "0", "--store", store])
        .env_remove("PORT")
        .env_remove("UNSTICK_DEMO_STORE");
    let process = ChildProcess::spawn(cmd).expect("spawn demo-app");
    let Some(_) = process
        .stdout
        .wait_for("listening ", Duration::from_secs(10))
    else {
        panic!("demo-app did not start: {}", process.stderr.text());
    };
    // The address is the first line on stdout.
    let first = process.stdout.all()[0].clone();
    let addr = first
        .strip_prefix("listening ")
        .unwrap_or_else(|| panic!("first line is {first:?}"))
        .parse()
        .expect("an address");
    AppProcess { addr, process }
}

/// A cookie jar that holds the session cookie.
#[derive(Default, Clone)]
struct Jar(Option<String>);

impl Jar {
    fn keep(&mut self, r: &Reply) {
        if let Some(c) = r.headers.get("set-cookie") {
            let c = c.to_str().unwrap();
            self.0 = Some(c.split(';').next().unwrap().to_owned());
        }
    }

    fn headers(&self) -> Vec<(&str, &str)> {
        let mut h = vec![("content-type", "application/x-www-form-urlencoded")];
        if let Some(c) = &self.0 {
            h.push(("cookie", c.as_str()));
        }
        h
    }
}

async fn call(addr: SocketAddr, jar: &mut Jar, method: Method, path: &str, body: &str) -> Reply {
    let r = client::request(addr, method.clone(), path, &jar.headers(), body.to_owned())
        .await
        .unwrap_or_else(|e| panic!("{method} {path} on {addr}: {e}"));
    jar.keep(&r);
    r
}

fn instance(r: &Reply) -> String {
    r.headers
        .get("x-instance-id")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

/// Logs in through A, then uses the session through B and C. Returns the
/// statuses B and C gave, in order: whoami, cart add, cart read, counter.
async fn cross_instances(store: &str) -> Vec<(StatusCode, String)> {
    let (a, b, c) = (spawn_app(store), spawn_app(store), spawn_app(store));
    let mut jar = Jar::default();
    let r = call(a.addr, &mut jar, Method::POST, "/login", "user=ada").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(jar.0.as_deref().unwrap().starts_with("sid="));
    let ids = [
        instance(&r),
        instance(&call(b.addr, &mut jar, Method::GET, "/healthz", "").await),
        instance(&call(c.addr, &mut jar, Method::GET, "/healthz", "").await),
    ];
    assert!(
        ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2],
        "{ids:?}"
    );
    let mut out = Vec::new();
    for (addr, method, path, body) in [
        (b.addr, Method::GET, "/whoami", ""),
        (c.addr, Method::POST, "/cart", "item=tea"),
        (b.addr, Method::POST, "/cart", "item=milk"),
        (c.addr, Method::GET, "/cart", ""),
        (b.addr, Method::POST, "/counter", ""),
        (c.addr, Method::POST, "/counter", ""),
        (a.addr, Method::POST, "/counter", ""),
    ] {
        let r = call(addr, &mut jar, method, path, body).await;
        out.push((r.status, r.text()));
    }
    // A still knows the session in every case.
    let r = call(a.addr, &mut jar, Method::GET, "/whoami", "").await;
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ada\n"));
    out
}

fn assert_shared(out: &[(StatusCode, String)]) {
    let texts: Vec<&str> = out.iter().map(|(_, t)| t.as_str()).collect();
    assert!(out.iter().all(|(s, _)| *s == StatusCode::OK), "{out:?}");
    assert_eq!(
        texts,
        [
            "ada\n",
            "added tea; 1 in the cart\n",
            "added milk; 2 in the cart\n",
            "tea\nmilk\n",
            "1\n",
            "2\n",
            "3\n"
        ]
    );
}

#[tokio::test]
async fn sqlite_keeps_the_session_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite:{}", dir.path().join("s.db").display());
    assert_shared(&cross_instances(&store).await);
}

#[tokio::test]
async fn redis_keeps_the_session_across_instances() {
    let Some(url) = std::env::var("UNSTICK_TEST_REDIS")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: needs redis-server (.ci/run starts one and sets UNSTICK_TEST_REDIS)");
        return;
    };
    assert_shared(&cross_instances(&url).await);
}

/// A keyed POST sent to A, then again to B (as a balancer replays it when A
/// died before answering): B answers with A's response and changes nothing.
async fn keyed_posts_across_instances(store: &str) {
    let (a, b) = (spawn_app(store), spawn_app(store));
    let mut jar = Jar::default();
    let r = call(a.addr, &mut jar, Method::POST, "/login", "user=ada").await;
    assert_eq!(r.status, StatusCode::OK);
    let key = format!("k-{}", std::process::id());
    let mut headers = jar.headers();
    headers.push(("idempotency-key", key.as_str()));
    let keyed = |addr: SocketAddr, body: &str| {
        client::request(addr, Method::POST, "/cart", &headers, body.to_owned())
    };
    let first = keyed(a.addr, "item=tea").await.unwrap();
    let again = keyed(b.addr, "item=tea").await.unwrap();
    assert_eq!(first.text(), "added tea; 1 in the cart\n");
    assert_eq!((again.status, again.text()), (first.status, first.text()));
    assert_eq!(again.headers["idempotent-replayed"], "true");
    assert_ne!(instance(&first), instance(&again));
    let other = keyed(b.addr, "item=milk").await.unwrap();
    assert_eq!(other.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = call(b.addr, &mut jar, Method::GET, "/cart", "").await;
    assert_eq!(r.text(), "tea\n");
}

#[tokio::test]
async fn sqlite_makes_a_keyed_post_once_across_instances() {
    let dir = tempfile::tempdir().unwrap();
    keyed_posts_across_instances(&format!("sqlite:{}", dir.path().join("s.db").display())).await;
}

#[tokio::test]
async fn redis_makes_a_keyed_post_once_across_instances() {
    let Some(url) = std::env::var("UNSTICK_TEST_REDIS")
        .ok()
        .filter(|u| !u.is_empty())
    else {
        eprintln!("skipped: needs redis-server (.ci/run starts one and sets UNSTICK_TEST_REDIS)");
        return;
    };
    keyed_posts_across_instances(&url).await;
}

#[tokio::test]
async fn memory_loses_the_session_on_another_instance() {
    let out = cross_instances("memory").await;
    let statuses: Vec<StatusCode> = out.iter().map(|(s, _)| *s).collect();
    use StatusCode as S;
    // B and C never heard of the session; A (last) still counts.
    assert_eq!(
        statuses,
        [
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::UNAUTHORIZED,
            S::OK
        ],
        "{out:?}"
    );
    assert_eq!(out[6].1, "1\n");
}

#[tokio::test]
async fn demo_app_refuses_big_forms_and_unknown_sessions_and_names_a_dead_store() {
    let dir = tempfile::tempdir().unwrap();
    let app = spawn_app(&format!("sqlite:{}", dir.path().join("s.db").display()));
    let mut jar = Jar::default();
    let big = format!("user={}", "x".repeat(20 * 1024));
    let r = call(app.addr, &mut jar, Method::POST, "/login", &big).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    let mut jar = Jar(Some(format!("sid={:032x}", 42)));
    for (method, path) in [
        (Method::GET, "/whoami"),
        (Method::GET, "/cart"),
        (Method::POST, "/counter"),
    ] {
        let r = call(app.addr, &mut jar, method, path, "").await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let r = call(app.addr, &mut jar, Method::GET, "/", "").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.text().contains(&instance(&r)) && r.text().contains("log in"));

    // A store that cannot be opened: the app runs and answers 503 naming it.
    login_fails_naming("sqlite:/nonexistent-unstick-dir/s.db").await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    login_fails_naming(&format!("redis://127.0.0.1:{port}")).await;
}

#[test]
fn demo_app_bad_arguments_exit_2() {
    for args in [
        &["demo-app", "--port", "0", "--store", "postgres://x"][..],
        &["demo-app", "--port", "0"][..],
        &[
            "demo-app",
            "--port",
            "0",
            "--store",
            "memory",
            "--drain-grace",
            "10s",
        ][..],
        &["demo", "--store", "sqlite:/x"][..],
        &["demo", "--instances", "0"][..],
    ] {
        let out = Command::new(BIN)
            .args(args)
            .env_remove("UNSTICK_DEMO_STORE")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("error:"),
            "{args:?}"
        );
    }
}

#[tokio::test]
async fn demo_app_drains_on_sigterm_finishes_in_flight_and_exits_0() {
    let mut app = spawn_app("memory");
    // A request in flight: the head and half of the body now, the rest after SIGTERM.
    let mut slow = TcpStream::connect(app.addr).unwrap();
    slow.write_all(
        b"POST /login HTTP/1.1\r\nhost: x\r\ncontent-type: application/x-www-form-urlencoded\r\ncontent-length: 8\r\n\r\nuser",
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let sent = Instant::now();
    assert!(app.process.signal(libc::SIGTERM));
    // While draining: health 503, and every answer asks to be drained.
    let deadline = Instant::now() + Duration::from_secs(3);
    let r = loop {
        let r = client::get(app.addr, "/healthz").await.unwrap();
        if r.status == StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.headers["x-unstick-drain"], "1");
    assert_eq!(r.headers["connection"], "close");
    // The request in flight completes.
    slow.write_all(b"=ada").unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut answer = String::new();
    let _ = slow.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains("logged in as ada"), "{answer}");
    let status = app
        .process
        .wait_timeout(Duration::from_secs(8))
        .expect("exits");
    let took = sent.elapsed();
    assert!(status.success(), "{status:?}");
    eprintln!("demo-app exited {took:?} after SIGTERM");
    assert!(took < Duration::from_secs(8), "{took:?}");
}

/// `unstick demo` in its own process; SIGTERM, then SIGKILL, on drop.
struct DemoProcess {
    process: ChildProcess,
    listen: SocketAddr,
    instances: Vec<(SocketAddr, u32)>,
    dir: Option<PathBuf>,
}

impl DemoProcess {
    fn spawn(extra: &[&str]) -> DemoProcess {
        let mut cmd = Command::new(BIN);
        cmd.args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "unstick=info");
        let mut process = ChildProcess::spawn(cmd).expect("spawn demo");
        let Some(line) = process
            .stderr
            .wait_for("\"event\":\"started\"", Duration::from_secs(20))
        else {
            let _ = process.wait_timeout(Duration::from_millis(200));
            panic!("demo did not start: {}", process.stderr.text());
        };
        let v: serde_json::Value = serde_json::from_str(&line).expect("JSON");
        let listen = v["listen"].as_str().unwrap().parse().unwrap();
        assert!(v["admin"].as_str().unwrap().parse::<SocketAddr>().is_ok());
        let instances = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                (
                    i["addr"].as_str().unwrap().parse().unwrap(),
                    i["pid"].as_u64().unwrap() as u32,
                )
            })
            .collect();
        let dir = v["dir"].as_str().map(PathBuf::from);
        DemoProcess {
            process,
            listen,
            instances,
            dir,
        }
    }

    /// Waits for a stderr JSON line with these fields.
    fn wait_event(&self, event: &str, index: usize, restarts: u64) -> Option<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            for line in self.process.stderr.all() {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) else {
                    continue;
                };
                if v["event"] == event
                    && v["index"] == index
                    && (event != "instance_started" || v["restarts"] == restarts)
                {
                    return Some(v);
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for DemoProcess {
    fn drop(&mut self) {
        if self.process.child.try_wait().ok().flatten().is_none() {
            self.process.signal(libc::SIGTERM);
            let _ = self.process.wait_timeout(Duration::from_secs(10));
        }
    }
}

fn alive(pid: u32) -> bool {
    // A zombie still has a /proc entry; its state is Z.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

fn wait_gone(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<u32> = pids.iter().copied().filter(|p| alive(*p)).collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn demo_keeps_one_session_across_instances_and_survives_a_kill() {
    let mut demo = DemoProcess::spawn(&[]);
    assert_eq!(demo.instances.len(), 3);
    let dir = demo.dir.clone().expect("a temporary folder for sqlite");
    assert!(dir.join("sessions.db").exists());
    let addr = demo.listen;
    let mut jar = Jar::default();
    let r = call(addr, &mut jar, Method::POST, "/login", "user=ada").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(addr, &mut jar, Method::POST, "/cart", "item=tea").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());

    let (victim_addr, victim_pid) = demo.instances[1];
    let victim_id = instance(&client::get(victim_addr, "/healthz").await.unwrap());
    let mut seen = std::collections::BTreeSet::new();
    let mut counter = 0;
    for i in 0..30 {
        if i == 15 {
            assert!(signal(victim_pid, libc::SIGKILL));
        }
        // POSTs only before the kill: unstick retries what is safe to repeat,
        // and a POST caught by a dying instance is not.
        let r = if i < 15 && i % 3 == 2 {
            let r = call(addr, &mut jar, Method::POST, "/counter", "").await;
            counter += 1;
            assert_eq!(r.text(), format!("{counter}\n"), "request {i}");
            r
        } else if i % 2 == 0 {
            let r = call(addr, &mut jar, Method::GET, "/whoami", "").await;
            assert_eq!(r.text(), "ada\n", "request {i}");
            r
        } else {
            let r = call(addr, &mut jar, Method::GET, "/cart", "").await;
            assert_eq!(r.text(), "tea\n", "request {i}");
            r
        };
        assert_eq!(r.status, StatusCode::OK, "request {i}: {}", r.text());
        if i < 15 {
            seen.insert(instance(&r));
        }
    }
    assert_eq!(seen.len(), 3, "round-robin over 3 instances: {seen:?}");
    assert!(seen.contains(&victim_id));

    // The demo noticed and restarted the instance on its port.
    let exited = demo
        .wait_event("instance_exited", 1, 0)
        .unwrap_or_else(|| panic!("no exit event: {}", demo.process.stderr.text()));
    assert_eq!(exited["status"], "signal 9");
    let started = demo
        .wait_event("instance_started", 1, 1)
        .unwrap_or_else(|| panic!("no restart: {}", demo.process.stderr.text()));
    let new_pid = started["pid"].as_u64().unwrap() as u32;
    assert_ne!(new_pid, victim_pid);
    assert_eq!(started["addr"], victim_addr.to_string());
    let r = client::get(victim_addr, "/healthz").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let new_id = instance(&r);
    assert_ne!(new_id, victim_id);
    // Back in rotation: the new instance answers through unstick, and knows the session.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = call(addr, &mut jar, Method::GET, "/whoami", "").await;
        assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "ada\n"));
        if instance(&r) == new_id {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the restarted instance never answered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let r = call(addr, &mut jar, Method::POST, "/counter", "").await;
    assert_eq!(r.text(), format!("{}\n", counter + 1));

    // SIGTERM: everything stops, the folder goes.
    let pids: Vec<u32> = [demo.instances[0].1, new_pid, demo.instances[2].1].into();
    assert!(demo.process.signal(libc::SIGTERM));
    let status = demo
        .process
        .wait_timeout(Duration::from_secs(15))
        .expect("demo exits");
    assert!(
        status.success(),
        "{status:?}: {}",
        demo.process.stderr.text()
    );
    assert_eq!(wait_gone(&pids), Vec::<u32>::new(), "instances left behind");
    assert!(!dir.exists(), "{} was not removed", dir.display());
}

#[tokio::test]
async fn killing_the_demo_takes_its_instances_with_it() {
    let mut demo = DemoProcess::spawn(&["--store", "memory", "--instances", "2"]);
    assert_eq!(demo.instances.len(), 2);
    assert!(demo.dir.is_none());
    // With memory, the session is lost as soon as the other instance answers.
    let mut jar = Jar::default();
    let r = call(demo.listen, &mut jar, Method::POST, "/login", "user=ada").await;
    assert_eq!(r.status, StatusCode::OK);
    let statuses: Vec<StatusCode> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(
                call(demo.listen, &mut jar, Method::GET, "/whoami", "")
                    .await
                    .status,
            );
        }
        v
    };
    assert!(statuses.contains(&StatusCode::UNAUTHORIZED), "{statuses:?}");
    assert!(statuses.contains(&StatusCode::OK), "{statuses:?}");

    let pids: Vec<u32> = demo.instances.iter().map(|i| i.1).collect();
    assert!(pids.iter().all(|p| alive(*p)));
    assert!(demo.process.signal(libc::SIGKILL));
    demo.process
        .wait_timeout(Duration::from_secs(5))
        .expect("killed");
    assert_eq!(wait_gone(&pids), Vec::<u32>::new(), "orphans left behind");
}

/// The commands the demo prints under "try:" work as printed (the `kill`
/// line aside) and keep their cookie jar in a temp file, not in the
/// working directory.
#[test]
fn the_printed_commands_work_and_leave_no_files() {
    let demo = DemoProcess::spawn(&[]);
    demo.process
        .stdout
        .wait_for("Ctrl-C stops everything", Duration::from_secs(10))
        .expect("the demo prints what to try");
    let printed = demo.process.stdout.all();
    let script: Vec<&str> = printed
        .iter()
        .skip_while(|l| l.trim() != "try:")
        .skip(1)
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim())
        .filter(|l| !l.starts_with("kill "))
        .collect();
    assert!(script.len() >= 5, "{printed:?}");
    let cwd = support::Files::new();
    let stdout = support::sh_in(cwd.dir(), &(script.join("\n") + "\nrm -f \"$jar\"\n"));
    assert!(
        stdout.lines().any(|l| l.trim() == "ada"),
        "whoami names the user:\n{stdout}"
    );
    assert!(stdout.contains("tea"), "the cart holds the item:\n{stdout}");
    let left: Vec<_> = std::fs::read_dir(cwd.dir()).unwrap().collect();
    assert!(
        left.is_empty(),
        "the printed commands left files behind: {left:?}"
    );
}
