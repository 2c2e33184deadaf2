//! The balancer's own evidence in the verdict: session hops between instances, as `GET /api/statelessness` counted them during the run.
//!
//! The load's users see a broken session only where a step expects
//! something; the balancer sees every request that carries a session value
//! and which instance issued it (see `docs/statelessness.md`). At the end
//! of a run chaos reads the admin API's report, names the instances in its
//! examples, and holds each session cookie to the rule `unstick serve`
//! warns by: at least `session_watch.warn_share` of at least
//! `session_watch.warn_min_hops` judged hops broke (here over the whole
//! run, not a window).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::hops::{CookieReport, ExampleReport, Report};

/// `session_hops` in `verdict.json`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SessionHops {
    /// Why there is no evidence (the watch is off, or its report could not
    /// be read); absent when there is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub missing: Option<String>,
    /// The rule a cookie is held to.
    pub rule: Rule,
    /// Every session cookie the balancer watched, in the order learned.
    pub cookies: Vec<CookieHops>,
}

/// A cookie fails when at least `share` of its judged hops broke, with at
/// least `min_hops` judged.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Rule {
    pub share: f64,
    pub min_hops: u64,
}

/// One session cookie over the run.
#[derive(Debug, Clone, Serialize)]
pub struct CookieHops {
    pub name: String,
    /// `learned` or `configured`.
    pub source: String,
    /// Distinct values the instances issued.
    pub issued: u64,
    /// Requests answered by the instance that issued their value.
    pub same_instance: u64,
    /// Requests answered by another instance: `kept + broken + unjudged`.
    pub hops: u64,
    pub kept: u64,
    pub broken: u64,
    /// Hops the rules do not judge (an ended or stale session, a 5xx).
    pub unjudged: u64,
    /// `broken / (kept + broken)`; null when no hop was judged.
    pub broken_share: Option<f64>,
    /// Broken hops by sign: `denied`, `login_redirect`, `cleared`, `reissued`.
    pub broken_by: BTreeMap<String, u64>,
    /// Whether the cookie crosses the [`Rule`].
    pub failed: bool,
    /// The last broken hops the balancer kept, oldest first.
    pub examples: Vec<HopExample>,
}

/// One broken hop, with the instances named.
#[derive(Debug, Clone, Serialize)]
pub struct HopExample {
    /// RFC 3339, UTC.
    pub time: String,
    pub method: String,
    /// Without its query.
    pub path: String,
    pub status: u16,
    /// The sign: `denied`, `login_redirect`, `cleared` or `reissued`.
    pub reason: String,
    /// The instance that issued the session, and the one that answered.
    pub from_instance: Option<usize>,
    pub to_instance: Option<usize>,
    /// e.g. `GET /whoami -> 401 (denied) on instance #2, session issued by instance #0`.
    pub message: String,
}

impl CookieHops {
    /// `kept + broken`.
    pub fn judged(&self) -> u64 {
        self.kept + self.broken
    }
}

impl SessionHops {
    /// No evidence, and why.
    pub fn missing(why: impl Into<String>) -> SessionHops {
        SessionHops {
            missing: Some(why.into()),
            ..SessionHops::default()
        }
    }

    /// The run's evidence from the balancer's report; `addresses` are the
    /// instances' addresses by slot (the backends the report names).
    pub fn from_report(report: &Report, addresses: &[String]) -> SessionHops {
        if !report.enabled {
            return SessionHops::missing(
                "the balancer's session watch is off (session_watch.enabled = false)",
            );
        }
        let rule = Rule {
            share: report.warn.share,
            min_hops: report.warn.min_hops,
        };
        SessionHops {
            missing: None,
            rule,
            cookies: report
                .cookies
                .iter()
                .map(|c| cookie(c, rule, addresses))
                .collect(),
        }
    }

    /// The cookies that cross the rule.
    pub fn failing(&self) -> impl Iterator<Item = &CookieHops> {
        self.cookies.iter().filter(|c| c.failed)
    }
}

