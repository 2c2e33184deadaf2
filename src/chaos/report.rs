//! The chaos report: `verdict.json`, `junit.xml`, a self-contained `report.html` with an SVG chart, and the summary on stdout.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::checks::{
    Analysis, BrokenExample, Check, FailureCounts, FaultRecord, Kind, Outcome, Series, StepStats,
};
use super::schedule::{FaultKind, PhaseSpan, PlannedFault, SkippedTick};
use super::session_hops::SessionHops;

/// Everything `verdict.json` holds.
#[derive(Debug, Clone, Serialize)]
pub struct Document {
    pub verdict: Outcome,
    pub exit_code: u8,
    /// Set for `--demo` runs (`sqlite`, `memory`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub label: Option<String>,
    pub unstick_version: &'static str,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub seed: u64,
    /// The command line that ran (with `--seed`, it reproduces the plan).
    pub command_line: String,
    pub app: AppInfo,
    pub load: LoadInfo,
    pub faults: FaultsInfo,
    pub thresholds: ThresholdsInfo,
    pub phases: [PhaseSpan; 4],
    pub plan: Vec<PlannedFault>,
    pub plan_skipped: Vec<SkippedTick>,
    /// The faults as carried out.
    pub timeline: Vec<FaultRecord>,
    /// Instances that exited without a fault.
    pub unplanned_exits: Vec<UnplannedExit>,
    pub instances: Vec<InstanceInfo>,
    /// Session hops between instances as the balancer saw them (the
    /// `session_hops` check's evidence).
    pub session_hops: SessionHops,
    #[serde(flatten)]
    pub analysis: Analysis,
}

