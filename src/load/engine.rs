//! The engine: load threads, virtual users, the closed and open schedules.
//!
//! Each load thread runs its own single-threaded tokio runtime (as wrk runs
//! one event loop per thread) with its share of the virtual users; a user is
//! one connection. A thread's results go to its own [`Collector`], so
//! recording a request takes no lock; the collectors are merged at the end.
//!
//! The schedule is global: request `i` gets index `i` from one atomic
//! counter. In the open model its slot is `start + i / rate`, whichever user
//! claims it, so the rate is the total across connections. A user that
//! claims a slot already past by more than the tolerance sends it at once and
//! counts it late; its latency is measured from the slot, so a stalled server
//! cannot hide its delay by holding up the senders (no coordinated omission).

use std::cell::RefCell;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{CONNECTION, HOST};
use http::{HeaderValue, Request};
use http_body_util::{BodyExt, Full};
use hyper::body::Body;
use tokio::sync::{oneshot, watch};

use super::client::{drive, until, Conn, Connector, Deadline, Interrupted, RequestError, Sender};
use super::raw::{RawConn, RawRequest};
use super::report::{Collector, Report, RunInfo};
use super::workload::{Outcome, Record, Reply, Workload};
use super::Target;

/// How a run is driven.
#[derive(Debug, Clone)]
pub struct Settings {
    pub target: Target,
    /// Virtual users, one connection each.
    pub connections: usize,
    /// Load threads, each with its own runtime.
    pub threads: usize,
    /// Open model: requests per second in total. `None`: closed model.
    pub rate: Option<f64>,
    /// Stop scheduling after this long (open model: slots before it).
    pub duration: Option<Duration>,
    /// Stop after this many requests. With neither limit the run lasts
    /// until [`Stopper::stop`].
    pub requests: Option<u64>,
    /// Bound on each request, connecting included.
    pub timeout: Duration,
    /// Reuse connections; when false each request gets a new one.
    pub keepalive: bool,
    /// HTTP/2: prior knowledge on `http://`, ALPN `h2` on `https://`.
    pub http2: bool,
    /// Accept any TLS certificate.
    pub insecure: bool,
    /// A request sent later than its slot by more than this counts as late.
    pub late_after: Duration,
}

impl Settings {
    /// Closed model, 32 connections, one thread, 10 s timeout, keep-alive, HTTP/1.1.
    pub fn new(target: Target) -> Settings {
        Settings {
            target,
            connections: 32,
            threads: 1,
            rate: None,
            duration: None,
            requests: None,
            timeout: Duration::from_secs(10),
            keepalive: true,
            http2: false,
            insecure: false,
            late_after: Duration::from_millis(1),
        }
    }

    /// Checks the numbers; the message names the setting.
    pub fn validate(&self) -> Result<(), LoadError> {
        let bad = |m: &str| Err(LoadError::Settings(m.to_owned()));
        if self.connections == 0 {
            return bad("connections must be at least 1");
        }
        if self.threads == 0 {
            return bad("threads must be at least 1");
        }
        if let Some(r) = self.rate {
            if !(r.is_finite() && r > 0.0) {
                return bad("the rate must be a number of requests per second above 0");
            }
        }
        if self.duration.is_some_and(|d| d.is_zero()) {
            return bad("the duration must be above 0");
        }
        if self.requests == Some(0) {
            return bad("the request count must be at least 1");
        }
        if self.timeout.is_zero() {
            return bad("the timeout must be above 0");
        }
        Ok(())
    }

    fn run_info(&self) -> RunInfo {
        RunInfo {
            url: self.target.url().to_owned(),
            method: None,
            protocol: if self.http2 { "HTTP/2" } else { "HTTP/1.1" },
            model: if self.rate.is_some() {
                "open"
            } else {
                "closed"
            },
            connections: self.connections,
            threads: self.threads.min(self.connections),
            target_rate: self.rate,
            duration_s: self.duration.map(|d| d.as_secs_f64()),
            request_limit: self.requests,
            timeout_s: self.timeout.as_secs_f64(),
            keepalive: self.keepalive,
        }
    }
}

