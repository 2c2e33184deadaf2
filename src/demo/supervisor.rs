//! A tiny process supervisor: N copies of a command, each on its own port, restarted when they exit.
//!
//! Each copy is started with `{port}` in its arguments (and `PORT` in its
//! environment) set to its port. How a copy says it is ready is its
//! [`Readiness`]: by printing `listening ADDR` as a line on stdout (its first
//! start gets port 0 and the port it printed is kept), or by answering
//! `GET PATH` with a 2xx or 3xx on a free port chosen for it up front. From
//! then on it is restarted on that same port: at once when it exits
//! ([`RestartPolicy::Always`], with a growing pause for a copy that keeps
//! dying young), or only when asked ([`RestartPolicy::OnRequest`], for the
//! chaos runner, which decides when). The last lines a copy printed are kept
//! ([`Supervisor::output`]); they are also passed on to stderr, prefixed with
//! the copy's name, unless `echo_output` is off.
//!
//! Children run in their own process group (a Ctrl-C in the terminal reaches
//! the supervisor only, which then stops them in order) and, on Linux, get
//! SIGTERM if the supervisor dies without stopping them. Signals go to a
//! copy's whole group (its pid is the group's id), so a wrapper and what it
//! runs get them alike. [`Supervisor::stop`] (also on drop) sends SIGTERM (and
//! SIGCONT, for a stopped copy), waits, then SIGKILLs what is left.

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
    /// Arguments; `{port}` is replaced by the copy's port (0 on a
    /// [`Readiness::Line`] copy's first start).
    pub args: Vec<String>,
    /// Extra environment variables (`PORT` is always set).
    pub env: Vec<(String, String)>,
}

/// How a copy says it is ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// It prints `listening ADDR` as a line on stdout; its first start gets port 0.
    Line,
    /// It gets a free port chosen up front and is ready when `GET path` on
    /// `127.0.0.1:PORT` answers 2xx or 3xx. The value of the first of
    /// `identity_headers` present in that answer is kept as the copy's
    /// [`Instance::identity`] (e.g. `X-Instance-Id`).
    Http {
        path: String,
        identity_headers: Vec<String>,
    },
}

/// When a copy that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartPolicy {
    /// At once (after a pause that grows while it keeps dying young).
    Always,
    /// Only after [`Supervisor::restart`] asks for it.
    OnRequest,
}

/// How many copies, and the supervisor's patience.
#[derive(Debug, Clone)]
pub struct SupervisorOptions {
    pub count: usize,
    /// A start must be ready within this.
    pub start_timeout: Duration,
    /// On stop, copies get this long after SIGTERM before SIGKILL.
    pub stop_timeout: Duration,
    /// The first pause before restarting a copy that died young; doubles up to `max_backoff`.
    pub min_backoff: Duration,
    pub max_backoff: Duration,
    /// A copy that lived at least this long is restarted at once.
    pub healthy_after: Duration,
    pub readiness: Readiness,
    pub restart: RestartPolicy,
    /// Pass the copies' output on to stderr (it is kept in [`Supervisor::output`] either way).
    pub echo_output: bool,
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
            readiness: Readiness::Line,
            restart: RestartPolicy::Always,
            echo_output: true,
        }
    }
}

/// Lines of output kept per copy.
pub const OUTPUT_LINES: usize = 20;

/// Something that happened to a copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A copy is up (`restarts` is 0 for its first start).
    Started {
        index: usize,
        addr: SocketAddr,
        pid: u32,
        restarts: u32,
        /// See [`Readiness::Http`].
        identity: Option<String>,
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
    /// What its readiness answer said it is (see [`Readiness::Http`]).
    pub identity: Option<String>,
}

/// Why the copies could not all be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start {name} #{index}: {message}")]
pub struct StartError {
    pub name: String,
    pub index: usize,
    pub message: String,
    /// The last lines the copy printed (stdout and stderr).
    pub output: Vec<String>,
}

type EventSink = Box<dyn Fn(&Event) + Send + Sync>;

/// The last lines one copy printed.
type Tail = Arc<Mutex<std::collections::VecDeque<String>>>;

struct Shared {
    spec: CommandSpec,
    options: SupervisorOptions,
    /// Also held while a copy is reaped, so a signal never reaches a reused pid.
    instances: Mutex<Vec<Instance>>,
    /// Per copy: a restart was asked for ([`RestartPolicy::OnRequest`]).
    restart_wanted: Vec<AtomicBool>,
    output: Vec<Tail>,
    stopping: AtomicBool,
    on_event: EventSink,
}

