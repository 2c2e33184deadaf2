//! Session hops between instances, watched in live traffic: evidence that the app is stateless, or the endpoint that is not.
//!
//! unstick never routes by client identity, so a session's requests reach
//! every instance. This module watches that happen:
//!
//! - **Names are learned.** A cookie a backend sets with a value of at
//!   least [`MIN_LEARNED_VALUE`] bytes (an id or a token, not `theme=dark`)
//!   is a session cookie, unless it is an affinity cookie or in
//!   `session_watch.ignore`; `session_watch.names` adds names whatever their
//!   values. At most [`names::MAX_NAMES`] names, so metric labels stay bounded.
//! - **Values are never stored.** Each issued value is remembered as a
//!   keyed hash (SipHash with a random key made per process) with the
//!   backend that issued it, in a bounded least-recently-used map
//!   ([`sessions::Sessions`], `session_watch.entries`).
//! - **Hops are judged.** A request carrying a known value is answered by
//!   its issuer (same instance) or by another backend (a hop), kept, broken
//!   or not judged by the rules in [`judge`].
//! - **Reported** in `unstick_session_hops_total{cookie, outcome}`,
//!   `unstick_session_same_instance_total{cookie}`, `GET /api/statelessness`
//!   ([`Watch::report`]) and a warning when a cookie's broken share crosses
//!   `session_watch.warn_share` over `warn_window`.
//!
//! The cost: nothing for a request without a `Cookie` header or before any
//! name is known; a vectorised search for each watched name in the header
//! otherwise (the pairs are read only where one occurs); a keyed hash, a
//! lookup, and one allocation to carry what the response is judged
//! against, for a request carrying a known value (measured in
//! `benches/session_watch.sh` and `benches/hops.rs`).

use std::hash::{BuildHasher, Hash, Hasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Instant, SystemTime};

use arc_swap::ArcSwap;
use dashmap::DashMap;
use hashlink::LruCache;
use http::header::{LOCATION, SET_COOKIE};
use http::{HeaderMap, Method};

use crate::config::SessionWatch;

pub mod cookies;
pub mod judge;
pub mod names;
mod report;
pub mod sessions;

pub use names::Families;
pub use report::{CookieReport, ExampleReport, Report, SessionsReport, Unjudged, WarnReport};

use cookies::PathKind;
use judge::{Facts, Signal, Verdict};
use names::{Example, Name, Names, Warn};
use sessions::{Entry, Sessions, ENDED};

/// A cookie a backend sets is learned as a session cookie when its value
/// has at least this many bytes (session ids carry 128 bits or more).
pub const MIN_LEARNED_VALUE: usize = 16;

/// Known session values one request carries that are judged (more are
/// not looked at: a client sends one value per name).
const MAX_HITS: usize = 4;

/// The longest path kept for an example (longer ones are cut).
const MAX_PATH: usize = 160;

/// Routes remembered as answered so by their issuers (see [`judge::marks_route`]).
const MAX_ROUTES: usize = 4096;

/// Backends told apart (discovery may churn addresses); later ones share
/// one id and name.
const MAX_BACKENDS: usize = u16::MAX as usize;
const OTHER_BACKENDS: &str = "(other backends)";

/// A known session value a request carries.
#[derive(Debug, Clone, Copy, Default)]
struct Hit {
    key: u64,
    name: u8,
    entry: Option<Entry>,
}

/// What a request carrying known session values leaves for its response
/// to be judged against (it never holds a cookie value).
#[derive(Debug)]
pub struct Carried {
    hits: [Hit; MAX_HITS],
    len: u8,
    method: Method,
    path_kind: PathKind,
    /// The path (no query), cut at [`MAX_PATH`] bytes.
    path: [u8; MAX_PATH],
    path_len: u8,
}

impl Carried {
    fn hits(&self) -> &[Hit] {
        &self.hits[..usize::from(self.len)]
    }

    fn path(&self) -> &[u8] {
        &self.path[..usize::from(self.path_len)]
    }
}

