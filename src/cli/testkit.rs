//! `unstick testkit-backend` (hidden): a fake backend process for tests and benches.

use std::process::ExitCode;

use clap::Args;

use crate::config::parse_duration;
use crate::testkit::{run_process, BackendOptions};

#[derive(Debug, Args)]
pub struct TestkitArgs {
    /// Address to listen on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: std::net::SocketAddr,
    /// Returned in `X-Backend-Id` and as the default body.
    #[arg(long, default_value = "backend")]
    id: String,
    /// Delay added to every response, e.g. `200ms`.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    delay: std::time::Duration,
    /// After SIGTERM, keep serving (asking to be drained) for this long.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    drain: std::time::Duration,
    /// A `Set-Cookie` value to add to every response; repeatable.
    #[arg(long = "set-cookie")]
    set_cookies: Vec<String>,
    /// Send no `X-Backend-Id` header.
    #[arg(long)]
    anonymous: bool,
}

pub fn run(args: TestkitArgs) -> ExitCode {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(args.listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("error: cannot listen on {}: {e}", args.listen);
                return ExitCode::from(1);
            }
        };
        println!("listening {}", listener.local_addr().expect("bound"));
        let opts = BackendOptions {
            id: args.id,
            delay: args.delay,
            set_cookies: args.set_cookies,
            anonymous: args.anonymous,
        };
        run_process(listener, opts, args.drain).await;
        ExitCode::SUCCESS
    })
}
