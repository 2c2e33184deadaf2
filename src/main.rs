//! The `unstick` binary: parse the command line and hand over to [`unstick::cli`].

fn main() -> std::process::ExitCode {
    unstick::cli::main()
}
