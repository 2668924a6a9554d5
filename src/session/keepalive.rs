//! The ping schedule and missed-pong state of one session: pure, driven by the bridge's clock;
//! and [`Held`], which tells a missed pong the peer could not help from one it could.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

/// What the bridge must do when [`Keepalive::deadline`] passes.
#[derive(Debug, PartialEq, Eq)]
pub enum Due {
    /// Send a ping with this payload.
    Ping([u8; 8]),
    /// The last ping went unanswered for the pong timeout: the client is gone.
    TimedOut,
}

/// One outstanding ping at a time; its payload is a sequence number so stray
/// or late pongs are told apart from the answer.
#[derive(Debug)]
pub struct Keepalive {
    interval: Duration,
    pong_timeout: Duration,
    next_ping: Instant,
    /// The ping awaiting its pong: sequence number, when it was sent, when its pong is due.
    outstanding: Option<(u64, Instant, Instant)>,
    seq: u64,
}

impl Keepalive {
    pub fn new(interval: Duration, pong_timeout: Duration, now: Instant) -> Self {
        Self {
            interval,
            pong_timeout,
            next_ping: now + interval,
            outstanding: None,
            seq: 0,
        }
    }

    /// The next moment something is due.
    pub fn deadline(&self) -> Instant {
        match self.outstanding {
            Some((_, _, due)) => due,
            None => self.next_ping,
        }
    }

    /// Call when `deadline()` has passed.
    pub fn on_deadline(&mut self, now: Instant) -> Due {
        if self.outstanding.is_some() {
            return Due::TimedOut;
        }
        self.seq += 1;
        self.outstanding = Some((self.seq, now, now + self.pong_timeout));
        self.next_ping = now + self.interval;
        Due::Ping(self.seq.to_be_bytes())
    }

    /// A pong arrived; returns the round-trip time if it answers the outstanding ping.
    pub fn on_pong(&mut self, payload: &[u8], now: Instant) -> Option<Duration> {
        let (seq, sent, _) = self.outstanding?;
        if payload != seq.to_be_bytes() {
            return None;
        }
        self.outstanding = None;
        // The schedule is kept from the ping's send time, so a slow pong does not delay the next ping.
        if self.next_ping < now {
            self.next_ping = now;
        }
        Some(now - sent)
    }

    /// The peer could not have answered before `since` (its pong sat behind data we were not
    /// reading, or our ping sat behind data it was not reading): give the outstanding ping a
    /// full pong timeout from then. Returns whether the deadline moved.
    pub fn excuse(&mut self, since: Instant) -> bool {
        match &mut self.outstanding {
            Some((_, _, due)) if since + self.pong_timeout > *due => {
                *due = since + self.pong_timeout;
                true
            }
            _ => false,
        }
    }

    /// How long a write to the client may stall before the client counts as gone:
    /// a client that accepts no byte for a whole ping cycle could not have answered a ping either.
    pub fn stall_limit(&self) -> Duration {
        self.interval + self.pong_timeout
    }
}

/// Whether a reader is held back by the other side of the session (a backend slow to read, or
/// in the relay either hop's writer): while it is, and for a pong timeout after, the peer's
/// pong may sit unread behind data we chose not to read, so a late pong is not the peer's
/// fault. The reader marks it only when a write to the other side has to wait, never per
/// frame; the peer's writer reads it only when a pong is overdue.
#[derive(Debug)]
pub struct Held {
    base: Instant,
    /// `HELD` while held; else nanoseconds from `base` to the last release (0: never held).
    state: AtomicU64,
}

const HELD: u64 = u64::MAX;

impl Held {
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            state: AtomicU64::new(0),
        })
    }

    pub fn hold(&self) {
        self.state.store(HELD, Ordering::Relaxed);
    }

    pub fn release(&self) {
        let since = (Instant::now() - self.base).as_nanos().max(1);
        self.state
            .store(u64::try_from(since).unwrap_or(HELD - 1), Ordering::Relaxed);
    }

    /// Since when the peer has had the chance to answer: `now` while held, the release
    /// time after one, `None` if the reader was never held.
    pub fn peer_free_since(&self, now: Instant) -> Option<Instant> {
        match self.state.load(Ordering::Relaxed) {
            0 => None,
            HELD => Some(now),
            nanos => Some(self.base + Duration::from_nanos(nanos)),
        }
    }
}

/// Sleep until `at`, or forever when there is no deadline (for a `select!` arm).
pub async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn ping_then_pong_records_rtt_and_keeps_schedule() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(20 * S, 20 * S, t0);
        assert_eq!(k.deadline(), t0 + 20 * S);
        let Due::Ping(p) = k.on_deadline(t0 + 20 * S) else {
            panic!("expected ping")
        };
        assert_eq!(k.deadline(), t0 + 40 * S, "now waiting for the pong");
        assert_eq!(k.on_pong(&p, t0 + 21 * S), Some(S));
        assert_eq!(
            k.deadline(),
            t0 + 40 * S,
            "next ping one interval after the last"
        );
    }

    #[test]
    fn unanswered_ping_times_out() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(20 * S, 5 * S, t0);
        assert!(matches!(k.on_deadline(t0 + 20 * S), Due::Ping(_)));
        assert_eq!(k.deadline(), t0 + 25 * S);
        assert_eq!(k.on_deadline(t0 + 25 * S), Due::TimedOut);
    }

    /// Issue 9 item 7: a pong held up by backpressure we applied is not a missed pong.
    #[test]
    fn an_excused_ping_gets_a_full_pong_timeout_from_the_release() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(S, 2 * S, t0);
        assert!(matches!(k.on_deadline(t0 + S), Due::Ping(_)));
        assert_eq!(k.deadline(), t0 + 3 * S);
        assert!(k.excuse(t0 + 5 * S), "held until 5 s");
        assert_eq!(k.deadline(), t0 + 7 * S);
        assert!(!k.excuse(t0 + 4 * S), "an earlier release moves nothing");
        assert_eq!(k.on_deadline(t0 + 7 * S), Due::TimedOut);
        let mut idle = Keepalive::new(S, S, t0);
        assert!(
            !idle.excuse(t0 + 9 * S),
            "no ping outstanding: nothing to excuse"
        );
    }

    #[test]
    fn held_reports_when_the_peer_was_free_to_answer() {
        let held = Held::new();
        let now = Instant::now();
        assert_eq!(held.peer_free_since(now), None);
        held.hold();
        assert_eq!(held.peer_free_since(now + S), Some(now + S));
        held.release();
        let since = held.peer_free_since(now + 10 * S).unwrap();
        assert!(since >= now && since < now + 10 * S);
    }

    #[test]
    fn stray_pong_is_ignored() {
        let t0 = Instant::now();
        let mut k = Keepalive::new(S, S, t0);
        assert_eq!(k.on_pong(b"whatever", t0), None);
        assert!(matches!(k.on_deadline(t0 + S), Due::Ping(_)));
        assert_eq!(k.on_pong(&999u64.to_be_bytes(), t0 + S), None);
        assert_eq!(k.on_deadline(t0 + 2 * S), Due::TimedOut);
    }
}
