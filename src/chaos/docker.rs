//! App instances that run as containers: found, faulted and restarted through the Docker Engine API (bollard).
//!
//! [`Containers::discover`] asks the engine for the running containers of
//! a compose service (label `com.docker.compose.service`) or of a label
//! selector (`key=value`), and reaches each at its IP address on its
//! network and the app's port in the container: chaos runs on the host,
//! and on Linux the host reaches the addresses of a bridge network
//! directly (chaos run in a container on that network does too). No port
//! is published or guessed. Faults go through the engine: SIGKILL and
//! SIGTERM by `kill`, SIGSTOP and SIGCONT by `pause` and `unpause` (the
//! cgroup freezer), and a restart by `start`, as a restart policy would
//! (an engine that already restarted the container answers 304 and that
//! is fine). The container's main process (its host pid) stands for the
//! instance's pid. A container that dies is reported by the engine's
//! `die` event. [`Containers::restore`] leaves every container running and
//! unpaused when the run ends.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bollard::query_parameters::{
    EventsOptions, KillContainerOptions, ListContainersOptions, StartContainerOptions,
};
use bollard::Docker;
use futures_util::StreamExt;

use crate::demo::supervisor::{http_probe, Event, Instance};

/// Which containers are the app's instances, and how to reach them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerTarget {
    /// A compose service name, or a label selector `key=value` (or `key`).
    pub service: String,
    /// Only this compose project's containers.
    pub project: Option<String>,
    /// The app's port in the container; default: the one port it exposes.
    pub port: Option<u16>,
    /// The network whose address is used, for containers on several.
    pub network: Option<String>,
}

impl DockerTarget {
    /// The engine's label filters for the target.
    fn filters(&self) -> HashMap<String, Vec<String>> {
        let mut labels = Vec::new();
        if self.service.contains('=') {
            labels.push(self.service.clone());
        } else {
            labels.push(format!("com.docker.compose.service={}", self.service));
        }
        if let Some(p) = &self.project {
            labels.push(format!("com.docker.compose.project={p}"));
        }
        HashMap::from([
            ("label".to_owned(), labels),
            ("status".to_owned(), vec!["running".to_owned()]),
        ])
    }

    /// How the target reads in reports: `docker service app`.
    pub fn display(&self) -> String {
        let mut s = format!("docker service {}", self.service);
        if let Some(p) = &self.project {
            s.push_str(&format!(" (project {p})"));
        }
        s
    }
}

/// How an instance says it is ready (the same as for processes).
#[derive(Debug, Clone)]
pub struct Probe {
    pub path: String,
    pub identity_headers: Vec<String>,
    pub timeout: Duration,
}

/// Why the containers could not be used (the app could not be run: exit 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DockerError(pub String);

type EventSink = Box<dyn Fn(&Event) + Send + Sync>;

/// One container as chaos knows it.
#[derive(Debug, Clone)]
struct Slot {
    id: String,
    name: String,
    instance: Instance,
}

/// The app's containers and the engine they run on.
pub struct Containers {
    docker: Docker,
    target: DockerTarget,
    probe: Probe,
    slots: Mutex<Vec<Slot>>,
    on_event: EventSink,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn engine_error(what: &str, e: bollard::errors::Error) -> DockerError {
    DockerError(format!("the Docker engine: {what}: {e}"))
}

// === impl Containers ===

impl Containers {
    /// Connects to the engine (`DOCKER_HOST`, else /var/run/docker.sock),
    /// finds the target's running containers, ordered by name, and waits
    /// until each answers its readiness probe; `on_event` gets a
    /// [`Event::Started`] for each, then every later start and exit.
    pub async fn discover(
        target: DockerTarget,
        probe: Probe,
        on_event: impl Fn(&Event) + Send + Sync + 'static,
    ) -> Result<Arc<Containers>, DockerError> {
        let docker = Docker::connect_with_local_defaults()
            .map_err(|e| engine_error("cannot connect", e))?
            .negotiate_version()
            .await
            .map_err(|e| engine_error("no answer (is the engine running?)", e))?;
        let list = docker
            .list_containers(Some(ListContainersOptions {
                filters: Some(target.filters()),
                ..Default::default()
            }))
            .await
            .map_err(|e| engine_error("cannot list containers", e))?;
        let mut ids: Vec<(String, String)> = list
            .into_iter()
            .filter_map(|c| {
                let name = c.names?.first()?.trim_start_matches('/').to_owned();
                Some((name, c.id?))
            })
            .collect();
        ids.sort();
        check_found(&target, &ids)?;
        let containers = Containers {
            docker,
            target,
            probe,
            slots: Mutex::new(Vec::new()),
            on_event: Box::new(on_event),
        };
        containers.check_one_project(&ids).await?;
        for (index, (name, id)) in ids.into_iter().enumerate() {
            let (addr, pid) = containers.locate(&id).await?;
            let identity = containers
                .ready(addr)
                .await
                .map_err(|e| DockerError(format!("container {name} ({addr}) is not ready: {e}")))?;
            let instance = Instance {
                index,
                addr,
                pid: Some(pid),
                restarts: 0,
                identity: identity.clone(),
            };
            lock(&containers.slots).push(Slot { id, name, instance });
            containers.emit(&Event::Started {
                index,
                addr,
                pid,
                restarts: 0,
                identity,
            });
        }
        Ok(Arc::new(containers))
    }