/// The settings the watch reads, swapped whole on reload.
struct Tuning {
    config: SessionWatch,
    recent_secs: u32,
    warn: Warn,
}

impl Tuning {
    fn new(config: &SessionWatch) -> Tuning {
        Tuning {
            config: config.clone(),
            recent_secs: config.recent.as_secs().min(u64::from(u32::MAX)) as u32,
            warn: Warn {
                share: config.warn_share,
                window: config.warn_window,
                min_hops: config.warn_min_hops,
            },
        }
    }

    /// In `ignore` (exact, or `prefix*`).
    fn ignores(&self, name: &[u8]) -> bool {
        self.config
            .ignore
            .iter()
            .any(|i| match i.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix.as_bytes()),
                None => i.as_bytes() == name,
            })
    }
}

/// Backends by name, as small ids for the map's entries.
#[derive(Default)]
struct Backends {
    ids: DashMap<Arc<str>, u16>,
    names: RwLock<Vec<Arc<str>>>,
}

impl Backends {
    fn id(&self, name: &Arc<str>) -> u16 {
        if let Some(id) = self.ids.get(&**name) {
            return *id;
        }
        let mut names = self.names.write().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = self.ids.get(&**name) {
            return *id;
        }
        if names.len() >= MAX_BACKENDS - 1 {
            return u16::MAX;
        }
        names.push(name.clone());
        let id = (names.len() - 1) as u16;
        self.ids.insert(name.clone(), id);
        id
    }

    fn name(&self, id: u16) -> Arc<str> {
        let names = self.names.read().unwrap_or_else(|e| e.into_inner());
        names
            .get(usize::from(id))
            .cloned()
            .unwrap_or_else(|| Arc::from(OTHER_BACKENDS))
    }
}

/// A session cookie a response sets: its name's index, and the value's
/// key (`None`: the cookie is cleared).
#[derive(Debug, Clone, Copy)]
struct Issued {
    name: u8,
    key: Option<u64>,
}

/// What one response is, for judging.
struct Answer<'a> {
    backend: &'a Arc<str>,
    to: u16,
    status: u16,
    location: Option<&'a [u8]>,
    issued: &'a [Issued],
    now: u32,
}

/// The session watch: lives on the proxy, survives reloads.
pub struct Watch {
    enabled: AtomicBool,
    tuning: ArcSwap<Tuning>,
    /// The per-process key of value hashes.
    key: RandomState,
    names: Names,
    sessions: Sessions,
    backends: Backends,
    /// Routes (name, method, path with ids as `*`) whose issuers answered
    /// with a signal that [`judge::marks_route`]: bits by signal.
    routes: Mutex<LruCache<u64, u8>>,
    start: Instant,
    /// Seconds added to the clock (tests move time on with it).
    skew: AtomicU32,
}

impl Watch {
    pub fn new(config: &SessionWatch, metrics: Families) -> Watch {
        let watch = Watch {
            enabled: AtomicBool::new(config.enabled),
            tuning: ArcSwap::from_pointee(Tuning::new(config)),
            key: RandomState::new(),
            names: Names::new(metrics),
            sessions: Sessions::new(config.entries),
            backends: Backends::default(),
            routes: Mutex::new(LruCache::new(MAX_ROUTES)),
            start: Instant::now(),
            skew: AtomicU32::new(0),
        };
        watch.configure(config);
        watch
    }

