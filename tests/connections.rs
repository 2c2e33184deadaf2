//! Ten thousand idle keep-alive client connections through `unstick serve`: all accepted, held, and served again.

mod support;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use support::{many, metrics, raw, Serve};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

/// Idle connections held at once.
const IDLE: usize = 10_000;

/// Exchanges in flight at once while opening or probing the connections.
const PARALLEL: usize = 200;

/// How long one read may wait: generous, for a machine busy with builds.
const READ: Duration = Duration::from_secs(60);

/// unstick with room for the connections, and idle and header timeouts
/// that cannot close a held connection during the test.
const ROOMY: &str = "[limits]\nmax_connections = 12000\n\
    [timeouts]\nclient_idle = \"1h\"\nclient_header = \"1h\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_idle_connections_are_held_and_all_served_again() {
    // The test holds the client ends, unstick the server ends (the child
    // inherits the raised limit and raises its own).
    many::raise_fd_limit(IDLE as u64 + 1_000);
    let rig = Serve::child_backends(1).toml(ROOMY).start();
    let addr = rig.lb.addr;

    let opened = on_all((0..IDLE).map(|i| (i, None)).collect(), addr).await;
    let mut held = served_all(opened, "opened and served once");

    let m = metrics::wait_value(
        rig.lb.admin(),
        "unstick_connections_open",
        &[],
        IDLE as f64,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(m.value("unstick_connections_open", &[]), Some(IDLE as f64));

    // Every held connection answers a second request, and a new one is
    // still served beside them.
    let again = on_all(
        held.drain(..)
            .enumerate()
            .map(|(i, s)| (i, Some(s)))
            .collect(),
        addr,
    )
    .await;
    let held = served_all(again, "served again");
    let fresh = served_all(on_all(vec![(IDLE, None)], addr).await, "served beside them");

    for stream in held.into_iter().chain(fresh) {
        many::reset(stream);
    }
}

/// Each connection's slot and, after one exchange, the connection with the
/// response's status, or what went wrong.
type Exchanged = Vec<(usize, Result<(TcpStream, u16), String>)>;

/// On each connection (a new one from source slot `i` where `None`):
/// one GET, its response read whole. Returns each connection with the
/// response's status, or what went wrong.
async fn on_all(conns: Vec<(usize, Option<TcpStream>)>, addr: SocketAddr) -> Exchanged {
    let gate = Arc::new(Semaphore::new(PARALLEL));
    let mut tasks = JoinSet::new();
    for (i, stream) in conns {
        let permit = gate.clone().acquire_owned().await.expect("open gate");
        tasks.spawn(async move {
            let result = exchange(i, stream, addr).await;
            drop(permit);
            (i, result)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = tasks.join_next().await {
        out.push(done.expect("an exchange task"));
    }
    out.sort_by_key(|(i, _)| *i);
    out
}

async fn exchange(
    i: usize,
    stream: Option<TcpStream>,
    addr: SocketAddr,
) -> Result<(TcpStream, u16), String> {
    let mut stream = match stream {
        Some(s) => s,
        None => many::connect(i, addr)
            .await
            .map_err(|e| format!("connect: {e}"))?,
    };
    let status = many::exchange(&mut stream, raw::get("/").as_bytes(), READ).await?;
    Ok((stream, status))
}

/// The connections, once every one was answered 200; else fails naming
/// how many were not and why the first few were not.
fn served_all(results: Exchanged, what: &str) -> Vec<TcpStream> {
    let total = results.len();
    let mut held = Vec::with_capacity(total);
    let mut failed = Vec::new();
    for (i, r) in results {
        match r {
            Ok((s, 200)) => held.push(s),
            Ok((_, status)) => failed.push(format!("#{i}: status {status}")),
            Err(e) => failed.push(format!("#{i}: {e}")),
        }
    }
    assert!(
        failed.is_empty(),
        "{} of {total} connections not {what}; first: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    held
}
