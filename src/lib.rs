//! unstick: a load balancer that refuses sticky sessions, and proves your app
//! does not need them.
//!
//! # Layout
//!
//! - [`config`]: raw TOML, env and flag overrides -> a validated `Config`; depends on nothing.
//! - [`cli`]: clap subcommands (`serve`, `check`, ...); flags and env override the file.
//! - [`app`]: wires a `Config` into a running balancer (listeners, proxy, health, admin).
//! - [`server`]: accept loop, connection limits, client timeouts, HTTP/1 (fast path, else hyper) and HTTP/2, graceful drain.
//! - [`shutdown`]: the server's phase (running, draining, closing), shared by the server, the proxy and the admin listener.
//! - [`affinity`]: refuses load-balancer affinity cookies in both directions, and reports who set them.
//! - [`hops`]: session hops between instances watched in live traffic: learned session cookies, kept and broken hops, `/api/statelessness`.
//! - [`proxy`]: the request path: scrub headers, pick, forward, retry when safe, respond (hyper, or the HTTP/1 fast path in `proxy::h1`).
//! - [`balancer`]: `pick(&self, healthy)`; never sees a request. One file per algorithm.
//! - [`http1`]: HTTP/1.1 heads parsed and written with httparse, framing, chunked scanning (fast path, load).
//! - [`upstream`]: backends, in-flight guards, connection pools (hyper and raw HTTP/1), snapshots (arc-swap), DNS discovery.
//! - [`reload`]: hot reload (SIGHUP, file watcher, admin API) without dropping a request.
//! - [`health`]: passive ejection, active HTTP checks, backoff probes.
//! - [`metrics`]: Prometheus families, registered on a registry that is passed in.
//! - [`admin`]: the admin listener: liveness, readiness, metrics, backend API.
//! - [`tls`]: rustls certificates (SNI, reload on change) and client configs for TLS backends.
//! - [`html`]: escaping text for HTML and XML pages (demo page, chaos reports).
//! - [`timefmt`]: UTC wall-clock formatting (RFC 3339, Common Log Format dates).
//! - [`demo`]: `unstick demo`: a reference app (shared sessions), its stateful twin, a supervisor.
//! - [`load`]: the load generator engine (`unstick load`, reused by chaos); reaches targets by socket only.
//! - [`chaos`]: `unstick chaos`: kills app instances mid-traffic, checks sessions and requests survive, reports.
//! - [`testkit`]: fake backends for tests and benches; never used by `serve`.

pub mod admin;
pub mod affinity;
pub mod app;
pub mod balancer;
pub mod chaos;
pub mod cli;
pub mod config;
pub mod demo;
pub mod health;
pub mod hops;
pub mod html;
pub mod http1;
pub mod load;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod server;
pub mod shutdown;
pub mod testkit;
pub mod timefmt;
pub mod tls;
pub mod upstream;
