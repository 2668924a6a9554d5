//! The file-descriptor budget: each client connection holds one descriptor and each session
//! one more for its backend, so `max_connections` and the session cap must fit in the
//! process's RLIMIT_NOFILE; and what an accept loop does when descriptors run out anyway.

use std::io;
use std::sync::OnceLock;
use std::time::Duration;

use crate::config::Limits;
use crate::metrics;

/// Descriptors kept for everything but client connections and backend sockets: listeners,
/// the admin side and its scrapers, the runtime, log files, DNS lookups, health checks.
pub const RESERVED: u64 = 100;

/// How long an accept loop waits after the process ran out of descriptors (or memory).
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

static LIMIT: OnceLock<Option<u64>> = OnceLock::new();

/// Raise the soft RLIMIT_NOFILE to the hard limit (once per process) and return the limit the
/// process has now; `None` when it is unlimited or cannot be read.
pub fn init() -> Option<u64> {
    *LIMIT.get_or_init(raise_and_read)
}

/// The limit [`init`] found; `None` before it ran (then nothing is capped by it).
pub fn limit() -> Option<u64> {
    LIMIT.get().copied().flatten()
}

#[cfg(unix)]
fn raise_and_read() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource, Rlimit};
    let now = getrlimit(Resource::Nofile);
    if now.current != now.maximum {
        // Refused on some systems (macOS with an unlimited hard limit): the soft one stays.
        let _ = setrlimit(
            Resource::Nofile,
            Rlimit {
                current: now.maximum,
                maximum: now.maximum,
            },
        );
    }
    getrlimit(Resource::Nofile).current
}

#[cfg(not(unix))]
fn raise_and_read() -> Option<u64> {
    None
}

/// The connections and sessions a descriptor limit holds for `[limits]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Client connections at once: `max_connections`, or fewer when it does not fit.
    pub connections: usize,
    /// Sessions at once (one backend descriptor each); 0: no cap.
    pub sessions: usize,
    /// Whether `max_connections` or `max_sessions` was lowered to fit.
    pub lowered: bool,
}

/// What the running process's limit holds for `l` (nothing lowered before [`init`]).
pub fn fit(l: &Limits) -> Fit {
    fit_within(l, limit())
}

/// The caps that fit in `limit` descriptors, [`RESERVED`] aside: connections plus sessions.
/// `max_sessions = 0` caps sessions at what connections leave; when the two do not fit, both
/// are lowered in proportion (with `max_sessions = 0`, to half each), at least 1.
pub fn fit_within(l: &Limits, limit: Option<u64>) -> Fit {
    let Some(limit) = limit else {
        return Fit {
            connections: l.max_connections,
            sessions: l.max_sessions,
            lowered: false,
        };
    };
    let budget = usize::try_from(limit.saturating_sub(RESERVED)).unwrap_or(usize::MAX);
    let connections = l.max_connections;
    // Every connection may carry a session: with no session cap, plan for one each.
    let sessions = if l.max_sessions > 0 {
        l.max_sessions
    } else {
        connections
    };
    let wanted = connections.saturating_add(sessions);
    if wanted <= budget {
        return Fit {
            connections,
            sessions: if l.max_sessions > 0 {
                l.max_sessions
            } else {
                budget - connections
            },
            lowered: false,
        };
    }
    let share = |n: usize| {
        let scaled = (n as u128 * budget as u128 / wanted.max(1) as u128) as usize;
        scaled.max(1)
    };
    let connections = share(connections);
    Fit {
        connections,
        sessions: budget.saturating_sub(connections).max(1),
        lowered: true,
    }
}

/// After `accept` failed on the listener `stage` names (`accept`, `admin_accept`): `None`
/// when the error was one connection's (try again at once), else how long to wait before the
/// next accept. Running out of descriptors is counted and logged; the listener stays up.
pub fn after_accept_error(e: &io::Error, stage: &'static str) -> Option<Duration> {
    if matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
    ) {
        return None;
    }
    if is_exhaustion(e) {
        metrics::descriptors_exhausted(stage);
        tracing::error!(error = %e, stage, limit = limit(), "out of file descriptors: not accepting for 100 ms");
    } else {
        tracing::error!(error = %e, stage, "accept failed; retrying in 100 ms");
    }
    Some(ACCEPT_BACKOFF)
}

/// EMFILE (the process's limit) or ENFILE (the system's): no descriptor to be had.
pub fn is_exhaustion(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(23 | 24))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(max_connections: usize, max_sessions: usize) -> Limits {
        Limits {
            max_connections,
            max_sessions,
            ..Limits::default()
        }
    }

    #[test]
    fn a_config_that_fits_keeps_its_caps_and_sessions_get_what_connections_leave() {
        let fit = fit_within(&limits(10_000, 0), Some(1_048_576));
        assert_eq!(
            fit,
            Fit {
                connections: 10_000,
                sessions: 1_048_576 - 100 - 10_000,
                lowered: false
            }
        );
        let fit = fit_within(&limits(100, 50), Some(1024));
        assert_eq!(
            (fit.connections, fit.sessions, fit.lowered),
            (100, 50, false)
        );
        assert_eq!(fit_within(&limits(10_000, 0), None).sessions, 0);
    }

    #[test]
    fn a_config_that_does_not_fit_is_lowered_to_the_limit() {
        // The default on a 1024 soft limit: half each of 924.
        let fit = fit_within(&limits(10_000, 0), Some(1024));
        assert_eq!(
            (fit.connections, fit.sessions, fit.lowered),
            (462, 462, true)
        );
        // An explicit session cap keeps its proportion.
        let fit = fit_within(&limits(300, 100), Some(300));
        assert_eq!((fit.connections, fit.sessions), (150, 50));
        assert!(fit.connections + fit.sessions <= 200);
        // Nothing left still serves one of each.
        let fit = fit_within(&limits(10, 0), Some(50));
        assert_eq!((fit.connections, fit.sessions), (1, 1));
    }

    #[test]
    fn only_descriptor_and_memory_errors_back_off() {
        assert_eq!(
            after_accept_error(&io::Error::from(io::ErrorKind::ConnectionAborted), "accept"),
            None
        );
        assert!(is_exhaustion(&io::Error::from_raw_os_error(24)));
        assert_eq!(
            after_accept_error(&io::Error::from_raw_os_error(24), "accept"),
            Some(ACCEPT_BACKOFF)
        );
    }
}
