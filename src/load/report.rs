//! Results: per-thread [`Collector`]s (no locks), merged into a [`Report`] with
//! percentiles, status and error counts, and a per-second time series.

use std::collections::BTreeMap;
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;

use super::client::ErrorClass;

/// Largest latency the histogram resolves (larger values are clamped): one hour, in µs.
const MAX_LATENCY_US: u64 = 3_600_000_000;

/// Per-second rows printed in the human summary; longer series are in `--json` only.
pub const SUMMARY_TIMELINE_ROWS: usize = 60;

/// Counts of one second of the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Second {
    /// Seconds since the start (0-based), by completion time.
    pub second: u64,
    /// Requests that ended in this second (responses + errors).
    pub requests: u64,
    pub responses: u64,
    pub errors: u64,
    pub late: u64,
    /// Mean and max latency of this second's responses, in ms.
    pub mean_ms: f64,
    pub max_ms: f64,
    #[serde(skip)]
    latency_sum_us: u64,
    #[serde(skip)]
    latency_max_us: u64,
}

/// What one load thread saw. Only its own thread writes it.
pub(crate) struct Collector {
    hist: Histogram<u64>,
    /// Indexed by status code (100..=999).
    status: Vec<u64>,
    errors: [u64; 4],
    examples: [Option<String>; 4],
    requests: u64,
    responses: u64,
    late: u64,
    body_bytes: u64,
    pub connections_opened: u64,
    timeline: Vec<Second>,
    last_done: Option<Instant>,
    /// Exact (the histogram rounds to three significant digits).
    max_us: u64,
}

// === impl Collector ===

impl Collector {
    pub fn new() -> Collector {
        Collector {
            hist: new_histogram(),
            status: vec![0; 1000],
            errors: [0; 4],
            examples: Default::default(),
            requests: 0,
            responses: 0,
            late: 0,
            body_bytes: 0,
            connections_opened: 0,
            timeline: Vec::new(),
            last_done: None,
            max_us: 0,
        }
    }

    fn second(&mut self, start: Instant, done: Instant) -> &mut Second {
        let s = done.saturating_duration_since(start).as_secs() as usize;
        while self.timeline.len() <= s {
            let second = self.timeline.len() as u64;
            self.timeline.push(Second {
                second,
                ..Second::default()
            });
        }
        &mut self.timeline[s]
    }

    fn finish(&mut self, start: Instant, done: Instant, late: bool) -> &mut Second {
        self.requests += 1;
        self.late += late as u64;
        if self.last_done.is_none_or(|d| done > d) {
            self.last_done = Some(done);
        }
        let s = self.second(start, done);
        s.requests += 1;
        s.late += late as u64;
        s
    }

    /// A complete response.
    pub fn response(
        &mut self,
        start: Instant,
        done: Instant,
        latency: Duration,
        late: bool,
        status: u16,
        body_bytes: u64,
    ) {
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        self.hist.saturating_record(us);
        self.max_us = self.max_us.max(us);
        self.responses += 1;
        self.body_bytes += body_bytes;
        if let Some(c) = self.status.get_mut(status as usize) {
            *c += 1;
        }
        let s = self.finish(start, done, late);
        s.responses += 1;
        s.latency_sum_us += us;
        s.latency_max_us = s.latency_max_us.max(us);
    }

    /// A failed request.
    pub fn error(
        &mut self,
        start: Instant,
        done: Instant,
        late: bool,
        class: ErrorClass,
        message: &str,
    ) {
        let i = class.index();
        self.errors[i] += 1;
        if self.examples[i].is_none() {
            self.examples[i] = Some(message.to_owned());
        }
        self.finish(start, done, late).errors += 1;
    }

    /// Adds `other` into this one.
    fn merge(&mut self, other: Collector) {
        let _ = self.hist.add(&other.hist);
        for (a, b) in self.status.iter_mut().zip(&other.status) {
            *a += b;
        }
        for i in 0..4 {
            self.errors[i] += other.errors[i];
            if self.examples[i].is_none() {
                self.examples[i] = other.examples[i].clone();
            }
        }
        self.requests += other.requests;
        self.responses += other.responses;
        self.late += other.late;
        self.body_bytes += other.body_bytes;
        self.connections_opened += other.connections_opened;
        self.max_us = self.max_us.max(other.max_us);
        for s in other.timeline {
            let i = s.second as usize;
            while self.timeline.len() <= i {
                let second = self.timeline.len() as u64;
                self.timeline.push(Second {
                    second,
                    ..Second::default()
                });
            }
            let t = &mut self.timeline[i];
            t.requests += s.requests;
            t.responses += s.responses;
            t.errors += s.errors;
            t.late += s.late;
            t.latency_sum_us += s.latency_sum_us;
            t.latency_max_us = t.latency_max_us.max(s.latency_max_us);
        }
        self.last_done = match (self.last_done, other.last_done) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Microseconds as milliseconds with three decimals (exact: the histogram counts µs).
fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

/// Latency percentiles of the responses, in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    #[serde(rename = "p99.9")]
    pub p99_9: f64,
    pub max: f64,
    pub min: f64,
    pub mean: f64,
    pub stdev: f64,
}

/// Failed requests by class.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct ErrorCounts {
    pub refused: u64,
    pub reset: u64,
    pub timeout: u64,
    pub other: u64,
}

