//! Live watch: a session's backend→client bytes fanned out to the operators watching it, each
//! through a bounded queue of its own; a watcher that falls behind is dropped, never the
//! session.
//!
//! Every session has a [`WatchPoint`] (in its registry entry). The pump that can be watched
//! opens it and calls [`WatchPoint::publish`] with every chunk it sends the client: one
//! relaxed atomic load when nobody watches and no backlog is kept. A watcher
//! ([`WatchPoint::subscribe`]) gets the backlog (the route's `watch_backlog_bytes`, 64 KiB by
//! default on terminal routes, so a terminal renders) and every chunk after it, in order,
//! with no gap and no overlap (both are taken under the same lock). The admin listener's
//! watch socket (`ops::watch`) sends them on.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use bytes::{Bytes, BytesMut};
use metrics::counter;
use tokio_util::sync::CancellationToken;

use crate::metrics::WATCHERS_DROPPED_TOTAL;

/// How many bytes a watcher may have queued and unsent before it is dropped.
pub const WATCHER_QUEUE_BYTES: usize = 1 << 20;
/// How many chunks a watcher may have queued before it is dropped (a session sending many
/// small messages).
pub const WATCHER_QUEUE_CHUNKS: usize = 1024;
/// How many watchers one session may have at once.
pub const MAX_WATCHERS_PER_SESSION: usize = 16;

/// Why a session cannot be watched now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NotWatchable {
    /// Its pump does not tap (a `udp://` session, a WebSocket backend, a resumable session).
    #[error("this session's kind cannot be watched")]
    Kind,
    #[error("the session has ended")]
    Ended,
    #[error("the session has as many watchers as it may have")]
    Full,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    /// No pump opened it (yet).
    #[default]
    Untapped,
    Open,
    Ended,
}

/// One session's point where watchers join its output.
#[derive(Debug, Default)]
pub struct WatchPoint {
    /// A watcher, or the backlog, wants the bytes: the one check the data path makes.
    wanted: AtomicBool,
    hub: Mutex<Hub>,
}

#[derive(Debug, Default)]
struct Hub {
    state: State,
    /// The session's route, for `wsgate_watchers_dropped_total`.
    route: Option<Arc<str>>,
    backlog_limit: usize,
    backlog: VecDeque<Bytes>,
    backlog_bytes: usize,
    watchers: Vec<Slot>,
    next_id: u64,
}

/// The session's side of one watcher.
#[derive(Debug)]
struct Slot {
    id: u64,
    tx: flume::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    /// Cancelled when the session lets go of the watcher (it fell behind, or the session
    /// ended), so a write stuck on a watcher that stopped reading is abandoned.
    cut: CancellationToken,
    /// Set before `cut` when the watcher fell behind.
    too_slow: Arc<AtomicBool>,
}

/// The watching side: the backlog, then each chunk as the session sends it.
#[derive(Debug)]
pub struct Watcher {
    pub id: u64,
    /// What the session sent before this watcher joined (empty unless the route keeps a
    /// backlog); starts at a character boundary.
    pub backlog: Bytes,
    rx: flume::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    cut: CancellationToken,
    too_slow: Arc<AtomicBool>,
}

/// What a watcher gets next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    Data(Bytes),
    /// The session ended (or stopped being watchable).
    Ended,
    /// This watcher fell behind and was dropped (counted in `wsgate_watchers_dropped_total`).
    TooSlow,
}

impl Watcher {
    /// The next chunk, or why there is none (cancel-safe).
    pub async fn next(&self) -> Next {
        match self.rx.recv_async().await {
            Ok(b) => {
                self.queued.fetch_sub(b.len(), Ordering::Relaxed);
                Next::Data(b)
            }
            Err(_) if self.too_slow.load(Ordering::Relaxed) => Next::TooSlow,
            Err(_) => Next::Ended,
        }
    }

    /// Resolves when the session lets go of this watcher: it fell behind, or the session
    /// ended (cancel-safe). A write to the watcher races this, so a watcher that stopped
    /// reading holds nothing up.
    pub async fn cut(&self) {
        self.cut.cancelled().await
    }

    /// Whether the watcher was dropped for falling behind.
    pub fn too_slow(&self) -> bool {
        self.too_slow.load(Ordering::Relaxed)
    }
}