/// Why a run could not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The settings are unusable (a usage error).
    #[error("{0}")]
    Settings(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve {
        host: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Tls(String),
    #[error("cannot connect to {target} ({addr}): {source}")]
    Connect {
        target: String,
        addr: SocketAddr,
        source: RequestError,
    },
    #[error("a load thread failed: {0}")]
    Thread(String),
}

/// Counters of one thread, written by that thread only.
#[derive(Default)]
#[repr(align(128))]
struct LiveThread {
    requests: AtomicU64,
    errors: AtomicU64,
    late: AtomicU64,
}

fn bump(c: &AtomicU64) {
    // One writer per counter: a load and a store, no locked instruction.
    c.store(c.load(Ordering::Relaxed) + 1, Ordering::Relaxed);
}

/// Running totals, readable while the run goes (for a progress display).
pub struct Live {
    threads: Box<[LiveThread]>,
    start: OnceLock<Instant>,
}

/// A reading of [`Live`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LiveSnapshot {
    /// Requests ended so far (responses + errors).
    pub requests: u64,
    pub errors: u64,
    pub late: u64,
    /// Since the schedule started (zero before).
    pub elapsed: Duration,
}

// === impl Live ===

impl Live {
    fn new(threads: usize) -> Live {
        Live {
            threads: (0..threads).map(|_| LiveThread::default()).collect(),
            start: OnceLock::new(),
        }
    }

    /// Sums the threads' counters.
    pub fn snapshot(&self) -> LiveSnapshot {
        let mut s = LiveSnapshot::default();
        for t in self.threads.iter() {
            s.requests += t.requests.load(Ordering::Relaxed);
            s.errors += t.errors.load(Ordering::Relaxed);
            s.late += t.late.load(Ordering::Relaxed);
        }
        s.elapsed = self.start.get().map(|t| t.elapsed()).unwrap_or_default();
        s
    }
}

/// Stops a run now: requests in flight are dropped (not recorded) and
/// [`Engine::run`] returns the report of what ended before.
#[derive(Clone)]
pub struct Stopper(Arc<watch::Sender<bool>>);

impl Stopper {
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}

/// A slot of the schedule.
struct Slot {
    seq: u64,
    /// When to send (open model); `None`: now (closed model).
    at: Option<Instant>,
}

/// The global schedule: one counter for every user of every thread.
#[repr(align(128))]
struct Schedule {
    next: AtomicU64,
    limit: u64,
    rate: Option<f64>,
    duration: Option<Duration>,
}

impl Schedule {
    fn claim(&self, start: Instant, now: Instant) -> Option<Slot> {
        let seq = self.next.fetch_add(1, Ordering::Relaxed);
        if seq >= self.limit {
            return None;
        }
        match self.rate {
            Some(rate) => {
                let offset = Duration::from_secs_f64(seq as f64 / rate);
                if self.duration.is_some_and(|d| offset >= d) {
                    return None;
                }
                Some(Slot {
                    seq,
                    at: Some(start + offset),
                })
            }
            None => {
                if self
                    .duration
                    .is_some_and(|d| now.duration_since(start) >= d)
                {
                    return None;
                }
                Some(Slot { seq, at: None })
            }
        }
    }
}

/// What every thread shares.
struct Shared {
    schedule: Schedule,
    live: Arc<Live>,
    /// Users that have made their first connection (or failed to).
    ready: AtomicUsize,
    users: usize,
    start: watch::Sender<Option<Instant>>,
    stop: Arc<watch::Sender<bool>>,
}

impl Shared {
    /// Called once per user; the last one starts the clock.
    fn arrive(&self) {
        if self.ready.fetch_add(1, Ordering::AcqRel) + 1 == self.users {
            let now = Instant::now();
            let _ = self.live.start.set(now);
            self.start.send_replace(Some(now));
        }
    }
}

/// Arrives when dropped, if not yet: a user that panics before its first
/// connection (in [`Workload::user`], say) must not hold the others back.
struct Arrival<'a>(Option<&'a Shared>);