#[derive(Debug, Clone, Serialize)]
pub struct AppInfo {
    pub command: String,
    pub instances: usize,
    pub ready_path: String,
    pub identity_headers: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LoadInfo {
    pub users: usize,
    pub rate: f64,
    pub timeout_s: f64,
    pub scenario: String,
    pub read_only: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FaultsInfo {
    pub kinds: Vec<FaultKind>,
    pub every_s: f64,
    pub restart_after_s: f64,
    pub pause_s: f64,
    pub allow_total_outage: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ThresholdsInfo {
    pub min_success: f64,
    /// In-flight requests that could not be replayed fail the run.
    pub strict: bool,
    pub max_p99_ratio: f64,
    pub p99_floor_ms: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct UnplannedExit {
    pub instance: usize,
    pub pid: u32,
    pub at_s: f64,
    pub status: String,
    pub back_at_s: Option<f64>,
    pub new_pid: Option<u32>,
}

/// One instance slot: its address and every process that ran in it.
#[derive(Debug, Clone, Serialize)]
pub struct InstanceInfo {
    pub index: usize,
    /// The container's name (`--docker-service`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub address: String,
    pub pids: Vec<u32>,
}

/// The files written.
#[derive(Debug, Clone)]
pub struct Written {
    pub dir: PathBuf,
    pub verdict: PathBuf,
    pub junit: PathBuf,
    pub html: PathBuf,
}

/// Writes the three files into `dir` (created if missing).
pub fn write(doc: &Document, dir: &Path) -> std::io::Result<Written> {
    std::fs::create_dir_all(dir)?;
    let w = Written {
        dir: dir.to_owned(),
        verdict: dir.join("verdict.json"),
        junit: dir.join("junit.xml"),
        html: dir.join("report.html"),
    };
    let mut json = serde_json::to_string_pretty(doc).map_err(std::io::Error::other)?;
    json.push('\n');
    std::fs::write(&w.verdict, json)?;
    std::fs::write(&w.junit, junit(doc))?;
    std::fs::write(&w.html, html(doc))?;
    Ok(w)
}

pub use crate::html::escape;

fn status(c: &Check) -> &'static str {
    match (c.kind, c.passed) {
        (Kind::Info, _) => "INFO",
        (_, true) => "PASS",
        (Kind::Check, false) => "FAIL",
        (Kind::Validity, false) => "INVALID",
    }
}

/// JUnit XML: one test case per check; a failed check or validity check is a `<failure>`.
pub fn junit(doc: &Document) -> String {
    let class = match &doc.label {
        Some(l) => format!("unstick.chaos.{l}"),
        None => "unstick.chaos".to_owned(),
    };
    let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
    junit_suite_head(&mut x, doc);
    for c in &doc.analysis.checks {
        junit_case(&mut x, doc, &class, c);
    }
    x.push_str("  </testsuite>\n</testsuites>\n");
    x
}

/// The `<testsuites>` and `<testsuite>` openings and the run's properties.
fn junit_suite_head(x: &mut String, doc: &Document) {
    let checks = &doc.analysis.checks;
    let failures = checks.iter().filter(|c| !c.passed).count();
    let suite = match &doc.label {
        Some(l) => format!("unstick chaos ({l})"),
        None => "unstick chaos".to_owned(),
    };
    let _ = writeln!(
        x,
        "<testsuites name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{:.3}\">",
        escape(&suite),
        checks.len(),
        doc.analysis.totals.duration_s
    );
    let _ = writeln!(
        x,
        "  <testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" skipped=\"0\" time=\"{:.3}\" timestamp=\"{}\">",
        escape(&suite),
        checks.len(),
        doc.analysis.totals.duration_s,
        escape(doc.started_at.trim_end_matches('Z'))
    );
    x.push_str("    <properties>\n");
    for (k, v) in [
        ("verdict", doc.verdict.name().to_owned()),
        ("seed", doc.seed.to_string()),
        ("command", doc.command_line.clone()),
    ] {
        let _ = writeln!(x, "      <property name=\"{k}\" value=\"{}\"/>", escape(&v));
    }
    for (class, n) in doc.analysis.totals.failures.each() {
        let _ = writeln!(
            x,
            "      <property name=\"failures.{}\" value=\"{n}\"/>",
            class.name()
        );
    }
    x.push_str("    </properties>\n");
}

/// One check's `<testcase>`: a `<failure>` when it failed, and its
/// observation, detail and examples as output.
fn junit_case(x: &mut String, doc: &Document, class: &str, c: &Check) {
    let _ = writeln!(
        x,
        "    <testcase classname=\"{}\" name=\"{}\" time=\"0\">",
        escape(class),
        c.name
    );
    let summary = format!("observed {}; threshold {}", c.observed, c.threshold);
    if !c.passed {
        let kind = if c.kind == Kind::Validity {
            "inconclusive"
        } else {
            "check"
        };
        let _ = writeln!(
            x,
            "      <failure type=\"{kind}\" message=\"{}\">{}</failure>",
            escape(&summary),
            escape(c.detail.as_deref().unwrap_or(&summary))
        );
    }
    let mut out = summary;
    if let Some(d) = &c.detail {
        out.push('\n');
        out.push_str(d);
    }
    let examples: Vec<&str> = match c.name {
        "broken_expectations" => doc
            .analysis
            .broken_examples
            .iter()
            .map(|e| &*e.message)
            .collect(),
        "session_hops" => hop_examples(&doc.session_hops).collect(),
        _ => vec![],
    };
    for e in examples {
        out.push('\n');
        out.push_str(e);
    }
    let _ = writeln!(x, "      <system-out>{}</system-out>", escape(&out));
    x.push_str("    </testcase>\n");
}

/// The broken hops of the cookies that fail the `session_hops` check.
fn hop_examples(h: &SessionHops) -> impl Iterator<Item = &str> {
    h.failing()
        .flat_map(|c| c.examples.iter().map(|e| &*e.message))
}

/// The short summary for people (stdout).
pub fn summary(doc: &Document, written: Option<&Written>) -> String {
    let mut s = String::new();
    summary_head(&mut s, doc);
    summary_checks(&mut s, &doc.analysis);
    summary_hops(&mut s, &doc.session_hops);
    let why = match doc.verdict {
        Outcome::Pass => "the app lost no session and no request beyond the thresholds while instances died",
        Outcome::Fail => "a check failed: see above",
        Outcome::Inconclusive => "the checks held, but the run did not exercise enough to prove anything (see INVALID above)",
    };
    let _ = writeln!(s, "  verdict: {} ({why})", doc.verdict.name());
    if let Some(w) = written {
        let _ = writeln!(
            s,
            "  report: {} (also {} and {})",
            w.html.display(),
            w.verdict.display(),
            w.junit.display()
        );
    }
    s
}

/// The title line, the run's shape, and the faults and requests counted.
fn summary_head(s: &mut String, doc: &Document) {
    let a = &doc.analysis;
    let title = match &doc.label {
        Some(l) => format!("unstick chaos ({l})"),
        None => "unstick chaos".into(),
    };
    let _ = writeln!(s, "{title}: {}  (seed {})", doc.verdict.name(), doc.seed);
    let _ = writeln!(
        s,
        "  {} instance(s) of `{}`; {} users at {}/s for {:.0}s; scenario: {}",
        doc.app.instances,
        doc.app.command,
        doc.load.users,
        doc.load.rate,
        a.totals.duration_s,
        doc.load.scenario
    );
    let executed: Vec<&FaultRecord> = doc.timeline.iter().filter(|f| f.at_s.is_some()).collect();
    let mut kinds: Vec<String> = Vec::new();
    for k in [FaultKind::Kill, FaultKind::Term, FaultKind::Stop] {
        let n = executed.iter().filter(|f| f.kind == k).count();
        if n > 0 {
            kinds.push(format!("{n} {}", k.signal_name()));
        }
    }
    let f = a.totals.failures;
    let _ = writeln!(
        s,
        "  faults: {} carried out ({}), {} skipped; requests: {}, failed {}, broken {} \
         (lost {}, in flight not replayable {})",
        executed.len(),
        if kinds.is_empty() {
            "none".into()
        } else {
            kinds.join(", ")
        },
        doc.timeline.len() - executed.len(),
        a.totals.requests,
        a.totals.failed,
        a.totals.broken,
        f.lost,
        f.in_flight_not_replayable
    );
    if !doc.unplanned_exits.is_empty() {
        let _ = writeln!(
            s,
            "  {} instance(s) exited on their own during the run",
            doc.unplanned_exits.len()
        );
    }
}

/// One line a check (and its detail when it failed or is only reported),
/// then a few broken expectations.
fn summary_checks(s: &mut String, a: &Analysis) {
    for c in &a.checks {
        let _ = writeln!(
            s,
            "  {:<7} {:<30} {}  (threshold: {})",
            status(c),
            c.name,
            c.observed,
            c.threshold
        );
        if !c.passed || c.kind == Kind::Info {
            if let Some(d) = &c.detail {
                let _ = writeln!(s, "          {d}");
            }
        }
    }
    if !a.broken_examples.is_empty() {
        let _ = writeln!(s, "  broken expectations, e.g.:");
        for e in a.broken_examples.iter().take(3) {
            let _ = writeln!(s, "    {}", e.message);
        }
    }
}

/// A few broken session hops the balancer saw, when they fail the run.
fn summary_hops(s: &mut String, h: &SessionHops) {
    let examples: Vec<&str> = hop_examples(h).collect();
    if !examples.is_empty() {
        let _ = writeln!(s, "  broken session hops seen by the balancer, e.g.:");
        for e in examples.iter().rev().take(3) {
            let _ = writeln!(s, "    {e}");
        }
    }
}

// === the HTML page ===

const W: f64 = 960.0;
const H: f64 = 320.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 64.0;
const TOP: f64 = 24.0;
const BOTTOM: f64 = 36.0;

fn kind_color(k: FaultKind) -> &'static str {
    match k {
        FaultKind::Kill => "#b91c1c",
        FaultKind::Term => "#c2410c",
        FaultKind::Stop => "#4b5563",
    }
}

/// A round number at or above `x` for an axis top.
fn nice(x: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 5.0, 10.0] {
        if m * p >= x {
            return m * p;
        }
    }
    10.0 * p
}

/// The chart: request rate, failures and broken expectations (left axis,
/// per second), p99 (right axis, ms), phases shaded, kill windows and
/// faults marked.
pub fn chart(doc: &Document) -> String {
    let c = Chart::new(&doc.analysis);
    let mut s = String::new();
    let _ = write!(
        s,
        r##"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {W} {H}" width="100%" role="img" aria-label="requests per second, failures and p99 latency over time, faults marked" font-family="sans-serif" font-size="11">"##
    );
    c.phases(&mut s, &doc.phases);
    c.kill_windows(&mut s, &doc.analysis.kill_windows);
    c.axes(&mut s);
    c.failure_bars(&mut s, &doc.analysis.series);
    c.lines(&mut s, &doc.analysis.series);
    for f in &doc.timeline {
        c.fault(&mut s, f);
    }
    let _ = write!(
        s,
        r##"<rect x="{LEFT}" y="{TOP}" width="{}" height="{}" fill="none" stroke="#9ca3af"/></svg>"##,
        c.pw, c.ph
    );
    s
}

/// The chart's scales: seconds across, requests per second up the left
/// axis, p99 milliseconds up the right.
struct Chart {
    dur: f64,
    /// Plot width and height.
    pw: f64,
    ph: f64,
    top_rate: f64,
    top_p99: f64,
}

impl Chart {
    fn new(a: &Analysis) -> Chart {
        let max_rate = a.series.buckets.iter().map(|b| b.rate).fold(0.0, f64::max);
        let max_p99 = a
            .series
            .buckets
            .iter()
            .filter_map(|b| b.p99_ms)
            .fold(0.0, f64::max);
        Chart {
            dur: a.totals.duration_s.max(0.001),
            pw: W - LEFT - RIGHT,
            ph: H - TOP - BOTTOM,
            top_rate: nice(max_rate * 1.1),
            top_p99: nice(max_p99 * 1.1),
        }
    }

