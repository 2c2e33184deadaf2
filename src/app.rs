//! Wires a validated config into a running balancer: listeners, proxy,
//! discovery, health checks, reload and the admin API. `serve` and the tests
//! both start here.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinHandle;

use crate::admin::Admin;
use crate::config::Config;
use crate::health::Health;
use crate::metrics::Metrics;
use crate::proxy::{AccessLogger, Proxy, Settings};
use crate::reload::{self, Reloader, Source};
use crate::server::{self, ServerOptions};
use crate::shutdown::{Phase, Shutdown};
use crate::tls::{Reload, ServerCerts, TlsError};
use crate::upstream::discovery::{Discovery, Resolve, SystemResolver};
use crate::upstream::{self, worker, Upstreams};

/// Why the balancer could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("TLS: {0}")]
    Tls(#[from] TlsError),
}

/// A running balancer.
pub struct App {
    /// The proxy listener's bound address (useful with port 0).
    pub proxy_addr: SocketAddr,
    pub admin_addr: Option<SocketAddr>,
    /// The HTTP->HTTPS redirect listener's bound address, if configured.
    pub redirect_addr: Option<SocketAddr>,
    /// The listener's certificates, if it speaks TLS (see [`App::reload_tls`]).
    pub tls: Option<Arc<ServerCerts>>,
    pub proxy: Arc<Proxy>,
    pub shutdown: Shutdown,
    /// Applies new configurations (SIGHUP, file watcher, `POST /api/reload`).
    pub reloader: Arc<Reloader>,
    /// The backend set: configured specs and what their names resolve to.
    pub discovery: Arc<Discovery>,
    /// One thread per worker, each running its own single-threaded runtime.
    server: Vec<std::thread::JoinHandle<io::Result<()>>>,
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
    pub watch: Option<reload::WatchedFile>,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            metrics: Metrics::new_unregistered(),
            log: AccessLoggerChoice::Stdout,
            resolver: Arc::new(SystemResolver::default()),
            source: None,
            watch: None,
        }
    }
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
        let workers = match config.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        // Pools are sharded per worker: set before any backend is made.
        worker::set_count(workers);
        let listeners = Listeners::bind(&config, workers)?;
        let certs = load_certs(&config)?;
        let redirect = bind_redirect(&config)?;
        let server_options = server_options(&config, certs.as_deref())?;
        let StartOptions {
            metrics,
            log,
            resolver,
            source,
            watch,
        } = opts;
        let (proxy, discovery, health) = build_proxy(&config, metrics, log, resolver).await?;
        let shutdown = Shutdown::new();
        let reloader = Arc::new(Reloader::new(
            proxy.clone(),
            discovery.clone(),
            config.clone(),
            source,
        ));
        let mut background = vec![
            tokio::spawn(health.run_active()),
            tokio::spawn(discovery.clone().run()),
        ];
        if let Some(path) = watch {
            background.push(tokio::spawn(reload::watch_file(reloader.clone(), path)));
        }
        if let Some(listener) = listeners.admin {
            background.push(spawn_admin(listener, &proxy, &shutdown, &reloader));
        }
        if let Some(certs) = &certs {
            background.push(tokio::spawn(watch_certs(
                certs.clone(),
                proxy.metrics.clone(),
            )));
        }
        let redirect_addr = redirect.as_ref().and_then(|l| l.local_addr().ok());
        if let Some(listener) = redirect {
            let port = listeners.proxy_addr.port();
            background.push(spawn_redirect(listener, port, &server_options, &shutdown));
        }
        background.push(tokio::spawn(server::drain_deadline(
            shutdown.clone(),
            config.timeouts.drain,
        )));
        let server = spawn_workers(listeners.proxy, &proxy, &server_options, &shutdown).map_err(
            |source| StartError::Bind {
                addr: config.listen,
                source,
            },
        )?;
        Ok(App {
            proxy_addr: listeners.proxy_addr,
            admin_addr: listeners.admin_addr,
            redirect_addr,
            tls: certs,
            proxy,
            shutdown,
            reloader,
            discovery,
            server,
            background,
        })
    }

    /// Re-reads the certificate files now (as SIGHUP does); see [`reload_certs`].
    pub fn reload_tls(&self) {
        if let Some(certs) = &self.tls {
            reload_certs(certs, &self.proxy.metrics, "signal");
        }
    }

    /// Tries one TCP connect to every backend (each bounded by `limit`) and
    /// warns on stderr when there is nothing to balance: no backend at all,
    /// or none that accepts a connection. Some silent backends among
    /// answering ones are named too. Returns what it found.
    pub fn warn_unreachable_backends(
        &self,
        limit: std::time::Duration,
    ) -> impl std::future::Future<Output = BackendsAtStart> + Send + 'static {
        let backends = self.proxy.upstreams.load().all.clone();
        let names = self.discovery.names();
        probe_backends(backends, names.is_empty(), limit)
    }

    /// Starts a graceful drain (as SIGTERM does).
    pub fn drain(&self) {
        self.shutdown.set(Phase::Drain);
    }

    /// Waits until the server has drained and stopped.
    pub async fn wait(self) -> io::Result<()> {
        let workers = self.server;
        let joined = tokio::task::spawn_blocking(move || {
            workers
                .into_iter()
                .map(|w| {
                    w.join()
                        .unwrap_or_else(|_| Err(io::Error::other("a worker panicked")))
                })
                .collect::<io::Result<Vec<()>>>()
        })
        .await;
        let result = match joined {
            Ok(r) => r.map(drop),
            Err(e) => Err(io::Error::other(e)),
        };
        self.shutdown.set(Phase::Close);
        for task in self.background {
            task.abort();
        }
        result
    }
}

