//! Name resolution without the C library: hickory-resolver reading `/etc/resolv.conf` and `/etc/hosts`.
//!
//! A static binary in a `FROM scratch` image has no NSS modules for glibc's
//! `getaddrinfo` to load, so every name unstick looks up (backend names in DNS
//! discovery, the load generator's target, the demo app's Redis URL, the
//! `healthcheck` probe) goes through a [`Resolver`] here instead. It reads the
//! name servers, search domains and `ndots` from `/etc/resolv.conf` and the
//! static names from `/etc/hosts` when it is built. As glibc does, a name
//! `/etc/hosts` lists is answered from there alone (`localhost` is
//! `127.0.0.1` only where the file says so); other names go to DNS, with
//! `localhost` answered by the resolver itself (RFC 6761) when the file does
//! not list it. There is no cache: every lookup asks again, and the answer
//! carries its TTL so callers decide when to ask next.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use hickory_resolver::config::{
    ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts,
};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::proto::op::Query;
use hickory_resolver::proto::rr::{Name, RecordType};
use hickory_resolver::{Hosts, TokioResolver};

/// What a name resolved to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    /// Every address, in the order the resolver gave them (IPv6 first where both exist).
    pub addrs: Vec<SocketAddr>,
    /// How long the answer may be used: the smallest TTL among its records
    /// (`None` when the source gives none: `/etc/hosts`, an IP literal, a
    /// test's fake resolver).
    pub ttl: Option<Duration>,
}

impl From<Vec<SocketAddr>> for Answer {
    fn from(addrs: Vec<SocketAddr>) -> Answer {
        Answer { addrs, ttl: None }
    }
}

/// A stub resolver: `/etc/hosts`, then the configured name servers.
#[derive(Clone)]
pub struct Resolver {
    inner: TokioResolver,
    hosts: std::sync::Arc<Hosts>,
}

impl std::fmt::Debug for Resolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolver").finish_non_exhaustive()
    }
}

impl Resolver {
    /// The host's configuration: `/etc/resolv.conf` and `/etc/hosts`. Without
    /// a usable `/etc/resolv.conf` (missing, or no `nameserver` line), only
    /// `/etc/hosts`, `localhost` and IP literals resolve; a warning says so.
    pub fn system() -> Resolver {
        let (config, options) = match hickory_resolver::system_conf::read_system_conf() {
            Ok(parts) => parts,
            Err(e) => {
                tracing::warn!(
                    error = %e,
                    "cannot read /etc/resolv.conf: only /etc/hosts and localhost resolve"
                );
                (
                    ResolverConfig::from_parts(None, vec![], vec![]),
                    ResolverOpts::default(),
                )
            }
        };
        Resolver::build(config, options)
    }

    /// Asks only `servers` (UDP, then TCP for a truncated answer), with no
    /// search domains; `/etc/hosts` is still read first.
    pub fn with_name_servers(servers: &[SocketAddr]) -> Resolver {
        let servers = servers
            .iter()
            .map(|s| {
                let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                    .into_iter()
                    .map(|mut c| {
                        c.port = s.port();
                        c
                    })
                    .collect();
                NameServerConfig::new(s.ip(), true, connections)
            })
            .collect();
        let mut options = ResolverOpts::default();
        options.ndots = 0;
        Resolver::build(ResolverConfig::from_name_servers(servers), options)
    }

    fn build(config: ResolverConfig, mut options: ResolverOpts) -> Resolver {
        // Discovery decides when to ask again from the TTL; a cache would
        // hand back an old answer for as long as the TTL (600 s from
        // Docker's DNS) and hide a replaced container.
        options.cache_size = 0;
        options.use_hosts_file = ResolveHosts::Always;
        let inner = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default())
            .with_options(options)
            .build()
            .expect("a resolver without TLS or DNSSEC always builds");
        let hosts = std::sync::Arc::new(Hosts::from_system().unwrap_or_default());
        Resolver { inner, hosts }
    }

    /// The addresses `/etc/hosts` gives `host` (IPv6 first), if it lists it.
    fn in_hosts_file(&self, host: &str, port: u16) -> Option<Vec<SocketAddr>> {
        let name = Name::from_utf8(host).ok()?;
        let addrs: Vec<SocketAddr> = [RecordType::AAAA, RecordType::A]
            .into_iter()
            .filter_map(|t| {
                self.hosts
                    .lookup_static_host(&Query::query(name.clone(), t))
            })
            .flat_map(|found| {
                found
                    .answers()
                    .iter()
                    .filter_map(|r| r.data.ip_addr())
                    .collect::<Vec<_>>()
            })
            .map(|ip| SocketAddr::new(ip, port))
            .collect();
        (!addrs.is_empty()).then_some(addrs)
    }

    /// Every address `host` has, with `port`. An IP literal is its own answer.
    pub async fn lookup(&self, host: &str, port: u16) -> io::Result<Answer> {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        if let Ok(ip) = bare.parse::<IpAddr>() {
            return Ok(vec![SocketAddr::new(ip, port)].into());
        }
        if let Some(addrs) = self.in_hosts_file(host, port) {
            return Ok(addrs.into());
        }
        let found = self.inner.lookup_ip(host).await.map_err(|e| {
            let kind = if e.is_no_records_found() || e.is_nx_domain() {
                io::ErrorKind::NotFound
            } else {
                io::ErrorKind::Other
            };
            io::Error::new(kind, format!("cannot resolve {host}: {e}"))
        })?;
        let addrs: Vec<SocketAddr> = found.iter().map(|ip| SocketAddr::new(ip, port)).collect();
        if addrs.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("{host} has no address"),
            ));
        }
        let ttl = found
            .valid_until()
            .saturating_duration_since(std::time::Instant::now());
        Ok(Answer {
            addrs,
            ttl: Some(ttl),
        })
    }

    /// The first address `host` has (IPv6 first where both exist, as
    /// `getaddrinfo` orders them), with `port`.
    pub async fn lookup_one(&self, host: &str, port: u16) -> io::Result<SocketAddr> {
        let answer = self.lookup(host, port).await?;
        Ok(answer.addrs[0])
    }
}
