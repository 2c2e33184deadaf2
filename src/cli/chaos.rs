//! `unstick chaos`: run an app's instances behind unstick, kill them mid-traffic, and give a verdict.
//!
//! Exit codes: 0 PASS, 1 FAIL (or the runner itself failed), 2 bad arguments
//! or config, 3 INCONCLUSIVE, 4 the app could not be run; 130/143 when
//! stopped by SIGINT/SIGTERM (every instance is stopped first).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use http::HeaderName;

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::chaos::checks::{Outcome, Thresholds};
use crate::chaos::docker::DockerTarget;
use crate::chaos::scenario::Scenario;
use crate::chaos::schedule::{self, FaultKind, Phases, PlanSpec};
use crate::chaos::{self, AppCommand, ChaosError, ChaosOptions};
use crate::config::{env_overrides, parse_duration, Config, Origin, Override, RawConfig};

/// Exit code: the app could not be started.
pub const EXIT_APP: u8 = 4;

/// Most requests a run may plan (each is kept as a record of about 100 bytes).
const MAX_REQUESTS: f64 = 10_000_000.0;
/// Most fault ticks a plan may have.
const MAX_TICKS: f64 = 100_000.0;

/// The connect timeout under `--docker-service` unless the config sets one
/// (see [`chaos_defaults`]).
const DOCKER_CONNECT_TIMEOUT: &str = "200ms";

/// The demo's scenario, shipped in `config/chaos/demo.toml`.
const DEMO_SCENARIO: &str = include_str!("../../config/chaos/demo.toml");

/// `unstick chaos` flags.
#[derive(Debug, Args)]
pub struct ChaosArgs {
    /// The app: a command line with `{port}` where each instance's port goes
    /// (`PORT` is set in its environment too), e.g. `./server --port {port}`
    #[arg(long, value_name = "COMMAND", required_unless_present_any = ["demo", "docker_service"], conflicts_with_all = ["demo", "docker_service"])]
    app: Option<String>,
    /// The app runs as containers: a compose service name, or a label
    /// selector KEY=VALUE. Chaos finds the running ones through the Docker
    /// engine (DOCKER_HOST or /var/run/docker.sock), reaches each at its IP
    /// on its network, and faults them through the engine (--instances is
    /// how many it finds)
    #[arg(long, value_name = "NAME", conflicts_with = "demo")]
    docker_service: Option<String>,
    /// Only containers of this compose project (needed when the service
    /// runs in several)
    #[arg(long, value_name = "NAME", requires = "docker_service")]
    docker_project: Option<String>,
    /// The app's port inside the containers [default: the one port they expose]
    #[arg(long, value_name = "PORT", requires = "docker_service", value_parser = clap::value_parser!(u16).range(1..))]
    docker_port: Option<u16>,
    /// The network whose address reaches the containers, for containers on several
    #[arg(long, value_name = "NAME", requires = "docker_service")]
    docker_network: Option<String>,
    /// Run the proof on the demo app: with a SQLite store (expect PASS), then
    /// with the memory store (expect FAIL)
    #[arg(long)]
    demo: bool,
    /// App instances to run
    #[arg(long, value_name = "N", default_value_t = 3, value_parser = clap::value_parser!(u16).range(1..=64))]
    instances: u16,
    /// An instance is ready when `GET PATH` answers 2xx or 3xx (also the balancer's health check)
    #[arg(long, value_name = "PATH", default_value = "/healthz", value_parser = parse_path)]
    ready_path: String,
    /// How long an instance may take to be ready
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_positive)]
    ready_timeout: Duration,
    /// A response header naming the instance that answered; repeatable
    /// [default: X-Instance-Id, X-Backend-Id]
    #[arg(long = "instance-header", value_name = "NAME", value_parser = parse_header_name)]
    instance_headers: Vec<HeaderName>,
    /// Virtual users, each with its own connection and cookie jar
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    users: u32,
    /// Requests per second, in total
    #[arg(long, value_name = "R", default_value = "100", value_parser = parse_rate)]
    rate: f64,
    /// A scenario file (TOML: `setup` and `steps`); default: GET / expecting a 2xx
    #[arg(long, value_name = "FILE")]
    scenario: Option<PathBuf>,
    /// Faults to draw from, comma-separated: kill (SIGKILL), term (SIGTERM), stop (SIGSTOP, then SIGCONT)
    #[arg(long, value_name = "LIST", default_value = "kill", value_parser = parse_faults)]
    faults: FaultList,
    /// One fault every DURATION in the chaos phase [default: 3s; --demo: 2s]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive)]
    every: Option<Duration>,
    /// Kill and term: restart the instance this long after the signal
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    restart_after: Duration,
    /// Stop: SIGCONT this long after SIGSTOP
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_positive)]
    pause: Duration,
    /// Allow faults that leave no instance up
    #[arg(long)]
    allow_total_outage: bool,
    /// Seed of the fault plan (the same seed gives the same plan) [default: random, printed]
    #[arg(long, value_name = "N")]
    seed: Option<u64>,
    /// The whole run: warm-up, baseline, chaos, recovery [default: 30s; --demo: 20s per run]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive)]
    duration: Option<Duration>,
    /// Warm-up length [default: 10% of --duration, 1s to 5s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    warmup: Option<Duration>,
    /// Baseline length, with no faults [default: 20% of --duration]
    #[arg(long, value_name = "DURATION", value_parser = parse_positive)]
    baseline: Option<Duration>,
    /// Recovery length, with no faults [default: 15% of --duration, 2s to 10s]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    recovery: Option<Duration>,
    /// Least share of requests that must succeed, in percent [default: 100 for
    /// read-only scenarios under term alone, else 99.9]
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent)]
    min_success: Option<f64>,
    /// Fail the run when a request that must not be sent twice (a POST or
    /// PATCH without an Idempotency-Key) was in flight on an instance that
    /// died (by default it is reported, with a hint, and does not fail it)
    #[arg(long)]
    strict: bool,
    /// Kill-window p99 latency may be at most this times the baseline p99
    /// (a baseline under 50 ms counts as 50 ms)
    #[arg(long, value_name = "X", default_value = "10", value_parser = parse_ratio)]
    max_p99_ratio: f64,
    /// Give up on a request after this long
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_positive)]
    timeout: Duration,
    /// Where verdict.json, junit.xml and report.html go
    #[arg(long, value_name = "DIR", default_value = "chaos-report")]
    report_dir: PathBuf,
    /// An unstick config file (retries, health checks, affinity policy, timeouts);
    /// listeners and backends are chosen by chaos [env: UNSTICK_CONFIG]
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the fault plan and exit
    #[arg(long)]
    dry_run: bool,
    /// Pass the instances' output on to stderr
    #[arg(long)]
    app_logs: bool,
}