/// The connect probe of [`App::warn_unreachable_backends`].
async fn probe_backends(
    backends: Vec<Arc<upstream::Backend>>,
    no_names: bool,
    limit: std::time::Duration,
) -> BackendsAtStart {
    if backends.is_empty() {
        if no_names {
            tracing::warn!(
                "no backends configured: every request is answered 503; \
                     add --backend ADDR, UNSTICK_BACKENDS or `backends = [...]`"
            );
        }
        return BackendsAtStart::None;
    }
    let probes = backends.iter().map(|b| {
        let addr = b.addr;
        async move {
            match tokio::time::timeout(limit, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => None,
                Ok(Err(e)) => Some(format!("{addr} ({e})")),
                Err(_) => Some(format!("{addr} (no answer in {limit:?})")),
            }
        }
    });
    let silent: Vec<String> = futures_util::future::join_all(probes)
        .await
        .into_iter()
        .flatten()
        .collect();
    let found = match silent.len() {
        0 => BackendsAtStart::Answering,
        n if n == backends.len() => BackendsAtStart::NoneAnswers,
        _ => BackendsAtStart::SomeSilent,
    };
    let backends = silent.join(", ");
    match found {
        BackendsAtStart::NoneAnswers => tracing::warn!(
            %backends,
            "no backend accepts a connection: requests get 502 until one does"
        ),
        BackendsAtStart::SomeSilent => tracing::warn!(
            %backends,
            "some backends do not accept a connection: they leave rotation as requests fail"
        ),
        _ => {}
    }
    found
}

/// What a connect probe found at start ([`App::warn_unreachable_backends`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendsAtStart {
    /// No backend (none configured, or no name resolved yet).
    None,
    /// Every backend accepted a connection.
    Answering,
    /// Some did not.
    SomeSilent,
    /// None did.
    NoneAnswers,
}

/// Reads and checks every file `serve` loads at start, as it loads them: the
/// listener's certificates and keys (each chain parsed, each key matched to
/// its certificate) and the backends' CA bundle and client certificate.
/// `unstick check` runs it, so it refuses what `serve` would.
pub fn load_files(config: &Config) -> Result<(), TlsError> {
    if let Some(tls) = &config.tls {
        ServerCerts::load(tls)?.server_config(config.http2.enabled)?;
    }
    upstream::pool_settings(config)?;
    Ok(())
}

/// The proxy's listeners (one per worker) and the admin listener, bound.
struct Listeners {
    proxy: Vec<std::net::TcpListener>,
    proxy_addr: SocketAddr,
    admin: Option<tokio::net::TcpListener>,
    admin_addr: Option<SocketAddr>,
}

impl Listeners {
    fn bind(config: &Config, workers: usize) -> Result<Listeners, StartError> {
        let bind_error = |source| StartError::Bind {
            addr: config.listen,
            source,
        };
        let proxy = server::bind_workers(config.listen, workers).map_err(bind_error)?;
        let proxy_addr = proxy[0].local_addr().map_err(bind_error)?;
        let admin = match config.admin {
            Some(addr) => {
                Some(server::bind(addr).map_err(|source| StartError::Bind { addr, source })?)
            }
            None => None,
        };
        Ok(Listeners {
            proxy,
            proxy_addr,
            admin_addr: admin.as_ref().and_then(|l| l.local_addr().ok()),
            admin,
        })
    }
}

/// The listener's certificates, when it speaks TLS.
fn load_certs(config: &Config) -> Result<Option<Arc<ServerCerts>>, StartError> {
    match &config.tls {
        Some(t) => Ok(Some(Arc::new(ServerCerts::load(t)?))),
        None => Ok(None),
    }
}

/// The workers' options, with the TLS server config when there are certificates.
fn server_options(
    config: &Config,
    certs: Option<&ServerCerts>,
) -> Result<ServerOptions, StartError> {
    let mut options = ServerOptions::from_config(config);
    if let Some(certs) = certs {
        options.tls = Some(certs.server_config(config.http2.enabled)?);
    }
    Ok(options)
}

