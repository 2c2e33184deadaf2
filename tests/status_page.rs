//! The admin listener's status page (`GET /`) and its data (`GET /api/status`): served whole from the binary, updated from live state.

mod support;

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use support::{admin, wait, Serve};
use unstick::testkit::client;

/// `GET /api/status`.
async fn status(rig: &support::Rig) -> Value {
    admin::get(rig.lb.admin(), "/api/status").await
}

/// The backend `address` in a status snapshot.
fn backend<'a>(s: &'a Value, address: &str) -> &'a Value {
    s["backends"]
        .as_array()
        .expect("a list of backends")
        .iter()
        .find(|b| b["address"] == address)
        .unwrap_or_else(|| panic!("no {address} in {s}"))
}

#[tokio::test]
async fn the_page_is_one_self_contained_document() {
    let rig = Serve::child_backends(1).start();
    let r = client::get(rig.lb.admin(), "/").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let header = |name: &str| r.headers.get(name).unwrap().to_str().unwrap().to_owned();
    assert_eq!(header("content-type"), "text/html; charset=utf-8");
    let csp = header("content-security-policy");
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("connect-src 'self'"), "{csp}");
    let page = r.text();
    assert!(page.contains("api/status"), "the page polls /api/status");
    // Nothing is loaded from elsewhere: no external script, style, font or image.
    for external in ["http://", "https://", "src=\"//", "@import", "url("] {
        assert!(!page.contains(external), "the page refers to `{external}`");
    }
    // Data is set as text, never parsed as HTML.
    assert!(!page.contains("innerHTML") && !page.contains("insertAdjacentHTML"));
    let post = client::request(rig.lb.admin(), Method::POST, "/", &[], "")
        .await
        .unwrap();
    assert_eq!(post.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test]
