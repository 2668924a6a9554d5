//! The boundary error: what went wrong before the upgrade, and which HTTP answer it earns.

use hyper::StatusCode;

/// Why a request did not become a session. Clients get `status()` and the
/// one-line `Display`; the log gets the source too; metrics get `label()`.
#[derive(Debug, thiserror::Error)]
pub enum RejectError {
    #[error("no route for this path")]
    NoRoute,
    #[error("{0}")]
    BadRequest(&'static str),
    /// The request's `Host`/`:authority` names a host this connection's TLS name (SNI) would
    /// not have led to (another certificate, or any other name where the listener is strict):
    /// `421`, after which clients retry on a connection of their own for that host.
    #[error("{0}")]
    Misdirected(&'static str),
    /// A path with dot-segments, empty segments or encoded slashes: refused before routing
    /// so that no backend resolves it past the route it matched (`snapshot::check_path`).
    #[error("{0}")]
    BadPath(&'static str),
    #[error("unsupported Sec-WebSocket-Version (this gateway speaks 13)")]
    UnsupportedVersion,
    /// An HTTP/2 extended CONNECT for a `:protocol` other than `websocket`: 501
    /// (RFC 8441 §4, as RFC 9220 §3 spells out).
    #[error("unsupported :protocol (this gateway speaks websocket)")]
    UnsupportedProtocol,
    #[error("backend refused the connection")]
    BackendRefused(#[source] std::io::Error),
    #[error("backend unreachable")]
    BackendUnreachable(#[source] std::io::Error),
    #[error("backend did not answer in time")]
    BackendTimeout,
    #[error("backend refused the WebSocket upgrade")]
    BackendRejected(StatusCode),
    #[error("backend handshake failed")]
    BackendHandshake(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The process ran out of file descriptors dialing the backend: load shed, not the
    /// backend's fault (it is not ejected from its pool).
    #[error("the gateway is out of file descriptors")]
    NoDescriptors(#[source] std::io::Error),
    /// The route requires a recording (`[route.record] policy = "required"`) and it could not
    /// be created: the session is refused rather than run unrecorded.
    #[error("the session recording could not be started")]
    RecordingUnavailable,
    #[error("gateway is shutting down")]
    ShuttingDown,
    /// An operator drained the route (admin API): no new sessions until it is reopened.
    #[error("route is draining")]
    Draining,
    // Access control (`policy::access`, `policy::targets`).
    #[error("origin not allowed")]
    Origin,
    /// Missing or invalid credentials: `401` with `WWW-Authenticate: Bearer`.
    #[error("{0}")]
    Unauthorized(&'static str),
    /// Valid credentials that this route does not accept.
    #[error("{0}")]
    Forbidden(&'static str),
    /// A token-file route got no token or one the file does not hold: answered exactly
    /// like an unknown path, so the answer tells nothing about which tokens exist.
    #[error("no route for this path")]
    UnknownToken,
    /// Every address the target resolved to is outside `[egress] allow`.
    #[error("backend address not allowed")]
    EgressDenied(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// Refused by a session cap or the handshake rate (`policy::admission`): 429 or 503.
    #[error("{reason}")]
    Limited {
        reason: Refusal,
        retry_after_secs: u64,
    },
}

/// Why admission refused a request: each has its status and metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// `limits.max_sessions` reached: 503.
    #[error("the gateway is at capacity")]
    OverCapacity,
    /// The route's session cap reached: 503.
    #[error("this route is at capacity")]
    RouteFull,
    /// `limits.max_sessions_per_ip` reached for the client's address: 429.
    #[error("too many sessions from your address")]
    IpLimit,
    /// The client's address used its handshake budget: 429.
    #[error("too many handshakes from your address")]
    RateLimited,
    /// The client's address used its budget of failed credentials: 429, before its
    /// credential is looked at.
    #[error("too many failed credentials from your address")]
    AuthRateLimited,
    /// `[udp] max_sessions` reached (a `udp://` session holds a socket): 503.
    #[error("the gateway is at its UDP session capacity")]
    UdpFull,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Self::OverCapacity | Self::RouteFull | Self::UdpFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::IpLimit | Self::RateLimited | Self::AuthRateLimited => {
                StatusCode::TOO_MANY_REQUESTS
            }
        }
    }

    /// The `reason` label of `wsgate_upgrade_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::OverCapacity => "over_capacity",
            Self::RouteFull => "route_full",
            Self::IpLimit => "ip_limit",
            Self::RateLimited => "rate_limited",
            Self::AuthRateLimited => "auth_rate_limited",
            Self::UdpFull => "udp_full",
        }
    }
}

impl RejectError {
    /// Every `label()` a rejection can carry, so `wsgate_upgrade_rejections_total` can show
    /// each reason at zero from the start and the docs can be checked against the code.
    pub const LABELS: &'static [&'static str] = &[
        "no_route",
        "bad_request",
        "misdirected",
        "bad_path",
        "bad_version",
        "bad_protocol",
        "backend_refused",
        "backend_unreachable",
        "backend_timeout",
        "backend_rejected",
        "backend_handshake",
        "recording_unavailable",
        "shutting_down",
        "draining",
        "no_descriptors",
        "origin",
        "unauthorized",
        "forbidden",
        "unknown_token",
        "egress_denied",
        "over_capacity",
        "route_full",
        "ip_limit",
        "rate_limited",
        "auth_rate_limited",
        "udp_full",
    ];

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::BadRequest(_) | Self::BadPath(_) => StatusCode::BAD_REQUEST,
            Self::Misdirected(_) => StatusCode::MISDIRECTED_REQUEST,
            Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::UnsupportedProtocol => StatusCode::NOT_IMPLEMENTED,
            Self::BackendRefused(_)
            | Self::BackendUnreachable(_)
            | Self::BackendRejected(_)
            | Self::BackendHandshake(_) => StatusCode::BAD_GATEWAY,
            Self::BackendTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::ShuttingDown
            | Self::Draining
            | Self::NoDescriptors(_)
            | Self::RecordingUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Origin | Self::Forbidden(_) | Self::EgressDenied(_) => StatusCode::FORBIDDEN,
            Self::UnknownToken => StatusCode::NOT_FOUND,
            Self::Limited { reason, .. } => reason.status(),
        }
    }

    /// The `reason` label of `wsgate_upgrade_rejections_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::BadRequest(_) => "bad_request",
            Self::Misdirected(_) => "misdirected",
            Self::BadPath(_) => "bad_path",
            Self::UnsupportedVersion => "bad_version",
            Self::UnsupportedProtocol => "bad_protocol",
            Self::BackendRefused(_) => "backend_refused",
            Self::BackendUnreachable(_) => "backend_unreachable",
            Self::BackendTimeout => "backend_timeout",
            Self::BackendRejected(_) => "backend_rejected",
            Self::BackendHandshake(_) => "backend_handshake",
            Self::NoDescriptors(_) => "no_descriptors",
            Self::RecordingUnavailable => "recording_unavailable",
            Self::ShuttingDown => "shutting_down",
            Self::Draining => "draining",
            Self::Origin => "origin",
            Self::Unauthorized(_) => "unauthorized",
            Self::Forbidden(_) => "forbidden",
            Self::UnknownToken => "unknown_token",
            Self::EgressDenied(_) => "egress_denied",
            Self::Limited { reason, .. } => reason.label(),
        }
    }