impl ErrorCounts {
    /// All failed requests.
    pub fn total(&self) -> u64 {
        self.refused + self.reset + self.timeout + self.other
    }

    /// The count of one class.
    pub fn get(&self, class: ErrorClass) -> u64 {
        match class {
            ErrorClass::Refused => self.refused,
            ErrorClass::Reset => self.reset,
            ErrorClass::Timeout => self.timeout,
            ErrorClass::Other => self.other,
        }
    }
}

/// What a run was asked to do.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub url: String,
    /// Set by the caller when the workload has a single method.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// `closed` (as fast as answers come) or `open` (a fixed rate).
    pub model: &'static str,
    pub connections: usize,
    pub threads: usize,
    /// Requests per second asked for (open model).
    pub target_rate: Option<f64>,
    pub duration_s: Option<f64>,
    pub request_limit: Option<u64>,
    pub timeout_s: f64,
    pub keepalive: bool,
}

/// The results of a run. Latencies are of complete responses only, measured
/// from the intended send time of late requests (see [`super::Record::latency`]).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunInfo,
    /// From the start of the schedule to the last completion (at least the duration asked for).
    pub elapsed_s: f64,
    /// Requests that ended: responses + errors.
    pub requests: u64,
    pub responses: u64,
    /// Requests per second achieved (`requests / elapsed_s`).
    pub rate: f64,
    /// Requests sent later than their slot by more than the tolerance (open model).
    pub late: u64,
    pub connections_opened: u64,
    /// Response body bytes received.
    pub body_bytes: u64,
    /// `None` when no response came.
    pub latency_ms: Option<Latency>,
    /// Responses by status code.
    pub status: BTreeMap<u16, u64>,
    pub errors: ErrorCounts,
    /// The first error message seen in each class that occurred.
    pub error_examples: BTreeMap<&'static str, String>,
    /// Per-second counts.
    pub timeline: Vec<Second>,
    /// The merged latency histogram (µs), for callers that want more than the percentiles.
    #[serde(skip)]
    pub histogram: Histogram<u64>,
}

// === impl Report ===

impl Report {
    /// Merges the threads' collectors.
    pub(crate) fn build(
        run: RunInfo,
        start: Instant,
        collectors: Vec<Collector>,
        min_elapsed: Duration,
    ) -> Report {
        let mut all = Collector::new();
        for c in collectors {
            all.merge(c);
        }
        let last = all
            .last_done
            .map(|d| d.saturating_duration_since(start))
            .unwrap_or_default();
        let elapsed = last.max(min_elapsed).as_secs_f64();
        let h = &all.hist;
        let latency = (!h.is_empty()).then(|| Latency {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p99_9: ms(h.value_at_quantile(0.999)),
            max: ms(all.max_us),
            min: ms(h.min()),
            mean: round(h.mean() / 1000.0, 3),
            stdev: round(h.stdev() / 1000.0, 3),
        });
        let status = all
            .status
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(code, n)| (code as u16, *n))
            .collect();
        let [refused, reset, timeout, other] = all.errors;
        let error_examples = ErrorClass::ALL
            .iter()
            .filter_map(|c| Some((c.name(), all.examples[c.index()].clone()?)))
            .collect();
        let timeline = all
            .timeline
            .into_iter()
            .map(|mut s| {
                if s.responses > 0 {
                    s.mean_ms = round(s.latency_sum_us as f64 / s.responses as f64 / 1000.0, 3);
                    s.max_ms = ms(s.latency_max_us);
                }
                s
            })
            .collect();
        Report {
            run,
            elapsed_s: round(elapsed, 3),
            requests: all.requests,
            responses: all.responses,
            rate: if elapsed > 0.0 {
                round(all.requests as f64 / elapsed, 1)
            } else {
                0.0
            },
            late: all.late,
            connections_opened: all.connections_opened,
            body_bytes: all.body_bytes,
            latency_ms: latency,
            status,
            errors: ErrorCounts {
                refused,
                reset,
                timeout,
                other,
            },
            error_examples,
            timeline,
            histogram: all.hist,
        }
    }

    /// The JSON document `--json` writes.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes")
    }
}

/// A number without a useless `.0`.
fn num(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

/// The human summary printed on stdout.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut out = String::new();
        self.write_run(&mut out);
        self.write_counts(&mut out);
        self.write_outcomes(&mut out);
        self.write_timeline(&mut out);
        f.write_str(&out)
    }
}

// === the summary's parts ===

impl Report {
    /// The target and the load model.
    fn write_run(&self, out: &mut String) {
        let r = &self.run;
        let method = r
            .method
            .as_deref()
            .map(|m| format!("{m} "))
            .unwrap_or_default();
        let _ = writeln!(out, "target      {method}{} ({})", r.url, r.protocol);
        let threads = if r.threads == 1 { "thread" } else { "threads" };
        let conns = if r.connections == 1 {
            "connection"
        } else {
            "connections"
        };
        let _ = match r.target_rate {
            Some(rate) => writeln!(
                out,
                "model       open: {}/s over {} {conns}, {} {threads}",
                num(rate),
                r.connections,
                r.threads
            ),
            None => writeln!(
                out,
                "model       closed: {} {conns}, {} {threads}",
                r.connections, r.threads
            ),
        };
    }

