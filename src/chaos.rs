//! `unstick chaos`: kills app instances mid-traffic and gives a verdict on whether the app is stateless.
//!
//! A run ([`run`]):
//! 1. starts `instances` copies of the app ([`Supervisor`], each on a free
//!    port, ready when it answers the ready path) and the balancer in front
//!    of them (in this process, listening on loopback ports);
//! 2. drives the [`scenario`] through the balancer's listener with the
//!    [`load`](crate::load) engine ([`traffic`]: one cookie jar per user),
//!    while [`observe`] reads the admin API's backend states every 50 ms;
//! 3. carries out the seeded fault plan ([`schedule`], [`faults`]) in the
//!    chaos phase, only on processes it started, by pid;
//! 4. draws the verdict ([`checks`], with the balancer's own view of
//!    session hops: [`session_hops`]) and writes the report ([`report`]).
//!
//! Traffic and observation reach the balancer through sockets only, as a
//! user's would. Every app process is stopped when the run ends, fails or is
//! interrupted (the supervisor stops them on drop).

use std::collections::HashMap;
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use http::HeaderName;
use tokio::sync::watch;

use crate::app::{AccessLoggerChoice, App};
use crate::config::{AccessLog, BackendSpec, Config, UpstreamProtocol};
use crate::demo::supervisor::{
    CommandSpec, Event, Instance, Readiness, RestartPolicy, StartError, Supervisor,
    SupervisorOptions,
};
use crate::load::{Engine, Settings, Target};
use crate::metrics::Metrics;
use crate::proxy::AccessLogger;

pub mod checks;
pub mod docker;
pub mod faults;
pub mod observe;
pub mod report;
pub mod scenario;
pub mod schedule;
pub mod session_hops;
pub mod traffic;

use checks::{FaultRecord, Incarnation, Thresholds};
use docker::{Containers, DockerTarget};
use faults::{say, EventLog, ExecOptions, Executor, Fleet, TimedEvent};
use observe::AdminClient;
use report::Document;
use scenario::Scenario;
use schedule::{Plan, PlanSpec};
use session_hops::SessionHops;
use traffic::ScenarioLoad;

/// The app to run.
#[derive(Debug, Clone)]
pub struct AppCommand {
    /// As given, for reports.
    pub display: String,
    pub program: PathBuf,
    /// `{port}` is replaced by each instance's port.
    pub args: Vec<String>,
}

impl AppCommand {
    /// Splits a command line the way a POSIX shell would (quotes, escapes).
    pub fn parse(text: &str) -> Result<AppCommand, String> {
        let words = shlex::split(text)
            .ok_or_else(|| format!("cannot split `{text}` into words (an unclosed quote?)"))?;
        let mut it = words.into_iter();
        let program = it.next().ok_or("the app command is empty")?;
        Ok(AppCommand {
            display: text.to_owned(),
            program: PathBuf::from(program),
            args: it.collect(),
        })
    }
}

/// The response header the balancer adds to name the backend (instance)
/// that answered: the last identity header chaos looks at.
pub const BACKEND_HEADER: &str = "x-unstick-backend";

/// Everything a chaos run needs.
#[derive(Debug, Clone)]
pub struct ChaosOptions {
    /// Names the run in reports (`--demo` runs: `sqlite`, `memory`).
    pub label: Option<String>,
    pub app: AppCommand,
    /// The app runs as these containers instead (`--docker-service`): `app`
    /// is not run, and `instances` is how many the engine has.
    pub docker: Option<DockerTarget>,
    pub instances: usize,
    pub ready_path: String,
    pub ready_timeout: Duration,
    /// Response headers naming the instance that answered.
    pub identity_headers: Vec<HeaderName>,
    pub users: usize,
    /// Requests per second, in total.
    pub rate: f64,
    /// Bound on one request.
    pub timeout: Duration,
    pub scenario: Arc<Scenario>,
    /// The fault plan's inputs (seed, phases, kinds, timings).
    pub plan: PlanSpec,
    pub thresholds: Thresholds,
    /// The balancer's configuration; its backends are replaced by the
    /// instances, its listeners by loopback ports.
    pub balancer: Config,
    pub report_dir: PathBuf,
    /// Pass the instances' output on to stderr.
    pub app_logs: bool,
    /// The command line, for the report.
    pub command_line: String,
}

