//! A route's JWT signing keys from its OpenID provider: a JSON Web Key Set at `jwks_url`, or
//! the `jwks_uri` of the issuer's discovery document. Fetched at start, refreshed on the
//! provider's `Cache-Control: max-age` (within configured bounds) and once, rate-limited, when
//! a token names an unknown `kid` (OpenID Connect Core §10.1.1); a failed fetch keeps the last
//! good keys. HTTP/1.1 over rustls on ring, one connection per fetch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use anyhow::{bail, Context};
use arc_swap::{ArcSwap, ArcSwapOption};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use jsonwebtoken::{Algorithm, DecodingKey};
use rustls::pki_types::ServerName;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::JwtConfig;
use crate::logsafe::Escaped;
use crate::metrics;

/// The largest key set or discovery document read, in bytes.
pub const MAX_DOCUMENT_BYTES: usize = 256 * 1024;
/// The most keys taken from one key set.
pub const MAX_KEYS: usize = 64;
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

/// A URL the gateway may fetch keys from: `https://`, or `http://` on a loopback host
/// (a provider on the same machine or in tests; anything else could be tampered with).
fn fetchable_url(text: &str) -> anyhow::Result<Uri> {
    let uri: Uri = text
        .parse()
        .with_context(|| format!("{text:?} is not a URL"))?;
    let host = uri
        .host()
        .with_context(|| format!("{text:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => {}
        Some("http") if is_loopback(host) => {}
        Some("http") => bail!("{text:?}: http:// only on a loopback host; use https://"),
        _ => bail!("{text:?}: expected an https:// URL"),
    }
    Ok(uri)
}

/// `localhost` or a loopback address (IPv6 in brackets or not).
pub(super) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The discovery document's `jwks_uri` and, when it has both, its authorization and token
/// endpoints, after checking its `issuer` is the configured one (OpenID Connect Discovery
/// §4.3).
fn read_discovery(body: &[u8], issuer: &str) -> anyhow::Result<(Uri, Option<Discovered>)> {
    #[derive(Deserialize)]
    struct Discovery {
        issuer: String,
        jwks_uri: String,
        #[serde(default)]
        authorization_endpoint: Option<String>,
        #[serde(default)]
        token_endpoint: Option<String>,
        #[serde(default)]
        end_session_endpoint: Option<String>,
    }
    let doc: Discovery = serde_json::from_slice(body).context("not a discovery document")?;
    if doc.issuer != issuer {
        bail!(
            "names issuer {:?}, not the configured {issuer:?}",
            Escaped(&doc.issuer).to_string()
        );
    }
    let jwks = fetchable_url(&doc.jwks_uri).context("jwks_uri")?;
    let endpoints = match (doc.authorization_endpoint, doc.token_endpoint) {
        (Some(authorization), Some(token)) => Some(Discovered {
            // The browser goes there, not the gateway: any absolute URL will do.
            authorization_endpoint: authorization.parse().context("authorization_endpoint")?,
            token_endpoint: fetchable_url(&token).context("token_endpoint")?,
            end_session_endpoint: doc.end_session_endpoint.and_then(|e| e.parse().ok()),
        }),
        _ => None,
    };
    Ok((jwks, endpoints))
}

/// One JSON Web Key as a key set carries it (RFC 7517 §4, RFC 7518 §6).
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    usage: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

/// The usable signing keys of a key set: RSA of at least 2048 bits (RS256) and EC P-256
/// (ES256). Symmetric (`oct`) keys are never taken from a key set, encryption keys and other
/// types are skipped; a set with no usable key is an error (the old keys stay).
fn parse_key_set(body: &[u8]) -> anyhow::Result<Keys> {
    #[derive(Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let set: Set = serde_json::from_slice(body).context("not a JSON Web Key Set")?;
    let mut keys = Keys::default();
    for value in set.keys {
        if keys.all.len() == MAX_KEYS {
            warn!(
                max = MAX_KEYS,
                "key set has more keys than wsgate takes; the rest are ignored"
            );
            break;
        }
        match serde_json::from_value::<Jwk>(value)
            .map_err(anyhow::Error::from)
            .and_then(usable_key)
        {
            Ok(Some(key)) => {
                let key = Arc::new(key);
                if let Some(kid) = &key.kid {
                    keys.by_kid
                        .entry(kid.clone())
                        .or_default()
                        .push(key.clone());
                }
                keys.all.push(key);
            }
            Ok(None) => {}
            Err(e) => debug!(error = %Escaped(&format!("{e:#}")), "key skipped"),
        }
    }
    if keys.all.is_empty() {
        bail!("no usable signing key (RSA of 2048 bits or more, or EC P-256)");
    }
    Ok(keys)
}

/// A JWK as a verification key, `None` when it is not one wsgate uses for signatures.
fn usable_key(jwk: Jwk) -> anyhow::Result<Option<PublicKey>> {
    if jwk.usage.as_deref().is_some_and(|u| u != "sig") {
        return Ok(None);
    }
    let (algorithm, key) = match jwk.kty.as_str() {
        "RSA" => {
            let (Some(n), Some(e)) = (&jwk.n, &jwk.e) else {
                bail!("RSA key without n or e");
            };
            let modulus = URL_SAFE_NO_PAD.decode(n).context("RSA n")?;
            let significant = modulus.iter().skip_while(|b| **b == 0).count();
            if significant < 256 {
                bail!("RSA key of fewer than 2048 bits");
            }
            let exponent = URL_SAFE_NO_PAD.decode(e).context("RSA e")?;
            (
                Algorithm::RS256,
                DecodingKey::from_rsa_raw_components(&modulus, &exponent),
            )
        }
        "EC" if jwk.crv.as_deref() == Some("P-256") => {
            let (Some(x), Some(y)) = (&jwk.x, &jwk.y) else {
                bail!("EC key without x or y");
            };
            let (xb, yb) = (URL_SAFE_NO_PAD.decode(x)?, URL_SAFE_NO_PAD.decode(y)?);
            if xb.len() != 32 || yb.len() != 32 {
                bail!("P-256 coordinates must be 32 bytes");
            }
            (
                Algorithm::ES256,
                DecodingKey::from_ec_components(x, y).context("EC key")?,
            )
        }
        // Symmetric keys would let anyone who can read the set sign tokens.
        _ => return Ok(None),
    };
    let named = match jwk.alg.as_deref() {
        None => true,
        Some("RS256") => algorithm == Algorithm::RS256,
        Some("ES256") => algorithm == Algorithm::ES256,
        Some(_) => false,
    };
    Ok(named.then_some(PublicKey {
        kid: jwk.kid,
        algorithm,
        key,
    }))
}

/// `max-age` of a `Cache-Control` value; `no-store` and `no-cache` count as 0.
fn max_age(value: &str) -> Option<Duration> {
    let mut age = None;
    for directive in value.split(',').map(str::trim) {
        let lower = directive.to_ascii_lowercase();
        if lower == "no-store" || lower == "no-cache" {
            return Some(Duration::ZERO);
        }
        if let Some(v) = lower.strip_prefix("max-age=") {
            age = v
                .trim_matches('"')
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs);
        }
    }
    age
}

trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// GET `url` on a connection of its own under `timeout`: the body (at most
/// [`MAX_DOCUMENT_BYTES`]) of a `200`, and its `max-age`. Redirects are not followed.
async fn get(
    url: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> anyhow::Result<(Bytes, Option<Duration>)> {
    let (status, age, body) = exchange(url, tls, timeout, None).await?;
    if status != StatusCode::OK {
        bail!("answered {status}, expected 200 OK");
    }
    Ok((body, age))
}

/// POST an `application/x-www-form-urlencoded` `form` to `url` with HTTP Basic
/// `credentials` (already encoded), as a token request: the status and the body.
pub async fn post_form(
    url: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    credentials: &str,
    form: String,
) -> anyhow::Result<(StatusCode, Bytes)> {
    let (status, _, body) = exchange(url, tls, timeout, Some((credentials, form))).await?;
    Ok((status, body))
}

async fn exchange(
    url: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    timeout: Duration,
    post: Option<(&str, String)>,
) -> anyhow::Result<(StatusCode, Option<Duration>, Bytes)> {
    tokio::time::timeout(timeout, exchange_inner(url, tls, post))
        .await
        .with_context(|| format!("no answer within {} s", timeout.as_secs()))?
}

async fn exchange_inner(
    url: &Uri,
    tls: &Arc<rustls::ClientConfig>,
    post: Option<(&str, String)>,
) -> anyhow::Result<(StatusCode, Option<Duration>, Bytes)> {
    let host = url.host().context("no host")?;
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    let https = url.scheme_str() == Some("https");
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let tcp = TcpStream::connect((bare, port))
        .await
        .with_context(|| format!("connecting to {host}:{port}"))?;
    let _ = tcp.set_nodelay(true);
    let io: Box<dyn Stream> = if https {
        let name = ServerName::try_from(bare.to_owned()).context("server name")?;
        let tls = tokio_rustls::TlsConnector::from(tls.clone())
            .connect(name, tcp)
            .await
            .context("TLS handshake")?;
        Box::new(tls)
    } else {
        Box::new(tcp)
    };
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .context("HTTP handshake")?;
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let authority = url.authority().map_or(host, |a| a.as_str());
    let mut request = Request::builder()
        .uri(path)
        .header(header::HOST, authority)
        .header(header::ACCEPT, "application/json")
        .header(
            header::USER_AGENT,
            concat!("wsgate/", env!("CARGO_PKG_VERSION")),
        );
    let body = match post {
        Some((credentials, form)) => {
            request = request
                .method(hyper::Method::POST)
                .header(header::AUTHORIZATION, format!("Basic {credentials}"))
                .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
            Full::new(Bytes::from(form))
        }
        None => Full::new(Bytes::new()),
    };
    let request = request.body(body).context("building the request")?;
    let exchange = async {
        let response = sender.send_request(request).await.context("request")?;
        let status = response.status();
        let age = response
            .headers()
            .get_all(header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(max_age);
        let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading the body: {e}"))?
            .to_bytes();
        Ok((status, age, body))
    };
    // The connection future drives the exchange; it may finish first (the server closed
    // after answering) while the body is still to be read.
    let mut conn = std::pin::pin!(conn);
    let mut exchange = std::pin::pin!(exchange);
    let mut conn_done = false;
    loop {
        tokio::select! {
            result = &mut exchange => return result,
            ended = &mut conn, if !conn_done => {
                conn_done = true;
                ended.context("connection")?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_https_or_loopback_http_is_fetched() {
        assert!(fetchable_url("https://id.example.com/jwks").is_ok());
        assert!(fetchable_url("http://127.0.0.1:8080/jwks").is_ok());
        assert!(fetchable_url("http://[::1]:8080/jwks").is_ok());
        assert!(fetchable_url("http://localhost/jwks").is_ok());
        for bad in [
            "http://id.example.com/jwks",
            "ftp://x/y",
            "/jwks",
            "id.example.com",
        ] {
            assert!(fetchable_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn max_age_is_read_and_no_cache_is_zero() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
    }

    #[test]
    fn symmetric_short_and_encryption_keys_are_not_taken() {
        let n_ok = URL_SAFE_NO_PAD.encode([0xc5u8; 256]);
        let n_short = URL_SAFE_NO_PAD.encode([0xc5u8; 128]);
        let body = format!(
            r#"{{"keys":[
              {{"kty":"oct","k":"c2VjcmV0","kid":"hmac"}},
              {{"kty":"RSA","n":"{n_short}","e":"AQAB","kid":"short"}},
              {{"kty":"RSA","n":"{n_ok}","e":"AQAB","kid":"enc","use":"enc"}},
              {{"kty":"RSA","n":"{n_ok}","e":"AQAB","kid":"ps","alg":"PS256"}},
              {{"kty":"RSA","n":"{n_ok}","e":"AQAB","kid":"good","alg":"RS256"}}
            ]}}"#
        );
        let keys = parse_key_set(body.as_bytes()).unwrap();
        assert_eq!(keys.all.len(), 1);
        assert_eq!(keys.all[0].kid.as_deref(), Some("good"));
        assert!(parse_key_set(br#"{"keys":[{"kty":"oct","k":"c2VjcmV0"}]}"#).is_err());
    }

    #[test]
    fn discovery_must_name_the_configured_issuer() {
        let doc = br#"{"issuer":"https://a.example","jwks_uri":"https://a.example/jwks"}"#;
        assert!(read_discovery(doc, "https://a.example").is_ok());
        assert!(read_discovery(doc, "https://b.example").is_err());
    }
}
