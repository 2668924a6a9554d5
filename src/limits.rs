//! Admission and pacing: session caps (global, per route, per client address), the per-address
//! handshake rate, and the per-session bandwidth pacer.
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
use std::net::{IpAddr, Ipv6Addr};
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::bail;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use hyper::StatusCode;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::{Limits, Route, RouteConfig};
use crate::error::RejectError;

/// Largest session cap accepted in the config (a semaphore holds at most `usize::MAX >> 3`).
const MAX_CAP: usize = 100_000_000;

/// How often the handshake limiter forgets addresses whose bucket is full again.
pub const UPKEEP_INTERVAL: Duration = Duration::from_secs(10);

/// The resolved admission settings (`[limits]`).
#[derive(Debug, Clone)]
pub struct AdmissionConfig {
    /// Sessions across all routes; `None`: no cap beyond `max_connections`.
    pub max_sessions: Option<usize>,
    /// Sessions from one client address; `None`: no cap.
    pub max_sessions_per_ip: Option<usize>,
    /// Handshakes from one client address; `None`: no rate limit.
    pub handshake_rate: Option<Quota>,
    /// `Retry-After` on a refusal by a session cap, in seconds.
    pub retry_after_secs: u32,
}

/// The resolved per-route limits.
#[derive(Debug, Clone, Default)]
pub struct RouteLimits {
    /// Sessions on this route; `None`: no cap.
    pub max_sessions: Option<usize>,
    /// Pacing of each direction of each session, in bytes per second; `None`: unpaced.
    pub bandwidth_bytes_per_sec: Option<u64>,
}

/// `0` means "off"; anything else must be at most [`MAX_CAP`].
fn cap(name: &str, value: usize) -> anyhow::Result<Option<usize>> {
    if value > MAX_CAP {
        bail!("{name}: must be 0 (no cap) or at most {MAX_CAP}, got {value}");
    }
    Ok((value > 0).then_some(value))
}

fn bandwidth(name: &str, value: u64) -> anyhow::Result<Option<u64>> {
    if value != 0 && !(1024..=1 << 40).contains(&value) {
        bail!("{name}: must be 0 (off) or 1024..=1099511627776 bytes per second, got {value}");
    }
    Ok((value > 0).then_some(value))
}

/// Check the `[limits]` admission keys once and resolve them.
pub fn resolve(l: &Limits) -> anyhow::Result<AdmissionConfig> {
    let rate = l.handshakes_per_ip_per_sec;
    if !rate.is_finite() || rate < 0.0 || (rate > 0.0 && !(0.001..=1_000_000.0).contains(&rate)) {
        bail!("limits.handshakes_per_ip_per_sec: must be 0 (off) or 0.001..=1000000, got {rate}");
    }
    let Some(burst) = NonZeroU32::new(l.handshake_burst_per_ip).filter(|b| b.get() <= 1_000_000)
    else {
        bail!(
            "limits.handshake_burst_per_ip: must be 1..=1000000, got {}",
            l.handshake_burst_per_ip
        );
    };
    let handshake_rate = if rate > 0.0 {
        let quota =
            Quota::with_period(Duration::from_secs_f64(1.0 / rate)).map(|q| q.allow_burst(burst));
        let Some(quota) = quota else {
            bail!("limits.handshakes_per_ip_per_sec: {rate} is too high");
        };
        Some(quota)
    } else {
        None
    };
    if !(1..=86_400).contains(&l.retry_after_secs) {
        bail!(
            "limits.retry_after_secs: must be 1..=86400, got {}",
            l.retry_after_secs
        );
    }
    if !(1024..=1 << 20).contains(&l.max_header_bytes) {
        bail!(
            "limits.max_header_bytes: must be 1024..=1048576, got {}",
            l.max_header_bytes
        );
    }
    cap("limits.max_sessions_per_route", l.max_sessions_per_route)?;
    bandwidth("limits.bandwidth_bytes_per_sec", l.bandwidth_bytes_per_sec)?;
    Ok(AdmissionConfig {
        max_sessions: cap("limits.max_sessions", l.max_sessions)?,
        max_sessions_per_ip: cap("limits.max_sessions_per_ip", l.max_sessions_per_ip)?,
        handshake_rate,
        retry_after_secs: l.retry_after_secs,
    })
}

/// Resolve route `at`'s limits: its own keys, else the `[limits]` defaults.
pub fn resolve_route(at: &str, r: &RouteConfig, l: &Limits) -> anyhow::Result<RouteLimits> {
    Ok(RouteLimits {
        max_sessions: cap(
            &format!("{at}.max_sessions"),
            r.max_sessions.unwrap_or(l.max_sessions_per_route),
        )?,
        bandwidth_bytes_per_sec: bandwidth(
            &format!("{at}.bandwidth_bytes_per_sec"),
            r.bandwidth_bytes_per_sec
                .unwrap_or(l.bandwidth_bytes_per_sec),
        )?,
    })
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
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Self::OverCapacity | Self::RouteFull => StatusCode::SERVICE_UNAVAILABLE,
            Self::IpLimit | Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// The `reason` label of `wsgate_upgrade_rejections_total`.
    pub fn label(self) -> &'static str {
        match self {
            Self::OverCapacity => "over_capacity",
            Self::RouteFull => "route_full",
            Self::IpLimit => "ip_limit",
            Self::RateLimited => "rate_limited",
        }
    }
}

/// The key a client address is counted under: IPv4 as is, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
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
}

