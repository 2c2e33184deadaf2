//! unstick in-process ([`App`]) in front of N in-process fake backends, for tests that read its state.

use std::net::SocketAddr;

use unstick::app::App;
use unstick::config::Config;
use unstick::testkit::{test_config, FakeBackend};

use super::backends::{addrs, fakes};
use super::metrics::Scrape;

/// An in-process unstick and its fake backends (`b0`, `b1`, ...).
pub struct Local {
    pub app: App,
    pub backends: Vec<FakeBackend>,
}

impl Local {
    /// `n` fake backends and unstick with [`test_config`] in front of them.
    pub async fn start(n: usize) -> Local {
        Local::start_with(n, |_| {}).await
    }

    /// As [`Local::start`], with `edit` applied to the config first.
    pub async fn start_with(n: usize, edit: impl FnOnce(&mut Config)) -> Local {
        let backends = fakes(n).await;
        let mut config = test_config(&addrs(&backends));
        edit(&mut config);
        Local {
            app: start(config).await,
            backends,
        }
    }

    /// The proxy listener.
    pub fn addr(&self) -> SocketAddr {
        self.app.proxy_addr
    }

    /// The admin listener (panics if it is off).
    pub fn admin(&self) -> SocketAddr {
        self.app.admin_addr.expect("the admin listener is on")
    }

    /// Its metrics, read from the registry.
    pub fn metrics(&self) -> Scrape {
        Scrape::of(&self.app)
    }

    /// Requests each backend received, in order.
    pub fn requests(&self) -> Vec<u64> {
        self.backends.iter().map(FakeBackend::requests).collect()
    }
}

/// Starts unstick in-process in front of `backends` with [`test_config`]
/// and `edit` applied to it (panics if it does not start).
pub async fn front(backends: &[SocketAddr], edit: impl FnOnce(&mut Config)) -> App {
    let mut config = test_config(backends);
    edit(&mut config);
    start(config).await
}

/// Starts unstick in-process with `config` (panics if it does not start).
pub async fn start(config: Config) -> App {
    App::start(config).await.expect("unstick starts")
}
