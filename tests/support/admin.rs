//! The admin JSON API: requests that must answer JSON, and the backend list.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{Method, StatusCode};
use serde_json::Value;
use unstick::testkit::client::{self, Reply};

/// `method path` on the admin listener: the status and the body as JSON
/// (panics if the body is not JSON).
pub async fn json(admin: SocketAddr, method: Method, path: &str) -> (StatusCode, Value) {
    let r = client::request(admin, method, path, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    let v = serde_json::from_slice(&r.body)
        .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {}", r.text()));
    (r.status, v)
}

/// The body of a reply that must be `application/json`.
pub fn body(r: &Reply) -> Value {
    assert_eq!(
        r.headers.get("content-type").map(|v| v.as_bytes()),
        Some(&b"application/json"[..]),
        "{r:?}"
    );
    serde_json::from_slice(&r.body).unwrap_or_else(|e| panic!("{e}: {}", r.text()))
}

/// `GET path`, which must answer 200 with `application/json`.
pub async fn get(admin: SocketAddr, path: &str) -> Value {
    let r = client::get(admin, path)
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    assert_eq!(r.status, StatusCode::OK, "GET {path}: {}", r.text());
    body(&r)
}

/// `POST path` (no body), which must answer 200 with `application/json`.
pub async fn post(admin: SocketAddr, path: &str) -> Value {
    let r = client::request(admin, Method::POST, path, &[], Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(r.status, StatusCode::OK, "POST {path}: {}", r.text());
    body(&r)
}

/// `GET /api/backends`: every backend the balancer knows, as listed.
pub async fn backends(admin: SocketAddr) -> Vec<Value> {
    get(admin, "/api/backends")
        .await
        .as_array()
        .expect("a JSON list")
        .clone()
}

/// The entry of `list` for `address` (panics if absent).
pub fn find<'a>(list: &'a [Value], address: &str) -> &'a Value {
    list.iter()
        .find(|b| b["address"] == address)
        .unwrap_or_else(|| panic!("no {address} in {list:?}"))
}
