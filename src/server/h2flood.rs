//! HTTP/2 frames read from a client, counted for floods of control frames that cost the server work but carry no request (PING, SETTINGS, PRIORITY, empty DATA).
//!
//! The `h2` crate answers every PING and SETTINGS with an acknowledgement,
//! and only stops reading once it cannot write them: a client that floods
//! them and never reads the replies makes the server write until the
//! socket's send buffer (megabytes, autotuned) is full. [`ControlFrames`]
//! reads the frame headers (9 bytes each, tracked across reads) of what the
//! client sends and reports a flood when more than [`LIMIT`] such frames,
//! beyond one per request, come within [`WINDOW`]; the connection is then
//! closed. Well-behaved clients send a SETTINGS at the start, a keep-alive or
//! round-trip PING now and then, a few PRIORITY frames: far below it.

use std::time::Duration;

use tokio::time::Instant;

/// Control frames (beyond one per request) a connection may send within
/// [`WINDOW`].
pub const LIMIT: u32 = 1000;

/// The span [`LIMIT`] is counted over.
pub const WINDOW: Duration = Duration::from_secs(10);

/// What a client sends first on an HTTP/2 connection (RFC 9113 3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The length of a frame header (RFC 9113 4.1).
const HEAD: usize = 9;

const DATA: u8 = 0;
const HEADERS: u8 = 1;
const PRIORITY: u8 = 2;
const SETTINGS: u8 = 4;
const PING: u8 = 6;
/// ACK on SETTINGS and PING, END_STREAM on DATA.
const FLAG_ACK_OR_END: u8 = 0x1;

/// Where in the client's byte stream the reader is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Matching the preface: this many of its bytes matched so far.
    Preface(u8),
    /// In frames.
    Frames,
    /// Not HTTP/2 (or a flood was reported): nothing more is read.
    Off,
}

/// The frame headers of a client's HTTP/2 connection, read as the bytes
/// come, and the count of control frames in the current window.
pub struct ControlFrames {
    at: At,
    /// Payload bytes of the current frame still to pass over.
    skip: u32,
    /// A frame header split across reads: its bytes so far.
    head: [u8; HEAD],
    have: u8,
    /// Control frames since `since`, less one per request.
    count: u32,
    since: Instant,
}

impl ControlFrames {
    /// Frames of a connection accepted at `start` that may speak HTTP/2
    /// (`h2`: else nothing is read).
    pub fn new(start: Instant, h2: bool) -> ControlFrames {
        ControlFrames {
            at: if h2 { At::Preface(0) } else { At::Off },
            skip: 0,
            head: [0; HEAD],
            have: 0,
            count: 0,
            since: start,
        }
    }

    /// Reads the next bytes the client sent; true once they make a flood
    /// (then it reads no more).
    pub fn read(&mut self, got: &[u8]) -> bool {
        match self.at {
            At::Frames => self.frames(got),
            At::Off => false,
            At::Preface(n) => {
                let n = n as usize;
                let take = (PREFACE.len() - n).min(got.len());
                if got[..take] != PREFACE[n..n + take] {
                    self.at = At::Off;
                    return false;
                }
                if n + take < PREFACE.len() {
                    self.at = At::Preface((n + take) as u8);
                    return false;
                }
                self.at = At::Frames;
                self.frames(&got[take..])
            }
        }
    }

    /// Walks the frame headers in `got`, passing over payloads.
    fn frames(&mut self, mut got: &[u8]) -> bool {
        loop {
            if self.skip > 0 {
                let n = (self.skip as usize).min(got.len());
                self.skip -= n as u32;
                got = &got[n..];
            }
            if got.is_empty() {
                return false;
            }
            let head = if self.have == 0 && got.len() >= HEAD {
                let (head, rest) = got.split_at(HEAD);
                got = rest;
                head.try_into().expect("a 9-byte header")
            } else {
                let have = self.have as usize;
                let n = (HEAD - have).min(got.len());
                self.head[have..have + n].copy_from_slice(&got[..n]);
                got = &got[n..];
                if have + n < HEAD {
                    self.have = (have + n) as u8;
                    return false;
                }
                self.have = 0;
                self.head
            };
            if self.frame(head) {
                self.at = At::Off;
                return true;
            }
        }
    }

    /// Counts one frame by its header; true if it makes a flood.
    fn frame(&mut self, head: [u8; HEAD]) -> bool {
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
        let (kind, flags) = (head[3], head[4]);
        self.skip = len;
        let control = match kind {
            HEADERS => {
                self.count = self.count.saturating_sub(1);
                return false;
            }
            PING | SETTINGS => flags & FLAG_ACK_OR_END == 0,
            PRIORITY => true,
            DATA => len == 0 && flags & FLAG_ACK_OR_END == 0,
            _ => false,
        };
        if !control {
            return false;
        }
        self.count += 1;
        if self.count <= LIMIT {
            return false;
        }
        let now = Instant::now();
        if now.duration_since(self.since) < WINDOW {
            return true;
        }
        self.since = now;
        self.count = 1;
        false
    }
}

#[cfg(test)]
mod tests;
