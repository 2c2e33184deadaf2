//! `unstick healthcheck [URL]`: one GET, exit 0 on a 2xx answer and 1 otherwise (a container HEALTHCHECK needing no shell).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use clap::Args;
use http::{header, Request, StatusCode};
use http_body_util::Empty;
use hyper_util::rt::TokioIo;

use super::{Runtime, EXIT_FAILURE, EXIT_USAGE};
use crate::config::Config;
use crate::load::Target;

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The `http://` URL to GET. Default: `/readyz` on the admin listener
    /// `UNSTICK_ADMIN` names (else the default admin address); an
    /// unspecified address (`0.0.0.0`, `::`) is asked on loopback.
    #[arg(value_name = "URL")]
    url: Option<String>,
    /// Give up (unhealthy) after this long: name lookup, connect and answer.
    #[arg(long, value_name = "DURATION", default_value = "3s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

/// Probes the URL; prints one line saying what it found.
pub fn run(args: HealthcheckArgs) -> ExitCode {
    let url = match args.url {
        Some(url) => url,
        None => match default_url() {
            Ok(url) => url,
            Err(e) => return usage(&e),
        },
    };
    let target = match Target::parse(&url) {
        Ok(t) if t.is_tls() => return usage(&format!("`{url}`: only http:// URLs are probed")),
        Ok(t) => t,
        Err(e) => return usage(&e.to_string()),
    };
    let rt = match super::runtime(Runtime::CurrentThread) {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    let outcome = rt.block_on(async {
        match tokio::time::timeout(args.timeout, probe(&target)).await {
            Ok(result) => result,
            Err(_) => Err(format!("no answer within {:?}", args.timeout)),
        }
    });
    match outcome {
        Ok(status) if status.is_success() => {
            println!("healthy: {url}: {status}");
            ExitCode::SUCCESS
        }
        Ok(status) => {
            println!("unhealthy: {url}: {status}");
            ExitCode::from(EXIT_FAILURE)
        }
        Err(e) => {
            println!("unhealthy: {url}: {e}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

fn usage(message: &str) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(EXIT_USAGE)
}

/// `/readyz` on the admin listener, from `UNSTICK_ADMIN` or the default.
fn default_url() -> Result<String, String> {
    let admin = match std::env::var("UNSTICK_ADMIN") {
        Ok(text) if text == "off" => {
            return Err("UNSTICK_ADMIN is off: give the URL to probe".to_owned())
        }
        Ok(text) => text
            .parse::<SocketAddr>()
            .map_err(|_| format!("UNSTICK_ADMIN `{text}` is not an address like 0.0.0.0:8484"))?,
        Err(_) => Config::defaults()
            .admin
            .ok_or("no admin listener by default: give the URL to probe")?,
    };
    Ok(format!("http://{}/readyz", loopback_if_unspecified(admin)))
}

/// A listener on every address is reached on loopback.
fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// One HTTP/1.1 GET; the status of the answer.
async fn probe(target: &Target) -> Result<StatusCode, String> {
    let addr = target.resolve().await.map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tcp))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(conn);
    let request = Request::get(target.path().as_str())
        .header(header::HOST, target.host_header())
        .header(header::USER_AGENT, "unstick-healthcheck")
        .header(header::CONNECTION, "close")
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    let response = send
        .send_request(request)
        .await
        .map_err(|e| e.to_string())?;
    Ok(response.status())
}