fn lock(m: &Mutex<Hub>) -> MutexGuard<'_, Hub> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Hub {
    fn wanted(&self) -> bool {
        self.state == State::Open && (self.backlog_limit > 0 || !self.watchers.is_empty())
    }
}

impl WatchPoint {
    /// The session's pump taps here from now on; `backlog_bytes` of recent output are kept
    /// for late watchers (0: none).
    pub fn open(&self, route: &Arc<str>, backlog_bytes: usize) {
        let mut hub = lock(&self.hub);
        if hub.state != State::Untapped {
            return;
        }
        hub.state = State::Open;
        hub.route = Some(route.clone());
        hub.backlog_limit = backlog_bytes;
        self.wanted.store(hub.wanted(), Ordering::Relaxed);
    }

    /// The session ended: every watcher's stream ends ([`Next::Ended`]).
    pub fn end(&self) {
        let mut hub = lock(&self.hub);
        hub.state = State::Ended;
        for w in hub.watchers.drain(..) {
            w.cut.cancel();
        }
        hub.backlog.clear();
        hub.backlog_bytes = 0;
        self.wanted.store(false, Ordering::Relaxed);
    }

    /// Whether a pump taps this session (`false` before it opened and after it ended).
    pub fn is_open(&self) -> bool {
        lock(&self.hub).state == State::Open
    }

    /// Whether this session keeps a backlog for late watchers (a terminal route).
    pub fn keeps_backlog(&self) -> bool {
        lock(&self.hub).backlog_limit > 0
    }

    /// How many watch this session now.
    pub fn watchers(&self) -> usize {
        lock(&self.hub).watchers.len()
    }

    /// Start watching: the backlog and everything sent from now on.
    pub fn subscribe(&self) -> Result<Watcher, NotWatchable> {
        let mut hub = lock(&self.hub);
        match hub.state {
            State::Untapped => return Err(NotWatchable::Kind),
            State::Ended => return Err(NotWatchable::Ended),
            State::Open => {}
        }
        if hub.watchers.len() >= MAX_WATCHERS_PER_SESSION {
            return Err(NotWatchable::Full);
        }
        let (tx, rx) = flume::bounded(WATCHER_QUEUE_CHUNKS);
        let queued = Arc::new(AtomicUsize::new(0));
        let cut = CancellationToken::new();
        let too_slow = Arc::new(AtomicBool::new(false));
        let id = hub.next_id;
        hub.next_id += 1;
        let mut backlog = BytesMut::with_capacity(hub.backlog_bytes);
        for chunk in &hub.backlog {
            backlog.extend_from_slice(chunk);
        }
        hub.watchers.push(Slot {
            id,
            tx,
            queued: queued.clone(),
            cut: cut.clone(),
            too_slow: too_slow.clone(),
        });
        self.wanted.store(true, Ordering::Relaxed);
        Ok(Watcher {
            id,
            backlog: char_boundary(backlog.freeze()),
            rx,
            queued,
            cut,
            too_slow,
        })
    }

    /// The watcher `id` left.
    pub fn leave(&self, id: u64) {
        let mut hub = lock(&self.hub);
        hub.watchers.retain(|w| w.id != id);
        self.wanted.store(hub.wanted(), Ordering::Relaxed);
    }

    /// The session sent `data` to its client. Nobody watching and no backlog: one atomic load.
    #[inline]
    pub fn publish(&self, data: &[u8]) {
        if self.wanted.load(Ordering::Relaxed) && !data.is_empty() {
            self.publish_to_watchers(data);
        }
    }