/// Why a run gave no verdict.
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// The app could not be started (exit 4).
    #[error("{source}")]
    App { source: StartError },
    /// The app's containers could not be found or are not ready (exit 4).
    #[error("{0}")]
    Docker(#[from] docker::DockerError),
    #[error("cannot start the balancer: {0}")]
    Balancer(String),
    #[error("the load engine failed: {0}")]
    Load(String),
    #[error("cannot write the report in {dir}: {source}")]
    Report {
        dir: PathBuf,
        source: std::io::Error,
    },
    /// Stopped by a signal; every instance was stopped.
    #[error("interrupted by {signal}; stopped every instance (pids {pids:?})")]
    Interrupted {
        signal: &'static str,
        pids: Vec<u32>,
    },
}

/// A finished run.
#[derive(Debug)]
pub struct RunOutcome {
    pub document: Document,
    pub written: report::Written,
    /// The stdout summary.
    pub summary: String,
}

/// Runs the proof; `interrupt` resolves (with the signal's name) to stop
/// early, in which case every instance is stopped and no verdict is given.
pub async fn run(
    opts: &ChaosOptions,
    interrupt: impl Future<Output = &'static str>,
) -> Result<RunOutcome, ChaosError> {
    let events: EventLog = Arc::new(Mutex::new(Vec::new()));
    let started_pids: Arc<Mutex<Vec<u32>>> = Arc::default();
    let (opts, containers) = match &opts.docker {
        None => (opts.clone(), None),
        Some(target) => find_containers(opts, target, events.clone()).await?,
    };
    let inner = run_inner(
        &opts,
        containers.clone(),
        events.clone(),
        started_pids.clone(),
    );
    let result = tokio::select! {
        r = inner => r,
        signal = interrupt => {
            // Dropping `inner` dropped the supervisor (which stopped every
            // instance) and the engine's stop guard.
            let pids = started_pids.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Err(ChaosError::Interrupted { signal, pids })
        }
    };
    if let Some(c) = containers {
        say("chaos: leaving every container running and unpaused");
        c.restore().await;
    }
    result
}

/// The app's containers, each ready, and the options with as many
/// instances as the engine has.
async fn find_containers(
    opts: &ChaosOptions,
    target: &DockerTarget,
    events: EventLog,
) -> Result<(ChaosOptions, Option<Arc<Containers>>), ChaosError> {
    let probe = docker::Probe {
        path: opts.ready_path.clone(),
        identity_headers: opts
            .identity_headers
            .iter()
            .map(|h| h.as_str().to_owned())
            .collect(),
        timeout: opts.ready_timeout,
    };
    let containers = Containers::discover(target.clone(), probe, move |e: &Event| {
        say(&event_line(e));
        lock(&events).push(TimedEvent {
            at: Instant::now(),
            event: e.clone(),
        });
    })
    .await?;
    let names = containers.names();
    say(&format!(
        "chaos: {} container(s) of {}: {}",
        names.len(),
        target.display(),
        names.join(", ")
    ));
    let mut opts = opts.clone();
    opts.instances = names.len();
    opts.plan.instances = names.len();
    Ok((opts, Some(containers)))
}

/// Stops the load engine when dropped (an interrupted run).
struct StopOnDrop(crate::load::Stopper);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.stop();
    }
}

/// Aborts a background task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Stops the supervisor on a blocking thread when dropped, so the async
/// runtime is not held up (a drop inside a cancelled future).
struct SupervisorGuard(Option<Arc<Supervisor>>);

impl SupervisorGuard {
    async fn stop(mut self) {
        if let Some(s) = self.0.take() {
            let _ = tokio::task::spawn_blocking(move || s.stop()).await;
        }
    }
}

