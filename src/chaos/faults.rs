//! Carries out the fault plan on the running instances (by their pids), and restarts instances that exit on their own.
//!
//! Each planned fault runs as its own task: at its time it checks that its
//! instance is up and that taking it down leaves another one up (unless
//! total outages are allowed), signals it through the [`Supervisor`] (only
//! processes the supervisor started, by pid), and brings it back: a restart
//! `restart_after` later for kill and term (a SIGTERMed instance that has not
//! exited by then gets [`TERM_GRACE`] more, then SIGKILL), SIGCONT `pause`
//! later for stop. What happened is a [`FaultRun`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::docker::Containers;
use super::schedule::{FaultKind, PlannedFault};
use crate::demo::supervisor::{Event, Instance, Supervisor};

/// A SIGTERMed instance gets this long past its restart time to exit before SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(10);

/// A supervisor event and when it happened.
#[derive(Debug, Clone)]
pub struct TimedEvent {
    pub at: Instant,
    pub event: Event,
}

/// Every supervisor event of a run, in order.
pub type EventLog = Arc<Mutex<Vec<TimedEvent>>>;

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What became of one planned fault.
#[derive(Debug, Clone)]
pub struct FaultRun {
    pub planned: PlannedFault,
    /// When the signal was sent.
    pub at: Option<Instant>,
    /// The process it was sent to.
    pub pid: Option<u32>,
    /// Why it was not carried out.
    pub skipped: Option<String>,
    /// How the process ended (kill, term).
    pub exit: Option<String>,
    /// When the restart was asked for (kill, term).
    pub restart_requested: Option<Instant>,
    /// When the instance was up again: ready after its restart, or continued.
    pub back: Option<Instant>,
    /// The restarted process.
    pub new_pid: Option<u32>,
    /// Anything unusual (a SIGKILL after an ignored SIGTERM, no restart).
    pub note: Option<String>,
}

/// An instance that exited without being asked to.
#[derive(Debug, Clone)]
pub struct Crash {
    pub at: Instant,
    pub instance: usize,
    pub pid: u32,
    pub status: String,
    pub back: Option<Instant>,
    pub new_pid: Option<u32>,
}

/// What the executor may do.
#[derive(Debug, Clone)]
pub struct ExecOptions {
    pub allow_total_outage: bool,
    /// For restarts after a crash (planned faults carry their own).
    pub restart_after: Duration,
    /// How long a restart may take to be ready.
    pub ready_timeout: Duration,
}

#[derive(Debug)]
struct State {
    /// Taken down by a fault or a crash, not back yet.
    down: Vec<bool>,
    /// An exit is the fault's doing, not a crash.
    expecting_exit: Vec<bool>,
    /// No new faults (the run is ending).
    closed: bool,
}

/// The instances faults are carried out on.
#[derive(Clone)]
pub enum Fleet {
    /// Processes chaos started (`--app`), signalled by pid.
    Processes(Arc<Supervisor>),
    /// Containers found by the engine (`--docker-service`).
    Containers(Arc<Containers>),
}

impl Fleet {
    pub fn instances(&self) -> Vec<Instance> {
        match self {
            Fleet::Processes(s) => s.instances(),
            Fleet::Containers(c) => c.instances(),
        }
    }

    /// Sends `sig` to instance `index`: the pid it went to, if it was running.
    pub async fn signal(&self, index: usize, sig: i32) -> Option<u32> {
        match self {
            Fleet::Processes(s) => s.signal(index, sig),
            Fleet::Containers(c) => c.signal(index, sig).await,
        }
    }

    /// Asks for instance `index` to be started again once it has exited.
    pub fn restart(&self, index: usize) {
        match self {
            Fleet::Processes(s) => s.restart(index),
            Fleet::Containers(c) => c.restart(index),
        }
    }
}

/// Runs faults against the fleet's instances.
pub struct Executor {
    sup: Fleet,
    events: EventLog,
    state: Mutex<State>,
    crashes: Mutex<Vec<Crash>>,
    opts: ExecOptions,
}

// === impl Executor ===