    fn x(&self, t: f64) -> f64 {
        LEFT + (t / self.dur).clamp(0.0, 1.0) * self.pw
    }

    /// The left axis (requests per second).
    fn yl(&self, v: f64) -> f64 {
        TOP + self.ph - (v / self.top_rate).clamp(0.0, 1.0) * self.ph
    }

    /// The right axis (p99 ms).
    fn yr(&self, v: f64) -> f64 {
        TOP + self.ph - (v / self.top_p99).clamp(0.0, 1.0) * self.ph
    }

    /// The phases, shaded and named.
    fn phases(&self, s: &mut String, phases: &[PhaseSpan; 4]) {
        let ph = self.ph;
        let phase_fill = ["#f3f4f6", "#ecfdf5", "#fef2f2", "#eff6ff"];
        for (p, fill) in phases.iter().zip(phase_fill) {
            let (x0, x1) = (self.x(p.start.as_secs_f64()), self.x(p.end.as_secs_f64()));
            let _ = write!(
                s,
                r##"<rect x="{x0:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="{fill}"/><text x="{:.1}" y="{:.1}" fill="#6b7280" text-anchor="middle">{}</text>"##,
                (x1 - x0).max(0.0),
                (x0 + x1) / 2.0,
                TOP - 8.0,
                p.name
            );
        }
    }

    fn kill_windows(&self, s: &mut String, windows: &[(f64, f64)]) {
        let ph = self.ph;
        for &(w0, w1) in windows {
            let _ = write!(
                s,
                r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#fca5a5" fill-opacity="0.35"><title>kill window {w0:.2}s to {w1:.2}s</title></rect>"##,
                self.x(w0),
                (self.x(w1) - self.x(w0)).max(1.0)
            );
        }
    }

