//! The `unstick` binary: parse the command line and hand over to [`unstick::cli`].

/// mimalloc, not glibc's malloc: per request allocations (one aligned task
/// cell per HTTP/2 stream among them) cost a fraction of the instructions.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    unstick::cli::main()
}
