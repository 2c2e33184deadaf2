//! The demo: a reference app with shared sessions, its stateful twin, and three copies behind unstick.
//!
//! - [`app`]: the web app (`unstick demo-app`): login, cart and counter per session.
//! - [`store`]: where sessions live: SQLite or Redis (shared), or process memory (the wrong twin).
//! - [`idempotency`]: `Idempotency-Key`: a keyed change stored with its response, replayed on a repeat.
//! - [`supervisor`]: runs N copies of a command on their own ports and restarts them.
//!
//! [`Demo::start`] is `unstick demo`: it starts the app instances as child
//! processes (the same binary), with a SQLite store in a temporary folder by
//! default, and runs the balancer in-process in front of them with active
//! health checks. [`Demo::stop`] stops everything and removes the folder.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::app::{self as balancer, App};
use crate::config::{AccessLog, BackendSpec, Config, UpstreamProtocol};

pub mod app;
pub mod idempotency;
pub mod store;
pub mod supervisor;

use store::{SqliteStore, Store, StoreSpec};
use supervisor::{CommandSpec, Event, Instance, Supervisor, SupervisorOptions};

/// The store the demo gives its instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DemoStore {
    /// A SQLite file in a temporary folder (the default).
    Sqlite,
    /// Each instance's own memory: sessions break on purpose.
    Memory,
    /// A Redis server that is already running.
    Redis(String),
}

impl DemoStore {
    /// Parses `sqlite`, `memory` or `redis://HOST:PORT`.
    pub fn parse(text: &str) -> Result<DemoStore, String> {
        match text.trim() {
            "sqlite" => Ok(DemoStore::Sqlite),
            "memory" => Ok(DemoStore::Memory),
            t if t.starts_with("redis://") => match StoreSpec::parse(t)? {
                StoreSpec::Redis(url) => Ok(DemoStore::Redis(url)),
                _ => unreachable!("a redis:// spec parses as Redis"),
            },
            t => Err(format!(
                "unknown store `{t}`: use `sqlite`, `memory` or `redis://HOST:PORT`"
            )),
        }
    }
}

