//! Admission: session caps (global, per route, per client address) and the per-address
//! handshake rate, compiled from `[limits]` and the routes' own caps.
//!
//! Admission runs once per upgrade request, after the upgrade checks and before the backend
//! dial, and never waits: a request is admitted with a [`SessionSlot`] (held until the session
//! ends, released on drop) or refused with a [`Refusal`] and a `Retry-After`. Checks run from
//! the cheapest to refuse an abuser to the most global: handshake rate (429), sessions from the
//! address (429), sessions on the route (503), sessions overall (503).
//!
//! Client addresses are keyed per IPv4 address and per IPv6 /64 (one subscriber's usual
//! allocation, so rotating addresses inside it does not escape the limits); an IPv4-mapped IPv6
//! address counts as its IPv4 address. The key is the TCP peer: behind a proxy every client
//! shares the proxy's address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

use super::auth_failures::AuthFailures;
use super::identity::client_key;
use crate::config::Config;
use crate::error::{Refusal, RejectError};

/// How often the handshake limiter and the failed-credential budget forget addresses whose
/// bucket is full again.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The handshake quota of `[limits]`: `None` when the rate limit is off.
fn handshake_quota(config: &Config) -> Option<Quota> {
    let l = &config.limits;
    let rate = l.handshakes_per_ip_per_sec;
    if rate <= 0.0 {
        return None;
    }
    // Validated: 0.001..=1e6 per second and a burst of 1..=1e6, so both conversions hold.
    let burst = NonZeroU32::new(l.handshake_burst_per_ip).unwrap_or(NonZeroU32::MIN);
    Quota::with_period(Duration::from_secs_f64(1.0 / rate)).map(|q| q.allow_burst(burst))
}

/// Live sessions per client key. An entry lives only while its count is above zero, so the
/// table holds at most one entry per live session.
type IpTable = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// The admission state shared by every request of one gateway.
#[derive(Debug)]
pub struct Admission {
    global: Option<Arc<Semaphore>>,
    routes: HashMap<Arc<str>, Arc<Semaphore>>,
    per_ip: Option<(usize, IpTable)>,
    handshakes: Option<DefaultKeyedRateLimiter<IpAddr>>,
    retry_after_secs: u32,
    /// Failed credentials per address, checked before a route's credentials.
    pub auth_failures: AuthFailures,
}

impl Admission {
    /// The caps and rate of a validated config, with every count at zero.
    pub fn new(config: &Config) -> Self {
        let l = &config.limits;
        let cap = |n: usize| (n > 0).then(|| Arc::new(Semaphore::new(n)));
        Self {
            global: cap(l.max_sessions),
            routes: config
                .routes
                .iter()
                .filter_map(|r| {
                    let n = config.max_sessions(r)?;
                    Some((Arc::from(r.name.as_str()), Arc::new(Semaphore::new(n))))
                })
                .collect(),
            per_ip: (l.max_sessions_per_ip > 0)
                .then(|| (l.max_sessions_per_ip, IpTable::default())),
            handshakes: handshake_quota(config).map(RateLimiter::keyed),
            retry_after_secs: l.retry_after_secs,
            auth_failures: AuthFailures::new(l),
        }
    }