async fn status_shows_backends_traffic_ejections_and_the_last_reload() {
    let mut rig = Serve::child_backends(2).start();
    let (a, b) = (
        rig.backends[0].addr.to_string(),
        rig.backends[1].addr.to_string(),
    );
    for _ in 0..4 {
        client::get(rig.lb.addr, "/").await.unwrap();
    }
    let s = status(&rig).await;
    assert_eq!(s["phase"], "running");
    assert_eq!(s["requests"]["by_class"]["2xx"], 4, "{s}");
    let bounds = s["latency_bounds_seconds"].as_array().unwrap().len();
    assert_eq!(
        s["requests"]["latency"].as_array().unwrap().len(),
        bounds + 1
    );
    assert_eq!(s["requests"]["latency"][bounds], 4);
    for addr in [&a, &b] {
        let backend = backend(&s, addr);
        assert_eq!(backend["state"], "healthy");
        assert_eq!(backend["responses"]["2xx"], 2, "{backend}");
        assert_eq!(backend["latency"][bounds], 2);
    }
    let paths: Vec<&str> = s["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["path"].as_str().unwrap())
        .collect();
    for path in [
        "/",
        "/api/status",
        "/metrics",
        "/api/backends",
        "/api/statelessness",
        "/api/reload",
    ] {
        assert!(paths.contains(&path), "{path} missing from {paths:?}");
    }

    // A backend dies: the next request to it is refused and ejects it.
    rig.backends[1].process.signal(libc::SIGKILL);
    let _ = rig.backends[1].process.wait_timeout(Duration::from_secs(5));
    wait::until("the dead backend's ejection", wait::PATIENCE, async || {
        let _ = client::get(rig.lb.addr, "/").await;
        backend(&status(&rig).await, &b)["state"] == "ejected"
    })
    .await;
    let s = status(&rig).await;
    let dead = backend(&s, &b);
    assert_eq!(dead["in_rotation"], false);
    assert_eq!(dead["ejections"]["connect_refused"], 1, "{dead}");
    assert!(
        dead["last_error"].as_str().unwrap().contains("connect"),
        "{dead}"
    );
    assert!(dead["ejected_since"].is_string());

    // A refused reload is shown with its reason; a good one replaces it.
    assert!(s["reload"]["last"].is_null());
    rig.files
        .write("unstick.toml", "backends = [\"<b>nope</b>\"]\n");
    let r = client::request(rig.lb.admin(), Method::POST, "/api/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let last = status(&rig).await["reload"].clone();
    assert_eq!(last["failed"], 1);
    assert_eq!(last["last"]["result"], "failure");
    assert_eq!(last["last"]["trigger"], "admin-api");
    assert!(
        last["last"]["detail"]
            .as_str()
            .unwrap()
            .contains("<b>nope</b>"),
        "{last}"
    );
    let only_a: Vec<_> = vec![(rig.backends[0].addr, 1)];
    rig.rewrite_config(&only_a, "");
    admin::post(rig.lb.admin(), "/api/reload").await;
    let s = status(&rig).await;
    assert_eq!(s["reload"]["last"]["result"], "success", "{s}");
    assert_eq!(s["reload"]["succeeded"], 1);
}

/// chromedriver's W3C WebDriver API, over the crate's own HTTP client.
struct Driver {
    process: std::process::Child,
    addr: std::net::SocketAddr,
    session: String,
}

impl Driver {
    /// Starts chromedriver and a headless Chromium session; `None` (with a
    /// message saying why) when either is not installed.
    async fn start() -> Option<Driver> {
        let (chromium, driver) = ("/usr/bin/chromium", "/usr/bin/chromedriver");
        if !std::path::Path::new(chromium).exists() || !std::path::Path::new(driver).exists() {
            let msg = "skipped: the status page browser test needs Debian's chromium and \
                       chromium-driver (apt-get install -y chromium chromium-driver)";
            assert!(
                std::env::var_os("UNSTICK_REQUIRE_BROWSER").is_none(),
                "{msg}"
            );
            eprintln!("{msg}");
            return None;
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let process = std::process::Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let mut d = Driver {
            process,
            addr,
            session: String::new(),
        };
        wait::until(
            "chromedriver to listen",
            Duration::from_secs(30),
            async || client::get(addr, "/status").await.is_ok(),
        )
        .await;
        let caps = serde_json::json!({"capabilities": {"alwaysMatch": {
            "goog:chromeOptions": {"binary": chromium, "args": [
                "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1280,1400"]},
            "goog:loggingPrefs": {"browser": "ALL"}}}});
        let v = d.call(Method::POST, "/session", caps).await;
        d.session = v["sessionId"].as_str().expect("a session").to_owned();
        Some(d)
    }

    async fn call(&self, method: Method, path: &str, body: Value) -> Value {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let headers = [("content-type", "application/json")];
        let r = client::request(self.addr, method, path, &headers, body)
            .await
            .unwrap();
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        assert!(r.status.is_success(), "WebDriver {path}: {}", r.text());
        v["value"].clone()
    }

    async fn session(&self, method: Method, path: &str, body: Value) -> Value {
        let path = format!("/session/{}{path}", self.session);
        self.call(method, &path, body).await
    }

    /// Runs `script` (a function body) in the page and returns its value.
    async fn js(&self, script: &str) -> Value {
        let body = serde_json::json!({"script": script, "args": []});
        self.session(Method::POST, "/execute/sync", body).await
    }

    /// The state shown for backend `address` (null until its row is drawn).
    async fn shown_state(&self, address: &str) -> Value {
        let script = format!(
            "const r = document.querySelector('#backends tr[data-backend=\"{address}\"] .state'); \
             return r ? r.textContent : null;"
        );
        self.js(&script).await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_shows_backends_and_their_state_changes_live() {
    let Some(driver) = Driver::start().await else {
        return;
    };
    let mut rig = Serve::child_backends(2).start();
    let (a, b) = (
        rig.backends[0].addr.to_string(),
        rig.backends[1].addr.to_string(),
    );
    let url = format!("http://{}/", rig.lb.admin());
    driver
        .session(Method::POST, "/url", serde_json::json!({ "url": url }))
        .await;
    let patience = Duration::from_secs(30);
    for addr in [&a, &b] {
        wait::until("the page to show the backends", patience, async || {
            driver.shown_state(addr).await == "healthy"
        })
        .await;
    }
    let pollers = driver
        .js("return document.getElementById('live').textContent;")
        .await;
    assert!(pollers.as_str().unwrap().starts_with("live"), "{pollers}");

    // A backend dies; the page shows it ejected without being reloaded.
    driver.js("window.sameDocument = true; return null;").await;
    rig.backends[1].process.signal(libc::SIGKILL);
    let _ = rig.backends[1].process.wait_timeout(Duration::from_secs(5));
    wait::until(
        "the page to show the dead backend ejected",
        patience,
        async || {
            let _ = client::get(rig.lb.addr, "/").await;
            driver.shown_state(&b).await == "ejected"
        },
    )
    .await;
    assert_eq!(driver.shown_state(&a).await, "healthy");
    assert_eq!(
        driver.js("return window.sameDocument === true;").await,
        true
    );

    // A refused reload's error, markup and all, is shown as text.
    let hostile = "<img src=x onerror=\"window.pwned=1\">";
    rig.files.write(
        "unstick.toml",
        &format!("backends = [\"{}\"]\n", hostile.replace('"', "\\\"")),
    );
    let r = client::request(rig.lb.admin(), Method::POST, "/api/reload", &[], "")
        .await
        .unwrap();
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    wait::until(
        "the page to show the refused reload",
        patience,
        async || {
            let shown = driver
                .js("return document.getElementById('reload-last').textContent;")
                .await;
            shown
                .as_str()
                .is_some_and(|s| s.contains("failure") && s.contains("<img"))
        },
    )
    .await;
    let injected = driver
        .js("return [window.pwned === undefined, document.images.length];")
        .await;
    assert_eq!(injected, serde_json::json!([true, 0]));

    // Nothing went wrong in the page.
    let log = driver
        .session(
            Method::POST,
            "/se/log",
            serde_json::json!({"type": "browser"}),
        )
        .await;
    let severe: Vec<&Value> = log
        .as_array()
        .expect("a list of log entries")
        .iter()
        .filter(|e| e["level"] == "SEVERE")
        .collect();
    assert!(severe.is_empty(), "console errors: {severe:?}");
    driver.session(Method::DELETE, "", Value::Null).await;
}
