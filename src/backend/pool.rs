//! A route's backend pool (`backends = [...]`): the order a new session tries them in, passive
//! ejection with backoff when a dial fails, optional active checks, per-backend metrics.
//!
//! Its state lives behind one `Arc`, so a reload that leaves a route's pool unchanged can keep
//! it (`Snapshot::build_reusing`): ejections, session counts and the check task carry over.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use metrics::Gauge;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::{Backend, Dialer, Handshake, ProxyAddrs};
use crate::config::{BackendAddr, Balance, HealthConfig};
use crate::error::RejectError;

/// One route's backends and their health.
#[derive(Debug)]
pub struct Pool {
    route: Arc<str>,
    members: Vec<Member>,
    balance: Balance,
    health: HealthConfig,
    /// Where the next round starts.
    next: AtomicUsize,
}

#[derive(Debug)]
struct Member {
    addr: BackendAddr,
    /// Live sessions on this backend.
    sessions: AtomicUsize,
    state: Mutex<Health>,
    /// `wsgate_backend_up{route,backend}`: 0 while ejected.
    up: Gauge,
    /// `wsgate_backend_sessions_active{route,backend}`.
    active: Gauge,
}

#[derive(Debug, Default)]
struct Health {
    /// Failures in a row; each doubles the next ejection.
    failures: u32,
    ejected_until: Option<Instant>,
}

impl Pool {
    /// A pool of `backends` (validated by config: non-empty, one kind, no duplicates).
    pub fn new(
        route: Arc<str>,
        backends: Vec<BackendAddr>,
        balance: Balance,
        health: HealthConfig,
    ) -> Self {
        let members = backends
            .into_iter()
            .map(|addr| {
                let label = addr.to_string();
                let up = crate::metrics::backend_up(&route, &label);
                up.set(1.0);
                Member {
                    active: crate::metrics::backend_sessions(&route, &label),
                    addr,
                    sessions: AtomicUsize::new(0),
                    state: Mutex::default(),
                    up,
                }
            })
            .collect();
        Self {
            route,
            members,
            balance,
            health,
            next: AtomicUsize::new(0),
        }
    }

    /// Whether this pool was built from exactly these settings (a reload may then keep it).
    pub fn same_config(
        &self,
        route: &str,
        backends: &[BackendAddr],
        balance: Balance,
        health: &HealthConfig,
    ) -> bool {
        *self.route == *route
            && self.balance == balance
            && self.health == *health
            && self.members.len() == backends.len()
            && self.members.iter().zip(backends).all(|(m, b)| m.addr == *b)
    }

    pub fn backends(&self) -> impl Iterator<Item = &BackendAddr> {
        self.members.iter().map(|m| &m.addr)
    }

    /// Whether any backend is `wss://` (the route then needs a TLS client config).
    pub fn has_wss(&self) -> bool {
        self.backends()
            .any(|b| matches!(b, BackendAddr::WebSocket { tls: true, .. }))
    }

    /// This session's order: backends in service first (round robin, or fewest sessions),
    /// then ejected ones, soonest back first, so nothing is left untried before a `502`.
    fn candidates(&self) -> Vec<usize> {
        let n = self.members.len();
        if n == 0 {
            return Vec::new();
        }
        let start = self.next.fetch_add(1, Ordering::Relaxed) % n;
        let now = Instant::now();
        let mut healthy = Vec::with_capacity(n);
        let mut ejected = Vec::new();
        for i in (0..n).map(|k| (start + k) % n) {
            let m = &self.members[i];
            let mut h = m.state.lock().unwrap_or_else(PoisonError::into_inner);
            match h.ejected_until {
                Some(until) if until > now => ejected.push((until, i)),
                Some(_) => {
                    // The period is over: back in service, on probation (failures kept).
                    h.ejected_until = None;
                    m.up.set(1.0);
                    healthy.push(i);
                }
                None => healthy.push(i),
            }
        }
        if self.balance == Balance::LeastSessions {
            // Stable: ties keep the round-robin order.
            healthy.sort_by_key(|&i| self.members[i].sessions.load(Ordering::Relaxed));
        }
        ejected.sort();
        healthy.extend(ejected.into_iter().map(|(_, i)| i));
        healthy
    }