/// Runs and restarts the copies; stops them all when stopped or dropped.
pub struct Supervisor {
    shared: Arc<Shared>,
    monitor: Mutex<Option<JoinHandle<()>>>,
}

/// The monitor thread's view of one copy.
struct Slot {
    child: Option<Child>,
    started: Instant,
    backoff: Duration,
    next_start: Instant,
}

/// A copy that is up: its process, address and identity.
struct Started {
    child: Child,
    addr: SocketAddr,
    identity: Option<String>,
}

// === impl Supervisor ===

impl Supervisor {
    /// Starts `options.count` copies and waits until each is ready.
    /// `on_event` is called (from the supervisor's thread) for every
    /// [`Event`], the first starts included.
    ///
    /// Blocks for as long as the starts take (at most `start_timeout` each).
    pub fn start(
        spec: CommandSpec,
        options: SupervisorOptions,
        on_event: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<Supervisor, StartError> {
        let count = options.count;
        let shared = Arc::new(Shared {
            spec,
            options,
            instances: Mutex::new(Vec::new()),
            restart_wanted: (0..count).map(|_| AtomicBool::new(false)).collect(),
            output: (0..count).map(|_| Tail::default()).collect(),
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
                output: Vec::new(),
            })?;
        let result = ready_rx.recv().unwrap_or_else(|_| {
            Err(StartError {
                name: shared.spec.name.clone(),
                index: 0,
                message: "the supervisor thread died".into(),
                output: Vec::new(),
            })
        });
        let sup = Supervisor {
            shared,
            monitor: Mutex::new(Some(monitor)),
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

    /// Sends `sig` (e.g. `libc::SIGKILL`) to copy `index` (its process
    /// group); returns the pid it went to, or `None` if the copy is not running.
    pub fn signal(&self, index: usize, sig: i32) -> Option<u32> {
        // The lock is held across kill(2): the monitor reaps under it, so
        // the pid cannot be reaped (and reused) in between.
        let all = lock(&self.shared.instances);
        let pid = all.get(index).and_then(|i| i.pid)?;
        kill_group(pid, sig).then_some(pid)
    }

    /// Asks for copy `index` to be started again once it has exited
    /// ([`RestartPolicy::OnRequest`]; with `Always` it restarts anyway).
    pub fn restart(&self, index: usize) {
        if let Some(w) = self.shared.restart_wanted.get(index) {
            w.store(true, Ordering::SeqCst);
        }
    }

    /// The last lines copy `index` printed (stdout and stderr, oldest first).
    pub fn output(&self, index: usize) -> Vec<String> {
        self.shared
            .output
            .get(index)
            .map(|t| lock(t).iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Stops every copy (SIGTERM, then SIGKILL after `stop_timeout`) and
    /// waits for them. Idempotent.
    pub fn stop(&self) {
        self.shared.stopping.store(true, Ordering::SeqCst);
        let monitor = lock(&self.monitor).take();
        if let Some(m) = monitor {
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

/// Signals the process group `pid` leads, or `pid` alone if it leads none.
fn kill_group(pid: u32, sig: i32) -> bool {
    let pid = pid as libc::pid_t;
    // SAFETY: kill(2) on a pid (group) we started and have not reaped.
    unsafe { libc::kill(-pid, sig) == 0 || libc::kill(pid, sig) == 0 }
}

/// A port nothing listens on now (the kernel's pick for port 0).
fn free_port() -> Result<u16, String> {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("cannot find a free port: {e}"))
}

/// The supervisor thread: first starts, then watch and restart until stopped.
fn monitor(shared: Arc<Shared>, ready: mpsc::Sender<Result<(), StartError>>) {
    let opts = &shared.options;
    let mut slots: Vec<Slot> = Vec::new();
    for index in 0..opts.count {
        let started = match opts.readiness {
            Readiness::Line => Ok(0),
            Readiness::Http { .. } => free_port(),
        }
        .and_then(|port| spawn(&shared, index, port));
        match started {
            Ok(Started {
                child,
                addr,
                identity,
            }) => {
                let pid = child.id();
                lock(&shared.instances).push(Instance {
                    index,
                    addr,
                    pid: Some(pid),
                    restarts: 0,
                    identity: identity.clone(),
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
                    identity,
                });
            }
            Err(message) => {
                stop_all(&shared, &mut slots);
                let _ = ready.send(Err(StartError {
                    name: shared.spec.name.clone(),
                    index,
                    message,
                    output: lock(&shared.output[index]).iter().cloned().collect(),
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
        let pid = child.id();
        let status = {
            let mut all = lock(&shared.instances);
            let Ok(Some(status)) = child.try_wait() else {
                return;
            };
            all[index].pid = None;
            status
        };
        slot.child = None;
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
    let wanted = &shared.restart_wanted[index];
    if opts.restart == RestartPolicy::OnRequest && !wanted.load(Ordering::SeqCst) {
        return;
    }
    if Instant::now() < slot.next_start {
        return;
    }
    let port = lock(&shared.instances)[index].addr.port();
    match spawn(shared, index, port) {
        Ok(Started {
            child,
            addr,
            identity,
        }) => {
            wanted.store(false, Ordering::SeqCst);
            let pid = child.id();
            let restarts = {
                let mut all = lock(&shared.instances);
                let i = &mut all[index];
                i.pid = Some(pid);
                i.addr = addr;
                i.restarts += 1;
                i.identity = identity.clone();
                i.restarts
            };
            slot.child = Some(child);
            slot.started = Instant::now();
            (shared.on_event)(&Event::Started {
                index,
                addr,
                pid,
                restarts,
                identity,
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

/// SIGTERM (and SIGCONT) to every copy, a bounded wait, then SIGKILL.
fn stop_all(shared: &Shared, slots: &mut [Slot]) {
    {
        let _all = lock(&shared.instances);
        for slot in slots.iter() {
            if let Some(child) = &slot.child {
                kill_group(child.id(), libc::SIGTERM);
                // A stopped copy acts on its SIGTERM only once continued.
                kill_group(child.id(), libc::SIGCONT);
            }
        }
    }
    let deadline = Instant::now() + shared.options.stop_timeout;
    loop {
        let mut running = 0;
        {
            let mut all = lock(&shared.instances);
            for (index, slot) in slots.iter_mut().enumerate() {
                if let Some(child) = &mut slot.child {
                    match child.try_wait() {
                        Ok(Some(_)) | Err(_) => {
                            slot.child = None;
                            if let Some(i) = all.get_mut(index) {
                                i.pid = None;
                            }
                        }
                        Ok(None) => running += 1,
                    }
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
            kill_group(child.id(), libc::SIGKILL);
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

/// Keeps a line in a copy's tail, and echoes it if asked.
fn keep_line(tail: &Tail, echo: Option<&str>, line: String) {
    if let Some(prefix) = echo {
        say(&format!("{prefix} | {line}"));
    }
    let mut t = lock(tail);
    if t.len() == OUTPUT_LINES {
        t.pop_front();
    }
    t.push_back(line);
}

/// Starts copy `index` on `port` and waits until it is ready.
fn spawn(shared: &Shared, index: usize, port: u16) -> Result<Started, String> {
    let spec = &shared.spec;
    let mut child = command(spec, port)
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", spec.program.display()))?;
    let (addr_rx, readers) = read_output(shared, index, &mut child);
    let deadline = Instant::now() + shared.options.start_timeout;
    match &shared.options.readiness {
        Readiness::Line => wait_for_line(shared, child, addr_rx, deadline, readers),
        Readiness::Http {
            path,
            identity_headers,
        } => {
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            wait_for_http(
                shared,
                child,
                addr,
                path,
                identity_headers,
                deadline,
                readers,
            )
        }
    }
}

/// The command for a copy on `port`: in its own process group, its output
/// piped, and (on Linux) sent SIGTERM when the supervisor dies.
fn command(spec: &CommandSpec, port: u16) -> Command {
    use std::os::unix::process::CommandExt;
    let port_text = port.to_string();
    let mut cmd = Command::new(&spec.program);
    cmd.args(spec.args.iter().map(|a| a.replace("{port}", &port_text)))
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .env("PORT", &port_text)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
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
    cmd
}

/// Starts the threads that read copy `index`'s stdout and stderr into its
/// tail: the address its `listening ADDR` line names (line readiness)
/// arrives on the receiver.
fn read_output(
    shared: &Shared,
    index: usize,
    child: &mut Child,
) -> (mpsc::Receiver<Result<SocketAddr, String>>, Readers) {
    let prefix = format!("{}-{index}", shared.spec.name);
    let echo = shared.options.echo_output;
    let tail = shared.output[index].clone();
    let line_mode = shared.options.readiness == Readiness::Line;
    let (addr_tx, addr_rx) = mpsc::channel();
    // Each reader holds a sender until its stream ends: see `Readers::wait`.
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let readers = Readers(done_rx);
    if let Some(out) = child.stdout.take() {
        let prefix = prefix.clone();
        let tail = tail.clone();
        let done = done_tx.clone();
        std::thread::spawn(move || {
            let _done = done;
            let mut addr_tx = line_mode.then_some(addr_tx);
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if let Some(rest) = line.strip_prefix("listening ") {
                    if let Some(tx) = addr_tx.take() {
                        let _ =
                            tx.send(rest.trim().parse::<SocketAddr>().map_err(|e| e.to_string()));
                        continue;
                    }
                }
                keep_line(&tail, echo.then_some(prefix.as_str()), line);
            }
        });
    }
    if let Some(err) = child.stderr.take() {
        std::thread::spawn(move || {
            let _done = done_tx;
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                keep_line(&tail, echo.then_some(prefix.as_str()), line);
            }
        });
    }
    (addr_rx, readers)
}

/// The output readers of a copy that is starting.
struct Readers(mpsc::Receiver<()>);

impl Readers {
    /// Waits (briefly) until the copy's output is read to its end, so its
    /// last lines are in the tail when a failed start reports them.
    fn wait(self) {
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Err(mpsc::RecvTimeoutError::Timeout) = self
            .0
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if Instant::now() >= deadline {
                break;
            }
        }
    }
}

/// Kills a copy that did not get ready.
fn fail<T>(mut child: Child, why: String) -> Result<T, String> {
    kill_group(child.id(), libc::SIGKILL);
    let _ = child.wait();
    Err(why)
}

/// Waits for the `listening ADDR` line.
fn wait_for_line(
    shared: &Shared,
    mut child: Child,
    addr_rx: mpsc::Receiver<Result<SocketAddr, String>>,
    deadline: Instant,
    readers: Readers,
) -> Result<Started, String> {
    loop {
        match addr_rx.recv_timeout(Duration::from_millis(20)) {
            Ok(Ok(addr)) => {
                return Ok(Started {
                    child,
                    addr,
                    identity: None,
                })
            }
            Ok(Err(e)) => return fail(child, format!("printed a bad address: {e}")),
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Stdout closed without the line: it is exiting or exited.
                let status = child
                    .wait()
                    .map(describe_status)
                    .unwrap_or_else(|e| e.to_string());
                readers.wait();
                return Err(format!(
                    "exited ({status}) before printing `listening ADDR`"
                ));
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            readers.wait();
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

/// Polls `GET path` until it answers 2xx or 3xx.
fn wait_for_http(
    shared: &Shared,
    mut child: Child,
    addr: SocketAddr,
    path: &str,
    identity_headers: &[String],
    deadline: Instant,
    readers: Readers,
) -> Result<Started, String> {
    let mut last = String::from("no answer yet");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            readers.wait();
            return Err(format!(
                "exited ({}) before answering GET {path} on {addr} ({last})",
                describe_status(status)
            ));
        }
        if shared.stopping.load(Ordering::SeqCst) {
            return fail(child, "stopping".into());
        }
        match http_probe(addr, path, identity_headers) {
            Ok((status, identity)) if (200..400).contains(&status) => {
                return Ok(Started {
                    child,
                    addr,
                    identity,
                })
            }
            Ok((status, _)) => last = format!("last answer: status {status}"),
            Err(e) => last = format!("last attempt: {e}"),
        }
        if Instant::now() >= deadline {
            return fail(
                child,
                format!(
                    "did not answer GET {path} on {addr} with a 2xx or 3xx within {:?} ({last})",
                    shared.options.start_timeout
                ),
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One `GET path` to `addr`: the status, and the value of the first of
/// `headers` the answer has. Reads the head only, within a second.
pub fn http_probe(
    addr: SocketAddr,
    path: &str,
    headers: &[String],
) -> Result<(u16, Option<String>), String> {
    use std::io::{Read, Write};
    let timeout = Duration::from_secs(1);
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    // One write: `write!` on the socket would send each formatted piece in
    // its own segment.
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: unstick-supervisor\r\nConnection: close\r\n\r\n"
    );
    s.write_all(request.as_bytes()).map_err(|e| e.to_string())?;
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = s.read(&mut chunk).map_err(|e| e.to_string())?;
        if n == 0 {
            return Err("the connection closed before a response head".into());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut parsed = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut parsed);
        match resp.parse(&buf) {
            Ok(httparse::Status::Complete(_)) => {
                let status = resp.code.unwrap_or(0);
                let identity = headers.iter().find_map(|want| {
                    resp.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(want))
                        .and_then(|h| std::str::from_utf8(h.value).ok())
                        .map(|v| v.trim().to_owned())
                });
                return Ok((status, identity));
            }
            Ok(httparse::Status::Partial) if buf.len() < 64 * 1024 => {}
            Ok(httparse::Status::Partial) => return Err("a response head over 64 KiB".into()),
            Err(e) => return Err(format!("not an HTTP response: {e}")),
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
        let sup = Supervisor::start(
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
        assert!(sup.signal(1, libc::SIGKILL).is_some());
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

    #[test]
    fn on_request_restarts_wait_to_be_asked() {
        // The stderr line goes first: the copy counts as started once its
        // listening line is read, and the kill below must not beat the echo.
        let script = r#"echo "up as $$" >&2; echo "listening 127.0.0.1:40002"; exec sleep 30"#;
        let sup = Supervisor::start(
            sh(script),
            SupervisorOptions {
                count: 1,
                restart: RestartPolicy::OnRequest,
                echo_output: false,
                ..Default::default()
            },
            |_| {},
        )
        .unwrap();
        let old = sup.signal(0, libc::SIGKILL).expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while sup.instances()[0].pid.is_some() {
            assert!(Instant::now() < deadline, "not reaped");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Not asked: it stays down.
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(sup.instances()[0].pid, None);
        assert_eq!(sup.signal(0, libc::SIGTERM), None);
        sup.restart(0);
        let new = loop {
            if let Some(pid) = sup.instances()[0].pid {
                break pid;
            }
            assert!(Instant::now() < deadline, "no restart");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_ne!(new, old);
        assert_eq!(sup.instances()[0].restarts, 1);
        // Both starts' stderr lines are kept, not echoed.
        let out = sup.output(0);
        assert_eq!(out, [format!("up as {old}"), format!("up as {new}")]);
        sup.stop();
    }

    #[test]
    fn an_http_copy_that_exits_fails_with_its_output() {
        let spec = sh(r#"echo "starting on $PORT"; echo "boom: no config" >&2; exit 7"#);
        let err = match Supervisor::start(
            spec,
            SupervisorOptions {
                count: 2,
                readiness: Readiness::Http {
                    path: "/healthz".into(),
                    identity_headers: vec![],
                },
                echo_output: false,
                ..Default::default()
            },
            |_| {},
        ) {
            Err(e) => e,
            Ok(_) => panic!("started"),
        };
        assert_eq!(err.index, 0);
        assert!(err.message.contains("exit code 7"), "{err}");
        assert!(err.message.contains("GET /healthz"), "{err}");
        assert!(
            err.output.contains(&"boom: no config".to_owned()),
            "{:?}",
            err.output
        );
        let port_line = err
            .output
            .iter()
            .find(|l| l.starts_with("starting on "))
            .unwrap();
        let port: u16 = port_line["starting on ".len()..].parse().unwrap();
        assert_ne!(port, 0, "a free port is chosen up front");
    }

    #[test]
    fn the_http_probe_reads_status_and_identity() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let mut buf = [0u8; 1024];
            while !got.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                assert!(n > 0, "closed before the request head ended");
                got.extend_from_slice(&buf[..n]);
            }
            let head = String::from_utf8_lossy(&got).into_owned();
            s.write_all(b"HTTP/1.1 204 No Content\r\nX-Instance-Id: abc123\r\n\r\n")
                .unwrap();
            head
        });
        let got = http_probe(
            addr,
            "/ready",
            &["x-backend-id".into(), "X-Instance-Id".into()],
        );
        assert_eq!(got, Ok((204, Some("abc123".into()))));
        assert!(server
            .join()
            .unwrap()
            .starts_with("GET /ready HTTP/1.1\r\n"));
    }
}
