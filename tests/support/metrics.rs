//! Prometheus scrapes from the admin listener or an in-process app, checked line by line, with sample look-ups.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use prometheus_parse::{LineInfo, Sample, Value};
use unstick::app::App;
use unstick::testkit::client;

/// A scrape, checked line by line and parsed.
pub struct Scrape {
    pub text: String,
    pub samples: Vec<Sample>,
}

/// `GET /metrics` on the admin listener: a 200 in the text exposition
/// format, parsed with [`Scrape::parse`].
pub async fn scrape(admin: SocketAddr) -> Scrape {
    let r = client::get(admin, "/metrics").await.expect("GET /metrics");
    assert_eq!(r.status, StatusCode::OK);
    let ct = r.headers["content-type"].to_str().expect("content-type");
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    Scrape::parse(r.text())
}

/// Scrapes until the series `name{labels}` (exact labels) reads `want`, at
/// most `limit`; returns the last scrape (the caller asserts on it).
pub async fn wait_value(
    admin: SocketAddr,
    name: &str,
    labels: &[(&str, &str)],
    want: f64,
    limit: Duration,
) -> Scrape {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let s = scrape(admin).await;
        if s.value(name, labels) == Some(want) || tokio::time::Instant::now() > deadline {
            return s;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl Scrape {
    /// The metrics of an in-process app (its registry, encoded).
    pub fn of(app: &App) -> Scrape {
        Scrape::parse(app.proxy.metrics.encode())
    }

    /// Parses `text`, failing on any line that is not valid exposition
    /// format (HELP before TYPE, one TYPE per family, samples of declared
    /// families, cumulative histogram buckets ending at `_count`).
    pub fn parse(text: String) -> Scrape {
        check_lines(&text);
        let parsed = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned())))
            .expect("parses as Prometheus text");
        check_histograms(&parsed.samples);
        Scrape {
            text,
            samples: parsed.samples,
        }
    }

    /// Every sample named `name` (histograms aside), with its labels.
    pub fn family(&self, name: &str) -> Vec<(HashMap<String, String>, f64)> {
        self.samples
            .iter()
            .filter(|s| s.metric == name && !matches!(s.value, Value::Histogram(_)))
            .map(|s| ((*s.labels).clone(), number(&s.value)))
            .collect()
    }

    /// The series `name` with exactly `labels`, if present.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.family(name)
            .into_iter()
            .find(|(l, _)| same_labels(l, labels))
            .map(|(_, v)| v)
    }

    /// The sum of the series `name` whose labels include `labels` (others
    /// may be present); 0 if none.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.family(name)
            .iter()
            .filter(|(l, _)| {
                labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|(_, v)| v)
            .sum()
    }

    /// Asserts the family's exact contents: each listed series has its value
    /// and every other series of the family is 0.
    pub fn assert_family(&self, name: &str, expected: &[(&[(&str, &str)], f64)]) {
        let family = self.family(name);
        assert!(!family.is_empty(), "no {name} in\n{}", self.text);
        for (labels, want) in expected {
            let got = family
                .iter()
                .find(|(l, _)| same_labels(l, labels))
                .map(|(_, v)| *v);
            assert_eq!(got, Some(*want), "{name}{labels:?}\n{}", self.text);
        }
        for (l, v) in &family {
            if !expected.iter().any(|(e, _)| same_labels(l, e)) {
                assert_eq!(*v, 0.0, "{name}{l:?} should be 0\n{}", self.text);
            }
        }
    }

    /// Asserts one series' value exactly (exact labels).
    pub fn assert_value(&self, name: &str, labels: &[(&str, &str)], want: f64) {
        assert_eq!(
            self.value(name, labels),
            Some(want),
            "{name}{labels:?}\n{}",
            self.text
        );
    }
}

/// HELP, TYPE and sample lines in the order and shape the format asks for.
fn check_lines(text: &str) {
    let mut typed: HashMap<String, String> = HashMap::new();
    let mut helped = Vec::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { metric_name, .. } => helped.push(metric_name.to_owned()),
            LineInfo::Type {
                metric_alias,
                metric_name,
                ..
            } => {
                let family = metric_alias.unwrap_or(metric_name);
                let kind = line.split_whitespace().nth(3).expect("a type").to_owned();
                assert!(helped.contains(&family), "TYPE before HELP: {line}");
                assert!(typed.insert(family, kind).is_none(), "TYPE twice: {line}");
            }
            LineInfo::Sample {
                metric_name, value, ..
            } => {
                assert!(
                    value.parse::<f64>().is_ok() || value == "+Inf",
                    "value of {line}"
                );
                assert!(
                    declared(&typed, metric_name),
                    "sample of an undeclared family: {line}"
                );
            }
            LineInfo::Empty => {}
            LineInfo::Ignored => panic!("not Prometheus text: {line:?}"),
        }
    }
}

/// Whether `metric` is a declared family or a histogram's `_bucket`,
/// `_sum` or `_count`.
fn declared(typed: &HashMap<String, String>, metric: &str) -> bool {
    typed.iter().any(|(family, kind)| {
        metric == family
            || (kind == "histogram"
                && ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|s| metric == format!("{family}{s}")))
    })
}

/// Cumulative buckets, the last (+Inf) equal to `_count`.
fn check_histograms(samples: &[Sample]) {
    for s in samples {
        let Value::Histogram(buckets) = &s.value else {
            continue;
        };
        assert!(buckets
            .windows(2)
            .all(|w| w[0].less_than < w[1].less_than && w[0].count <= w[1].count));
        let inf = buckets.last().expect("a bucket");
        assert!(inf.less_than.is_infinite());
        let count = samples
            .iter()
            .find(|c| c.metric == format!("{}_count", s.metric) && c.labels == s.labels)
            .expect("a _count per histogram");
        assert_eq!(number(&count.value), inf.count, "{}", s.metric);
    }
}

/// Exactly these labels, no more.
pub fn same_labels(got: &HashMap<String, String>, want: &[(&str, &str)]) -> bool {
    got.len() == want.len()
        && want
            .iter()
            .all(|(k, v)| got.get(*k).map(String::as_str) == Some(*v))
}

fn number(v: &Value) -> f64 {
    match v {
        Value::Counter(x) | Value::Gauge(x) | Value::Untyped(x) => *x,
        other => panic!("not a number: {other:?}"),
    }
}