#[derive(Debug, Clone)]
struct FaultList(Vec<FaultKind>);

fn parse_faults(text: &str) -> Result<FaultList, String> {
    let mut out = Vec::new();
    for part in text.split(',').filter(|p| !p.trim().is_empty()) {
        let k = FaultKind::parse(part)?;
        if !out.contains(&k) {
            out.push(k);
        }
    }
    if out.is_empty() {
        return Err("name at least one fault: kill, term or stop".into());
    }
    Ok(FaultList(out))
}

fn parse_positive(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        d if d.is_zero() => Err("must be above 0".into()),
        d => Ok(d),
    }
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 && r <= 1_000_000.0 => Ok(r),
        _ => Err(format!(
            "`{text}` is not a rate between 0 and 1000000 requests per second"
        )),
    }
}

fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r >= 1.0 => Ok(r),
        _ => Err(format!("`{text}` is not a ratio of at least 1")),
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let t = text.trim().trim_end_matches('%');
    match t.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p / 100.0),
        _ => Err(format!("`{text}` is not a percentage from 0 to 100")),
    }
}

fn parse_path(text: &str) -> Result<String, String> {
    if text.starts_with('/') && text.parse::<http::uri::PathAndQuery>().is_ok() {
        Ok(text.to_owned())
    } else {
        Err(format!("`{text}` is not a request path like /healthz"))
    }
}

fn parse_header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("`{text}` is not a header name"))
}

/// Where the config file and the environment are silent: quick active
/// health checks on the ready path, a short drain, and, for containers, a
/// short connect timeout. A container's address on a bridge network
/// blackholes once the container is gone (no RST answers a connect to it),
/// so each connect to a killed container would wait the whole timeout
/// before the retry (and the kill window's p99 with it), while a live
/// container on the host's bridge answers a connect in well under a
/// millisecond.
fn chaos_defaults(args: &ChaosArgs) -> Vec<(&'static str, toml::Value)> {
    let text = |t: &str| toml::Value::String(t.into());
    let mut defaults = vec![
        ("health.active.enabled", toml::Value::Boolean(true)),
        ("health.active.path", text(&args.ready_path)),
        ("health.active.interval", text("250ms")),
        ("health.active.timeout", text("200ms")),
        ("health.active.rise", toml::Value::Integer(1)),
        ("health.active.fall", toml::Value::Integer(2)),
        ("timeouts.drain", text("2s")),
    ];
    if args.docker_service.is_some() {
        defaults.push(("timeouts.connect", text(DOCKER_CONNECT_TIMEOUT)));
    }
    defaults
}