    /// Grid lines with both axes' values, the axis titles, the time ticks.
    fn axes(&self, s: &mut String) {
        let (pw, ph) = (self.pw, self.ph);
        // Five intervals: every round top (1, 2, 2.5, 5 x 10^n) divides evenly.
        for i in 0..=5 {
            let f = i as f64 / 5.0;
            let y = TOP + ph - f * ph;
            let _ = write!(
                s,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#e5e7eb"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#1d4ed8">{}</text><text x="{:.1}" y="{:.1}" fill="#6d28d9">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y + 4.0,
                trim(self.top_rate * f),
                LEFT + pw + 6.0,
                y + 4.0,
                trim(self.top_p99 * f)
            );
        }
        let _ = write!(
            s,
            r##"<text x="12" y="{:.1}" fill="#1d4ed8" transform="rotate(-90 12 {:.1})" text-anchor="middle">requests/s</text><text x="{:.1}" y="{:.1}" fill="#6d28d9" transform="rotate(90 {:.1} {:.1})" text-anchor="middle">p99 ms</text>"##,
            TOP + ph / 2.0,
            TOP + ph / 2.0,
            W - 12.0,
            TOP + ph / 2.0,
            W - 12.0,
            TOP + ph / 2.0
        );
        let step = nice(self.dur / 10.0);
        let mut t = 0.0;
        while t <= self.dur + 1e-9 {
            let _ = write!(
                s,
                r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#374151">{}s</text>"##,
                self.x(t),
                TOP + ph + 16.0,
                trim(t)
            );
            t += step;
        }
    }

    /// Failures and broken expectations, as stacked bars per second.
    fn failure_bars(&self, s: &mut String, series: &Series) {
        let bw = series.bucket_s;
        for b in &series.buckets {
            let x0 = self.x(b.t) + 1.0;
            let bwpx = (self.x(b.t + bw) - self.x(b.t) - 2.0).max(1.0);
            let mut base = TOP + self.ph;
            for (count, color, what) in [
                (b.failed, "#dc2626", "failed"),
                (b.broken, "#ea580c", "broken"),
            ] {
                if count == 0 {
                    continue;
                }
                let hgt = (TOP + self.ph - self.yl(count as f64 / bw)).max(2.0);
                base -= hgt;
                let _ = write!(
                    s,
                    r#"<rect x="{x0:.1}" y="{base:.1}" width="{bwpx:.1}" height="{hgt:.1}" fill="{color}"><title>{:.1}s: {count} {what}</title></rect>"#,
                    b.t
                );
            }
        }
    }

    /// The rate (solid) and p99 (dashed) lines.
    fn lines(&self, s: &mut String, series: &Series) {
        let bw = series.bucket_s;
        let rate: Vec<String> = series
            .buckets
            .iter()
            .map(|b| format!("{:.1},{:.1}", self.x(b.t + bw / 2.0), self.yl(b.rate)))
            .collect();
        let _ = write!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#2563eb" stroke-width="2"/>"##,
            rate.join(" ")
        );
        let p99: Vec<String> = series
            .buckets
            .iter()
            .filter_map(|b| {
                b.p99_ms
                    .map(|p| format!("{:.1},{:.1}", self.x(b.t + bw / 2.0), self.yr(p)))
            })
            .collect();
        let _ = write!(
            s,
            r##"<polyline points="{}" fill="none" stroke="#7c3aed" stroke-width="1.5" stroke-dasharray="4 3"/>"##,
            p99.join(" ")
        );
    }

    /// A carried-out fault: a line at its signal, labelled, and a green
    /// tick when the instance was up again.
    fn fault(&self, s: &mut String, f: &FaultRecord) {
        let Some(at) = f.at_s else { return };
        let color = kind_color(f.kind);
        let xf = self.x(at);
        let mut title = format!(
            "fault {}: {} instance #{} (pid {}) at {at:.2}s",
            f.n,
            f.signal,
            f.instance,
            f.pid.map_or("-".into(), |p| p.to_string())
        );
        if let Some(e) = f.time_to_eject_ms {
            let _ = write!(title, "; out of rotation after {e:.0} ms");
        }
        if let Some(r) = f.time_to_readmit_ms {
            let _ = write!(title, "; back in rotation {r:.0} ms after it was up");
        }
        let _ = write!(
            s,
            r#"<g><title>{}</title><line x1="{xf:.1}" x2="{xf:.1}" y1="{TOP}" y2="{:.1}" stroke="{color}" stroke-width="1.5"/><text x="{:.1}" y="{:.1}" fill="{color}" font-size="10">{}{}</text></g>"#,
            escape(&title),
            TOP + self.ph,
            xf + 2.0,
            TOP + 11.0 + (f.n % 2) as f64 * 11.0,
            &f.kind.name()[..1].to_uppercase(),
            f.n
        );
        if let Some(b) = f.back_at_s {
            let xb = self.x(b);
            let _ = write!(
                s,
                r##"<line x1="{xb:.1}" x2="{xb:.1}" y1="{:.1}" y2="{:.1}" stroke="#16a34a" stroke-width="1.5"><title>fault {}: instance #{} up again at {b:.2}s</title></line>"##,
                TOP + self.ph - 10.0,
                TOP + self.ph,
                f.n,
                f.instance
            );
        }
    }
}

