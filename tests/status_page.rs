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
