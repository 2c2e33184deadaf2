//! The session cookie names watched (configured, or learned from backends' `Set-Cookie`), each with its counts, recent broken examples and warning window.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use arc_swap::ArcSwap;
use memchr::memmem;
use prometheus::{IntCounter, IntCounterVec};

use super::cookies;
use super::judge::{Signal, Stability, Unjudged, Verdict};

/// At most this many names are watched: the metrics' `cookie` label stays
/// bounded whatever backends set.
pub const MAX_NAMES: usize = 64;

/// Broken examples kept per name.
pub const EXAMPLES: usize = 10;

/// Slots the warning window is cut into.
const SLOTS: usize = 10;

/// One broken hop, as the report shows it (never a cookie value).
#[derive(Debug, Clone)]
pub struct Example {
    pub at: SystemTime,
    pub method: Box<str>,
    pub path: Box<str>,
    pub status: u16,
    pub from: Arc<str>,
    pub to: Arc<str>,
    pub reason: &'static str,
}

/// Counts for one name (under its lock).
#[derive(Debug, Default, Clone)]
pub struct Counts {
    pub same_instance: u64,
    pub kept: u64,
    pub broken: u64,
    pub unjudged_ended: u64,
    pub unjudged_stale: u64,
    pub unjudged_server_error: u64,
    /// Broken hops by signal: denied, login_redirect, cleared, reissued.
    pub broken_by: [u64; 4],
    /// Requests the issuer answered (logins and logouts aside), and those
    /// of them that re-issued the value: the name's [`Stability`].
    pub issuer_carried: u64,
    pub issuer_reissued: u64,
}

/// The warning window: judged hops and broken ones per slot.
#[derive(Debug, Default)]
struct Window {
    /// Per slot: its number (time / slot length), judged hops, broken.
    slots: [(u64, u64, u64); SLOTS],
    warned: Option<Instant>,
}

#[derive(Debug, Default)]
struct State {
    counts: Counts,
    window: Window,
    examples: VecDeque<Example>,
}

/// One watched cookie name.
pub struct Name {
    pub text: Box<str>,
    /// Finds the name's bytes in a `Cookie` value (a vectorised search: a
    /// header without the name is passed over at that cost, and only the
    /// pairs where it occurs are read).
    finder: memmem::Finder<'static>,
    /// Listed in `session_watch.names` (else learned).
    pub configured: bool,
    pub first_seen: SystemTime,
    /// In `session_watch.ignore` since a reload: no longer matched.
    ignored: AtomicBool,
    /// Requests carrying this name with a value not seen issued (before
    /// unstick started, evicted, or made up).
    pub untracked: AtomicU64,
    /// Values seen issued.
    pub issued: AtomicU64,
    kept: IntCounter,
    broken: IntCounter,
    unjudged: IntCounter,
    same: IntCounter,
    state: Mutex<State>,
}

/// What the warning rule needs.
#[derive(Debug, Clone, Copy)]
pub struct Warn {
    pub share: f64,
    pub window: Duration,
    pub min_hops: u64,
}

/// A warning due: the window's judged hops and broken ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    pub hops: u64,
    pub broken: u64,
}

