//! `unstick load URL`: a closed- or open-model load run with a summary and optional JSON.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{HeaderName, HeaderValue, Method};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{EXIT_FAILURE, EXIT_USAGE};
use crate::config::parse_duration;
use crate::load::{Engine, FixedRequest, Live, LoadError, Report, Settings, Target};

/// Runs without `--duration` or `--requests` last this long.
const DEFAULT_DURATION: Duration = Duration::from_secs(10);

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// The URL to send requests to: `http[s]://HOST[:PORT][/PATH][?QUERY]`
    #[arg(value_parser = parse_target)]
    url: Target,
    /// Connections, each carrying one request at a time (closed model: as
    /// fast as answers come)
    #[arg(short = 'c', long, default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Open model: requests per second in total, across all connections;
    /// latency counts from each request's scheduled time
    #[arg(short = 'r', long, value_parser = parse_rate)]
    rate: Option<f64>,
    /// How long to send, e.g. `30s` [default: 10s unless --requests is given]
    #[arg(short = 'd', long, value_parser = parse_positive_duration)]
    duration: Option<Duration>,
    /// How many requests to send (with --duration: whichever ends first)
    #[arg(short = 'n', long, value_parser = clap::value_parser!(u64).range(1..))]
    requests: Option<u64>,
    /// Load threads [default: the CPU count, at most --connections]
    #[arg(short = 't', long, value_parser = clap::value_parser!(u32).range(1..))]
    threads: Option<u32>,
    /// Request method
    #[arg(short = 'X', long, default_value = "GET", value_parser = parse_method)]
    method: Method,
    /// A request header, `NAME: VALUE`; repeatable
    #[arg(short = 'H', long = "header", value_name = "NAME: VALUE", value_parser = parse_header)]
    headers: Vec<(HeaderName, HeaderValue)>,
    /// Request body
    #[arg(long, conflicts_with = "body_file")]
    body: Option<String>,
    /// Request body, read from a file
    #[arg(long, value_name = "FILE")]
    body_file: Option<PathBuf>,
    /// Give up on a request (connecting included) after this long
    #[arg(long, default_value = "10s", value_parser = parse_positive_duration)]
    timeout: Duration,
    /// A new connection for every request
    #[arg(long)]
    no_keepalive: bool,
    /// HTTP/2: prior knowledge (h2c) for http://, ALPN for https://
    #[arg(long)]
    http2: bool,
    /// Accept any TLS certificate (self-signed targets)
    #[arg(short = 'k', long)]
    insecure: bool,
    /// Open model: a request sent later than its slot by more than this counts as late
    #[arg(long, default_value = "1ms", value_parser = parse_duration)]
    late_after: Duration,
    /// Also write every figure of the report to FILE as JSON
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
}

fn parse_target(s: &str) -> Result<Target, String> {
    Target::parse(s).map_err(|e| e.reason)
}

fn parse_rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        Ok(_) => Err("the rate must be above 0 requests per second".into()),
        Err(_) => Err(format!("`{s}` is not a number of requests per second")),
    }
}

fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match parse_duration(s)? {
        d if d.is_zero() => Err("must be above 0".into()),
        d => Ok(d),
    }
}

fn parse_method(s: &str) -> Result<Method, String> {
    Method::from_bytes(s.as_bytes()).map_err(|_| format!("`{s}` is not an HTTP method"))
}