    /// Admit one session on the route named `route` for a client at `peer`, or refuse it
    /// without waiting.
    pub fn admit(&self, route: &str, peer: IpAddr) -> Result<SessionSlot, RejectError> {
        let key = client_key(peer);
        let refuse = |reason: Refusal, retry_after_secs: u64| RejectError::Limited {
            reason,
            retry_after_secs,
        };
        let retry = u64::from(self.retry_after_secs);
        if let Some(limiter) = &self.handshakes {
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(limiter.clock().now());
                // Whole seconds, rounded up: a client that waits this long is let in.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(refuse(Refusal::RateLimited, secs.max(1)));
            }
        }
        // Each step holds its part of the slot; a later refusal drops what was taken.
        let ip = match &self.per_ip {
            Some((limit, table)) => {
                let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
                let count = counts.get(&key).copied().unwrap_or(0);
                if count >= *limit {
                    return Err(refuse(Refusal::IpLimit, retry));
                }
                counts.insert(key, count + 1);
                Some(IpSlot {
                    table: table.clone(),
                    key,
                })
            }
            None => None,
        };
        let route_permit = match self.routes.get(route) {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Err(refuse(Refusal::RouteFull, retry)),
            },
            None => None,
        };
        let global = match &self.global {
            Some(sem) => match sem.clone().try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => return Err(refuse(Refusal::OverCapacity, retry)),
            },
            None => None,
        };
        Ok(SessionSlot {
            _ip: ip,
            _route: route_permit,
            _global: global,
        })
    }

    /// Addresses the handshake limiter remembers (at most one per address seen recently).
    pub fn tracked_addresses(&self) -> usize {
        self.handshakes.as_ref().map_or(0, |l| l.len())
    }

    /// Forget addresses whose handshake bucket is full again: they are indistinguishable from
    /// new ones, so the limiter's memory follows the recent handshake rate, not all time.
    pub fn upkeep(&self) {
        if let Some(limiter) = &self.handshakes {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.auth_failures.upkeep();
    }

    /// Run [`Admission::upkeep`] every [`UPKEEP_INTERVAL`] until `stop` is cancelled.
    pub async fn run_upkeep(self: Arc<Self>, stop: CancellationToken) {
        if self.handshakes.is_none() && !self.auth_failures.is_on() {
            return;
        }
        let mut tick = tokio::time::interval(UPKEEP_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => self.upkeep(),
                () = stop.cancelled() => break,
            }
        }
    }
}

/// One admitted session's place under every cap that applies; released when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    _ip: Option<IpSlot>,
    _route: Option<OwnedSemaphorePermit>,
    _global: Option<OwnedSemaphorePermit>,
}

