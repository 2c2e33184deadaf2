//! Watches the balancer through its admin listener: backend states every 50 ms, the affinity and session-hop reports at the end.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::sync::watch;

/// How often backend states are read during a run.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// A small HTTP/1.1 client for the admin listener, keeping its connection.
pub struct AdminClient {
    addr: SocketAddr,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

/// One backend as `GET /api/backends` shows it (the fields chaos reads).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct BackendRow {
    pub address: String,
    pub healthy: bool,
    pub state: String,
    pub requests: u64,
}

/// A backend seen in a new state.
#[derive(Debug, Clone)]
pub struct Transition {
    pub at: Instant,
    pub address: String,
    pub healthy: bool,
    pub state: String,
}

// === impl AdminClient ===

impl AdminClient {
    pub fn new(addr: SocketAddr) -> AdminClient {
        AdminClient { addr, sender: None }
    }

    /// `GET path`: the status and body, within a second per step.
    pub async fn get(&mut self, path: &str) -> Result<(StatusCode, Bytes), String> {
        let limit = Duration::from_secs(1);
        let result = tokio::time::timeout(limit * 3, self.exchange(path, limit)).await;
        match result {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(e)
            }
            Err(_) => {
                self.sender = None;
                Err(format!(
                    "no answer from the admin listener within {limit:?}"
                ))
            }
        }
    }

    async fn exchange(
        &mut self,
        path: &str,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), String> {
        let sender = match &mut self.sender {
            Some(s) if !s.is_closed() => s,
            _ => {
                let stream = tokio::time::timeout(limit, tokio::net::TcpStream::connect(self.addr))
                    .await
                    .map_err(|_| "connect timed out".to_owned())?
                    .map_err(|e| format!("cannot connect to {}: {e}", self.addr))?;
                let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(|e| e.to_string())?;
                tokio::spawn(async move {
                    let _ = conn.await;
                });
                self.sender.insert(sender)
            }
        };
        sender.ready().await.map_err(|e| e.to_string())?;
        let req = Request::get(path)
            .header(header::HOST, self.addr.to_string())
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let resp = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok((status, body))
    }

    /// `GET /api/backends`.
    pub async fn backends(&mut self) -> Result<Vec<BackendRow>, String> {
        let (status, body) = self.get("/api/backends").await?;
        if status != StatusCode::OK {
            return Err(format!("/api/backends answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("/api/backends: {e}"))
    }

    /// `GET /api/affinity`, as JSON.
    pub async fn affinity(&mut self) -> Result<serde_json::Value, String> {
        let (status, body) = self.get("/api/affinity").await?;
        if status != StatusCode::OK {
            return Err(format!("/api/affinity answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("/api/affinity: {e}"))
    }

    /// `GET /api/statelessness`: the session hops the balancer saw.
    pub async fn statelessness(&mut self) -> Result<crate::hops::Report, String> {
        let (status, body) = self.get("/api/statelessness").await?;
        if status != StatusCode::OK {
            return Err(format!("/api/statelessness answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| format!("/api/statelessness: {e}"))
    }

    /// Waits until every backend is in rotation, up to `limit`; returns the
    /// last rows seen.
    pub async fn wait_all_healthy(&mut self, limit: Duration) -> Result<Vec<BackendRow>, String> {
        let deadline = Instant::now() + limit;
        loop {
            let rows = self.backends().await;
            if let Ok(r) = &rows {
                if !r.is_empty() && r.iter().all(|b| b.healthy) {
                    return rows;
                }
            }
            if Instant::now() >= deadline {
                return rows;
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }
}

/// Reads backend states every [`POLL_EVERY`] until `stop` turns true;
/// returns every change (the first reading of each backend included).
pub async fn watch_backends(
    mut client: AdminClient,
    mut stop: watch::Receiver<bool>,
) -> Vec<Transition> {
    let mut out: Vec<Transition> = Vec::new();
    let mut last: Vec<(String, bool, String)> = Vec::new();
    let mut tick = tokio::time::interval(POLL_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return out,
        }
        let Ok(rows) = client.backends().await else {
            continue;
        };
        let at = Instant::now();
        for r in rows {
            let seen = last.iter_mut().find(|(a, _, _)| *a == r.address);
            let changed = match seen {
                Some((_, healthy, state)) if *healthy == r.healthy && *state == r.state => false,
                Some(entry) => {
                    *entry = (r.address.clone(), r.healthy, r.state.clone());
                    true
                }
                None => {
                    last.push((r.address.clone(), r.healthy, r.state.clone()));
                    true
                }
            };
            if changed {
                out.push(Transition {
                    at,
                    address: r.address,
                    healthy: r.healthy,
                    state: r.state,
                });
            }
        }
    }
}

/// When `address` left rotation after `fault`, and when it was next back
/// in rotation. (The balancer may see a restarted instance healthy a little
/// before the supervisor's own readiness poll does, so "back" comes from the
/// ejection, not from the restart.)
pub fn eject_and_readmit(
    transitions: &[Transition],
    address: &str,
    fault: Instant,
) -> (Option<Instant>, Option<Instant>) {
    let mine = || transitions.iter().filter(|t| t.address == address);
    let Some(ejected) = mine().find(|t| t.at >= fault && !t.healthy).map(|t| t.at) else {
        return (None, None);
    };
    let readmitted = mine().find(|t| t.at > ejected && t.healthy).map(|t| t.at);
    (Some(ejected), readmitted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eject_and_readmit_follow_the_fault() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let tr = |ms: u64, a: &str, healthy: bool| Transition {
            at: at(ms),
            address: a.into(),
            healthy,
            state: if healthy { "healthy" } else { "ejected" }.into(),
        };
        let list = vec![
            tr(0, "a", true),
            tr(0, "b", true),
            tr(500, "a", false),
            tr(900, "a", true),
            tr(2100, "a", false),
            tr(2200, "b", false),
            tr(3300, "a", true),
        ];
        // A fault at 2000 on a.
        assert_eq!(
            eject_and_readmit(&list, "a", at(2000)),
            (Some(at(2100)), Some(at(3300)))
        );
        assert_eq!(
            eject_and_readmit(&list, "a", at(400)),
            (Some(at(500)), Some(at(900)))
        );
        // Never back.
        assert_eq!(
            eject_and_readmit(&list, "b", at(2000)),
            (Some(at(2200)), None)
        );
        // Never ejected.
        assert_eq!(eject_and_readmit(&list, "a", at(3400)), (None, None));
    }
}