    /// Applies `[session_watch]` (at start and on reload): names added,
    /// ignored ones no longer matched, the map's bound, the warning rule.
    pub fn configure(&self, config: &SessionWatch) {
        let tuning = Tuning::new(config);
        for name in &config.names {
            self.names.add(name, true);
        }
        self.names.apply_ignore(|n| tuning.ignores(n));
        self.sessions.set_capacity(config.entries);
        self.enabled.store(config.enabled, Ordering::Relaxed);
        self.tuning.store(Arc::new(tuning));
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// The map key of a cookie's value.
    fn key(&self, name: u8, value: &[u8]) -> u64 {
        let mut h = self.key.build_hasher();
        name.hash(&mut h);
        cookies::unquote(value).hash(&mut h);
        h.finish()
    }

    /// Seconds since the watch started.
    fn now(&self) -> u32 {
        let secs = self.start.elapsed().as_secs().min(u64::from(u32::MAX)) as u32;
        secs.saturating_add(self.skew.load(Ordering::Relaxed))
    }

    /// Moves the watch's clock on by `secs` (for tests of `recent`).
    pub fn advance(&self, secs: u32) {
        self.skew.fetch_add(secs, Ordering::Relaxed);
    }

    /// Reads a request's `Cookie` value (joined into one) for known
    /// session values; what its response is judged against, if any.
    /// `target` is the request target (its query is dropped).
    pub fn on_request(
        &self,
        cookie: &[u8],
        method: &Method,
        target: &[u8],
    ) -> Option<Box<Carried>> {
        if !self.enabled() {
            return None;
        }
        let names = self.names.load();
        let mut hits = [Hit::default(); MAX_HITS];
        let mut len = 0;
        // Most Cookie values carry no watched name at all (analytics,
        // preferences, CSRF tokens): one search per name passes them over.
        for (i, n) in names.iter().enumerate() {
            if n.is_ignored() {
                continue;
            }
            for value in n.values_in(cookie) {
                if value.is_empty() || len == MAX_HITS {
                    continue;
                }
                let key = self.key(i as u8, value);
                match self.sessions.get(key) {
                    Some(entry) => {
                        hits[len] = Hit {
                            key,
                            name: i as u8,
                            entry: Some(entry),
                        };
                        len += 1;
                    }
                    None => {
                        n.untracked.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        (len > 0).then(|| carried(&hits[..len], method, cookies::path_of(target)))
    }

    /// Judges a response (status and headers, as the backend sent them
    /// less affinity cookies) from `backend` against what its request
    /// carried, and learns the session cookies it sets. `is_affinity`
    /// says which cookie names are affinity cookies (never learned).
    pub fn on_response(
        &self,
        carried: Option<&Carried>,
        backend: &Arc<str>,
        status: u16,
        headers: &HeaderMap,
        is_affinity: impl Fn(&[u8]) -> bool,
    ) {
        if !self.enabled() || (carried.is_none() && !headers.contains_key(SET_COOKIE)) {
            return;
        }
        let location = (300..400)
            .contains(&status)
            .then(|| headers.get(LOCATION).map(|v| v.as_bytes()))
            .flatten();
        let set_cookies = headers
            .get_all(SET_COOKIE)
            .into_iter()
            .map(|v| v.as_bytes());
        let issued = self.read_set_cookies(set_cookies, is_affinity);
        self.observe(carried, backend, status, location, &issued);
    }

    /// [`Watch::on_response`] for a response head without `Set-Cookie`
    /// (the HTTP/1 fast path's in-place heads): its status and `Location`.
    pub fn on_plain_response(
        &self,
        carried: &Carried,
        backend: &Arc<str>,
        status: u16,
        location: Option<&[u8]>,
    ) {
        if self.enabled() {
            self.observe(Some(carried), backend, status, location, &[]);
        }
    }

    /// The session cookies a response sets; names learned on the way.
    fn read_set_cookies<'a>(
        &self,
        headers: impl Iterator<Item = &'a [u8]>,
        is_affinity: impl Fn(&[u8]) -> bool,
    ) -> Vec<Issued> {
        let mut issued = Vec::new();
        let now = SystemTime::now();
        for header in headers {
            let Some(c) = cookies::set_cookie(header, now) else {
                continue;
            };
            let known = Names::find(&self.names.load(), c.name);
            let Some(name) = known.or_else(|| self.learn(&c, &is_affinity)) else {
                continue;
            };
            let key = (!c.cleared).then(|| self.key(name, c.value));
            issued.push(Issued { name, key });
        }
        issued
    }

    /// Learns a cookie a backend sets as a session cookie if it looks like
    /// one: a value of [`MIN_LEARNED_VALUE`] bytes or more, a name that is
    /// a token, not ignored and not an affinity cookie.
    fn learn(&self, c: &cookies::SetCookie<'_>, is_affinity: impl Fn(&[u8]) -> bool) -> Option<u8> {
        if c.cleared || c.value.len() < MIN_LEARNED_VALUE {
            return None;
        }
        let token = |b: &u8| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(b);
        if !c.name.iter().all(token) || self.tuning.load().ignores(c.name) || is_affinity(c.name) {
            return None;
        }
        let name = std::str::from_utf8(c.name).ok()?;
        let i = self.names.add(name, false)?;
        tracing::info!(cookie = name, "session cookie learned from a backend's Set-Cookie; watching its hops between instances");
        Some(i)
    }

    /// Judges each known value the request carried, then records the
    /// values the response issued.
    fn observe(
        &self,
        carried: Option<&Carried>,
        backend: &Arc<str>,
        status: u16,
        location: Option<&[u8]>,
        issued: &[Issued],
    ) {
        let now = self.now();
        let answer = Answer {
            backend,
            to: self.backends.id(backend),
            status,
            location,
            issued,
            now,
        };
        if let Some(c) = carried {
            for hit in c.hits() {
                self.judge_hit(c, hit, &answer);
            }
        }
        let names = self.names.load();
        for i in issued {
            let Some(key) = i.key else { continue };
            let entry = Entry {
                issuer: answer.to,
                name: i.name,
                flags: 0,
                active: now,
            };
            if self.sessions.issue(key, entry) {
                names[usize::from(i.name)]
                    .issued
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// What the response says about one carried value: its signal, and
    /// whether it re-issued the value (a new value for the same name).
    fn signal(&self, c: &Carried, hit: &Hit, a: &Answer<'_>) -> (Option<Signal>, bool) {
        let set = a.issued.iter().find(|i| i.name == hit.name);
        let reissued = set.is_some_and(|i| i.key.is_some_and(|k| k != hit.key));
        let cookie = match set {
            Some(Issued { key: None, .. }) => Some(Signal::Cleared),
            _ if reissued => Some(Signal::Reissued),
            _ => None,
        };
        let to_login = a
            .location
            .is_some_and(|l| cookies::path_kind(cookies::path_of(l)) == PathKind::Login);
        let signal = match a.status {
            401 | 403 => Some(Signal::Denied(a.status)),
            300..=399 if to_login && c.path_kind != PathKind::Login => Some(Signal::LoginRedirect),
            _ => cookie,
        };
        (signal, reissued)
    }

    fn judge_hit(&self, c: &Carried, hit: &Hit, a: &Answer<'_>) {
        let Some(entry) = hit.entry else { return };
        let names = self.names.load();
        let Some(name) = names.get(usize::from(hit.name)) else {
            return;
        };
        let tuning = self.tuning.load();
        let (signal, reissued) = self.signal(c, hit, a);
        let same_instance = entry.issuer == a.to;
        let route = signal
            .filter(|s| judge::marks_route(*s))
            .map(|s| (self.route(hit.name, c), s));
        let facts = Facts {
            same_instance,
            status: a.status,
            signal,
            path: c.path_kind,
            ended: entry.ended(),
            stale: a.now.saturating_sub(entry.active) > tuning.recent_secs,
            route_answers_so: !same_instance && route.is_some_and(|(r, s)| self.route_marked(r, s)),
            stability: name.stability(),
        };
        let verdict = judge::judge(&facts);
        if same_instance {
            name.same_instance((c.path_kind == PathKind::Other).then_some(reissued));
            if let Some((r, s)) = route {
                self.mark_route(r, s);
            }
        } else {
            let example =
                matches!(verdict, Verdict::Broken(_)).then(|| self.example(c, &entry, a, verdict));
            if let Some(due) = name.hop(verdict, example.clone(), tuning.warn) {
                warn_broken(name, due, &tuning.warn, example.as_ref());
            }
        }
        if judge::ends_session(&facts) {
            self.sessions.update(hit.key, |e| e.flags |= ENDED);
        } else if signal.is_none() && matches!(verdict, Verdict::SameInstance | Verdict::Kept) {
            self.sessions.update(hit.key, |e| e.active = a.now);
        }
    }

    fn example(&self, c: &Carried, entry: &Entry, a: &Answer<'_>, verdict: Verdict) -> Example {
        let reason = match verdict {
            Verdict::Broken(s) => s.as_str(),
            _ => "",
        };
        Example {
            at: SystemTime::now(),
            method: c.method.as_str().into(),
            path: String::from_utf8_lossy(c.path()).into(),
            status: a.status,
            from: self.backends.name(entry.issuer),
            to: a.backend.clone(),
            reason,
        }
    }

    /// A route's key: the name, the method, and the path with ids as `*`.
    fn route(&self, name: u8, c: &Carried) -> u64 {
        let mut h = self.key.build_hasher();
        name.hash(&mut h);
        c.method.as_str().hash(&mut h);
        cookies::route(c.path(), |segment| segment.hash(&mut h));
        h.finish()
    }

    fn route_marked(&self, route: u64, signal: Signal) -> bool {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        routes
            .get(&route)
            .is_some_and(|bits| bits & route_bit(signal) != 0)
    }

    fn mark_route(&self, route: u64, signal: Signal) {
        let mut routes = self.routes.lock().unwrap_or_else(|e| e.into_inner());
        match routes.get_mut(&route) {
            Some(bits) => *bits |= route_bit(signal),
            None => {
                routes.insert(route, route_bit(signal));
            }
        }
    }

    /// The body of `GET /api/statelessness`.
    pub fn report(&self) -> Report {
        report::build(self)
    }

    /// Session values remembered now.
    pub fn tracked(&self) -> usize {
        self.sessions.len()
    }
}

fn route_bit(signal: Signal) -> u8 {
    match signal {
        Signal::Denied(_) => 1,
        Signal::LoginRedirect => 2,
        Signal::Cleared => 4,
        Signal::Reissued => 8,
    }
}

/// What a request carries for its response, boxed (the request path
/// holds only a pointer).
fn carried(hits: &[Hit], method: &Method, path: &[u8]) -> Box<Carried> {
    let mut c = Box::new(Carried {
        hits: [Hit::default(); MAX_HITS],
        len: hits.len() as u8,
        method: method.clone(),
        path_kind: cookies::path_kind(path),
        path: [0; MAX_PATH],
        path_len: path.len().min(MAX_PATH) as u8,
    });
    c.hits[..hits.len()].copy_from_slice(hits);
    c.path[..usize::from(c.path_len)].copy_from_slice(&path[..usize::from(c.path_len)]);
    c
}

/// The warning a cookie's broken share crossing the threshold logs.
fn warn_broken(name: &Name, due: names::Due, warn: &Warn, example: Option<&Example>) {
    let share = format!("{:.0}%", 100.0 * due.broken as f64 / due.hops.max(1) as f64);
    let window = humantime::format_duration(warn.window).to_string();
    let (method, path, status, from, to) = example.map_or(("", "", 0, "", ""), |e| {
        (&*e.method, &*e.path, e.status, &*e.from, &*e.to)
    });
    tracing::warn!(
        cookie = %name.text,
        broken = due.broken,
        hops = due.hops,
        share = %share,
        window = %window,
        example = %format_args!("{method} {path} -> {status} on {to}, session issued by {from}"),
        "sessions break when another instance answers: {share} of {} hops of cookie `{}` broke in the last {window}; \
         the app keeps session state in one process (see GET /api/statelessness)",
        due.hops,
        name.text,
    );
}

#[cfg(test)]
mod tests;
