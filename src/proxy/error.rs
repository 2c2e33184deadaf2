//! The request path's one error type, and its one map to a status code.

use std::fmt;
use std::time::Duration;

use http::StatusCode;

use crate::metrics::{ClientErrorKind, UpstreamErrorKind};

/// Which side caused a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Internal,
}

/// Whether the request may be sent again to another backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// No byte of the request reached a backend: safe for any method.
    Safe,
    /// The request was (maybe partly) sent, and no response head came back:
    /// safe only for idempotent requests whose body can be replayed.
    IfIdempotent,
    /// Never (e.g. after a response head, or a timeout while the backend works).
    Never,
}

/// What went wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// No backend is configured, or none is in rotation.
    NoBackends,
    /// A connection to the backend could not be made.
    Connect(String),
    /// The connect did not complete in time.
    ConnectTimeout(Duration),
    /// The backend reset or closed the connection before a response head.
    Reset(String),
    /// No response head within the timeout.
    ResponseTimeout(Duration),
    /// The backend set an affinity cookie and the policy is `reject`.
    AffinityRejected(String),
    /// The client's request could not be read, or the protocol refuses it.
    BadRequest(String),
    /// The request body is over `limits.max_request_body` (bytes).
    BodyTooLarge(u64),
    /// The client sent no byte of its request body for this long.
    ClientTimeout(Duration),
    /// The client closed or reset its connection (or stream) before its
    /// response: nothing can be sent to it.
    ClientGone,
    /// A method unstick does not serve (CONNECT: it is no forward proxy).
    NotImplemented(String),
    /// A bug or resource failure inside unstick.
    Internal(String),
}

/// The gRPC status codes unstick itself sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrpcStatus {
    DeadlineExceeded = 4,
    Internal = 13,
    Unavailable = 14,
}

impl GrpcStatus {
    /// The `grpc-status` value.
    pub fn code(self) -> &'static str {
        match self {
            GrpcStatus::DeadlineExceeded => "4",
            GrpcStatus::Internal => "13",
            GrpcStatus::Unavailable => "14",
        }
    }
}

/// A failed request: source, kind, retry safety, and the backend involved.
#[derive(Debug, Clone)]
pub struct ProxyError {
    pub source: Source,
    pub kind: Kind,
    pub retry: Retry,
    /// The backend that failed, if one was tried.
    pub backend: Option<std::sync::Arc<str>>,
}

impl ProxyError {
    pub fn new(source: Source, kind: Kind, retry: Retry) -> ProxyError {
        ProxyError {
            source,
            kind,
            retry,
            backend: None,
        }
    }

    pub fn no_backends() -> ProxyError {
        ProxyError::new(Source::Internal, Kind::NoBackends, Retry::Never)
    }

    /// A failure of the client's making: never retried, never counted
    /// against a backend.
    pub fn client(kind: Kind) -> ProxyError {
        ProxyError::new(Source::Client, kind, Retry::Never)
    }

    pub fn with_backend(mut self, name: &std::sync::Arc<str>) -> ProxyError {
        self.backend = Some(name.clone());
        self
    }

