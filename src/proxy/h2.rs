//! HTTP/2 requests without a body forwarded to plain HTTP/1.1 backends over the fast path's connections, not hyper's client.
//!
//! Why: through hyper's client, each such request crossed a channel to the
//! backend connection's task, ran hyper's HTTP/1 dispatcher and head writer
//! and parser there, and came back through a oneshot: about 15,000
//! instructions of the 66,000 an h2c request cost (callgrind,
//! `benches/profile.sh --h2 32 --conns 16` at `5df4f72`), more than the
//! whole HTTP/1.1 fast path spends on a request. Here the stream's own task writes the request head on a
//! connection from the fast path's pool, reads the response head in place,
//! and answers with the body read from that connection ([`RawBody`]): a
//! small body that came with its head is sent whole, and the connection is
//! back in the pool before hyper has written anything.
//!
//! Most request heads need only fields dropped and unstick's added: those
//! are written for the backend from the client's fields
//! (`request_head::write_h2`), the rest rewritten over their `HeaderMap`
//! by `Proxy::begin`, as on the hyper path. Likewise a response head whose
//! fields need only keeping or dropping is built from the kept fields
//! alone; the rest are scrubbed by `Proxy::scrub_response`. Retries and
//! failures are `Proxy::forward_h1`'s and `Proxy::fail`'s. What stays on
//! hyper's client: requests with a body, clients that take trailers (gRPC,
//! `TE: trailers`), backends other than plain HTTP/1.1, and everything
//! when `http1_fast_path` is off.

use std::sync::Arc;

use bytes::Bytes;
use http::{header, request, response, HeaderName, HeaderValue, Method, Response, Version};
use tokio::time::Instant;

use super::body::Completion;
use super::error::Kind;
use super::h1::{Answered, LazyTimer, Outgoing};
use super::headers::{self, FieldRule, X_REQUEST_ID};
use super::request_head::{self, Forwarding, Scan};
use super::target::valid_host;
use super::{never_indexed, retry, ClientInfo, Proxy, ReplyTo, ResponseBody, Settings};
use crate::http1::{self, Framing};
use crate::upstream::raw::{RawBody, RawConn};
use crate::upstream::Backend;

// === impl Proxy ===

impl Proxy {
    /// True if this request (begun, its body empty or not) goes to the
    /// backends over the fast path's connections.
    pub(super) fn takes_raw_path(&self, s: &Settings, reply: &ReplyTo, body_empty: bool) -> bool {
        s.raw_connections
            && reply.version == Version::HTTP_2
            && body_empty
            && !reply.trailers
            && self.upstreams.load().all_raw
    }

    /// True if this request (an HTTP/2 one without a body) goes to the
    /// backends over the fast path's connections, perhaps with its head
    /// written from the client's fields as they are (see [`in_place`]).
    pub(super) fn takes_raw_path_in_place(
        &self,
        s: &Settings,
        parts: &request::Parts,
        body_empty: bool,
    ) -> bool {
        s.raw_connections
            && parts.version == Version::HTTP_2
            && body_empty
            && self.upstreams.load().all_raw
    }

    /// Sends a request [`in_place`] says needs no rewriting over its
    /// `HeaderMap` (`scan`: of its fields): its head is written for the
    /// backend from the client's fields (`request_head::write_h2`), as the
    /// HTTP/1 fast path writes a head from where it was parsed, and it is
    /// sent and answered as by [`Proxy::serve_raw`].
    pub(super) async fn serve_raw_in_place(
        self: &Arc<Self>,
        (parts, scan): (request::Parts, Scan),
        client: &ClientInfo,
        settings: &Settings,
        start: Instant,
    ) -> Response<ResponseBody> {
        let path = parts.uri.path_and_query().map_or("/", |pq| pq.as_str());
        let authority = parts.uri.authority().map_or("", |a| a.as_str());
        let line = (&parts.method, parts.version, path.as_bytes());
        let found = scan.found_h2(&parts.headers);
        let (reply, log) = self.begin_in_place(line, found, scan.grpc, client);
        let mut done = Completion::new(self.clone(), start, 0);
        done.log = log;
        let ours = Forwarding {
            client_ip: client.ip.as_bytes(),
            https: client.https,
            request_id: reply.request_id.as_bytes(),
            body_len: defines_content(&parts.method).then_some(0),
        };
        let mut head = Vec::new();
        let target = (path.as_bytes(), authority.as_bytes());
        request_head::write_h2(&mut head, &parts, target, &scan, &ours);
        let out = Outgoing {
            method: &parts.method,
            replay_allowed: settings.retries.enabled
                && retry::replay_allowed_with(&parts.method, scan.idempotency_key),
            unwritten: None,
            large_body: None,
        };
        let mut timer = LazyTimer::new();
        let forwarded = (self.forward_h1(out, settings, &mut done, &mut head, &mut timer)).await;
        match forwarded {
            Ok(answered) => self.respond_raw(answered, done, reply, settings),
            Err(failed) => self.fail(failed, done, reply),
        }
    }