    /// Dial the pool for one session: each backend in [`Self::candidates`] order until one
    /// answers (a failure ejects it); the `Lease` counts the session on that backend.
    /// The error is the last backend's.
    pub async fn dial(
        self: &Arc<Self>,
        dialer: &Dialer,
        backend_tls: Option<&Arc<rustls::ClientConfig>>,
        handshake: impl Fn(&BackendAddr) -> Handshake,
        proxy: Option<ProxyAddrs>,
    ) -> Result<(Backend, Lease), RejectError> {
        let mut last = None;
        for i in self.candidates() {
            let addr = &self.members[i].addr;
            match dialer.dial(backend_tls, addr, handshake(addr), proxy).await {
                Ok(b) => {
                    self.mark_up(i);
                    return Ok((b, Lease::new(self.clone(), i)));
                }
                Err(e) if is_backend_failure(&e) => {
                    warn!(route = %self.route, backend = %addr, error = %e, "backend failed; trying the next");
                    self.eject(i);
                    last = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(RejectError::BackendTimeout))
    }

    /// Take backend `i` out of service for `eject_secs`, doubled per failure in a row.
    fn eject(&self, i: usize) {
        let m = &self.members[i];
        let mut h = m.state.lock().unwrap_or_else(PoisonError::into_inner);
        h.failures = h.failures.saturating_add(1);
        let base = Duration::from_secs_f64(self.health.eject_secs);
        let max = Duration::from_secs_f64(self.health.max_eject_secs);
        let period = base
            .checked_mul(1u32 << (h.failures - 1).min(16))
            .unwrap_or(max)
            .min(max);
        if h.ejected_until.is_none() {
            info!(route = %self.route, backend = %m.addr, secs = period.as_secs_f64(), "backend ejected");
        }
        h.ejected_until = Some(Instant::now() + period);
        m.up.set(0.0);
    }

    fn mark_up(&self, i: usize) {
        let m = &self.members[i];
        let mut h = m.state.lock().unwrap_or_else(PoisonError::into_inner);
        if h.ejected_until.take().is_some() {
            info!(route = %self.route, backend = %m.addr, "backend back in service");
        }
        h.failures = 0;
        m.up.set(1.0);
    }

    /// The active check period, when `[route.health] check_interval_secs` is set.
    pub fn check_interval(&self) -> Option<Duration> {
        (self.health.check_interval_secs > 0.0)
            .then(|| Duration::from_secs_f64(self.health.check_interval_secs))
    }

    /// Active checks until `stop`, or until the pool is dropped (a reload replaced it): every
    /// backend each interval gets the dial a session would make ([`check`]); a failure ejects,
    /// a success restores. A check is never shallower than the dial whose failure ejected a
    /// backend, so it cannot undo that ejection while the failure stands (a `ws://` backend
    /// that accepts TCP but never answers its handshake stays out).
    pub async fn run_checks(
        pool: Weak<Self>,
        dialer: Dialer,
        backend_tls: Option<Arc<rustls::ClientConfig>>,
        stop: CancellationToken,
    ) {
        let Some(interval) = pool.upgrade().and_then(|p| p.check_interval()) else {
            return;
        };
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = stop.cancelled() => return,
            }
            let Some(pool) = pool.upgrade() else { return };
            let dialer = Dialer {
                connect_timeout: Duration::from_secs_f64(pool.health.check_timeout_secs),
                ..dialer.clone()
            };
            for i in 0..pool.members.len() {
                let addr = &pool.members[i].addr;
                let checked = tokio::select! {
                    r = check(&dialer, backend_tls.as_ref(), addr) => r,
                    () = stop.cancelled() => return,
                };
                match checked {
                    Ok(()) => pool.mark_up(i),
                    Err(e) if is_backend_failure(&e) => {
                        debug!(route = %pool.route, backend = %addr, error = %e, "active check failed");
                        pool.eject(i);
                    }
                    // Refused by egress: not the backend's health; leave it as it is.
                    Err(_) => {}
                }
            }
        }
    }
}