impl Executor {
    pub fn new(sup: Fleet, events: EventLog, instances: usize, opts: ExecOptions) -> Executor {
        Executor {
            sup,
            events,
            state: Mutex::new(State {
                down: vec![false; instances],
                expecting_exit: vec![false; instances],
                closed: false,
            }),
            crashes: Mutex::new(Vec::new()),
            opts,
        }
    }

    /// No fault starts after this (faults already started finish).
    pub fn close(&self) {
        lock(&self.state).closed = true;
    }

    /// Carries out `f` at `t0 + f.at`.
    pub async fn run_fault(self: Arc<Self>, t0: Instant, f: PlannedFault) -> FaultRun {
        let mut run = FaultRun {
            planned: f.clone(),
            at: None,
            pid: None,
            skipped: None,
            exit: None,
            restart_requested: None,
            back: None,
            new_pid: None,
            note: None,
        };
        tokio::time::sleep_until(tokio::time::Instant::from_std(t0 + f.at)).await;
        let (pid, at) = match self.send_fault(&f).await {
            Ok(x) => x,
            Err(reason) => {
                say(&format!(
                    "chaos: fault {} ({} instance #{}) skipped: {reason}",
                    f.n,
                    f.kind.signal_name(),
                    f.instance
                ));
                run.skipped = Some(reason);
                return run;
            }
        };
        run.at = Some(at);
        run.pid = Some(pid);
        say(&format!(
            "chaos: fault {}: {} instance #{} (pid {pid}) at {:.2}s",
            f.n,
            f.kind.signal_name(),
            f.instance,
            at.saturating_duration_since(t0).as_secs_f64()
        ));
        tokio::time::sleep_until(tokio::time::Instant::from_std(at + f.back_after)).await;
        match f.kind {
            FaultKind::Stop => {
                // The pid is still ours: a stopped process cannot exit.
                self.sup.signal(f.instance, libc::SIGCONT).await;
                run.back = Some(Instant::now());
                lock(&self.state).down[f.instance] = false;
            }
            FaultKind::Kill | FaultKind::Term => {
                run.exit = self.wait_exit(&f, pid, at, &mut run.note).await;
                self.restart(f.instance, &mut run).await;
            }
        }
        run
    }

    /// Sends `f`'s signal if the instance is up, the run goes on, and (unless
    /// allowed) another instance stays up: the pid and when; else why not.
    async fn send_fault(&self, f: &PlannedFault) -> Result<(u32, Instant), String> {
        let i = f.instance;
        self.claim(f)?;
        // Taken before the signal: the instance's exit (recorded by the
        // supervisor's thread) can come before this task runs again, and
        // must not look older than the fault.
        let at = Instant::now();
        match self.sup.signal(i, f.kind.signal()).await {
            Some(pid) => Ok((pid, at)),
            None => {
                let mut st = lock(&self.state);
                st.expecting_exit[i] = false;
                st.down[i] = false;
                Err(format!("instance #{i} was not running"))
            }
        }
    }

    /// Marks `f`'s instance down (and its exit expected) if the fault may
    /// go ahead; else why not.
    fn claim(&self, f: &PlannedFault) -> Result<(), String> {
        let i = f.instance;
        let instances = self.sup.instances();
        let mut st = lock(&self.state);
        let running = |j: usize| !st.down[j] && instances.get(j).is_some_and(|x| x.pid.is_some());
        let others_up = (0..st.down.len()).filter(|&j| j != i && running(j)).count();
        if st.closed {
            return Err("the run was ending".to_owned());
        }
        if !running(i) {
            return Err(format!(
                "instance #{i} was not up (still coming back from an earlier fault)"
            ));
        }
        if others_up == 0 && !self.opts.allow_total_outage {
            return Err(
                "it would have left no instance up (--allow-total-outage allows that)".to_owned(),
            );
        }
        st.expecting_exit[i] = f.kind != FaultKind::Stop;
        st.down[i] = true;
        Ok(())
    }

