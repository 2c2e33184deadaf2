//! `unstick serve` and `unstick check`: config from file, env and flags.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::app::App;
use crate::config::{env_overrides, Config, ConfigError, Origin, Override, RawConfig};
use crate::server::Phase;

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
    /// Admin listener address, or `off` [env: UNSTICK_ADMIN] [default: 127.0.0.1:9090]
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// Access log format: `off`, `common` or `json` [env: UNSTICK_ACCESS_LOG] [default: json]
    #[arg(long, value_name = "FORMAT")]
    pub access_log: Option<String>,
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
        out
    }

    /// Loads and validates the merged configuration.
    pub fn load(&self) -> Result<(RawConfig, Config), ConfigError> {
        RawConfig::load(self.file().as_deref(), &self.overrides())
    }
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
    match args.config.load() {
        Ok((raw, _)) => {
            print!("{}", raw.to_toml());
            eprintln!("configuration is valid");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(EXIT_USAGE)
        }
    }
}

/// `unstick serve`: runs until SIGTERM or SIGINT, then drains and exits 0.
pub fn serve(args: ServeArgs) -> ExitCode {
    let config = match args.config.load() {
        Ok((_, c)) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    runtime.block_on(async move {
        let app = match App::start(config.clone()).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        eprintln!("{}", startup_line(&app, &config));
        let shutdown = app.shutdown.clone();
        tokio::spawn(async move {
            wait_for_stop_signal().await;
            tracing::info!("stopping: draining requests in flight");
            shutdown.set(Phase::Drain);
            wait_for_stop_signal().await;
            tracing::warn!("second signal: closing now");
            shutdown.set(Phase::Close);
        });
        match app.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(EXIT_FAILURE)
            }
        }
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn wait_for_stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// The structured startup line (one JSON object on stderr): version,
/// listeners, backends, algorithm and policies.
fn startup_line(app: &App, config: &Config) -> String {
    let backends: Vec<String> = app
        .proxy
        .upstreams
        .load()
        .all
        .iter()
        .map(|b| b.name.to_string())
        .collect();
    serde_json::json!({
        "event": "started",
        "version": env!("CARGO_PKG_VERSION"),
        "listen": app.proxy_addr.to_string(),
        "admin": app.admin_addr.map(|a| a.to_string()),
        "backends": backends,
        "algorithm": config.algorithm,
        "retries": config.retries.enabled,
        "active_health_checks": config.health.active.enabled,
        "affinity_cookies": config.affinity.policy,
        "access_log": config.access_log,
    })
    .to_string()
}
