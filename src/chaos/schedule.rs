//! The fault plan: phases, and which fault hits which instance when, drawn from a seed.
//!
//! The plan is a pure function of its [`PlanSpec`]: the same seed (and the
//! same options) gives the same plan, on any machine. Faults come one every
//! `every` through the chaos phase, each of a kind and on an instance drawn
//! from a seeded [`StdRng`], and only where the instance is back in time
//! (`back_after` plus a settling margin) before the phase ends. Unless total
//! outages are allowed, a fault that would leave no instance up is not
//! planned; the tick is recorded as skipped instead.

use std::fmt;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

/// What a fault does to an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// SIGKILL, then a restart after `restart_after`.
    Kill,
    /// SIGTERM (a graceful stop), then a restart after `restart_after`.
    Term,
    /// SIGSTOP, then SIGCONT after `pause`.
    Stop,
}

impl FaultKind {
    /// Parses `kill`, `term` or `stop`.
    pub fn parse(text: &str) -> Result<FaultKind, String> {
        match text.trim().to_ascii_lowercase().as_str() {
            "kill" | "sigkill" => Ok(FaultKind::Kill),
            "term" | "sigterm" => Ok(FaultKind::Term),
            "stop" | "sigstop" | "pause" => Ok(FaultKind::Stop),
            other => Err(format!("unknown fault `{other}`: use kill, term or stop")),
        }
    }

    /// The signal that starts it.
    pub fn signal(self) -> i32 {
        match self {
            FaultKind::Kill => libc::SIGKILL,
            FaultKind::Term => libc::SIGTERM,
            FaultKind::Stop => libc::SIGSTOP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::Kill => "kill",
            FaultKind::Term => "term",
            FaultKind::Stop => "stop",
        }
    }

    /// The signal's name.
    pub fn signal_name(self) -> &'static str {
        match self {
            FaultKind::Kill => "SIGKILL",
            FaultKind::Term => "SIGTERM",
            FaultKind::Stop => "SIGSTOP",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How long each phase lasts, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Phases {
    /// Traffic starts, users run their setup; no checks on latency here.
    pub warmup: Duration,
    /// No faults: the latency reference.
    pub baseline: Duration,
    /// Faults.
    pub chaos: Duration,
    /// No faults: every instance should be back in rotation.
    pub recovery: Duration,
}

/// A phase by name, with its bounds since the start of traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PhaseSpan {
    pub name: &'static str,
    #[serde(serialize_with = "secs")]
    pub start: Duration,
    #[serde(serialize_with = "secs")]
    pub end: Duration,
}

/// Serializes a duration as seconds (three decimals).
pub(crate) fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
}

// === impl Phases ===

impl Phases {
    /// Splits `total`: warm-up 10% (1 to 5 s), baseline 20%, recovery 15%
    /// (2 to 10 s), chaos the rest. Explicit lengths replace the shares;
    /// chaos takes what is left.
    pub fn split(
        total: Duration,
        warmup: Option<Duration>,
        baseline: Option<Duration>,
        recovery: Option<Duration>,
    ) -> Result<Phases, String> {
        let share = |f: f64| total.mul_f64(f);
        let warmup = warmup.unwrap_or_else(|| {
            share(0.10)
                .clamp(Duration::from_secs(1), Duration::from_secs(5))
                .min(total / 4)
        });
        let baseline = baseline.unwrap_or_else(|| share(0.20));
        let recovery = recovery.unwrap_or_else(|| {
            share(0.15)
                .clamp(Duration::from_secs(2), Duration::from_secs(10))
                .min(total / 4)
        });
        let fixed = warmup + baseline + recovery;
        if fixed >= total {
            return Err(format!(
                "--duration {} leaves no time for chaos after warm-up {}, baseline {} and recovery {}",
                human(total),
                human(warmup),
                human(baseline),
                human(recovery)
            ));
        }
        Ok(Phases {
            warmup,
            baseline,
            chaos: total - fixed,
            recovery,
        })
    }

    /// All four.
    pub fn total(&self) -> Duration {
        self.warmup + self.baseline + self.chaos + self.recovery
    }

    /// The phases with their bounds.
    pub fn spans(&self) -> [PhaseSpan; 4] {
        let a = self.warmup;
        let b = a + self.baseline;
        let c = b + self.chaos;
        let d = c + self.recovery;
        [
            PhaseSpan {
                name: "warm-up",
                start: Duration::ZERO,
                end: a,
            },
            PhaseSpan {
                name: "baseline",
                start: a,
                end: b,
            },
            PhaseSpan {
                name: "chaos",
                start: b,
                end: c,
            },
            PhaseSpan {
                name: "recovery",
                start: c,
                end: d,
            },
        ]
    }
}

