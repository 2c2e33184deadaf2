//! `unstick chaos` runs: an app and its flags ([`Chaos`]), a run to its exit, and the verdict and report files it leaves.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use unstick::testkit::process::{signal, ChildProcess};

use super::{run_within, Files, Output, BIN};

/// `config/chaos/NAME` in the repository (`demo.toml`, `read-only.toml`).
pub fn scenario(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("config/chaos")
        .join(name)
}

/// The demo app's command line with `store` (`memory`, `sqlite:PATH`).
pub fn demo_app(store: &str) -> String {
    format!("{BIN} demo-app --port {{port}} --store {store}")
}

/// A fake backend process as the app (GET / answers 200 with its id),
/// with extra `testkit-backend` flags.
pub fn backend_app(flags: &str) -> String {
    format!("{BIN} testkit-backend --listen 127.0.0.1:{{port}} --id b{{port}}{flags}")
}

/// Runs `unstick chaos ARGS` to its end (at most `limit`).
pub fn run_args(args: &[&str], limit: Duration) -> Output {
    let args: Vec<&str> = ["chaos"].iter().chain(args).copied().collect();
    run_within(&args, &[], limit)
}

/// An `unstick chaos` command line and a temporary folder for its store,
/// scenario files and report (`report/` in the folder).
pub struct Chaos {
    files: Files,
    args: Vec<String>,
}

impl Chaos {
    /// No flags yet.
    pub fn new() -> Chaos {
        Chaos {
            files: Files::new(),
            args: Vec::new(),
        }
    }

    /// `--app CMD`.
    pub fn app(self, cmd: &str) -> Chaos {
        self.flags(&["--app", cmd])
    }

    /// The demo app keeping its sessions in process memory.
    pub fn memory_demo(self) -> Chaos {
        self.app(&demo_app("memory"))
    }

    /// The demo app on a SQLite store prepared once in the folder, before
    /// the instances race to create it.
    pub fn sqlite_demo(self) -> Chaos {
        let db = self.files.path("demo.db");
        unstick::demo::store::SqliteStore::init(&db).expect("init the store");
        self.app(&demo_app(&format!("sqlite:{}", db.display())))
    }

    /// `--scenario PATH`.
    pub fn scenario(self, path: &Path) -> Chaos {
        let path = path.to_str().expect("a UTF-8 path").to_owned();
        self.flags(&["--scenario", &path])
    }

    /// `--scenario` with `text` written to `name` in the folder.
    pub fn scenario_text(self, name: &str, text: &str) -> Chaos {
        let path = self.files.write(name, text);
        self.scenario(&path)
    }

    /// More flags, as they are.
    pub fn flags(mut self, flags: &[&str]) -> Chaos {
        self.args.extend(flags.iter().map(|f| f.to_string()));
        self
    }

    /// `--report-dir` the folder's `report/`.
    pub fn reported(self) -> Chaos {
        let dir = self.report_dir().display().to_string();
        self.flags(&["--report-dir", &dir])
    }

    /// Where [`Chaos::reported`] has the report written.
    pub fn report_dir(&self) -> PathBuf {
        self.files.path("report")
    }

    /// Runs the command to its end (at most `limit`).
    pub fn run(&self, limit: Duration) -> Output {
        run_args(&self.strs(), limit)
    }

    /// Runs the command with `--dry-run` added (at most `limit`).
    pub fn dry_run(&self, limit: Duration) -> Output {
        let mut args = self.strs();
        args.push("--dry-run");
        run_args(&args, limit)
    }

    /// Starts the command as a child process (killed when dropped).
    pub fn spawn(&self) -> ChildProcess {
        let mut cmd = Command::new(BIN);
        cmd.arg("chaos").args(&self.args);
        ChildProcess::spawn(cmd).expect("spawn unstick chaos")
    }

    /// `report/verdict.json`.
    pub fn verdict(&self) -> Value {
        verdict(&self.report_dir())
    }

    /// `report/FILE` as text (`junit.xml`, `report.html`).
    pub fn report_file(&self, file: &str) -> String {
        let path = self.report_dir().join(file);
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    }

    fn strs(&self) -> Vec<&str> {
        self.args.iter().map(String::as_str).collect()
    }
}

impl Default for Chaos {
    fn default() -> Self {
        Chaos::new()
    }
}

/// `DIR/verdict.json`, parsed.
pub fn verdict(dir: &Path) -> Value {
    let text = std::fs::read_to_string(dir.join("verdict.json")).expect("verdict.json");
    serde_json::from_str(&text).expect("verdict.json is JSON")
}

/// The verdict's check named `name` (panics if absent).
pub fn check<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}"))
}

/// The timeline's faults that ran (those with an `at_s`).
pub fn executed(v: &Value) -> Vec<&Value> {
    v["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| !f["at_s"].is_null())
        .collect()
}

/// The verdict's plan as `--dry-run` prints it: `(seconds, SIGKILL, instance)`
/// (for runs of `--faults kill`).
pub fn planned_kills(v: &Value) -> Vec<(String, String, String)> {
    v["plan"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                format!("{:.2}", f["at"].as_f64().unwrap()),
                "SIGKILL".to_owned(),
                f["instance"].to_string(),
            )
        })
        .collect()
}

/// Whether `pid` still runs: signal 0 checks only; ESRCH once the process
/// is gone (and reaped).
pub fn alive(pid: u32) -> bool {
    signal(pid, 0)
}

/// Every pid the verdict lists for every instance.
pub fn all_pids(v: &Value) -> Vec<u32> {
    v["instances"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["pids"].as_array().unwrap().clone())
        .map(|p| p.as_u64().unwrap() as u32)
        .collect()
}

/// Asserts no pid of the verdict's instances outlived the run.
pub fn assert_none_alive(v: &Value) {
    for pid in all_pids(v) {
        assert!(!alive(pid), "pid {pid} survived the run");
    }
}

/// Pids from `chaos: instance #N started: pid P` and `restarted: pid P` lines.
pub fn pids_in(stderr: &str) -> Vec<u32> {
    stderr
        .lines()
        .filter(|l| l.starts_with("chaos: instance #") && l.contains("started: pid "))
        .map(|l| {
            let rest = &l[l.find("started: pid ").unwrap() + "started: pid ".len()..];
            rest.split(' ').next().unwrap().parse().unwrap()
        })
        .collect()
}

/// The `(seconds, signal, instance)` of each fault in `--dry-run` output.
pub fn dry_run_faults(text: &str) -> Vec<(String, String, String)> {
    text.lines()
        .filter(|l| l.trim_start().starts_with("fault "))
        .map(|l| {
            let at = l
                .split(" at ")
                .nth(1)
                .unwrap()
                .split('s')
                .next()
                .unwrap()
                .trim();
            let sig = l.split(": ").nth(1).unwrap().split(' ').next().unwrap();
            let inst = l
                .split("instance #")
                .nth(1)
                .unwrap()
                .split(',')
                .next()
                .unwrap();
            (at.to_owned(), sig.to_owned(), inst.to_owned())
        })
        .collect()
}