fn cookie(c: &CookieReport, rule: Rule, addresses: &[String]) -> CookieHops {
    let judged = c.kept + c.broken;
    let failed =
        c.broken > 0 && judged >= rule.min_hops && c.broken as f64 >= rule.share * judged as f64;
    CookieHops {
        name: c.name.clone(),
        source: c.source.clone(),
        issued: c.issued,
        same_instance: c.same_instance,
        hops: c.hops,
        kept: c.kept,
        broken: c.broken,
        unjudged: c.unjudged.ended + c.unjudged.stale + c.unjudged.server_error,
        broken_share: c.broken_share,
        broken_by: c.broken_by.clone(),
        failed,
        examples: c.examples.iter().map(|e| example(e, addresses)).collect(),
    }
}

fn example(e: &ExampleReport, addresses: &[String]) -> HopExample {
    let slot = |a: &str| addresses.iter().position(|x| x == a);
    let (from_instance, to_instance) = (slot(&e.from), slot(&e.to));
    let name = |slot: Option<usize>, address: &str| match slot {
        Some(i) => format!("instance #{i}"),
        None => format!("backend {address}"),
    };
    HopExample {
        time: e.time.clone(),
        method: e.method.clone(),
        path: e.path.clone(),
        status: e.status,
        reason: e.reason.clone(),
        from_instance,
        to_instance,
        message: format!(
            "{} {} -> {} ({}) on {}, session issued by {}",
            e.method,
            e.path,
            e.status,
            e.reason,
            name(to_instance, &e.to),
            name(from_instance, &e.from)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hops::{SessionsReport, Unjudged, WarnReport};

    fn report(kept: u64, broken: u64) -> Report {
        let example = ExampleReport {
            time: "2026-12-05T11:35:24Z".into(),
            method: "GET".into(),
            path: "/whoami".into(),
            status: 401,
            from: "127.0.0.1:4100".into(),
            to: "10.9.9.9:80".into(),
            reason: "denied".into(),
        };
        Report {
            enabled: true,
            time_format: String::new(),
            sessions: SessionsReport {
                tracked: 1,
                capacity: 10,
                evicted: 0,
            },
            recent_seconds: 600,
            warn: WarnReport {
                share: 0.05,
                window_seconds: 60.0,
                min_hops: 20,
            },
            names_refused: 0,
            cookies: vec![CookieReport {
                name: "sid".into(),
                source: "learned".into(),
                ignored: false,
                first_seen: String::new(),
                issued: 3,
                untracked: 0,
                same_instance: 9,
                hops: kept + broken + 2,
                kept,
                broken,
                unjudged: Unjudged {
                    ended: 1,
                    stale: 0,
                    server_error: 1,
                },
                broken_share: None,
                broken_by: BTreeMap::new(),
                reissue: "unknown".into(),
                examples: vec![example],
            }],
        }
    }

    #[test]
    fn a_cookie_fails_by_the_warning_rule_and_examples_name_instances() {
        let addresses = ["127.0.0.1:4100".to_owned(), "127.0.0.1:4101".to_owned()];
        let hops = SessionHops::from_report(&report(95, 5), &addresses);
        let sid = &hops.cookies[0];
        assert!(sid.failed, "5 of 100 is the 5% share");
        assert_eq!((sid.judged(), sid.unjudged), (100, 2));
        let e = &sid.examples[0];
        assert_eq!((e.from_instance, e.to_instance), (Some(0), None));
        assert_eq!(
            e.message,
            "GET /whoami -> 401 (denied) on backend 10.9.9.9:80, session issued by instance #0"
        );
        assert!(!SessionHops::from_report(&report(96, 4), &addresses).cookies[0].failed);
        // Too few judged hops to hold against the share.
        assert!(!SessionHops::from_report(&report(0, 19), &addresses).cookies[0].failed);
        assert!(SessionHops::from_report(&report(0, 20), &addresses).cookies[0].failed);
        assert!(!SessionHops::from_report(&report(50, 0), &addresses).cookies[0].failed);
    }

    #[test]
    fn a_watch_turned_off_is_no_evidence() {
        let mut off = report(0, 50);
        off.enabled = false;
        let hops = SessionHops::from_report(&off, &[]);
        assert!(hops.missing.is_some() && hops.cookies.is_empty());
        assert_eq!(hops.failing().count(), 0);
    }
}
