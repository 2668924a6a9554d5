//! The ping schedule and missed-pong state of one session: pure, driven by the bridge's clock.

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
    outstanding: Option<(u64, Instant)>,
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
            Some((_, sent)) => sent + self.pong_timeout,
            None => self.next_ping,
        }
    }

    /// Call when `deadline()` has passed.
    pub fn on_deadline(&mut self, now: Instant) -> Due {
        if self.outstanding.is_some() {
            return Due::TimedOut;
        }
        self.seq += 1;
        self.outstanding = Some((self.seq, now));
        self.next_ping = now + self.interval;
        Due::Ping(self.seq.to_be_bytes())
    }

    /// A pong arrived; returns the round-trip time if it answers the outstanding ping.
    pub fn on_pong(&mut self, payload: &[u8], now: Instant) -> Option<Duration> {
        let (seq, sent) = self.outstanding?;
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

    /// How long a write to the client may stall before the client counts as gone:
    /// a client that accepts no byte for a whole ping cycle could not have answered a ping either.
    pub fn stall_limit(&self) -> Duration {
        self.interval + self.pong_timeout
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
