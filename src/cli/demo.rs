//! `unstick demo` (three app instances behind unstick) and `unstick demo-app` (one instance).

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};

use super::EXIT_FAILURE;
use crate::config::{parse_duration, AccessLog};
use crate::demo::app::{serve, DemoApp, DrainOptions};
use crate::demo::store::{Store, StoreSpec};
use crate::demo::supervisor::Event;
use crate::demo::{Demo, DemoOptions, DemoStore};
use crate::shutdown::Phase;

/// `unstick demo` flags.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where unstick listens.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// The admin listener (metrics, readiness), or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8484", value_parser = parse_admin)]
    admin: AdminAddr,
    /// Where sessions live: `sqlite` (a file in a temporary folder), `memory`
    /// (each instance its own: breaks on purpose) or `redis://HOST:PORT`.
    #[arg(long, value_name = "STORE", default_value = "sqlite", value_parser = DemoStore::parse)]
    store: DemoStore,
    /// How many app instances to run.
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=16))]
    instances: u16,
    /// Access log on stdout: `off`, `common` or `json`.
    #[arg(long, value_name = "FORMAT", default_value = "off", value_parser = parse_access_log)]
    access_log: AccessLog,
}

/// `unstick demo-app` flags.
#[derive(Debug, Args)]
pub struct DemoAppArgs {
    /// Port to listen on; 0 picks a free one. The first line on stdout is
    /// `listening ADDR`.
    #[arg(long, env = "PORT", default_value_t = 3000)]
    port: u16,
    /// Address to listen on.
    #[arg(long, value_name = "IP", default_value = "127.0.0.1")]
    bind: IpAddr,
    /// Where sessions live: `sqlite:PATH`, `redis://HOST:PORT`, or `memory`
    /// (the stateful twin: sessions are lost when another instance answers).
    #[arg(long, value_name = "STORE", env = "UNSTICK_DEMO_STORE", value_parser = StoreSpec::parse)]
    store: StoreSpec,
    /// After SIGTERM, keep answering this long (health 503, drain headers)
    /// before closing the listener; at most 1.5s so the exit stays within 5s.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_grace)]
    drain_grace: Duration,
    /// How long a POST's `Idempotency-Key` and its stored response are kept
    /// (a repeat within it gets the stored response and changes nothing).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_ttl)]
    idempotency_ttl: Duration,
}

#[derive(Debug, Clone, Copy)]
struct AdminAddr(Option<SocketAddr>);

fn parse_admin(text: &str) -> Result<AdminAddr, String> {
    if text == "off" {
        return Ok(AdminAddr(None));
    }
    text.parse()
        .map(|a| AdminAddr(Some(a)))
        .map_err(|_| format!("`{text}` is not an address like 127.0.0.1:8484, nor `off`"))
}

fn parse_access_log(text: &str) -> Result<AccessLog, String> {
    match text {
        "off" => Ok(AccessLog::Off),
        "common" => Ok(AccessLog::Common),
        "json" => Ok(AccessLog::Json),
        _ => Err(format!("`{text}`: use off, common or json")),
    }
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    let d = parse_duration(text)?;
    if d > Duration::from_millis(1500) {
        return Err(format!("`{text}` is too long: at most 1.5s"));
    }
    Ok(d)
}

fn parse_ttl(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d < Duration::from_secs(1) => Err(format!("`{text}` is too short: at least 1s")),
        d => Ok(d),
    }
}

/// SIGTERM and SIGINT, registered up front so none is missed.
struct StopSignals {
    term: Signal,
    int: Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        Ok(StopSignals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn recv(&mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

/// `unstick demo-app`: serves until SIGTERM/SIGINT, drains, exits 0.
pub fn run_app(args: DemoAppArgs) -> ExitCode {
    let runtime = match super::runtime(super::Runtime::Workers(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async move {
        let mut signals = match StopSignals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot handle signals: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let store = match Store::open(&args.store) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let addr = SocketAddr::new(args.bind, args.port);
        let listener = match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {addr}: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let Ok(bound) = listener.local_addr() else {
            eprintln!("error: the listener has no address");
            return ExitCode::from(EXIT_FAILURE);
        };
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out, "listening {bound}");
            let _ = out.flush();
        }
        let app = DemoApp::with_idempotency_ttl(store, args.idempotency_ttl);
        tracing::info!(instance = app.instance_id(), store = %args.store, "demo-app serving");
        if let Err(e) = app.store().ping().await {
            tracing::warn!(error = %e, "answering 503 until the store is reachable");
        }
        let drain = DrainOptions {
            grace: args.drain_grace,
            ..DrainOptions::default()
        };
        serve(listener, app, signals.recv(), drain).await;
        ExitCode::SUCCESS
    })
}

/// `unstick demo`: runs until SIGTERM/SIGINT, then stops what it started.
pub fn run_demo(args: DemoArgs) -> ExitCode {
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let runtime = match super::runtime(super::Runtime::Workers(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let opts = DemoOptions {
        listen: args.listen,
        admin: args.admin.0,
        store: args.store,
        instances: usize::from(args.instances),
        access_log: args.access_log,
        program,
    };
    runtime.block_on(async move {
        let mut signals = match StopSignals::new() {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: cannot handle signals: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        let start = Demo::start(opts, |event| say(&event_line(event)));
        let demo = tokio::select! {
            d = start => match d {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_FAILURE);
                }
            },
            // Stopped while starting: dropping the start stops what it began.
            _ = signals.recv() => return ExitCode::SUCCESS,
        };
        say(&startup_line(&demo));
        {
            use std::io::Write;
            let _ = writeln!(std::io::stdout().lock(), "{}", demo.instructions());
        }
        signals.recv().await;
        say("stopping: draining unstick, then the instances");
        let shutdown = demo.app.shutdown.clone();
        tokio::select! {
            _ = demo.stop() => {}
            _ = async {
                signals.recv().await;
                tracing::warn!("second signal: closing now");
                shutdown.set(Phase::Close);
                std::future::pending::<()>().await
            } => {}
        }
        ExitCode::SUCCESS
    })
}

/// One line on stderr, ignoring a closed stderr.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

/// `{"event":"started",...}`: the balancer's addresses, the store and the instances.
fn startup_line(demo: &Demo) -> String {
    let instances: Vec<serde_json::Value> = demo
        .instances()
        .iter()
        .map(|i| serde_json::json!({"index": i.index, "addr": i.addr.to_string(), "pid": i.pid}))
        .collect();
    serde_json::json!({
        "event": "started",
        "version": env!("CARGO_PKG_VERSION"),
        "listen": demo.app.proxy_addr.to_string(),
        "admin": demo.app.admin_addr.map(|a| a.to_string()),
        "store": demo.store.describe(),
        "dir": demo.dir().map(|d| d.display().to_string()),
        "instances": instances,
    })
    .to_string()
}

/// A supervisor event as one JSON line.
fn event_line(event: &Event) -> String {
    match event {
        Event::Started {
            index,
            addr,
            pid,
            restarts,
            ..
        } => serde_json::json!({
            "event": "instance_started", "index": index, "addr": addr.to_string(),
            "pid": pid, "restarts": restarts,
        }),
        Event::Exited { index, pid, status } => serde_json::json!({
            "event": "instance_exited", "index": index, "pid": pid, "status": status,
        }),
        Event::StartFailed { index, error } => serde_json::json!({
            "event": "instance_start_failed", "index": index, "error": error,
        }),
    }
    .to_string()
}