    /// Refuses a service name found in several compose projects.
    async fn check_one_project(&self, ids: &[(String, String)]) -> Result<(), DockerError> {
        if self.target.project.is_some() || self.target.service.contains('=') {
            return Ok(());
        }
        let mut projects = std::collections::BTreeSet::new();
        for (_, id) in ids {
            let c = self.inspect(id).await?;
            let labels = c.config.and_then(|c| c.labels).unwrap_or_default();
            projects.insert(
                labels
                    .get("com.docker.compose.project")
                    .cloned()
                    .unwrap_or_default(),
            );
        }
        if projects.len() > 1 {
            let list: Vec<String> = projects.into_iter().collect();
            return Err(DockerError(format!(
                "service `{}` runs in {} compose projects ({}): choose one with --docker-project",
                self.target.service,
                list.len(),
                list.join(", ")
            )));
        }
        Ok(())
    }

    async fn inspect(
        &self,
        id: &str,
    ) -> Result<bollard::models::ContainerInspectResponse, DockerError> {
        self.docker
            .inspect_container(id, None)
            .await
            .map_err(|e| engine_error(&format!("cannot inspect container {id}"), e))
    }

    /// The container's address (its IP on the network, the app's port) and
    /// its main process's pid.
    async fn locate(&self, id: &str) -> Result<(SocketAddr, u32), DockerError> {
        let c = self.inspect(id).await?;
        let name = c.name.clone().unwrap_or_default();
        let name = name.trim_start_matches('/');
        let pid = c
            .state
            .as_ref()
            .and_then(|s| s.pid)
            .filter(|p| *p > 0)
            .ok_or_else(|| DockerError(format!("container {name} is not running")))?;
        let port = match self.target.port {
            Some(p) => p,
            None => exposed_port(
                name,
                c.config.as_ref().and_then(|c| c.exposed_ports.as_deref()),
            )?,
        };
        let networks = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        let ip = pick_network(name, &networks, self.target.network.as_deref())?;
        Ok((SocketAddr::new(ip, port), pid as u32))
    }