    /// Requests, responses and latency.
    fn write_counts(&self, out: &mut String) {
        let target = self
            .run
            .target_rate
            .map(|t| format!(" (target {}/s)", num(t)))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "requests    {} in {:.3}s, {:.1}/s{target}",
            self.requests, self.elapsed_s, self.rate
        );
        let _ = writeln!(
            out,
            "responses   {}, late {}, connections opened {}",
            self.responses, self.late, self.connections_opened
        );
        let _ = match &self.latency_ms {
            Some(l) => writeln!(
                out,
                "latency     p50 {:.3}ms  p90 {:.3}ms  p99 {:.3}ms  p99.9 {:.3}ms  max {:.3}ms",
                l.p50, l.p90, l.p99, l.p99_9, l.max
            ),
            None => writeln!(out, "latency     no responses"),
        };
    }

    /// Status codes, error counts and the first error of each class.
    fn write_outcomes(&self, out: &mut String) {
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(c, n)| format!("{c} {n}"))
            .collect();
        let status = if status.is_empty() {
            "none".to_owned()
        } else {
            status.join("  ")
        };
        let _ = writeln!(out, "status      {status}");
        let e = &self.errors;
        let _ = writeln!(
            out,
            "errors      refused {}  reset {}  timeout {}  other {}",
            e.refused, e.reset, e.timeout, e.other
        );
        for (class, message) in &self.error_examples {
            let _ = writeln!(out, "  first {class}: {message}");
        }
    }

    /// The per-second table when short enough, else where to find it.
    fn write_timeline(&self, out: &mut String) {
        if !self.timeline.is_empty() && self.timeline.len() <= SUMMARY_TIMELINE_ROWS {
            let _ = writeln!(
                out,
                "\nsecond  requests  errors    late   mean ms    max ms"
            );
            for s in &self.timeline {
                let _ = writeln!(
                    out,
                    "{:>6}  {:>8}  {:>6}  {:>6}  {:>8.3}  {:>8.3}",
                    s.second, s.requests, s.errors, s.late, s.mean_ms, s.max_ms
                );
            }
        } else if !self.timeline.is_empty() {
            let _ = writeln!(
                out,
                "\n({} seconds of per-second counts: see --json)",
                self.timeline.len()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> RunInfo {
        RunInfo {
            url: "http://x/".into(),
            method: None,
            protocol: "HTTP/1.1",
            model: "closed",
            connections: 1,
            threads: 1,
            target_rate: None,
            duration_s: None,
            request_limit: None,
            timeout_s: 1.0,
            keepalive: true,
        }
    }

    #[test]
    fn merges_threads_and_buckets_seconds() {
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let mut a = Collector::new();
        a.response(start, at(100), Duration::from_micros(1000), false, 200, 10);
        a.response(start, at(1500), Duration::from_micros(1500), true, 503, 0);
        let mut b = Collector::new();
        b.error(start, at(1600), false, ErrorClass::Reset, "closed");
        b.error(start, at(1700), false, ErrorClass::Reset, "second message");
        b.response(start, at(2100), Duration::from_micros(2000), false, 200, 5);
        let r = Report::build(info(), start, vec![a, b], Duration::ZERO);
        assert_eq!(
            (r.requests, r.responses, r.late, r.body_bytes),
            (5, 3, 1, 15)
        );
        assert_eq!(r.status, BTreeMap::from([(200, 2), (503, 1)]));
        assert_eq!(r.errors.reset, 2);
        assert_eq!(r.errors.total(), 2);
        assert_eq!(r.error_examples["reset"], "closed");
        let counts: Vec<_> = r
            .timeline
            .iter()
            .map(|s| (s.requests, s.errors, s.late))
            .collect();
        assert_eq!(counts, vec![(1, 0, 0), (3, 2, 1), (1, 0, 0)]);
        assert_eq!(r.timeline[1].max_ms, 1.5);
        let l = r.latency_ms.clone().unwrap();
        assert_eq!((l.min, l.p50, l.max, l.mean), (1.0, 1.5, 2.0, 1.5));
        assert_eq!(r.elapsed_s, 2.1);
        let text = r.to_string();
        assert!(text.contains("status      200 2  503 1"), "{text}");
        assert!(
            text.contains("errors      refused 0  reset 2  timeout 0  other 0"),
            "{text}"
        );
    }

    #[test]
    fn an_empty_run_has_no_latency() {
        let r = Report::build(info(), Instant::now(), vec![], Duration::from_secs(1));
        assert!(r.latency_ms.is_none());
        assert_eq!((r.requests, r.rate, r.elapsed_s), (0, 0.0, 1.0));
        assert!(r.to_string().contains("latency     no responses"));
    }
}