impl Name {
    fn new(text: &str, configured: bool, metrics: &Families) -> Name {
        let hop = |outcome: &str| metrics.hops.with_label_values(&[text, outcome]);
        Name {
            text: text.into(),
            finder: memmem::Finder::new(text.as_bytes()).into_owned(),
            configured,
            first_seen: SystemTime::now(),
            ignored: AtomicBool::new(false),
            untracked: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            kept: hop("kept"),
            broken: hop("broken"),
            unjudged: hop("unjudged"),
            same: metrics.same_instance.with_label_values(&[text]),
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The values of the pairs of `cookie` (a `Cookie` value) with this
    /// name: the name's bytes are searched for, and each place they are a
    /// whole pair's name gives a value ([`cookies::value_at`]).
    pub fn values_in<'c>(&'c self, cookie: &'c [u8]) -> impl Iterator<Item = &'c [u8]> + 'c {
        let len = self.text.len();
        (self.finder.find_iter(cookie)).filter_map(move |at| cookies::value_at(cookie, at, len))
    }

    pub fn is_ignored(&self) -> bool {
        self.ignored.load(Ordering::Relaxed)
    }

    pub fn counts(&self) -> Counts {
        self.lock().counts.clone()
    }

    pub fn examples(&self) -> Vec<Example> {
        self.lock().examples.iter().cloned().collect()
    }

    pub fn stability(&self) -> Stability {
        let s = self.lock();
        Stability::of(s.counts.issuer_carried, s.counts.issuer_reissued)
    }

    /// Records a request its issuer answered: `reissued` says whether the
    /// response gave it a new value (for the name's [`Stability`]);
    /// `None` for a login or logout, which do not count there.
    pub fn same_instance(&self, reissued: Option<bool>) {
        self.same.inc();
        let mut s = self.lock();
        s.counts.same_instance += 1;
        if let Some(r) = reissued {
            s.counts.issuer_carried += 1;
            s.counts.issuer_reissued += u64::from(r);
        }
    }

    /// Records a hop's verdict (and, if broken, its example); returns a
    /// warning if this one made the window's broken share cross `warn`.
    pub fn hop(&self, verdict: Verdict, example: Option<Example>, warn: Warn) -> Option<Due> {
        let judged = match verdict {
            Verdict::Kept => {
                self.kept.inc();
                Some(false)
            }
            Verdict::Broken(_) => {
                self.broken.inc();
                Some(true)
            }
            Verdict::Unjudged(_) => {
                self.unjudged.inc();
                None
            }
            Verdict::SameInstance => return None,
        };
        let mut s = self.lock();
        let c = &mut s.counts;
        match verdict {
            Verdict::Kept => c.kept += 1,
            Verdict::Broken(signal) => {
                c.broken += 1;
                c.broken_by[signal_index(signal)] += 1;
            }
            Verdict::Unjudged(Unjudged::Ended) => c.unjudged_ended += 1,
            Verdict::Unjudged(Unjudged::Stale) => c.unjudged_stale += 1,
            Verdict::Unjudged(Unjudged::ServerError) => c.unjudged_server_error += 1,
            Verdict::SameInstance => {}
        }
        if let Some(e) = example {
            if s.examples.len() == EXAMPLES {
                s.examples.pop_front();
            }
            s.examples.push_back(e);
        }
        let broken = judged?;
        s.window.record(broken, warn, Instant::now())
    }
}

fn signal_index(s: Signal) -> usize {
    match s {
        Signal::Denied(_) => 0,
        Signal::LoginRedirect => 1,
        Signal::Cleared => 2,
        Signal::Reissued => 3,
    }
}

/// The names of [`Counts::broken_by`]'s entries.
pub const SIGNALS: [&str; 4] = ["denied", "login_redirect", "cleared", "reissued"];

impl Window {
    /// Adds a judged hop; a warning is due when the hop is broken, the
    /// window holds at least `min_hops` judged hops of which at least
    /// `share` broke, and no warning came within the window.
    fn record(&mut self, broken: bool, warn: Warn, now: Instant) -> Option<Due> {
        let slot_len = (warn.window / SLOTS as u32).max(Duration::from_millis(1));
        let t = (now.duration_since(epoch()).as_nanos() / slot_len.as_nanos()) as u64;
        let slot = &mut self.slots[t as usize % SLOTS];
        if slot.0 != t {
            *slot = (t, 0, 0);
        }
        slot.1 += 1;
        slot.2 += u64::from(broken);
        if !broken {
            return None;
        }
        let live = |s: &&(u64, u64, u64)| s.0 + SLOTS as u64 > t;
        let hops: u64 = self.slots.iter().filter(live).map(|s| s.1).sum();
        let broke: u64 = self.slots.iter().filter(live).map(|s| s.2).sum();
        let crossed = hops >= warn.min_hops && broke as f64 >= warn.share * hops as f64;
        let quiet = self
            .warned
            .is_none_or(|w| now.duration_since(w) >= warn.window);
        if !(crossed && quiet) {
            return None;
        }
        self.warned = Some(now);
        Some(Due {
            hops,
            broken: broke,
        })
    }
}

/// The process's monotonic base for window slots.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// The metric families names count into.
#[derive(Clone)]
pub struct Families {
    /// `unstick_session_hops_total{cookie, outcome}`.
    pub hops: IntCounterVec,
    /// `unstick_session_same_instance_total{cookie}`.
    pub same_instance: IntCounterVec,
}

/// Every watched name; appended to, never reordered (entries keep an index).
pub struct Names {
    list: ArcSwap<Vec<Arc<Name>>>,
    /// Held while a name is added.
    adding: Mutex<()>,
    /// Names a backend set past [`MAX_NAMES`] (counted, not watched).
    pub refused: AtomicU64,
    metrics: Families,
}

impl Names {
    pub fn new(metrics: Families) -> Names {
        Names {
            list: ArcSwap::from_pointee(Vec::new()),
            adding: Mutex::new(()),
            refused: AtomicU64::new(0),
            metrics,
        }
    }

