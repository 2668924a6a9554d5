//! A route's JWT signing keys from its OpenID provider: a JSON Web Key Set at `jwks_url`, or
//! the `jwks_uri` of the issuer's discovery document. Fetched at start, refreshed on the
//! provider's `Cache-Control: max-age` (within configured bounds) and once, rate-limited, when
//! a token names an unknown `kid` (OpenID Connect Core §10.1.1); a failed fetch keeps the last
//! good keys. HTTP/1.1 over rustls on ring, one connection per fetch (`provider_client`);
//! what the documents say is read in `jwks/documents.rs`.

mod documents;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::{ArcSwap, ArcSwapOption};
use hyper::Uri;
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::provider_client::get;
use crate::config::JwtConfig;
use crate::logsafe::Escaped;
use crate::metrics;
use documents::{fetchable_url, parse_key_set, read_discovery};

/// How often the refresher updates `wsgate_jwks_age_seconds` between fetches.
const AGE_TICK: Duration = Duration::from_secs(5);

/// Where a route's keys are published.
#[derive(Debug, Clone, PartialEq)]
enum Source {
    /// `jwks_url`.
    KeySet(Uri),
    /// The issuer, whose discovery document names the key set.
    Discovery { issuer: String, document: Uri },
}

/// What the issuer's discovery document says besides the key set (for browser sign-in).
#[derive(Debug)]
pub struct Discovered {
    pub authorization_endpoint: Uri,
    pub token_endpoint: Uri,
    /// RP-initiated logout, when the provider has it.
    pub end_session_endpoint: Option<Uri>,
}

/// A usable public key from a key set.
#[derive(Debug)]
pub struct PublicKey {
    pub kid: Option<String>,
    /// The one algorithm this key verifies: `RS256` for RSA, `ES256` for P-256 (a key's own
    /// `alg`, when it has one, must agree).
    pub algorithm: Algorithm,
    pub key: DecodingKey,
}

/// One fetched key set.
#[derive(Debug, Default)]
struct Keys {
    by_kid: HashMap<String, Vec<Arc<PublicKey>>>,
    all: Vec<Arc<PublicKey>>,
}

/// What a key set says about a token's `kid`.
pub enum Lookup {
    Found(Arc<PublicKey>),
    /// No key has this `kid`: a rotation may have happened, worth one refresh.
    UnknownKid,
    /// No key fits (the `kid` is known for another algorithm, or the token has no `kid` and
    /// the set has several keys for its algorithm): a refresh would not help.
    NoFit,
}

/// When fetches happened and are due.
#[derive(Debug)]
struct Schedule {
    /// The last fetch attempt, successful or not.
    attempted: Option<Instant>,
    /// The last successful fetch.
    fetched: Option<Instant>,
    /// The next scheduled fetch.
    due: Instant,
    /// A token with an unknown `kid` arrived during the cooldown: fetch when it ends.
    miss_pending: bool,
}

/// A route's key set, shared by the snapshots that keep the route's settings, and its
/// refresher task.
pub struct KeySet {
    route: Arc<str>,
    config: JwtConfig,
    source: Source,
    tls: Arc<rustls::ClientConfig>,
    cooldown: Duration,
    min_refresh: Duration,
    max_refresh: Duration,
    timeout: Duration,
    keys: ArcSwap<Keys>,
    /// The last discovery document's endpoints (discovery sources only).
    discovered: ArcSwapOption<Discovered>,
    schedule: Mutex<Schedule>,
    /// One fetch at a time; requests with an unknown `kid` wait for the one under way.
    fetching: tokio::sync::Mutex<()>,
    /// Fetch attempts so far: a request that waited for `fetching` can tell one happened.
    attempts: AtomicU64,
    /// Wakes the refresher when a fetch is wanted early.
    wake: tokio::sync::Notify,
    /// A refresher task runs for this set.
    refresher: AtomicBool,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeySet")
            .field("route", &self.route)
            .field("source", &self.source)
            .field("keys", &self.keys.load().all.len())
            .finish_non_exhaustive()
    }
}

