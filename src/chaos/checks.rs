//! The verdict: checks that pass or fail, validity checks (without which the run proves nothing), and figures only reported.
//!
//! - Checks: `broken_expectations` (must be 0), `success_ratio` overall and
//!   `success_ratio_in_kill_windows` (of requests not lost), `p99_latency`
//!   (kill windows against the baseline), `affinity_cookies_seen` (must be
//!   0), `session_hops` (the balancer's own evidence: no session cookie's
//!   hops between instances broke by the rule `unstick serve` warns by),
//!   `time_to_readmit` (every instance taken down is back in rotation
//!   before the end).
//! - Validity: `faults_executed`, `cross_instance_pairs`,
//!   `every_instance_served`, `achieved_rate`.
//! - Reported: `time_to_eject`, `in_flight_not_replayable` (a check under
//!   `--strict`).
//!
//! Every request that did not succeed has one [`FailureClass`]:
//! `in_flight_not_replayable` (a request the balancer must not send twice,
//! in flight when an instance died), `lost` (any other failure: the
//! balancer should have hidden it) or `broken` (the app answered, but not as
//! the step expected).
//!
//! A failed check is a FAIL whatever the validity (the failure was seen);
//! otherwise a failed validity check makes the run INCONCLUSIVE; otherwise PASS.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::scenario::{Scenario, Step};
use super::schedule::{FaultKind, PhaseSpan};
use super::session_hops::SessionHops;
use super::traffic::{Broken, Sample, StepRef, UserLog, Verdict};

/// Below this, a baseline p99 is raised to it before the ratio applies, so
/// the default bar (10x) is never under 500 ms. On loopback a baseline p99
/// is 1 to 5 ms, and scheduler noise on a shared CI runner (tens of ms)
/// would look like a regression; the stalls this check is for (requests
/// stuck on a paused or dead instance until a health check or a timeout
/// acts) cost hundreds of ms to seconds.
pub const P99_FLOOR: Duration = Duration::from_millis(50);
/// Consecutive step pairs of a user on different instances needed...
pub const MIN_CROSS_PAIRS: u64 = 20;
/// ...and their least share of all pairs.
pub const MIN_CROSS_SHARE: f64 = 0.10;
/// The achieved request rate must reach this share of the target.
pub const MIN_RATE_SHARE: f64 = 0.90;
/// Broken expectations quoted in full in the report.
pub const EXAMPLES: usize = 8;

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Outcome {
    Pass,
    Fail,
    Inconclusive,
}

impl Outcome {
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Pass => "PASS",
            Outcome::Fail => "FAIL",
            Outcome::Inconclusive => "INCONCLUSIVE",
        }
    }

    /// 0 PASS, 1 FAIL, 3 INCONCLUSIVE.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Pass => 0,
            Outcome::Fail => 1,
            Outcome::Inconclusive => 3,
        }
    }
}

/// What kind of check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Failing it fails the run.
    Check,
    /// Failing it makes the run inconclusive.
    Validity,
    /// Reported only.
    Info,
}

/// One check with its observed value and threshold.
#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub kind: Kind,
    pub passed: bool,
    /// For people, e.g. `99.95% (3 of 6012 failed)`.
    pub observed: String,
    /// For people, e.g. `>= 99.9%`.
    pub threshold: String,
    /// For machines.
    pub value: serde_json::Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// The limits a run is held to.
#[derive(Debug, Clone, Copy)]
pub struct Thresholds {
    /// Least share of requests that must succeed (0 to 1).
    pub min_success: f64,
    /// Kill-window p99 over baseline p99 (raised to [`P99_FLOOR`]).
    pub max_p99_ratio: f64,
    /// In-flight requests that could not be replayed count as failures too.
    pub strict: bool,
}

/// Why a request did not succeed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// A request the balancer must not send twice (a non-idempotent method
    /// without an `Idempotency-Key`) failed while an instance was down: it
    /// was in flight on the instance that died, and replaying it could have
    /// made its change twice.
    InFlightNotReplayable,
    /// Any other failed request: the balancer should have hidden it.
    Lost,
    /// The app answered, but not as the step expected.
    Broken,
}

impl FailureClass {
    pub fn name(self) -> &'static str {
        match self {
            FailureClass::InFlightNotReplayable => "in_flight_not_replayable",
            FailureClass::Lost => "lost",
            FailureClass::Broken => "broken",
        }
    }

    /// What the class means, for reports.
    pub fn meaning(self) -> &'static str {
        match self {
            FailureClass::InFlightNotReplayable => {
                "a non-idempotent request without an Idempotency-Key was in flight on an instance                  that died; unstick rightly did not send it again"
            }
            FailureClass::Lost => {
                "a request failed that the balancer could have sent elsewhere, or that failed                  while no instance died"
            }
            FailureClass::Broken => "the app answered, but not as the step expected",
        }
    }
}

/// Requests by [`FailureClass`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct FailureCounts {
    pub in_flight_not_replayable: u64,
    pub lost: u64,
    pub broken: u64,
}

impl FailureCounts {
    fn add(&mut self, class: FailureClass) {
        match class {
            FailureClass::InFlightNotReplayable => self.in_flight_not_replayable += 1,
            FailureClass::Lost => self.lost += 1,
            FailureClass::Broken => self.broken += 1,
        }
    }

    /// `(class, count)` for each class, in report order.
    pub fn each(&self) -> [(FailureClass, u64); 3] {
        [
            (FailureClass::Lost, self.lost),
            (FailureClass::Broken, self.broken),
            (
                FailureClass::InFlightNotReplayable,
                self.in_flight_not_replayable,
            ),
        ]
    }
}

impl Thresholds {
    /// The default success bar: 100% for a read-only scenario under SIGTERM
    /// alone (every failure could have been retried or drained), else 99.9%
    /// (a SIGKILL or a pause can catch a non-idempotent request mid-way,
    /// which must not be replayed).
    pub fn default_min_success(scenario: &Scenario, kinds: &[FaultKind]) -> f64 {
        if scenario.is_read_only() && kinds.iter().all(|k| *k == FaultKind::Term) {
            1.0
        } else {
            0.999
        }
    }
}