/// A duration for people: `1.5s`, `250ms`.
pub fn human(d: Duration) -> String {
    if d.as_millis() < 1000 {
        format!("{}ms", d.as_millis())
    } else {
        let s = d.as_secs_f64();
        if (s - s.round()).abs() < 1e-9 {
            format!("{}s", s.round())
        } else {
            format!("{:.1}s", s)
        }
    }
}

/// What the plan is drawn from.
#[derive(Debug, Clone)]
pub struct PlanSpec {
    pub seed: u64,
    pub instances: usize,
    /// The kinds to draw from (at least one).
    pub kinds: Vec<FaultKind>,
    pub every: Duration,
    /// Kill and term: the restart comes this long after the signal.
    pub restart_after: Duration,
    /// Stop: SIGCONT comes this long after SIGSTOP.
    pub pause: Duration,
    pub phases: Phases,
    pub allow_total_outage: bool,
}

/// Time a planned instance gets to start and be seen healthy before it
/// counts as up again.
pub const SETTLE: Duration = Duration::from_millis(500);

/// One planned fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlannedFault {
    /// 1-based, in time order.
    pub n: usize,
    /// Since the start of traffic.
    #[serde(serialize_with = "secs")]
    pub at: Duration,
    pub kind: FaultKind,
    /// The instance's index.
    pub instance: usize,
    /// Restart (kill, term) or SIGCONT (stop) this long after the signal.
    #[serde(serialize_with = "secs")]
    pub back_after: Duration,
}

/// A tick of the schedule with no fault.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SkippedTick {
    #[serde(serialize_with = "secs")]
    pub at: Duration,
    pub reason: String,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub seed: u64,
    pub phases: [PhaseSpan; 4],
    pub faults: Vec<PlannedFault>,
    pub skipped: Vec<SkippedTick>,
}

/// Draws the plan.
pub fn plan(spec: &PlanSpec) -> Plan {
    let mut rng = StdRng::seed_from_u64(spec.seed);
    let spans = spec.phases.spans();
    let (start, end) = (spans[2].start, spans[2].end);
    // When each instance is up again (planned).
    let mut up_at = vec![Duration::ZERO; spec.instances];
    let mut faults = Vec::new();
    let mut skipped = Vec::new();
    let mut at = start;
    while !spec.kinds.is_empty() && !spec.every.is_zero() && at < end {
        // Draw both every tick, so a skip does not shift later draws.
        let kind = spec.kinds[rng.random_range(0..spec.kinds.len())];
        let pick: u64 = rng.random();
        let back_after = match kind {
            FaultKind::Kill | FaultKind::Term => spec.restart_after,
            FaultKind::Stop => spec.pause,
        };
        let up: Vec<usize> = (0..spec.instances).filter(|&i| up_at[i] <= at).collect();
        let reason = if at + back_after > end {
            Some(format!(
                "a {kind} now would not be over ({} later) before the chaos phase ends",
                human(back_after)
            ))
        } else if up.is_empty() {
            Some("every instance is still down".to_owned())
        } else if up.len() == 1 && !spec.allow_total_outage {
            Some("it would leave no instance up (--allow-total-outage allows that)".to_owned())
        } else {
            None
        };
        match reason {
            Some(reason) => skipped.push(SkippedTick { at, reason }),
            None => {
                let instance = up[(pick % up.len() as u64) as usize];
                up_at[instance] = at + back_after + SETTLE;
                faults.push(PlannedFault {
                    n: faults.len() + 1,
                    at,
                    kind,
                    instance,
                    back_after,
                });
            }
        }
        at += spec.every;
    }
    Plan {
        seed: spec.seed,
        phases: spans,
        faults,
        skipped,
    }
}

// === impl Plan ===