impl Arrival<'_> {
    fn arrive(&mut self) {
        if let Some(s) = self.0.take() {
            s.arrive();
        }
    }
}

impl Drop for Arrival<'_> {
    fn drop(&mut self) {
        self.arrive();
    }
}

/// A load run: settings, a workload, and handles to watch or stop it.
pub struct Engine<W: Workload> {
    settings: Settings,
    workload: Arc<W>,
    shared: Arc<Shared>,
}

// === impl Engine ===

impl<W: Workload> Engine<W> {
    /// Checks the settings; nothing starts until [`Engine::run`].
    pub fn new(settings: Settings, workload: W) -> Result<Engine<W>, LoadError> {
        settings.validate()?;
        let threads = settings.threads.min(settings.connections);
        let shared = Arc::new(Shared {
            schedule: Schedule {
                next: AtomicU64::new(0),
                limit: settings.requests.unwrap_or(u64::MAX),
                rate: settings.rate,
                duration: settings.duration,
            },
            live: Arc::new(Live::new(threads)),
            ready: AtomicUsize::new(0),
            users: settings.connections,
            start: watch::channel(None).0,
            stop: Arc::new(watch::channel(false).0),
        });
        Ok(Engine {
            settings,
            workload: Arc::new(workload),
            shared,
        })
    }

    /// Running totals.
    pub fn live(&self) -> Arc<Live> {
        self.shared.live.clone()
    }

    /// A handle that stops the run.
    pub fn stopper(&self) -> Stopper {
        Stopper(self.shared.stop.clone())
    }

    /// The settings.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    async fn connector(&self) -> Result<(SocketAddr, Connector), LoadError> {
        let t = &self.settings.target;
        let addr = t.resolve().await.map_err(|source| LoadError::Resolve {
            host: t.host().to_owned(),
            source,
        })?;
        let connector = Connector::new(t, addr, self.settings.http2, self.settings.insecure)
            .map_err(LoadError::Tls)?;
        Ok((addr, connector))
    }

    /// Resolves the host and opens (and closes) one connection, TLS
    /// included, within the timeout: a quick "is anything there".
    pub async fn probe(&self) -> Result<(), LoadError> {
        let (addr, connector) = self.connector().await?;
        let mut deadline = Deadline::new(tokio::time::Instant::now() + self.settings.timeout);
        match until(&mut deadline, connector.connect()).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(source)) => Err(LoadError::Connect {
                target: self.settings.target.url().to_owned(),
                addr,
                source,
            }),
            Err(i) => Err(LoadError::Connect {
                target: self.settings.target.url().to_owned(),
                addr,
                source: i.into(),
            }),
        }
    }

    /// Runs the load threads to the end (or until stopped) and merges their results.
    /// Callable from any tokio runtime: the work happens on threads of its own.
    pub async fn run(self) -> Result<Report, LoadError> {
        let (_, connector) = self.connector().await?;
        let threads = self.settings.threads.min(self.settings.connections);
        let mut results = Vec::with_capacity(threads);
        let mut handles = Vec::with_capacity(threads);
        for t in 0..threads {
            let users: Vec<usize> = (t..self.settings.connections).step_by(threads).collect();
            let ctx = ThreadCtx {
                index: t,
                settings: self.settings.clone(),
                workload: self.workload.clone(),
                shared: self.shared.clone(),
                connector: connector.clone(),
            };
            let (tx, rx) = oneshot::channel();
            let h = std::thread::Builder::new()
                .name(format!("unstick-load-{t}"))
                .spawn(move || {
                    let _ = tx.send(ctx.run(users));
                })
                .map_err(|e| LoadError::Thread(e.to_string()))?;
            handles.push(h);
            results.push(rx);
        }
        let mut collectors = Vec::with_capacity(threads);
        for rx in results {
            match rx.await {
                Ok(Ok(c)) => collectors.push(c),
                Ok(Err(e)) => return Err(LoadError::Thread(e)),
                Err(_) => return Err(LoadError::Thread("it panicked".into())),
            }
        }
        for h in handles {
            let _ = h.join();
        }
        let start = self
            .shared
            .live
            .start
            .get()
            .copied()
            .unwrap_or_else(Instant::now);
        let stopped = *self.shared.stop.borrow();
        let min_elapsed = match (stopped, self.settings.duration) {
            (false, Some(d)) => d,
            _ => Duration::ZERO,
        };
        Ok(Report::build(
            self.settings.run_info(),
            start,
            collectors,
            min_elapsed,
        ))
    }
}

