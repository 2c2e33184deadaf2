//! HTTP/2 control-frame floods against the real binary: PING and SETTINGS floods whose replies are never read are closed within seconds (long before any timeout) while a well-behaved client is served, and a client sending PINGs below the bound is not cut.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use support::h2::{frame, ping, settings, PREFACE};
use support::{metrics, raw, wait, Rig, Serve};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::Instant;

/// Control frames unstick answers within its bound (`server::h2flood`:
/// 1,000 within 10 s).
const BELOW_BOUND: usize = 900;

/// How long a flood may last before it must have been cut: far below the
/// timeouts the rig is given (30 s), so only the flood bound can cut it.
const CUT: Duration = Duration::from_secs(8);

/// The longest a well-behaved request may take while floods run.
const GOOD: Duration = Duration::from_secs(3);

/// `GET /` on `stream` (HPACK: static-table method, scheme, path; a literal
/// `:authority`), ending the stream.
fn get(stream: u32) -> Vec<u8> {
    frame(1, 0x5, stream, &[0x82, 0x86, 0x84, 0x01, 0x01, b't'])
}

/// unstick with one backend and timeouts far above [`CUT`].
fn rig() -> Rig {
    Serve::child_backends(1)
        .env("UNSTICK_TIMEOUTS_CLIENT_HEADER", "30s")
        .env("UNSTICK_TIMEOUTS_CLIENT_IDLE", "30s")
        .env("UNSTICK_TIMEOUTS_CLIENT_STALL", "30s")
        .start()
}

/// Floods `unit` (after the preface) from a client with a small receive
/// buffer that never reads; how long until unstick closed the connection.
async fn flood(addr: SocketAddr, unit: Vec<u8>) -> Duration {
    let sock = TcpSocket::new_v4().unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    let mut s = sock.connect(addr).await.unwrap();
    let burst = unit.repeat(2000);
    let start = Instant::now();
    let mut out = PREFACE.to_vec();
    out.extend(settings());
    loop {
        match tokio::time::timeout_at(start + CUT, s.write_all(&out)).await {
            Ok(Ok(())) => out.clone_from(&burst),
            Ok(Err(_)) => return start.elapsed(),
            Err(_) => panic!("a flood of {unit:?} still open after {CUT:?}"),
        }
    }
}

/// One `GET /` at a time on fresh connections until `stop`; the slowest.
async fn good_client(addr: SocketAddr, stop: tokio::sync::watch::Receiver<bool>) -> Duration {
    let mut slowest = Duration::ZERO;
    let mut served = 0;
    while !*stop.borrow() || served == 0 {
        let t = Instant::now();
        let line = raw::status_line(addr, raw::get("/").as_bytes()).await;
        assert!(line.starts_with("HTTP/1.1 200"), "{line:?}");
        slowest = slowest.max(t.elapsed());
        served += 1;
    }
    slowest
}

#[tokio::test]
async fn ping_and_settings_floods_are_cut_within_seconds_while_others_are_served() {
    let rig = rig();
    let addr = rig.lb.addr;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let good = tokio::spawn(good_client(addr, stopped));
    let mut floods = Vec::new();
    for unit in [ping(), settings(), [ping(), settings()].concat()] {
        for _ in 0..4 {
            floods.push(tokio::spawn(flood(addr, unit.clone())));
        }
    }
    for f in floods {
        let took = f.await.unwrap();
        assert!(took < CUT, "cut after {took:?}");
    }
    stop.send(true).unwrap();
    let slowest = good.await.unwrap();
    assert!(slowest < GOOD, "a well-behaved request took {slowest:?}");
    let admin = rig.lb.admin();
    wait::until("12 floods counted", wait::PATIENCE, async || {
        let m = metrics::scrape(admin).await;
        m.sum("unstick_client_errors_total", &[("kind", "flood")]) == 12.0
    })
    .await;
}

/// A raw HTTP/2 client that reads what it asked for.
struct H2 {
    s: TcpStream,
    buf: Vec<u8>,
}

impl H2 {
    async fn open(addr: SocketAddr) -> H2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&[PREFACE, &settings()].concat()).await.unwrap();
        H2 { s, buf: Vec::new() }
    }

    /// The next frame: kind, flags, stream, payload (None: closed, or
    /// nothing for 10 s).
    async fn frame(&mut self) -> Option<(u8, u8, u32, Vec<u8>)> {
        let mut chunk = [0u8; 16384];
        loop {
            if self.buf.len() >= 9 {
                let len = u32::from_be_bytes([0, self.buf[0], self.buf[1], self.buf[2]]) as usize;
                if self.buf.len() >= 9 + len {
                    let head: Vec<u8> = self.buf.drain(..9 + len).collect();
                    let stream = u32::from_be_bytes(head[5..9].try_into().unwrap()) & !(1 << 31);
                    return Some((head[3], head[4], stream, head[9..].to_vec()));
                }
            }
            let read = self.s.read(&mut chunk);
            match tokio::time::timeout(Duration::from_secs(10), read).await {
                Ok(Ok(n)) if n > 0 => self.buf.extend_from_slice(&chunk[..n]),
                _ => return None,
            }
        }
    }

    /// Reads until `pongs` PING acknowledgements and the end of `stream`'s
    /// response came (acknowledging the server's SETTINGS); the response's
    /// first header block byte.
    async fn answers(&mut self, mut pongs: usize, stream: u32) -> u8 {
        let mut status = None;
        let mut ended = false;
        while pongs > 0 || !ended {
            let Some((kind, flags, on, payload)) = self.frame().await else {
                panic!("closed with {pongs} PING acks and the response (ended: {ended}) to come");
            };
            match (kind, flags & 1) {
                (6, 1) => pongs -= 1,
                (4, 0) => self.s.write_all(&frame(4, 1, 0, &[])).await.unwrap(),
                (1, end) if on == stream => {
                    status.get_or_insert(payload[0]);
                    ended |= end == 1;
                }
                (0, 1) if on == stream => ended = true,
                _ => {}
            }
        }
        status.expect("a response head")
    }
}

#[tokio::test]
async fn pings_below_the_bound_are_answered_and_the_connection_serves() {
    let rig = rig();
    let mut c = H2::open(rig.lb.addr).await;
    // A burst just below the bound, then PINGs beside requests: each
    // request allows one more.
    c.s.write_all(&[ping().repeat(BELOW_BOUND), get(1)].concat())
        .await
        .unwrap();
    assert_eq!(c.answers(BELOW_BOUND, 1).await, 0x88, ":status 200");
    for i in 1..=200 {
        let stream = 2 * i + 1;
        c.s.write_all(&[ping(), get(stream)].concat())
            .await
            .unwrap();
        assert_eq!(c.answers(1, stream).await, 0x88, ":status 200");
    }
    let m = metrics::scrape(rig.lb.admin()).await;
    assert_eq!(
        m.sum("unstick_client_errors_total", &[("kind", "flood")]),
        0.0
    );
}
