//! Many client connections at once: the open-file limit raised in-process, source addresses spread so no address runs out of ports, exchanges that report rather than panic.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Connections opened from one source address before the next is used:
/// well under the 28,000 ephemeral ports each address has, so parallel
/// tests on 127.0.0.1 keep theirs.
const PER_SOURCE: usize = 500;

/// Raises this process's open-file soft limit to its hard limit (child
/// processes started afterwards inherit it); panics if that is below
/// `need`, naming both.
pub fn raise_fd_limit(need: u64) -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `lim` is a valid rlimit for the call to fill in.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    assert!(
        lim.rlim_max >= need,
        "this test needs {need} open files; the hard limit (ulimit -Hn) is {}",
        lim.rlim_max
    );
    lim.rlim_cur = lim.rlim_max;
    // SAFETY: as above; only the soft limit moves, up to the hard one.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    lim.rlim_cur
}

/// Connection number `i` to `addr` (on 127.0.0.1), from source address
/// 127.0.0.2 and up, [`PER_SOURCE`] connections each.
pub async fn connect(i: usize, addr: SocketAddr) -> io::Result<TcpStream> {
    let n = 2 + (i / PER_SOURCE) % 250;
    let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, n as u8));
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(source, 0))?;
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// Closes `stream` with a reset: no TIME_WAIT left holding its port.
pub fn reset(stream: TcpStream) {
    let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
}

/// Sends `request` on `stream` and reads one response framed by
/// Content-Length, each read bounded by `limit`; its status code, or
/// what went wrong. The buffer is freed on return, so thousands of held
/// connections cost the test little memory.
pub async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    limit: Duration,
) -> Result<u16, String> {
    stream
        .write_all(request)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut got = Vec::with_capacity(1024);
    let (head_len, status, body_len) = loop {
        if let Some(head) = parse_head(&got)? {
            break head;
        }
        read_some(stream, &mut got, limit).await?;
    };
    while got.len() < head_len + body_len {
        read_some(stream, &mut got, limit).await?;
    }
    if got.len() > head_len + body_len {
        return Err(format!(
            "{} bytes past the response",
            got.len() - head_len - body_len
        ));
    }
    Ok(status)
}

async fn read_some(
    stream: &mut TcpStream,
    got: &mut Vec<u8>,
    limit: Duration,
) -> Result<(), String> {
    let mut chunk = [0u8; 2048];
    match tokio::time::timeout(limit, stream.read(&mut chunk)).await {
        Err(_) => Err(format!("no bytes for {limit:?}")),
        Ok(Err(e)) => Err(format!("read: {e}")),
        Ok(Ok(0)) => Err(format!("closed after {} bytes", got.len())),
        Ok(Ok(n)) => {
            got.extend_from_slice(&chunk[..n]);
            Ok(())
        }
    }
}

/// The head's length, status and Content-Length, once the head is whole.
fn parse_head(got: &[u8]) -> Result<Option<(usize, u16, usize)>, String> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    let head_len = match response.parse(got) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => {
            return Err(format!(
                "a bad response head ({e}): {:?}",
                String::from_utf8_lossy(got)
            ))
        }
    };
    let length = response
        .headers
        .iter()
        .find(|f| f.name.eq_ignore_ascii_case("content-length"))
        .and_then(|f| std::str::from_utf8(f.value).ok()?.trim().parse().ok())
        .ok_or("a response without Content-Length")?;
    Ok(Some((head_len, response.code.unwrap_or(0), length)))
}