/// The balancer's config: chaos's defaults for what the file leaves out
/// ([`chaos_defaults`]), the file, the
/// environment, then loopback listeners (backends are the instances).
fn balancer_config(args: &ChaosArgs) -> Result<Config, String> {
    let file = args
        .config
        .clone()
        .or_else(|| std::env::var_os("UNSTICK_CONFIG").map(PathBuf::from));
    let table: toml::Table = match &file {
        // Unreadable or invalid files are reported by the loader below.
        Some(f) => std::fs::read_to_string(f)
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_default(),
        None => toml::Table::new(),
    };
    let env = env_overrides(|k| std::env::var(k).ok());
    let set = |key: &str| {
        let mut cur = Some(&table);
        let mut parts = key.split('.').peekable();
        while let Some(p) = parts.next() {
            let v = cur.and_then(|t| t.get(p));
            if parts.peek().is_none() {
                return v.is_some() || env.iter().any(|o| o.key == key);
            }
            cur = v.and_then(|v| v.as_table());
        }
        false
    };
    let origin = || Origin::Flag("unstick chaos".into());
    let mut overrides = Vec::new();
    for (key, value) in chaos_defaults(args) {
        if !set(key) {
            overrides.push(Override {
                origin: origin(),
                key: key.into(),
                value,
            });
        }
    }
    overrides.extend(env);
    for (key, value) in [
        ("listen", toml::Value::String("127.0.0.1:0".into())),
        ("admin", toml::Value::String("127.0.0.1:0".into())),
        ("access_log", toml::Value::String("off".into())),
        // Replaced by the instances' addresses once they run.
        (
            "backends",
            toml::Value::Array(vec![toml::Value::String("127.0.0.1:9".into())]),
        ),
    ] {
        overrides.push(Override {
            origin: origin(),
            key: key.into(),
            value,
        });
    }
    RawConfig::load(file.as_deref(), &overrides)
        .map(|(_, c)| c)
        .map_err(|e| e.to_string())
}

/// The command line as typed, quoted for a shell, with `--seed` added when
/// the seed was drawn rather than given: rerun as recorded, it replays the
/// same fault plan.
fn command_line(drawn_seed: Option<u64>) -> String {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(seed) = drawn_seed {
        args.extend(["--seed".to_owned(), seed.to_string()]);
    }
    shlex::try_join(args.iter().map(String::as_str)).unwrap_or_else(|_| args.join(" "))
}

/// What differs between the runs of `--demo`.
struct Which {
    app: AppCommand,
    label: Option<String>,
    report_dir: PathBuf,
}

/// The options of one run, checked. `Err` is a usage error.
fn options(
    args: &ChaosArgs,
    which: Which,
    scenario: Arc<Scenario>,
    seed: u64,
    duration: Duration,
    every: Duration,
) -> Result<ChaosOptions, String> {
    let Which {
        app,
        label,
        report_dir,
    } = which;
    let docker = args.docker_service.as_ref().map(|service| DockerTarget {
        service: service.clone(),
        project: args.docker_project.clone(),
        port: args.docker_port,
        network: args.docker_network.clone(),
    });
    let phases = Phases::split(duration, args.warmup, args.baseline, args.recovery)?;
    check_size(args, &phases, duration, every)?;
    let kinds = args.faults.0.clone();
    let min_success = args
        .min_success
        .unwrap_or_else(|| Thresholds::default_min_success(&scenario, &kinds));
    Ok(ChaosOptions {
        label,
        app,
        docker,
        instances: usize::from(args.instances),
        ready_path: args.ready_path.clone(),
        ready_timeout: args.ready_timeout,
        identity_headers: identity_headers(args),
        users: args.users as usize,
        rate: args.rate,
        timeout: args.timeout,
        scenario,
        plan: PlanSpec {
            seed,
            instances: usize::from(args.instances),
            kinds,
            every,
            restart_after: args.restart_after,
            pause: args.pause,
            phases,
            allow_total_outage: args.allow_total_outage,
        },
        thresholds: Thresholds {
            min_success,
            max_p99_ratio: args.max_p99_ratio,
            strict: args.strict,
        },
        balancer: balancer_config(args)?,
        report_dir,
        app_logs: args.app_logs,
        command_line: command_line(args.seed.is_none().then_some(seed)),
    })
}

