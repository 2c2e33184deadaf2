//! A tiny process supervisor: N copies of a command, each on its own port, restarted when they exit.
//!
//! Each copy is started with `{port}` in its arguments (and `PORT` in its
//! environment) set to 0 the first time; it must print `listening ADDR` as a
//! line on stdout, and from then on it is restarted on that same port. A copy
//! that keeps dying is restarted with a growing pause. Other output lines are
//! passed on to stderr, prefixed with the copy's name.
//!
//! Children run in their own process group (a Ctrl-C in the terminal reaches
//! the supervisor only, which then stops them in order) and, on Linux, get
//! SIGTERM if the supervisor dies without stopping them. [`Supervisor::stop`]
//! (also on drop) sends SIGTERM, waits, then SIGKILLs what is left.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// A short name for log prefixes, e.g. `demo-app`.
    pub name: String,
    pub program: PathBuf,
    /// Arguments; `{port}` is replaced by the copy's port (0 on its first start).
    pub args: Vec<String>,
    /// Extra environment variables (`PORT` is always set).
    pub env: Vec<(String, String)>,
}

/// How many copies, and the supervisor's patience.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub count: usize,
    /// A start must print its `listening ADDR` line within this.
    pub start_timeout: Duration,
    /// On stop, copies get this long after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// The first pause before restarting a copy that died young; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A copy that lived at least this long is restarted at once.
    pub healthy_after: Duration,
}

impl Default for SupervisorOptions {
    fn default() -> Self {
        SupervisorOptions {
            count: 3,
            start_timeout: Duration::from_secs(10),
            stop_timeout: Duration::from_secs(6),
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            healthy_after: Duration::from_secs(1),
        }
    }
}

/// Something that happened to a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A copy is up (`restarts` is 0 for its first start).
    Started {
        index: usize,
        addr: SocketAddr,
        pid: u32,
        restarts: u32,
    },
    /// A copy exited (not asked to by [`Supervisor::stop`]).
    Exited {
        index: usize,
        pid: u32,
        status: String,
    },
    /// A restart failed; another follows after a pause.
    StartFailed { index: usize, error: String },
}

/// A copy as it is now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub index: usize,
    /// Where it listens (kept across restarts).
    pub addr: SocketAddr,
    /// Its process id, if it is running.
    pub pid: Option<u32>,
    /// How many times it was restarted.
    pub restarts: u32,
}

/// Why the copies could not all be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {name} #{index}: {message}")]
pub struct StartError {
    pub name: String,
    pub index: usize,
    pub message: String,
}

type EventSink = Box<dyn Fn(&Event) + Send + Sync>;

struct Shared {
    spec: CommandSpec,
    options: SupervisorOptions,
    instances: Mutex<Vec<Instance>>,
    stopping: AtomicBool,
    on_event: EventSink,
}

/// Runs and restarts the copies; stops them all when stopped or dropped.
pub struct Supervisor {
    shared: Arc<Shared>,
    monitor: Option<JoinHandle<()>>,
}

/// The monitor thread's view of one copy.
struct Slot {
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    next_start: Instant,
}

// === impl Supervisor ===

impl Supervisor {
    /// Starts `options.count` copies and waits until each printed its
    /// address. `on_event` is called (from the supervisor's thread) for every
    /// [`Event`], the first starts included.
    ///
    /// Blocks for as long as the starts take (at most `start_timeout` each).
    pub fn start(
        spec: CommandSpec,
        options: SupervisorOptions,
        on_event: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<Supervisor, StartError> {
        let shared = Arc::new(Shared {
            spec,
            options,
            instances: Mutex::new(Vec::new()),
            stopping: AtomicBool::new(false),
            on_event: Box::new(on_event),
        });
        let (ready_tx, ready_rx) = mpsc::channel();
        let s = shared.clone();
        // Every child is spawned from this one thread, which lives until the
        // stop: on Linux a child's parent-death signal follows the thread that
        // forked it.
        let monitor = std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || monitor(s, ready_tx))
            .map_err(|e| StartError {
                name: shared.spec.name.clone(),
                index: 0,
                message: format!("cannot start the supervisor thread: {e}"),
            })?;
        let result = ready_rx.recv().unwrap_or_else(|_| {
            Err(StartError {
                name: shared.spec.name.clone(),
                index: 0,
                message: "the supervisor thread died".into(),
            })
        });
        let mut sup = Supervisor {
            shared,
            monitor: Some(monitor),
        };
        match result {
            Ok(()) => Ok(sup),
            Err(e) => {
                sup.stop();
                Err(e)
            }
        }
    }

    /// The copies as they are now.
    pub fn instances(&self) -> Vec<Instance> {
        lock(&self.shared.instances).clone()
    }

