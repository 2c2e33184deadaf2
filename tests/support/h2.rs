//! Raw HTTP/2 bytes for tests that write frames themselves: the client preface and frames by type.

/// The HTTP/2 client connection preface.
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// An HTTP/2 frame header and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A PING frame (8 bytes of 7).
pub fn ping() -> Vec<u8> {
    frame(6, 0, 0, &[7; 8])
}

/// An empty SETTINGS frame.
pub fn settings() -> Vec<u8> {
    frame(4, 0, 0, &[])
}
