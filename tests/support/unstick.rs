//! `unstick serve` as a real child process in front of N backends ([`Serve`] -> [`Rig`]), and one-shot commands ([`run`]).

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use unstick::testkit::process::{ChildBackend, ChildProcess, ChildUnstick, Lines};

use super::backends::children;
use super::{Files, BIN};

/// How long a one-shot [`run`] may take before it is killed and the test fails.
pub const RUN_LIMIT: Duration = Duration::from_secs(30);

/// A builder for `unstick serve` in its own process.
///
/// The process listens on 127.0.0.1 port 0 with its admin listener on port 0
/// and reads a config file written to a temporary folder: `backends = [...]`
/// (the builder's backends, `ADDR` or `ADDR=WEIGHT`) followed by the
/// [`Serve::toml`] text. Flags ([`Serve::arg`]) and environment
/// ([`Serve::env`]) override the file as they do for users.
#[derive(Default)]
pub struct Serve {
    children: usize,
    child_flags: Vec<String>,
    backends: Vec<(SocketAddr, u32)>,
    toml: String,
    args: Vec<String>,
    env: Vec<(String, String)>,
    in_folder: bool,
}

impl Serve {
    /// No backends yet.
    pub fn new() -> Serve {
        Serve::default()
    }

    /// `n` backend processes (`unstick testkit-backend`, ids `b0`, `b1`, ...),
    /// started with unstick and listed first in its config.
    pub fn child_backends(n: usize) -> Serve {
        Serve {
            children: n,
            ..Serve::default()
        }
    }

    /// Extra `testkit-backend` flags for the backend processes, such as
    /// `["--drain", "300ms"]`.
    pub fn child_flags(mut self, flags: &[&str]) -> Serve {
        self.child_flags = flags.iter().map(|f| f.to_string()).collect();
        self
    }

    /// Adds backends that already run (in-process fakes, say), weight 1.
    pub fn backends(mut self, addrs: &[SocketAddr]) -> Serve {
        self.backends.extend(addrs.iter().map(|a| (*a, 1)));
        self
    }

    /// Adds one running backend with a weight.
    pub fn weighted(mut self, addr: SocketAddr, weight: u32) -> Serve {
        self.backends.push((addr, weight));
        self
    }

    /// TOML appended to the config file after the `backends` line (top-level
    /// keys first, then tables).
    pub fn toml(mut self, text: &str) -> Serve {
        self.toml.push_str(text);
        self
    }

    /// One more command-line argument (after `serve --listen ... --admin ...
    /// --config ...`, so it wins).
    pub fn arg(mut self, arg: impl Into<String>) -> Serve {
        self.args.push(arg.into());
        self
    }

    /// More command-line arguments.
    pub fn args(mut self, args: &[&str]) -> Serve {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable for the process.
    pub fn env(mut self, key: &str, value: &str) -> Serve {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// Runs unstick in the temporary folder (for relative paths in the config).
    pub fn in_folder(mut self) -> Serve {
        self.in_folder = true;
        self
    }

    /// Starts the backend processes, writes the config and starts unstick;
    /// returns once unstick has logged its `started` line (bounded: panics
    /// with its stderr if it does not start).
    pub fn start(self) -> Rig {
        let backends = children(self.children, &self.strs(&self.child_flags));
        let mut listed: Vec<(SocketAddr, u32)> = backends.iter().map(|b| (b.addr, 1)).collect();
        listed.extend(&self.backends);
        let files = Files::new();
        let config = files.write("unstick.toml", &config_text(&listed, &self.toml));
        let mut args = vec!["--config".to_owned(), config.display().to_string()];
        args.extend(self.args.iter().cloned());
        let env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let dir = self.in_folder.then(|| files.dir());
        let lb = Lb::from(ChildUnstick::spawn_in(BIN, &self.strs(&args), &env, dir));
        Rig {
            lb,
            backends,
            files,
            config,
        }
    }

    fn strs<'a>(&self, v: &'a [String]) -> Vec<&'a str> {
        v.iter().map(String::as_str).collect()
    }
}

/// A config file's text: `backends = ["ADDR=WEIGHT", ...]`, the access log
/// off, then `extra`.
pub fn config_text(backends: &[(SocketAddr, u32)], extra: &str) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|(a, w)| format!("\"{a}={w}\""))
        .collect();
    format!(
        "access_log = \"off\"\nbackends = [{}]\n{extra}",
        list.join(", ")
    )
}

