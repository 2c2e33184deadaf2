//! The body of `GET /api/statelessness`: per session cookie, its hops between instances and how they went (never a cookie value).

use serde::{Deserialize, Serialize};

use super::judge::Stability;
use super::names::{Example, Name, SIGNALS};
use super::Watch;

/// What the watch has seen (documented in the docs' "Session hops").
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// `session_watch.enabled`.
    pub enabled: bool,
    /// How `first_seen` and examples' `time` are written.
    pub time_format: String,
    /// The bounded map of session values (keyed hashes).
    pub sessions: SessionsReport,
    /// A hop is judged only if its session was active within this.
    pub recent_seconds: u64,
    /// The warning rule.
    pub warn: WarnReport,
    /// Cookie names backends set past the limit of watched names.
    pub names_refused: u64,
    /// Every watched cookie name, in the order they were learned.
    pub cookies: Vec<CookieReport>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionsReport {
    /// Values remembered now.
    pub tracked: u64,
    /// The most remembered at once (`session_watch.entries`).
    pub capacity: u64,
    /// Values dropped to make room (least recently used first).
    pub evicted: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WarnReport {
    pub share: f64,
    pub window_seconds: f64,
    pub min_hops: u64,
}

/// One session cookie name.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CookieReport {
    pub name: String,
    /// `learned` (from a backend's `Set-Cookie`) or `configured`.
    pub source: String,
    /// In `session_watch.ignore` since it was learned: no longer watched.
    pub ignored: bool,
    pub first_seen: String,
    /// Distinct values seen issued.
    pub issued: u64,
    /// Requests carrying this cookie with a value not seen issued (issued
    /// before unstick started, dropped from the map, or made up): not judged.
    pub untracked: u64,
    /// Requests answered by the backend that issued their value.
    pub same_instance: u64,
    /// Requests answered by another backend: `kept + broken + unjudged`.
    pub hops: u64,
    pub kept: u64,
    pub broken: u64,
    /// Hops not judged, by why: the session had `ended`, was `stale`, or
    /// the answer was a `server_error` (5xx).
    pub unjudged: Unjudged,
    /// `broken / (kept + broken)`; null before any hop was judged.
    pub broken_share: Option<f64>,
    /// Broken hops by sign: `denied`, `login_redirect`, `cleared`, `reissued`.
    pub broken_by: std::collections::BTreeMap<String, u64>,
    /// Whether the issuing instance keeps its values (`stable`: a re-issue
    /// elsewhere counts as broken), re-issues them itself (`rotating`: it
    /// does not), or too few requests were seen to tell (`unknown`).
    pub reissue: String,
    /// The last broken hops, oldest first.
    pub examples: Vec<ExampleReport>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Unjudged {
    pub ended: u64,
    pub stale: u64,
    pub server_error: u64,
}

/// One broken hop.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExampleReport {
    pub time: String,
    pub method: String,
    /// The request's path, without its query.
    pub path: String,
    pub status: u16,
    /// The backend that issued the session.
    pub from: String,
    /// The backend that answered.
    pub to: String,
    /// The sign: `denied`, `login_redirect`, `cleared` or `reissued`.
    pub reason: String,
}

pub(super) fn build(w: &Watch) -> Report {
    let tuning = w.tuning.load();
    Report {
        enabled: w.enabled(),
        time_format: "RFC 3339, UTC, whole seconds".into(),
        sessions: SessionsReport {
            tracked: w.sessions.len() as u64,
            capacity: w.sessions.capacity() as u64,
            evicted: w.sessions.evicted(),
        },
        recent_seconds: tuning.config.recent.as_secs(),
        warn: WarnReport {
            share: tuning.warn.share,
            window_seconds: tuning.warn.window.as_secs_f64(),
            min_hops: tuning.warn.min_hops,
        },
        names_refused: w.names.refused.load(std::sync::atomic::Ordering::Relaxed),
        cookies: w.names.load().iter().map(|n| cookie(n)).collect(),
    }
}

fn cookie(n: &Name) -> CookieReport {
    use std::sync::atomic::Ordering::Relaxed;
    let c = n.counts();
    let unjudged = Unjudged {
        ended: c.unjudged_ended,
        stale: c.unjudged_stale,
        server_error: c.unjudged_server_error,
    };
    let judged = c.kept + c.broken;
    CookieReport {
        name: n.text.to_string(),
        source: if n.configured {
            "configured"
        } else {
            "learned"
        }
        .into(),
        ignored: n.is_ignored(),
        first_seen: rfc3339(n.first_seen),
        issued: n.issued.load(Relaxed),
        untracked: n.untracked.load(Relaxed),
        same_instance: c.same_instance,
        hops: judged + unjudged.ended + unjudged.stale + unjudged.server_error,
        kept: c.kept,
        broken: c.broken,
        unjudged,
        broken_share: (judged > 0).then(|| c.broken as f64 / judged as f64),
        broken_by: SIGNALS
            .iter()
            .zip(c.broken_by)
            .map(|(s, n)| (s.to_string(), n))
            .collect(),
        reissue: match Stability::of(c.issuer_carried, c.issuer_reissued) {
            Stability::Unknown => "unknown",
            Stability::Stable => "stable",
            Stability::Rotating => "rotating",
        }
        .into(),
        examples: n.examples().iter().map(example).collect(),
    }
}

fn example(e: &Example) -> ExampleReport {
    ExampleReport {
        time: rfc3339(e.at),
        method: e.method.to_string(),
        path: e.path.to_string(),
        status: e.status,
        from: e.from.to_string(),
        to: e.to.to_string(),
        reason: e.reason.into(),
    }
}

fn rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}
