//! `Idempotency-Key` for the demo app: a keyed change is stored with its response, and a repeat gets that response.
//!
//! A client that may send a `POST` twice (a retry after a timeout, a
//! balancer replaying it on another instance when the first one died) sends
//! the same `Idempotency-Key` both times. The app stores the key, with the
//! request's fingerprint and the response, in the same transaction as the
//! change the request makes; a repeat of the key then gets the stored
//! response (with `Idempotent-Replayed: true`) and changes nothing. So a
//! change is made at most once and every copy of the request gets the same
//! answer, whichever instance it reaches.
//!
//! - Keys are scoped to the session that sent them (and, for a login, to no
//!   session), and kept for a TTL (24 h by default, like the store's sessions).
//! - The same key with another method, path or body is a 422.
//! - Only responses to changes that happened are stored: a 401, 409 or 503
//!   changed nothing, so a repeat is simply tried again.

use std::time::Duration;

use http::{HeaderMap, Method};
use serde::{Deserialize, Serialize};

/// The request header.
pub const HEADER: &str = "idempotency-key";
/// The response header on a replayed response.
pub const REPLAYED: &str = "idempotent-replayed";
/// Longest key, in characters.
pub const MAX_KEY_CHARS: usize = 255;
/// How long a key is kept by default.
pub const DEFAULT_TTL: Duration = Duration::from_secs(24 * 3600);

/// What a keyed request is stored under and checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keyed {
    /// The record's id: a hash of the session and the key.
    pub id: String,
    /// A hash of the method, path, content type and body.
    pub fingerprint: String,
    /// How long the record is kept.
    pub ttl: Duration,
}

/// A request's `Idempotency-Key` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyHeader {
    None,
    Key(String),
    /// Present but unusable; why.
    Invalid(&'static str),
}

/// Reads the header: one value, 1 to [`MAX_KEY_CHARS`] visible ASCII
/// characters, optionally in double quotes (a structured-field string, as
/// the IETF draft writes it).
pub fn key_header(headers: &HeaderMap) -> KeyHeader {
    let mut values = headers.get_all(HEADER).iter();
    let Some(value) = values.next() else {
        return KeyHeader::None;
    };
    if values.next().is_some() {
        return KeyHeader::Invalid("more than one Idempotency-Key header");
    }
    let Ok(text) = value.to_str() else {
        return KeyHeader::Invalid("the Idempotency-Key is not ASCII");
    };
    let text = text.trim();
    let text = match text.strip_prefix('"').and_then(|t| t.strip_suffix('"')) {
        Some(inner) => inner,
        None => text,
    };
    if text.is_empty() || text.len() > MAX_KEY_CHARS {
        return KeyHeader::Invalid("the Idempotency-Key must be 1 to 255 characters");
    }
    if !text.bytes().all(|b| b.is_ascii_graphic() && b != b'"') {
        return KeyHeader::Invalid("the Idempotency-Key must be visible ASCII characters");
    }
    KeyHeader::Key(text.to_owned())
}

/// The record for `key` sent by `session` (`None` before login) with this
/// request.
pub fn keyed(
    key: &str,
    session: Option<&str>,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    body: &[u8],
    ttl: Duration,
) -> Keyed {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    Keyed {
        id: hash(&[
            b"unstick-demo idempotency",
            session.unwrap_or_default().as_bytes(),
            key.as_bytes(),
        ]),
        fingerprint: hash(&[
            method.as_str().as_bytes(),
            path.as_bytes(),
            content_type,
            body,
        ]),
        ttl,
    }
}

