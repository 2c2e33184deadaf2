//! Fake backends for the tests: in-process ([`FakeBackend`]) or as processes ([`ChildBackend`]), named `b0`, `b1`, ...

use std::net::SocketAddr;
use std::time::Duration;

use unstick::testkit::process::ChildBackend;
use unstick::testkit::{BackendOptions, FakeBackend};

use super::BIN;

/// An in-process fake backend named `id`.
pub async fn fake(id: &str) -> FakeBackend {
    FakeBackend::start(BackendOptions {
        id: id.into(),
        ..Default::default()
    })
    .await
}

/// `n` in-process fake backends named `b0`, `b1`, ...
pub async fn fakes(n: usize) -> Vec<FakeBackend> {
    fakes_with(n, BackendOptions::default()).await
}

/// `n` in-process fake backends named `b0`, `b1`, ..., each adding `delay`
/// to every answer.
pub async fn slow_fakes(n: usize, delay: Duration) -> Vec<FakeBackend> {
    fakes_with(
        n,
        BackendOptions {
            delay,
            ..Default::default()
        },
    )
    .await
}

/// `n` in-process fake backends named `PREFIX0`, `PREFIX1`, ...
pub async fn fakes_named(prefix: &str, n: usize) -> Vec<FakeBackend> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(fake(&format!("{prefix}{i}")).await);
    }
    out
}

/// `n` in-process fake backends named `b0`, `b1`, ... with `opts` (its `id`
/// is replaced).
pub async fn fakes_with(n: usize, opts: BackendOptions) -> Vec<FakeBackend> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let opts = BackendOptions {
            id: format!("b{i}"),
            ..opts.clone()
        };
        out.push(FakeBackend::start(opts).await);
    }
    out
}

/// A backend process (`unstick testkit-backend`) named `id`, with extra
/// flags such as `["--drain", "300ms"]`; SIGKILLed when dropped.
pub fn child(id: &str, extra: &[&str]) -> ChildBackend {
    ChildBackend::spawn(BIN, id, extra)
}

/// `n` backend processes named `b0`, `b1`, ..., each with `extra` flags.
pub fn children(n: usize, extra: &[&str]) -> Vec<ChildBackend> {
    (0..n).map(|i| child(&format!("b{i}"), extra)).collect()
}

/// Anything with a listening address: the backends above, a socket address.
pub trait Addressed {
    fn addr(&self) -> SocketAddr;
}

impl Addressed for FakeBackend {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Addressed for ChildBackend {
    fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Addressed for SocketAddr {
    fn addr(&self) -> SocketAddr {
        *self
    }
}

/// The addresses of `backends`, in order.
pub fn addrs<B: Addressed>(backends: &[B]) -> Vec<SocketAddr> {
    backends.iter().map(Addressed::addr).collect()
}
