//! The chaos workload for the load engine: virtual users with cookie jars running a scenario, judged per step.
//!
//! Each user runs its setup steps, then loops over the steps. Every response
//! is judged when it ends: a transport error or a 5xx the step did not ask
//! for is a *failed* request (it counts against the success ratio; the
//! balancer should have hidden it), any other response that does not meet
//! the step's expectation is a *broken expectation* (the app answered, but
//! wrongly: a lost session shows up here). Either ends the iteration (the
//! next one starts at the first step, so later steps are not judged on a
//! state the failed one did not make); a failed setup step starts the setup
//! again with an empty cookie jar.
//!
//! Users keep their [`Sample`]s and hand them over when the engine drops
//! them (at the end of the run), so recording takes no lock.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use bytes::Bytes;
use http::header::{COOKIE, HOST, SET_COOKIE};
use http::{HeaderName, HeaderValue, Request};

use super::scenario::{Scenario, Step};
use crate::load::{ErrorClass, Outcome, Record, Reply, Workload};

/// Which step a request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum StepRef {
    Setup(u16),
    Loop(u16),
}

/// How a request ended, as judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The response met the step's expectation.
    Ok,
    /// The response did not (see the user's [`Broken`] list for details).
    Broken,
    /// No usable response: a transport error or an unexpected 5xx.
    Failed(Failure),
}

/// Why a request failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Failure {
    Transport(ErrorClassKey),
    Status(u16),
}

/// [`ErrorClass`] with an order, for grouping.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorClassKey {
    Refused,
    Reset,
    Timeout,
    Other,
}

impl From<ErrorClass> for ErrorClassKey {
    fn from(c: ErrorClass) -> Self {
        match c {
            ErrorClass::Refused => ErrorClassKey::Refused,
            ErrorClass::Reset => ErrorClassKey::Reset,
            ErrorClass::Timeout => ErrorClassKey::Timeout,
            ErrorClass::Other => ErrorClassKey::Other,
        }
    }
}

impl Failure {
    /// `refused`, `reset`, `timeout`, `other`, or `http_502` etc.
    pub fn class(&self) -> String {
        match self {
            Failure::Transport(c) => match c {
                ErrorClassKey::Refused => "refused".into(),
                ErrorClassKey::Reset => "reset".into(),
                ErrorClassKey::Timeout => "timeout".into(),
                ErrorClassKey::Other => "other".into(),
            },
            Failure::Status(s) => format!("http_{s}"),
        }
    }
}

/// One request of one user.
#[derive(Debug, Clone)]
pub struct Sample {
    pub sent: Instant,
    pub done: Instant,
    /// As the engine measures it (from the intended time when late).
    pub latency_us: u64,
    pub step: StepRef,
    pub iter: u64,
    pub verdict: Verdict,
    /// The instance that answered, from the response's identity header.
    pub instance: Option<Arc<str>>,
}

/// A response that did not meet its step's expectation.
#[derive(Debug, Clone)]
pub struct Broken {
    pub user: usize,
    pub step: StepRef,
    pub iter: u64,
    pub at: Instant,
    /// e.g. `status 200` or `a body containing "vu3"`.
    pub expected: String,
    /// e.g. `status 401: "unknown session"`.
    pub got: String,
    pub instance: Option<Arc<str>>,
    /// Where this user's last setup step was answered.
    pub setup_instance: Option<Arc<str>>,
    /// Where this user's previous request was answered.
    pub previous_instance: Option<Arc<str>>,
}

/// What one user did.
#[derive(Debug, Default)]
pub struct UserLog {
    pub user: usize,
    /// In the order sent (a user sends one request at a time).
    pub samples: Vec<Sample>,
    /// The first [`BROKEN_KEPT`] broken expectations in full.
    pub broken: Vec<Broken>,
}

/// Broken expectations kept in full per user (all are counted).
pub const BROKEN_KEPT: usize = 5;

