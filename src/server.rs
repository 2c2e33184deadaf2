//! The accept loop: connection limits, TLS, HTTP/1.1 and HTTP/2, client
//! timeouts, graceful drain, and the optional HTTP->HTTPS redirect listener.
//!
//! On a TLS listener the handshake runs in the connection's own task,
//! bounded by the client header timeout; ALPN picks HTTP/2 or HTTP/1.1.
//! Cleartext connections are HTTP/1.1, or HTTP/2 with prior knowledge (h2c)
//! when HTTP/2 is enabled.
//!
//! Shutdown has two phases. On `Drain` the listener closes (new connections
//! are refused) and every connection finishes the requests it has, then
//! closes; after the drain timeout, `Close` drops whatever is left.

use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use prometheus::IntGauge;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::config::{Config, Http2};
use crate::proxy::{ClientInfo, Proxy};

pub mod balance;
mod clock;
mod conn;
pub mod fast;
mod h2flood;
mod handshake;
mod redirect;

use crate::shutdown::{Phase, Reached, Shutdown, TunnelHold};
use conn::{serve_connection, Accept};
pub use conn::{Builders, Speak, TrackedBody};
use handshake::{accept_tls, handshake_failed, HandshakeError};
pub use redirect::serve_redirect;

/// Client-side settings of the listener.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub max_connections: usize,
    pub client_header: Duration,
    pub client_idle: Duration,
    /// A client that sends none of a request body, or takes none of its
    /// response, for this long is cut off.
    pub client_stall: Duration,
    pub drain: Duration,
    pub max_header_bytes: usize,
    pub max_headers: usize,
    /// Serve plain HTTP/1.1 on the fast path (`server::fast`).
    pub http1_fast_path: bool,
    pub http2: Http2,
    /// The listener's TLS config (None: cleartext). Made by `tls::ServerCerts`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
}

impl ServerOptions {
    pub fn from_config(c: &Config) -> ServerOptions {
        ServerOptions {
            max_connections: c.limits.max_connections,
            client_header: c.timeouts.client_header,
            client_idle: c.timeouts.client_idle,
            client_stall: c.timeouts.client_stall,
            drain: c.timeouts.drain,
            max_header_bytes: c.limits.max_header_bytes,
            max_headers: c.limits.max_headers,
            http1_fast_path: c.http1_fast_path,
            http2: c.http2.clone(),
            tls: None,
        }
    }
}

/// Counts open connections and wakes the drain when the last one closes.
#[derive(Default)]
struct OpenConns {
    count: AtomicUsize,
    zero: Notify,
}

impl OpenConns {
    async fn wait_zero(&self) {
        loop {
            let notified = self.zero.notified();
            let mut notified = pin!(notified);
            notified.as_mut().enable();
            if self.count.load(Ordering::Acquire) == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// What every connection a worker serves shares.
struct Worker {
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    builders: Builders,
    acceptor: Option<TlsAcceptor>,
    shutdown: Shutdown,
    open: OpenConns,
    balance: balance::Balance,
    /// This worker's `unstick_worker_connections` gauge.
    worker_open: IntGauge,
}

/// The next connection for this worker to serve, if any.
enum Accepted {
    Serve(TcpStream, SocketAddr, OwnedSemaphorePermit),
    /// Handed to another worker, lost in the handing, or an accept error.
    Elsewhere,
    /// The drain began: accept no more.
    Drain,
}

/// Serves `listener` until `shutdown` reaches `Drain`, then drains: waits for
/// open connections to finish, at most `opts.drain`, and returns.
///
/// `limit` caps client connections; workers share one. `seat` is this
/// worker's place in the balance of connections over the workers.
pub async fn serve(
    listener: TcpListener,
    proxy: Arc<Proxy>,
    opts: ServerOptions,
    shutdown: Shutdown,
    limit: Arc<Semaphore>,
    seat: balance::Seat,
) -> io::Result<()> {
    let balance::Seat { balance, mut inbox } = seat;
    let worker_open = proxy
        .metrics
        .worker_connections
        .with_label_values(&[&balance.worker().to_string()]);
    let worker = Arc::new(Worker {
        builders: Builders::new(&opts),
        acceptor: opts.tls.clone().map(TlsAcceptor::from),
        proxy,
        opts,
        shutdown: shutdown.clone(),
        open: OpenConns::default(),
        balance,
        worker_open,
    });
    {
        let mut drain = pin!(shutdown.reached(Phase::Drain));
        loop {
            let next = next_connection(&listener, &mut inbox, &limit, &worker, drain.as_mut());
            match next.await {
                Accepted::Serve(stream, addr, permit) => {
                    let at = Instant::now();
                    worker.opened();
                    let worker = worker.clone();
                    let task = async move {
                        worker.serve(stream, addr, at).await;
                        worker.closed();
                        drop(permit);
                    };
                    tokio::spawn(task);
                }
                Accepted::Elsewhere => {}
                Accepted::Drain => break,
            }
        }
    }
    // New connections are refused from here on. Connections finish what
    // they have; at `Close` (set by `drain_deadline` when the drain timeout
    // passes, with every worker's connections in mind) they are dropped.
    drop(listener);
    worker.open.wait_zero().await;
    Ok(())
}

/// Waits for a connection this worker is to serve: accepted here (with a
/// slot under `limit`) or handed over by another worker.
async fn next_connection(
    listener: &TcpListener,
    inbox: &mut mpsc::UnboundedReceiver<balance::Handed>,
    limit: &Arc<Semaphore>,
    worker: &Worker,
    mut drain: Pin<&mut Reached>,
) -> Accepted {
    let placed = tokio::select! {
        _ = &mut drain => return Accepted::Drain,
        handed = inbox.recv() => match handed {
            Some(h) => worker.balance.receive(h),
            None => None,
        },
        accepted = listener.accept() => {
            let (stream, addr) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off, don't spin.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    return Accepted::Elsewhere;
                }
            };
            // The permit is taken after the accept, holding at most one
            // accepted connection per worker while the limit is reached.
            // Taken before it, an idle worker would sit on a permit while a
            // connection the kernel queued on another worker's listener
            // waited for one: with workers sharing one limit, a freed slot
            // could then go to a worker with nothing to serve.
            let permit = tokio::select! {
                _ = &mut drain => return Accepted::Drain,
                p = limit.clone().acquire_owned() => p.expect("semaphore never closed"),
            };
            let _ = stream.set_nodelay(true);
            worker.balance.place(stream, addr, permit)
        }
    };
    match placed {
        Some((stream, addr, permit)) => Accepted::Serve(stream, addr, permit),
        None => Accepted::Elsewhere,
    }
}

// === impl Worker ===

impl Worker {
    fn opened(&self) {
        self.open.count.fetch_add(1, Ordering::AcqRel);
        self.proxy.metrics.connections_open.inc();
        self.worker_open.inc();
    }