impl Plan {
    /// The plan as lines for people (also what `--dry-run` prints).
    pub fn describe(&self) -> String {
        let mut out = format!("seed {}\nphases:", self.seed);
        for p in &self.phases {
            out.push_str(&format!(
                " {} {:.1}-{:.1}s;",
                p.name,
                p.start.as_secs_f64(),
                p.end.as_secs_f64()
            ));
        }
        out.pop();
        out.push('\n');
        for f in &self.faults {
            let then = match f.kind {
                FaultKind::Stop => "SIGCONT",
                _ => "restart",
            };
            out.push_str(&format!(
                "  fault {:>2} at {:>6.2}s: {} instance #{}, {then} {} later\n",
                f.n,
                f.at.as_secs_f64(),
                f.kind.signal_name(),
                f.instance,
                human(f.back_after)
            ));
        }
        for s in &self.skipped {
            out.push_str(&format!(
                "  no fault at {:>6.2}s: {}\n",
                s.at.as_secs_f64(),
                s.reason
            ));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(seed: u64) -> PlanSpec {
        PlanSpec {
            seed,
            instances: 3,
            kinds: vec![FaultKind::Kill, FaultKind::Term, FaultKind::Stop],
            every: Duration::from_secs(2),
            restart_after: Duration::from_secs(1),
            pause: Duration::from_millis(1500),
            phases: Phases::split(Duration::from_secs(60), None, None, None).unwrap(),
            allow_total_outage: false,
        }
    }

    #[test]
    fn the_same_seed_gives_the_same_plan() {
        let a = plan(&spec(7));
        assert_eq!(a, plan(&spec(7)));
        assert_eq!(a.describe(), plan(&spec(7)).describe());
        assert!(a.faults.len() >= 10, "{}", a.describe());
        let b = plan(&spec(8));
        assert_ne!(a.faults, b.faults, "another seed, another plan");
        // Every kind and every instance comes up over a long plan.
        for k in [FaultKind::Kill, FaultKind::Term, FaultKind::Stop] {
            assert!(a.faults.iter().any(|f| f.kind == k), "{}", a.describe());
        }
        for i in 0..3 {
            assert!(a.faults.iter().any(|f| f.instance == i));
        }
    }

    #[test]
    fn faults_stay_in_the_chaos_phase_and_end_before_it_does() {
        let s = spec(1);
        let p = plan(&s);
        let chaos = p.phases[2];
        for f in &p.faults {
            assert!(
                f.at >= chaos.start && f.at + f.back_after <= chaos.end,
                "{f:?}"
            );
            assert_eq!(f.at.as_millis() % 2000, chaos.start.as_millis() % 2000);
        }
        assert_eq!(p.phases[3].end, Duration::from_secs(60));
    }

    /// Instances down at each fault, per the plan.
    fn down_at(p: &Plan, at: Duration) -> usize {
        let mut down = std::collections::HashSet::new();
        for f in &p.faults {
            if f.at <= at && at < f.at + f.back_after + SETTLE {
                down.insert(f.instance);
            }
        }
        down.len()
    }

    #[test]
    fn never_all_down_unless_allowed() {
        for seed in 0..50 {
            let mut s = spec(seed);
            s.instances = 2;
            s.every = Duration::from_millis(500);
            s.restart_after = Duration::from_secs(2);
            let p = plan(&s);
            for f in &p.faults {
                assert!(down_at(&p, f.at) < 2, "seed {seed}: {}", p.describe());
            }
            assert!(p
                .skipped
                .iter()
                .any(|k| k.reason.contains("no instance up")));
        }
        let mut s = spec(3);
        s.instances = 1;
        let p = plan(&s);
        assert!(p.faults.is_empty(), "{}", p.describe());
        s.allow_total_outage = true;
        assert!(!plan(&s).faults.is_empty());
    }

    #[test]
    fn phases_split_the_duration() {
        let p = Phases::split(Duration::from_secs(20), None, None, None).unwrap();
        assert_eq!(
            (p.warmup, p.baseline, p.chaos, p.recovery),
            (
                Duration::from_secs(2),
                Duration::from_secs(4),
                Duration::from_secs(11),
                Duration::from_secs(3)
            )
        );
        assert_eq!(p.total(), Duration::from_secs(20));
        let q = Phases::split(
            Duration::from_secs(10),
            Some(Duration::from_secs(1)),
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(1)),
        )
        .unwrap();
        assert_eq!(q.chaos, Duration::from_secs(6));
        assert!(Phases::split(
            Duration::from_secs(3),
            None,
            Some(Duration::from_secs(3)),
            None
        )
        .unwrap_err()
        .contains("no time for chaos"));
    }

    #[test]
    fn fault_names_parse() {
        assert_eq!(FaultKind::parse("KILL"), Ok(FaultKind::Kill));
        assert_eq!(FaultKind::parse("sigterm"), Ok(FaultKind::Term));
        assert_eq!(FaultKind::parse("stop"), Ok(FaultKind::Stop));
        assert!(FaultKind::parse("nuke").is_err());
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(3)), "3s");
    }
}
