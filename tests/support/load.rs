//! The load engine against a URL: its settings with a test's tweaks, a keep-alive `GET`, a run to its report.

use std::net::SocketAddr;

use bytes::Bytes;
use unstick::load::{Engine, FixedRequest, Report, Settings, Target};

/// `http://ADDR/PATH`.
pub fn url(addr: SocketAddr, path: &str) -> String {
    format!("http://{addr}{path}")
}

/// A keep-alive HTTP/1.1 `GET` of the target's URL.
pub fn keep_alive_get(target: &Target) -> FixedRequest {
    FixedRequest::new(target, http::Method::GET, vec![], Bytes::new(), false, true)
}

/// The settings for `url` with `tweak` applied, and a keep-alive `GET` of it.
pub fn get(url: &str, tweak: impl FnOnce(&mut Settings)) -> (Settings, FixedRequest) {
    let target = Target::parse(url).unwrap();
    let mut settings = Settings::new(target.clone());
    tweak(&mut settings);
    (settings, keep_alive_get(&target))
}

/// Runs keep-alive `GET`s of `url` with `tweak`ed settings to their report.
pub async fn run_get(url: &str, tweak: impl FnOnce(&mut Settings)) -> Report {
    let (settings, workload) = get(url, tweak);
    Engine::new(settings, workload)
        .unwrap()
        .run()
        .await
        .unwrap()
}