/// Refuses runs larger than chaos keeps records of, and a fault interval
/// that does not fit the chaos phase.
fn check_size(
    args: &ChaosArgs,
    phases: &Phases,
    duration: Duration,
    every: Duration,
) -> Result<(), String> {
    // Chaos keeps a record of every request and every planned fault.
    if args.rate * duration.as_secs_f64() > MAX_REQUESTS {
        return Err(format!(
            "{}/s for {} is over {MAX_REQUESTS} requests, more than chaos keeps records of: \
             shorten --duration or lower --rate",
            args.rate,
            schedule::human(duration)
        ));
    }
    if phases.chaos.as_secs_f64() / every.as_secs_f64() > MAX_TICKS {
        return Err(format!(
            "--every {} over a chaos phase of {} is over {MAX_TICKS} faults",
            schedule::human(every),
            schedule::human(phases.chaos)
        ));
    }
    if every > phases.chaos {
        return Err(format!(
            "--every {} is longer than the chaos phase ({}): no fault would happen",
            schedule::human(every),
            schedule::human(phases.chaos)
        ));
    }
    Ok(())
}

/// The response headers that name the instance: as given, or the usual ones
/// and the balancer's own.
fn identity_headers(args: &ChaosArgs) -> Vec<HeaderName> {
    if args.instance_headers.is_empty() {
        vec![
            HeaderName::from_static("x-instance-id"),
            HeaderName::from_static("x-backend-id"),
            HeaderName::from_static(crate::chaos::BACKEND_HEADER),
        ]
    } else {
        args.instance_headers.clone()
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// SIGINT or SIGTERM, whichever comes first; registered when created.
struct Interrupt {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
}

impl Interrupt {
    fn new() -> std::io::Result<Interrupt> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Interrupt {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.int.recv() => "SIGINT",
            _ = self.term.recv() => "SIGTERM",
        }
    }
}

/// Runs one proof and prints its summary; the exit code.
async fn run_one(opts: &ChaosOptions, interrupt: &mut Interrupt) -> Result<Outcome, ExitCode> {
    match chaos::run(opts, interrupt.recv()).await {
        Ok(out) => {
            print!("{}", out.summary);
            Ok(out.document.verdict)
        }
        Err(ChaosError::App { source }) => {
            eprintln!("error: the app could not be run: {source}");
            if source.output.is_empty() {
                eprintln!("  (it printed nothing)");
            } else {
                eprintln!("  its last output lines:");
                for line in &source.output {
                    eprintln!("  | {line}");
                }
            }
            Err(ExitCode::from(EXIT_APP))
        }
        Err(ChaosError::Docker(e)) => {
            eprintln!("error: the app's containers cannot be used: {e}");
            Err(ExitCode::from(EXIT_APP))
        }
        Err(ChaosError::Interrupted { signal, .. }) if opts.docker.is_some() => {
            eprintln!("chaos: interrupted by {signal}; left every container running; no verdict");
            Err(ExitCode::from(if signal == "SIGTERM" { 143 } else { 130 }))
        }
        Err(ChaosError::Interrupted { signal, pids }) => {
            eprintln!("chaos: interrupted by {signal}; stopped every instance (pids {pids:?}); no verdict");
            Err(ExitCode::from(if signal == "SIGTERM" { 143 } else { 130 }))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(EXIT_FAILURE))
        }
    }
}

