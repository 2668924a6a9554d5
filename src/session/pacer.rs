//! Bandwidth pacing of one direction of a session (`bandwidth_bytes_per_sec`): a token bucket
//! that delays reads, so TCP flow control slows the sender and nothing is buffered.

use std::time::Duration;

use tokio::time::Instant;

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