    /// Probes `addr` until it answers the ready path with a 2xx or 3xx:
    /// the identity it named.
    async fn ready(&self, addr: SocketAddr) -> Result<Option<String>, String> {
        let deadline = Instant::now() + self.probe.timeout;
        loop {
            let (path, headers) = (self.probe.path.clone(), self.probe.identity_headers.clone());
            let r = tokio::task::spawn_blocking(move || http_probe(addr, &path, &headers))
                .await
                .map_err(|e| e.to_string())?;
            let last = match r {
                Ok((status, identity)) if (200..400).contains(&status) => return Ok(identity),
                Ok((status, _)) => format!("GET {} answered {status}", self.probe.path),
                Err(e) => e,
            };
            if Instant::now() >= deadline {
                return Err(format!(
                    "no 2xx or 3xx to GET {} within {:?} ({last})",
                    self.probe.path, self.probe.timeout
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn emit(&self, e: &Event) {
        (self.on_event)(e);
    }

    /// The containers' names, by instance index.
    pub fn names(&self) -> Vec<String> {
        lock(&self.slots).iter().map(|s| s.name.clone()).collect()
    }

    /// The instances as they are now.
    pub fn instances(&self) -> Vec<Instance> {
        lock(&self.slots)
            .iter()
            .map(|s| s.instance.clone())
            .collect()
    }

    /// Applies `sig` to container `index` through the engine: SIGSTOP
    /// pauses, SIGCONT unpauses, any other is sent by `kill`. The pid it
    /// went to, or `None` if the container is not running or the engine
    /// refused.
    pub async fn signal(&self, index: usize, sig: i32) -> Option<u32> {
        let (id, pid) = {
            let slots = lock(&self.slots);
            let s = slots.get(index)?;
            (s.id.clone(), s.instance.pid?)
        };
        let r = match sig {
            libc::SIGSTOP => self.docker.pause_container(&id).await,
            libc::SIGCONT => self.docker.unpause_container(&id).await,
            _ => {
                let signal = signal_name(sig).to_owned();
                let opts = KillContainerOptions { signal };
                self.docker.kill_container(&id, Some(opts)).await
            }
        };
        match r {
            Ok(()) => Some(pid),
            Err(e) => {
                say(&format!(
                    "chaos: the engine refused {} on instance #{index}: {e}",
                    signal_name(sig)
                ));
                None
            }
        }
    }

    /// Starts container `index` again (in the background) and reports it
    /// [`Event::Started`] once ready, or [`Event::StartFailed`].
    pub fn restart(self: &Arc<Self>, index: usize) {
        let me = self.clone();
        tokio::spawn(async move {
            if let Err(error) = me.start_again(index).await {
                me.emit(&Event::StartFailed { index, error });
            }
        });
    }

    async fn start_again(&self, index: usize) -> Result<(), String> {
        let Some(slot) = lock(&self.slots).get(index).cloned() else {
            return Err(format!("no instance #{index}"));
        };
        match self
            .docker
            .start_container(&slot.id, None::<StartContainerOptions>)
            .await
        {
            // 304: already running (the engine's restart policy was first).
            Ok(()) => {}
            Err(bollard::errors::Error::DockerResponseServerError {
                status_code: 304, ..
            }) => {}
            Err(e) => return Err(format!("the engine cannot start {}: {e}", slot.name)),
        }
        let (addr, pid) = self.locate(&slot.id).await.map_err(|e| e.0)?;
        let identity = self.ready(addr).await?;
        let restarts = {
            let mut slots = lock(&self.slots);
            let s = &mut slots[index];
            s.instance.addr = addr;
            s.instance.pid = Some(pid);
            s.instance.restarts += 1;
            s.instance.identity = identity.clone();
            s.instance.restarts
        };
        if addr != slot.instance.addr {
            say(&format!(
                "chaos: warning: {} came back on {addr}, not {}: the balancer does not follow it",
                slot.name, slot.instance.addr
            ));
        }
        self.emit(&Event::Started {
            index,
            addr,
            pid,
            restarts,
            identity,
        });
        Ok(())
    }

    /// Reports every `die` of the containers as [`Event::Exited`], with the
    /// exit code, until the stream ends or the task is dropped.
    pub async fn watch_exits(self: Arc<Self>) {
        let ids: Vec<String> = lock(&self.slots).iter().map(|s| s.id.clone()).collect();
        let filters = HashMap::from([
            ("type".to_owned(), vec!["container".to_owned()]),
            ("event".to_owned(), vec!["die".to_owned()]),
            ("container".to_owned(), ids),
        ]);
        let mut stream = self.docker.events(Some(EventsOptions {
            filters: Some(filters),
            ..Default::default()
        }));
        while let Some(Ok(msg)) = stream.next().await {
            let Some(actor) = msg.actor else { continue };
            let id = actor.id.unwrap_or_default();
            let code = actor
                .attributes
                .and_then(|a| a.get("exitCode").cloned())
                .unwrap_or_else(|| "?".into());
            let found = lock(&self.slots)
                .iter_mut()
                .enumerate()
                .find_map(|(i, s)| (s.id == id).then(|| (i, s.instance.pid.take())));
            if let Some((index, Some(pid))) = found {
                self.emit(&Event::Exited {
                    index,
                    pid,
                    status: format!("container exited with code {code}"),
                });
            }
        }
    }

    /// Leaves every container as the run found it: unpaused and running.
    pub async fn restore(&self) {
        let slots: Vec<Slot> = lock(&self.slots).clone();
        for s in slots {
            let Ok(c) = self.inspect(&s.id).await else {
                continue;
            };
            let state = c.state.unwrap_or_default();
            if state.paused == Some(true) {
                let _ = self.docker.unpause_container(&s.id).await;
            } else if state.running != Some(true) {
                let _ = self
                    .docker
                    .start_container(&s.id, None::<StartContainerOptions>)
                    .await;
            }
        }
    }
}

/// No container found is an error naming what was looked for.
fn check_found(target: &DockerTarget, ids: &[(String, String)]) -> Result<(), DockerError> {
    if ids.is_empty() {
        let filters: Vec<String> = target.filters()["label"].clone();
        return Err(DockerError(format!(
            "no running container has the label {}: is the stack up (docker compose up -d)?",
            filters.join(" and ")
        )));
    }
    if ids.len() > 64 {
        return Err(DockerError(format!(
            "{} containers match; chaos runs at most 64 instances",
            ids.len()
        )));
    }
    Ok(())
}

/// The one TCP port a container exposes, when `--docker-port` is not given.
fn exposed_port(name: &str, exposed: Option<&[String]>) -> Result<u16, DockerError> {
    let ports: Vec<u16> = exposed
        .unwrap_or_default()
        .iter()
        .filter_map(|p| p.strip_suffix("/tcp").unwrap_or(p).parse().ok())
        .collect();
    match ports.as_slice() {
        [one] => Ok(*one),
        [] => Err(DockerError(format!(
            "container {name} exposes no port: name the app's port with --docker-port"
        ))),
        many => Err(DockerError(format!(
            "container {name} exposes ports {many:?}: name the app's with --docker-port"
        ))),
    }
}

/// The container's IP on `wanted`, or on its only network.
fn pick_network(
    name: &str,
    networks: &HashMap<String, bollard::models::EndpointSettings>,
    wanted: Option<&str>,
) -> Result<IpAddr, DockerError> {
    let with_ip: Vec<(&String, IpAddr)> = networks
        .iter()
        .filter_map(|(n, e)| Some((n, e.ip_address.as_deref()?.parse().ok()?)))
        .collect();
    let chosen = match wanted {
        Some(w) => with_ip.iter().find(|(n, _)| n.as_str() == w),
        None if with_ip.len() == 1 => with_ip.first(),
        None => None,
    };
    if let Some((_, ip)) = chosen {
        return Ok(*ip);
    }
    let mut names: Vec<&str> = with_ip.iter().map(|(n, _)| n.as_str()).collect();
    names.sort_unstable();
    Err(DockerError(match wanted {
        Some(w) => format!("container {name} has no address on network {w} (it is on {names:?})"),
        None if names.is_empty() => format!("container {name} has no IP address on any network"),
        None => {
            format!("container {name} is on networks {names:?}: choose one with --docker-network")
        }
    }))
}

/// One line on stderr.
fn say(line: &str) {
    eprintln!("{line}");
}

/// The engine's name for a signal chaos sends.
fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGCONT => "SIGCONT",
        _ => "SIGKILL",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_service_name_or_a_label_selects_running_containers() {
        let mut t = DockerTarget {
            service: "app".into(),
            project: Some("shop".into()),
            port: None,
            network: None,
        };
        let f = t.filters();
        assert_eq!(
            f["label"],
            [
                "com.docker.compose.service=app",
                "com.docker.compose.project=shop"
            ]
        );
        assert_eq!(f["status"], ["running"]);
        t.service = "tier=web".into();
        t.project = None;
        assert_eq!(t.filters()["label"], ["tier=web"]);
    }

    #[test]
    fn the_port_is_given_or_the_only_one_exposed() {
        assert_eq!(exposed_port("a", Some(&["3000/tcp".into()])).unwrap(), 3000);
        let many = exposed_port("a", Some(&["8080/tcp".into(), "9090/tcp".into()]));
        assert!(many.unwrap_err().0.contains("--docker-port"));
        assert!(exposed_port("a", None).is_err());
    }

    #[test]
    fn the_address_is_on_the_only_network_or_the_named_one() {
        let ep = |ip: &str| bollard::models::EndpointSettings {
            ip_address: Some(ip.into()),
            ..Default::default()
        };
        let one = HashMap::from([("shop_default".to_owned(), ep("172.18.0.3"))]);
        assert_eq!(
            pick_network("a", &one, None).unwrap(),
            "172.18.0.3".parse::<IpAddr>().unwrap()
        );
        let two = HashMap::from([
            ("front".to_owned(), ep("172.18.0.3")),
            ("back".to_owned(), ep("172.19.0.3")),
        ]);
        assert!(pick_network("a", &two, None)
            .unwrap_err()
            .0
            .contains("--docker-network"));
        assert_eq!(
            pick_network("a", &two, Some("back")).unwrap(),
            "172.19.0.3".parse::<IpAddr>().unwrap()
        );
        assert!(pick_network("a", &two, Some("x")).is_err());
    }
}