/// A running `unstick serve`, its backend processes and its config folder.
///
/// Keep it whole for the test's life (`let rig = ...; let lb = &rig.lb;`): a
/// pattern such as `let Rig { lb, .. } = ...` drops the backends at once.
pub struct Rig {
    pub lb: Lb,
    /// The backend processes [`Serve::child_backends`] started, in order.
    pub backends: Vec<ChildBackend>,
    /// The temporary folder holding the config (and anything else a test writes).
    pub files: Files,
    /// The config file unstick reads.
    pub config: PathBuf,
}

impl Rig {
    /// Rewrites the config file (by a rename) with `backends` and `extra`, as
    /// [`Serve::start`] wrote it; send SIGHUP (or let the watcher see it) to apply.
    pub fn rewrite_config(&self, backends: &[(SocketAddr, u32)], extra: &str) {
        self.files
            .write("unstick.toml", &config_text(backends, extra));
    }
}

/// `unstick serve` in its own process: addresses, signals, exit. SIGKILLed
/// and reaped when dropped.
pub struct Lb {
    /// The proxy listener.
    pub addr: SocketAddr,
    /// The admin listener, if on.
    pub admin: Option<SocketAddr>,
    pub process: ChildProcess,
}

impl From<ChildUnstick> for Lb {
    fn from(c: ChildUnstick) -> Lb {
        Lb {
            addr: c.addr,
            admin: c.admin,
            process: c.process,
        }
    }
}

impl Lb {
    /// The admin listener (panics if it is off).
    pub fn admin(&self) -> SocketAddr {
        self.admin.expect("the admin listener is on")
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Sends `sig` (`libc::SIGTERM`, `SIGHUP`, ...); false if it is gone.
    pub fn signal(&self, sig: i32) -> bool {
        self.process.signal(sig)
    }

    /// SIGKILLs the process and reaps it.
    pub fn kill(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }

    /// Waits (without blocking the runtime) up to `limit` for the process to
    /// exit; its status if it did.
    pub async fn exit_within(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Ok(Some(status)) = self.process.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The lines written to stderr so far (the JSON log).
    pub fn stderr(&self) -> &Lines {
        &self.process.stderr
    }

    /// The lines written to stdout so far (the access log).
    pub fn stdout(&self) -> &Lines {
        &self.process.stdout
    }
}

/// What a one-shot command did.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    /// The exit code (-1 if killed by a signal).
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// Asserts the exit code, showing both streams if it differs.
    pub fn assert_code(&self, code: i32) {
        assert_eq!(
            self.status.code(),
            Some(code),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
    }
}

/// Runs `unstick ARGS` (without `UNSTICK_CONFIG` from the test's
/// environment, with `env` added) to its exit, at most [`RUN_LIMIT`].
pub fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    run_within(args, env, RUN_LIMIT)
}

/// As [`run`], at most `limit`: past it the process is killed and the test
/// fails with what it wrote. Its output is read to the end (pipes a
/// surviving grandchild still holds are given up after 5 s).
pub fn run_within(args: &[&str], env: &[(&str, &str)], limit: Duration) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("UNSTICK_CONFIG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn unstick");
    let stdout = Collected::read(child.stdout.take().expect("piped"));
    let stderr = Collected::read(child.stderr.take().expect("piped"));
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "unstick {args:?} did not exit within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                stdout.finish(),
                stderr.finish()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output {
        status,
        code: status.code().unwrap_or(-1),
        stdout: stdout.finish(),
        stderr: stderr.finish(),
    }
}

/// A pipe read to its end by a thread.
struct Collected {
    bytes: Arc<Mutex<Vec<u8>>>,
    done: mpsc::Receiver<()>,
}

impl Collected {
    fn read(mut r: impl Read + Send + 'static) -> Collected {
        let bytes = Arc::new(Mutex::new(Vec::new()));
        let (tx, done) = mpsc::channel();
        let sink = bytes.clone();
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            while let Ok(n @ 1..) = r.read(&mut chunk) {
                sink.lock().unwrap().extend_from_slice(&chunk[..n]);
            }
            let _ = tx.send(());
        });
        Collected { bytes, done }
    }

    /// What was read, once the pipe closed (or 5 s passed).
    fn finish(&self) -> String {
        let _ = self.done.recv_timeout(Duration::from_secs(5));
        String::from_utf8_lossy(&self.bytes.lock().unwrap()).into_owned()
    }
}