/// Where users hand over their logs.
pub type Sink = Arc<Mutex<Vec<UserLog>>>;

/// The scenario as a [`Workload`].
pub struct ScenarioLoad {
    scenario: Arc<Scenario>,
    host: HeaderValue,
    identity_headers: Vec<HeaderName>,
    sink: Sink,
    keep_bodies: bool,
}

/// Where a user is in the scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pos {
    Setup(usize),
    Loop(usize),
}

/// A virtual user's state (lives on its load thread).
pub struct User {
    vu: usize,
    jar: Jar,
    pos: Pos,
    iter: u64,
    /// The step of the request in flight.
    current: Option<(Pos, u64)>,
    setup_instance: Option<Arc<str>>,
    previous_instance: Option<Arc<str>>,
    /// Identities seen, so a sample shares one allocation per instance.
    known: Vec<Arc<str>>,
    log: UserLog,
    sink: Sink,
    scratch: String,
}

impl Drop for User {
    fn drop(&mut self) {
        let log = std::mem::take(&mut self.log);
        self.sink
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(log);
    }
}

// === impl ScenarioLoad ===

impl ScenarioLoad {
    /// `host`: the `Host` header to send; `identity_headers`: response
    /// headers naming the instance, the first present wins.
    pub fn new(
        scenario: Arc<Scenario>,
        host: HeaderValue,
        identity_headers: Vec<HeaderName>,
    ) -> ScenarioLoad {
        let keep_bodies = scenario.reads_bodies();
        ScenarioLoad {
            scenario,
            host,
            identity_headers,
            sink: Sink::default(),
            keep_bodies,
        }
    }

    /// Where the users' logs arrive when the engine drops them.
    pub fn sink(&self) -> Sink {
        self.sink.clone()
    }

    fn step(&self, pos: Pos) -> &Step {
        match pos {
            Pos::Setup(i) => &self.scenario.setup[i],
            Pos::Loop(i) => &self.scenario.steps[i],
        }
    }

    fn identity(&self, headers: &http::HeaderMap, user: &mut User) -> Option<Arc<str>> {
        let v = self
            .identity_headers
            .iter()
            .find_map(|h| headers.get(h))?
            .to_str()
            .ok()?
            .trim();
        if let Some(k) = user.known.iter().find(|k| &***k == v) {
            return Some(k.clone());
        }
        let k: Arc<str> = Arc::from(v);
        user.known.push(k.clone());
        Some(k)
    }

    /// Where `user` goes after the step at `pos`: the next step when it
    /// succeeded; after a failed setup step, the setup again with an empty
    /// jar; after the last step or a failed one, the next iteration.
    fn advance(&self, user: &mut User, pos: Pos, ok: bool, instance: Option<Arc<str>>) {
        user.pos = match pos {
            Pos::Setup(i) if ok => {
                user.setup_instance = instance;
                if i + 1 < self.scenario.setup.len() {
                    Pos::Setup(i + 1)
                } else {
                    Pos::Loop(0)
                }
            }
            Pos::Setup(_) => {
                user.jar.clear();
                Pos::Setup(0)
            }
            Pos::Loop(i) if ok && i + 1 < self.scenario.steps.len() => Pos::Loop(i + 1),
            Pos::Loop(_) => {
                user.iter += 1;
                Pos::Loop(0)
            }
        };
    }
}

impl Workload for ScenarioLoad {
    type User = User;

    fn user(&self, index: usize) -> User {
        User {
            vu: index + 1,
            jar: Jar::default(),
            pos: if self.scenario.setup.is_empty() {
                Pos::Loop(0)
            } else {
                Pos::Setup(0)
            },
            iter: 0,
            current: None,
            setup_instance: None,
            previous_instance: None,
            known: Vec::new(),
            log: UserLog {
                user: index + 1,
                ..UserLog::default()
            },
            sink: self.sink.clone(),
            scratch: String::new(),
        }
    }