/// What a load thread needs.
struct ThreadCtx<W: Workload> {
    index: usize,
    settings: Settings,
    workload: Arc<W>,
    shared: Arc<Shared>,
    connector: Connector,
}

impl<W: Workload> ThreadCtx<W> {
    /// The thread's body: its runtime, its users, its collector.
    fn run(self, users: Vec<usize>) -> Result<Collector, String> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start a runtime: {e}"))?;
        let local = tokio::task::LocalSet::new();
        let stats = Rc::new(RefCell::new(Collector::new()));
        let ctx = Rc::new(self);
        let mut stop = ctx.shared.stop.subscribe();
        local.block_on(&runtime, async {
            let mut tasks: Vec<_> = users
                .into_iter()
                .map(|u| tokio::task::spawn_local(user_loop(ctx.clone(), stats.clone(), u)))
                .collect();
            let all = async {
                for t in tasks.iter_mut() {
                    let _ = t.await;
                }
            };
            tokio::select! {
                _ = all => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            for t in &tasks {
                t.abort();
            }
        });
        drop(local);
        drop(runtime);
        Rc::try_unwrap(stats)
            .map(RefCell::into_inner)
            .map_err(|_| "a user outlived its thread".to_owned())
    }
}

/// One virtual user: its connection, its workload state, its requests in turn.
async fn user_loop<W: Workload>(
    ctx: Rc<ThreadCtx<W>>,
    stats: Rc<RefCell<Collector>>,
    index: usize,
) {
    let settings = &ctx.settings;
    let w = &*ctx.workload;
    let live = &ctx.shared.live.threads[ctx.index];
    let mut arrival = Arrival(Some(&ctx.shared));
    let mut user = w.user(index);
    let mut slot_timer = pin!(tokio::time::sleep(Duration::ZERO));
    let mut link = Link::new(settings.timeout);
    let wants_body = w.wants_body();
    // The fast path, when the run and the workload allow it: then
    // `link.raw` is the connection and `link.conn` stays empty.
    let raw = RawRequest::for_run(w, &ctx.connector, settings.http2, |req| {
        prepare(req, settings)
    });

    let opened = link.connect(&ctx.connector, raw.is_some()).await;
    stats.borrow_mut().connections_opened += u64::from(opened);
    arrival.arrive();
    let Some(start) = started(&ctx.shared).await else {
        return;
    };

    // Half a timer tick early: tokio's timer rounds up to the next millisecond.
    let early = Duration::from_micros(500);
    loop {
        let now = Instant::now();
        let Some(slot) = ctx.shared.schedule.claim(start, now) else {
            break;
        };
        let next = match &raw {
            Some(raw) => Next::Raw(raw),
            None => match w.request(&mut user) {
                Some(req) => Next::Hyper(req),
                None => break,
            },
        };
        // Late: no connection was free when the slot came. Decided at the
        // claim, so the timer's own wake-up lag never counts as late.
        let late = slot
            .at
            .is_some_and(|at| now.saturating_duration_since(at) > settings.late_after);
        let sent = wait_for_slot(&slot, now, early, slot_timer.as_mut()).await;
        let intended = slot.at.unwrap_or(sent);
        let (result, opened) = link
            .send(next, &ctx.connector, settings, wants_body, sent)
            .await;
        let done = Instant::now();
        if result.is_err() || !settings.keepalive {
            link.forget();
        }
        let record = Record {
            user: index,
            seq: slot.seq,
            intended,
            sent,
            done,
            late,
            outcome: outcome(&result, &link.body),
        };
        count(
            &mut stats.borrow_mut(),
            live,
            start,
            &record,
            &result,
            opened,
        );
        w.record(&mut user, &record);
    }
}