    /// Sends a begun request (`parts`, rewritten for the backend) with an
    /// empty body, retrying as on the hyper path, and answers it.
    pub(super) async fn serve_raw(
        &self,
        mut parts: request::Parts,
        settings: &Settings,
        mut done: Completion,
        reply: ReplyTo,
    ) -> Response<ResponseBody> {
        // Empty content is announced where the method defines content
        // (POST, PUT, PATCH), as hyper's client does.
        let empty = defines_content(&parts.method).then(Bytes::new);
        let method = parts.method.clone();
        let out = Outgoing {
            method: &method,
            replay_allowed: settings.retries.enabled
                && retry::replay_allowed(&parts.method, &parts.headers),
            unwritten: Some((&mut parts, empty.as_ref())),
            large_body: None,
        };
        let mut head = Vec::new();
        let mut timer = LazyTimer::new();
        let forwarded = (self.forward_h1(out, settings, &mut done, &mut head, &mut timer)).await;
        match forwarded {
            Ok(answered) => self.respond_raw(answered, done, reply, settings),
            Err(failed) => self.fail(failed, done, reply),
        }
    }

    /// The client's response from a backend's response head, scrubbed as
    /// on the hyper path; the body is sent whole if it came with the head
    /// (the connection then goes back to the pool at once), else streamed.
    fn respond_raw(
        &self,
        answered: Answered,
        mut done: Completion,
        reply: ReplyTo,
        settings: &Settings,
    ) -> Response<ResponseBody> {
        let Answered {
            head,
            framing,
            mut conn,
            reusable,
            in_flight,
        } = answered;
        let backend = in_flight.backend().clone();
        let scrubbed = self.raw_parts(&mut conn, &head, framing, &reply, settings, &backend);
        let mut parts = match scrubbed {
            Ok(parts) => parts,
            Err(kind) => {
                // The backend's connection and in-flight count go with it.
                drop((conn, in_flight));
                let failed = self.bad_response(kind, backend);
                return self.fail(failed, done, reply);
            }
        };
        // HTTP/2 frames the body itself: a length is kept only where it
        // was the framing (or, without a body, the representation's).
        if !matches!(framing, Framing::Length(_) | Framing::None) {
            parts.headers.remove(header::CONTENT_LENGTH);
        }
        parts.version = Version::HTTP_2;
        done.status = parts.status.as_u16();
        let mut body = RawBody::new(conn, framing, reusable, settings.timeouts.upstream_stall);
        let body = match body.take_whole() {
            Ok(Some(whole)) => {
                if let Some(conn) = body.reusable() {
                    backend.pool.checkin_raw(conn);
                }
                done.in_flight = Some(in_flight);
                let whole = match whole.is_empty() {
                    true => ResponseBody::empty(),
                    false => ResponseBody::full(whole),
                };
                whole.with_completion(done)
            }
            Ok(None) => {
                done.in_flight = Some(in_flight);
                ResponseBody::raw(body, done)
            }
            Err(e) => {
                drop((body, in_flight));
                let kind = Kind::Reset(format!("invalid response from the backend: {e}"));
                let failed = self.bad_response(kind, backend);
                return self.fail(failed, done, reply);
            }
        };
        Response::from_parts(parts, body)
    }