/// `unstick chaos`.
pub fn run(args: ChaosArgs) -> ExitCode {
    let seed = args.seed.unwrap_or_else(rand::random);
    let scenario = match &args.scenario {
        Some(path) => match Scenario::load(path) {
            Ok(s) => s,
            Err(e) => return usage(&e.to_string()),
        },
        None if args.demo => Scenario::parse(DEMO_SCENARIO, "config/chaos/demo.toml (built in)")
            .expect("the demo scenario parses"),
        None => Scenario::default_get(),
    };
    let scenario = Arc::new(scenario);
    if args.demo {
        return run_demo(&args, scenario, seed);
    }
    let app = match &args.docker_service {
        Some(service) if service.trim().is_empty() => {
            return usage("--docker-service: name a compose service or a label KEY=VALUE")
        }
        Some(service) => AppCommand {
            display: format!("docker service {service}"),
            program: PathBuf::new(),
            args: Vec::new(),
        },
        None => match AppCommand::parse(args.app.as_deref().unwrap_or_default()) {
            Ok(a) => a,
            Err(e) => return usage(&format!("--app: {e}")),
        },
    };
    let duration = args.duration.unwrap_or(Duration::from_secs(30));
    let every = args.every.unwrap_or(Duration::from_secs(3));
    let which = Which {
        app,
        label: None,
        report_dir: args.report_dir.clone(),
    };
    let opts = match options(&args, which, scenario, seed, duration, every) {
        Ok(o) => o,
        Err(e) => return usage(&e),
    };
    if args.dry_run {
        print!("{}", schedule::plan(&opts.plan).describe());
        return ExitCode::SUCCESS;
    }
    with_interrupt(async |interrupt| match run_one(&opts, interrupt).await {
        Ok(o) => ExitCode::from(o.exit_code()),
        Err(code) => code,
    })
}

/// Runs `f` on a two-worker runtime with SIGINT and SIGTERM caught.
fn with_interrupt(f: impl AsyncFnOnce(&mut Interrupt) -> ExitCode) -> ExitCode {
    let runtime = match super::runtime(super::Runtime::Workers(2)) {
        Ok(r) => r,
        Err(code) => return code,
    };
    runtime.block_on(async {
        let mut interrupt = match Interrupt::new() {
            Ok(i) => i,
            Err(e) => {
                eprintln!("error: cannot handle signals: {e}");
                return ExitCode::from(EXIT_FAILURE);
            }
        };
        f(&mut interrupt).await
    })
}

/// The two runs of `--demo`: a label, the demo app's store, the verdict expected.
const DEMO_RUNS: [(&str, Outcome); 2] = [("sqlite", Outcome::Pass), ("memory", Outcome::Fail)];