/// What one request came to: its response head and body length, or its error.
type Exchanged = Result<(http::response::Parts, u64), RequestError>;

/// Waits for the run's start; `None` if the run ended first.
async fn started(shared: &Shared) -> Option<Instant> {
    let mut started = shared.start.subscribe();
    started
        .wait_for(|s| s.is_some())
        .await
        .map(|s| s.expect("set"))
        .ok()
}

/// A request's outcome as the workload sees it.
fn outcome<'a>(result: &'a Exchanged, body: &'a [u8]) -> Outcome<'a> {
    match result {
        Ok((parts, len)) => Outcome::Response(Reply {
            status: parts.status,
            version: parts.version,
            headers: &parts.headers,
            body,
            body_len: *len,
        }),
        Err(e) => Outcome::Error(e),
    }
}

/// A user's connection (the fast path's or hyper's), its request deadline
/// and the buffer its response bodies are kept in.
struct Link {
    conn: Option<Conn>,
    raw: Option<RawConn>,
    deadline: Deadline,
    body: Vec<u8>,
}

impl Link {
    fn new(timeout: Duration) -> Link {
        Link {
            conn: None,
            raw: None,
            deadline: Deadline::new(tokio::time::Instant::now() + timeout),
            body: Vec::new(),
        }
    }

    /// Connects before the clock starts, so the first slots are not spent
    /// on handshakes; true if it connected. A failure is not counted: the
    /// first request retries.
    async fn connect(&mut self, connector: &Connector, fast_path: bool) -> bool {
        if fast_path {
            if let Ok(Ok(io)) = until(&mut self.deadline, connector.connect_tcp()).await {
                self.raw = Some(RawConn::new(io));
                return true;
            }
        } else if let Ok(Ok(c)) = until(&mut self.deadline, connector.connect()).await {
            self.conn = Some(c);
            return true;
        }
        false
    }

    /// Sends `next` at `sent` and reads its response; with the connections
    /// opened for it.
    async fn send(
        &mut self,
        next: Next<'_>,
        connector: &Connector,
        settings: &Settings,
        wants_body: bool,
        sent: Instant,
    ) -> (Exchanged, u64) {
        self.deadline
            .set(tokio::time::Instant::from_std(sent + settings.timeout));
        let mut opened = 0;
        let result = match next {
            Next::Raw(raw) => until(
                &mut self.deadline,
                raw.exchange(connector, &mut self.raw, sent, &mut opened),
            )
            .await
            .unwrap_or_else(|i| Err(i.into())),
            Next::Hyper(mut req) => {
                prepare(&mut req, settings);
                exchange(
                    connector,
                    &mut self.conn,
                    &mut self.deadline,
                    req,
                    wants_body.then_some(&mut self.body),
                    &mut opened,
                )
                .await
            }
        };
        (result, opened)
    }

    /// Drops the connection: the next request opens a new one.
    fn forget(&mut self) {
        self.conn = None;
        self.raw = None;
    }
}

/// Waits until `slot`'s time, less `early`, unless it is due already;
/// returns when the request is sent.
async fn wait_for_slot(
    slot: &Slot,
    now: Instant,
    early: Duration,
    mut timer: Pin<&mut tokio::time::Sleep>,
) -> Instant {
    match slot.at {
        Some(at) if at > now + early => {
            timer
                .as_mut()
                .reset(tokio::time::Instant::from_std(at - early));
            timer.await;
            Instant::now()
        }
        _ => now,
    }
}