    /// How process `pid`, signalled at `at`, exited. One that outlives the
    /// grace gets a SIGKILL (said in `note`).
    async fn wait_exit(
        &self,
        f: &PlannedFault,
        pid: u32,
        at: Instant,
        note: &mut Option<String>,
    ) -> Option<String> {
        let i = f.instance;
        let exited = |e: &Event| matches!(e, Event::Exited { index, pid: p, .. } if *index == i && *p == pid);
        let mut exit = self.find_event(at, exited);
        if exit.is_none() {
            exit = self.wait_event(at, TERM_GRACE, exited).await;
            if exit.is_none() {
                self.sup.signal(i, libc::SIGKILL).await;
                *note = Some(format!(
                    "still running {} after {}; sent SIGKILL",
                    super::schedule::human(f.back_after + TERM_GRACE),
                    f.kind.signal_name()
                ));
                exit = self.wait_event(at, Duration::from_secs(5), exited).await;
            }
        }
        exit.map(|e| match e.event {
            Event::Exited { status, .. } => status,
            _ => String::new(),
        })
    }

    /// Restarts instance `i` and waits for it to be ready; `run` records when
    /// and the new pid, or a note that it did not come back.
    async fn restart(&self, i: usize, run: &mut FaultRun) {
        let asked = Instant::now();
        run.restart_requested = Some(asked);
        self.sup.restart(i);
        let limit = self.opts.ready_timeout + Duration::from_secs(5);
        let started = self
            .wait_event(
                asked,
                limit,
                |e| matches!(e, Event::Started { index, .. } if *index == i),
            )
            .await;
        let mut st = lock(&self.state);
        match started {
            Some(TimedEvent {
                at,
                event: Event::Started { pid, .. },
            }) => {
                run.back = Some(at);
                run.new_pid = Some(pid);
                st.down[i] = false;
            }
            _ => {
                let note = format!(
                    "instance #{i} did not come back within {}",
                    super::schedule::human(limit)
                );
                run.note = Some(match run.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note,
                });
            }
        }
        st.expecting_exit[i] = false;
    }

    /// The first event since `since` that `want` matches.
    fn find_event(&self, since: Instant, want: impl Fn(&Event) -> bool) -> Option<TimedEvent> {
        lock(&self.events)
            .iter()
            .find(|e| e.at >= since && want(&e.event))
            .cloned()
    }

    /// Polls for an event since `since`, up to `limit` from now.
    async fn wait_event(
        &self,
        since: Instant,
        limit: Duration,
        want: impl Fn(&Event) -> bool,
    ) -> Option<TimedEvent> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(e) = self.find_event(since, &want) {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Restarts instances that exit on their own (after `restart_after`)
    /// until `stop`. See [`Executor::crashes`].
    pub async fn watch_crashes(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut seen = lock(&self.events).len();
        loop {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let new: Vec<TimedEvent> = {
                let all = lock(&self.events);
                let new = all[seen..].to_vec();
                seen = all.len();
                new
            };
            for e in new {
                let Event::Exited { index, pid, status } = e.event else {
                    continue;
                };
                {
                    let mut st = lock(&self.state);
                    if st.closed || st.expecting_exit.get(index).copied().unwrap_or(true) {
                        continue;
                    }
                    st.down[index] = true;
                    st.expecting_exit[index] = true;
                }
                say(&format!(
                    "chaos: instance #{index} (pid {pid}) exited on its own ({status}); restarting it in {}",
                    super::schedule::human(self.opts.restart_after)
                ));
                let slot = {
                    let mut c = lock(&self.crashes);
                    c.push(Crash {
                        at: e.at,
                        instance: index,
                        pid,
                        status,
                        back: None,
                        new_pid: None,
                    });
                    c.len() - 1
                };
                let me = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(me.opts.restart_after).await;
                    let asked = Instant::now();
                    me.sup.restart(index);
                    let started = me
                        .wait_event(
                            asked,
                            me.opts.ready_timeout + Duration::from_secs(5),
                            |ev| matches!(ev, Event::Started { index: i, .. } if *i == index),
                        )
                        .await;
                    let mut st = lock(&me.state);
                    if let Some(TimedEvent {
                        at,
                        event: Event::Started { pid, .. },
                    }) = started
                    {
                        let mut c = lock(&me.crashes);
                        c[slot].back = Some(at);
                        c[slot].new_pid = Some(pid);
                        st.down[index] = false;
                    }
                    st.expecting_exit[index] = false;
                });
            }
        }
    }

    /// Instances that exited on their own so far.
    pub fn crashes(&self) -> Vec<Crash> {
        lock(&self.crashes).clone()
    }
}

/// One line on stderr.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}
