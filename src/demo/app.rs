//! The demo web app: login, cart and counter kept per session in a [`Store`], served with hyper.
//!
//! Routes:
//! - `POST /login` (form `user=NAME`): a new session; sets `sid=...; HttpOnly; Path=/`
//! - `POST /logout`: forgets the session and clears the cookie
//! - `GET /whoami`: the user name (401 without a valid session)
//! - `POST /cart` (form `item=NAME`), `GET /cart`: the items, one per line
//! - `POST /counter`: increments the session's counter and returns it
//! - `GET /healthz`: `ok`, or 503 while draining
//! - `GET /`: an HTML page with the instance, the session and forms to use it
//!
//! Every response carries `X-Instance-Id` (random per process). A browser's
//! form post (it accepts `text/html`) is answered with a redirect to `/`.
//! Store failures are 503s naming the store; an unknown session is a 401;
//! a form over [`MAX_FORM_BYTES`] is a 413.
//!
//! Shutdown ([`serve`]): when `stop` resolves the app starts draining: for
//! `grace` it keeps accepting, but `/healthz` answers 503 and every response
//! carries `Connection: close` and `X-Unstick-Drain: 1`, so unstick takes the
//! instance out of rotation; then the listener closes and requests in flight
//! get at most `finish` to complete.

use std::convert::Infallible;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use hyper::body::Body;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use super::idempotency::{self, Draft, KeyHeader, Keyed, StoredReply};
use super::store::{
    Applied, Change, Changed, Session, Store, MAX_CART_ITEMS, MAX_ITEM_CHARS, MAX_USER_CHARS,
};
use crate::html::escape;

/// Largest request body (a form) accepted; larger ones get a 413.
pub const MAX_FORM_BYTES: usize = 16 * 1024;
/// The session cookie's name.
pub const SESSION_COOKIE: &str = "sid";
/// Connections served at once; more wait to be accepted.
const MAX_CONNECTIONS: usize = 1024;
/// A client must send its request head, and its body, within this long.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

static X_INSTANCE_ID: http::HeaderName = http::HeaderName::from_static("x-instance-id");
static X_UNSTICK_DRAIN: http::HeaderName = http::HeaderName::from_static("x-unstick-drain");
static REPLAYED: http::HeaderName = http::HeaderName::from_static(idempotency::REPLAYED);

/// How the app drains on shutdown.
#[derive(Debug, Clone, Copy)]
pub struct DrainOptions {
    /// Keep accepting (and asking to be drained) this long after the stop signal.
    pub grace: Duration,
    /// Then wait at most this long for requests in flight.
    pub finish: Duration,
}

impl Default for DrainOptions {
    fn default() -> Self {
        DrainOptions {
            grace: Duration::from_secs(1),
            finish: Duration::from_secs(3),
        }
    }
}

/// The app's state: its instance id, its store, whether it drains.
pub struct DemoApp {
    instance: String,
    store: Store,
    draining: AtomicBool,
    /// How long an `Idempotency-Key` is kept.
    idempotency_ttl: Duration,
}

type Reply = Response<Full<Bytes>>;

/// The session cookie a request carries.
enum SessionCookie {
    None,
    /// Present and shaped like an id we hand out.
    Id(String),
    /// Present but not an id we could have made: unknown by definition.
    Malformed,
}

impl SessionCookie {
    /// The session id, when it is one we could have made.
    fn sid(&self) -> Option<&str> {
        match self {
            SessionCookie::Id(sid) => Some(sid),
            _ => None,
        }
    }
}

// === impl DemoApp ===

impl DemoApp {
    /// An app with a fresh random instance id.
    pub fn new(store: Store) -> Arc<DemoApp> {
        DemoApp::with_idempotency_ttl(store, idempotency::DEFAULT_TTL)
    }

    /// An app that keeps `Idempotency-Key`s for `ttl`.
    pub fn with_idempotency_ttl(store: Store, ttl: Duration) -> Arc<DemoApp> {
        Arc::new(DemoApp {
            instance: format!("{:016x}", rand::random::<u64>()),
            store,
            draining: AtomicBool::new(false),
            idempotency_ttl: ttl,
        })
    }

