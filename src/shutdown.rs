//! The server's phase (running, draining, closing), futures that wait for one, and the hold an upgraded tunnel keeps on its connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};

use atomic_waker::AtomicWaker;
use tokio::sync::watch;

/// Where the server is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Phase {
    Running = 0,
    /// Stop accepting; finish requests in flight.
    Drain,
    /// Drop every connection now.
    Close,
}

/// Tells every part of the server which [`Phase`] it is in.
#[derive(Clone)]
pub struct Shutdown {
    inner: Arc<Inner>,
}

struct Inner {
    tx: watch::Sender<Phase>,
    /// The phase as a plain atomic, for `phase()` on the request path: a
    /// load that never writes, where the watch's `borrow` takes a read lock
    /// whose counter every worker thread would write (a shared cache line
    /// per request).
    now: AtomicU8,
    /// The wakers of every pending [`Reached`], woken at each change.
    waiters: Mutex<Vec<Weak<AtomicWaker>>>,
}

// === impl Shutdown ===

impl Shutdown {
    pub fn new() -> Shutdown {
        Shutdown {
            inner: Arc::new(Inner {
                tx: watch::channel(Phase::Running).0,
                now: AtomicU8::new(Phase::Running as u8),
                waiters: Mutex::new(Vec::new()),
            }),
        }
    }

    pub fn set(&self, phase: Phase) {
        self.inner.now.store(phase as u8, Ordering::SeqCst);
        self.inner.tx.send_replace(phase);
        // Under the lock, so a waiter that registers after this sees the
        // new phase (see `Reached::poll`).
        let waiters = self.inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
        for waker in waiters.iter().filter_map(Weak::upgrade) {
            waker.wake();
        }
    }

    pub fn phase(&self) -> Phase {
        match self.inner.now.load(Ordering::SeqCst) {
            0 => Phase::Running,
            1 => Phase::Drain,
            _ => Phase::Close,
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.inner.tx.subscribe()
    }

    /// Resolves once the phase is at least `phase`.
    pub fn reached(&self, phase: Phase) -> Reached {
        Reached {
            shutdown: self.clone(),
            phase,
            waker: None,
        }
    }
}

impl Default for Shutdown {
    fn default() -> Self {
        Shutdown::new()
    }
}

/// A future that resolves once the server's phase is at least `phase`.
///
/// Why not a `watch` receiver's `wait_for`: every connection task polls
/// this on every wake-up, two or three times per request, and each poll of
/// a pending watch future takes the lock of the watch's waiter list, which
/// every connection on every worker shares (about 700 instructions per
/// request and a cache line passed between the cores, callgrind and perf).
/// Here a poll is an atomic load and an [`AtomicWaker`] of this future's
/// own; the shared list is locked once per future, to register it.
pub struct Reached {
    shutdown: Shutdown,
    phase: Phase,
    /// Registered in `Inner::waiters` at the first poll that waits.
    waker: Option<Arc<AtomicWaker>>,
}

impl Reached {
    fn done(&self) -> bool {
        self.shutdown.phase() as u8 >= self.phase as u8
    }
}

impl Future for Reached {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        if this.done() {
            return Poll::Ready(());
        }
        let waker = this.waker.get_or_insert_with(|| {
            let waker = Arc::new(AtomicWaker::new());
            let inner = &this.shutdown.inner;
            let mut waiters = inner.waiters.lock().unwrap_or_else(|e| e.into_inner());
            // Forget the waiters that are gone, once the list has doubled.
            if waiters.len() == waiters.capacity() {
                waiters.retain(|w| w.strong_count() > 0);
            }
            waiters.push(Arc::downgrade(&waker));
            waker
        });
        waker.register(cx.waker());
        // Checked again after registering: a `set` that stored its phase
        // before the registration is seen here; one after it wakes this
        // waker. (A `set` that locked the list before this future was in
        // it stored its phase before the lock this future then took.)
        if this.done() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::time::Duration;

    use super::{Phase, Shutdown};

    #[tokio::test]
    async fn reached_waits_through_an_earlier_phase() {
        let shutdown = Shutdown::new();
        let close = tokio::spawn(shutdown.reached(Phase::Close));
        let drain = tokio::spawn(shutdown.reached(Phase::Drain));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!drain.is_finished() && !close.is_finished());

        // Drain wakes the `Close` waiter, which must wait on.
        shutdown.set(Phase::Drain);
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .expect("drain reached")
            .unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!close.is_finished());

        shutdown.set(Phase::Close);
        tokio::time::timeout(Duration::from_secs(5), close)
            .await
            .expect("close reached")
            .unwrap();
        // A phase already reached resolves at once.
        shutdown.reached(Phase::Drain).await;
    }

    /// Waiters registering on other threads while the phase changes are
    /// all woken: none misses the change.
    #[test]
    fn no_waiter_misses_a_change() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            for _ in 0..200 {
                let shutdown = Shutdown::new();
                let waiters: Vec<_> = (0..8)
                    .map(|_| tokio::spawn(shutdown.reached(Phase::Close)))
                    .collect();
                tokio::task::yield_now().await;
                shutdown.set(Phase::Drain);
                shutdown.set(Phase::Close);
                for w in waiters {
                    tokio::time::timeout(Duration::from_secs(5), w)
                        .await
                        .expect("woken")
                        .unwrap();
                }
            }
        });
    }

    /// Dropped waiters leave the list, so it does not grow with every
    /// connection a long-running server has served.
    #[test]
    fn the_waiter_list_stays_bounded() {
        let shutdown = Shutdown::new();
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        for _ in 0..10_000 {
            let mut r = std::pin::pin!(shutdown.reached(Phase::Drain));
            assert!(r.as_mut().poll(&mut cx).is_pending());
        }
        let len = shutdown.inner.waiters.lock().unwrap().len();
        assert!(len <= 64, "{len} waiters listed");
    }
}

/// Put on an upgrade request by the server: the tunnel that the upgrade
/// becomes holds it, so the client connection counts as open until the
/// tunnel closes, and the tunnel learns when shutdown reaches `Close`.
#[derive(Clone)]
pub struct TunnelHold {
    _open: tokio::sync::mpsc::Sender<()>,
    pub shutdown: Shutdown,
}

impl TunnelHold {
    /// A hold that keeps `open` (the connection's count of open tunnels) alive.
    pub fn new(open: tokio::sync::mpsc::Sender<()>, shutdown: Shutdown) -> TunnelHold {
        TunnelHold {
            _open: open,
            shutdown,
        }
    }
}