/// A number without needless decimals.
fn trim(v: f64) -> String {
    if (v - v.round()).abs() < 1e-6 {
        format!("{}", v.round())
    } else {
        let t = format!("{v:.2}");
        t.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

fn opt<T: std::fmt::Display>(v: Option<T>) -> String {
    v.map_or("-".into(), |v| v.to_string())
}

fn opt_ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

fn opt_s(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.2}s"))
}

/// The whole page: no scripts, no external resources.
pub fn html(doc: &Document) -> String {
    let mut h = String::new();
    page_head(&mut h, doc);
    page_intro(&mut h, doc);
    checks_table(&mut h, &doc.analysis.checks);
    failures_table(&mut h, &doc.analysis.totals.failures);
    broken_list(&mut h, &doc.analysis.broken_examples);
    hops_section(&mut h, &doc.session_hops);
    faults_table(&mut h, &doc.timeline);
    unplanned_list(&mut h, &doc.unplanned_exits);
    steps_table(&mut h, &doc.analysis.steps);
    phases_and_instances(&mut h, doc);
    h
}

/// The HTML head (title, style), the heading and the run's line.
fn page_head(h: &mut String, doc: &Document) {
    let verdict_color = match doc.verdict {
        Outcome::Pass => "#15803d",
        Outcome::Fail => "#b91c1c",
        Outcome::Inconclusive => "#a16207",
    };
    let title = match &doc.label {
        Some(l) => format!("unstick chaos ({l}): {}", doc.verdict.name()),
        None => format!("unstick chaos: {}", doc.verdict.name()),
    };
    let _ = write!(
        h,
        r##"<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>{}</title>
<style>
body{{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2rem auto;max-width:1040px;padding:0 1rem;color:#111827}}
h1{{font-size:1.6rem;margin-bottom:.2rem}} h2{{font-size:1.15rem;margin-top:2rem}}
.verdict{{color:#fff;background:{verdict_color};padding:.1rem .6rem;border-radius:.3rem}}
table{{border-collapse:collapse;width:100%;font-size:.88rem}} th,td{{text-align:left;padding:.3rem .5rem;border-bottom:1px solid #e5e7eb;vertical-align:top}}
th{{background:#f9fafb}} code,pre{{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:.85rem}}
pre{{background:#f3f4f6;padding:.6rem;overflow-x:auto;white-space:pre-wrap}}
.PASS{{color:#15803d;font-weight:600}} .FAIL{{color:#b91c1c;font-weight:600}} .INVALID{{color:#a16207;font-weight:600}} .INFO{{color:#4b5563}}
.legend span{{margin-right:1.2rem;font-size:.85rem}} .muted{{color:#6b7280}}
</style></head><body>
"##,
        escape(&title)
    );
    let _ = writeln!(
        h,
        "<h1>unstick chaos{}: <span class=\"verdict\">{}</span></h1>",
        doc.label
            .as_ref()
            .map(|l| format!(" ({})", escape(l)))
            .unwrap_or_default(),
        doc.verdict.name()
    );
    let _ = write!(
        h,
        "<p class=\"muted\">{} &middot; seed <b>{}</b> &middot; unstick {} &middot; {} instance(s) &middot; {} users at {}/s &middot; scenario <code>{}</code></p>\n<pre>{}</pre>\n",
        escape(&doc.started_at),
        doc.seed,
        doc.unstick_version,
        doc.app.instances,
        doc.load.users,
        doc.load.rate,
        escape(&doc.load.scenario),
        escape(&doc.command_line)
    );
}

/// What the verdict means, the chart and its legend.
fn page_intro(h: &mut String, doc: &Document) {
    let explain = match doc.verdict {
        Outcome::Pass => "Every check held while instances were killed, and the run was valid: users' consecutive requests landed on different instances, every instance served, the load met its target.",
        Outcome::Fail => "At least one check failed: the app lost requests or sessions (or took too long) when instances died. The examples below name the step and the instances.",
        Outcome::Inconclusive => "No check failed, but the run did not exercise enough to prove anything: see the validity rows.",
    };
    let _ = write!(h, "<p>{explain}</p>\n<h2>Over time</h2>\n");
    h.push_str(&chart(doc));
    h.push_str(
        r##"<p class="legend"><span style="color:#2563eb">&#9644; requests/s</span><span style="color:#dc2626">&#9632; failed/s</span><span style="color:#ea580c">&#9632; broken/s</span><span style="color:#7c3aed">- - p99 ms (right axis)</span><span style="color:#b91c1c">| K kill</span><span style="color:#c2410c">| T term</span><span style="color:#4b5563">| S stop</span><span style="color:#16a34a">| up again</span><span style="background:#fca5a5">&nbsp;kill window&nbsp;</span></p>
"##,
    );
}

fn checks_table(h: &mut String, checks: &[Check]) {
    h.push_str("<h2>Checks</h2>\n<table><tr><th>check</th><th>result</th><th>observed</th><th>threshold</th><th>detail</th></tr>\n");
    for c in checks {
        let st = status(c);
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code><br><span class=\"muted\">{}</span></td><td class=\"{st}\">{st}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            c.name,
            match c.kind {
                Kind::Check => "check",
                Kind::Validity => "validity",
                Kind::Info => "reported",
            },
            escape(&c.observed),
            escape(&c.threshold),
            escape(c.detail.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>\n");
}

/// Every request that did not succeed, by class, with what the class means.
fn failures_table(h: &mut String, failures: &FailureCounts) {
    h.push_str("<h2>Failures by class</h2>\n<table><tr><th>class</th><th>requests</th><th>meaning</th></tr>\n");
    for (class, n) in failures.each() {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code></td><td>{n}</td><td>{}</td></tr>",
            class.name(),
            escape(class.meaning())
        );
    }
    h.push_str("</table>\n");
}

fn broken_list(h: &mut String, examples: &[BrokenExample]) {
    if !examples.is_empty() {
        h.push_str("<h2>Broken expectations (examples)</h2>\n<ul>\n");
        for e in examples {
            let _ = writeln!(h, "<li>at {:.2}s: {}</li>", e.at_s, escape(&e.message));
        }
        h.push_str("</ul>\n");
    }
}

/// Each session cookie's hops between instances as the balancer judged
/// them, and its last broken hops.
fn hops_section(h: &mut String, hops: &SessionHops) {
    h.push_str("<h2>Session hops seen by the balancer</h2>\n");
    if let Some(why) = &hops.missing {
        let _ = writeln!(h, "<p class=\"muted\">No evidence: {}</p>", escape(why));
        return;
    }
    if hops.cookies.is_empty() {
        h.push_str("<p class=\"muted\">No session cookie seen: no backend set a cookie that looked like one.</p>\n");
        return;
    }
    h.push_str("<table><tr><th>cookie</th><th>same instance</th><th>hops</th><th>kept</th><th>broken</th><th>unjudged</th><th>broken share</th></tr>\n");
    for c in &hops.cookies {
        let share = c
            .broken_share
            .map_or("-".into(), |v| format!("{:.1}%", v * 100.0));
        let class = if c.failed { "FAIL" } else { "PASS" };
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code> <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td class=\"{class}\">{share}</td></tr>",
            escape(&c.name),
            escape(&c.source),
            c.same_instance,
            c.hops,
            c.kept,
            c.broken,
            c.unjudged
        );
    }
    h.push_str("</table>\n");
    let examples: Vec<(&str, &str)> = hops
        .cookies
        .iter()
        .flat_map(|c| c.examples.iter().map(|e| (&*e.time, &*e.message)))
        .collect();
    if !examples.is_empty() {
        h.push_str("<p>Broken hops (the last few per cookie):</p>\n<ul>\n");
        for (time, message) in examples {
            let _ = writeln!(h, "<li>{}: {}</li>", escape(time), escape(message));
        }
        h.push_str("</ul>\n");
    }
}

fn faults_table(h: &mut String, timeline: &[FaultRecord]) {
    h.push_str("<h2>Faults</h2>\n<table><tr><th>#</th><th>fault</th><th>instance</th><th>pid</th><th>at</th><th>exit</th><th>up again</th><th>new pid</th><th>out of rotation after</th><th>back in rotation after</th><th>note</th></tr>\n");
    for f in timeline {
        let note = f
            .skipped
            .as_ref()
            .map(|s| format!("skipped: {s}"))
            .or(f.note.clone());
        let _ = writeln!(
            h,
            "<tr><td>{}</td><td>{}</td><td>#{} <span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            f.n,
            f.signal,
            f.instance,
            escape(&f.address),
            opt(f.pid),
            opt_s(f.at_s.or(Some(f.planned_at_s))),
            escape(&opt(f.exit.as_deref())),
            opt_s(f.back_at_s),
            opt(f.new_pid),
            opt_ms(f.time_to_eject_ms),
            opt_ms(f.time_to_readmit_ms),
            escape(note.as_deref().unwrap_or(""))
        );
    }
    h.push_str("</table>\n");
}

fn unplanned_list(h: &mut String, exits: &[UnplannedExit]) {
    if !exits.is_empty() {
        h.push_str("<h2>Instances that exited on their own</h2>\n<ul>\n");
        for u in exits {
            let _ = writeln!(
                h,
                "<li>#{} (pid {}) at {:.2}s: {}; up again {}</li>",
                u.instance,
                u.pid,
                u.at_s,
                escape(&u.status),
                opt_s(u.back_at_s)
            );
        }
        h.push_str("</ul>\n");
    }
}

fn steps_table(h: &mut String, steps: &[StepStats]) {
    h.push_str("<h2>Steps</h2>\n<table><tr><th>step</th><th>requests</th><th>ok</th><th>broken</th><th>failed</th><th>lost</th><th>in flight, not replayable</th><th>p50</th><th>p99</th></tr>\n");
    for s in steps {
        let _ = writeln!(
            h,
            "<tr><td><code>{}</code><br><span class=\"muted\">{}</span></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&s.step),
            if s.replayable { "replayable" } else { "not replayable" },
            s.requests,
            s.ok,
            s.broken,
            s.failed,
            s.failures.lost,
            s.failures.in_flight_not_replayable,
            s.p50_ms.map_or("-".into(), |v| format!("{v:.1} ms")),
            s.p99_ms.map_or("-".into(), |v| format!("{v:.1} ms"))
        );
    }
    h.push_str("</table>\n");
}

/// The phases, every process of each instance, and how to replay the run.
fn phases_and_instances(h: &mut String, doc: &Document) {
    h.push_str("<h2>Phases and instances</h2>\n<ul>\n");
    for p in &doc.phases {
        let _ = writeln!(
            h,
            "<li>{}: {:.1}s to {:.1}s</li>",
            p.name,
            p.start.as_secs_f64(),
            p.end.as_secs_f64()
        );
    }
    for i in &doc.instances {
        let pids: Vec<String> = i.pids.iter().map(u32::to_string).collect();
        let name = i
            .name
            .as_ref()
            .map_or(String::new(), |n| format!(" (container {})", escape(n)));
        let _ = writeln!(
            h,
            "<li>instance #{}{name} on {}: pids {}</li>",
            i.index,
            escape(&i.address),
            pids.join(", ")
        );
    }
    let _ = write!(
        h,
        "</ul>\n<p class=\"muted\">Same seed, same plan: rerun the command above to replay these faults. Full figures in <code>verdict.json</code>; CI results in <code>junit.xml</code>.</p>\n</body></html>\n"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_controls() {
        assert_eq!(
            escape("<a href=\"x\">&'</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;&lt;/a&gt;"
        );
        assert_eq!(escape("a\u{1}b\nc"), "a?b\nc");
    }

    use std::time::Duration;

    use crate::chaos::checks::{BrokenExample, Bucket, Series, StepStats, Totals};

    fn span(name: &'static str, start: u64, end: u64) -> PhaseSpan {
        PhaseSpan {
            name,
            start: Duration::from_secs(start),
            end: Duration::from_secs(end),
        }
    }

    fn check(name: &'static str, kind: Kind, passed: bool) -> Check {
        Check {
            name,
            kind,
            passed,
            observed: format!("{name} <observed>"),
            threshold: ">= 99.9%".into(),
            value: serde_json::Value::Null,
            detail: (!passed).then(|| format!("{name} & why")),
        }
    }

    fn fault(n: usize, kind: FaultKind, executed: bool) -> FaultRecord {
        FaultRecord {
            n,
            kind,
            signal: kind.signal_name(),
            instance: n % 2,
            address: format!("127.0.0.1:{}", 4000 + n),
            planned_at_s: 4.0 + n as f64,
            at_s: executed.then_some(4.1 + n as f64),
            pid: executed.then_some(100 + n as u32),
            skipped: (!executed).then(|| "would leave no instance <up>".to_owned()),
            exit: executed.then(|| "signal 9".to_owned()),
            back_at_s: executed.then_some(5.3 + n as f64),
            new_pid: executed.then_some(200 + n as u32),
            ejected_at_s: executed.then_some(4.2 + n as f64),
            readmitted_at_s: executed.then_some(5.5 + n as f64),
            time_to_eject_ms: executed.then_some(120.0),
            time_to_readmit_ms: executed.then_some(240.0),
            out_of_rotation_ms: executed.then_some(1300.0),
            window_s: executed.then_some((4.1 + n as f64, 5.5 + n as f64)),
            note: None,
        }
    }

    /// A document with something in every section.
    fn sample_document() -> Document {
        let buckets = (0..20)
            .map(|i| Bucket {
                t: i as f64 * 0.5,
                rate: 90.0 + i as f64,
                failed: (i % 7 == 3) as u64,
                broken: (i % 5 == 4) as u64 * 2,
                p99_ms: (i != 2).then_some(3.0 + i as f64 / 4.0),
            })
            .collect();
        let analysis = Analysis {
            outcome: Outcome::Fail,
            checks: vec![
                check("broken_expectations", Kind::Check, false),
                check("success_ratio", Kind::Check, true),
                check("session_hops", Kind::Check, false),
                check("time_to_eject", Kind::Info, true),
                check("cross_instance_pairs", Kind::Validity, false),
            ],
            totals: Totals {
                requests: 1000,
                ok: 990,
                broken: 6,
                failed: 4,
                failures: FailureCounts {
                    in_flight_not_replayable: 3,
                    lost: 1,
                    broken: 6,
                },
                failed_by_class: [("reset".to_owned(), 4)].into(),
                duration_s: 10.0,
                achieved_rate: 100.0,
                target_rate: 100.0,
                baseline_p99_ms: Some(3.5),
                kill_window_p99_ms: Some(7.25),
            },
            steps: vec![StepStats {
                step: "GET /whoami".into(),
                setup: false,
                replayable: true,
                requests: 500,
                ok: 494,
                broken: 6,
                failed: 0,
                failures: FailureCounts {
                    broken: 6,
                    ..FailureCounts::default()
                },
                p50_ms: Some(1.25),
                p99_ms: None,
            }],
            broken_examples: vec![BrokenExample {
                message: "GET /whoami expected status 200, got 401 <on #1>".into(),
                step: "GET /whoami".into(),
                user: 3,
                iteration: 7,
                at_s: 5.25,
                instance: Some("b".into()),
                setup_instance: Some("a".into()),
                previous_instance: None,
            }],
            series: Series {
                bucket_s: 0.5,
                buckets,
            },
            kill_windows: vec![(5.1, 6.5), (6.1, 7.5)],
        };
        Document {
            verdict: Outcome::Fail,
            exit_code: 1,
            label: Some("memory & co".into()),
            unstick_version: "0.1.0",
            started_at: "2025-01-02T03:04:05.678Z".into(),
            seed: 42,
            command_line: "unstick chaos --app './app --port {port}' --seed 42".into(),
            app: AppInfo {
                command: "./app --port {port}".into(),
                instances: 2,
                ready_path: "/healthz".into(),
                identity_headers: vec!["x-instance-id".into()],
            },
            load: LoadInfo {
                users: 4,
                rate: 100.0,
                timeout_s: 2.0,
                scenario: "demo".into(),
                read_only: false,
            },
            faults: FaultsInfo {
                kinds: vec![FaultKind::Kill, FaultKind::Stop],
                every_s: 2.0,
                restart_after_s: 1.0,
                pause_s: 1.0,
                allow_total_outage: false,
            },
            thresholds: ThresholdsInfo {
                min_success: 0.999,
                strict: false,
                max_p99_ratio: 10.0,
                p99_floor_ms: 50.0,
            },
            phases: [
                span("warm-up", 0, 2),
                span("baseline", 2, 4),
                span("chaos", 4, 8),
                span("recovery", 8, 10),
            ],
            plan: vec![],
            plan_skipped: vec![],
            timeline: vec![
                fault(1, FaultKind::Kill, true),
                fault(2, FaultKind::Stop, true),
                fault(3, FaultKind::Term, false),
            ],
            unplanned_exits: vec![UnplannedExit {
                instance: 1,
                pid: 77,
                at_s: 6.75,
                status: "exit status: 3 <crash>".into(),
                back_at_s: None,
                new_pid: None,
            }],
            instances: vec![
                InstanceInfo {
                    index: 0,
                    name: None,
                    address: "127.0.0.1:4001".into(),
                    pids: vec![100, 201],
                },
                InstanceInfo {
                    index: 1,
                    name: None,
                    address: "127.0.0.1:4002".into(),
                    pids: vec![101],
                },
            ],
            session_hops: sample_hops(),
            analysis,
        }
    }

    fn sample_hops() -> SessionHops {
        use crate::chaos::session_hops::{CookieHops, HopExample, Rule};
        let example = HopExample {
            time: "2025-01-02T03:04:09Z".into(),
            method: "GET".into(),
            path: "/whoami".into(),
            status: 401,
            reason: "denied".into(),
            from_instance: Some(0),
            to_instance: Some(1),
            message: "GET /whoami -> 401 (denied) on instance #1, session issued by <instance #0>"
                .into(),
        };
        SessionHops {
            missing: None,
            rule: Rule {
                share: 0.05,
                min_hops: 20,
            },
            cookies: vec![CookieHops {
                name: "sid".into(),
                source: "learned".into(),
                issued: 4,
                same_instance: 30,
                hops: 62,
                kept: 20,
                broken: 40,
                unjudged: 2,
                broken_share: Some(40.0 / 60.0),
                broken_by: [("denied".to_owned(), 40)].into(),
                failed: true,
                examples: vec![example],
            }],
        }
    }

    #[test]
    fn every_section_is_rendered_and_escaped() {
        let doc = sample_document();
        let page = html(&doc);
        for part in [
            "<title>unstick chaos (memory &amp; co): FAIL</title>",
            "broken_expectations &amp; why",
            "<td class=\"INVALID\">INVALID</td>",
            "at 5.25s: GET /whoami expected status 200, got 401 &lt;on #1&gt;",
            "skipped: would leave no instance &lt;up&gt;",
            "#1 (pid 77) at 6.75s: exit status: 3 &lt;crash&gt;; up again -",
            "<td><code>GET /whoami</code><br><span class=\"muted\">replayable</span></td><td>500</td><td>494</td><td>6</td><td>0</td><td>0</td><td>0</td><td>1.2 ms</td><td>-</td>",
            "<tr><td><code>in_flight_not_replayable</code></td><td>3</td><td>a non-idempotent request",
            "<tr><td><code>lost</code></td><td>1</td>",
            "instance #0 on 127.0.0.1:4001: pids 100, 201",
            "kill window 5.10s to 6.50s",
            ">K1</text>",
            ">S2</text>",
            "<h2>Session hops seen by the balancer</h2>",
            "<td><code>sid</code> <span class=\"muted\">learned</span></td><td>30</td><td>62</td><td>20</td><td>40</td><td>2</td><td class=\"FAIL\">66.7%</td>",
            "2025-01-02T03:04:09Z: GET /whoami -&gt; 401 (denied) on instance #1, session issued by &lt;instance #0&gt;",
        ] {
            assert!(page.contains(part), "{part} not in\n{page}");
        }
        assert!(!page.contains("<crash>") && !page.contains("<script"));
        let text = summary(&doc, None);
        assert!(
            text.starts_with("unstick chaos (memory & co): FAIL  (seed 42)\n"),
            "{text}"
        );
        assert!(text.contains("faults: 2 carried out (1 SIGKILL, 1 SIGSTOP), 1 skipped; requests: 1000, failed 4, broken 6 (lost 1, in flight not replayable 3)"), "{text}");
        let x = junit(&doc);
        assert!(
            x.contains("<property name=\"failures.in_flight_not_replayable\" value=\"3\"/>"),
            "{x}"
        );
        assert!(x.contains("<property name=\"failures.lost\" value=\"1\"/>"));
        assert!(text.contains("1 instance(s) exited on their own"), "{text}");
        assert!(text.contains("  broken session hops seen by the balancer, e.g.:\n    GET /whoami -> 401 (denied) on instance #1"), "{text}");
        let xml = junit(&doc);
        assert!(xml.contains("session_hops &amp; why\nGET /whoami -&gt; 401 (denied) on instance #1, session issued by &lt;instance #0&gt;</system-out>"), "{xml}");
        assert!(
            text.contains("  verdict: FAIL (a check failed: see above)"),
            "{text}"
        );
    }

    #[test]
    fn axis_tops_are_round() {
        assert_eq!(nice(87.0), 100.0);
        assert_eq!(nice(130.0), 200.0);
        assert_eq!(nice(2.2), 2.5);
        assert_eq!(nice(0.0), 1.0);
        assert_eq!(trim(2.0), "2");
        assert_eq!(trim(2.5), "2.5");
    }
}
