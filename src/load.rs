//! The load generator engine behind `unstick load`, reusable by other runners.
//!
//! - [`Settings`] say how to drive: connections (one virtual user each),
//!   threads, closed model (as fast as answers come) or open model (a total
//!   rate), duration or request count, timeout, keep-alive, HTTP/2, TLS.
//! - A [`Workload`] says what each user sends next and sees every result as a
//!   [`Record`]; [`FixedRequest`] is the one-request workload of `unstick load`.
//! - [`Engine::run`] returns a [`Report`]: latency percentiles, status and
//!   error counts by [`ErrorClass`], a per-second series. [`Engine::live`]
//!   gives running totals, [`Engine::stopper`] ends a run early.
//!
//! Plain `http://` HTTP/1.1 runs of a fixed request that needs no response
//! headers (`unstick load URL`) go through a client of their own (`raw`:
//! bytes serialized once, responses skipped by their framing); everything
//! else goes through hyper (`client`).
//!
//! The engine reaches its target through sockets only.

mod client;
mod engine;
mod raw;
mod report;
mod target;
mod workload;

pub use client::{ErrorClass, RequestError};
pub use engine::{Engine, Live, LiveSnapshot, LoadError, Settings, Stopper};
pub use report::{ErrorCounts, Latency, Report, RunInfo, Second, SUMMARY_TIMELINE_ROWS};
pub use target::{Target, TargetError};
pub use workload::{FixedRequest, Outcome, Record, Reply, Workload};