    /// The client's response head from the backend's (taken off `conn`'s
    /// buffer): built from the kept fields when none needs scrubbing (and
    /// the session watch sees the response), else parsed whole and
    /// scrubbed as on the hyper path.
    fn raw_parts(
        &self,
        conn: &mut RawConn,
        head: &http1::ResponseHead,
        framing: Framing,
        reply: &ReplyTo,
        settings: &Settings,
        backend: &Arc<Backend>,
    ) -> Result<response::Parts, Kind> {
        let kept = kept_fields(conn, framing, settings.backend_header.as_ref());
        if kept.is_some() {
            self.watch_plain(reply, backend, head.status, conn);
        }
        let bytes = conn.buf.split_to(head.len).freeze();
        let invalid = |e| Kind::Reset(format!("invalid response from the backend: {e}"));
        if let Some(kept) = kept {
            let fields = (&conn.fields[..], kept);
            plain_parts(&bytes, head, fields, reply, settings, backend).map_err(invalid)
        } else {
            let mut parts = http1::response_parts(&bytes, head, &conn.fields).map_err(invalid)?;
            self.scrub_response(&mut parts, backend, settings, reply, false)
                .map_err(Kind::AffinityRejected)?;
            Ok(parts)
        }
    }
}

/// True if an HTTP/2 request's head (`parts`; `scan`, of its fields) can
/// be written for the backend from its fields as they are: none needs the
/// `HeaderMap` path's rewriting or checks (`Scan::needs_map_h2`: no `host`
/// beside `:authority`, one `Cookie` without affinity cookies at most, no
/// `TE`, no framing fields...), it is no gRPC call (those take trailers)
/// and no `CONNECT`, its `:authority` is a valid host and its `:path` an
/// origin-form one. The rest are begun over the map (`Proxy::begin`).
pub(super) fn in_place(parts: &request::Parts, scan: &Scan) -> bool {
    !scan.needs_map_h2()
        && !scan.grpc
        && parts.method != Method::CONNECT
        && (parts.uri.authority()).is_some_and(|a| valid_host(a.as_str().as_bytes()))
        && (parts.uri.path_and_query()).is_some_and(|pq| pq.as_str().starts_with('/'))
}

/// The response fields the client gets (bit i: field i of the head at
/// the start of `conn.buf`) if none needs more than keeping or dropping
/// (`headers::response_field_rule`, as for the HTTP/1 fast path's heads
/// passed on in place), else None. A length is kept only where it was the
/// framing (or, without a body, the representation's).
fn kept_fields(
    conn: &RawConn,
    framing: Framing,
    backend_header: Option<&HeaderName>,
) -> Option<u128> {
    if conn.fields.len() > u128::BITS as usize {
        return None;
    }
    let keep_length = matches!(framing, Framing::Length(_) | Framing::None);
    let mut kept = 0u128;
    for (i, f) in conn.fields.iter().enumerate() {
        let (name, value) = f.field(&conn.buf);
        match headers::response_field_rule(name, value, backend_header) {
            FieldRule::Scrub => return None,
            FieldRule::Keep if keep_length || !name.eq_ignore_ascii_case(b"content-length") => {
                kept |= 1 << i;
            }
            FieldRule::Keep | FieldRule::Drop => {}
        }
    }
    Some(kept)
}

/// The client's response head from a backend's whose fields all need no
/// more than keeping or dropping ([`kept_fields`]): the map is built from
/// the kept fields alone, then unstick's own are added, instead of being
/// built whole and scrubbed (`Proxy::scrub_response`).
fn plain_parts(
    bytes: &Bytes,
    head: &http1::ResponseHead,
    (fields, kept): (&[http1::HeaderIndices], u128),
    reply: &ReplyTo,
    settings: &Settings,
    backend: &Backend,
) -> Result<response::Parts, http1::HeadError> {
    let mut parts = http1::response_parts_kept(bytes, head, fields, kept, 2)?;
    let id = never_indexed(reply.request_id.to_header());
    parts.headers.insert(X_REQUEST_ID.clone(), id);
    if let Some(name) = &settings.backend_header {
        if let Ok(v) = HeaderValue::from_str(&backend.name) {
            parts.headers.insert(name.clone(), v);
        }
    }
    Ok(parts)
}

/// Methods whose requests carry content by definition: an empty one is
/// sent with `content-length: 0`.
fn defines_content(method: &Method) -> bool {
    *method == Method::POST || *method == Method::PUT || *method == Method::PATCH
}