/// `unstick chaos --demo`: the demo app with SQLite (expect PASS), then with
/// memory (expect FAIL). Exit 0 when both went as expected.
fn run_demo(args: &ChaosArgs, scenario: Arc<Scenario>, seed: u64) -> ExitCode {
    let program = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("error: cannot find this program's path: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let dir = match tempfile::Builder::new().prefix("unstick-chaos-").tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("error: cannot create a temporary folder: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    let db = dir.path().join("demo.db");
    if let Err(e) = crate::demo::store::SqliteStore::init(&db) {
        eprintln!(
            "error: cannot prepare the SQLite store {}: {e}",
            db.display()
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    let duration = args.duration.unwrap_or(Duration::from_secs(20));
    let every = args.every.unwrap_or(Duration::from_secs(2));
    let mut all = Vec::new();
    for (label, _) in DEMO_RUNS {
        let store = match label {
            "sqlite" => format!("sqlite:{}", db.display()),
            _ => "memory".to_owned(),
        };
        let which = Which {
            app: demo_app(&program, store),
            label: Some(label.to_owned()),
            report_dir: args.report_dir.join(label),
        };
        match options(args, which, scenario.clone(), seed, duration, every) {
            Ok(o) => all.push(o),
            Err(e) => return usage(&e),
        }
    }
    if args.dry_run {
        print!("{}", schedule::plan(&all[0].plan).describe());
        return ExitCode::SUCCESS;
    }
    let code = with_interrupt(async |interrupt| run_both(&all, &args.report_dir, interrupt).await);
    drop(dir);
    code
}

/// `unstick demo-app` with `store`, as chaos runs it.
fn demo_app(program: &Path, store: String) -> AppCommand {
    let exe = program.display().to_string();
    AppCommand {
        display: format!(
            "{} demo-app --port {{port}} --store {store}",
            shlex::try_quote(&exe)
                .map(|q| q.into_owned())
                .unwrap_or(exe)
        ),
        program: program.to_owned(),
        args: vec![
            "demo-app".into(),
            "--port".into(),
            "{port}".into(),
            "--store".into(),
            store,
        ],
    }
}

/// Runs both demo proofs and says whether each verdict was the expected one.
async fn run_both(all: &[ChaosOptions], report_dir: &Path, interrupt: &mut Interrupt) -> ExitCode {
    println!(
        "unstick chaos --demo: the same proof twice, on the demo app with sessions in SQLite \
         (shared by every instance), then in each instance's memory.\n"
    );
    let mut got = Vec::new();
    for (opts, (label, _)) in all.iter().zip(DEMO_RUNS) {
        eprintln!("chaos: --- demo run `{label}` ---");
        match run_one(opts, interrupt).await {
            Ok(o) => got.push(o),
            Err(code) => return code,
        }
        println!();
    }
    let expected = DEMO_RUNS.iter().map(|r| r.1).collect::<Vec<_>>() == got;
    println!(
        "sqlite: {} (expected PASS); memory: {} (expected FAIL)",
        got[0].name(),
        got[1].name()
    );
    if expected {
        println!(
            "As expected: with sessions in a shared store the app survives any instance dying; \
             with sessions in memory, users are logged out whenever another instance answers. \
             Sticky sessions would have hidden that until the day an instance died. \
             Reports: {}",
            report_paths(report_dir)
        );
        ExitCode::SUCCESS
    } else {
        println!(
            "Not as expected: see the reports in {}",
            report_paths(report_dir)
        );
        ExitCode::from(EXIT_FAILURE)
    }
}

fn report_paths(dir: &Path) -> String {
    format!(
        "{} and {}",
        dir.join("sqlite/report.html").display(),
        dir.join("memory/report.html").display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_lists_and_numbers_parse() {
        assert_eq!(
            parse_faults("kill, term,stop,kill").unwrap().0,
            [FaultKind::Kill, FaultKind::Term, FaultKind::Stop]
        );
        assert!(parse_faults(",").is_err());
        assert!(parse_faults("kill,boom").unwrap_err().contains("boom"));
        assert!((parse_percent("99.9%").unwrap() - 0.999).abs() < 1e-12);
        assert_eq!(parse_percent("100").unwrap(), 1.0);
        assert!(parse_percent("101").is_err());
        assert!(parse_ratio("0.5").is_err());
        assert!(parse_rate("0").is_err() && parse_rate("nan").is_err());
        assert!(parse_path("healthz").is_err());
    }

    fn args(extra: &[&str]) -> ChaosArgs {
        parse(&[&["--app", "app {port}"], extra].concat())
    }

    fn parse(argv: &[&str]) -> ChaosArgs {
        use clap::Parser;
        #[derive(Parser)]
        struct T {
            #[command(flatten)]
            a: ChaosArgs,
        }
        T::try_parse_from([&["unstick-chaos"], argv].concat())
            .unwrap()
            .a
    }

    #[test]
    fn the_config_file_wins_over_chaos_defaults_where_it_speaks() {
        let dir = tempfile::tempdir().unwrap();
        let none = balancer_config(&args(&["--ready-path", "/up"])).unwrap();
        let a = &none.health.active;
        assert!(a.enabled);
        assert_eq!(a.path, "/up");
        assert_eq!(a.interval, Duration::from_millis(250));
        assert_eq!((a.rise, a.fall), (1, 2));
        assert_eq!(none.listen.port(), 0);
        assert_eq!(none.admin.map(|a| a.port()), Some(0));

        let file = dir.path().join("u.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:80\"\n[health.active]\ninterval = \"1s\"\n[retries]\nenabled = false\n",
        )
        .unwrap();
        let c = balancer_config(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert_eq!(c.health.active.interval, Duration::from_secs(1));
        assert_eq!(c.health.active.fall, 2);
        assert!(!c.retries.enabled);
        // Listeners are always chaos's own.
        assert_eq!(c.listen.to_string(), "127.0.0.1:0");

        std::fs::write(&file, "[health.active]\nenabled = false\n").unwrap();
        let c = balancer_config(&args(&["--config", file.to_str().unwrap()])).unwrap();
        assert!(!c.health.active.enabled);
    }

    #[test]
    fn containers_get_a_short_connect_timeout_unless_the_config_sets_one() {
        let processes = balancer_config(&args(&[])).unwrap();
        assert_eq!(processes.timeouts.connect, Duration::from_secs(1));
        let docker = parse(&["--docker-service", "app"]);
        let c = balancer_config(&docker).unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_millis(200));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("u.toml");
        std::fs::write(&file, "[timeouts]\nconnect = \"3s\"\n").unwrap();
        let with_file = parse(&[
            "--docker-service",
            "app",
            "--config",
            file.to_str().unwrap(),
        ]);
        let c = balancer_config(&with_file).unwrap();
        assert_eq!(c.timeouts.connect, Duration::from_secs(3));
    }
}
