//! `unstick serve` and `unstick check`: config from file, env and flags.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Args;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::app::{App, StartOptions};
use crate::config::{
    env_overrides, origin_of_key, Config, ConfigError, Origin, Override, RawConfig,
};
use crate::reload::{Trigger, WatchedFile};
use crate::shutdown::Phase;
use crate::tls::TlsError;

/// Flags that override the config file (which env vars override in turn).
#[derive(Debug, Clone, Args, Default)]
pub struct ConfigArgs {
    /// TOML config file [env: UNSTICK_CONFIG]
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Proxy listener address [env: UNSTICK_LISTEN] [default: 127.0.0.1:8080]
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// A backend, `[SCHEME://]HOST:PORT[=WEIGHT]`; repeat for more [env: UNSTICK_BACKENDS, comma-separated]
    #[arg(long = "backend", value_name = "ADDR")]
    pub backends: Vec<String>,
    /// `round-robin` or `least-connections` [env: UNSTICK_ALGORITHM]
    #[arg(long, value_name = "NAME")]
    pub algorithm: Option<String>,
    /// Admin listener address, or `off` [env: UNSTICK_ADMIN] [default: 127.0.0.1:8484]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Access log format: `off`, `common` or `json` [env: UNSTICK_ACCESS_LOG] [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub access_log: Option<String>,
    /// PEM certificate chain: the listener speaks TLS [env: UNSTICK_TLS_CERT]
    #[arg(long, value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert [env: UNSTICK_TLS_KEY]
    #[arg(long, value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl ConfigArgs {
    /// The config file: the flag, else `UNSTICK_CONFIG`.
    pub fn file(&self) -> Option<PathBuf> {
        self.config
            .clone()
            .or_else(|| std::env::var_os("UNSTICK_CONFIG").map(PathBuf::from))
    }

    /// Env overrides, then flag overrides (flags win).
    pub fn overrides(&self) -> Vec<Override> {
        let mut out = env_overrides(|k| std::env::var(k).ok());
        let mut flag = |name: &str, key: &str, value: toml::Value| {
            out.push(Override {
                origin: Origin::Flag(name.to_owned()),
                key: key.to_owned(),
                value,
            })
        };
        let s = |v: &String| toml::Value::String(v.clone());
        if let Some(v) = &self.listen {
            flag("--listen", "listen", s(v));
        }
        if !self.backends.is_empty() {
            let list = self.backends.iter().map(s).collect();
            flag("--backend", "backends", toml::Value::Array(list));
        }
        if let Some(v) = &self.algorithm {
            flag("--algorithm", "algorithm", s(v));
        }
        if let Some(v) = &self.admin {
            flag("--admin", "admin", s(v));
        }
        if let Some(v) = &self.access_log {
            flag("--access-log", "access_log", s(v));
        }
        let path = |p: &PathBuf| toml::Value::String(p.to_string_lossy().into_owned());
        if let Some(v) = &self.tls_cert {
            flag("--tls-cert", "tls.cert", path(v));
        }
        if let Some(v) = &self.tls_key {
            flag("--tls-key", "tls.key", path(v));
        }
        out
    }

    /// Loads and validates the merged configuration; a misspelled
    /// `UNSTICK_*` variable is refused as a mistyped key in the file is.
    pub fn load(&self) -> Result<(RawConfig, Config), ConfigError> {
        let vars: Vec<String> = std::env::vars_os()
            .filter_map(|(k, _)| k.into_string().ok())
            .collect();
        let ignore = std::env::var("UNSTICK_ENV_IGNORE").unwrap_or_default();
        crate::config::check_env_names(vars.iter().map(String::as_str), &ignore)?;
        RawConfig::load(self.file().as_deref(), &self.overrides())
    }