    /// The `Retry-After` header's seconds, for refusals that say when to come back.
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            Self::Limited {
                retry_after_secs, ..
            } => Some(*retry_after_secs),
            Self::NoDescriptors(_) => Some(1),
            _ => None,
        }
    }

    /// A refused credential (wrong, missing or not allowed) or an unknown target token: what
    /// the per-address budget of failed credentials counts (`policy::auth_failures`).
    pub fn is_credential_failure(&self) -> bool {
        matches!(
            self,
            Self::Unauthorized(_) | Self::Forbidden(_) | Self::UnknownToken
        )
    }

    /// Logged at debug, not warn: client mistakes, and load shed on purpose.
    pub fn is_routine(&self) -> bool {
        self.is_client_error() || matches!(self, Self::Limited { .. } | Self::Draining)
    }

    /// Whose fault it is, for the log level: client mistakes are routine. A denied egress
    /// is not: clients never choose targets, so it means a config or token-file mistake.
    pub fn is_client_error(&self) -> bool {
        (self.status().is_client_error() && !matches!(self, Self::EgressDenied(_)))
            || matches!(self, Self::UnsupportedProtocol)
    }
}

/// Close codes the gateway sends (RFC 6455 §7.4.1); defined with the protocol.
pub use crate::ws::close_code;