/// One active check of `addr`: the dial a session makes, under the dialer's timeout (the
/// check timeout) — a connect for byte backends; for `ws://` and `wss://` also TLS and the
/// WebSocket handshake to the URL's own path, then a Close (1001). `Ok` also when a
/// WebSocket backend answers the handshake with a `4xx`: it is serving, and a session's dial
/// would not eject it for that either.
async fn check(
    dialer: &Dialer,
    backend_tls: Option<&Arc<rustls::ClientConfig>>,
    addr: &BackendAddr,
) -> Result<(), RejectError> {
    let handshake = match addr {
        BackendAddr::WebSocket { path, .. } => Handshake {
            path: path.clone(),
            ..Handshake::default()
        },
        _ => Handshake::default(),
    };
    match dialer.dial(backend_tls, addr, handshake, None).await {
        Ok(Backend::WebSocket { io, .. }) => {
            let mut ws =
                fastwebsockets::WebSocket::after_handshake(io, fastwebsockets::Role::Client);
            let close = ws.write_frame(fastwebsockets::Frame::close(1001, b"health check"));
            let _ = tokio::time::timeout(dialer.connect_timeout, close).await;
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(RejectError::BackendRejected(status)) if status.is_client_error() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Failures that say the backend is not serving (so another one should be tried), as opposed
/// to this request being refused (egress, a 4xx from a WebSocket backend).
fn is_backend_failure(e: &RejectError) -> bool {
    match e {
        RejectError::BackendRefused(_)
        | RejectError::BackendUnreachable(_)
        | RejectError::BackendTimeout
        | RejectError::BackendHandshake(_) => true,
        RejectError::BackendRejected(status) => status.is_server_error(),
        _ => false,
    }
}

/// One session's place on a backend: counted in its sessions (for `least_sessions` and
/// `wsgate_backend_sessions_active`) until dropped.
#[derive(Debug)]
pub struct Lease {
    pool: Arc<Pool>,
    index: usize,
}

impl Lease {
    fn new(pool: Arc<Pool>, index: usize) -> Self {
        let m = &pool.members[index];
        m.sessions.fetch_add(1, Ordering::Relaxed);
        m.active.increment(1.0);
        Self { pool, index }
    }

    /// The backend this session uses.
    pub fn backend(&self) -> &BackendAddr {
        &self.pool.members[self.index].addr
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let m = &self.pool.members[self.index];
        m.sessions.fetch_sub(1, Ordering::Relaxed);
        m.active.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: u16, balance: Balance) -> Arc<Pool> {
        let backends = (1..=n)
            .map(|p| BackendAddr::Tcp {
                host: "127.0.0.1".into(),
                port: p,
            })
            .collect();
        Arc::new(Pool::new(
            "t".into(),
            backends,
            balance,
            HealthConfig::default(),
        ))
    }

    #[test]
    fn round_robin_rotates_and_ejected_go_last() {
        let p = pool(3, Balance::RoundRobin);
        assert_eq!(p.candidates(), [0, 1, 2]);
        assert_eq!(p.candidates(), [1, 2, 0]);
        p.eject(2);
        assert_eq!(p.candidates(), [0, 1, 2]);
        assert_eq!(p.candidates(), [0, 1, 2]);
        assert_eq!(p.candidates(), [1, 0, 2]);
    }

    #[test]
    fn least_sessions_prefers_the_emptiest() {
        let p = pool(3, Balance::LeastSessions);
        let _a = Lease::new(p.clone(), 0);
        let _b = Lease::new(p.clone(), 0);
        let _c = Lease::new(p.clone(), 1);
        assert_eq!(p.candidates(), [2, 1, 0]);
        drop(_a);
        drop(_b);
        assert_eq!(p.candidates().last(), Some(&1));
    }

    #[tokio::test(start_paused = true)]
    async fn ejection_backs_off_and_ends() {
        let p = pool(1, Balance::RoundRobin);
        let until = |p: &Pool| p.members[0].state.lock().unwrap().ejected_until.unwrap();
        p.eject(0);
        assert_eq!(until(&p) - Instant::now(), Duration::from_secs(5));
        p.eject(0);
        assert_eq!(until(&p) - Instant::now(), Duration::from_secs(10));
        for _ in 0..20 {
            p.eject(0);
        }
        assert_eq!(until(&p) - Instant::now(), Duration::from_secs(300));
        p.mark_up(0);
        p.eject(0);
        assert_eq!(until(&p) - Instant::now(), Duration::from_secs(5));
    }
}