    /// [`ConfigArgs::load`], then every file the configuration names read
    /// and checked as `serve` does at start ([`crate::app::load_files`]); a
    /// bad file is blamed on the key that names it and where that was set.
    pub fn load_checked(&self) -> Result<(RawConfig, Config), ConfigError> {
        let (raw, config) = self.load()?;
        crate::app::load_files(&config).map_err(|e| {
            let key = key_of_file(&config, &e);
            ConfigError {
                origin: origin_of_key(self.file().as_deref(), &self.overrides(), &key),
                key,
                message: e.to_string(),
            }
        })?;
        Ok((raw, config))
    }
}

/// The config key naming the file a TLS error is about (`tls` if none).
fn key_of_file(config: &Config, e: &TlsError) -> String {
    let path = match e {
        TlsError::Read { path, .. } | TlsError::Pem { path, .. } => path,
        TlsError::Pair { key, .. } => key,
        TlsError::Rustls(_) => return "tls".into(),
    };
    let mut named: Vec<(String, &Path)> = Vec::new();
    if let Some(t) = &config.tls {
        named.push(("tls.cert".into(), &t.cert));
        named.push(("tls.key".into(), &t.key));
        for (i, s) in t.sni.iter().enumerate() {
            named.push((format!("tls.sni[{i}].cert"), &s.cert));
            named.push((format!("tls.sni[{i}].key"), &s.key));
        }
    }
    let u = &config.upstream_tls;
    for (key, p) in [
        ("upstream_tls.ca_file", &u.ca_file),
        ("upstream_tls.client_cert", &u.client_cert),
        ("upstream_tls.client_key", &u.client_key),
    ] {
        if let Some(p) = p {
            named.push((key.into(), p));
        }
    }
    named
        .into_iter()
        .find(|(_, p)| *p == path.as_path())
        .map_or_else(|| "tls".into(), |(k, _)| k)
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
}

/// `unstick check`: exit 0 and print the effective config, or exit 2 naming the mistake.
pub fn check(args: CheckArgs) -> ExitCode {
    match args.config.load_checked() {
        Ok((raw, _)) => {
            print!("{}", effective_toml(&raw, &args.config.overrides()));
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            super::log::error(&e.to_string());
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `unstick serve`: runs until SIGTERM or SIGINT, then drains and exits 0.
/// SIGHUP (and a change to the config file) reloads the configuration.
pub fn serve(args: ServeArgs) -> ExitCode {
    // The watcher's first look at the file comes before the read, so no
    // edit falls between them unseen.
    let watch = args.config.file().map(WatchedFile::before_read);
    let config = match args.config.load_checked() {
        Ok((_, c)) => c,
        Err(e) => {
            super::log::error(&e.to_string());
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match super::runtime(super::Runtime::CurrentThread) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let code = runtime.block_on(async move {
        // A reload reads the file again with the same environment and flags.
        let file = args.config.file();
        let source_args = args.config.clone();
        let opts = StartOptions {
            source: Some(Arc::new(move || source_args.load().map(|(_, c)| c))),
            watch,
            ..StartOptions::default()
        };
        let app = match App::start_opts(config.clone(), opts).await {
            Ok(app) => app,
            Err(e) => {
                super::log::error(&e.to_string());
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        // Signal handlers are installed before the startup line, so a
        // signal sent as soon as the line appears is handled, not fatal.
        let signals = StopSignals::install();
        reload_on_sighup(&app);
        super::log::record("started", startup_line(&app, &config, file.as_deref()));
        // Nothing to balance is said at once, not found out from 502s.
        tokio::spawn(app.warn_unreachable_backends(config.timeouts.connect));
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
            let Some(mut signals) = signals else { return };
            signals.next().await;
            tracing::info!("stopping: draining requests in flight");
            shutdown.set(Phase::Drain);
            signals.next().await;
            tracing::warn!("second signal: closing now");
            shutdown.set(Phase::Close);
        });
        match app.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                super::log::error(&e.to_string());
                ExitCode::from(EXIT_FAILURE)
            }
        }
    });
    // A DNS lookup still running on a blocking thread does not hold the exit.
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    code
}

/// SIGHUP reloads: installed at once (SIGHUP's default action would end the
/// process), then each signal runs one reload. Everything SIGHUP reloads
/// starts here.
fn reload_on_sighup(app: &App) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot listen for SIGHUP; reload through the admin API");
            return;
        }
    };
    let reloader = app.reloader.clone();
    let certs = app.tls.clone();
    let metrics = app.proxy.metrics.clone();
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            let _ = reloader.reload(Trigger::Signal).await;
            if let Some(certs) = &certs {
                crate::app::reload_certs(certs, &metrics, "SIGHUP");
            }
        }
    });
}

