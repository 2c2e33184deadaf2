//! Name resolution without the C library: hickory against a DNS server on loopback, and DNS TTLs driving discovery.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::str::FromStr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hickory_resolver::proto::op::{Message, MessageType, ResponseCode};
use hickory_resolver::proto::rr::{rdata::A, Name, RData, Record, RecordType};
use http::StatusCode;
use tokio::net::{TcpListener, UdpSocket};
use tokio::time::Instant;
use unstick::app::{App, StartOptions};
use unstick::config::{BackendSpec, UpstreamProtocol};
use unstick::dns::Resolver;
use unstick::testkit::client::Conn;
use unstick::testkit::{test_config, BackendOptions, FakeBackend};
use unstick::upstream::discovery::SystemResolver;

mod support;
use support::wait;

/// Per name: its IPv4 addresses and their TTL in seconds.
type Zone = HashMap<Name, (Vec<Ipv4Addr>, u32)>;

/// An authoritative DNS server on 127.0.0.1 (UDP) answering A queries from
/// a zone the test changes; AAAA queries get an empty answer, unknown
/// names NXDOMAIN.
struct TestDns {
    addr: SocketAddr,
    zone: Arc<Mutex<Zone>>,
    queries: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl TestDns {
    async fn start() -> TestDns {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let addr = socket.local_addr().unwrap();
        let zone = Arc::new(Mutex::new(HashMap::new()));
        let queries = Arc::new(AtomicUsize::new(0));
        let (z, q) = (zone.clone(), queries.clone());
        let task = tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            loop {
                let Ok((n, from)) = socket.recv_from(&mut buf).await else {
                    return;
                };
                let Ok(query) = Message::from_vec(&buf[..n]) else {
                    continue;
                };
                q.fetch_add(1, Ordering::SeqCst);
                let reply = answer(&query, &z.lock().unwrap());
                let _ = socket.send_to(&reply.to_vec().unwrap(), from).await;
            }
        });
        TestDns {
            addr,
            zone,
            queries,
            task,
        }
    }

    /// `name` answers `addrs` with `ttl` seconds from now on.
    fn set(&self, name: &str, addrs: &[Ipv4Addr], ttl: u32) {
        let name = Name::from_str(name).unwrap().to_lowercase();
        let mut fqdn = name.clone();
        fqdn.set_fqdn(true);
        self.zone
            .lock()
            .unwrap()
            .insert(fqdn, (addrs.to_vec(), ttl));
    }

    fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }
}

impl Drop for TestDns {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn answer(query: &Message, zone: &Zone) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.message_type = MessageType::Response;
    reply.metadata.authoritative = true;
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    for q in &query.queries {
        reply.add_query(q.clone());
        let mut name = q.name().to_lowercase();
        name.set_fqdn(true);
        match zone.get(&name) {
            None => reply.metadata.response_code = ResponseCode::NXDomain,
            Some((addrs, ttl)) if q.query_type() == RecordType::A => {
                for ip in addrs {
                    reply.add_answer(Record::from_rdata(q.name().clone(), *ttl, RData::A(A(*ip))));
                }
            }
            Some(_) => {}
        }
    }
    reply
}

fn ip(last: u8) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 0, last)
}

