//! The compose stack on a real Docker engine (docker/compose.yaml): unstick in front of three demo-app containers sharing Redis.
//!
//! These tests need a Docker engine with Compose, so they are `#[ignore]`d:
//! `.ci/run` runs them where `docker info` answers (and says so where it
//! does not), with the images it built once by `docker/build.sh`
//! (`UNSTICK_TEST_IMAGE`, `UNSTICK_TEST_REDIS_IMAGE`). Without those
//! variables a test builds its own images. Each stack is a compose project
//! of its own (`unstick-test-PID-N`), published on free loopback ports, and
//! is taken down at the end; the test checks nothing of it is left.
//!
//!     cargo test --test compose -- --ignored --test-threads=1

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use unstick::testkit::client;

mod support;
use support::{wait, BIN};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args`, failing the test if it cannot start.
fn run(program: &str, args: &[&str], env: &[(String, String)]) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args).current_dir(repo()).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn docker(args: &[&str]) -> Output {
    run("docker", args, &[])
}

/// Fails the test, naming the missing engine, where Docker does not answer.
fn require_engine() {
    let out = Command::new("docker").arg("info").output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!("no Docker engine answers (docker info: {})", text(&o)),
        Err(e) => panic!("no docker CLI: {e}"),
    }
}

/// `docker compose` where the plugin exists, else `docker-compose`.
fn compose_command() -> Vec<String> {
    let plugin = Command::new("docker").args(["compose", "version"]).output();
    if plugin.is_ok_and(|o| o.status.success()) {
        return vec!["docker".into(), "compose".into()];
    }
    vec!["docker-compose".into()]
}

/// A name no other run on this engine uses.
fn unique(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::SeqCst);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{n}-{nanos:x}", std::process::id())
}

/// The unstick and Redis images: the ones CI built, or built here (and
/// removed when dropped).
struct Images {
    unstick: String,
    redis: String,
    owned: bool,
}

impl Images {
    fn get() -> Images {
        if let Ok(unstick) = std::env::var("UNSTICK_TEST_IMAGE") {
            let redis = std::env::var("UNSTICK_TEST_REDIS_IMAGE")
                .expect("UNSTICK_TEST_IMAGE is set: set UNSTICK_TEST_REDIS_IMAGE too");
            return Images {
                unstick,
                redis,
                owned: false,
            };
        }
        let tag = unique("test");
        let (unstick, redis) = (format!("unstick:{tag}"), format!("unstick-redis:{tag}"));
        let script = repo().join("docker/build.sh");
        let out = run(
            script.to_str().unwrap(),
            &["--tag", &unstick, "--redis-tag", &redis],
            &[],
        );
        assert!(out.status.success(), "docker/build.sh: {}", text(&out));
        Images {
            unstick,
            redis,
            owned: true,
        }
    }
}

impl Drop for Images {
    fn drop(&mut self) {
        if self.owned {
            docker(&["image", "rm", "-f", &self.unstick, &self.redis]);
        }
    }
}

/// One compose project made from docker/compose.yaml.
struct Stack {
    compose: Vec<String>,
    project: String,
    env: Vec<(String, String)>,
    down: bool,
    _images: Images,
}

impl Stack {
    /// `up -d` with `profiles` (all of the default services unless
    /// `services` names some), published on free ports of 127.0.0.1.
    fn up(profiles: &[&str], services: &[&str]) -> Stack {
        require_engine();
        let images = Images::get();
        let stack = Stack {
            compose: compose_command(),
            project: unique("unstick-test"),
            env: vec![
                ("UNSTICK_IMAGE".into(), images.unstick.clone()),
                ("UNSTICK_REDIS_IMAGE".into(), images.redis.clone()),
                ("UNSTICK_HTTP_PUBLISH".into(), "127.0.0.1:".into()),
                ("UNSTICK_ADMIN_PUBLISH".into(), "127.0.0.1:".into()),
            ],
            down: false,
            _images: images,
        };
        let mut args: Vec<&str> = Vec::new();
        for p in profiles {
            args.extend(["--profile", p]);
        }
        args.extend(["up", "-d"]);
        args.extend(services);
        let out = stack.compose(&args);
        assert!(out.status.success(), "compose up: {}", text(&out));
        stack
    }

    fn compose(&self, args: &[&str]) -> Output {
        let file = repo().join("docker/compose.yaml");
        let mut all: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        all.extend(["-f", file.to_str().unwrap(), "-p", &self.project]);
        all.extend(args);
        run(&self.compose[0], &all, &self.env)
    }

    /// Where `service`'s `port` is published on the host.
    fn published(&self, service: &str, port: u16) -> SocketAddr {
        let out = self.compose(&["port", service, &port.to_string()]);
        let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        line.parse()
            .unwrap_or_else(|_| panic!("compose port {service} {port}: {}", text(&out)))
    }

    /// The ids of `service`'s containers, running or not.
    fn containers(&self, service: &str) -> Vec<String> {
        let project = format!("label=com.docker.compose.project={}", self.project);
        let svc = format!("label=com.docker.compose.service={service}");
        let out = docker(&["ps", "-aq", "--filter", &project, "--filter", &svc]);
        String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    }

    /// What the engine still holds of this project: containers, networks, volumes.
    fn leftovers(&self) -> Vec<String> {
        let label = format!("label=com.docker.compose.project={}", self.project);
        let mut left = Vec::new();
        for (kind, args) in [
            ("container", vec!["ps", "-aq", "--filter", &label]),
            ("network", vec!["network", "ls", "-q", "--filter", &label]),
            ("volume", vec!["volume", "ls", "-q", "--filter", &label]),
        ] {
            let out = docker(&args);
            for id in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                left.push(format!("{kind} {id}"));
            }
        }
        left
    }

    /// `down` (every profile, volumes, orphans); what it left behind.
    fn down(&mut self) -> Vec<String> {
        self.down = true;
        let out = self.compose(&[
            "--profile",
            "twin",
            "down",
            "--volumes",
            "--remove-orphans",
            "--timeout",
            "5",
        ]);
        assert!(out.status.success(), "compose down: {}", text(&out));
        self.leftovers()
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.down();
        }
        // Whatever `down` missed goes too, so a failed run does not leak.
        for item in self.leftovers() {
            let (kind, id) = item.split_once(' ').unwrap();
            match kind {
                "container" => docker(&["rm", "-f", "-v", id]),
                other => docker(&[other, "rm", id]),
            };
        }
    }
}

/// How many backends unstick's admin API lists as healthy (an error while
/// the published port does not answer yet).
async fn healthy_backends(admin: SocketAddr) -> Result<usize, String> {
    let r = client::get(admin, "/api/backends")
        .await
        .map_err(|e| e.to_string())?;
    let v: serde_json::Value = serde_json::from_slice(&r.body).map_err(|e| e.to_string())?;
    let list = v.as_array().ok_or_else(|| r.text())?;
    Ok(list.iter().filter(|b| b["healthy"] == true).count())
}

async fn wait_for_healthy(admin: SocketAddr, n: usize, limit: Duration) {
    let what = format!("{n} healthy backends in unstick's admin API");
    wait::until(&what, limit, async || {
        healthy_backends(admin).await.is_ok_and(|k| k == n)
    })
    .await;
}

/// Logs `user` in through the proxy; the `Cookie` header for the session.
async fn login(proxy: SocketAddr, user: &str) -> String {
    let headers = [("content-type", "application/x-www-form-urlencoded")];
    let body = Bytes::from(format!("user={user}"));
    let r = client::request(proxy, Method::POST, "/login", &headers, body)
        .await
        .unwrap();
    assert!(r.status.is_success(), "login: {} {}", r.status, r.text());
    let set = r.headers["set-cookie"].to_str().unwrap();
    set.split(';').next().unwrap().to_owned()
}

/// `GET /whoami` with the session: status, body and the instance that answered.
async fn whoami(proxy: SocketAddr, cookie: &str) -> (StatusCode, String, String) {
    let r = client::request(
        proxy,
        Method::GET,
        "/whoami",
        &[("cookie", cookie)],
        Bytes::new(),
    )
    .await
    .unwrap();
    let instance = r
        .headers
        .get("x-instance-id")
        .map_or(String::new(), |v| v.to_str().unwrap_or_default().to_owned());
    (r.status, r.text(), instance)
}

/// Starts `unstick load` against `url` with `cookie` for `secs` at 100/s,
/// its JSON report to `json`.
fn load(url: &str, cookie: &str, secs: u32, json: &Path) -> std::process::Child {
    Command::new(BIN)
        .args(["load", url, "--rate", "100", "--connections", "16"])
        .args(["--duration", &format!("{secs}s"), "--timeout", "10s"])
        .args(["-H", &format!("Cookie: {cookie}"), "--json"])
        .arg(json)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn unstick load")
}

/// The compose stack under load while one app container is SIGKILLed and
/// started again: no GET fails, the session lives on in Redis across
/// containers, the restarted container rejoins, and `down` leaves nothing.
#[ignore = "needs a Docker engine with Compose: .ci/run runs it where `docker info` answers"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compose_stack_loses_no_request_when_an_app_container_is_killed() {
    let mut stack = Stack::up(&[], &[]);
    let proxy = stack.published("unstick", 8080);
    let admin = stack.published("unstick", 8484);
    let apps = stack.containers("app");
    assert_eq!(apps.len(), 3, "three app replicas: {apps:?}");
    wait_for_healthy(admin, 3, Duration::from_secs(90)).await;

    let cookie = login(proxy, "ada").await;
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("load.json");
    let url = format!("http://{proxy}/whoami");
    let run = load(&url, &cookie, 20, &json);

    tokio::time::sleep(Duration::from_secs(5)).await;
    let victim = &apps[0];
    let out = docker(&["kill", "--signal", "KILL", victim]);
    assert!(out.status.success(), "docker kill: {}", text(&out));
    tokio::time::sleep(Duration::from_secs(6)).await;
    let out = docker(&["start", victim]);
    assert!(out.status.success(), "docker start: {}", text(&out));

    let status = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    assert!(status.status.success(), "unstick load: {}", text(&status));
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let requests = report["requests"].as_u64().unwrap();
    let errors = &report["errors"];
    let failed: u64 = ["refused", "reset", "timeout", "other"]
        .iter()
        .map(|k| errors[k].as_u64().unwrap())
        .sum();
    eprintln!(
        "compose kill test: {requests} GETs, status {}, errors {errors}",
        report["status"]
    );
    assert!(requests >= 1500, "{requests} requests in 20 s at 100/s");
    assert_eq!(failed, 0, "client errors: {errors}");
    assert_eq!(
        report["status"],
        serde_json::json!({ "200": requests }),
        "every GET answered 200 (a 401 is a lost session, a 502 a failed request)"
    );

    // The restarted container is back in rotation, and every container
    // knows the session.
    wait_for_healthy(admin, 3, Duration::from_secs(60)).await;
    let mut instances = std::collections::HashSet::new();
    for _ in 0..9 {
        let (status, body, instance) = whoami(proxy, &cookie).await;
        assert_eq!((status, body.trim()), (StatusCode::OK, "ada"));
        instances.insert(instance);
    }
    assert_eq!(instances.len(), 3, "answered by {instances:?}");

    let left = stack.down();
    assert!(left.is_empty(), "compose down left {left:?}");
}

/// Runs `unstick chaos --docker-service SERVICE` on the stack's `project`
/// (a short run with kill faults and the demo's session scenario): its
/// exit code and verdict.json.
fn chaos_on_service(project: &str, service: &str, report: &Path) -> (i32, serde_json::Value) {
    let scenario = repo().join("config/chaos/demo.toml");
    let out = Command::new(BIN)
        .args([
            "chaos",
            "--docker-service",
            service,
            "--docker-project",
            project,
        ])
        .args(["--docker-port", "3000", "--scenario"])
        .arg(&scenario)
        .args(["--duration", "20s", "--every", "2s", "--faults", "kill"])
        .args(["--users", "8", "--rate", "80", "--seed", "21"])
        .arg("--report-dir")
        .arg(report)
        .stdin(Stdio::null())
        .output()
        .expect("run unstick chaos");
    let code = out.status.code().unwrap_or(-1);
    eprintln!(
        "chaos --docker-service {service}: exit {code}\n{}",
        text(&out)
    );
    let json = std::fs::read(report.join("verdict.json"))
        .unwrap_or_else(|e| panic!("no verdict.json ({e}): {}", text(&out)));
    (code, serde_json::from_slice(&json).unwrap())
}

/// How many of `ids` the engine says are running and not paused.
fn running(ids: &[String]) -> usize {
    let mut args = vec!["inspect", "-f", "{{.State.Running}} {{.State.Paused}}"];
    args.extend(ids.iter().map(String::as_str));
    let out = docker(&args);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.trim() == "true false")
        .count()
}

/// `unstick chaos --docker-service` against the compose stack's
/// containers, found and killed through the Docker engine: the app sharing
/// sessions in Redis passes, its memory-store twin fails, each verdict
/// names the containers, and every container is left running.
#[ignore = "needs a Docker engine with Compose: .ci/run runs it where `docker info` answers"]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chaos_on_containers_passes_the_shared_store_app_and_fails_the_memory_twin() {
    let mut stack = Stack::up(&["twin"], &[]);
    let project = stack.project.clone();
    let dir = tempfile::tempdir().unwrap();
    for (service, want_code, want) in [("app", 0, "PASS"), ("app-memory", 1, "FAIL")] {
        let ids = stack.containers(service);
        assert_eq!(ids.len(), 3, "three {service} replicas: {ids:?}");
        let report = dir.path().join(service);
        let (code, v) = tokio::task::spawn_blocking({
            let (project, report) = (project.clone(), report.clone());
            move || chaos_on_service(&project, service, &report)
        })
        .await
        .unwrap();
        eprintln!(
            "chaos on {service}: {} ({} requests, {} ok, {} broken, {} failed; {} faults)",
            v["verdict"],
            v["totals"]["requests"],
            v["totals"]["ok"],
            v["totals"]["broken"],
            v["totals"]["failed"],
            v["timeline"].as_array().map_or(0, Vec::len)
        );
        assert_eq!(
            (code, v["verdict"].as_str()),
            (want_code, Some(want)),
            "{service}"
        );
        let names: Vec<&str> = v["instances"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["name"].as_str().unwrap())
            .collect();
        assert_eq!(names.len(), 3, "{names:?}");
        assert!(
            names
                .iter()
                .all(|n| n.contains(&project) && n.contains(service)),
            "instances named by container: {names:?}"
        );
        let killed = v["timeline"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["at_s"].is_number() && f["new_pid"].is_number())
            .count();
        assert!(
            killed >= 1,
            "at least one container killed and back: {}",
            v["timeline"]
        );
        assert_eq!(
            running(&ids),
            3,
            "chaos left every {service} container running"
        );
    }
    let left = stack.down();
    assert!(left.is_empty(), "compose down left {left:?}");
}