/// SIGTERM and SIGINT, listened for from the moment they are installed.
struct StopSignals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn install() -> Option<StopSignals> {
        use tokio::signal::unix::{signal, SignalKind};
        Some(StopSignals {
            term: signal(SignalKind::terminate()).ok()?,
            int: signal(SignalKind::interrupt()).ok()?,
        })
    }

    /// Resolves on the next SIGTERM or SIGINT.
    async fn next(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// The startup line's fields (`event: "started"`): version, listeners,
/// config file, backends and the names they came from, algorithm and
/// policies.
fn startup_line(
    app: &App,
    config: &Config,
    file: Option<&Path>,
) -> serde_json::Map<String, serde_json::Value> {
    let backends = app.proxy.upstreams.names();
    let names: serde_json::Map<String, serde_json::Value> = app
        .discovery
        .names()
        .into_iter()
        .map(|(name, addresses)| (name, addresses.into()))
        .collect();
    let fields = serde_json::json!({
        "event": "started",
        "version": env!("CARGO_PKG_VERSION"),
        "listen": app.proxy_addr.to_string(),
        "admin": app.admin_addr.map(|a| a.to_string()),
        "tls": app.tls.is_some(),
        "http2": config.http2.enabled,
        "redirect": app.redirect_addr.map(|a| a.to_string()),
        "config": file.map(|f| f.display().to_string()),
        "backends": backends,
        "discovery": {
            "names": names,
            "interval": humantime::format_duration(config.discovery.interval).to_string(),
        },
        "algorithm": config.algorithm,
        "retries": config.retries.enabled,
        "active_health_checks": config.health.active.enabled,
        "affinity_cookies": config.affinity.policy,
        "access_log": config.access_log,
        "reload": { "sighup": true, "watch": file.is_some() && config.reload.watch },
        "pid": std::process::id(),
    });
    match fields {
        serde_json::Value::Object(map) => map,
        _ => serde_json::Map::new(),
    }
}

/// What `check` prints: the effective configuration as TOML (every key with
/// a value; each one a flag or variable set marked with it), then every key
/// left unset (TLS off, no CA file, ...) as a comment with its meaning.
fn effective_toml(raw: &RawConfig, overrides: &[Override]) -> String {
    let text = raw.to_toml();
    let origins = crate::config::describe_origins(overrides);
    let mut out = String::with_capacity(text.len() + 1024);
    let mut section = String::new();
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.trim_matches(['[', ']']).to_owned();
        }
        let key = t.split_once(" = ").map(|(k, _)| match section.as_str() {
            "" => k.to_owned(),
            s => format!("{s}.{k}"),
        });
        out.push_str(line);
        if let Some(origin) = key.and_then(|k| origins.get(&k)) {
            out.push_str(&format!("  # {origin}"));
        }
        out.push('\n');
    }
    let table: toml::Table = text.parse().unwrap_or_default();
    let unset: Vec<_> = crate::config::KEYS
        .iter()
        .filter(|k| !has_path(&table, k.path))
        .collect();
    if !unset.is_empty() {
        out.push_str("\n# Not set:\n");
        for k in unset {
            out.push_str(&format!("# {} ({}): {}\n", k.path, k.env_var(), k.help));
        }
    }
    out
}

/// True if the dotted `path` names a value in `table`.
fn has_path(table: &toml::Table, path: &str) -> bool {
    let mut current = table;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        match (current.get(part), parts.peek()) {
            (Some(_), None) => return true,
            (Some(toml::Value::Table(t)), Some(_)) => current = t,
            _ => return false,
        }
    }
    false
}
