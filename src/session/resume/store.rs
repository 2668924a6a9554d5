//! The gateway's resumable sessions by id, so a new client connection finds the session it
//! resumes, and the limits that bound them (sessions, per client address, buffered bytes).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::mpsc;

use super::core::Attach;

/// Gateway-wide bounds on resumable sessions (`[resume]` in the config file).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResumeLimits {
    /// Resumable sessions at once, attached or detached.
    pub max_sessions: usize,
    /// Resumable sessions at once from one client address.
    pub max_sessions_per_address: usize,
    /// Replay-buffer bytes all resumable sessions may hold; each reserves its route's window.
    pub max_buffered_bytes: usize,
}

impl Default for ResumeLimits {
    fn default() -> Self {
        Self {
            max_sessions: 1000,
            max_sessions_per_address: 32,
            max_buffered_bytes: 1 << 30,
        }
    }
}

/// Why a new resumable session was refused (the `result` label of `wsgate_resumes_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    IdInUse,
    SessionLimit,
    AddressLimit,
    BufferLimit,
}

impl Refusal {
    pub fn label(self) -> &'static str {
        match self {
            Self::IdInUse => "id_in_use",
            Self::SessionLimit => "limit_sessions",
            Self::AddressLimit => "limit_address",
            Self::BufferLimit => "limit_buffer",
        }
    }
}

type Key = (Arc<str>, String);

#[derive(Default)]
struct Books {
    sessions: HashMap<Key, mpsc::Sender<Attach>>,
    per_address: HashMap<IpAddr, usize>,
    buffered: usize,
}

/// The resumable sessions of one gateway (all routes, all listeners).
#[derive(Default)]
pub struct ResumeStore {
    books: Mutex<Books>,
}

/// A resumable session's place in the store; dropping it frees the id, the address count
/// and the reserved window.
pub struct Listed {
    store: Arc<ResumeStore>,
    key: Key,
    address: IpAddr,
    window: usize,
}

impl Drop for Listed {
    fn drop(&mut self) {
        let mut books = self.store.lock();
        books.sessions.remove(&self.key);
        if let Some(n) = books.per_address.get_mut(&self.address) {
            *n -= 1;
            if *n == 0 {
                books.per_address.remove(&self.address);
            }
        }
        books.buffered -= self.window;
    }
}

impl ResumeStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// List a new session under `(route, id)`, reserving `window` bytes, or say which limit
    /// refuses it.
    pub fn list(
        self: &Arc<Self>,
        route: &Arc<str>,
        id: &str,
        address: IpAddr,
        window: usize,
        limits: &ResumeLimits,
        attach: mpsc::Sender<Attach>,
    ) -> Result<Listed, Refusal> {
        let mut books = self.lock();
        let key = (route.clone(), id.to_owned());
        if books.sessions.contains_key(&key) {
            return Err(Refusal::IdInUse);
        }
        if books.sessions.len() >= limits.max_sessions {
            return Err(Refusal::SessionLimit);
        }
        let from_address = books.per_address.get(&address).copied().unwrap_or(0);
        if from_address >= limits.max_sessions_per_address {
            return Err(Refusal::AddressLimit);
        }
        if books.buffered + window > limits.max_buffered_bytes {
            return Err(Refusal::BufferLimit);
        }
        books.sessions.insert(key.clone(), attach);
        *books.per_address.entry(address).or_default() += 1;
        books.buffered += window;
        Ok(Listed {
            store: self.clone(),
            key,
            address,
            window,
        })
    }

    /// The way to hand a new client connection to the session `(route, id)`, if it lives here.
    pub fn find(&self, route: &Arc<str>, id: &str) -> Option<mpsc::Sender<Attach>> {
        self.lock()
            .sessions
            .get(&(route.clone(), id.to_owned()))
            .cloned()
    }

    /// Resumable sessions listed now.
    pub fn len(&self) -> usize {
        self.lock().sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl std::fmt::Debug for ResumeStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResumeStore")
            .field("sessions", &self.len())
            .finish()
    }
}