fn parse_header(s: &str) -> Result<(HeaderName, HeaderValue), String> {
    let (name, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}` is not `NAME: VALUE`"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes())
        .map_err(|_| format!("`{}` is not a header name", name.trim()))?;
    let value = HeaderValue::from_str(value.trim())
        .map_err(|_| format!("the value of `{name}` has characters a header cannot carry"))?;
    Ok((name, value))
}

/// `unstick load`: exit 0 when the run got responses, 1 when it could not
/// run or got none, 2 on bad arguments.
pub fn run(args: LoadArgs) -> ExitCode {
    let body = match read_body(&args) {
        Ok(b) => b,
        Err(code) => return code,
    };
    let settings = settings_of(&args);
    let workload = FixedRequest::new(
        &args.url,
        args.method.clone(),
        args.headers,
        body,
        settings.http2,
        settings.keepalive,
    );
    let engine = match Engine::new(settings, workload) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let runtime = match super::runtime(super::Runtime::CurrentThread) {
        Ok(r) => r,
        Err(code) => return code,
    };
    let mut report: Report = match runtime.block_on(drive(engine)) {
        Ok(r) => r,
        Err(e @ LoadError::Settings(_)) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_FAILURE);
        }
    };
    report.run.method = Some(args.method.to_string());
    write_out(&report, args.json.as_deref())
}

/// The request body from `--body` or `--body-file` (empty without either).
fn read_body(args: &LoadArgs) -> Result<Bytes, ExitCode> {
    match (&args.body, &args.body_file) {
        (Some(b), _) => Ok(Bytes::from(b.clone())),
        (None, Some(f)) => match std::fs::read(f) {
            Ok(b) => Ok(Bytes::from(b)),
            Err(e) => {
                eprintln!("error: cannot read --body-file {}: {e}", f.display());
                Err(ExitCode::from(EXIT_USAGE))
            }
        },
        (None, None) => Ok(Bytes::new()),
    }
}

/// The engine's settings from the arguments.
fn settings_of(args: &LoadArgs) -> Settings {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut settings = Settings::new(args.url.clone());
    settings.connections = args.connections as usize;
    settings.threads = args.threads.map_or(cpus, |t| t as usize);
    settings.rate = args.rate;
    settings.requests = args.requests;
    settings.duration = match (args.duration, args.requests) {
        (None, None) => Some(DEFAULT_DURATION),
        (d, _) => d,
    };
    settings.timeout = args.timeout;
    settings.keepalive = !args.no_keepalive;
    settings.http2 = args.http2;
    settings.insecure = args.insecure;
    settings.late_after = args.late_after;
    settings
}

/// Probes the target, then runs the load with a progress bar (on a
/// terminal) until it ends or Ctrl-C stops it.
async fn drive(engine: Engine<FixedRequest>) -> Result<Report, LoadError> {
    engine.probe().await?;
    let progress = std::io::stderr()
        .is_terminal()
        .then(|| Progress::start(engine.live(), engine.settings()));
    let stopper = engine.stopper();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stopper.stop();
        }
    });
    let report = engine.run().await;
    ctrl_c.abort();
    if let Some(p) = progress {
        p.finish().await;
    }
    report
}

/// Prints the report (and writes its JSON to `json`); fails when no
/// request got a response.
fn write_out(report: &Report, json: Option<&std::path::Path>) -> ExitCode {
    print!("{report}");
    if let Some(path) = json {
        if let Err(e) = std::fs::write(path, report.to_json() + "\n") {
            eprintln!("error: cannot write {}: {e}", path.display());
            return ExitCode::from(EXIT_FAILURE);
        }
    }
    if report.responses == 0 {
        let e = &report.errors;
        eprintln!(
            "error: no request got a response ({} refused, {} reset, {} timeout, {} other)",
            e.refused, e.reset, e.timeout, e.other
        );
        return ExitCode::from(EXIT_FAILURE);
    }
    ExitCode::SUCCESS
}

/// The live progress bar on stderr (only drawn when stderr is a terminal).
struct Progress {
    bar: ProgressBar,
    task: tokio::task::JoinHandle<()>,
}

impl Progress {
    fn start(live: Arc<Live>, settings: &Settings) -> Progress {
        // Progress is time for a timed run, requests for a counted one.
        let by_time = settings.duration.is_some();
        let len = match (settings.duration, settings.requests) {
            (Some(d), _) => d.as_millis() as u64,
            (None, Some(n)) => n,
            (None, None) => 0,
        };
        let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(4));
        let style = ProgressStyle::with_template("{elapsed:>4} [{wide_bar}] {percent:>3}%  {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        bar.set_style(style);
        let b = bar.clone();
        let task = tokio::spawn(async move {
            let tick = Duration::from_millis(250);
            let mut last = live.snapshot();
            loop {
                tokio::time::sleep(tick).await;
                let now = live.snapshot();
                let dt = now.elapsed.saturating_sub(last.elapsed).as_secs_f64();
                let rate = if dt > 0.0 {
                    (now.requests - last.requests) as f64 / dt
                } else {
                    0.0
                };
                b.set_position(if by_time {
                    now.elapsed.as_millis() as u64
                } else {
                    now.requests
                });
                b.set_message(format!(
                    "{rate:.0}/s  {} requests  {} errors  {} late",
                    now.requests, now.errors, now.late
                ));
                last = now;
            }
        });
        Progress { bar, task }
    }

    async fn finish(self) {
        self.task.abort();
        let _ = self.task.await;
        self.bar.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_headers_and_rates() {
        let (n, v) = parse_header("X-Test:  a b ").unwrap();
        assert_eq!((n.as_str(), v.to_str().unwrap()), ("x-test", "a b"));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: x").is_err());
        assert_eq!(parse_rate("2.5").unwrap(), 2.5);
        for bad in ["0", "-1", "inf", "NaN", "x"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
        assert!(parse_positive_duration("0").is_err());
        assert!(parse_method("GE T").is_err());
    }
}
