//! Admission: session caps (global, per route, per client address) and the per-address
//! handshake rate, compiled from `[limits]` and the routes' own caps.
//!
//! Admission runs once per upgrade request, after the upgrade checks and before the backend
//! dial, and never waits: a request is admitted with a [`SessionSlot`] (held until the session
//! ends, released on drop) or refused with a [`Refusal`] and a `Retry-After`. Checks run from
//! the cheapest to refuse an abuser to the most global: handshake rate (429), sessions from the
//! address (429), sessions on the route (503), sessions overall (503; with `max_sessions = 0`
//! the cap is what the descriptor budget leaves, `policy::descriptors`).
//!
//! Connections are admitted per address too ([`Admission::admit_connection`],
//! `max_connections_per_ip`), once the client's address is known (after a PROXY header), so
//! one address cannot hold every slot under `max_connections`.
//!
//! Client addresses are keyed per IPv4 address and per IPv6 /64 (one subscriber's usual
//! allocation, so rotating addresses inside it does not escape the limits); an IPv4-mapped IPv6
//! address counts as its IPv4 address. The key is the TCP peer: behind a proxy every client
//! shares the proxy's address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

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

/// Live-session counts, shared by every [`Admission`] a reload builds in turn.
///
/// A live session holds its slot in the counts of the admission that admitted it; a reload
/// must not forget those sessions, or the new caps would admit a full quota on top of them.
/// So the counts live here, apart from the caps: a reload builds a new [`Admission`] (new caps,
/// perhaps a new handshake quota) around the same counts. Sessions are counted even where no
/// cap applies, so a cap a reload turns on sees the sessions already running. A route is
/// counted by name: a renamed route starts from zero.
#[derive(Debug, Default)]
struct Counts {
    global: Arc<AtomicUsize>,
    routes: Mutex<HashMap<Arc<str>, Arc<AtomicUsize>>>,
    per_ip: IpTable,
    /// Open client connections per client key.
    connections_per_ip: IpTable,
}

/// The admission state shared by every request of one snapshot.
#[derive(Debug)]
pub struct Admission {
    counts: Arc<Counts>,
    /// 0: no cap.
    max_sessions: usize,
    /// Every route of the config, with its cap (0: none) and its live count.
    routes: HashMap<Arc<str>, (usize, Arc<AtomicUsize>)>,
    /// 0: no cap.
    max_sessions_per_ip: usize,
    /// 0: no cap.
    max_connections_per_ip: usize,
    handshakes: Option<(Quota, Arc<DefaultKeyedRateLimiter<IpAddr>>)>,
    retry_after_secs: u32,
    /// Failed credentials per address, checked before a route's credentials.
    pub auth_failures: Arc<AuthFailures>,
    /// The budget's (rate per minute, burst), to tell whether a reload changed it.
    auth_quota: (u32, u32),
}

impl Admission {
    /// The caps and rate of a validated config, with every count at zero.
    pub fn new(config: &Config) -> Self {
        Self::build(config, Arc::default(), None, None)
    }

    /// The caps and rate of `config` over `previous`'s live counts: sessions admitted by
    /// `previous` keep counting against the new caps until they end. The handshake limiter
    /// (and what it remembers) carries over when its quota is unchanged.
    pub fn succeed(config: &Config, previous: &Admission) -> Self {
        let limiter = previous.handshakes.clone();
        // A reload must not hand a guesser a fresh budget: the spent addresses carry over
        // while the budget's rate and burst are unchanged.
        let failures = Some((previous.auth_quota, previous.auth_failures.clone()));
        Self::build(config, previous.counts.clone(), limiter, failures)
    }