/// Serves the admin API on `listener`.
fn spawn_admin(
    listener: tokio::net::TcpListener,
    proxy: &Arc<Proxy>,
    shutdown: &Shutdown,
    reloader: &Arc<Reloader>,
) -> JoinHandle<()> {
    let admin = Arc::new(Admin {
        proxy: proxy.clone(),
        shutdown: shutdown.clone(),
        reloader: reloader.clone(),
        started: std::time::SystemTime::now(),
    });
    tokio::spawn(admin.serve(listener))
}

/// Redirects plain HTTP on `listener` to HTTPS on `port`.
fn spawn_redirect(
    listener: tokio::net::TcpListener,
    port: u16,
    options: &ServerOptions,
    shutdown: &Shutdown,
) -> JoinHandle<()> {
    let redirect = server::serve_redirect(listener, port, options.clone(), shutdown.clone());
    tokio::spawn(async move {
        let _ = redirect.await;
    })
}

/// The HTTP->HTTPS redirect listener, if `tls.redirect_listen` asks for one.
fn bind_redirect(config: &Config) -> Result<Option<tokio::net::TcpListener>, StartError> {
    match config.tls.as_ref().and_then(|t| t.redirect_listen) {
        Some(addr) => Ok(Some(
            server::bind(addr).map_err(|source| StartError::Bind { addr, source })?,
        )),
        None => Ok(None),
    }
}

/// The request path: the backends (names resolved once), health checks and
/// the proxy with its access log.
async fn build_proxy(
    config: &Config,
    metrics: Metrics,
    log: AccessLoggerChoice,
    resolver: Arc<dyn Resolve>,
) -> Result<(Arc<Proxy>, Arc<Discovery>, Arc<Health>), StartError> {
    let upstreams = Arc::new(Upstreams::new(Vec::new()));
    let discovery = Discovery::new(
        upstreams.clone(),
        metrics.clone(),
        resolver,
        upstream::backend_factory(config, &metrics)?,
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
        upstreams,
        Settings::from_config(config),
        metrics,
        access_log,
        health.clone(),
    ));
    Ok((proxy, discovery, health))
}

/// One thread per listener, each serving it ([`run_worker`]), with one
/// connection limit shared by all.
fn spawn_workers(
    listeners: Vec<std::net::TcpListener>,
    proxy: &Arc<Proxy>,
    options: &ServerOptions,
    shutdown: &Shutdown,
) -> io::Result<Vec<std::thread::JoinHandle<io::Result<()>>>> {
    if let Err(e) = server::raise_fd_limit(options.max_connections) {
        tracing::warn!(error = %e, "cannot read the open-file limit");
    }
    let limit = Arc::new(Semaphore::new(options.max_connections));
    let seats = server::balance::seats(listeners.len());
    let mut server = Vec::new();
    for ((i, listener), seat) in listeners.into_iter().enumerate().zip(seats) {
        let (proxy, options, shutdown, limit) = (
            proxy.clone(),
            options.clone(),
            shutdown.clone(),
            limit.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("unstick-worker-{i}"))
            .spawn(move || run_worker(i, seat, listener, proxy, options, shutdown, limit));
        server.push(spawned?);
    }
    Ok(server)
}

/// Reloads the listener's certificates if their files changed: logs and
/// counts the result. A bad file leaves the old certificates in use.
pub fn reload_certs(certs: &ServerCerts, metrics: &Metrics, trigger: &str) {
    match certs.reload() {
        Reload::Unchanged => {
            tracing::debug!(trigger, "certificate files unchanged");
        }
        Reload::Reloaded => {
            tracing::info!(trigger, "certificates reloaded: new connections use them");
            metrics.tls_reloads.with_label_values(&["ok"]).inc();
        }
        Reload::Failed(e) => {
            tracing::error!(trigger, error = %e, "certificate reload failed: the old certificates stay in use");
            metrics.tls_reloads.with_label_values(&["error"]).inc();
        }
    }
}

/// Checks the certificate files every `tls.reload_interval`.
async fn watch_certs(certs: Arc<ServerCerts>, metrics: Metrics) {
    let mut tick = tokio::time::interval(certs.reload_interval());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        reload_certs(&certs, &metrics, "interval");
    }
}

/// Where access-log lines go.
pub enum AccessLoggerChoice {
    /// Standard output, in the config's format.
    Stdout,
    /// A logger made by the caller (tests capture lines this way).
    Custom(AccessLogger),
}

/// One worker: a single-threaded runtime serving its own listener. A
/// client's connection, its requests and the backend connections they use
/// stay on this thread (thread per core): no work stealing, no cross-thread
/// wake-ups, and per-worker connection pools.
fn run_worker(
    i: usize,
    seat: server::balance::Seat,
    listener: std::net::TcpListener,
    proxy: Arc<Proxy>,
    options: ServerOptions,
    shutdown: Shutdown,
    limit: Arc<Semaphore>,
) -> io::Result<()> {
    worker::enter(i);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        server::serve(listener, proxy, options, shutdown, limit, seat).await
    })
}
