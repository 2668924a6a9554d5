//! The budget of failed credentials per client address: wrong, missing or refused tokens and
//! unknown target tokens each spend one; a spent budget is answered 429 before the next
//! credential is looked at, so tokens cannot be guessed at line rate (`[limits]`
//! `auth_failures_per_ip_per_min`, `auth_failure_burst_per_ip`).
//!
//! Counting uses governor's keyed GCRA limiter (a failure is one cell). Governor has no way to
//! ask "is there a cell left?" without taking it, so the moment a failure takes the last cell,
//! the address is also written into a small table of spent addresses until its next cell is
//! due; requests consult that table. Both forget addresses in upkeep: memory follows the
//! addresses that failed recently, not all time.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::time::Instant;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::identity::client_key;
use crate::config::Limits;
use crate::error::{Refusal, RejectError};

type Limiter =
    RateLimiter<IpAddr, DefaultKeyedStateStore<IpAddr>, DefaultClock, StateInformationMiddleware>;

/// Failed credentials per client key; `None` inside when the budget is off.
#[derive(Debug)]
pub struct AuthFailures {
    limiter: Option<Limiter>,
    /// Keys whose budget is spent, with when their next failure is allowed again.
    spent: Mutex<HashMap<IpAddr, Instant>>,
}

impl AuthFailures {
    /// The budget of a validated `[limits]` (0 per minute: off).
    pub fn new(limits: &Limits) -> Self {
        let limiter = NonZeroU32::new(limits.auth_failures_per_ip_per_min).map(|rate| {
            // Validated: the burst is 1..=1e6.
            let burst =
                NonZeroU32::new(limits.auth_failure_burst_per_ip).unwrap_or(NonZeroU32::MIN);
            RateLimiter::keyed(Quota::per_minute(rate).allow_burst(burst))
                .with_middleware::<StateInformationMiddleware>()
        });
        Self {
            limiter,
            spent: Mutex::default(),
        }
    }

    /// Before a credential is checked: refuse an address whose budget is spent (429, with
    /// the seconds until its next attempt is allowed).
    pub fn check(&self, peer: IpAddr) -> Result<(), RejectError> {
        if self.limiter.is_none() {
            return Ok(());
        }
        let key = client_key(peer);
        let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
        let Some(&until) = spent.get(&key) else {
            return Ok(());
        };
        let now = Instant::now();
        if until <= now {
            spent.remove(&key);
            return Ok(());
        }
        let wait = until - now;
        // Whole seconds, rounded up: a client that waits this long is let in.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        Err(RejectError::Limited {
            reason: Refusal::AuthRateLimited,
            retry_after_secs: secs.max(1),
        })
    }

    /// A credential from `peer` failed: spend one from its budget.
    pub fn failed(&self, peer: IpAddr) {
        let Some(limiter) = &self.limiter else {
            return;
        };
        let key = client_key(peer);
        let next_allowed = match limiter.check_key(&key) {
            Ok(state) if state.remaining_burst_capacity() == 0 => {
                // The next cell is due at most one replenish interval from now.
                Instant::now() + state.quota().replenish_interval()
            }
            Ok(_) => return,
            Err(not_until) => Instant::now() + not_until.wait_time_from(limiter.clock().now()),
        };
        self.spent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, next_allowed);
    }

    /// Forget addresses whose budget is whole again, and spent marks that expired.
    pub fn upkeep(&self) {
        if let Some(limiter) = &self.limiter {
            limiter.retain_recent();
            limiter.shrink_to_fit();
            let now = Instant::now();
            let mut spent = self.spent.lock().unwrap_or_else(|e| e.into_inner());
            spent.retain(|_, until| *until > now);
            spent.shrink_to_fit();
        }
    }

    /// Whether the budget is on (so upkeep has work to do).
    pub fn is_on(&self) -> bool {
        self.limiter.is_some()
    }

    /// Addresses remembered (counting and spent), for tests of the memory bound.
    pub fn tracked_addresses(&self) -> usize {
        self.limiter.as_ref().map_or(0, |l| l.len())
            + self.spent.lock().unwrap_or_else(|e| e.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// How long one failure takes to be forgiven at `per_min` failures a minute.
    fn period(per_min: u32) -> Duration {
        Duration::from_secs(60) / per_min
    }

    fn budget(per_min: u32, burst: u32) -> AuthFailures {
        AuthFailures::new(&Limits {
            auth_failures_per_ip_per_min: per_min,
            auth_failure_burst_per_ip: burst,
            ..Limits::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_burst_is_spent_by_failures_then_refused_before_the_next() {
        let b = budget(1, 3);
        let a = ip("192.0.2.1");
        for _ in 0..3 {
            assert!(b.check(a).is_ok());
            b.failed(a);
        }
        match b.check(a) {
            Err(RejectError::Limited {
                reason: Refusal::AuthRateLimited,
                retry_after_secs,
            }) => assert!((1..=60).contains(&retry_after_secs), "{retry_after_secs}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
        // Another address, another budget; the same IPv6 /64, the same one.
        assert!(b.check(ip("192.0.2.2")).is_ok());
        for n in 1..=3 {
            b.failed(ip(&format!("2001:db8::{n}")));
        }
        assert!(b.check(ip("2001:db8::99")).is_err());
    }

    #[test]
    fn zero_turns_the_budget_off() {
        let b = budget(0, 1);
        for _ in 0..100 {
            b.failed(ip("192.0.2.1"));
        }
        assert!(b.check(ip("192.0.2.1")).is_ok());
        assert_eq!(b.tracked_addresses(), 0);
    }

    #[test]
    fn upkeep_forgets_addresses_whose_budget_refilled() {
        // 60,000 a minute: a cell every millisecond.
        let b = budget(60_000, 1);
        for i in 0..100u8 {
            b.failed(IpAddr::from([10, 0, 0, i]));
        }
        assert!(b.tracked_addresses() >= 100);
        std::thread::sleep(period(60_000) * 20);
        b.upkeep();
        assert_eq!(b.tracked_addresses(), 0);
        assert!(b.check(IpAddr::from([10, 0, 0, 1])).is_ok());
    }
}
