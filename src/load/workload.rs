//! What the engine sends and what it tells the caller: the [`Workload`] trait,
//! per-request [`Record`]s, and [`FixedRequest`], the workload of `unstick load`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, Version};

use super::client::{ErrorClass, RequestError};
use super::Target;

/// What to send next and what to do with the result.
///
/// The engine runs one *virtual user* per connection. Each user has its own
/// state ([`Workload::User`], e.g. a cookie jar and a step counter), created
/// on the load thread that runs it, so it need not be `Send`. The engine
/// decides *when* a user sends (closed or open model); the workload decides
/// *what*.
pub trait Workload: Send + Sync + 'static {
    /// Per-user state.
    type User: 'static;

    /// The state of user `index` (0-based, below the connection count).
    fn user(&self, index: usize) -> Self::User;

    /// The next request of `user`, or `None` when this user is done (its
    /// connection closes; other users go on).
    ///
    /// The URI may be origin-form (`/path?q`); the engine adds the target's
    /// scheme and authority for HTTP/2 and a `Host` header for HTTP/1 when
    /// they are missing. Requests that already have them cost nothing extra.
    fn request(&self, user: &mut Self::User) -> Option<Request<Bytes>>;

    /// Whether [`Reply::body`] should hold the response body. When false the
    /// body is read and counted but not kept.
    fn wants_body(&self) -> bool {
        false
    }

    /// Whether [`Reply::headers`] must hold the response headers. When
    /// false the engine may leave them empty (see [`Workload::fixed_request`]).
    fn needs_headers(&self) -> bool {
        true
    }

    /// The request every user sends every time, if the workload has one.
    /// When it does and needs neither response headers nor bodies, the
    /// engine serializes it once per user on plain `http://` HTTP/1.1 runs,
    /// sends those bytes without calling [`Workload::request`], and hands
    /// [`Workload::record`] replies with empty headers (a client without
    /// hyper, several times cheaper per request). `None` (the default): every
    /// request comes from [`Workload::request`].
    fn fixed_request(&self) -> Option<Request<Bytes>> {
        None
    }

    /// Called once per request, when it ended (response read whole, or error).
    fn record(&self, user: &mut Self::User, record: &Record<'_>) {
        let _ = (user, record);
    }
}

/// One finished request, as the engine saw it.
#[derive(Debug)]
pub struct Record<'a> {
    /// The user that sent it.
    pub user: usize,
    /// Its index in the run's schedule (0-based, unique across users).
    pub seq: u64,
    /// When it was meant to be sent: its slot in the open model, its send
    /// time in the closed model.
    pub intended: Instant,
    /// When it was sent (connecting, if needed, comes after this).
    pub sent: Instant,
    /// When the response body ended or the error happened.
    pub done: Instant,
    /// Its slot had passed by more than the late tolerance when a
    /// connection was free to take it (open model only).
    pub late: bool,
    /// The response or the error.
    pub outcome: Outcome<'a>,
}

impl Record<'_> {
    /// The latency the report uses: from the intended time when the request
    /// was late (waiting for a free connection is the server's doing: no
    /// coordinated omission), else from when it was sent (a connection was
    /// free in time, and the timer's wake-up lag is the load generator's).
    pub fn latency(&self) -> Duration {
        let from = if self.late { self.intended } else { self.sent };
        self.done.saturating_duration_since(from)
    }

    /// The error class, if the request failed.
    pub fn error_class(&self) -> Option<ErrorClass> {
        match &self.outcome {
            Outcome::Error(e) => Some(e.class),
            Outcome::Response(_) => None,
        }
    }
}

/// How a request ended.
#[derive(Debug)]
pub enum Outcome<'a> {
    /// A complete response.
    Response(Reply<'a>),
    /// No complete response.
    Error(&'a RequestError),
}

/// A complete response.
#[derive(Debug)]
pub struct Reply<'a> {
    pub status: StatusCode,
    pub version: Version,
    pub headers: &'a HeaderMap,
    /// The body, if [`Workload::wants_body`]; empty otherwise.
    pub body: &'a [u8],
    /// Body bytes received.
    pub body_len: u64,
}

/// The same request every time: what `unstick load URL` sends.
///
/// The request head is built once; each send clones it (the URI and header
/// values are reference-counted, so a clone is cheap).
#[derive(Debug, Clone)]
pub struct FixedRequest {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
}

// === impl FixedRequest ===

impl FixedRequest {
    /// `method` to the target's URL with `headers` and `body`. Adds `Host`
    /// (HTTP/1, unless given) and `Connection: close` (HTTP/1, without keep-alive).
    pub fn new(
        target: &Target,
        method: Method,
        headers: Vec<(HeaderName, HeaderValue)>,
        body: Bytes,
        http2: bool,
        keepalive: bool,
    ) -> FixedRequest {
        let mut map = HeaderMap::with_capacity(headers.len() + 2);
        for (k, v) in headers {
            map.append(k, v);
        }
        if http2 {
            // HTTP/2 carries these as pseudo-headers or forbids them.
            map.remove(HOST);
            map.remove(CONNECTION);
        } else {
            if !map.contains_key(HOST) {
                map.insert(HOST, target.host_header());
            }
            if !keepalive {
                map.insert(CONNECTION, HeaderValue::from_static("close"));
            }
        }
        FixedRequest {
            method,
            uri: target.request_uri(target.path(), http2),
            headers: map,
            body,
        }
    }

    /// A fresh copy of the request.
    pub fn build(&self) -> Request<Bytes> {
        let mut req = Request::new(self.body.clone());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        req
    }

    /// The method.
    pub fn method(&self) -> &Method {
        &self.method
    }
}

impl Workload for FixedRequest {
    type User = ();

    fn user(&self, _index: usize) {}

    fn request(&self, _user: &mut ()) -> Option<Request<Bytes>> {
        Some(self.build())
    }

    fn needs_headers(&self) -> bool {
        false
    }

    fn fixed_request(&self) -> Option<Request<Bytes>> {
        Some(self.build())
    }
}