impl Admission {
    pub fn new(config: &AdmissionConfig, routes: &[Arc<Route>]) -> Self {
        Self {
            global: config.max_sessions.map(|n| Arc::new(Semaphore::new(n))),
            routes: routes
                .iter()
                .filter_map(|r| {
                    let n = r.limits.max_sessions?;
                    Some((r.name.clone(), Arc::new(Semaphore::new(n))))
                })
                .collect(),
            per_ip: config.max_sessions_per_ip.map(|n| (n, IpTable::default())),
            handshakes: config.handshake_rate.map(RateLimiter::keyed),
            retry_after_secs: config.retry_after_secs,
        }
    }

    /// Admit one session on `route` for a client at `peer`, or refuse it without waiting.
    pub fn admit(&self, route: &Route, peer: IpAddr) -> Result<SessionSlot, RejectError> {
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
        let route_permit = match self.routes.get(&route.name) {
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
    }

    /// Run [`Admission::upkeep`] every [`UPKEEP_INTERVAL`] until `stop` is cancelled.
    pub async fn run_upkeep(self: Arc<Self>, stop: CancellationToken) {
        if self.handshakes.is_none() {
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

/// Paces one direction of a session to a rate in bytes per second by delaying reads: a token
/// bucket that one read may take into debt, which the reader sleeps off before its next read.
/// Nothing is buffered: while the reader sleeps, the sender's bytes wait in the socket, and TCP
/// flow control slows the sender down. An unlimited pacer never sleeps.
#[derive(Debug)]
pub struct Pacer(Option<Bucket>);

#[derive(Debug)]
struct Bucket {
    /// Bytes per second.
    rate: f64,
    /// Most bytes that may go at once: 100 ms of traffic, at least 1 KiB.
    burst: f64,
    /// Bytes that may go now; negative while in debt.
    tokens: f64,
    last: Instant,
}

impl Pacer {
    /// A pacer at `bytes_per_sec`; `None` never waits.
    pub fn new(bytes_per_sec: Option<u64>) -> Self {
        Self(bytes_per_sec.filter(|r| *r > 0).map(|rate| {
            let rate = rate as f64;
            let burst = (rate / 10.0).max(1024.0);
            Bucket {
                rate,
                burst,
                tokens: burst,
                last: Instant::now(),
            }
        }))
    }

    /// The largest read worth making, given the caller's own `limit`.
    pub fn max_read(&self, limit: usize) -> usize {
        match &self.0 {
            Some(b) => limit.min(b.burst as usize).max(1),
            None => limit,
        }
    }

    /// When the next read may start; `None`: now.
    pub fn ready_at(&mut self, now: Instant) -> Option<Instant> {
        let b = self.0.as_mut()?;
        b.refill(now);
        // Less than a byte of debt left: go (float rounding must not cost an extra wakeup).
        (b.tokens <= -1.0).then(|| now + Duration::from_secs_f64(-b.tokens / b.rate))
    }

    /// Sleep until the next read may start.
    pub async fn ready(&mut self) {
        if let Some(at) = self.ready_at(Instant::now()) {
            tokio::time::sleep_until(at).await;
        }
    }

    /// Account for `n` bytes just read.
    pub fn spent(&mut self, n: usize) {
        if let Some(b) = self.0.as_mut() {
            b.refill(Instant::now());
            b.tokens -= n as f64;
        }
    }
}

impl Bucket {
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.last = now;
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
        let adm = Admission::new(&c.admission, &c.routes);
        let (a, b) = (&c.routes[0], &c.routes[1]);
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
        let adm = Admission::new(&c.admission, &c.routes);
        let _held = adm.admit(&c.routes[0], ip("10.0.0.1")).unwrap();
        for _ in 0..10 {
            assert_eq!(
                refusal(adm.admit(&c.routes[1], ip("10.0.0.2"))).0,
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
        let adm = Admission::new(&c.admission, &c.routes);
        let r = &c.routes[0];
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
        let adm = Admission::new(&c.admission, &c.routes);
        for i in 0..100u8 {
            drop(
                adm.admit(&c.routes[0], IpAddr::from([10, 0, 0, i]))
                    .unwrap(),
            );
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
        assert_eq!(c.routes[0].limits.max_sessions, None);
        assert_eq!(c.routes[0].limits.bandwidth_bytes_per_sec, None);
        assert_eq!(c.routes[1].limits.max_sessions, Some(10));
        assert_eq!(c.routes[1].limits.bandwidth_bytes_per_sec, Some(4096));
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_holds_the_average_rate_and_allows_one_burst() {
        let mut p = Pacer::new(Some(10_000));
        assert_eq!(
            p.max_read(64 * 1024),
            1024,
            "bursts of 100 ms, at least 1 KiB"
        );
        let start = Instant::now();
        let mut sent = 0;
        while sent < 100_000 {
            p.ready().await;
            let n = p.max_read(64 * 1024);
            p.spent(n);
            sent += n;
        }
        let took = start.elapsed().as_secs_f64();
        // 100 kB at 10 kB/s, less the first burst.
        assert!((9.7..=10.1).contains(&took), "took {took} s");
    }

    #[tokio::test(start_paused = true)]
    async fn pacer_debt_from_one_big_read_is_slept_off() {
        let mut p = Pacer::new(Some(1024));
        p.spent(10 * 1024);
        let start = Instant::now();
        p.ready().await;
        let took = start.elapsed().as_secs_f64();
        assert!(
            (8.9..=9.1).contains(&took),
            "9 KiB of debt at 1 KiB/s: {took} s"
        );
        let mut off = Pacer::new(None);
        off.spent(1 << 30);
        assert_eq!(off.ready_at(Instant::now()), None);
        assert_eq!(off.max_read(4096), 4096);
    }
}