    /// This process's id, as sent in `X-Instance-Id`.
    pub fn instance_id(&self) -> &str {
        &self.instance
    }

    /// The store, for messages.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// From now on, ask to be drained (503 health, drain headers).
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Answers one request. Never fails: every problem is a status code.
    pub async fn handle<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut reply = self.route(req).await;
        let h = reply.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&self.instance) {
            h.insert(X_INSTANCE_ID.clone(), v);
        }
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if self.is_draining() {
            h.insert(header::CONNECTION, HeaderValue::from_static("close"));
            h.insert(X_UNSTICK_DRAIN.clone(), HeaderValue::from_static("1"));
        }
        reply
    }

    async fn route<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let get = matches!(*req.method(), Method::GET | Method::HEAD);
        let post = req.method() == Method::POST;
        let cookie = session_cookie(req.headers());
        match req.uri().path() {
            "/healthz" if get => {
                if self.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    text(StatusCode::OK, "ok\n")
                }
            }
            "/" if get => self.page(cookie).await,
            "/whoami" if get => match self.session(cookie).await {
                Ok((_, s)) => text(StatusCode::OK, format!("{}\n", s.user)),
                Err(r) => *r,
            },
            "/cart" if get => match self.session(cookie).await {
                Ok((_, s)) => text(StatusCode::OK, lines(&s.cart)),
                Err(r) => *r,
            },
            "/login" | "/logout" | "/cart" | "/counter" if post => self.post(req).await,
            path @ ("/healthz" | "/" | "/whoami") => method_not_allowed(path, "GET, HEAD"),
            path @ ("/login" | "/logout" | "/counter") => method_not_allowed(path, "POST"),
            path @ "/cart" => method_not_allowed(path, "GET, HEAD, POST"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }

    /// A change: its body read, its `Idempotency-Key` checked, the change
    /// made once (a repeated key gets the first response back).
    async fn post<B>(&self, req: Request<B>) -> Reply
    where
        B: Body<Data = Bytes>,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let (parts, body) = req.into_parts();
        let body = match read_body(&parts.headers, body).await {
            Ok(b) => b,
            Err(r) => return *r,
        };
        let cookie = session_cookie(&parts.headers);
        let keyed = match idempotency::key_header(&parts.headers) {
            KeyHeader::None => None,
            KeyHeader::Invalid(why) => return text(StatusCode::BAD_REQUEST, format!("{why}\n")),
            KeyHeader::Key(key) => Some(idempotency::keyed(
                &key,
                cookie.sid(),
                &parts.method,
                parts.uri.path_and_query().map_or("/", |p| p.as_str()),
                &parts.headers,
                &body,
                self.idempotency_ttl,
            )),
        };
        let html = wants_html(&parts.headers);
        match plan(parts.uri.path(), cookie, &body, html) {
            Ok((change, draft)) => self.make(change, draft, keyed).await,
            Err(r) => *r,
        }
    }

    /// Makes the change (with its key's record); the response.
    async fn make(&self, change: Change, draft: Draft, keyed: Option<Keyed>) -> Reply {
        let keyed = keyed.as_ref().map(|k| (k, &draft));
        match self.store.apply(&change, keyed).await {
            Ok(Applied::Fresh(Changed::Done(n))) => reply_of(draft.finish(n)),
            Ok(Applied::Fresh(Changed::NoSession)) => unknown_session(),
            Ok(Applied::Fresh(Changed::Full)) => text(
                StatusCode::CONFLICT,
                format!("the cart is full ({MAX_CART_ITEMS} items)\n"),
            ),
            Ok(Applied::Replayed(stored)) => {
                let mut r = reply_of(stored);
                r.headers_mut()
                    .insert(REPLAYED.clone(), HeaderValue::from_static("true"));
                r
            }
            Ok(Applied::KeyReused) => text(
                StatusCode::UNPROCESSABLE_ENTITY,
                "this Idempotency-Key was sent before with another request \
                 (method, path or body): use a new key for a new request\n",
            ),
            Err(e) => unavailable(&e),
        }
    }

    /// The request's session, or the 401/503 to answer instead.
    async fn session(&self, cookie: SessionCookie) -> Result<(String, Session), Box<Reply>> {
        let sid = require_sid(cookie)?;
        match self.store.get(&sid).await {
            Ok(Some(s)) => Ok((sid, s)),
            Ok(None) => Err(Box::new(unknown_session())),
            Err(e) => Err(Box::new(unavailable(&e))),
        }
    }

    async fn page(&self, cookie: SessionCookie) -> Reply {
        let session = match cookie {
            SessionCookie::Id(sid) => match self.store.get(&sid).await {
                Ok(s) => s,
                Err(e) => return unavailable(&e),
            },
            _ => None,
        };
        let mut reply = Response::new(Full::new(Bytes::from(self.render(session.as_ref()))));
        let h = reply.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=utf-8"),
        );
        h.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
            ),
        );
        reply
    }

    fn render(&self, session: Option<&Session>) -> String {
        let body = match session {
            None => r#"<p>Not logged in.</p>
<form method="post" action="/login"><input name="user" placeholder="your name" maxlength="64" required autofocus> <button>log in</button></form>"#
                .to_owned(),
            Some(s) => {
                let items: String = if s.cart.is_empty() {
                    "<li><em>empty</em></li>".into()
                } else {
                    s.cart.iter().map(|i| format!("<li>{}</li>", escape(i))).collect()
                };
                format!(
                    r#"<p>Logged in as <b>{user}</b>.</p>
<form method="post" action="/counter">Counter: <b>{counter}</b> <button>+1</button></form>
<p>Cart:</p><ul>{items}</ul>
<form method="post" action="/cart"><input name="item" placeholder="an item" maxlength="100" required> <button>add to cart</button></form>
<form method="post" action="/logout"><button>log out</button></form>"#,
                    user = escape(&s.user),
                    counter = s.counter,
                )
            }
        };
        format!(
            r#"<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>unstick demo</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 40em; margin: 2em auto; padding: 0 1em; color: #222 }}
code {{ background: #eee; padding: .1em .3em; border-radius: 3px }}
.instance {{ font-size: 1.4em }} form {{ margin: .6em 0 }} small {{ color: #666 }}
</style></head><body>
<h1>unstick demo</h1>
<p class="instance">Served by instance <code>{instance}</code> (pid {pid})</p>
<p><small>Sessions live in <code>{store}</code>.</small></p>
{body}
<p><small>{note}</small></p>
</body></html>
"#,
            instance = escape(&self.instance),
            pid = std::process::id(),
            store = escape(&self.store.describe()),
            note = if matches!(self.store, Store::Memory(_)) {
                "This is the stateful twin: each instance keeps its own sessions in \
                 memory. Reload, and whenever another instance answers you are logged out."
            } else {
                "Reload: unstick may send each request to a different instance, so the \
                 instance id changes while your session stays, because it lives in the \
                 shared store."
            },
        )
    }
}

// === helpers ===

fn text(status: StatusCode, body: impl Into<Bytes>) -> Reply {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn lines(items: &[String]) -> String {
    let mut out = String::new();
    for i in items {
        out.push_str(i);
        out.push('\n');
    }
    out
}

/// A plain-text response as the store keeps it.
fn stored(status: StatusCode, body: &str) -> StoredReply {
    StoredReply {
        status: status.as_u16(),
        headers: vec![("content-type".into(), "text/plain; charset=utf-8".into())],
        body: body.to_owned(),
    }
}

/// 303 to `/`, so a browser's form post lands back on the page.
fn see_root_stored() -> StoredReply {
    let mut r = stored(StatusCode::SEE_OTHER, "see /\n");
    r.headers.push(("location".into(), "/".into()));
    r
}

/// A stored response as a response (headers the store could not have
/// written are left out).
fn reply_of(stored: StoredReply) -> Reply {
    let mut r = Response::new(Full::new(Bytes::from(stored.body)));
    *r.status_mut() = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    for (name, value) in &stored.headers {
        if let (Ok(n), Ok(v)) = (
            http::HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            r.headers_mut().append(n, v);
        }
    }
    r
}

fn unknown_session() -> Reply {
    text(
        StatusCode::UNAUTHORIZED,
        "unknown session: log in again (POST /login with user=NAME)\n",
    )
}

fn unavailable(e: &super::store::StoreError) -> Reply {
    tracing::warn!(error = %e, "store unavailable");
    let mut r = text(StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"));
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    r
}

fn method_not_allowed(path: &str, allow: &'static str) -> Reply {
    let mut r = text(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("{path} takes {allow}\n"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    r
}

fn require_sid(cookie: SessionCookie) -> Result<String, Box<Reply>> {
    match cookie {
        SessionCookie::Id(sid) => Ok(sid),
        SessionCookie::Malformed => Err(Box::new(unknown_session())),
        SessionCookie::None => Err(Box::new(text(
            StatusCode::UNAUTHORIZED,
            "no session: log in first (POST /login with user=NAME)\n",
        ))),
    }
}

fn session_cookie(headers: &HeaderMap) -> SessionCookie {
    let value = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == SESSION_COOKIE)
        .map(|(_, value)| value.trim());
    match value {
        None | Some("") => SessionCookie::None,
        Some(v) if v.len() == 32 && v.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) => {
            SessionCookie::Id(v.to_owned())
        }
        Some(_) => SessionCookie::Malformed,
    }
}

fn wants_html(headers: &HeaderMap) -> bool {
    headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("text/html"))
}

/// Reads a request body of at most [`MAX_FORM_BYTES`].
async fn read_body<B>(headers: &HeaderMap, body: B) -> Result<Bytes, Box<Reply>>
where
    B: Body<Data = Bytes>,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the form is larger than {MAX_FORM_BYTES} bytes\n"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_FORM_BYTES as u64) {
        return Err(Box::new(too_large()));
    }
    let body = Limited::new(body, MAX_FORM_BYTES);
    match tokio::time::timeout(CLIENT_TIMEOUT, body.collect()).await {
        Ok(Ok(b)) => Ok(b.to_bytes()),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => Err(Box::new(too_large())),
        Ok(Err(e)) => Err(Box::new(text(
            StatusCode::BAD_REQUEST,
            format!("cannot read the request body: {e}\n"),
        ))),
        Err(_) => Err(Box::new(text(
            StatusCode::REQUEST_TIMEOUT,
            "the request body did not arrive in time\n",
        ))),
    }
}

/// A urlencoded form.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(body).into_owned().collect()
}

/// A required form field: trimmed, not empty, at most `max` characters, no control characters.
fn field(form: &[(String, String)], name: &str, max: usize) -> Result<String, Box<Reply>> {
    let bad = |why: String| Err(Box::new(text(StatusCode::BAD_REQUEST, why)));
    let Some((_, value)) = form.iter().find(|(k, _)| k == name) else {
        return bad(format!("the form needs `{name}=...`\n"));
    };
    let value = value.trim();
    if value.is_empty() {
        return bad(format!("`{name}` is empty\n"));
    }
    if value.chars().count() > max {
        return bad(format!("`{name}` is longer than {max} characters\n"));
    }
    if value.chars().any(char::is_control) {
        return bad(format!("`{name}` contains control characters\n"));
    }
    Ok(value.to_owned())
}

/// What a POST to `path` changes, and the response it gets once the change
/// is made; `Err`: the answer now, with nothing to change.
fn plan(
    path: &str,
    cookie: SessionCookie,
    body: &[u8],
    html: bool,
) -> Result<(Change, Draft), Box<Reply>> {
    let done = |text: &str| {
        if html {
            see_root_stored()
        } else {
            stored(StatusCode::OK, text)
        }
    };
    match path {
        "/login" => {
            let user = field(&parse_form(body), "user", MAX_USER_CHARS)?;
            let sid = format!("{:032x}", rand::random::<u128>());
            let mut reply = done(&format!("logged in as {user}\n"));
            let cookie = format!("{SESSION_COOKIE}={sid}; HttpOnly; Path=/; SameSite=Lax");
            reply.headers.push(("set-cookie".into(), cookie));
            Ok((Change::Login { sid, user }, Draft::fixed(reply)))
        }
        "/logout" => {
            let mut reply = done("logged out\n");
            let clear = format!("{SESSION_COOKIE}=; HttpOnly; Path=/; SameSite=Lax; Max-Age=0");
            reply.headers.push(("set-cookie".into(), clear));
            match cookie {
                SessionCookie::Id(sid) => Ok((Change::Logout { sid }, Draft::fixed(reply))),
                _ => Err(Box::new(reply_of(reply))),
            }
        }
        "/cart" => {
            let sid = require_sid(cookie)?;
            let item = field(&parse_form(body), "item", MAX_ITEM_CHARS)?;
            let draft = if html {
                Draft::fixed(see_root_stored())
            } else {
                Draft {
                    reply: stored(StatusCode::OK, &format!("added {item}; ")),
                    after_count: Some(" in the cart\n".into()),
                }
            };
            Ok((Change::AddToCart { sid, item }, draft))
        }
        _ => {
            let sid = require_sid(cookie)?;
            let draft = if html {
                Draft::fixed(see_root_stored())
            } else {
                Draft {
                    reply: stored(StatusCode::OK, ""),
                    after_count: Some("\n".into()),
                }
            };
            Ok((Change::Bump { sid }, draft))
        }
    }
}

// === serving ===

/// Serves `app` on `listener` until `stop` resolves, then drains (see the
/// module docs) and returns.
pub async fn serve(
    listener: TcpListener,
    app: Arc<DemoApp>,
    stop: impl Future<Output = ()>,
    drain: DrainOptions,
) {
    let graceful = GracefulShutdown::new();
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(CLIENT_TIMEOUT);
    let accept_one = |accepted: std::io::Result<(tokio::net::TcpStream, std::net::SocketAddr)>,
                      permit: tokio::sync::OwnedSemaphorePermit| {
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::debug!(error = %e, "accept failed");
                return false;
            }
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let service = service_fn(move |req| {
            let app = app.clone();
            async move { Ok::<_, Infallible>(app.handle(req).await) }
        });
        let conn = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            let _ = conn.await;
            drop(permit);
        });
        true
    };

    let mut stop = pin!(stop);
    let mut grace: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    loop {
        // Both steps are cancel-safe: a permit taken for an accept that loses
        // the race is given back when the future is dropped.
        let next = async {
            let permit = limit.clone().acquire_owned().await.expect("never closed");
            (listener.accept().await, permit)
        };
        tokio::select! {
            biased;
            _ = &mut stop, if grace.is_none() => {
                tracing::info!(grace = ?drain.grace, "draining: asking to be taken out of rotation");
                app.start_draining();
                grace = Some(Box::pin(tokio::time::sleep(drain.grace)));
            }
            _ = async { grace.as_mut().expect("guarded").await }, if grace.is_some() => break,
            (accepted, permit) = next => {
                if !accept_one(accepted, permit) {
                    // Out of file descriptors and the like: do not spin.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain.finish) => {
            tracing::warn!(finish = ?drain.finish, "requests still in flight after the drain; closing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::demo::store::StoreSpec;

    fn app() -> Arc<DemoApp> {
        DemoApp::new(Store::open(&StoreSpec::Memory).unwrap())
    }

    fn req(method: Method, path: &str, cookie: Option<&str>, body: &str) -> Request<Full<Bytes>> {
        let mut r = Request::builder().method(method).uri(path);
        if let Some(c) = cookie {
            r = r.header(header::COOKIE, c);
        }
        r.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
    }

    async fn body(r: Reply) -> String {
        String::from_utf8(r.into_body().collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    fn sid_of(r: &Reply) -> String {
        let c = r.headers()[header::SET_COOKIE].to_str().unwrap();
        assert!(c.contains("HttpOnly") && c.contains("Path=/"), "{c}");
        c.split(';').next().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_session_goes_through_every_route() {
        let app = app();
        let r = app
            .handle(req(Method::POST, "/login", None, "user=Ada+L"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-instance-id"], app.instance_id());
        let c = sid_of(&r);
        let r = app.handle(req(Method::GET, "/whoami", Some(&c), "")).await;
        assert_eq!(body(r).await, "Ada L\n");
        let r = app
            .handle(req(Method::POST, "/cart", Some(&c), "item=tea"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        app.handle(req(Method::POST, "/cart", Some(&c), "item=%3Cb%3E"))
            .await;
        let r = app.handle(req(Method::GET, "/cart", Some(&c), "")).await;
        assert_eq!(body(r).await, "tea\n<b>\n");
        for n in 1..=3 {
            let r = app
                .handle(req(Method::POST, "/counter", Some(&c), ""))
                .await;
            assert_eq!(body(r).await, format!("{n}\n"));
        }
        let page = body(app.handle(req(Method::GET, "/", Some(&c), "")).await).await;
        assert!(
            page.contains("Ada L") && page.contains("<b>3</b>"),
            "{page}"
        );
        assert!(
            page.contains("&lt;b&gt;") && !page.contains("<li><b>"),
            "escaped: {page}"
        );
        assert!(page.contains(app.instance_id()));
        assert!(
            page.contains("stateful twin"),
            "memory says what it is: {page}"
        );
        let r = app.handle(req(Method::POST, "/logout", Some(&c), "")).await;
        assert_eq!(r.status(), StatusCode::OK);
        let r = app.handle(req(Method::GET, "/whoami", Some(&c), "")).await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }

    #[tokio::test]
    async fn bad_requests_get_clear_statuses() {
        let app = app();
        let unknown = format!("sid={:032x}", 7);
        for (m, path, cookie, body, status) in [
            (Method::GET, "/whoami", None, "", StatusCode::UNAUTHORIZED),
            (
                Method::GET,
                "/whoami",
                Some(unknown.as_str()),
                "",
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::GET,
                "/cart",
                Some("sid=../../etc"),
                "",
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::POST,
                "/counter",
                Some(unknown.as_str()),
                "",
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::POST,
                "/cart",
                Some(unknown.as_str()),
                "item=x",
                StatusCode::UNAUTHORIZED,
            ),
            (
                Method::POST,
                "/login",
                None,
                "name=x",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/login",
                None,
                "user=%20",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::POST,
                "/login",
                None,
                "user=a%00b",
                StatusCode::BAD_REQUEST,
            ),
            (
                Method::GET,
                "/login",
                None,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (
                Method::DELETE,
                "/cart",
                None,
                "",
                StatusCode::METHOD_NOT_ALLOWED,
            ),
            (Method::GET, "/nope", None, "", StatusCode::NOT_FOUND),
        ] {
            let r = app.handle(req(m.clone(), path, cookie, body)).await;
            assert_eq!(r.status(), status, "{m} {path} {cookie:?} {body}");
        }
        let long = format!("user={}", "x".repeat(MAX_USER_CHARS + 1));
        let r = app.handle(req(Method::POST, "/login", None, &long)).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let huge = format!("user={}", "x".repeat(MAX_FORM_BYTES));
        let r = app.handle(req(Method::POST, "/login", None, &huge)).await;
        assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }

    #[tokio::test]
    async fn browsers_are_sent_back_to_the_page() {
        let app = app();
        let mut r = req(Method::POST, "/login", None, "user=ada");
        r.headers_mut()
            .insert(header::ACCEPT, HeaderValue::from_static("text/html,*/*"));
        let r = app.handle(r).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/");
        assert!(r.headers().contains_key(header::SET_COOKIE));
    }

    #[tokio::test]
    async fn draining_asks_to_be_taken_out() {
        let app = app();
        let r = app.handle(req(Method::GET, "/healthz", None, "")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert!(!r.headers().contains_key("x-unstick-drain"));
        app.start_draining();
        let r = app.handle(req(Method::GET, "/healthz", None, "")).await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        let r = app.handle(req(Method::GET, "/", None, "")).await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["x-unstick-drain"], "1");
        assert_eq!(r.headers()[header::CONNECTION], "close");
    }

    fn keyed_req(path: &str, cookie: Option<&str>, body: &str, key: &str) -> Request<Full<Bytes>> {
        let mut r = req(Method::POST, path, cookie, body);
        r.headers_mut()
            .insert(idempotency::HEADER, HeaderValue::from_str(key).unwrap());
        r
    }

    #[tokio::test]
    async fn a_repeated_key_gets_the_first_response_and_changes_nothing() {
        let app = app();
        let login = app
            .handle(keyed_req("/login", None, "user=ada", "l1"))
            .await;
        let again = app
            .handle(keyed_req("/login", None, "user=ada", "l1"))
            .await;
        assert_eq!(again.headers()[REPLAYED.clone()], "true");
        assert!(!login.headers().contains_key(REPLAYED.clone()));
        // The same session, not a second one.
        assert_eq!(sid_of(&login), sid_of(&again));
        let c = sid_of(&login);
        for _ in 0..2 {
            let r = app
                .handle(keyed_req("/counter", Some(&c), "", "\"k1\""))
                .await;
            assert_eq!(body(r).await, "1\n");
        }
        let r = app
            .handle(keyed_req("/cart", Some(&c), "item=tea", "k2"))
            .await;
        assert_eq!(body(r).await, "added tea; 1 in the cart\n");
        let r = app
            .handle(keyed_req("/cart", Some(&c), "item=tea", "k2"))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(body(r).await, "added tea; 1 in the cart\n");
        // A new key is a new change; the old key with another body is refused.
        let r = app.handle(keyed_req("/counter", Some(&c), "", "k3")).await;
        assert_eq!(body(r).await, "2\n");
        let r = app
            .handle(keyed_req("/cart", Some(&c), "item=milk", "k2"))
            .await;
        assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
        let r = app.handle(req(Method::GET, "/cart", Some(&c), "")).await;
        assert_eq!(body(r).await, "tea\n");
        // Keys are per session: another session's k1 is its own.
        let other = sid_of(
            &app.handle(req(Method::POST, "/login", None, "user=bob"))
                .await,
        );
        let r = app
            .handle(keyed_req("/counter", Some(&other), "", "k1"))
            .await;
        assert!(!r.headers().contains_key(REPLAYED.clone()));
        assert_eq!(body(r).await, "1\n");
    }

    #[tokio::test]
    async fn keys_are_checked_and_refusals_are_not_stored() {
        let app = app();
        let r = app.handle(keyed_req("/counter", None, "", "a b")).await;
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        let mut two = keyed_req("/login", None, "user=ada", "k");
        two.headers_mut()
            .append(idempotency::HEADER, HeaderValue::from_static("j"));
        assert_eq!(app.handle(two).await.status(), StatusCode::BAD_REQUEST);
        // A 401 changed nothing and is not replayed: after login, the same
        // key is a fresh change.
        let unknown = format!("sid={:032x}", 7);
        let r = app
            .handle(keyed_req("/counter", Some(&unknown), "", "k"))
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        let r = app
            .handle(keyed_req("/counter", Some(&unknown), "", "k"))
            .await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
        assert!(!r.headers().contains_key(REPLAYED.clone()));
    }

    #[tokio::test]
    async fn keys_expire() {
        let app = DemoApp::with_idempotency_ttl(
            Store::open(&StoreSpec::Memory).unwrap(),
            Duration::from_millis(30),
        );
        let c = sid_of(
            &app.handle(req(Method::POST, "/login", None, "user=ada"))
                .await,
        );
        let r = app.handle(keyed_req("/counter", Some(&c), "", "k")).await;
        assert_eq!(body(r).await, "1\n");
        tokio::time::sleep(Duration::from_millis(60)).await;
        let r = app.handle(keyed_req("/counter", Some(&c), "", "k")).await;
        assert_eq!(body(r).await, "2\n", "an expired key is a new change");
    }

    #[tokio::test]
    async fn a_dead_store_is_a_503_naming_it() {
        let spec = StoreSpec::Sqlite("/nonexistent-dir/unstick/s.db".into());
        let app = DemoApp::new(Store::open(&spec).unwrap());
        let r = app
            .handle(req(Method::POST, "/login", None, "user=ada"))
            .await;
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(body(r)
            .await
            .contains("sqlite:/nonexistent-dir/unstick/s.db"));
    }
}