/// One fault as it happened, in seconds since the start of traffic.
#[derive(Debug, Clone, Serialize)]
pub struct FaultRecord {
    pub n: usize,
    pub kind: FaultKind,
    pub signal: &'static str,
    pub instance: usize,
    pub address: String,
    pub planned_at_s: f64,
    pub at_s: Option<f64>,
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// How the process ended (kill, term).
    pub exit: Option<String>,
    /// Restarted and ready (kill, term) or continued (stop).
    pub back_at_s: Option<f64>,
    pub new_pid: Option<u32>,
    /// Seen out of rotation on the admin API.
    pub ejected_at_s: Option<f64>,
    /// Seen back in rotation.
    pub readmitted_at_s: Option<f64>,
    /// Signal to out of rotation.
    pub time_to_eject_ms: Option<f64>,
    /// Restart asked for (or SIGCONT sent) to back in rotation.
    pub time_to_readmit_ms: Option<f64>,
    /// Out of rotation to back in.
    pub out_of_rotation_ms: Option<f64>,
    /// The stretch whose requests count as "in a kill window".
    pub window_s: Option<(f64, f64)>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// An instance incarnation: which slot and process an identity header value names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Incarnation {
    pub index: usize,
    pub pid: u32,
}

/// Everything the verdict is drawn from.
pub struct Input<'a> {
    pub t0: Instant,
    pub phases: [PhaseSpan; 4],
    pub logs: &'a [UserLog],
    pub scenario: &'a Scenario,
    pub faults: &'a [FaultRecord],
    /// Identity header value -> the process that sent it.
    pub identities: &'a HashMap<String, Incarnation>,
    /// The identity header names, for messages.
    pub identity_header: &'a str,
    /// Per instance: its address and the requests the balancer sent it.
    pub served: &'a [(String, u64)],
    /// Affinity cookies the balancer saw backends set: `(backend, cookie, count)`.
    pub affinity: &'a [(String, String, u64)],
    /// Session hops between instances as the balancer judged them.
    pub session_hops: &'a SessionHops,
    pub target_rate: f64,
    pub thresholds: Thresholds,
}

/// The run's figures and checks.
#[derive(Debug, Clone, Serialize)]
pub struct Analysis {
    pub outcome: Outcome,
    pub checks: Vec<Check>,
    pub totals: Totals,
    pub steps: Vec<StepStats>,
    pub broken_examples: Vec<BrokenExample>,
    pub series: Series,
    /// Merged kill windows, seconds.
    pub kill_windows: Vec<(f64, f64)>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    pub requests: u64,
    pub ok: u64,
    pub broken: u64,
    pub failed: u64,
    /// Every request that did not succeed, by class.
    pub failures: FailureCounts,
    /// Failed requests by class: `refused`, `reset`, `timeout`, `other`, `http_502`...
    pub failed_by_class: BTreeMap<String, u64>,
    pub duration_s: f64,
    pub achieved_rate: f64,
    pub target_rate: f64,
    pub baseline_p99_ms: Option<f64>,
    pub kill_window_p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepStats {
    pub step: String,
    pub setup: bool,
    /// Whether the balancer may send it again (idempotent, or keyed).
    pub replayable: bool,
    pub requests: u64,
    pub ok: u64,
    pub broken: u64,
    pub failed: u64,
    pub failures: FailureCounts,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BrokenExample {
    /// e.g. `GET /whoami expected status 200, got status 401 on instance #2 (pid 4242) after setup on instance #0 (pid 4240)`.
    pub message: String,
    pub step: String,
    pub user: usize,
    pub iteration: u64,
    pub at_s: f64,
    pub instance: Option<String>,
    pub setup_instance: Option<String>,
    pub previous_instance: Option<String>,
}

/// The run over time, for the chart.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub bucket_s: f64,
    pub buckets: Vec<Bucket>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Start, seconds.
    pub t: f64,
    /// Requests that ended in it, per second.
    pub rate: f64,
    pub failed: u64,
    pub broken: u64,
    pub p99_ms: Option<f64>,
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

fn p_ms(lat: &mut [u64], p: f64) -> Option<f64> {
    lat.sort_unstable();
    percentile(lat, p).map(|us| round(us as f64 / 1000.0, 3))
}

fn pct(x: f64) -> String {
    if x >= 1.0 {
        "100%".into()
    } else {
        // Never round a shortfall up to 100%.
        let p = (x * 100.0 * 1000.0).floor() / 1000.0;
        format!("{p}%")
    }
}

// === impl Input ===

impl Input<'_> {
    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.t0).as_secs_f64()
    }

    fn label(&self, step: StepRef) -> String {
        match step {
            StepRef::Setup(i) => self
                .scenario
                .setup
                .get(i as usize)
                .map(|s| format!("{} (setup)", s.label))
                .unwrap_or_default(),
            StepRef::Loop(i) => self
                .scenario
                .steps
                .get(i as usize)
                .map(|s| s.label.clone())
                .unwrap_or_default(),
        }
    }

    /// "instance #2 (pid 4242)" for an identity.
    fn instance_name(&self, id: Option<&str>) -> String {
        match id {
            None => format!("an instance that sent no {} header", self.identity_header),
            Some(id) => match self.identities.get(id) {
                Some(i) => format!("instance #{} (pid {})", i.index, i.pid),
                None => format!("instance {id:?}"),
            },
        }
    }

    /// The slot an identity belongs to, or the identity itself.
    fn slot_key(&self, id: &str) -> String {
        match self.identities.get(id) {
            Some(i) => format!("#{}", i.index),
            None => id.to_owned(),
        }
    }

    fn samples(&self) -> impl Iterator<Item = &Sample> {
        self.logs.iter().flat_map(|l| l.samples.iter())
    }

    fn step(&self, step: StepRef) -> Option<&Step> {
        match step {
            StepRef::Setup(i) => self.scenario.setup.get(i as usize),
            StepRef::Loop(i) => self.scenario.steps.get(i as usize),
        }
    }

    /// Why a request did not succeed (`None`: it did). A failed request
    /// the balancer must not replay is in flight on a dying instance when
    /// it meets a kill window (from the fault until the instance is back).
    fn classify(&self, s: &Sample, kill_windows: &[(f64, f64)]) -> Option<FailureClass> {
        match s.verdict {
            Verdict::Ok => None,
            Verdict::Broken => Some(FailureClass::Broken),
            Verdict::Failed(_) => {
                let replayable = self.step(s.step).is_none_or(Step::replayable);
                if !replayable && in_windows(self, s, kill_windows) {
                    Some(FailureClass::InFlightNotReplayable)
                } else {
                    Some(FailureClass::Lost)
                }
            }
        }
    }

    /// Every sample's class, counted.
    fn failures<'a>(
        &self,
        samples: impl Iterator<Item = &'a Sample>,
        kill_windows: &[(f64, f64)],
    ) -> FailureCounts {
        let mut counts = FailureCounts::default();
        for s in samples {
            if let Some(c) = self.classify(s, kill_windows) {
                counts.add(c);
            }
        }
        counts
    }
}

