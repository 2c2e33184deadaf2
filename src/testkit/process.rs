//! Real child processes for tests: fake backends and unstick itself, killed on drop.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Sends `sig` (e.g. `libc::SIGKILL`) to `pid`.
pub fn signal(pid: u32, sig: i32) -> bool {
    // SAFETY: kill(2) on a pid we started; no memory is shared.
    unsafe { libc::kill(pid as i32, sig) == 0 }
}

/// Lines a child wrote, collected by a reader thread.
#[derive(Clone, Default)]
pub struct Lines(Arc<Mutex<Vec<String>>>);

impl Lines {
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    pub fn text(&self) -> String {
        self.all().join("\n")
    }

    /// Waits up to `timeout` for a line containing `needle`.
    pub fn wait_for(&self, needle: &str, timeout: Duration) -> Option<String> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.0.lock().unwrap().iter().find(|l| l.contains(needle)) {
                return Some(l.clone());
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn follow(&self, stream: impl std::io::Read + Send + 'static) {
        let lines = self.0.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                match line {
                    Ok(l) => lines.lock().unwrap().push(l),
                    Err(_) => break,
                }
            }
        });
    }
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct ChildProcess {
    pub child: Child,
    pub stdout: Lines,
    pub stderr: Lines,
}

impl ChildProcess {
    /// Spawns `cmd` with piped output, collecting both streams.
    pub fn spawn(mut cmd: Command) -> std::io::Result<ChildProcess> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (stdout, stderr) = (Lines::default(), Lines::default());
        stdout.follow(child.stdout.take().expect("piped"));
        stderr.follow(child.stderr.take().expect("piped"));
        Ok(ChildProcess {
            child,
            stdout,
            stderr,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, sig: i32) -> bool {
        signal(self.pid(), sig)
    }

    /// Waits up to `timeout` for the process to exit; its status if it did.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        // A stopped process must be continued to die promptly on some kernels.
        signal(self.pid(), libc::SIGCONT);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A fake backend in its own process (`unstick testkit-backend`).
pub struct ChildBackend {
    pub addr: SocketAddr,
    pub id: String,
    pub process: ChildProcess,
}

impl ChildBackend {
    /// Starts a backend on 127.0.0.1 port 0, with extra `testkit-backend`
    /// flags such as `--delay 200ms`.
    pub fn spawn(bin: impl AsRef<Path>, id: &str, extra: &[&str]) -> ChildBackend {
        let bin = bin.as_ref();
        Self::spawn_on(bin, id, "127.0.0.1:0", extra)
            .unwrap_or_else(|e| panic!("backend {id} did not start: {e}"))
    }

    fn spawn_on(
        bin: &Path,
        id: &str,
        listen: &str,
        extra: &[&str],
    ) -> Result<ChildBackend, String> {
        let mut cmd = Command::new(bin);
        cmd.arg("testkit-backend")
            .args(["--id", id, "--listen", listen])
            .args(extra);
        let mut process = ChildProcess::spawn(cmd).map_err(|e| e.to_string())?;
        let Some(line) = process
            .stdout
            .wait_for("listening ", Duration::from_secs(10))
        else {
            let _ = process.wait_timeout(Duration::from_millis(200));
            return Err(process.stderr.text());
        };
        let addr = line["listening ".len()..]
            .trim()
            .parse()
            .map_err(|e| format!("{e}"))?;
        Ok(ChildBackend {
            addr,
            id: id.to_owned(),
            process,
        })
    }

    /// Kills this backend (if alive) and starts it again on the same address.
    pub fn restart(&mut self, bin: impl AsRef<Path>, extra: &[&str]) {
        let bin = bin.as_ref();
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
        let mut last = String::new();
        // The port was ours a moment ago: retry briefly if it is not free yet.
        for _ in 0..100 {
            match Self::spawn_on(bin, &self.id, &self.addr.to_string(), extra) {
                Ok(b) => {
                    *self = b;
                    return;
                }
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "backend {} could not restart on {}: {last}",
            self.id, self.addr
        );
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

/// `unstick serve` in its own process.
pub struct ChildUnstick {
    pub addr: SocketAddr,
    pub admin: Option<SocketAddr>,
    pub process: ChildProcess,
}

impl ChildUnstick {
    /// Starts `unstick serve --listen 127.0.0.1:0 --admin 127.0.0.1:0 ARGS`
    /// (later flags win) and waits for its startup line.
    pub fn spawn(bin: impl AsRef<Path>, args: &[&str], env: &[(&str, &str)]) -> ChildUnstick {
        Self::spawn_in(bin, args, env, None)
    }

    /// As [`ChildUnstick::spawn`], in working directory `dir` if given.
    pub fn spawn_in(
        bin: impl AsRef<Path>,
        args: &[&str],
        env: &[(&str, &str)],
        dir: Option<&Path>,
    ) -> ChildUnstick {
        let mut cmd = Command::new(bin.as_ref());
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.arg("serve")
            .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
            .args(args)
            .env("RUST_LOG", "unstick=info")
            .env_remove("UNSTICK_CONFIG");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut process = ChildProcess::spawn(cmd).expect("spawn unstick");
        let Some(line) = process
            .stderr
            .wait_for("\"event\":\"started\"", Duration::from_secs(20))
        else {
            let _ = process.wait_timeout(Duration::from_millis(200));
            panic!("unstick did not start: {}", process.stderr.text())
        };
        // `TIME  INFO started {...}` as text, the object itself as JSON.
        let json = &line[line.find('{').expect("startup line has its fields")..];
        let v: serde_json::Value = serde_json::from_str(json).expect("startup fields are JSON");
        let addr = v["listen"].as_str().expect("listen").parse().expect("addr");
        let admin = v["admin"].as_str().and_then(|a| a.parse().ok());
        ChildUnstick {
            addr,
            admin,
            process,
        }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}