impl KeySet {
    /// Check the URLs and read the CA bundle of `config` (which [`JwtConfig::uses_key_set`]);
    /// nothing is fetched yet. Errors name `at`.
    pub fn new(at: &str, route: &str, config: &JwtConfig) -> anyhow::Result<Self> {
        let source = match (&config.jwks_url, &config.issuer) {
            (Some(url), _) => {
                Source::KeySet(fetchable_url(url).with_context(|| format!("{at}.jwks_url"))?)
            }
            (None, Some(issuer)) => {
                let document = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                Source::Discovery {
                    issuer: issuer.clone(),
                    document: fetchable_url(&document).with_context(|| format!("{at}.issuer"))?,
                }
            }
            (None, None) => bail!("{at}: set jwks_url or issuer (or a key file)"),
        };
        if config.audience.is_none() {
            bail!(
                "{at}.audience: required with a key set: a provider signs tokens for every \
                 application it serves, and only `aud` says which one a token is for"
            );
        }
        for (key, value) in [
            ("refresh_cooldown_secs", config.refresh_cooldown_secs),
            ("refresh_min_secs", config.refresh_min_secs),
            ("refresh_max_secs", config.refresh_max_secs),
            ("fetch_timeout_secs", config.fetch_timeout_secs),
        ] {
            if value == 0 || value > 7 * 86400 {
                bail!("{at}.{key}: must be between 1 and 604800 seconds, got {value}");
            }
        }
        if config.refresh_min_secs > config.refresh_max_secs {
            bail!("{at}.refresh_min_secs: must not exceed refresh_max_secs");
        }
        let tls = crate::tls::client_config(config.ca_file.as_deref(), false)
            .with_context(|| format!("{at}.ca_file"))?;
        let now = Instant::now();
        Ok(Self {
            route: route.into(),
            config: config.clone(),
            source,
            tls,
            cooldown: Duration::from_secs(config.refresh_cooldown_secs),
            min_refresh: Duration::from_secs(config.refresh_min_secs),
            max_refresh: Duration::from_secs(config.refresh_max_secs),
            timeout: Duration::from_secs(config.fetch_timeout_secs),
            keys: ArcSwap::default(),
            discovered: ArcSwapOption::empty(),
            schedule: Mutex::new(Schedule {
                attempted: None,
                fetched: None,
                due: now,
                miss_pending: false,
            }),
            fetching: tokio::sync::Mutex::new(()),
            attempts: AtomicU64::new(0),
            wake: tokio::sync::Notify::new(),
            refresher: AtomicBool::new(false),
        })
    }

    /// Whether a reload can keep this set (and its keys) for `route` with `config`.
    pub fn same_config(&self, route: &str, config: &JwtConfig) -> bool {
        *self.route == *route && self.config == *config
    }

    pub fn route(&self) -> &str {
        &self.route
    }

    /// The endpoints of the last discovery document fetched, if any.
    pub fn discovered(&self) -> Option<Arc<Discovered>> {
        self.discovered.load_full()
    }

    /// The TLS settings and per-request timeout for talking to this provider.
    pub fn client(&self) -> (&Arc<rustls::ClientConfig>, Duration) {
        (&self.tls, self.timeout)
    }

    /// Whether a fetch has ever succeeded.
    pub fn has_keys(&self) -> bool {
        self.lock_schedule().fetched.is_some()
    }

    /// The key for a token's `alg` and `kid`.
    pub fn lookup(&self, algorithm: Algorithm, kid: Option<&str>) -> Lookup {
        let keys = self.keys.load();
        let fits = |k: &&Arc<PublicKey>| k.algorithm == algorithm;
        match kid {
            Some(kid) => match keys.by_kid.get(kid) {
                None => Lookup::UnknownKid,
                Some(list) => list
                    .iter()
                    .find(fits)
                    .map_or(Lookup::NoFit, |k| Lookup::Found(k.clone())),
            },
            // A token may leave out `kid` when the set has one key for its algorithm.
            None => {
                let mut fitting = keys.all.iter().filter(fits);
                match (fitting.next(), fitting.next()) {
                    (Some(k), None) => Lookup::Found(k.clone()),
                    _ => Lookup::NoFit,
                }
            }
        }
    }

    /// The key for `kid`, after at most one fetch when the set does not have it. The fetch
    /// happens only when the cooldown since the last one has passed; otherwise the refresher
    /// fetches when it ends, and this token is refused (`None`).
    pub async fn key_for(&self, algorithm: Algorithm, kid: Option<&str>) -> Option<Arc<PublicKey>> {
        match self.lookup(algorithm, kid) {
            Lookup::Found(k) => return Some(k),
            Lookup::NoFit => return None,
            Lookup::UnknownKid => {}
        }
        let seen = self.attempts.load(Ordering::Acquire);
        {
            let _one = self.fetching.lock().await;
            // Someone fetched while this request waited: look again, do not fetch again.
            if self.attempts.load(Ordering::Acquire) == seen {
                let cooled = self
                    .lock_schedule()
                    .attempted
                    .is_none_or(|t| t.elapsed() >= self.cooldown);
                if cooled {
                    let _ = self.fetch_locked("unknown kid").await;
                } else {
                    self.lock_schedule().miss_pending = true;
                    self.wake.notify_one();
                    debug!(route = %self.route, "unknown kid during the refresh cooldown");
                }
            }
        }
        match self.lookup(algorithm, kid) {
            Lookup::Found(k) => Some(k),
            _ => None,
        }
    }

    /// Fetch now (at start, after a reload, `wsgate check --fetch-keys`), whatever the cooldown.
    pub async fn fetch(&self, why: &str) -> anyhow::Result<usize> {
        let _one = self.fetching.lock().await;
        self.fetch_locked(why).await
    }