impl Drop for SupervisorGuard {
    fn drop(&mut self) {
        if let Some(s) = self.0.take() {
            // A cancelled run: stop now, on this thread (stop is bounded).
            s.stop();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn event_line(e: &Event) -> String {
    match e {
        Event::Started {
            index,
            addr,
            pid,
            restarts,
            ..
        } if *restarts == 0 => format!("chaos: instance #{index} started: pid {pid} on {addr}"),
        Event::Started {
            index, addr, pid, ..
        } => format!("chaos: instance #{index} restarted: pid {pid} on {addr}"),
        Event::Exited { index, pid, status } => {
            format!("chaos: instance #{index} (pid {pid}) exited: {status}")
        }
        Event::StartFailed { index, error } => {
            format!("chaos: instance #{index} failed to restart: {error}")
        }
    }
}

async fn run_inner(
    opts: &ChaosOptions,
    containers: Option<Arc<Containers>>,
    events: EventLog,
    started_pids: Arc<Mutex<Vec<u32>>>,
) -> Result<RunOutcome, ChaosError> {
    let wall_start = SystemTime::now();
    let plan: Plan = schedule::plan(&opts.plan);
    say(&format!(
        "chaos: seed {} ({} faults planned); starting {} instance(s) of `{}`",
        opts.plan.seed,
        plan.faults.len(),
        opts.instances,
        opts.app.display
    ));
    let (fleet, guard, exits) = match containers {
        Some(c) => {
            let exits = AbortOnDrop(tokio::spawn(c.clone().watch_exits()));
            (Fleet::Containers(c), SupervisorGuard(None), Some(exits))
        }
        None => {
            let supervisor = start_instances(opts, events.clone(), started_pids).await?;
            let guard = SupervisorGuard(Some(supervisor.clone()));
            (Fleet::Processes(supervisor), guard, None)
        }
    };
    let instances = fleet.instances();
    let names = match &fleet {
        Fleet::Containers(c) => c.names(),
        Fleet::Processes(_) => Vec::new(),
    };
    let app = start_balancer(opts, &instances).await?;
    let mut load = start_load(opts, &app)?;
    let t0 = load.clock_start().await?;
    let observed = run_faults(opts, &plan, t0, fleet, events.clone(), &app, load.task).await?;
    drop(exits);

    say("chaos: run over; stopping the balancer and the instances");
    app.drain();
    let _ = tokio::time::timeout(Duration::from_secs(3), app.wait()).await;
    guard.stop().await;

    let run = Finished {
        opts,
        plan: &plan,
        wall_start,
        t0,
        instances: &instances,
        names: &names,
        events: lock(&events).clone(),
        observed,
    };
    let document = run.document(&std::mem::take(&mut *lock(&load.sink)));
    let written =
        report::write(&document, &opts.report_dir).map_err(|source| ChaosError::Report {
            dir: opts.report_dir.clone(),
            source,
        })?;
    let summary = report::summary(&document, Some(&written));
    Ok(RunOutcome {
        document,
        written,
        summary,
    })
}

/// Step 1: the app's instances, each ready; every start is logged as an event.
async fn start_instances(
    opts: &ChaosOptions,
    events: EventLog,
    started_pids: Arc<Mutex<Vec<u32>>>,
) -> Result<Arc<Supervisor>, ChaosError> {
    let spec = CommandSpec {
        name: "app".into(),
        program: opts.app.program.clone(),
        args: opts.app.args.clone(),
        env: vec![],
    };
    let sup_opts = SupervisorOptions {
        count: opts.instances,
        start_timeout: opts.ready_timeout,
        stop_timeout: Duration::from_secs(5),
        readiness: Readiness::Http {
            path: opts.ready_path.clone(),
            identity_headers: opts
                .identity_headers
                .iter()
                .map(|h| h.as_str().to_owned())
                .collect(),
        },
        restart: RestartPolicy::OnRequest,
        echo_output: opts.app_logs,
        ..SupervisorOptions::default()
    };
    let on_event = move |e: &Event| {
        if let Event::Started { pid, .. } = e {
            lock(&started_pids).push(*pid);
        }
        say(&event_line(e));
        lock(&events).push(TimedEvent {
            at: Instant::now(),
            event: e.clone(),
        });
    };
    let supervisor =
        tokio::task::spawn_blocking(move || Supervisor::start(spec, sup_opts, on_event))
            .await
            .map_err(|e| ChaosError::Balancer(format!("the supervisor thread failed: {e}")))?
            .map_err(|source| ChaosError::App { source })?;
    Ok(Arc::new(supervisor))
}

/// Step 2: the balancer in this process, on loopback ports, in front of the
/// instances; it warns about instances not in rotation after 5 s.
async fn start_balancer(opts: &ChaosOptions, instances: &[Instance]) -> Result<App, ChaosError> {
    let mut config = opts.balancer.clone();
    config.listen = "127.0.0.1:0".parse().expect("an address");
    config.admin = Some("127.0.0.1:0".parse().expect("an address"));
    config.access_log = AccessLog::Off;
    // Names the instance that answered, for apps that send no instance header.
    config.backend_header = Some(BACKEND_HEADER.to_owned());
    config.backends = instances
        .iter()
        .map(|i| BackendSpec {
            address: i.addr.to_string(),
            weight: 1,
            protocol: UpstreamProtocol::Http1,
        })
        .collect();
    let app = App::start_with(
        config,
        Metrics::new_unregistered(),
        AccessLoggerChoice::Custom(AccessLogger::new(AccessLog::Off, Box::new(std::io::sink()))),
    )
    .await
    .map_err(|e| ChaosError::Balancer(e.to_string()))?;
    let admin_addr = admin_of(&app);
    if let Ok(rows) = AdminClient::new(admin_addr)
        .wait_all_healthy(Duration::from_secs(5))
        .await
    {
        let out: Vec<&str> = rows
            .iter()
            .filter(|r| !r.healthy)
            .map(|r| r.address.as_str())
            .collect();
        if !out.is_empty() {
            say(&format!(
                "chaos: warning: not in rotation after 5s: {}",
                out.join(", ")
            ));
        }
    }
    say(&format!(
        "chaos: unstick on {} (admin {admin_addr}); {} users at {}/s for {}",
        app.proxy_addr,
        opts.users,
        opts.rate,
        schedule::human(opts.plan.phases.total())
    ));
    Ok(app)
}

fn admin_of(app: &App) -> std::net::SocketAddr {
    app.admin_addr.expect("the admin listener was asked for")
}

/// The load engine running the scenario, and what it records.
struct LoadRun {
    task: tokio::task::JoinHandle<Result<crate::load::Report, crate::load::LoadError>>,
    live: Arc<crate::load::Live>,
    sink: traffic::Sink,
    /// Stops the engine if the run is dropped (interrupted).
    _stop: StopOnDrop,
}

/// Step 3: the load, through the balancer's listener.
fn start_load(opts: &ChaosOptions, app: &App) -> Result<LoadRun, ChaosError> {
    let scheme = if opts.balancer.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let target = Target::parse(&format!("{scheme}://{}/", app.proxy_addr))
        .map_err(|e| ChaosError::Load(e.reason))?;
    let workload = ScenarioLoad::new(
        opts.scenario.clone(),
        target.host_header(),
        opts.identity_headers.clone(),
    );
    let sink = workload.sink();
    let mut settings = Settings::new(target);
    settings.connections = opts.users;
    // One load thread carries a few thousand requests a second; above that,
    // half the cores (the balancer and the instances need the rest).
    settings.threads = if opts.rate > 2000.0 {
        std::thread::available_parallelism().map_or(1, |n| (n.get() / 2).max(1))
    } else {
        1
    };
    settings.rate = Some(opts.rate);
    settings.duration = Some(opts.plan.phases.total());
    settings.timeout = opts.timeout;
    settings.insecure = true;
    let engine = Engine::new(settings, workload).map_err(|e| ChaosError::Load(e.to_string()))?;
    Ok(LoadRun {
        live: engine.live(),
        _stop: StopOnDrop(engine.stopper()),
        task: tokio::spawn(engine.run()),
        sink,
    })
}

impl LoadRun {
    /// When the engine's clock started: once every user is connected. An
    /// engine that ends before then is an error.
    async fn clock_start(&mut self) -> Result<Instant, ChaosError> {
        loop {
            let snap = self.live.snapshot();
            if !snap.elapsed.is_zero() {
                return Ok(Instant::now() - snap.elapsed);
            }
            if self.task.is_finished() {
                return Err(ChaosError::Load(match (&mut self.task).await {
                    Ok(Err(e)) => e.to_string(),
                    Ok(Ok(_)) => "the run ended before it started".into(),
                    Err(e) => e.to_string(),
                }));
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// What the run saw while the load ran.
struct Observed {
    runs: Vec<faults::FaultRun>,
    transitions: Vec<observe::Transition>,
    crashes: Vec<faults::Crash>,
    final_rows: Vec<observe::BackendRow>,
    affinity: serde_json::Value,
    /// `/api/statelessness` at the end, or why it could not be read.
    statelessness: Result<crate::hops::Report, String>,
}

/// Steps 4 and 5: the fault plan, the backend watcher and the crash watcher,
/// until the load ends.
async fn run_faults(
    opts: &ChaosOptions,
    plan: &Plan,
    t0: Instant,
    fleet: Fleet,
    events: EventLog,
    app: &App,
    load: tokio::task::JoinHandle<Result<crate::load::Report, crate::load::LoadError>>,
) -> Result<Observed, ChaosError> {
    let admin_addr = admin_of(app);
    let (stop_tx, stop_rx) = watch::channel(false);
    let poller = tokio::spawn(observe::watch_backends(
        AdminClient::new(admin_addr),
        stop_rx.clone(),
    ));
    let executor = Arc::new(Executor::new(
        fleet,
        events,
        opts.instances,
        ExecOptions {
            allow_total_outage: opts.plan.allow_total_outage,
            restart_after: opts.plan.restart_after,
            ready_timeout: opts.ready_timeout,
        },
    ));
    let crash_watch = tokio::spawn(executor.clone().watch_crashes(stop_rx));
    let fault_tasks: Vec<_> = plan
        .faults
        .iter()
        .map(|f| tokio::spawn(executor.clone().run_fault(t0, f.clone())))
        .collect();
    let phase_lines = tokio::spawn(announce_phases(t0, plan.phases));

    let load_result = load.await;
    phase_lines.abort();
    executor.close();
    let mut runs = Vec::new();
    for t in fault_tasks {
        // Faults end within the chaos phase; a restart that hangs is bounded
        // by the ready timeout.
        if let Ok(r) = t.await {
            runs.push(r);
        }
    }
    let _ = stop_tx.send(true);
    let _ = crash_watch.await;
    let transitions = poller.await.unwrap_or_default();
    match load_result {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => return Err(ChaosError::Load(e.to_string())),
        Err(e) => return Err(ChaosError::Load(e.to_string())),
    }
    let mut admin = AdminClient::new(admin_addr);
    runs.sort_by_key(|r| r.planned.n);
    Ok(Observed {
        runs,
        transitions,
        crashes: executor.crashes(),
        final_rows: admin.backends().await.unwrap_or_default(),
        affinity: admin.affinity().await.unwrap_or(serde_json::Value::Null),
        statelessness: admin.statelessness().await,
    })
}

/// A run whose load has ended: everything step 7 (the verdict and the
/// report) is drawn from.
struct Finished<'a> {
    opts: &'a ChaosOptions,
    plan: &'a Plan,
    wall_start: SystemTime,
    t0: Instant,
    instances: &'a [Instance],
    /// The containers' names, by instance (none for processes).
    names: &'a [String],
    events: Vec<TimedEvent>,
    observed: Observed,
}

impl Finished<'_> {
    /// Seconds since the engine's clock started, to the millisecond.
    fn secs(&self, t: Instant) -> f64 {
        round3(t.saturating_duration_since(self.t0).as_secs_f64())
    }

    /// The verdict on `logs` and the report document.
    fn document(self, logs: &[traffic::UserLog]) -> Document {
        let opts = self.opts;
        let (identities, pids_by_slot) = self.incarnations();
        let timeline = self.timeline();
        let served = self.served();
        let affinity_seen = affinity_seen(&self.observed.affinity);
        let session_hops = self.session_hops();
        let identity_header = opts
            .identity_headers
            .first()
            .map(|h| h.as_str().to_owned())
            .unwrap_or_default();
        let analysis = checks::analyze(&checks::Input {
            t0: self.t0,
            phases: self.plan.phases,
            logs,
            scenario: &opts.scenario,
            faults: &timeline,
            identities: &identities,
            identity_header: &identity_header,
            served: &served,
            affinity: &affinity_seen,
            session_hops: &session_hops,
            target_rate: opts.rate,
            thresholds: opts.thresholds,
        });
        Document {
            verdict: analysis.outcome,
            exit_code: analysis.outcome.exit_code(),
            label: opts.label.clone(),
            unstick_version: env!("CARGO_PKG_VERSION"),
            started_at: crate::timefmt::Rfc3339(self.wall_start).to_string(),
            seed: opts.plan.seed,
            command_line: opts.command_line.clone(),
            app: app_info(opts),
            load: load_info(opts),
            faults: faults_info(opts),
            thresholds: thresholds_info(opts),
            phases: self.plan.phases,
            plan: self.plan.faults.clone(),
            plan_skipped: self.plan.skipped.clone(),
            timeline,
            unplanned_exits: self.unplanned_exits(),
            instances: self
                .instances
                .iter()
                .map(|i| report::InstanceInfo {
                    index: i.index,
                    name: self.names.get(i.index).cloned(),
                    address: i.addr.to_string(),
                    pids: pids_by_slot[i.index].clone(),
                })
                .collect(),
            session_hops,
            analysis,
        }
    }

    /// The session hops the balancer saw, its instances named by slot.
    fn session_hops(&self) -> SessionHops {
        let addresses: Vec<String> = self.instances.iter().map(|i| i.addr.to_string()).collect();
        match &self.observed.statelessness {
            Ok(report) => SessionHops::from_report(report, &addresses),
            Err(e) => SessionHops::missing(format!("the balancer's report could not be read: {e}")),
        }
    }

    /// Which instance (slot and pid) each identity names, and every pid each
    /// slot had. The balancer's backend header names the instance by
    /// address (for apps that send no instance header): the latest process
    /// there.
    fn incarnations(&self) -> (HashMap<String, Incarnation>, Vec<Vec<u32>>) {
        let mut identities: HashMap<String, Incarnation> = HashMap::new();
        let mut pids_by_slot: Vec<Vec<u32>> = vec![Vec::new(); self.opts.instances];
        for e in &self.events {
            let Event::Started {
                index,
                addr,
                pid,
                identity,
                ..
            } = &e.event
            else {
                continue;
            };
            pids_by_slot[*index].push(*pid);
            let who = Incarnation {
                index: *index,
                pid: *pid,
            };
            identities.insert(addr.to_string(), who);
            if let Some(id) = identity {
                identities.insert(id.clone(), who);
            }
        }
        (identities, pids_by_slot)
    }

    /// Every planned fault as it happened, with the balancer's view of it.
    fn timeline(&self) -> Vec<FaultRecord> {
        self.observed
            .runs
            .iter()
            .map(|r| self.fault_record(r))
            .collect()
    }

    fn fault_record(&self, r: &faults::FaultRun) -> FaultRecord {
        let address = self.instances[r.planned.instance].addr.to_string();
        let (ejected, readmitted) = match r.at {
            Some(at) => observe::eject_and_readmit(&self.observed.transitions, &address, at),
            None => (None, None),
        };
        let secs = |t: Instant| self.secs(t);
        FaultRecord {
            n: r.planned.n,
            kind: r.planned.kind,
            signal: r.planned.kind.signal_name(),
            instance: r.planned.instance,
            address,
            planned_at_s: round3(r.planned.at.as_secs_f64()),
            at_s: r.at.map(secs),
            pid: r.pid,
            skipped: r.skipped.clone(),
            exit: r.exit.clone(),
            back_at_s: r.back.map(secs),
            new_pid: r.new_pid,
            ejected_at_s: ejected.map(secs),
            readmitted_at_s: readmitted.map(secs),
            time_to_eject_ms: millis_between(r.at, ejected),
            // From the restart (or SIGCONT), so the app's own start-up counts:
            // the balancer's checks often see it before the runner's readiness poll.
            time_to_readmit_ms: millis_between(r.restart_requested.or(r.back), readmitted),
            out_of_rotation_ms: millis_between(ejected, readmitted),
            window_s: self.fault_window(r, readmitted),
            note: r.note.clone(),
        }
    }

    /// The seconds in which requests may feel a fault: from the signal until
    /// the instance is back in rotation (or a guess when it never was seen
    /// back), within the run.
    fn fault_window(
        &self,
        r: &faults::FaultRun,
        readmitted: Option<Instant>,
    ) -> Option<(f64, f64)> {
        let end_s = self.opts.plan.phases.total().as_secs_f64();
        r.at.map(|at| {
            let start = self.secs(at);
            let end = match (readmitted, r.back) {
                (Some(t), _) => self.secs(t),
                (None, Some(b)) => self.secs(b) + 1.0,
                (None, None) => start + r.planned.back_after.as_secs_f64() + 2.0,
            };
            (start, end.min(end_s).max(start))
        })
    }

    /// Requests each instance served, by address, from the admin API.
    fn served(&self) -> Vec<(String, u64)> {
        self.instances
            .iter()
            .map(|i| {
                let a = i.addr.to_string();
                let n = self
                    .observed
                    .final_rows
                    .iter()
                    .find(|r| r.address == a)
                    .map_or(0, |r| r.requests);
                (a, n)
            })
            .collect()
    }

    fn unplanned_exits(&self) -> Vec<report::UnplannedExit> {
        self.observed
            .crashes
            .iter()
            .map(|c| report::UnplannedExit {
                instance: c.instance,
                pid: c.pid,
                at_s: self.secs(c.at),
                status: c.status.clone(),
                back_at_s: c.back.map(|t| self.secs(t)),
                new_pid: c.new_pid,
            })
            .collect()
    }
}

/// Milliseconds from `a` to `b`, when both happened.
fn millis_between(a: Option<Instant>, b: Option<Instant>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(round3(
            b.saturating_duration_since(a).as_secs_f64() * 1000.0,
        )),
        _ => None,
    }
}

/// (backend, cookie, count) for every affinity cookie `/api/affinity` saw
/// a backend set.
fn affinity_seen(affinity: &serde_json::Value) -> Vec<(String, String, u64)> {
    affinity["backends"]
        .as_array()
        .map(|list| {
            list.iter()
                .map(|b| {
                    (
                        b["backend"].as_str().unwrap_or("?").to_owned(),
                        b["last_cookie"]
                            .as_str()
                            .or(b["name"].as_str())
                            .unwrap_or("?")
                            .to_owned(),
                        b["count"].as_u64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn app_info(opts: &ChaosOptions) -> report::AppInfo {
    report::AppInfo {
        command: opts.app.display.clone(),
        instances: opts.instances,
        ready_path: opts.ready_path.clone(),
        identity_headers: opts
            .identity_headers
            .iter()
            .map(|h| h.to_string())
            .collect(),
    }
}

fn load_info(opts: &ChaosOptions) -> report::LoadInfo {
    report::LoadInfo {
        users: opts.users,
        rate: opts.rate,
        timeout_s: opts.timeout.as_secs_f64(),
        scenario: opts.scenario.source.clone(),
        read_only: opts.scenario.is_read_only(),
    }
}

fn faults_info(opts: &ChaosOptions) -> report::FaultsInfo {
    report::FaultsInfo {
        kinds: opts.plan.kinds.clone(),
        every_s: opts.plan.every.as_secs_f64(),
        restart_after_s: opts.plan.restart_after.as_secs_f64(),
        pause_s: opts.plan.pause.as_secs_f64(),
        allow_total_outage: opts.plan.allow_total_outage,
    }
}

fn thresholds_info(opts: &ChaosOptions) -> report::ThresholdsInfo {
    report::ThresholdsInfo {
        min_success: opts.thresholds.min_success,
        strict: opts.thresholds.strict,
        max_p99_ratio: opts.thresholds.max_p99_ratio,
        p99_floor_ms: checks::P99_FLOOR.as_secs_f64() * 1000.0,
    }
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A line on stderr as each phase begins.
async fn announce_phases(t0: Instant, phases: [schedule::PhaseSpan; 4]) {
    for p in phases {
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + p.start)).await;
        say(&format!(
            "chaos: {} ({:.1}s to {:.1}s)",
            p.name,
            p.start.as_secs_f64(),
            p.end.as_secs_f64()
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_commands_split_like_a_shell() {
        let c = AppCommand::parse("./app --port {port} --name 'my app' \"x y\"").unwrap();
        assert_eq!(c.program, PathBuf::from("./app"));
        assert_eq!(c.args, ["--port", "{port}", "--name", "my app", "x y"]);
        assert!(AppCommand::parse("").is_err());
        assert!(AppCommand::parse("app 'open").is_err());
    }
}