#[derive(Debug)]
struct IpSlot {
    table: IpTable,
    key: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = counts.get_mut(&self.key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn config(limits: &str, route_extra: &str) -> Config {
        Config::from_toml(&format!(
            "[[listener]]\naddress = \"127.0.0.1:0\"\n[limits]\n{limits}\n\
             [[route]]\nname = \"a\"\npath = \"/a\"\nbackend = \"tcp://h:1\"\n{route_extra}\n\
             [[route]]\nname = \"b\"\npath = \"/b\"\nbackend = \"tcp://h:1\"\n"
        ))
        .unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn refusal(r: Result<SessionSlot, RejectError>) -> (Refusal, u64) {
        match r {
            Err(RejectError::Limited {
                reason,
                retry_after_secs,
            }) => (reason, retry_after_secs),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn ipv6_is_keyed_by_its_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(client_key(ip("192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(client_key(ip("::ffff:192.0.2.7")), ip("192.0.2.7"));
        assert_eq!(
            client_key(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(client_key(ip("2001:db8:1:3::1")), ip("2001:db8:1:2::"));
    }

    #[test]
    fn caps_refuse_in_order_and_slots_release_on_drop() {
        let c = config(
            "max_sessions = 3\nmax_sessions_per_ip = 2\nretry_after_secs = 7",
            "max_sessions = 2",
        );
        let adm = Admission::new(&c);
        let (a, b) = ("a", "b");
        let s1 = adm.admit(a, ip("10.0.0.1")).unwrap();
        let s2 = adm.admit(a, ip("10.0.0.1")).unwrap();
        assert_eq!(
            refusal(adm.admit(b, ip("10.0.0.1"))),
            (Refusal::IpLimit, 7),
            "third from one address"
        );
        assert_eq!(
            refusal(adm.admit(a, ip("10.0.0.2"))),
            (Refusal::RouteFull, 7),
            "route a holds 2"
        );
        let s3 = adm.admit(b, ip("10.0.0.2")).unwrap();
        assert_eq!(
            refusal(adm.admit(b, ip("10.0.0.3"))),
            (Refusal::OverCapacity, 7),
            "3 sessions overall"
        );
        drop(s1);
        let s4 = adm.admit(b, ip("10.0.0.1")).unwrap();
        drop((s2, s3, s4));
        let per_ip = adm.per_ip.as_ref().unwrap();
        assert!(
            per_ip.1.lock().unwrap().is_empty(),
            "no entry outlives its sessions"
        );
        assert_eq!(adm.global.as_ref().unwrap().available_permits(), 3);
    }

    #[test]
    fn a_refused_request_holds_nothing() {
        let c = config("max_sessions = 1\nmax_sessions_per_ip = 5", "");
        let adm = Admission::new(&c);
        let _held = adm.admit("a", ip("10.0.0.1")).unwrap();
        for _ in 0..10 {
            assert_eq!(
                refusal(adm.admit("b", ip("10.0.0.2"))).0,
                Refusal::OverCapacity
            );
        }
        let counts = adm.per_ip.as_ref().unwrap().1.lock().unwrap().clone();
        assert_eq!(counts, HashMap::from([(ip("10.0.0.1"), 1)]));
    }

    #[test]
    fn handshake_rate_refuses_past_the_burst_with_retry_after() {
        let c = config(
            "handshakes_per_ip_per_sec = 0.01\nhandshake_burst_per_ip = 2",
            "",
        );
        let adm = Admission::new(&c);
        let r = "a";
        drop(adm.admit(r, ip("10.0.0.1")).unwrap());
        drop(adm.admit(r, ip("10.0.0.1")).unwrap());
        let (reason, retry) = refusal(adm.admit(r, ip("10.0.0.1")));
        assert_eq!(reason, Refusal::RateLimited);
        assert!(
            (90..=100).contains(&retry),
            "one handshake per 100 s: {retry}"
        );
        // Another /64, another budget; the same /64, the same one.
        drop(adm.admit(r, ip("10.0.0.2")).unwrap());
        drop(adm.admit(r, ip("2001:db8::1")).unwrap());
        drop(adm.admit(r, ip("2001:db8::2")).unwrap());
        assert_eq!(
            refusal(adm.admit(r, ip("2001:db8::3"))).0,
            Refusal::RateLimited
        );
        assert_eq!(adm.tracked_addresses(), 3);
        // Upkeep keeps addresses still in debt.
        adm.upkeep();
        assert_eq!(adm.tracked_addresses(), 3);
    }

    #[test]
    fn upkeep_forgets_addresses_whose_bucket_refilled() {
        let c = config(
            "handshakes_per_ip_per_sec = 1000\nhandshake_burst_per_ip = 1",
            "",
        );
        let adm = Admission::new(&c);
        for i in 0..100u8 {
            drop(adm.admit("a", IpAddr::from([10, 0, 0, i])).unwrap());
        }
        assert_eq!(adm.tracked_addresses(), 100);
        std::thread::sleep(Duration::from_millis(20));
        adm.upkeep();
        assert_eq!(adm.tracked_addresses(), 0);
    }

    #[test]
    fn bad_values_name_their_key() {
        let base = "[[listener]]\naddress = \"127.0.0.1:0\"\n";
        let route = "[[route]]\nname=\"a\"\npath=\"/\"\nbackend=\"tcp://h:1\"\n";
        for (limits, route_extra, needle) in [
            (
                "handshakes_per_ip_per_sec = -1",
                "",
                "handshakes_per_ip_per_sec",
            ),
            (
                "handshakes_per_ip_per_sec = nan",
                "",
                "handshakes_per_ip_per_sec",
            ),
            (
                "handshakes_per_ip_per_sec = 1e12",
                "",
                "handshakes_per_ip_per_sec",
            ),
            ("handshake_burst_per_ip = 0", "", "handshake_burst_per_ip"),
            ("retry_after_secs = 0", "", "retry_after_secs"),
            ("max_header_bytes = 100", "", "max_header_bytes"),
            ("max_sessions = 1000000000", "", "limits.max_sessions"),
            (
                "bandwidth_bytes_per_sec = 10",
                "",
                "limits.bandwidth_bytes_per_sec",
            ),
            (
                "",
                "bandwidth_bytes_per_sec = 5",
                "route[0].bandwidth_bytes_per_sec",
            ),
            ("", "max_sessions = 1000000000", "route[0].max_sessions"),
        ] {
            let text = format!("{base}[limits]\n{limits}\n{route}{route_extra}\n");
            let err = Config::from_toml(&text).unwrap_err();
            assert!(
                format!("{err:#}").contains(needle),
                "{limits}{route_extra}: {err:#}"
            );
        }
    }

    #[test]
    fn route_keys_override_the_defaults_and_zero_turns_them_off() {
        let c = config(
            "max_sessions_per_route = 10\nbandwidth_bytes_per_sec = 4096",
            "max_sessions = 0\nbandwidth_bytes_per_sec = 0",
        );
        assert_eq!(c.max_sessions(&c.routes[0]), None);
        assert_eq!(c.bandwidth_bytes_per_sec(&c.routes[0]), None);
        assert_eq!(c.max_sessions(&c.routes[1]), Some(10));
        assert_eq!(c.bandwidth_bytes_per_sec(&c.routes[1]), Some(4096));
    }
}