/// What `unstick demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// The balancer's listener.
    pub listen: SocketAddr,
    /// The admin listener (`None`: off).
    pub admin: Option<SocketAddr>,
    pub store: DemoStore,
    /// How many app instances.
    pub instances: usize,
    pub access_log: AccessLog,
    /// The `unstick` binary (the instances run `PROGRAM demo-app`).
    pub program: PathBuf,
}

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot create a temporary folder: {0}")]
    TempDir(std::io::Error),
    #[error("cannot prepare the SQLite store {path}: {source}")]
    Sqlite {
        path: String,
        source: rusqlite::Error,
    },
    #[error(transparent)]
    Instances(#[from] supervisor::StartError),
    #[error(transparent)]
    Balancer(#[from] balancer::StartError),
    #[error("{0}")]
    Other(String),
}

/// A running demo: the instances, the balancer, and the temporary folder.
pub struct Demo {
    /// The balancer (in this process).
    pub app: App,
    /// The app instances (child processes).
    pub supervisor: Supervisor,
    /// The store every instance was given.
    pub store: StoreSpec,
    /// The temporary folder, removed on drop.
    dir: Option<tempfile::TempDir>,
}

// === impl Demo ===

impl Demo {
    /// Prepares the store, starts the instances, then the balancer in front
    /// of them. `on_event` hears about instances starting and exiting.
    pub async fn start(
        opts: DemoOptions,
        on_event: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<Demo, DemoError> {
        let (spec, dir) = match &opts.store {
            DemoStore::Memory => (StoreSpec::Memory, None),
            DemoStore::Redis(url) => (StoreSpec::Redis(url.clone()), None),
            DemoStore::Sqlite => {
                let dir = tempfile::Builder::new()
                    .prefix("unstick-demo-")
                    .tempdir()
                    .map_err(DemoError::TempDir)?;
                let path = dir.path().join("sessions.db");
                // Create the file, WAL mode and tables once, before the
                // instances race to do it.
                SqliteStore::init(&path).map_err(|source| DemoError::Sqlite {
                    path: path.display().to_string(),
                    source,
                })?;
                (StoreSpec::Sqlite(path), Some(dir))
            }
        };
        if let StoreSpec::Redis(_) = spec {
            let store = Store::open(&spec).map_err(|e| DemoError::Other(e.to_string()))?;
            if let Err(e) = store.ping().await {
                tracing::warn!(error = %e, "instances will answer 503 until the store is reachable");
            }
        }
        let command = CommandSpec {
            name: "demo-app".into(),
            program: opts.program.clone(),
            args: vec![
                "demo-app".into(),
                "--port".into(),
                "{port}".into(),
                "--store".into(),
                store_arg(&spec),
            ],
            env: vec![],
        };
        let sup_opts = SupervisorOptions {
            count: opts.instances,
            ..SupervisorOptions::default()
        };
        let supervisor =
            tokio::task::spawn_blocking(move || Supervisor::start(command, sup_opts, on_event))
                .await
                .map_err(|e| DemoError::Other(format!("the supervisor failed: {e}")))??;
        let addrs: Vec<SocketAddr> = supervisor.instances().iter().map(|i| i.addr).collect();
        let app = App::start(Self::config(&opts, &addrs)).await?;
        Ok(Demo {
            app,
            supervisor,
            store: spec,
            dir,
        })
    }

    /// The balancer's configuration: the instances as backends, active
    /// health checks every 500 ms (out after 2 failures, back after 1 success).
    pub fn config(opts: &DemoOptions, instances: &[SocketAddr]) -> Config {
        let mut c = Config::defaults();
        c.listen = opts.listen;
        c.admin = opts.admin;
        c.access_log = opts.access_log;
        c.backends = instances
            .iter()
            .map(|a| BackendSpec {
                address: a.to_string(),
                weight: 1,
                protocol: UpstreamProtocol::Http1,
            })
            .collect();
        c.health.active.enabled = true;
        c.health.active.path = "/healthz".into();
        c.health.active.interval = Duration::from_millis(500);
        c.health.active.timeout = Duration::from_millis(400);
        c.health.active.rise = 1;
        c.health.active.fall = 2;
        c.timeouts.drain = Duration::from_secs(5);
        c
    }

    /// The instances as they are now.
    pub fn instances(&self) -> Vec<Instance> {
        self.supervisor.instances()
    }

    /// The temporary folder holding the SQLite store, if any.
    pub fn dir(&self) -> Option<&std::path::Path> {
        self.dir.as_ref().map(|d| d.path())
    }

    /// Drains the balancer, stops the instances, removes the temporary folder.
    pub async fn stop(self) {
        let Demo {
            app,
            supervisor,
            store: _,
            dir,
        } = self;
        app.drain();
        if let Err(e) = app.wait().await {
            tracing::warn!(error = %e, "the balancer did not stop cleanly");
        }
        let _ = tokio::task::spawn_blocking(move || supervisor.stop()).await;
        if let Some(dir) = dir {
            let path = dir.path().display().to_string();
            if let Err(e) = dir.close() {
                tracing::warn!(path, error = %e, "cannot remove the temporary folder");
            }
        }
    }

    /// What to open and try, for people.
    pub fn instructions(&self) -> String {
        let url = format!("http://{}", self.app.proxy_addr);
        let mut out = String::new();
        out.push_str(&format!(
            "unstick demo: {} instances of `unstick demo-app` behind unstick; sessions in {}\n\n",
            self.instances().len(),
            self.store
        ));
        if self.store == StoreSpec::Memory {
            out.push_str(
                "  store `memory` is the stateful twin: each instance keeps its own sessions,\n  \
                 so you are logged out whenever another instance answers. That is the bug\n  \
                 sticky sessions hide, and unstick refuses to hide it.\n\n",
            );
        }
        out.push_str(&format!(
            "  open      {url}/    (reload: the instance changes, the session stays)\n"
        ));
        if let Some(admin) = self.app.admin_addr {
            out.push_str(&format!(
                "  admin     http://{admin}/metrics   http://{admin}/readyz\n"
            ));
        }
        for i in self.instances() {
            out.push_str(&format!(
                "  instance  #{} http://{} (pid {})\n",
                i.index,
                i.addr,
                i.pid.map_or("-".into(), |p| p.to_string())
            ));
        }
        let pid = self
            .instances()
            .first()
            .and_then(|i| i.pid)
            .map_or("PID".into(), |p| p.to_string());
        out.push_str(&format!(
            "\ntry:\n  \
             jar=$(mktemp)                            # the cookie jar, in a temp file\n  \
             curl -c \"$jar\" -d user=ada {url}/login\n  \
             curl -b \"$jar\" -i {url}/whoami        # X-Instance-Id changes, the user does not\n  \
             curl -b \"$jar\" -d item=tea {url}/cart\n  \
             curl -b \"$jar\" {url}/cart\n  \
             curl -b \"$jar\" -X POST {url}/counter\n  \
             kill -9 {pid}                            # kill an instance: the session survives and it comes back\n\n\
             Ctrl-C stops everything.\n"
        ));
        out
    }
}

/// The `--store` argument an instance gets.
fn store_arg(spec: &StoreSpec) -> String {
    match spec {
        StoreSpec::Memory => "memory".into(),
        StoreSpec::Sqlite(p) => format!("sqlite:{}", p.display()),
        StoreSpec::Redis(url) => url.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_choices_parse() {
        assert_eq!(DemoStore::parse("sqlite"), Ok(DemoStore::Sqlite));
        assert_eq!(DemoStore::parse("memory"), Ok(DemoStore::Memory));
        assert_eq!(
            DemoStore::parse("redis://127.0.0.1:6379"),
            Ok(DemoStore::Redis("redis://127.0.0.1:6379".into()))
        );
        assert!(DemoStore::parse("sqlite:/x").is_err());
    }

    #[test]
    fn the_config_fronts_every_instance_with_quick_health_checks() {
        let opts = DemoOptions {
            listen: "127.0.0.1:8080".parse().unwrap(),
            admin: None,
            store: DemoStore::Sqlite,
            instances: 2,
            access_log: AccessLog::Off,
            program: "unstick".into(),
        };
        let addrs: Vec<SocketAddr> = vec![
            "127.0.0.1:4001".parse().unwrap(),
            "127.0.0.1:4002".parse().unwrap(),
        ];
        let c = Demo::config(&opts, &addrs);
        assert_eq!(c.backends.len(), 2);
        assert_eq!(c.backends[1].address, "127.0.0.1:4002");
        assert!(c.health.active.enabled);
        assert_eq!((c.health.active.rise, c.health.active.fall), (1, 2));
        assert_eq!(c.health.active.interval, Duration::from_millis(500));
        assert_eq!(c.admin, None);
    }
}