/// SHA-256 over length-prefixed parts, in hex.
fn hash(parts: &[&[u8]]) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for p in parts {
        ctx.update(&(p.len() as u64).to_be_bytes());
        ctx.update(p);
    }
    let mut out = String::with_capacity(64);
    for b in ctx.finish().as_ref() {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A response as the store keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredReply {
    pub status: u16,
    /// Header names and values, in order.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

/// The response head alone, as stored beside the body.
#[derive(Serialize, Deserialize)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl StoredReply {
    /// The status and headers as JSON (stored apart from the body).
    pub fn head_json(&self) -> String {
        serde_json::to_string(&Head {
            status: self.status,
            headers: self.headers.clone(),
        })
        .expect("a head serializes")
    }

    /// From a stored head and body; `None` if the head is not one we wrote.
    pub fn from_parts(head: &str, body: String) -> Option<StoredReply> {
        let head: Head = serde_json::from_str(head).ok()?;
        Some(StoredReply {
            status: head.status,
            headers: head.headers,
            body,
        })
    }
}

/// The response to a change, written before the change is made: its body
/// may end with the number the change produced (the cart's size, the
/// counter), which only the store knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The response, its body up to the number.
    pub reply: StoredReply,
    /// With a number: the text after it.
    pub after_count: Option<String>,
}

impl Draft {
    /// A response that does not depend on the change's number.
    pub fn fixed(reply: StoredReply) -> Draft {
        Draft {
            reply,
            after_count: None,
        }
    }

    /// The response once the change produced `n`.
    pub fn finish(&self, n: i64) -> StoredReply {
        let mut reply = self.reply.clone();
        if let Some(after) = &self.after_count {
            reply.body.push_str(&n.to_string());
            reply.body.push_str(after);
        }
        reply
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(HEADER, HeaderValue::from_str(v).unwrap());
        }
        h
    }

    #[test]
    fn keys_are_read_strictly() {
        assert_eq!(key_header(&headers(&[])), KeyHeader::None);
        assert_eq!(
            key_header(&headers(&["abc-123"])),
            KeyHeader::Key("abc-123".into())
        );
        assert_eq!(
            key_header(&headers(&["\"8e03978e-40d5\""])),
            KeyHeader::Key("8e03978e-40d5".into())
        );
        for bad in [&["a", "b"][..], &[""], &["\"\""], &["a b"], &["a\"b"]] {
            assert!(
                matches!(key_header(&headers(bad)), KeyHeader::Invalid(_)),
                "{bad:?}"
            );
        }
        let long = "k".repeat(MAX_KEY_CHARS + 1);
        assert!(matches!(
            key_header(&headers(&[&long])),
            KeyHeader::Invalid(_)
        ));
    }

    #[test]
    fn records_are_scoped_to_the_session_and_fingerprint_the_request() {
        let h = HeaderMap::new();
        let ttl = DEFAULT_TTL;
        let a = keyed("k", Some("s1"), &Method::POST, "/cart", &h, b"item=a", ttl);
        let b = keyed("k", Some("s2"), &Method::POST, "/cart", &h, b"item=a", ttl);
        let c = keyed("k", Some("s1"), &Method::POST, "/cart", &h, b"item=b", ttl);
        assert_ne!(a.id, b.id);
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_eq!(a.id, c.id);
        assert_ne!(a.fingerprint, c.fingerprint);
        // Parts cannot run into each other.
        let d = keyed("k", Some("s1"), &Method::POST, "/cartitem=a", &h, b"", ttl);
        assert_ne!(a.fingerprint, d.fingerprint);
        assert_eq!(a.id.len(), 64);
    }

    #[test]
    fn drafts_finish_with_the_number() {
        let reply = StoredReply {
            status: 200,
            headers: vec![("content-type".into(), "text/plain".into())],
            body: "added tea; ".into(),
        };
        let d = Draft {
            reply: reply.clone(),
            after_count: Some(" in the cart\n".into()),
        };
        assert_eq!(d.finish(3).body, "added tea; 3 in the cart\n");
        assert_eq!(Draft::fixed(reply.clone()).finish(3), reply);
        let back = StoredReply::from_parts(&reply.head_json(), reply.body.clone());
        assert_eq!(back, Some(reply));
        assert_eq!(StoredReply::from_parts("nope", String::new()), None);
    }
}