    fn closed(&self) {
        self.proxy.metrics.connections_open.dec();
        self.worker_open.dec();
        self.balance.closed();
        if self.open.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.open.zero.notify_waiters();
        }
    }

    /// Serves one connection accepted at `at`: the TLS handshake if the
    /// listener has TLS (bounded by the header timeout, which runs from
    /// the accept), then HTTP.
    async fn serve(&self, stream: TcpStream, addr: SocketAddr, at: Instant) {
        let conn = Accept {
            proxy: &self.proxy,
            opts: &self.opts,
            builders: &self.builders,
            shutdown: &self.shutdown,
            at,
        };
        // Each stage is boxed: the task keeps only the state of the stage
        // it is in (a TLS handshake's and a connection's are kilobytes).
        let Some(acceptor) = &self.acceptor else {
            let speak = self.builders.cleartext();
            let client = ClientInfo::new(addr, false);
            return Box::pin(serve_connection(stream, client, speak, conn)).await;
        };
        let handshake = tokio::select! {
            r = Box::pin(accept_tls(stream, acceptor, self.opts.client_header)) => r,
            _ = self.shutdown.reached(Phase::Close) => Err(HandshakeError::Shutdown),
        };
        match handshake {
            Ok(tls) => {
                let speak = self.builders.negotiated(tls.get_ref().1.alpn_protocol());
                let client = ClientInfo::new(addr, true);
                Box::pin(serve_connection(tls, client, speak, conn)).await;
            }
            Err(e) => handshake_failed(&self.proxy.metrics, addr, &e),
        }
    }
}

/// Ends the drain: once `Drain` is reached, waits `drain` and then moves
/// every worker to `Close`, which drops the connections still open.
pub async fn drain_deadline(shutdown: Shutdown, drain: Duration) {
    shutdown.reached(Phase::Drain).await;
    tokio::select! {
        _ = tokio::time::sleep(drain) => {
            tracing::warn!("drain timeout: closing the connections left");
            shutdown.set(Phase::Close);
        }
        _ = shutdown.reached(Phase::Close) => {}
    }
}

/// Raises this process's open-file limit to its hard limit (as nginx's
/// `worker_rlimit_nofile` does): each client connection holds a descriptor,
/// and the usual soft limit (1,024) is far below `max_connections`. Warns if
/// the limit is still below `max_connections`. Returns the limit in force.
pub fn raise_fd_limit(max_connections: usize) -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill in.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: `raised` is a valid rlimit; only the soft limit moves.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim.rlim_cur = lim.rlim_max;
        }
    }
    let limit: u64 = lim.rlim_cur;
    if limit < max_connections as u64 {
        tracing::warn!(
            open_files = limit,
            max_connections,
            "the open-file limit is below limits.max_connections: connections past it are refused by the system"
        );
    }
    Ok(limit)
}

/// Binds `n` listeners on one address for `n` worker threads, with
/// `SO_REUSEPORT` so the kernel spreads connections over them evenly.
///
/// The address is first bound once without `SO_REUSEPORT`: that fails if
/// anyone else holds it (so a second unstick cannot silently share the port)
/// and resolves port 0 to a real port. Listeners are std sockets, to be
/// registered with each worker's own runtime.
pub fn bind_workers(addr: SocketAddr, n: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let addr = std::net::TcpListener::bind(addr)?.local_addr()?;
    (0..n.max(1))
        .map(|_| {
            let socket = socket2::Socket::new(
                socket2::Domain::for_address(addr),
                socket2::Type::STREAM,
                None,
            )?;
            socket.set_reuse_address(true)?;
            socket.set_reuse_port(true)?;
            socket.set_nonblocking(true)?;
            socket.bind(&addr.into())?;
            socket.listen(4096)?;
            Ok(socket.into())
        })
        .collect()
}

/// Binds a listener on `addr` with `SO_REUSEADDR`, a deep backlog, and
/// `TCP_NODELAY` on accepted sockets.
pub fn bind(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}
