//! Wires a validated config into a running balancer: listeners, proxy,
//! discovery, health checks, reload and the admin API. `serve` and the tests
//! both start here.

use std::io;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::{BackendSpec, Config};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::proxy::{AccessLogger, Proxy, Settings};
use crate::reload::{self, Reloader, Source};
use crate::server::{self, Phase, ServerOptions, Shutdown};
use crate::upstream::discovery::{Discovery, MakeBackend, Resolve, SystemResolver};
use crate::upstream::{Backend, PoolSettings, Upstreams};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
}

/// A running balancer.
pub struct App {
    /// The proxy listener's bound address (useful with port 0).
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    pub proxy: Arc<Proxy>,
    pub shutdown: Shutdown,
    /// Applies new configurations (SIGHUP, file watcher, `POST /api/reload`).
    pub reloader: Arc<Reloader>,
    /// The backend set: configured specs and what their names resolve to.
    pub discovery: Arc<Discovery>,
    server: JoinHandle<io::Result<()>>,
    background: Vec<JoinHandle<()>>,
}

/// How to start an [`App`] beyond its config.
pub struct StartOptions {
    /// The metrics registry (a fresh one by default).
    pub metrics: Metrics,
    /// Where access-log lines go (stdout by default).
    pub log: AccessLoggerChoice,
    /// Resolves backend names ([`SystemResolver`] unless a test fakes it).
    pub resolver: Arc<dyn Resolve>,
    /// Loads the configuration again on reload (`None`: reload is refused).
    pub source: Option<Source>,
    /// A config file to watch for changes (`reload.watch` turns it on and off).
    pub watch: Option<PathBuf>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            metrics: Metrics::new_unregistered(),
            log: AccessLoggerChoice::Stdout,
            resolver: Arc::new(SystemResolver),
            source: None,
            watch: None,
        }
    }
}

/// The pool settings a config asks for.
pub fn pool_settings(config: &Config) -> PoolSettings {
    PoolSettings {
        connect_timeout: config.timeouts.connect,
        idle_timeout: config.timeouts.upstream_idle,
        max_idle: config.limits.upstream_idle_per_backend,
    }
}

/// Makes backends as `config` wants them (pool settings, metrics).
pub fn backend_factory(config: &Config, metrics: &Metrics) -> MakeBackend {
    let pool = pool_settings(config);
    let metrics = metrics.clone();
    Arc::new(move |spec: &BackendSpec, addr: SocketAddr| {
        Backend::new(spec.clone(), addr, pool, &metrics)
    })
}

// === impl App ===

impl App {
    /// Binds the listeners and starts serving.
    pub async fn start(config: Config) -> Result<App, StartError> {
        Self::start_with(
            config,
            Metrics::new_unregistered(),
            AccessLoggerChoice::Stdout,
        )
        .await
    }

    /// As [`App::start`], with the metrics registry and access-log sink given.
    pub async fn start_with(
        config: Config,
        metrics: Metrics,
        log: AccessLoggerChoice,
    ) -> Result<App, StartError> {
        let opts = StartOptions {
            metrics,
            log,
            ..StartOptions::default()
        };
        Self::start_opts(config, opts).await
    }

    /// Binds the listeners, resolves backend names once (a name that does
    /// not resolve yet starts with no backends and is retried), and starts
    /// serving, discovery, health checks and the file watcher.
    pub async fn start_opts(config: Config, opts: StartOptions) -> Result<App, StartError> {
        let StartOptions {
            metrics,
            log,
            resolver,
            source,
            watch,
        } = opts;
        let listener = server::bind(config.listen).map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let proxy_addr = listener.local_addr().map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
        let admin_listener = match config.admin {
            Some(addr) => {
                Some(server::bind(addr).map_err(|source| StartError::Bind { addr, source })?)
            }
            None => None,
        };
        let admin_addr = admin_listener.as_ref().and_then(|l| l.local_addr().ok());

        let upstreams = Arc::new(Upstreams::new(Vec::new()));
        let discovery = Discovery::new(
            upstreams.clone(),
            metrics.clone(),
            resolver,
            backend_factory(&config, &metrics),
            config.discovery.clone(),
        );
        discovery
            .apply(config.backends.clone(), None, config.discovery.clone())
            .await;
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
        let reloader = Arc::new(Reloader::new(
            proxy.clone(),
            discovery.clone(),
            config.clone(),
            source,
        ));
        let mut background = Vec::new();
        background.push(tokio::spawn(health.clone().run_active()));
        background.push(tokio::spawn(discovery.clone().run()));
        if let Some(path) = watch {
            background.push(tokio::spawn(reload::watch_file(reloader.clone(), path)));
        }
        if let Some(listener) = admin_listener {
            let admin = Arc::new(Admin {
                proxy: proxy.clone(),
                shutdown: shutdown.clone(),
                reloader: reloader.clone(),
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
            reloader,
            discovery,
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
