//! Spreads client connections evenly over the workers: a worker that accepts one while another worker has fewer open hands it over.
//!
//! Each worker accepts on its own `SO_REUSEPORT` listener, and the kernel
//! picks the listener by a hash of the connection's addresses: 64
//! connections from one load generator were split 40/25 in one measured
//! case. A worker with 60% more connections serves each of them later, which
//! is the latency tail. Here, as HAProxy does with its listener queues, an
//! accepted connection goes to the worker with the fewest open connections
//! (the acceptor itself on a tie). Handing one over costs two `epoll_ctl`
//! calls and a wake-up of the other worker, once per connection, not per
//! request.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::OwnedSemaphorePermit;

/// A connection accepted by one worker for another.
pub struct Handed {
    pub stream: std::net::TcpStream,
    pub addr: SocketAddr,
    pub permit: OwnedSemaphorePermit,
}

/// What every worker shares: how many connections each has open, and how to
/// reach each.
struct Workers {
    open: Box<[AtomicUsize]>,
    inboxes: Box<[mpsc::UnboundedSender<Handed>]>,
}

/// One worker's place among the workers.
pub struct Seat {
    pub balance: Balance,
    /// Connections other workers handed to this one.
    pub inbox: mpsc::UnboundedReceiver<Handed>,
}

/// A worker's side of the balance: places connections, counts them closed.
#[derive(Clone)]
pub struct Balance {
    me: usize,
    workers: Arc<Workers>,
}

/// Seats for `n` workers, in worker order.
pub fn seats(n: usize) -> Vec<Seat> {
    let n = n.max(1);
    let (senders, receivers): (Vec<_>, Vec<_>) = (0..n).map(|_| mpsc::unbounded_channel()).unzip();
    let workers = Arc::new(Workers {
        open: (0..n).map(|_| AtomicUsize::new(0)).collect(),
        inboxes: senders.into_boxed_slice(),
    });
    receivers
        .into_iter()
        .enumerate()
        .map(|(me, inbox)| Seat {
            balance: Balance {
                me,
                workers: workers.clone(),
            },
            inbox,
        })
        .collect()
}

// === impl Balance ===

impl Balance {
    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.me
    }

    /// Decides where a connection this worker accepted is served: `Some`
    /// (here, counted as this worker's), or `None` when it went to the
    /// worker with the fewest open connections, counted as that one's.
    pub fn place(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        let open = &self.workers.open;
        let mine = open[self.me].load(Ordering::Relaxed);
        let fewest = (0..open.len())
            .filter(|&w| w != self.me)
            .min_by_key(|&w| open[w].load(Ordering::Relaxed))
            .filter(|&w| open[w].load(Ordering::Relaxed) < mine);
        if let Some(to) = fewest {
            if let Ok(stream) = stream.into_std() {
                open[to].fetch_add(1, Ordering::Relaxed);
                let handed = Handed {
                    stream,
                    addr,
                    permit,
                };
                match self.workers.inboxes[to].send(handed) {
                    Ok(()) => return None,
                    // That worker has stopped (a drain began): serve it here.
                    Err(mpsc::error::SendError(h)) => {
                        open[to].fetch_sub(1, Ordering::Relaxed);
                        let stream = TcpStream::from_std(h.stream).ok()?;
                        return self.keep(stream, h.addr, h.permit);
                    }
                }
            }
            // A stream tokio could not release is closed: the client retries.
            return None;
        }
        self.keep(stream, addr, permit)
    }

    /// Takes a connection another worker handed over (already counted).
    pub fn receive(&self, handed: Handed) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        match TcpStream::from_std(handed.stream) {
            Ok(stream) => Some((stream, handed.addr, handed.permit)),
            Err(_) => {
                self.closed();
                None
            }
        }
    }

    fn keep(
        &self,
        stream: TcpStream,
        addr: SocketAddr,
        permit: OwnedSemaphorePermit,
    ) -> Option<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
        self.workers.open[self.me].fetch_add(1, Ordering::Relaxed);
        Some((stream, addr, permit))
    }

    /// A connection this worker served has closed.
    pub fn closed(&self) {
        self.workers.open[self.me].fetch_sub(1, Ordering::Relaxed);
    }
}
