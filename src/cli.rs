//! The command line: clap subcommands, each in its own file under `cli/`.
//!
//! Exit codes: 0 success, 1 a run that failed, 2 bad arguments or config
//! (`chaos` adds 3 for an inconclusive run and 4 for an app that cannot run).

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod chaos;
mod demo;
mod healthcheck;
mod load;
pub mod log;
mod serve;
mod shell;
mod testkit;

/// A load balancer that refuses sticky sessions, and proves your app does not need them.
#[derive(Debug, Parser)]
#[command(name = "unstick", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Diagnostics on stderr: `text`, or `json` (one JSON object a line)
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        env = "UNSTICK_LOG_FORMAT",
        default_value = "text"
    )]
    pub log_format: log::LogFormat,
    /// Diagnostics level: error, warn, info, debug or trace [default: `RUST_LOG`, else info]
    #[arg(long, global = true, value_name = "LEVEL", env = "UNSTICK_LOG_LEVEL")]
    pub log_level: Option<tracing::Level>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the load balancer.
    Serve(serve::ServeArgs),
    /// Validate a config file and print the effective configuration.
    Check(serve::CheckArgs),
    /// Three demo app instances behind unstick, sharing sessions through SQLite.
    Demo(demo::DemoArgs),
    /// The demo web app: per-session login, cart and counter in a shared store.
    DemoApp(demo::DemoAppArgs),
    /// Send load to a URL and report latency, throughput and errors.
    Load(load::LoadArgs),
    /// Kill app instances mid-traffic behind unstick; verdict on statelessness.
    Chaos(chaos::ChaosArgs),
    /// GET a URL (default: the admin `/readyz`); exit 0 if it answers 2xx, else 1.
    Healthcheck(healthcheck::HealthcheckArgs),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    Completions(shell::CompletionsArgs),
    /// Print the man page (roff), or write every page to a folder.
    Man(shell::ManArgs),
    /// A fake backend for tests and benches.
    #[command(hide = true)]
    TestkitBackend(testkit::TestkitArgs),
}

/// Exit code for bad arguments or configuration.
pub const EXIT_USAGE: u8 = 2;
/// Exit code for a run that failed.
pub const EXIT_FAILURE: u8 = 1;

/// Parses the command line and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            // clap uses 2 for usage errors and 0 for --help/--version.
            return ExitCode::from(e.exit_code() as u8);
        }
    };
    log::init(cli.log_format, cli.log_level);
    match cli.command {
        Command::Serve(args) => serve::serve(args),
        Command::Check(args) => serve::check(args),
        Command::Demo(args) => demo::run_demo(args),
        Command::DemoApp(args) => demo::run_app(args),
        Command::Load(args) => load::run(args),
        Command::Chaos(args) => chaos::run(args),
        Command::Healthcheck(args) => healthcheck::run(args),
        Command::Completions(args) => shell::completions(args),
        Command::Man(args) => shell::man(args),
        Command::TestkitBackend(args) => testkit::run(args),
    }
}

/// How a subcommand wants its tokio runtime.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Runtime {
    /// One thread (`serve`'s control plane, `load` which runs its own threads).
    CurrentThread,
    /// A small pool of `n` workers (the demo app, chaos).
    Workers(usize),
}

/// Builds the runtime, or says why not (exit 1).
pub(crate) fn runtime(kind: Runtime) -> Result<tokio::runtime::Runtime, ExitCode> {
    let mut builder = match kind {
        Runtime::CurrentThread => tokio::runtime::Builder::new_current_thread(),
        Runtime::Workers(n) => {
            let mut b = tokio::runtime::Builder::new_multi_thread();
            b.worker_threads(n);
            b
        }
    };
    builder.enable_all().build().map_err(|e| {
        eprintln!("error: cannot start the runtime: {e}");
        ExitCode::from(EXIT_FAILURE)
    })
}
