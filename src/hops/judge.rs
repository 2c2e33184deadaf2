//! The rules that judge a request carrying a known session value: answered by its issuer, or a hop kept, broken or left unjudged.
//!
//! Each rule is a plain function of [`Facts`], so each is tested on its own
//! (see the tests below and the "Session hops" section of the docs).

use super::cookies::PathKind;

/// What a response says that can mean the backend does not know the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// 401 or 403.
    Denied(u16),
    /// A redirect (3xx) to a login-like location.
    LoginRedirect,
    /// The session cookie removed (`Max-Age=0`, a past `Expires`, no value).
    Cleared,
    /// The session cookie set to a new value.
    Reissued,
}

impl Signal {
    /// The reason as the report and the metric-free counters name it.
    pub fn as_str(self) -> &'static str {
        match self {
            Signal::Denied(_) => "denied",
            Signal::LoginRedirect => "login_redirect",
            Signal::Cleared => "cleared",
            Signal::Reissued => "reissued",
        }
    }
}

/// Whether a cookie name's values stay put on the instance that issued
/// them, from requests that issuer answered (see [`Stability::of`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stability {
    /// Fewer than [`STABLE_AFTER`] requests seen, none re-issued.
    Unknown,
    /// The issuer re-issues at most 1% of the time: a re-issue by another
    /// instance is a sign it did not know the session.
    Stable,
    /// The issuer itself re-issues the value (a rolling id, a signed
    /// client-side session): a re-issue is no sign of anything.
    Rotating,
}

/// Requests answered by the issuer needed before a name counts as stable.
pub const STABLE_AFTER: u64 = 20;

impl Stability {
    /// From `carried` requests answered by the issuer, `reissued` of which
    /// re-issued the value.
    pub fn of(carried: u64, reissued: u64) -> Stability {
        if reissued == 0 && carried < STABLE_AFTER {
            Stability::Unknown
        } else if reissued * 100 <= carried {
            Stability::Stable
        } else {
            Stability::Rotating
        }
    }
}

/// Why a hop was not judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unjudged {
    /// The session had ended before (logout, cleared, replaced, or its
    /// issuer stopped knowing it: an expiry).
    Ended,
    /// A sign of a lost session, but the session was last active longer
    /// ago than `recent`: it may simply have expired.
    Stale,
    /// A 5xx (or 1xx) is no evidence either way.
    ServerError,
}

/// What a request carrying a known session value comes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Answered by the backend that issued the value.
    SameInstance,
    /// Another backend answered, and knew the session.
    Kept,
    /// Another backend answered as one that does not know the session.
    Broken(Signal),
    Unjudged(Unjudged),
}

/// Everything the rules look at.
#[derive(Debug, Clone, Copy)]
pub struct Facts {
    pub same_instance: bool,
    pub status: u16,
    pub signal: Option<Signal>,
    /// The request's path is a login or a logout.
    pub path: PathKind,
    /// The session value had ended before this request.
    pub ended: bool,
    /// The session was last active longer ago than `recent`.
    pub stale: bool,
    /// Issuers answer this route with the same signal (a 403 for this
    /// user, a cookie this route clears): it is the route's answer.
    pub route_answers_so: bool,
    pub stability: Stability,
}

/// The rules, in order:
///
/// 1. answered by the issuer: same instance;
/// 2. a session that had ended: not judged;
/// 3. a login (the path says so) is kept whatever it answers: a login may
///    deny a wrong password or start a new session anywhere;
/// 4. a logout that did not fail (below 400) is kept: it ends the session;
/// 5. a 5xx (or 1xx): not judged;
/// 6. no signal: kept;
/// 7. a signal on a session last active longer ago than `recent`: not
///    judged (it may have expired);
/// 8. a re-issued value is broken only for a stable name; kept otherwise;
/// 9. a signal the issuers give on the same route too: kept;
/// 10. any other signal: broken.
pub fn judge(f: &Facts) -> Verdict {
    if f.same_instance {
        return Verdict::SameInstance;
    }
    if f.ended {
        return Verdict::Unjudged(Unjudged::Ended);
    }
    match f.path {
        PathKind::Login => return Verdict::Kept,
        PathKind::Logout if f.status < 400 => return Verdict::Kept,
        _ => {}
    }
    if f.status >= 500 || f.status < 200 {
        return Verdict::Unjudged(Unjudged::ServerError);
    }
    let Some(signal) = f.signal else {
        return Verdict::Kept;
    };
    if f.stale {
        return Verdict::Unjudged(Unjudged::Stale);
    }
    match signal {
        Signal::Reissued if f.stability != Stability::Stable => Verdict::Kept,
        _ if f.route_answers_so => Verdict::Kept,
        _ => Verdict::Broken(signal),
    }
}