    fn build(
        config: &Config,
        counts: Arc<Counts>,
        limiter: Option<(Quota, Arc<DefaultKeyedRateLimiter<IpAddr>>)>,
        failures: Option<((u32, u32), Arc<AuthFailures>)>,
    ) -> Self {
        let l = &config.limits;
        let auth_quota = (l.auth_failures_per_ip_per_min, l.auth_failure_burst_per_ip);
        let auth_failures = match failures {
            Some((q, f)) if q == auth_quota => f,
            _ => Arc::new(AuthFailures::new(l)),
        };
        let routes = {
            let mut live = counts.routes.lock().unwrap_or_else(|e| e.into_inner());
            // Routes gone from the config are forgotten once their last session ends.
            live.retain(|name, n| {
                n.load(Ordering::Acquire) > 0 || config.routes.iter().any(|r| *r.name == **name)
            });
            config
                .routes
                .iter()
                .map(|r| {
                    let name: Arc<str> = Arc::from(r.name.as_str());
                    let count = live.entry(name.clone()).or_default().clone();
                    (name, (config.max_sessions(r).unwrap_or(0), count))
                })
                .collect()
        };
        let handshakes = handshake_quota(config).map(|quota| match limiter {
            Some((q, limiter)) if q == quota => (quota, limiter),
            _ => (quota, Arc::new(RateLimiter::keyed(quota))),
        });
        Self {
            counts,
            max_sessions: super::descriptors::fit(l).sessions,
            routes,
            max_sessions_per_ip: l.max_sessions_per_ip,
            max_connections_per_ip: l.max_connections_per_ip,
            handshakes,
            retry_after_secs: l.retry_after_secs,
            auth_failures,
            auth_quota,
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
        if let Some((_, limiter)) = &self.handshakes {
            if let Err(not_until) = limiter.check_key(&key) {
                let wait = not_until.wait_time_from(limiter.clock().now());
                // Whole seconds, rounded up: a client that waits this long is let in.
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                return Err(refuse(Refusal::RateLimited, secs.max(1)));
            }
        }
        // Each step holds its part of the slot; a later refusal drops what was taken.
        let ip = {
            let table = &self.counts.per_ip;
            let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
            let count = counts.get(&key).copied().unwrap_or(0);
            if self.max_sessions_per_ip > 0 && count >= self.max_sessions_per_ip {
                return Err(refuse(Refusal::IpLimit, retry));
            }
            counts.insert(key, count + 1);
            IpSlot {
                table: table.clone(),
                key,
            }
        };
        let route_slot = match self.routes.get(route) {
            Some((cap, count)) => match Held::take(count, *cap) {
                Some(held) => Some(held),
                None => return Err(refuse(Refusal::RouteFull, retry)),
            },
            None => None,
        };
        let Some(global) = Held::take(&self.counts.global, self.max_sessions) else {
            return Err(refuse(Refusal::OverCapacity, retry));
        };
        Ok(SessionSlot {
            _ip: ip,
            _route: route_slot,
            _global: global,
        })
    }

    /// Admit one client connection from `peer` under `max_connections_per_ip`, or refuse it
    /// (`None`). The slot is held until the connection and its sessions end.
    pub fn admit_connection(&self, peer: IpAddr) -> Option<ConnectionAddressSlot> {
        let key = client_key(peer);
        let table = &self.counts.connections_per_ip;
        let mut counts = table.lock().unwrap_or_else(|e| e.into_inner());
        let count = counts.get(&key).copied().unwrap_or(0);
        if self.max_connections_per_ip > 0 && count >= self.max_connections_per_ip {
            return None;
        }
        counts.insert(key, count + 1);
        Some(ConnectionAddressSlot {
            _ip: IpSlot {
                table: table.clone(),
                key,
            },
        })
    }

    /// Live sessions admitted by this admission and every one it succeeded.
    pub fn live_sessions(&self) -> usize {
        self.counts.global.load(Ordering::Acquire)
    }

    /// Addresses the handshake limiter remembers (at most one per address seen recently).
    pub fn tracked_addresses(&self) -> usize {
        self.handshakes.as_ref().map_or(0, |(_, l)| l.len())
    }

    /// Forget addresses whose handshake bucket is full again: they are indistinguishable from
    /// new ones, so the limiter's memory follows the recent handshake rate, not all time.
    pub fn upkeep(&self) {
        if let Some((_, limiter)) = &self.handshakes {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        self.auth_failures.upkeep();
    }
}

/// One admitted session's place under every cap that applies; released when dropped.
#[derive(Debug)]
pub struct SessionSlot {
    _ip: IpSlot,
    _route: Option<Held>,
    _global: Held,
}

/// One open connection's place under its address's connection cap; released when dropped.
#[derive(Debug)]
pub struct ConnectionAddressSlot {
    _ip: IpSlot,
}

/// One count of a live-session counter, given back on drop.
#[derive(Debug)]
struct Held(Arc<AtomicUsize>);

impl Held {
    /// Count one more session unless `cap` (0: none) is reached.
    fn take(count: &Arc<AtomicUsize>, cap: usize) -> Option<Self> {
        count
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (cap == 0 || n < cap).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(count.clone()))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
        assert!(
            adm.counts.per_ip.lock().unwrap().is_empty(),
            "no entry outlives its sessions"
        );
        assert_eq!(adm.live_sessions(), 0);
    }

    #[test]
    fn connections_per_address_are_capped_and_released_on_drop() {
        let adm = Admission::new(&config("max_connections_per_ip = 2", ""));
        let a = adm.admit_connection(ip("10.0.0.1")).unwrap();
        let _b = adm.admit_connection(ip("10.0.0.1")).unwrap();
        assert!(
            adm.admit_connection(ip("10.0.0.1")).is_none(),
            "third from one address"
        );
        let _other = adm.admit_connection(ip("10.0.0.2")).unwrap();
        drop(a);
        let _c = adm.admit_connection(ip("10.0.0.1")).unwrap();
        let off = Admission::new(&config("max_connections_per_ip = 0", ""));
        let _held: Vec<_> = (0..500)
            .map(|_| off.admit_connection(ip("10.0.0.1")).unwrap())
            .collect();
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
        let counts = adm.counts.per_ip.lock().unwrap().clone();
        assert_eq!(counts, HashMap::from([(ip("10.0.0.1"), 1)]));
    }

    /// Reload defect guarded: a new admission built from scratch forgot the sessions the old
    /// one admitted, so after a reload a full quota was admitted again on top of them.
    #[test]
    fn a_successor_counts_the_sessions_its_predecessor_admitted() {
        let before = Admission::new(&config("max_sessions_per_ip = 2", "max_sessions = 2"));
        let held = before.admit("a", ip("10.0.0.1")).unwrap();
        let _held2 = before.admit("b", ip("10.0.0.1")).unwrap();
        // Same caps, then a lower global cap and a route cap turned on for b.
        let same = Admission::succeed(
            &config("max_sessions_per_ip = 2", "max_sessions = 2"),
            &before,
        );
        assert_eq!(refusal(same.admit("a", ip("10.0.0.1"))).0, Refusal::IpLimit);
        let lower = Admission::succeed(
            &config(
                "max_sessions = 2\nmax_sessions_per_route = 1",
                "max_sessions = 2",
            ),
            &same,
        );
        assert_eq!(
            refusal(lower.admit("b", ip("10.0.0.2"))).0,
            Refusal::RouteFull
        );
        assert_eq!(
            refusal(lower.admit("a", ip("10.0.0.2"))).0,
            Refusal::OverCapacity
        );
        // A session of the first admission ending frees its place in the latest one.
        drop(held);
        let _new = lower.admit("a", ip("10.0.0.2")).unwrap();
        assert_eq!(lower.live_sessions(), 2);
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