    fn request(&self, user: &mut User) -> Option<Request<Bytes>> {
        let step = self.step(user.pos);
        let iter = match user.pos {
            Pos::Setup(_) => 0,
            Pos::Loop(_) => user.iter,
        };
        user.current = Some((user.pos, iter));
        let vu = user.vu;
        user.scratch.clear();
        step.path.render_into(vu, iter, &mut user.scratch);
        // Checked when the scenario was loaded: placeholders become digits.
        let uri: http::Uri = user.scratch.parse().ok()?;
        let body = step
            .body
            .as_ref()
            .map(|b| Bytes::from(b.render(vu, iter)))
            .unwrap_or_default();
        let mut req = Request::new(body);
        *req.method_mut() = step.method.clone();
        *req.uri_mut() = uri;
        let h = req.headers_mut();
        h.insert(HOST, self.host.clone());
        for (name, value) in &step.headers {
            let v = if value.is_fixed() {
                HeaderValue::from_str(&value.render(vu, iter))
            } else {
                HeaderValue::from_maybe_shared(Bytes::from(value.render(vu, iter)))
            };
            if let Ok(v) = v {
                h.insert(name.clone(), v);
            }
        }
        if let Some(c) = user.jar.header() {
            if let Ok(v) = HeaderValue::from_str(&c) {
                h.insert(COOKIE, v);
            }
        }
        Some(req)
    }

    fn wants_body(&self) -> bool {
        self.keep_bodies
    }

    fn record(&self, user: &mut User, record: &Record<'_>) {
        let Some((pos, iter)) = user.current.take() else {
            return;
        };
        let step = self.step(pos);
        let vu = user.vu;
        let (verdict, broken, instance) = match &record.outcome {
            Outcome::Error(e) => (
                Verdict::Failed(Failure::Transport(e.class.into())),
                None,
                None,
            ),
            Outcome::Response(r) => {
                for v in r.headers.get_all(SET_COOKIE) {
                    user.jar.store(v.as_bytes());
                }
                let instance = self.identity(r.headers, user);
                let (verdict, broken) = judge(step, r, vu, iter);
                (verdict, broken, instance)
            }
        };
        let step_ref = match pos {
            Pos::Setup(i) => StepRef::Setup(i as u16),
            Pos::Loop(i) => StepRef::Loop(i as u16),
        };
        if let Some((expected, got)) = broken {
            if user.log.broken.len() < BROKEN_KEPT {
                user.log.broken.push(Broken {
                    user: vu,
                    step: step_ref,
                    iter,
                    at: record.done,
                    expected,
                    got,
                    instance: instance.clone(),
                    setup_instance: user.setup_instance.clone(),
                    previous_instance: user.previous_instance.clone(),
                });
            }
        }
        user.log.samples.push(Sample {
            sent: record.sent,
            done: record.done,
            latency_us: record.latency().as_micros() as u64,
            step: step_ref,
            iter,
            verdict,
            instance: instance.clone(),
        });
        if instance.is_some() {
            user.previous_instance = instance.clone();
        }
        self.advance(user, pos, verdict == Verdict::Ok, instance);
    }
}

/// A response against its step's expectations: a 5xx the step does not name
/// is a failure; another unexpected status, or a body without what the step
/// wants, is a broken expectation (what was expected, what came).
fn judge(step: &Step, r: &Reply<'_>, vu: usize, iter: u64) -> (Verdict, Option<(String, String)>) {
    let status = r.status.as_u16();
    if status >= 500 && !step.names_status(status) {
        return (Verdict::Failed(Failure::Status(status)), None);
    }
    if !step.accepts(status) {
        let broken = (
            format!("status {}", step.expected_status_text()),
            format!("status {status}{}", excerpt(r.body)),
        );
        return (Verdict::Broken, Some(broken));
    }
    let Some(want) = &step.expect_body_contains else {
        return (Verdict::Ok, None);
    };
    let want = want.render(vu, iter);
    if contains(r.body, want.as_bytes()) {
        return (Verdict::Ok, None);
    }
    let broken = (
        format!("a body containing {want:?}"),
        format!("status {status}{}", excerpt(r.body)),
    );
    (Verdict::Broken, Some(broken))
}

