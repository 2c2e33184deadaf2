//! Shared set-up for the integration tests: unstick with N backends, raw clients, bounded waits, admin and metrics scraping.
//!
//! A test file says `mod support;` and then reads as its scenario:
//!
//! ```ignore
//! mod support;
//! use support::{metrics, Serve};
//!
//! // `unstick serve` as a real child process in front of 3 `testkit-backend` processes.
//! let rig = Serve::child_backends(3).arg("--algorithm").arg("round-robin").start();
//! let r = client::get(rig.lb.addr, "/").await.unwrap();
//! let m = metrics::scrape(rig.lb.admin()).await;
//! assert_eq!(m.sum("unstick_requests_total", &[("code_class", "2xx")]), 1.0);
//! rig.lb.signal(libc::SIGTERM);
//! assert_eq!(rig.lb.exit_within(Duration::from_secs(10)).await.unwrap().code(), Some(0));
//!
//! // unstick in-process in front of 2 in-process fake backends, a config tweak.
//! let local = Local::start_with(2, |c| c.http1_fast_path = false).await;
//! ```
//!
//! What is here:
//! - [`Serve`] / [`Rig`] / [`Lb`] ([`unstick`]): `unstick serve` as a child
//!   process (port 0, admin on port 0, a config file in a temporary folder),
//!   with child or in-process backends; `Lb` signals, kills and waits for it.
//!   [`run`] and [`run_within`] run any other `unstick` command to its exit.
//! - [`Local`] ([`local`]): the same in-process ([`unstick::app::App`]), for
//!   tests that read its state or swap its metrics registry.
//! - [`backends`]: in-process fake backends (`b0`, `b1`, ...) and backend
//!   processes, and [`backends::addrs`] for either.
//! - [`many`]: thousands of client connections at once (the open-file
//!   limit raised, source addresses spread over 127.0.0.2 and up).
//! - [`h2`]: raw HTTP/2 frames (preface, PING, SETTINGS).
//! - [`pki`]: a throwaway CA, certificates and TLS clients that trust it.
//! - [`raw`]: a raw TCP client that writes bytes and parses the answer
//!   itself (framings hyper would refuse to write or read).
//! - [`wire`]: a raw client that reads answers strictly, by unstick's own
//!   parser, and reports what came (answers, a close, stray bytes) rather
//!   than failing on it: for hostile exchanges.
//! - [`chaos`]: `unstick chaos` runs ([`chaos::Chaos`]) and their verdicts.
//! - [`load`]: the load engine against a URL, with a test's settings.
//! - [`wait`]: bounded condition waits ([`wait::until`]); never sleep for a
//!   condition.
//! - [`metrics`]: Prometheus scrapes, checked line by line ([`metrics::Scrape`]).
//! - [`admin`]: the admin JSON API.
//! - [`Files`]: a temporary folder for config files, removed on drop.
//!
//! Every wait is bounded and every process is killed when its handle drops,
//! so a failing test stops by itself and leaves nothing behind.

// Each test binary uses a part of this module.
#![allow(dead_code, unused_imports)]

pub mod admin;
pub mod backends;
pub mod chaos;
pub mod h2;
pub mod load;
pub mod local;
pub mod many;
pub mod metrics;
pub mod pki;
pub mod raw;
pub mod unstick;
pub mod wait;
pub mod wire;

pub use local::Local;
pub use unstick::{run, run_within, Lb, Output, Rig, Serve};

use std::path::{Path, PathBuf};

/// The `unstick` binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_unstick");

/// Flags that put a command's listeners on port 0 with the access log off.
pub const PORT_ZERO: [&str; 6] = [
    "--listen",
    "127.0.0.1:0",
    "--admin",
    "127.0.0.1:0",
    "--access-log",
    "off",
];

/// Runs `script` with `sh -ec` in the folder `dir`; panics with its output
/// unless it exits 0; its stdout.
pub fn sh_in(dir: &Path, script: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-ec", script])
        .current_dir(dir)
        .output()
        .expect("run sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// A temporary folder for config files and the like, removed on drop.
pub struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Files {
        Files {
            dir: tempfile::Builder::new()
                .prefix("unstick-test-")
                .tempdir()
                .expect("a temporary folder"),
        }
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The path of `name` in the folder (whether or not it exists).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` to `name` in the folder and returns its path. An
    /// existing file is replaced by a rename, as config tools do, so a
    /// watcher never reads a half-written file.
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).expect("write a temporary file");
        std::fs::rename(&tmp, &path).expect("rename it into place");
        path
    }
}

impl Default for Files {
    fn default() -> Self {
        Files::new()
    }
}