    /// The one map from failure to status.
    pub fn status(&self) -> StatusCode {
        match self.kind {
            Kind::NoBackends => StatusCode::SERVICE_UNAVAILABLE,
            Kind::Connect(_) | Kind::Reset(_) | Kind::AffinityRejected(_) => {
                StatusCode::BAD_GATEWAY
            }
            Kind::ConnectTimeout(_) | Kind::ResponseTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Kind::BadRequest(_) | Kind::ClientGone => StatusCode::BAD_REQUEST,
            Kind::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Kind::ClientTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Kind::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Kind::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The gRPC status a gRPC client gets instead of [`ProxyError::status`]
    /// (as Envoy maps them): `UNAVAILABLE` (14) when no backend could take
    /// the call, `DEADLINE_EXCEEDED` (4) for timeouts, `INTERNAL` (13) for a
    /// request that could not be read or a fault in unstick.
    pub fn grpc_status(&self) -> GrpcStatus {
        match self.kind {
            Kind::NoBackends | Kind::Connect(_) | Kind::Reset(_) | Kind::AffinityRejected(_) => {
                GrpcStatus::Unavailable
            }
            Kind::ConnectTimeout(_) | Kind::ResponseTimeout(_) | Kind::ClientTimeout(_) => {
                GrpcStatus::DeadlineExceeded
            }
            Kind::BadRequest(_)
            | Kind::BodyTooLarge(_)
            | Kind::ClientGone
            | Kind::NotImplemented(_)
            | Kind::Internal(_) => GrpcStatus::Internal,
        }
    }

    /// The client error class for metrics, if the client caused the failure.
    pub fn client_kind(&self) -> Option<ClientErrorKind> {
        match self.kind {
            Kind::BadRequest(_) => Some(ClientErrorKind::BadRequest),
            Kind::BodyTooLarge(_) => Some(ClientErrorKind::BodyTooLarge),
            Kind::ClientTimeout(_) => Some(ClientErrorKind::Timeout),
            Kind::ClientGone => Some(ClientErrorKind::Aborted),
            Kind::NotImplemented(_) => Some(ClientErrorKind::NotImplemented),
            _ => None,
        }
    }

    /// The upstream error class for metrics, if a backend failed.
    pub fn upstream_kind(&self) -> Option<UpstreamErrorKind> {
        match self.kind {
            Kind::Connect(_) => Some(UpstreamErrorKind::Connect),
            Kind::ConnectTimeout(_) | Kind::ResponseTimeout(_) => Some(UpstreamErrorKind::Timeout),
            Kind::Reset(_) => Some(UpstreamErrorKind::Reset),
            _ => None,
        }
    }

    /// A short name for the cause, for logs and the retry metric's `reason`.
    pub fn reason(&self) -> &'static str {
        match self.kind {
            Kind::NoBackends => "no_backends",
            Kind::Connect(_) => "connect",
            Kind::ConnectTimeout(_) => "connect_timeout",
            Kind::Reset(_) => "reset",
            Kind::ResponseTimeout(_) => "timeout",
            Kind::AffinityRejected(_) => "affinity_rejected",
            Kind::BadRequest(_) => "bad_request",
            Kind::BodyTooLarge(_) => "body_too_large",
            Kind::ClientTimeout(_) => "client_timeout",
            Kind::ClientGone => "client_closed",
            Kind::NotImplemented(_) => "not_implemented",
            Kind::Internal(_) => "internal",
        }
    }
}

impl fmt::Display for ProxyError {
    /// The one-line body sent to the client.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let on = |f: &mut fmt::Formatter<'_>| match &self.backend {
            Some(b) => write!(f, " (backend {b})"),
            None => Ok(()),
        };
        match &self.kind {
            Kind::NoBackends => {
                write!(f, "no backend available: none is configured or in rotation")
            }
            Kind::Connect(e) => {
                write!(f, "bad gateway: could not connect to the backend: {e}")?;
                on(f)
            }
            Kind::ConnectTimeout(d) => {
                write!(
                    f,
                    "gateway timeout: connecting to the backend took over {d:?}"
                )?;
                on(f)
            }
            Kind::Reset(e) => {
                write!(
                    f,
                    "bad gateway: the backend closed the connection before responding: {e}"
                )?;
                on(f)
            }
            Kind::ResponseTimeout(d) => {
                write!(
                    f,
                    "gateway timeout: the backend sent no response within {d:?}"
                )?;
                on(f)
            }
            Kind::AffinityRejected(name) => {
                write!(
                    f,
                    "bad gateway: the backend tried to set the affinity cookie `{name}`; \
                     unstick refuses sticky sessions (affinity_cookies.policy = \"reject\")"
                )?;
                on(f)
            }
            Kind::BadRequest(e) => write!(f, "bad request: {e}"),
            Kind::BodyTooLarge(limit) => write!(
                f,
                "payload too large: the request body is over {limit} bytes (limits.max_request_body)"
            ),
            Kind::ClientTimeout(d) => {
                write!(f, "request timeout: no byte of the request body for {d:?}")
            }
            Kind::ClientGone => write!(f, "the client closed the connection"),
            Kind::NotImplemented(what) => write!(f, "not implemented: {what}"),
            Kind::Internal(e) => write!(f, "internal error: {e}"),
        }
    }
}

impl std::error::Error for ProxyError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_follows_the_failure() {
        let e = |kind| ProxyError::new(Source::Upstream, kind, Retry::Never);
        let d = Duration::from_secs(1);
        assert_eq!(
            ProxyError::no_backends().grpc_status(),
            GrpcStatus::Unavailable
        );
        assert_eq!(
            e(Kind::Connect("refused".into())).grpc_status(),
            GrpcStatus::Unavailable
        );
        assert_eq!(
            e(Kind::Reset("eof".into())).grpc_status(),
            GrpcStatus::Unavailable
        );
        assert_eq!(
            e(Kind::ConnectTimeout(d)).grpc_status(),
            GrpcStatus::DeadlineExceeded
        );
        assert_eq!(
            e(Kind::ResponseTimeout(d)).grpc_status(),
            GrpcStatus::DeadlineExceeded
        );
        assert_eq!(
            e(Kind::BadRequest("x".into())).grpc_status(),
            GrpcStatus::Internal
        );
        assert_eq!(GrpcStatus::Unavailable.code(), "14");
        assert_eq!(GrpcStatus::DeadlineExceeded as u8, 4);
    }

    /// The failures a request may be retried after (connect failures and
    /// resets; a response-header timeout never is) are the reasons
    /// `unstick_retries_total` is exported with from the start.
    #[test]
    fn retryable_failures_are_the_exported_retry_reasons() {
        let e = |kind| ProxyError::new(Source::Upstream, kind, Retry::Safe);
        let reasons = [
            e(Kind::Connect("refused".into())).reason(),
            e(Kind::ConnectTimeout(Duration::from_secs(1))).reason(),
            e(Kind::Reset("eof".into())).reason(),
        ];
        assert_eq!(reasons, crate::metrics::RETRY_REASONS);
    }
}