/// Whether a sample's [sent, done] meets a window.
fn in_windows(input: &Input<'_>, s: &Sample, windows: &[(f64, f64)]) -> bool {
    let (a, b) = (input.secs(s.sent), input.secs(s.done));
    windows.iter().any(|&(ws, we)| a <= we && b >= ws)
}

/// The kill windows of executed faults, merged.
fn windows(faults: &[FaultRecord]) -> Vec<(f64, f64)> {
    let mut w: Vec<(f64, f64)> = faults.iter().filter_map(|f| f.window_s).collect();
    w.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut merged: Vec<(f64, f64)> = Vec::new();
    for (s, e) in w {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// Requests and failures among some samples.
struct Tally {
    requests: u64,
    /// Failures held against the bar: the lost ones, and under `--strict`
    /// the in-flight ones too.
    failed: u64,
    /// Failed requests in flight on a dying instance, not replayable.
    in_flight: u64,
    strict: bool,
    /// `failed` by transport class or status.
    by_class: BTreeMap<String, u64>,
}

impl Tally {
    fn of(input: &Input<'_>, samples: &[&Sample], kill_windows: &[(f64, f64)]) -> Tally {
        let strict = input.thresholds.strict;
        let (mut failed, mut in_flight) = (0, 0);
        let mut by_class = BTreeMap::new();
        for s in samples {
            let Verdict::Failed(f) = s.verdict else {
                continue;
            };
            if input.classify(s, kill_windows) == Some(FailureClass::InFlightNotReplayable) {
                in_flight += 1;
                if !strict {
                    continue;
                }
            }
            failed += 1;
            *by_class.entry(f.class()).or_insert(0) += 1;
        }
        Tally {
            requests: samples.len() as u64,
            failed,
            in_flight,
            strict,
            by_class,
        }
    }

    /// `99.75% (1 of 400 failed)`, saying what was left out.
    fn observed(&self) -> String {
        let left_out = if self.in_flight > 0 && !self.strict {
            format!(
                "; {} in flight, not replayable: not counted",
                self.in_flight
            )
        } else {
            String::new()
        };
        format!(
            "{} ({} of {} failed{left_out})",
            pct(self.ratio()),
            self.failed,
            self.requests
        )
    }

    /// The share that succeeded (1 with no requests).
    fn ratio(&self) -> f64 {
        if self.requests == 0 {
            1.0
        } else {
            (self.requests - self.failed) as f64 / self.requests as f64
        }
    }

    fn json(&self) -> serde_json::Value {
        json!({ "ratio": self.ratio(), "requests": self.requests, "failed": self.failed, "in_flight_not_replayable": self.in_flight, "by_class": self.by_class })
    }

    fn detail(&self) -> Option<String> {
        (self.failed > 0).then(|| format!("failed requests by class: {}", classes(&self.by_class)))
    }
}

fn classes(by: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = by.iter().map(|(k, v)| format!("{k}: {v}")).collect();
    parts.join(", ")
}

/// Draws the verdict.
pub fn analyze(input: &Input<'_>) -> Analysis {
    let duration = input.phases[3].end.as_secs_f64();
    let all: Vec<&Sample> = input.samples().collect();
    let kill_windows = windows(input.faults);
    let windowed: Vec<&Sample> = all
        .iter()
        .copied()
        .filter(|s| in_windows(input, s, &kill_windows))
        .collect();
    let examples = examples(input);
    let overall = Tally::of(input, &all, &kill_windows);
    let base_p99 = baseline_p99(input, &all);
    let win_p99 = p_ms(
        &mut windowed.iter().map(|s| s.latency_us).collect::<Vec<_>>(),
        0.99,
    );
    let mut totals = totals(input, &all, &kill_windows, duration);
    (totals.baseline_p99_ms, totals.kill_window_p99_ms) = (base_p99, win_p99);
    let executed: Vec<&FaultRecord> = input.faults.iter().filter(|f| f.at_s.is_some()).collect();
    let th = input.thresholds;
    let checks = vec![
        broken_expectations(input, &all, &examples),
        success_ratio(th, &overall),
        success_ratio_in_kill_windows(th, &Tally::of(input, &windowed, &kill_windows)),
        in_flight_not_replayable(input, &all, &kill_windows),
        p99_latency(th, base_p99, win_p99),
        affinity_cookies_seen(input),
        session_hops(input.session_hops),
        time_to_eject(&executed),
        time_to_readmit(&executed),
        faults_executed(input, &executed),
        cross_instance_pairs(input),
        every_instance_served(input),
        achieved_rate(input, totals.achieved_rate),
    ];
    Analysis {
        outcome: outcome(&checks),
        checks,
        totals,
        steps: step_stats(input, &kill_windows),
        broken_examples: examples,
        series: series(input, duration),
        kill_windows: kill_windows
            .iter()
            .map(|&(a, b)| (round(a, 3), round(b, 3)))
            .collect(),
    }
}

/// The run's counts (latencies are filled in by the caller).
fn totals(
    input: &Input<'_>,
    all: &[&Sample],
    kill_windows: &[(f64, f64)],
    duration: f64,
) -> Totals {
    let mut failed_by_class = BTreeMap::new();
    for s in all {
        if let Verdict::Failed(f) = s.verdict {
            *failed_by_class.entry(f.class()).or_insert(0) += 1;
        }
    }
    let requests = all.len() as u64;
    let achieved = if duration > 0.0 {
        requests as f64 / duration
    } else {
        0.0
    };
    Totals {
        requests,
        ok: all.iter().filter(|s| s.verdict == Verdict::Ok).count() as u64,
        broken: all.iter().filter(|s| s.verdict == Verdict::Broken).count() as u64,
        failed: failed_by_class.values().sum(),
        failures: input.failures(all.iter().copied(), kill_windows),
        failed_by_class,
        duration_s: duration,
        achieved_rate: round(achieved, 2),
        target_rate: input.target_rate,
        baseline_p99_ms: None,
        kill_window_p99_ms: None,
    }
}

/// A failed check is a FAIL; else a failed validity check is INCONCLUSIVE.
fn outcome(checks: &[Check]) -> Outcome {
    if checks.iter().any(|c| c.kind == Kind::Check && !c.passed) {
        Outcome::Fail
    } else if checks.iter().any(|c| c.kind == Kind::Validity && !c.passed) {
        Outcome::Inconclusive
    } else {
        Outcome::Pass
    }
}

/// The p99 of requests sent in the baseline phase.
fn baseline_p99(input: &Input<'_>, all: &[&Sample]) -> Option<f64> {
    let span = input.phases[1];
    let (b0, b1) = (span.start.as_secs_f64(), span.end.as_secs_f64());
    let mut lat: Vec<u64> = all
        .iter()
        .filter(|s| {
            let t = input.secs(s.sent);
            t >= b0 && t < b1
        })
        .map(|s| s.latency_us)
        .collect();
    p_ms(&mut lat, 0.99)
}

fn broken_expectations(input: &Input<'_>, all: &[&Sample], examples: &[BrokenExample]) -> Check {
    let mut by_step: BTreeMap<String, u64> = BTreeMap::new();
    for s in all.iter().filter(|s| s.verdict == Verdict::Broken) {
        *by_step.entry(input.label(s.step)).or_insert(0) += 1;
    }
    let count: u64 = by_step.values().sum();
    Check {
        name: "broken_expectations",
        kind: Kind::Check,
        passed: count == 0,
        observed: format!("{count}"),
        threshold: "0".into(),
        value: json!({ "count": count, "by_step": by_step }),
        detail: (count > 0).then(|| {
            let mut d = format!(
                "responses that did not meet their step's expectation: {}",
                classes(&by_step)
            );
            if let Some(e) = examples.first() {
                d.push_str(&format!("; e.g. {}", e.message));
            }
            d
        }),
    }
}

/// Whether a success ratio meets the bar (allowing float error).
fn meets(ratio: f64, th: Thresholds) -> bool {
    ratio + 1e-12 >= th.min_success
}

fn success_ratio(th: Thresholds, t: &Tally) -> Check {
    Check {
        name: "success_ratio",
        kind: Kind::Check,
        passed: t.requests > 0 && meets(t.ratio(), th),
        observed: t.observed(),
        threshold: format!(">= {}", pct(th.min_success)),
        value: t.json(),
        detail: t.detail(),
    }
}

fn success_ratio_in_kill_windows(th: Thresholds, t: &Tally) -> Check {
    Check {
        name: "success_ratio_in_kill_windows",
        kind: Kind::Check,
        passed: meets(t.ratio(), th),
        observed: if t.requests == 0 {
            "no requests in kill windows".into()
        } else {
            t.observed()
        },
        threshold: format!(">= {}", pct(th.min_success)),
        value: t.json(),
        detail: t.detail(),
    }
}

/// The p99 in kill windows against the baseline's (raised to [`P99_FLOOR`]).
fn p99_latency(th: Thresholds, base_p99: Option<f64>, win_p99: Option<f64>) -> Check {
    let floor_ms = P99_FLOOR.as_secs_f64() * 1000.0;
    let (passed, observed, threshold, ratio_v) = match (base_p99, win_p99) {
        (Some(b), Some(w)) => {
            let limit = th.max_p99_ratio * b.max(floor_ms);
            (
                w <= limit,
                format!(
                    "{w:.1} ms in kill windows, {b:.1} ms baseline ({:.1}x)",
                    w / b.max(0.001)
                ),
                format!(
                    "<= {:.1} ms ({}x the baseline, at least {}x {} ms)",
                    limit, th.max_p99_ratio, th.max_p99_ratio, floor_ms
                ),
                Some(w / b.max(0.001)),
            )
        }
        (None, _) => (
            false,
            "no baseline requests".into(),
            format!("<= {}x the baseline", th.max_p99_ratio),
            None,
        ),
        (Some(b), None) => (
            true,
            format!("no requests in kill windows ({b:.1} ms baseline)"),
            format!("<= {}x the baseline", th.max_p99_ratio),
            None,
        ),
    };
    Check {
        name: "p99_latency",
        kind: Kind::Check,
        passed,
        observed,
        threshold,
        value: json!({ "kill_windows_ms": win_p99, "baseline_ms": base_p99, "ratio": ratio_v, "max_ratio": th.max_p99_ratio, "floor_ms": floor_ms }),
        detail: (!passed && win_p99.is_some()).then(|| {
            "requests waited on an instance that was down or frozen until a health check took it out \
             or it came back: quicker health checks ([health.active] interval, fall) or a shorter \
             timeouts.response_header in --config shorten the wait"
                .to_owned()
        }),
    }
}

/// Reported (a check under `--strict`): failed requests the balancer must
/// not replay that were in flight on a dying instance, with the fix.
fn in_flight_not_replayable(
    input: &Input<'_>,
    all: &[&Sample],
    kill_windows: &[(f64, f64)],
) -> Check {
    let mut by_step: BTreeMap<String, u64> = BTreeMap::new();
    for s in all {
        if input.classify(s, kill_windows) == Some(FailureClass::InFlightNotReplayable) {
            *by_step.entry(input.label(s.step)).or_insert(0) += 1;
        }
    }
    let count: u64 = by_step.values().sum();
    let strict = input.thresholds.strict;
    Check {
        name: "in_flight_not_replayable",
        kind: if strict { Kind::Check } else { Kind::Info },
        passed: !strict || count == 0,
        observed: format!("{count}"),
        threshold: if strict {
            "0 (--strict)".into()
        } else {
            "reported (must be 0 with --strict)".into()
        },
        value: json!({ "count": count, "by_step": by_step, "strict": strict }),
        detail: (count > 0).then(|| {
            format!(
                "requests that must not be sent twice (POST or PATCH without an Idempotency-Key) \
                 were in flight on an instance that died, so unstick did not replay them: {}. \
                 Send an Idempotency-Key header with them (a new key per request: {{{{uuid}}}} \
                 in a scenario) and have the app store each key's response: unstick then replays \
                 them on another instance, which answers a repeat with the stored response",
                classes(&by_step)
            )
        }),
    }
}

fn affinity_cookies_seen(input: &Input<'_>) -> Check {
    let total: u64 = input.affinity.iter().map(|a| a.2).sum();
    Check {
        name: "affinity_cookies_seen",
        kind: Kind::Check,
        passed: total == 0,
        observed: format!("{total}"),
        threshold: "0".into(),
        value: json!({
            "count": total,
            "cookies": input.affinity.iter().map(|(b, c, n)| json!({"backend": b, "cookie": c, "count": n})).collect::<Vec<_>>(),
        }),
        detail: (total > 0).then(|| {
            let list: Vec<String> = input
                .affinity
                .iter()
                .map(|(b, c, n)| format!("{b} set {c} {n} time(s)"))
                .collect();
            format!(
                "the app tried to pin clients to instances (unstick refused): {}",
                list.join(", ")
            )
        }),
    }
}

/// The balancer's view: each session cookie's hops between instances, held
/// to the share of broken hops `unstick serve` warns at.
fn session_hops(h: &SessionHops) -> Check {
    let sum = |f: fn(&super::session_hops::CookieHops) -> u64| h.cookies.iter().map(f).sum::<u64>();
    let (hops, kept, broken) = (sum(|c| c.hops), sum(|c| c.kept), sum(|c| c.broken));
    let failing: Vec<String> = h.failing().map(|c| c.name.clone()).collect();
    let observed = match (&h.missing, h.cookies.is_empty()) {
        (Some(why), _) => format!("no evidence: {why}"),
        (None, true) => "no session cookie seen (none of the app's cookies looked like one)".into(),
        (None, false) => format!(
            "{broken} of {} judged hops broke; {hops} hops, {} same-instance requests ({})",
            kept + broken,
            sum(|c| c.same_instance),
            h.cookies
                .iter()
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    Check {
        name: "session_hops",
        kind: Kind::Check,
        passed: failing.is_empty(),
        observed,
        threshold: format!(
            "per cookie, < {} of its judged hops broken (judged once >= {})",
            pct(h.rule.share),
            h.rule.min_hops
        ),
        value: json!({ "hops": hops, "kept": kept, "broken": broken, "failing": failing }),
        detail: h
            .failing()
            .next()
            .map(|c| {
                let e = c.examples.last().map(|e| format!(", e.g. {}", e.message));
                format!(
                    "the balancer saw sessions break when another instance answered: cookie `{}`: {} of {} judged hops{}",
                    c.name,
                    c.broken,
                    c.judged(),
                    e.unwrap_or_default()
                )
            })
            .or(h.missing.clone()),
    }
}

/// "median X ms, max Y ms" of some durations, or "none".
fn median_and_max(v: &[f64]) -> String {
    if v.is_empty() {
        return "none".into();
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    format!(
        "median {:.0} ms, max {:.0} ms",
        s[s.len() / 2],
        s[s.len() - 1]
    )
}

fn time_to_eject(executed: &[&FaultRecord]) -> Check {
    let ejects: Vec<f64> = executed.iter().filter_map(|f| f.time_to_eject_ms).collect();
    Check {
        name: "time_to_eject",
        kind: Kind::Info,
        passed: true,
        observed: format!(
            "{} ({} of {} faults seen out of rotation)",
            median_and_max(&ejects),
            ejects.len(),
            executed.len()
        ),
        threshold: "reported".into(),
        value: json!(executed
            .iter()
            .map(|f| json!({"fault": f.n, "ms": f.time_to_eject_ms}))
            .collect::<Vec<_>>()),
        detail: None,
    }
}

fn time_to_readmit(executed: &[&FaultRecord]) -> Check {
    let readmits: Vec<f64> = executed
        .iter()
        .filter_map(|f| f.time_to_readmit_ms)
        .collect();
    let missing: Vec<String> = executed
        .iter()
        .filter(|f| f.readmitted_at_s.is_none() && f.ejected_at_s.is_some())
        .map(|f| format!("fault {} (instance #{})", f.n, f.instance))
        .collect();
    Check {
        name: "time_to_readmit",
        kind: Kind::Check,
        passed: missing.is_empty(),
        observed: median_and_max(&readmits),
        threshold: "every instance taken out is back in rotation before the end".into(),
        value: json!(executed
            .iter()
            .map(|f| json!({"fault": f.n, "ms": f.time_to_readmit_ms}))
            .collect::<Vec<_>>()),
        detail: (!missing.is_empty())
            .then(|| format!("never back in rotation: {}", missing.join(", "))),
    }
}

fn faults_executed(input: &Input<'_>, executed: &[&FaultRecord]) -> Check {
    let skipped = input.faults.len() - executed.len();
    Check {
        name: "faults_executed",
        kind: Kind::Validity,
        passed: !executed.is_empty(),
        observed: format!("{} ({skipped} skipped)", executed.len()),
        threshold: ">= 1".into(),
        value: json!({ "executed": executed.len(), "skipped": skipped }),
        detail: executed.is_empty().then(|| {
            "no fault was carried out, so nothing was proven (with one instance, faults need --allow-total-outage)".to_owned()
        }),
    }
}

fn cross_instance_pairs(input: &Input<'_>) -> Check {
    let (pairs, cross, seen_ids) = cross_pairs(input);
    let share = if pairs == 0 {
        0.0
    } else {
        cross as f64 / pairs as f64
    };
    let need = MIN_CROSS_PAIRS.max((MIN_CROSS_SHARE * pairs as f64).ceil() as u64);
    Check {
        name: "cross_instance_pairs",
        kind: Kind::Validity,
        passed: cross >= need,
        observed: format!("{cross} of {pairs} consecutive step pairs ({})", pct(share)),
        threshold: format!(
            ">= {MIN_CROSS_PAIRS} and >= {}% of pairs",
            MIN_CROSS_SHARE * 100.0
        ),
        value: json!({ "cross": cross, "pairs": pairs, "share": share }),
        detail: if seen_ids == 0 {
            Some(format!(
                "no response carried {}: chaos cannot tell which instance answered; \
                 have the app send a header naming its instance and pass it with --instance-header",
                input.identity_header
            ))
        } else if cross < need {
            Some("a user's consecutive steps rarely changed instances, so sharing state was barely exercised (one instance? an algorithm that keeps users on one backend?)".into())
        } else {
            None
        },
    }
}

fn every_instance_served(input: &Input<'_>) -> Check {
    let idle: Vec<String> = input
        .served
        .iter()
        .enumerate()
        .filter(|(_, (_, n))| *n == 0)
        .map(|(i, (a, _))| format!("#{i} ({a})"))
        .collect();
    Check {
        name: "every_instance_served",
        kind: Kind::Validity,
        passed: idle.is_empty() && !input.served.is_empty(),
        observed: input
            .served
            .iter()
            .enumerate()
            .map(|(i, (_, n))| format!("#{i}: {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        threshold: "every instance > 0 requests".into(),
        value: json!(input
            .served
            .iter()
            .map(|(a, n)| json!({"address": a, "requests": n}))
            .collect::<Vec<_>>()),
        detail: (!idle.is_empty()).then(|| format!("never sent a request: {}", idle.join(", "))),
    }
}

fn achieved_rate(input: &Input<'_>, achieved: f64) -> Check {
    let floor = MIN_RATE_SHARE * input.target_rate;
    Check {
        name: "achieved_rate",
        kind: Kind::Validity,
        passed: achieved >= floor,
        observed: format!("{achieved:.1}/s"),
        threshold: format!(
            ">= {:.1}/s ({}% of {}/s)",
            floor,
            MIN_RATE_SHARE * 100.0,
            input.target_rate
        ),
        value: json!({ "achieved": achieved, "target": input.target_rate }),
        detail: (achieved < floor).then(|| {
            "the load fell short of the target: more --users, or a lower --rate".to_owned()
        }),
    }
}

/// (pairs, pairs on different instances, responses with an identity).
fn cross_pairs(input: &Input<'_>) -> (u64, u64, u64) {
    let (mut pairs, mut cross, mut seen) = (0, 0, 0);
    for log in input.logs {
        let mut prev: Option<String> = None;
        for s in &log.samples {
            if matches!(s.verdict, Verdict::Failed(_)) {
                continue;
            }
            let Some(id) = &s.instance else {
                continue;
            };
            seen += 1;
            let key = input.slot_key(id);
            if let Some(p) = &prev {
                pairs += 1;
                if *p != key {
                    cross += 1;
                }
            }
            prev = Some(key);
        }
    }
    (pairs, cross, seen)
}

fn step_stats(input: &Input<'_>, kill_windows: &[(f64, f64)]) -> Vec<StepStats> {
    let mut by: BTreeMap<StepRef, (u64, u64, u64, FailureCounts, Vec<u64>)> = BTreeMap::new();
    for s in input.samples() {
        let e = by.entry(s.step).or_default();
        match s.verdict {
            Verdict::Ok => e.0 += 1,
            Verdict::Broken => e.1 += 1,
            Verdict::Failed(_) => e.2 += 1,
        }
        if let Some(c) = input.classify(s, kill_windows) {
            e.3.add(c);
        }
        e.4.push(s.latency_us);
    }
    by.into_iter()
        .map(
            |(step, (ok, broken, failed, failures, mut lat))| StepStats {
                step: input.label(step),
                setup: matches!(step, StepRef::Setup(_)),
                replayable: input.step(step).is_none_or(Step::replayable),
                requests: ok + broken + failed,
                ok,
                broken,
                failed,
                failures,
                p50_ms: p_ms(&mut lat, 0.50),
                p99_ms: p_ms(&mut lat, 0.99),
            },
        )
        .collect()
}

/// The first broken expectations, one per user first, in time order.
fn examples(input: &Input<'_>) -> Vec<BrokenExample> {
    let mut all: Vec<&Broken> = input.logs.iter().flat_map(|l| l.broken.iter()).collect();
    all.sort_by_key(|b| b.at);
    let mut picked: Vec<&Broken> = Vec::new();
    for b in &all {
        if picked.len() < EXAMPLES && !picked.iter().any(|p| p.user == b.user) {
            picked.push(b);
        }
    }
    for b in &all {
        if picked.len() >= EXAMPLES {
            break;
        }
        if !picked.iter().any(|p| std::ptr::eq(*p, *b)) {
            picked.push(b);
        }
    }
    picked.sort_by_key(|b| b.at);
    picked
        .into_iter()
        .map(|b| {
            let step = input.label(b.step);
            let mut message = format!(
                "{step} expected {}, got {} on {}",
                b.expected,
                b.got,
                input.instance_name(b.instance.as_deref())
            );
            if matches!(b.step, StepRef::Loop(_)) && !input.scenario.setup.is_empty() {
                message.push_str(&format!(
                    " after setup on {}",
                    input.instance_name(b.setup_instance.as_deref())
                ));
            }
            if b.previous_instance.is_some() {
                message.push_str(&format!(
                    "; the user's previous request was answered by {}",
                    input.instance_name(b.previous_instance.as_deref())
                ));
            }
            message.push_str(&format!(" (user {}, iteration {})", b.user, b.iter));
            BrokenExample {
                message,
                step,
                user: b.user,
                iteration: b.iter,
                at_s: round(input.secs(b.at), 3),
                instance: b.instance.as_deref().map(|i| input.instance_name(Some(i))),
                setup_instance: b
                    .setup_instance
                    .as_deref()
                    .map(|i| input.instance_name(Some(i))),
                previous_instance: b
                    .previous_instance
                    .as_deref()
                    .map(|i| input.instance_name(Some(i))),
            }
        })
        .collect()
}

fn series(input: &Input<'_>, duration: f64) -> Series {
    let width = (duration / 150.0).max(0.5);
    let width = (width * 4.0).ceil() / 4.0;
    let n = ((duration / width).ceil() as usize).max(1);
    let mut lat: Vec<Vec<u64>> = vec![Vec::new(); n];
    let mut failed = vec![0u64; n];
    let mut broken = vec![0u64; n];
    for s in input.samples() {
        let i = ((input.secs(s.done) / width) as usize).min(n - 1);
        lat[i].push(s.latency_us);
        match s.verdict {
            Verdict::Failed(_) => failed[i] += 1,
            Verdict::Broken => broken[i] += 1,
            Verdict::Ok => {}
        }
    }
    Series {
        bucket_s: width,
        buckets: lat
            .into_iter()
            .enumerate()
            .map(|(i, mut l)| Bucket {
                t: round(i as f64 * width, 3),
                rate: round(l.len() as f64 / width, 1),
                failed: failed[i],
                broken: broken[i],
                p99_ms: p_ms(&mut l, 0.99),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::chaos::schedule::Phases;
    use crate::chaos::traffic::{ErrorClassKey, Failure};

    struct Fixture {
        t0: Instant,
        logs: Vec<UserLog>,
        scenario: Scenario,
        ids: HashMap<String, Incarnation>,
        faults: Vec<FaultRecord>,
        session_hops: SessionHops,
    }

    fn sample(t0: Instant, ms: u64, lat_ms: u64, step: u16, id: &str, verdict: Verdict) -> Sample {
        let sent = t0 + Duration::from_millis(ms);
        Sample {
            sent,
            done: sent + Duration::from_millis(lat_ms),
            latency_us: lat_ms * 1000,
            step: StepRef::Loop(step),
            iter: 0,
            verdict,
            instance: Some(Arc::from(id)),
        }
    }

    fn fixture() -> Fixture {
        let t0 = Instant::now();
        let scenario = Scenario::parse(
            "[[setup]]\nmethod='POST'\npath='/login'\n[[steps]]\npath='/whoami'\n[[steps]]\npath='/cart'\n",
            "t",
        )
        .unwrap();
        // Two users alternating between instances a and b, 10 requests a
        // second each for 20 s, 2 ms each.
        let logs = (1..=2)
            .map(|u| UserLog {
                user: u,
                samples: (0..200)
                    .map(|k| {
                        let id = if (k + u) % 2 == 0 { "a" } else { "b" };
                        sample(t0, k as u64 * 100, 2, (k % 2) as u16, id, Verdict::Ok)
                    })
                    .collect(),
                broken: vec![],
            })
            .collect();
        let ids = HashMap::from([
            ("a".to_owned(), Incarnation { index: 0, pid: 10 }),
            ("b".to_owned(), Incarnation { index: 1, pid: 11 }),
        ]);
        let faults = vec![FaultRecord {
            n: 1,
            kind: FaultKind::Kill,
            signal: "SIGKILL",
            instance: 1,
            address: "127.0.0.1:2".into(),
            planned_at_s: 10.0,
            at_s: Some(10.0),
            pid: Some(11),
            skipped: None,
            exit: Some("signal 9".into()),
            back_at_s: Some(11.2),
            new_pid: Some(12),
            ejected_at_s: Some(10.05),
            readmitted_at_s: Some(11.5),
            time_to_eject_ms: Some(50.0),
            time_to_readmit_ms: Some(300.0),
            out_of_rotation_ms: Some(1450.0),
            window_s: Some((10.0, 11.5)),
            note: None,
        }];
        Fixture {
            t0,
            logs,
            scenario,
            ids,
            faults,
            session_hops: SessionHops::default(),
        }
    }

    fn run(f: &Fixture, served: &[(String, u64)], affinity: &[(String, String, u64)]) -> Analysis {
        analyze(&input(f, served, affinity))
    }

    fn input<'a>(
        f: &'a Fixture,
        served: &'a [(String, u64)],
        affinity: &'a [(String, String, u64)],
    ) -> Input<'a> {
        Input {
            t0: f.t0,
            phases: Phases::split(Duration::from_secs(20), None, None, None)
                .unwrap()
                .spans(),
            logs: &f.logs,
            scenario: &f.scenario,
            faults: &f.faults,
            identities: &f.ids,
            identity_header: "x-instance-id",
            served,
            affinity,
            session_hops: &f.session_hops,
            target_rate: 20.0,
            thresholds: Thresholds {
                min_success: 0.999,
                max_p99_ratio: 10.0,
                strict: false,
            },
        }
    }

    fn check<'a>(a: &'a Analysis, name: &str) -> &'a Check {
        a.checks.iter().find(|c| c.name == name).unwrap()
    }

    fn served() -> Vec<(String, u64)> {
        vec![("127.0.0.1:1".into(), 200), ("127.0.0.1:2".into(), 200)]
    }

    #[test]
    fn a_clean_run_passes() {
        let f = fixture();
        let a = run(&f, &served(), &[]);
        assert_eq!(a.outcome, Outcome::Pass, "{:#?}", a.checks);
        assert_eq!(a.totals.requests, 400);
        assert_eq!(a.totals.achieved_rate, 20.0);
        let c = check(&a, "cross_instance_pairs");
        assert_eq!(c.value["pairs"], 398);
        assert_eq!(c.value["cross"], 398);
        // Requests sent 10.0 to 11.5 s: 16 per user.
        assert_eq!(
            check(&a, "success_ratio_in_kill_windows").value["requests"],
            32
        );
        assert_eq!(a.kill_windows, vec![(10.0, 11.5)]);
        assert_eq!(a.steps.len(), 2);
        assert_eq!(a.series.bucket_s, 0.5);
        assert_eq!(a.series.buckets.len(), 40);
    }

    #[test]
    fn a_broken_step_fails_and_is_explained() {
        let mut f = fixture();
        f.logs[0].samples[50].verdict = Verdict::Broken;
        f.logs[0].broken.push(Broken {
            user: 1,
            step: StepRef::Loop(0),
            iter: 25,
            at: f.t0 + Duration::from_millis(5002),
            expected: "status 200".into(),
            got: "status 401: \"unknown session\"".into(),
            instance: Some(Arc::from("b")),
            setup_instance: Some(Arc::from("a")),
            previous_instance: Some(Arc::from("a")),
        });
        let a = run(&f, &served(), &[]);
        assert_eq!(a.outcome, Outcome::Fail);
        let c = check(&a, "broken_expectations");
        assert!(!c.passed);
        assert_eq!(c.value["by_step"]["GET /whoami"], 1);
        let m = &a.broken_examples[0].message;
        assert!(
            m.starts_with("GET /whoami expected status 200, got status 401: \"unknown session\" on instance #1 (pid 11) after setup on instance #0 (pid 10)"),
            "{m}"
        );
    }

    #[test]
    fn failures_are_counted_by_class_against_the_bar() {
        let mut f = fixture();
        f.logs[1].samples[101].verdict = Verdict::Failed(Failure::Status(502));
        let a = run(&f, &served(), &[]);
        // 1 in 400 is 99.75%: under 99.9%. It was sent at 10.1 s: in the window.
        assert_eq!(a.outcome, Outcome::Fail);
        let c = check(&a, "success_ratio");
        assert_eq!(c.observed, "99.75% (1 of 400 failed)");
        assert_eq!(c.value["by_class"]["http_502"], 1);
        assert!(!check(&a, "success_ratio_in_kill_windows").passed);
        f.logs[1].samples[101].verdict = Verdict::Failed(Failure::Transport(ErrorClassKey::Reset));
        let a = run(&f, &served(), &[]);
        assert_eq!(check(&a, "success_ratio").value["by_class"]["reset"], 1);
    }

    #[test]
    fn failures_are_classified_and_only_lost_ones_count_unless_strict() {
        let mut f = fixture();
        // The second loop step becomes a POST without a key; one with a key
        // stays replayable.
        f.scenario = Scenario::parse(
            "[[setup]]\nmethod='POST'\npath='/login'\n[[steps]]\npath='/whoami'\n\
             [[steps]]\nmethod='POST'\npath='/cart'\n",
            "t",
        )
        .unwrap();
        // User 2's requests 101 (10.1 s, in the kill window) and 11 (1.1 s,
        // none) are POSTs; request 102 (10.2 s) is a GET.
        let fail = Verdict::Failed(Failure::Transport(ErrorClassKey::Reset));
        f.logs[1].samples[101].verdict = fail;
        let a = run(&f, &served(), &[]);
        assert_eq!(a.outcome, Outcome::Pass, "{:#?}", a.checks);
        let c = check(&a, "in_flight_not_replayable");
        assert_eq!(
            (c.kind, c.passed, c.value["count"].as_u64()),
            (Kind::Info, true, Some(1))
        );
        assert!(
            c.detail.as_ref().unwrap().contains("Idempotency-Key"),
            "{c:?}"
        );
        let c = check(&a, "success_ratio");
        assert_eq!(
            c.observed,
            "100% (0 of 400 failed; 1 in flight, not replayable: not counted)"
        );
        assert_eq!(a.totals.failures.in_flight_not_replayable, 1);
        assert_eq!(a.totals.failed, 1);
        let post = a.steps.iter().find(|s| s.step == "POST /cart").unwrap();
        assert!(!post.replayable && post.failures.in_flight_not_replayable == 1);

        // Under --strict it fails the run.
        let strict = analyze(&Input {
            thresholds: Thresholds {
                min_success: 0.999,
                max_p99_ratio: 10.0,
                strict: true,
            },
            ..input(&f, &served(), &[])
        });
        assert_eq!(strict.outcome, Outcome::Fail);
        assert!(!check(&strict, "in_flight_not_replayable").passed);

        // Outside a kill window, or a GET, or a broken answer: not excused.
        f.logs[1].samples[11].verdict = fail;
        f.logs[1].samples[102].verdict = fail;
        f.logs[1].samples[103].verdict = Verdict::Broken;
        let a = run(&f, &served(), &[]);
        let counts = a.totals.failures;
        assert_eq!(
            (counts.in_flight_not_replayable, counts.lost, counts.broken),
            (1, 2, 1)
        );
        assert_eq!(a.outcome, Outcome::Fail);
        assert_eq!(check(&a, "success_ratio").value["failed"], 2);
    }

    #[test]
    fn slow_kill_windows_fail_p99_and_affinity_fails() {
        let mut f = fixture();
        for s in f.logs[0].samples.iter_mut().filter(|s| {
            let t = s.sent.duration_since(f.t0).as_millis();
            (10_000..11_500).contains(&t)
        }) {
            s.latency_us = 900_000;
        }
        let a = run(
            &f,
            &served(),
            &[("127.0.0.1:1".into(), "SERVERID".into(), 3)],
        );
        let p = check(&a, "p99_latency");
        assert!(!p.passed, "{p:?}");
        assert_eq!(p.value["baseline_ms"], 2.0);
        assert!(p.threshold.starts_with("<= 500.0 ms"), "{}", p.threshold);
        let c = check(&a, "affinity_cookies_seen");
        assert!(!c.passed && c.detail.as_ref().unwrap().contains("SERVERID"));
    }

    #[test]
    fn sessions_the_balancer_saw_break_fail_the_run() {
        use crate::chaos::session_hops::{CookieHops, HopExample, Rule};
        let mut f = fixture();
        f.session_hops.rule = Rule {
            share: 0.05,
            min_hops: 20,
        };
        let mut sid = CookieHops {
            name: "sid".into(),
            source: "learned".into(),
            issued: 8,
            same_instance: 40,
            hops: 100,
            kept: 100,
            broken: 0,
            unjudged: 0,
            broken_share: Some(0.0),
            broken_by: BTreeMap::new(),
            failed: false,
            examples: vec![],
        };
        f.session_hops.cookies.push(sid.clone());
        let a = run(&f, &served(), &[]);
        let c = check(&a, "session_hops");
        assert!(c.passed, "{c:?}");
        assert_eq!(
            c.observed,
            "0 of 100 judged hops broke; 100 hops, 40 same-instance requests (sid)"
        );
        assert_eq!(
            c.threshold,
            "per cookie, < 5% of its judged hops broken (judged once >= 20)"
        );
        (sid.kept, sid.broken, sid.failed) = (40, 60, true);
        sid.examples.push(HopExample {
            time: String::new(),
            method: "GET".into(),
            path: "/dashboard".into(),
            status: 302,
            reason: "login_redirect".into(),
            from_instance: Some(0),
            to_instance: Some(1),
            message: "GET /dashboard -> 302 (login_redirect) on instance #1, session issued by instance #0".into(),
        });
        f.session_hops.cookies[0] = sid;
        let a = run(&f, &served(), &[]);
        assert_eq!(a.outcome, Outcome::Fail);
        let c = check(&a, "session_hops");
        assert!(!c.passed);
        assert_eq!(c.value["failing"][0], "sid");
        let d = c.detail.as_deref().unwrap();
        assert!(
            d.contains("cookie `sid`: 60 of 100 judged hops, e.g. GET /dashboard -> 302"),
            "{d}"
        );
        // No evidence is said, and fails nothing.
        f.session_hops = SessionHops::missing("the balancer's session watch is off");
        let a = run(&f, &served(), &[]);
        let c = check(&a, "session_hops");
        assert!(c.passed && c.observed.starts_with("no evidence: "), "{c:?}");
    }

    #[test]
    fn one_instance_is_inconclusive() {
        let mut f = fixture();
        for l in &mut f.logs {
            for s in &mut l.samples {
                s.instance = Some(Arc::from("a"));
            }
        }
        f.faults[0].at_s = None;
        f.faults[0].window_s = None;
        f.faults[0].skipped = Some("it would leave no instance up".into());
        let a = run(&f, &[("127.0.0.1:1".into(), 400)], &[]);
        assert_eq!(a.outcome, Outcome::Inconclusive, "{:#?}", a.checks);
        assert!(!check(&a, "cross_instance_pairs").passed);
        assert!(!check(&a, "faults_executed").passed);
        // No identity header at all: the detail says how to fix it.
        for l in &mut f.logs {
            for s in &mut l.samples {
                s.instance = None;
            }
        }
        let a = run(&f, &served(), &[]);
        let c = check(&a, "cross_instance_pairs");
        assert!(c.detail.as_ref().unwrap().contains("--instance-header"));
        // An idle instance and a low rate are validity failures too.
        let a = run(&f, &[("x".into(), 400), ("y".into(), 0)], &[]);
        assert!(!check(&a, "every_instance_served").passed);
        f.logs[1].samples.clear();
        let a = run(&f, &served(), &[]);
        assert!(!check(&a, "achieved_rate").passed);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 0.99), Some(99));
        assert_eq!(percentile(&v, 0.50), Some(50));
        assert_eq!(percentile(&[7], 0.99), Some(7));
        assert_eq!(percentile(&[], 0.99), None);
        assert_eq!(pct(0.99999), "99.999%");
        assert_eq!(pct(0.9999999), "99.999%");
        assert_eq!(pct(1.0), "100%");
    }
}