/// Counts one request in the thread's collector and its live counters.
fn count(
    s: &mut Collector,
    live: &LiveThread,
    start: Instant,
    record: &Record<'_>,
    result: &Exchanged,
    opened: u64,
) {
    let (done, late) = (record.done, record.late);
    s.connections_opened += opened;
    match result {
        Ok((parts, len)) => s.response(
            start,
            done,
            record.latency(),
            late,
            parts.status.as_u16(),
            *len,
        ),
        Err(e) => s.error(start, done, late, e.class, &e.message),
    }
    bump(&live.requests);
    if result.is_err() {
        bump(&live.errors);
    }
    if late {
        bump(&live.late);
    }
}

/// What a user sends next.
#[allow(
    clippy::large_enum_variant,
    reason = "one lives on the stack per request; boxing would cost the hyper path an allocation"
)]
enum Next<'a> {
    /// The fast path's bytes.
    Raw(&'a RawRequest),
    /// A request from the workload, through hyper.
    Hyper(Request<Bytes>),
}

/// Adds what the protocol needs and the workload left out.
fn prepare(req: &mut Request<Bytes>, settings: &Settings) {
    let target = &settings.target;
    if settings.http2 {
        if req.uri().scheme().is_none() {
            let path = req
                .uri()
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/"));
            *req.uri_mut() = target.request_uri(&path, true);
        }
    } else {
        if !req.headers().contains_key(HOST) {
            req.headers_mut().insert(HOST, target.host_header());
        }
        if !settings.keepalive && !req.headers().contains_key(CONNECTION) {
            req.headers_mut()
                .insert(CONNECTION, HeaderValue::from_static("close"));
        }
    }
}

/// One request on `conn` (opened if needed), bounded by `deadline`.
/// Returns the response head and the body length.
async fn exchange(
    connector: &Connector,
    conn: &mut Option<Conn>,
    deadline: &mut Deadline,
    req: Request<Bytes>,
    mut keep_body: Option<&mut Vec<u8>>,
    opened: &mut u64,
) -> Result<(http::response::Parts, u64), RequestError> {
    // An open, ready connection: the kept one, or a new one. A kept one
    // that the server closed while idle is replaced without counting an error.
    let mut fresh = false;
    let c = loop {
        let c = match conn {
            Some(c) if c.is_open() => c,
            _ => {
                *conn = None;
                let c = until(deadline, connector.connect()).await??;
                *opened += 1;
                fresh = true;
                conn.insert(c)
            }
        };
        // Normally ready at once (the last response ended); then no extra
        // round through the connection.
        let ready = match &mut c.sender {
            Sender::H1(s) if s.is_ready() => Ok(Ok(())),
            Sender::H2(s) if s.is_ready() => Ok(Ok(())),
            Sender::H1(s) => drive(&mut c.driver, deadline, s.ready()).await,
            Sender::H2(s) => drive(&mut c.driver, deadline, s.ready()).await,
        };
        match ready {
            Ok(Ok(())) => break conn.as_mut().expect("just set"),
            Ok(Err(_)) | Err(Interrupted::Closed(_)) if !fresh => *conn = None,
            Ok(Err(e)) => return Err(RequestError::hyper(&e)),
            Err(i) => return Err(i.into()),
        }
    };
    let req = req.map(Full::new);
    let resp = match &mut c.sender {
        Sender::H1(s) => {
            let fut = c.driver.quiet(|| s.send_request(req));
            drive(&mut c.driver, deadline, fut).await
        }
        Sender::H2(s) => {
            let fut = c.driver.quiet(|| s.send_request(req));
            drive(&mut c.driver, deadline, fut).await
        }
    };
    let resp = resp?.map_err(|e| RequestError::hyper(&e))?;
    let (parts, mut incoming) = resp.into_parts();
    if let Some(b) = keep_body.as_deref_mut() {
        b.clear();
    }
    let mut len = 0u64;
    while !incoming.is_end_stream() {
        match drive(&mut c.driver, deadline, incoming.frame()).await? {
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    len += data.len() as u64;
                    if let Some(b) = keep_body.as_deref_mut() {
                        b.extend_from_slice(&data);
                    }
                }
            }
            Some(Err(e)) => return Err(RequestError::hyper(&e)),
            None => break,
        }
    }
    Ok((parts, len))
}