/// Whether `needle` occurs in `hay`.
fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// `: "the first 100 characters"` of a body, or nothing for an empty one.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(400)]);
    let text = text.trim();
    if text.is_empty() {
        return String::new();
    }
    let short: String = text.chars().take(100).collect();
    let more = if short.len() < text.len() { "..." } else { "" };
    format!(": {short:?}{more}")
}

/// One user's cookies: what the app set, sent back on every request (one
/// host, so domain and path are not matched).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Jar {
    cookies: Vec<(String, String)>,
}

// === impl Jar ===

impl Jar {
    /// Applies one `Set-Cookie` value: sets, replaces, or (with
    /// `Max-Age<=0` or an `Expires` in the past) removes the cookie.
    pub fn store(&mut self, set_cookie: &[u8]) {
        let Ok(text) = std::str::from_utf8(set_cookie) else {
            return;
        };
        let mut parts = text.split(';');
        let Some((name, value)) = parts.next().and_then(|nv| nv.split_once('=')) else {
            return;
        };
        let name = name.trim();
        if name.is_empty() {
            return;
        }
        let value = value.trim().trim_matches('"');
        let (mut max_age, mut expires) = (None, None);
        for attr in parts {
            let (k, v) = attr.split_once('=').unwrap_or((attr, ""));
            let k = k.trim();
            if k.eq_ignore_ascii_case("max-age") {
                max_age = v.trim().parse::<i64>().ok();
            } else if k.eq_ignore_ascii_case("expires") {
                expires = httpdate::parse_http_date(v.trim()).ok();
            }
        }
        // Max-Age wins over Expires.
        let expired = match (max_age, expires) {
            (Some(s), _) => s <= 0,
            (None, Some(t)) => t <= std::time::SystemTime::now(),
            (None, None) => false,
        };
        self.cookies.retain(|(n, _)| n != name);
        if !expired {
            self.cookies.push((name.to_owned(), value.to_owned()));
        }
    }

    /// The `Cookie` header to send, if any cookie is set.
    pub fn header(&self) -> Option<String> {
        if self.cookies.is_empty() {
            return None;
        }
        let pairs: Vec<String> = self
            .cookies
            .iter()
            .map(|(n, v)| format!("{n}={v}"))
            .collect();
        Some(pairs.join("; "))
    }

    pub fn clear(&mut self) {
        self.cookies.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jar_keeps_replaces_and_expires() {
        let mut j = Jar::default();
        assert_eq!(j.header(), None);
        j.store(b"sid=abc; HttpOnly; Path=/");
        j.store(b"theme=\"dark\"");
        assert_eq!(j.header().as_deref(), Some("sid=abc; theme=dark"));
        j.store(b"sid=def; Max-Age=3600; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(j.header().as_deref(), Some("theme=dark; sid=def"));
        j.store(b"sid=; Path=/; Max-Age=0");
        assert_eq!(j.header().as_deref(), Some("theme=dark"));
        j.store(b"theme=x; Expires=Thu, 01 Jan 1970 00:00:00 GMT");
        assert_eq!(j.header(), None);
        j.store(b"=nameless");
        j.store(b"garbage");
        j.store(&[0xff, b'=', b'1']);
        assert_eq!(j.header(), None);
    }

    #[test]
    fn excerpts_are_short_and_quoted() {
        assert_eq!(excerpt(b""), "");
        assert_eq!(excerpt(b"unknown session\n"), ": \"unknown session\"");
        let long = "x".repeat(300);
        let e = excerpt(long.as_bytes());
        assert!(e.ends_with("...") && e.len() < 120, "{e}");
        assert!(contains(b"a vu12 b", b"vu12"));
        assert!(!contains(b"a vu1 b", b"vu12"));
    }
}