#[tokio::test]
async fn names_resolve_with_their_ttl_and_failures_say_why() {
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(3), ip(2)], 7);
    let resolver = Resolver::with_name_servers(&[dns.addr]);

    let answer = resolver.lookup("app.test", 80).await.unwrap();
    let mut addrs = answer.addrs.clone();
    addrs.sort();
    assert_eq!(
        addrs,
        [SocketAddr::from((ip(2), 80)), SocketAddr::from((ip(3), 80))]
    );
    let ttl = answer.ttl.expect("a DNS answer has a TTL");
    assert!(
        ttl > Duration::from_secs(5) && ttl <= Duration::from_secs(7),
        "{ttl:?}"
    );

    // No cache: a changed zone is seen by the very next lookup.
    dns.set("app.test", &[ip(4)], 7);
    let answer = resolver.lookup("app.test", 80).await.unwrap();
    assert_eq!(answer.addrs, [SocketAddr::from((ip(4), 80))]);

    let e = resolver.lookup("missing.test", 80).await.unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::NotFound, "{e}");
    assert!(e.to_string().contains("missing.test"), "{e}");

    // IP literals and localhost never reach the server.
    let before = dns.queries();
    let literal = resolver.lookup("[::1]", 9).await.unwrap();
    assert_eq!(literal.addrs, ["[::1]:9".parse::<SocketAddr>().unwrap()]);
    let local = resolver.lookup("localhost", 9).await.unwrap();
    assert!(
        local.addrs.contains(&SocketAddr::from((ip(1), 9))),
        "{local:?}"
    );
    assert_eq!(dns.queries(), before);
}

/// Two backends on the same port at 127.0.0.2 and 127.0.0.3, as two
/// replicas behind one name.
async fn two_replicas() -> (FakeBackend, FakeBackend, u16) {
    for _ in 0..20 {
        let first = TcpListener::bind((ip(2), 0)).await.unwrap();
        let port = first.local_addr().unwrap().port();
        let Ok(second) = TcpListener::bind((ip(3), port)).await else {
            continue;
        };
        let opts = |id: &str| BackendOptions {
            id: id.into(),
            ..Default::default()
        };
        let b2 = FakeBackend::start_on(first, opts("b2"));
        let b3 = FakeBackend::start_on(second, opts("b3"));
        return (b2, b3, port);
    }
    panic!("no port free on both 127.0.0.2 and 127.0.0.3");
}

/// Which backends answer `n` requests.
async fn backends_seen(proxy: SocketAddr, n: usize) -> HashMap<String, usize> {
    let mut conn = Conn::open(proxy).await.unwrap();
    let mut seen = HashMap::new();
    for _ in 0..n {
        let r = conn.get("/").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        *seen.entry(r.backend()).or_default() += 1;
    }
    seen
}

/// With `discovery.interval` at a minute, a 1-second TTL still brings the
/// next lookup forward: a replica that moves is followed within seconds,
/// and the name is asked about once a TTL (not more often than
/// `discovery.min_interval`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn discovery_asks_again_when_the_ttl_runs_out() {
    let (_b2, _b3, port) = two_replicas().await;
    let dns = TestDns::start().await;
    dns.set("app.test", &[ip(2)], 1);

    let mut config = test_config(&[]);
    config.backends = vec![BackendSpec {
        address: format!("app.test:{port}"),
        weight: 1,
        protocol: UpstreamProtocol::Http1,
    }];
    config.discovery.interval = Duration::from_secs(60);
    config.discovery.min_interval = Duration::from_millis(200);
    let opts = StartOptions {
        resolver: Arc::new(SystemResolver::with(Resolver::with_name_servers(&[
            dns.addr
        ]))),
        ..Default::default()
    };
    let app = App::start_opts(config, opts).await.unwrap();
    assert_eq!(
        backends_seen(app.proxy_addr, 4).await,
        [("b2".into(), 4)].into()
    );

    dns.set("app.test", &[ip(3)], 1);
    let what = "the moved replica, long before discovery.interval";
    wait::until(what, Duration::from_secs(20), async || {
        backends_seen(app.proxy_addr, 4).await == HashMap::from([("b3".into(), 4)])
    })
    .await;

    // Over 3 s of 1-second TTLs: a lookup (A and AAAA) about every second,
    // far fewer than one per `min_interval`.
    let (q0, t0) = (dns.queries(), Instant::now());
    tokio::time::sleep(Duration::from_secs(3)).await;
    let lookups = (dns.queries() - q0) / 2;
    let most = (t0.elapsed().as_secs_f64() / 1.0).ceil() as usize + 1;
    assert!((1..=most).contains(&lookups), "{lookups} lookups in 3 s");
}