    /// Sends `sig` (e.g. `libc::SIGKILL`) to copy `index`; false if it is not running.
    pub fn signal(&self, index: usize, sig: i32) -> bool {
        let pid = lock(&self.shared.instances).get(index).and_then(|i| i.pid);
        match pid {
            // SAFETY: kill(2) with a pid we started; nothing is shared.
            Some(pid) => unsafe { libc::kill(pid as libc::pid_t, sig) == 0 },
            None => false,
        }
    }

    /// Stops every copy (SIGTERM, then SIGKILL after `stop_timeout`) and
    /// waits for them. Idempotent.
    pub fn stop(&mut self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        if let Some(m) = self.monitor.take() {
            let _ = m.join();
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.stop();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The supervisor thread: first starts, then watch and restart until stopped.
fn monitor(shared: Arc<Shared>, ready: mpsc::Sender<Result<(), StartError>>) {
    let opts = &shared.options;
    let mut slots: Vec<Slot> = Vec::new();
    for index in 0..opts.count {
        match spawn(&shared, index, 0) {
            Ok((child, addr)) => {
                let pid = child.id();
                lock(&shared.instances).push(Instance {
                    index,
                    addr,
                    pid: Some(pid),
                    restarts: 0,
                });
                slots.push(Slot {
                    child: Some(child),
                    started: Instant::now(),
                    backoff: opts.min_backoff,
                    next_start: Instant::now(),
                });
                (shared.on_event)(&Event::Started {
                    index,
                    addr,
                    pid,
                    restarts: 0,
                });
            }
            Err(message) => {
                stop_all(&shared, &mut slots);
                let _ = ready.send(Err(StartError {
                    name: shared.spec.name.clone(),
                    index,
                    message,
                }));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));

    while !shared.stopping.load(Ordering::SeqCst) {
        for (index, slot) in slots.iter_mut().enumerate() {
            if shared.stopping.load(Ordering::SeqCst) {
                break;
            }
            watch(&shared, index, slot);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop_all(&shared, &mut slots);
}

/// Reaps a copy that exited, or restarts one that is due.
fn watch(shared: &Shared, index: usize, slot: &mut Slot) {
    let opts = &shared.options;
    if let Some(child) = &mut slot.child {
        let Ok(Some(status)) = child.try_wait() else {
            return;
        };
        let pid = child.id();
        slot.child = None;
        lock(&shared.instances)[index].pid = None;
        (shared.on_event)(&Event::Exited {
            index,
            pid,
            status: describe_status(status),
        });
        if slot.started.elapsed() >= opts.healthy_after {
            slot.backoff = opts.min_backoff;
            slot.next_start = Instant::now();
        } else {
            slot.next_start = Instant::now() + slot.backoff;
            slot.backoff = (slot.backoff * 2).min(opts.max_backoff);
        }
        return;
    }
    if Instant::now() < slot.next_start {
        return;
    }
    let port = lock(&shared.instances)[index].addr.port();
    match spawn(shared, index, port) {
        Ok((child, addr)) => {
            let pid = child.id();
            let restarts = {
                let mut all = lock(&shared.instances);
                let i = &mut all[index];
                i.pid = Some(pid);
                i.addr = addr;
                i.restarts += 1;
                i.restarts
            };
            slot.child = Some(child);
            slot.started = Instant::now();
            (shared.on_event)(&Event::Started {
                index,
                addr,
                pid,
                restarts,
            });
        }
        Err(error) => {
            if shared.stopping.load(Ordering::SeqCst) {
                return;
            }
            (shared.on_event)(&Event::StartFailed { index, error });
            slot.next_start = Instant::now() + slot.backoff;
            slot.backoff = (slot.backoff * 2).min(opts.max_backoff);
        }
    }
}

/// SIGTERM to every copy, a bounded wait, then SIGKILL.
fn stop_all(shared: &Shared, slots: &mut [Slot]) {
    for slot in slots.iter() {
        if let Some(child) = &slot.child {
            // SAFETY: kill(2) with a pid we started and have not reaped.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
    }
    let deadline = Instant::now() + shared.options.stop_timeout;
    loop {
        let mut running = 0;
        for slot in slots.iter_mut() {
            if let Some(child) = &mut slot.child {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => slot.child = None,
                    Ok(None) => running += 1,
                }
            }
        }
        if running == 0 || Instant::now() >= deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    for slot in slots.iter_mut() {
        if let Some(mut child) = slot.child.take() {
            tracing::warn!(pid = child.id(), "did not stop after SIGTERM; killing");
            let _ = child.kill();
            let _ = child.wait();
        }
    }
    for i in lock(&shared.instances).iter_mut() {
        i.pid = None;
    }
}

/// One line on stderr; a closed stderr is not worth a panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr().lock(), "{line}");
}

fn describe_status(status: std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

/// Starts copy `index` on `port` and waits for its `listening ADDR` line.
fn spawn(shared: &Shared, index: usize, port: u16) -> Result<(Child, SocketAddr), String> {
    let spec = &shared.spec;
    let port_text = port.to_string();
    let mut cmd = Command::new(&spec.program);
    cmd.args(spec.args.iter().map(|a| a.replace("{port}", &port_text)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", &port_text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    {
        use std::os::unix::process::CommandExt;
        cmd.process_group(0);
        #[cfg(target_os = "linux")]
        {
            // SAFETY: getpid is async-signal-safe; read before the fork.
            let parent = unsafe { libc::getpid() };
            // SAFETY: only async-signal-safe calls (prctl, getppid) in the child.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    // The parent died before prctl: do not run orphaned.
                    if libc::getppid() != parent {
                        return Err(std::io::Error::other("the supervisor is gone"));
                    }
                    Ok(())
                });
            }
        }
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", spec.program.display()))?;
    let prefix = format!("{}-{index}", spec.name);
    let (addr_tx, addr_rx) = mpsc::channel();
    if let Some(out) = child.stdout.take() {
        let prefix = prefix.clone();
        std::thread::spawn(move || {
            let mut addr_tx = Some(addr_tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("listening ") {
                    if let Some(tx) = addr_tx.take() {
                        let _ =
                            tx.send(rest.trim().parse::<SocketAddr>().map_err(|e| e.to_string()));
                        continue;
                    }
                }
                say(&format!("{prefix} | {line}"));
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                say(&format!("{prefix} | {line}"));
            }
        });
    }
    let deadline = Instant::now() + shared.options.start_timeout;
    let fail = |mut child: Child, why: String| {
        let _ = child.kill();
        let _ = child.wait();
        Err(why)
    };
    loop {
        match addr_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(addr)) => return Ok((child, addr)),
            Ok(Err(e)) => return fail(child, format!("printed a bad address: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed without the line: it is exiting or exited.
                let status = child
                    .wait()
                    .map(describe_status)
                    .unwrap_or_else(|e| e.to_string());
                return Err(format!(
                    "exited ({status}) before printing `listening ADDR`"
                ));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "exited ({}) before printing `listening ADDR`",
                describe_status(status)
            ));
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return fail(child, "stopping".into());
        }
        if Instant::now() >= deadline {
            return fail(
                child,
                format!(
                    "did not print `listening ADDR` within {:?}",
                    shared.options.start_timeout
                ),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell that listens nowhere but prints the line, then sleeps.
    fn sh(script: &str) -> CommandSpec {
        CommandSpec {
            name: "sh".into(),
            program: "/bin/sh".into(),
            args: vec!["-c".into(), script.into(), "sh".into(), "{port}".into()],
            env: vec![],
        }
    }

    #[test]
    fn restarts_a_killed_copy_on_its_port_and_stops_all() {
        // The first start (port 0) claims 40001; a restart shows the port it
        // was given plus 1000, so the test sees that the port came back.
        let script = r#"[ "$PORT" = "$1" ] || exit 9
if [ "$1" = 0 ]; then p=40001; else p=$(($1 + 1000)); fi
echo "listening 127.0.0.1:$p"; echo "started on $p" >&2; exec sleep 30"#;
        let events = Arc::new(Mutex::new(Vec::new()));
        let e = events.clone();
        let mut sup = Supervisor::start(
            sh(script),
            SupervisorOptions {
                count: 2,
                ..Default::default()
            },
            move |ev| e.lock().unwrap().push(ev.clone()),
        )
        .unwrap();
        let before = sup.instances();
        assert_eq!(before.len(), 2);
        assert!(before
            .iter()
            .all(|i| i.pid.is_some() && i.addr.port() == 40001));
        let old = before[1].pid.unwrap();
        assert!(sup.signal(1, libc::SIGKILL));
        let deadline = Instant::now() + Duration::from_secs(10);
        let new = loop {
            let i = &sup.instances()[1];
            if let (Some(pid), 1) = (i.pid, i.restarts) {
                break pid;
            }
            assert!(
                Instant::now() < deadline,
                "no restart: {:?}",
                events.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_ne!(new, old);
        assert_eq!(sup.instances()[1].addr.port(), 41001);
        assert_eq!(sup.instances()[0].restarts, 0);
        let seen = events.lock().unwrap().clone();
        assert!(seen.contains(&Event::Exited {
            index: 1,
            pid: old,
            status: "signal 9".into()
        }));
        let pids: Vec<u32> = sup.instances().iter().filter_map(|i| i.pid).collect();
        sup.stop();
        for pid in pids {
            // SAFETY: kill with signal 0 only checks; the pid was reaped by stop.
            assert!(
                unsafe { libc::kill(pid as i32, 0) } != 0,
                "{pid} still exists"
            );
        }
        assert!(sup.instances().iter().all(|i| i.pid.is_none()));
    }

    #[test]
    fn a_copy_that_never_listens_fails_the_start() {
        let err = match Supervisor::start(
            sh("echo nope; exit 3"),
            SupervisorOptions {
                count: 1,
                ..Default::default()
            },
            |_| {},
        ) {
            Err(e) => e,
            Ok(_) => panic!("started"),
        };
        assert!(err.to_string().contains("exit code 3"), "{err}");
    }
}