    /// One fetch under `fetching`: swap in the keys, or keep the old ones and say so.
    async fn fetch_locked(&self, why: &str) -> anyhow::Result<usize> {
        self.attempts.fetch_add(1, Ordering::AcqRel);
        let started = Instant::now();
        self.lock_schedule().attempted = Some(started);
        let result = self.download().await;
        let mut schedule = self.lock_schedule();
        schedule.miss_pending = false;
        match result {
            Ok((keys, max_age)) => {
                let n = keys.all.len();
                let interval = max_age
                    .unwrap_or(self.max_refresh)
                    .clamp(self.min_refresh, self.max_refresh);
                schedule.fetched = Some(started);
                schedule.due = started + interval;
                drop(schedule);
                let kids: Vec<&str> = keys.all.iter().filter_map(|k| k.kid.as_deref()).collect();
                info!(
                    event = "jwks",
                    route = %self.route,
                    reason = why,
                    keys = n,
                    kids = %Escaped(&kids.join(",")),
                    next_secs = interval.as_secs(),
                    "key set fetched"
                );
                self.keys.store(Arc::new(keys));
                metrics::jwks_refreshed(&self.route, "ok");
                self.update_gauges();
                Ok(n)
            }
            Err(e) => {
                // Try again after the cooldown; until then the last good keys stay.
                schedule.due = started + self.cooldown;
                let age = schedule.fetched.map(|t| t.elapsed().as_secs());
                drop(schedule);
                let kept = self.keys.load().all.len();
                warn!(
                    event = "jwks",
                    route = %self.route,
                    reason = why,
                    error = %Escaped(&format!("{e:#}")),
                    kept_keys = kept,
                    kept_age_secs = age,
                    retry_secs = self.cooldown.as_secs(),
                    "key set fetch failed: keeping the last good keys"
                );
                metrics::jwks_refreshed(&self.route, "error");
                self.update_gauges();
                Err(e)
            }
        }
    }

    fn update_gauges(&self) {
        let (age, count) = metrics::jwks_gauges(&self.route);
        if let Some(fetched) = self.lock_schedule().fetched {
            age.set(fetched.elapsed().as_secs_f64());
        }
        count.set(self.keys.load().all.len() as f64);
    }

    fn lock_schedule(&self) -> std::sync::MutexGuard<'_, Schedule> {
        self.schedule
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Claim the refresher role: `true` for the first caller, until that task ends.
    pub fn claim_refresher(&self) -> bool {
        !self.refresher.swap(true, Ordering::AcqRel)
    }

    /// The refresher: fetches when due (the provider's `max-age`, within bounds; after a
    /// failure, the cooldown) and when a token with an unknown `kid` waited for the cooldown;
    /// keeps `wsgate_jwks_age_seconds` current. Ends on `stop` or when no snapshot holds the
    /// set any more. Call after [`KeySet::claim_refresher`] returned `true`.
    pub async fn run_refresher(set: Weak<Self>, stop: CancellationToken) {
        let Some(first) = set.upgrade() else { return };
        metrics::jwks_registered(&first.route);
        drop(first);
        loop {
            let Some(strong) = set.upgrade() else { return };
            strong.update_gauges();
            let wait = {
                let s = strong.lock_schedule();
                let mut next = s.due;
                if s.miss_pending {
                    next = next.min(s.attempted.map_or(next, |t| t + strong.cooldown));
                }
                next.saturating_duration_since(Instant::now()).min(AGE_TICK)
            };
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = strong.wake.notified() => {}
                () = stop.cancelled() => break,
            }
            let due = {
                let s = strong.lock_schedule();
                let now = Instant::now();
                let cooled = s.attempted.is_none_or(|t| now >= t + strong.cooldown);
                now >= s.due || (s.miss_pending && cooled)
            };
            if due {
                tokio::select! {
                    _ = strong.fetch("scheduled") => {}
                    () = stop.cancelled() => break,
                }
            }
        }
        if let Some(s) = set.upgrade() {
            s.refresher.store(false, Ordering::Release);
        }
    }

    /// GET the key set (after the discovery document, for an issuer) and parse it.
    async fn download(&self) -> anyhow::Result<(Keys, Option<Duration>)> {
        let jwks = match &self.source {
            Source::KeySet(url) => url.clone(),
            Source::Discovery { issuer, document } => {
                let (body, _) = get(document, &self.tls, self.timeout)
                    .await
                    .with_context(|| format!("discovery document {document}"))?;
                let (jwks, endpoints) = read_discovery(&body, issuer)
                    .with_context(|| format!("discovery document {document}"))?;
                self.discovered.store(endpoints.map(Arc::new));
                jwks
            }
        };
        let (body, max_age) = get(&jwks, &self.tls, self.timeout)
            .await
            .with_context(|| format!("key set {jwks}"))?;
        let keys = parse_key_set(&body).with_context(|| format!("key set {jwks}"))?;
        Ok((keys, max_age))
    }
}
