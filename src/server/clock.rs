//! The clock on a client's side of a connection while it owes the server nothing but to read: a write it takes no byte of for the stall timeout fails.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// A client socket whose writes are on a clock: a write the client takes
/// no byte of for `limit` fails with `TimedOut`, so a client that stops
/// reading its response is cut off (with the backend connection it holds).
///
/// The timer is made, and the clock read, only when a write has to wait
/// (the socket's buffer is full): a response that fits costs nothing.
pub struct SendClock<'a, I> {
    io: &'a mut I,
    limit: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
    /// A write is waiting: the timer runs.
    waiting: bool,
}

impl<'a, I> SendClock<'a, I> {
    pub fn new(io: &'a mut I, limit: Duration) -> SendClock<'a, I> {
        SendClock {
            io,
            limit,
            sleep: None,
            waiting: false,
        }
    }

    /// After a write returned `Pending`: an error once it has waited `limit`.
    fn poll_waiting<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let deadline = Instant::now() + self.limit;
        let sleep = self
            .sleep
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if !self.waiting {
            sleep.as_mut().reset(deadline);
            self.waiting = true;
        }
        match sleep.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client took no byte of its response in time",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Passes on a write's result, timing it if it waits.
    fn timed<T>(
        &mut self,
        polled: Poll<io::Result<T>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<T>> {
        match polled {
            Poll::Pending => self.poll_waiting(cx),
            ready => {
                self.waiting = false;
                ready
            }
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for SendClock<'_, I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for SendClock<'_, I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.io).poll_write(cx, buf);
        self.timed(polled, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut *self.io).poll_write_vectored(cx, bufs);
        self.timed(polled, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut *self.io).poll_flush(cx);
        self.timed(polled, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut *self.io).poll_shutdown(cx);
        self.timed(polled, cx)
    }
}