#[cfg(test)]
mod tests {
    use super::{Refusal, RejectError};
    use hyper::StatusCode;
    use std::collections::BTreeSet;

    /// One value of every variant. The `match` below has no wildcard, so a new variant
    /// does not compile until it is listed here too.
    fn every_rejection() -> Vec<RejectError> {
        let io = || std::io::Error::other("x");
        let refusals = [
            Refusal::OverCapacity,
            Refusal::RouteFull,
            Refusal::IpLimit,
            Refusal::RateLimited,
            Refusal::AuthRateLimited,
            Refusal::UdpFull,
        ];
        for r in refusals {
            match r {
                Refusal::OverCapacity
                | Refusal::RouteFull
                | Refusal::IpLimit
                | Refusal::RateLimited
                | Refusal::AuthRateLimited
                | Refusal::UdpFull => {}
            }
        }
        let mut all = vec![
            RejectError::NoRoute,
            RejectError::BadRequest("x"),
            RejectError::BadPath("x"),
            RejectError::UnsupportedVersion,
            RejectError::UnsupportedProtocol,
            RejectError::BackendRefused(io()),
            RejectError::BackendUnreachable(io()),
            RejectError::BackendTimeout,
            RejectError::BackendRejected(StatusCode::FORBIDDEN),
            RejectError::BackendHandshake(Box::new(io())),
            RejectError::RecordingUnavailable,
            RejectError::ShuttingDown,
            RejectError::Draining,
            RejectError::NoDescriptors(io()),
            RejectError::Misdirected("x"),
            RejectError::Origin,
            RejectError::Unauthorized("x"),
            RejectError::Forbidden("x"),
            RejectError::UnknownToken,
            RejectError::EgressDenied(Box::new(io())),
        ];
        all.extend(refusals.map(|reason| RejectError::Limited {
            reason,
            retry_after_secs: 1,
        }));
        for e in &all {
            match e {
                RejectError::NoRoute
                | RejectError::BadRequest(_)
                | RejectError::Misdirected(_)
                | RejectError::BadPath(_)
                | RejectError::UnsupportedVersion
                | RejectError::UnsupportedProtocol
                | RejectError::BackendRefused(_)
                | RejectError::BackendUnreachable(_)
                | RejectError::BackendTimeout
                | RejectError::BackendRejected(_)
                | RejectError::BackendHandshake(_)
                | RejectError::RecordingUnavailable
                | RejectError::ShuttingDown
                | RejectError::Draining
                | RejectError::NoDescriptors(_)
                | RejectError::Origin
                | RejectError::Unauthorized(_)
                | RejectError::Forbidden(_)
                | RejectError::UnknownToken
                | RejectError::EgressDenied(_)
                | RejectError::Limited { .. } => {}
            }
        }
        all
    }

    #[test]
    fn labels_lists_exactly_the_labels_rejections_carry() {
        let carried: BTreeSet<&str> = every_rejection().iter().map(RejectError::label).collect();
        let listed: BTreeSet<&str> = RejectError::LABELS.iter().copied().collect();
        assert_eq!(
            listed.len(),
            RejectError::LABELS.len(),
            "a label is listed twice"
        );
        assert_eq!(
            carried, listed,
            "RejectError::LABELS must list every label() and nothing else"
        );
    }
}