    fn publish_to_watchers(&self, data: &[u8]) {
        let chunk = Bytes::copy_from_slice(data);
        let len = chunk.len();
        let mut hub = lock(&self.hub);
        if hub.state != State::Open {
            return;
        }
        if hub.backlog_limit > 0 {
            hub.backlog_bytes += len;
            hub.backlog.push_back(chunk.clone());
            while hub.backlog_bytes > hub.backlog_limit {
                let Some(front) = hub.backlog.pop_front() else {
                    break;
                };
                let excess = hub.backlog_bytes - hub.backlog_limit;
                if front.len() > excess {
                    // Keep the newest part of the oldest chunk.
                    hub.backlog.push_front(front.slice(excess..));
                    hub.backlog_bytes -= excess;
                } else {
                    hub.backlog_bytes -= front.len();
                }
            }
        }
        let Hub {
            watchers, route, ..
        } = &mut *hub;
        watchers.retain(|w| {
            // Counted before the send: the watcher subtracts as it takes the chunk.
            let queued = w.queued.fetch_add(len, Ordering::Relaxed) + len;
            let sent = queued <= WATCHER_QUEUE_BYTES && w.tx.try_send(chunk.clone()).is_ok();
            if !sent {
                w.queued.fetch_sub(len, Ordering::Relaxed);
                if !w.tx.is_disconnected() {
                    // Alive but behind: dropped, and told so.
                    w.too_slow.store(true, Ordering::Relaxed);
                    w.cut.cancel();
                    let route = route.as_deref().unwrap_or_default().to_owned();
                    counter!(WATCHERS_DROPPED_TOTAL, "route" => route).increment(1);
                }
            }
            sent
        });
        self.wanted.store(hub.wanted(), Ordering::Relaxed);
    }
}

/// A backlog cut at a byte count may start inside a UTF-8 character: skip its continuation
/// bytes (at most 3), so a terminal does not print a replacement character first.
fn char_boundary(b: Bytes) -> Bytes {
    let skip = b
        .iter()
        .take(3)
        .take_while(|&&c| c & 0b1100_0000 == 0b1000_0000)
        .count();
    b.slice(skip..)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn watchers_get_what_follows_and_the_backlog_before_it() {
        let w = WatchPoint::default();
        assert_eq!(w.subscribe().err(), Some(NotWatchable::Kind));
        w.open(&"t".into(), 8);
        w.publish(b"0123");
        w.publish("456€".as_bytes()); // 6 bytes: the backlog keeps the last 8
        let a = w.subscribe().unwrap();
        // 10 bytes sent, the last 8 kept: the cut lands on '2', a character boundary.
        assert_eq!(&a.backlog[..], "23456€".as_bytes());
        w.publish(b"next");
        let b = w.subscribe().unwrap();
        assert_eq!(a.next().await, Next::Data(Bytes::from_static(b"next")));
        w.end();
        assert_eq!(a.next().await, Next::Ended);
        assert_eq!(b.next().await, Next::Ended);
        assert_eq!(w.subscribe().err(), Some(NotWatchable::Ended));
    }

    #[test]
    fn a_backlog_never_starts_inside_a_character() {
        let w = WatchPoint::default();
        w.open(&"t".into(), 5);
        w.publish("ab€€".as_bytes()); // the last 5 bytes: 2 of the first €, then €
        let a = w.subscribe().unwrap();
        assert_eq!(&a.backlog[..], "€".as_bytes());
    }

    #[tokio::test]
    async fn a_watcher_that_does_not_read_is_dropped_and_the_others_keep_up() {
        let w = WatchPoint::default();
        w.open(&"t".into(), 0);
        assert!(!w.wanted.load(Ordering::Relaxed), "nobody watches: no work");
        let slow = w.subscribe().unwrap();
        let fast = w.subscribe().unwrap();
        let chunk = vec![7u8; 64 * 1024];
        for _ in 0..(WATCHER_QUEUE_BYTES / chunk.len() + 2) {
            w.publish(&chunk);
            assert!(matches!(fast.next().await, Next::Data(_)));
        }
        assert!(slow.too_slow() && slow.cut.is_cancelled());
        let mut got = 0;
        loop {
            match slow.next().await {
                Next::Data(b) => got += b.len(),
                Next::TooSlow => break,
                Next::Ended => panic!("a slow watcher is told why"),
            }
        }
        assert!(got <= WATCHER_QUEUE_BYTES);
        assert_eq!(w.watchers(), 1);
        w.leave(fast.id);
        assert!(!w.wanted.load(Ordering::Relaxed));
    }

    #[test]
    fn a_session_takes_a_bounded_number_of_watchers() {
        let w = WatchPoint::default();
        w.open(&"t".into(), 0);
        let held: Vec<_> = (0..MAX_WATCHERS_PER_SESSION)
            .map(|_| w.subscribe().unwrap())
            .collect();
        assert_eq!(w.subscribe().err(), Some(NotWatchable::Full));
        w.leave(held[0].id);
        assert!(w.subscribe().is_ok());
    }
}
