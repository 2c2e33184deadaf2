//! Wires a validated config into a running balancer: listeners, proxy,
//! health checks and the admin API. `serve` and the tests both start here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::{BackendSpec, Config};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::proxy::{AccessLogger, Proxy, Settings};
use crate::server::{self, Phase, ServerOptions, Shutdown};
use crate::upstream::{Backend, PoolSettings, Upstreams};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("cannot resolve backend `{address}`: {source}")]
    Resolve { address: String, source: io::Error },
}

/// A running balancer.
pub struct App {
    /// The proxy listener's bound address (useful with port 0).
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    pub shutdown: Shutdown,
    server: JoinHandle<io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

/// The pool settings a config asks for.
pub fn pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        connect_timeout: config.timeouts.connect,
        idle_timeout: config.timeouts.upstream_idle,
        max_idle: config.limits.upstream_idle_per_backend,
    }
}

/// Resolves a backend's address: an IP literal as is, a name through DNS
/// (every address it has).
pub async fn resolve(spec: &BackendSpec) -> io::Result<Vec<SocketAddr>> {
    let (host, port) = spec.host_port();
    if let Ok(ip) = host.parse::<std::net::IpAddr>() {
        return Ok(vec![SocketAddr::new(ip, port)]);
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
    addrs.sort();
    addrs.dedup();
    Ok(addrs)
}

/// Builds the backends a config lists, resolving names.
pub async fn build_backends(
    config: &Config,
    metrics: &Metrics,
) -> Result<Vec<Arc<Backend>>, StartError> {
    let pool = pool_settings(config);
    let mut out = Vec::new();
    for spec in &config.backends {
        let addrs = resolve(spec).await.map_err(|source| StartError::Resolve {
            address: spec.address.clone(),
            source,
        })?;
        for addr in addrs {
            if out.iter().any(|b: &Arc<Backend>| b.addr == addr) {
                continue;
            }
            out.push(Arc::new(Backend::new(spec.clone(), addr, pool, metrics)));
        }
    }
    Ok(out)
}

// === impl App ===

impl App {
    /// Binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<App, StartError> {
        Self::start_with(config, Metrics::new_unregistered(), AccessLoggerChoice::Stdout).await
    }

    /// As [`App::start`], with the metrics registry and access-log sink given.
    pub async fn start_with(
        config: Config,
        metrics: Metrics,
        log: AccessLoggerChoice,
    ) -> Result<App, StartError> {
        let listener = server::bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_listener = match config.admin {
            Some(addr) => Some(
                server::bind(addr).map_err(|source| StartError::Bind { addr, source })?,
            ),
            None => None,
        };
        let admin_addr = admin_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok());

        let backends = build_backends(&config, &metrics).await?;
        let upstreams = Arc::new(Upstreams::new(backends));
        let health = Arc::new(Health::new(upstreams.clone(), config.health.clone()));
        let access_log = match log {
            AccessLoggerChoice::Stdout => AccessLogger::stdout(config.access_log),
            AccessLoggerChoice::Custom(l) => l,
        };
        let proxy = Arc::new(Proxy::new(
            upstreams.clone(),
            Settings::from_config(&config),
            metrics,
            access_log,
            health.clone(),
        ));
        let shutdown = Shutdown::new();
        let mut background = Vec::new();
        background.push(tokio::spawn(health.clone().run_active()));
        if let Some(listener) = admin_listener {
            let admin = Arc::new(Admin {
                proxy: proxy.clone(),
                shutdown: shutdown.clone(),
            });
            background.push(tokio::spawn(admin.serve(listener)));
        }
        let server = tokio::spawn(server::serve(
            listener,
            proxy.clone(),
            ServerOptions::from_config(&config),
            shutdown.clone(),
        ));
        Ok(App {
            proxy_addr,
            admin_addr,
            proxy,
            shutdown,
            server,
            background,
        })
    }

    /// Starts a graceful drain (as SIGTERM does).
    pub fn drain(&self) {
        self.shutdown.set(Phase::Drain);
    }

    /// Waits until the server has drained and stopped.
    pub async fn wait(self) -> io::Result<()> {
        let result = match self.server.await {
            Ok(r) => r,
            Err(e) => Err(io::Error::other(e)),
        };
        self.shutdown.set(Phase::Close);
        for task in self.background {
            task.abort();
        }
        result
    }
}

/// Where access-log lines go.
pub enum AccessLoggerChoice {
    /// Standard output, in the config's format.
    Stdout,
    /// A logger made by the caller (tests capture lines this way).
    Custom(AccessLogger),
}
