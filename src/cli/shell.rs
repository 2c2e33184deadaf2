//! `unstick completions SHELL` and `unstick man`: shell completions and man pages made from the command-line definition.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::{Cli, EXIT_FAILURE};

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    #[arg(value_name = "SHELL")]
    shell: Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write `unstick.1` and one page per subcommand (`unstick-serve.1`,
    /// ...) into this folder instead of printing `unstick.1`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// Prints the completion script, e.g. `unstick completions bash >
/// /etc/bash_completion.d/unstick` or `unstick completions zsh >
/// "${fpath[1]}/_unstick"`.
pub fn completions(args: CompletionsArgs) -> ExitCode {
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "unstick", &mut out);
    write_stdout(&out)
}

/// Prints `unstick.1` (roff: `unstick man | man -l -`), or writes every page to `--dir`.
pub fn man(args: ManArgs) -> ExitCode {
    let cmd = Cli::command();
    if let Some(dir) = args.dir {
        return match std::fs::create_dir_all(&dir)
            .and_then(|()| clap_mangen::generate_to(cmd, &dir))
        {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!(
                    "error: cannot write the man pages to {}: {e}",
                    dir.display()
                );
                ExitCode::from(EXIT_FAILURE)
            }
        };
    }
    let mut out = Vec::new();
    match clap_mangen::Man::new(cmd).render(&mut out) {
        Ok(()) => write_stdout(&out),
        Err(e) => {
            eprintln!("error: cannot render the man page: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Writes `bytes` to stdout; a closed pipe (`| head`) is not an error.
fn write_stdout(bytes: &[u8]) -> ExitCode {
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(bytes).and_then(|()| stdout.flush()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write to stdout: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}