/// Whether the session value ends with this response (it is then no
/// longer judged): cleared or replaced by whoever answered, a logout that
/// did not fail, or its own issuer answering as one that does not know it
/// (a 401 or a login redirect: it expired there).
pub fn ends_session(f: &Facts) -> bool {
    match f.signal {
        Some(Signal::Cleared | Signal::Reissued) => return true,
        Some(Signal::Denied(401) | Signal::LoginRedirect) if f.same_instance => return true,
        _ => {}
    }
    f.path == PathKind::Logout && f.status < 400
}

/// Signals that, answered by the issuer, mark their route as answering
/// so (a 403 is authorization; clearing a cookie may be what the route
/// does). A 401 or a login redirect from the issuer ends the session
/// instead (see [`ends_session`]).
pub fn marks_route(signal: Signal) -> bool {
    matches!(signal, Signal::Denied(403) | Signal::Cleared)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hop(signal: Option<Signal>) -> Facts {
        Facts {
            same_instance: false,
            status: match signal {
                Some(Signal::Denied(s)) => s,
                Some(Signal::LoginRedirect) => 302,
                _ => 200,
            },
            signal,
            path: PathKind::Other,
            ended: false,
            stale: false,
            route_answers_so: false,
            stability: Stability::Stable,
        }
    }

    #[test]
    fn the_issuer_answering_is_the_same_instance_whatever_it_says() {
        let f = Facts {
            same_instance: true,
            ..hop(Some(Signal::Denied(401)))
        };
        assert_eq!(judge(&f), Verdict::SameInstance);
        // ... and its own 401 ends the session (it expired there).
        assert!(ends_session(&f));
        let f = Facts {
            same_instance: true,
            ..hop(Some(Signal::Denied(403)))
        };
        assert!(!ends_session(&f) && marks_route(Signal::Denied(403)));
    }

    #[test]
    fn signs_of_an_unknown_session_on_another_instance_are_broken() {
        for s in [
            Signal::Denied(401),
            Signal::Denied(403),
            Signal::LoginRedirect,
            Signal::Cleared,
            Signal::Reissued,
        ] {
            assert_eq!(judge(&hop(Some(s))), Verdict::Broken(s), "{s:?}");
        }
        assert_eq!(judge(&hop(None)), Verdict::Kept);
    }

    #[test]
    fn a_logout_is_not_a_break_and_ends_the_session() {
        let f = Facts {
            path: PathKind::Logout,
            ..hop(Some(Signal::Cleared))
        };
        assert_eq!(judge(&f), Verdict::Kept);
        assert!(ends_session(&f));
        let later = Facts {
            ended: true,
            ..hop(Some(Signal::Denied(401)))
        };
        assert_eq!(judge(&later), Verdict::Unjudged(Unjudged::Ended));
        // A logout without a Set-Cookie ends it too.
        let f = Facts {
            path: PathKind::Logout,
            ..hop(None)
        };
        assert!(ends_session(&f));
    }

    #[test]
    fn a_login_is_not_a_break() {
        for s in [Signal::Reissued, Signal::Denied(401), Signal::Cleared] {
            let f = Facts {
                path: PathKind::Login,
                ..hop(Some(s))
            };
            assert_eq!(judge(&f), Verdict::Kept, "{s:?}");
        }
    }

    #[test]
    fn an_expired_session_is_not_a_break() {
        let f = Facts {
            stale: true,
            ..hop(Some(Signal::Denied(401)))
        };
        assert_eq!(judge(&f), Verdict::Unjudged(Unjudged::Stale));
        // A stale session answered normally is still kept.
        let f = Facts {
            stale: true,
            ..hop(None)
        };
        assert_eq!(judge(&f), Verdict::Kept);
    }

    #[test]
    fn server_errors_are_not_judged() {
        let f = Facts {
            status: 503,
            ..hop(None)
        };
        assert_eq!(judge(&f), Verdict::Unjudged(Unjudged::ServerError));
    }

    #[test]
    fn a_reissue_breaks_only_a_stable_name() {
        for (stability, want) in [
            (Stability::Stable, Verdict::Broken(Signal::Reissued)),
            (Stability::Rotating, Verdict::Kept),
            (Stability::Unknown, Verdict::Kept),
        ] {
            let f = Facts {
                stability,
                ..hop(Some(Signal::Reissued))
            };
            assert_eq!(judge(&f), want, "{stability:?}");
        }
        assert_eq!(Stability::of(5, 0), Stability::Unknown);
        assert_eq!(Stability::of(20, 0), Stability::Stable);
        assert_eq!(Stability::of(200, 2), Stability::Stable);
        assert_eq!(Stability::of(200, 3), Stability::Rotating);
        assert_eq!(Stability::of(3, 1), Stability::Rotating);
    }

    #[test]
    fn a_route_the_issuers_answer_so_is_kept() {
        let f = Facts {
            route_answers_so: true,
            ..hop(Some(Signal::Denied(403)))
        };
        assert_eq!(judge(&f), Verdict::Kept);
    }
}