    /// The names, for lookups: index them with an entry's `name`.
    pub fn load(&self) -> arc_swap::Guard<Arc<Vec<Arc<Name>>>> {
        self.list.load()
    }

    /// A watched name's index (ignored ones are not found).
    pub fn find(list: &[Arc<Name>], name: &[u8]) -> Option<u8> {
        let i = list
            .iter()
            .position(|n| n.text.len() == name.len() && n.text.as_bytes() == name)?;
        (!list[i].is_ignored()).then_some(i as u8)
    }

    /// Adds `name` (or finds it, if another thread just did); `None` past
    /// [`MAX_NAMES`]. A configured name that was learned becomes configured.
    pub fn add(&self, name: &str, configured: bool) -> Option<u8> {
        let _adding = self.adding.lock().unwrap_or_else(|e| e.into_inner());
        let list = self.list.load_full();
        if let Some(i) = list.iter().position(|n| &*n.text == name) {
            return Some(i as u8);
        }
        if list.len() >= MAX_NAMES {
            self.refused.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let mut next = (*list).clone();
        next.push(Arc::new(Name::new(name, configured, &self.metrics)));
        self.list.store(Arc::new(next));
        Some((list.len()) as u8)
    }

    /// Marks names ignored (or not) by `ignored`, after a reload.
    pub fn apply_ignore(&self, ignored: impl Fn(&[u8]) -> bool) {
        for n in self.list.load().iter() {
            let now = ignored(n.text.as_bytes()) && !n.configured;
            n.ignored.store(now, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn warn() -> Warn {
        Warn {
            share: 0.5,
            window: Duration::from_secs(10),
            min_hops: 4,
        }
    }

    #[test]
    fn the_window_warns_once_the_share_is_crossed_then_waits_a_window() {
        let mut w = Window::default();
        let t0 = epoch() + Duration::from_secs(100);
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        assert_eq!(w.record(false, warn(), at(0)), None);
        assert_eq!(w.record(false, warn(), at(10)), None);
        assert_eq!(w.record(true, warn(), at(20)), None); // 3 hops: too few
        let due = w.record(true, warn(), at(30));
        assert_eq!(due, Some(Due { hops: 4, broken: 2 }));
        // Rate-limited: not again within the window...
        assert_eq!(w.record(true, warn(), at(5_000)), None);
        // ... then again, counting only the last window's hops.
        let due = w.record(true, warn(), at(10_100));
        assert_eq!(due, None, "one broken hop left in the window: too few");
        for ms in [10_200, 10_300, 10_400] {
            w.record(true, warn(), at(ms));
        }
        assert!(w.warned.unwrap() >= at(10_100));
    }

    #[test]
    fn a_low_broken_share_does_not_warn() {
        let mut w = Window::default();
        let t0 = epoch() + Duration::from_secs(200);
        for i in 0..100 {
            let broken = i % 10 == 0;
            let due = w.record(broken, warn(), t0 + Duration::from_millis(i));
            assert_eq!(due, None);
        }
    }
}
