//! Where a session may go. A target only ever comes from the config, a websockify token
//! file, or a verified JWT claim (never from the client's request alone), and every dial
//! passes the `[egress]` allowlist after DNS: the gateway connects to exactly the addresses
//! it checked, so a name that later resolves elsewhere (DNS rebinding) cannot redirect it.
//!
//! Compiled from `[route.target]` and `[egress]` (`config::target`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context};
use hyper::Request;
use ipnet::IpNet;
use tokio::time::Instant;
use tracing::{error, info};

use super::access::{Access, Granted};
use crate::config::{BackendAddr, EgressConfig, TargetConfig};
use crate::error::RejectError;
use crate::http_util::query_value;

/// How often, at most, a token file's mtime is checked (on lookups; no background task).
pub const TOKEN_FILE_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// Where a route's sessions go.
#[derive(Debug, Clone)]
pub enum Target {
    /// The route's `backend`.
    Fixed(BackendAddr),
    /// A TCP (or `udp://`) target looked up in a token file.
    TokenFile(Arc<TokenFile>),
    /// A TCP (or `udp://`) target from this claim of the verified JWT.
    Claim(String),
    /// The route's `backends` pool picks (`backend::pool`), not the policy.
    Pool,
}

impl Target {
    /// The target comes from a client's token (a token file), so a wrong one is a failed
    /// credential.
    pub fn takes_token(&self) -> bool {
        matches!(self, Self::TokenFile(_))
    }

    /// Whether this route's sessions may go to a `udp://` backend: a fixed one, or a target
    /// a token file or claim names.
    pub fn may_be_udp(&self) -> bool {
        match self {
            Self::Fixed(addr) => addr.is_datagrams(),
            Self::TokenFile(_) | Self::Claim(_) => true,
            Self::Pool => false,
        }
    }
    /// Resolve a route's `backend` or `[route.target]` (exactly one); errors name `at`.
    pub fn from_config(
        at: &str,
        backend: Option<&str>,
        target: Option<&TargetConfig>,
        pooled: bool,
        access: &Access,
    ) -> anyhow::Result<Self> {
        match (backend, target) {
            (None, None) if pooled => Ok(Self::Pool),
            (Some(url), None) => Ok(Self::Fixed(
                BackendAddr::parse(url).with_context(|| format!("{at}.backend"))?,
            )),
            (None, Some(t)) => match (&t.token_file, &t.jwt_claim) {
                (Some(file), None) => {
                    if t.token_param.is_empty() || t.token_param.contains(['&', '=', '#', ' ']) {
                        bail!(
                            "{at}.target.token_param: {:?} is not a parameter name",
                            t.token_param
                        );
                    }
                    let tokens = TokenFile::load(file, &t.token_param)
                        .with_context(|| format!("{at}.target.token_file"))?;
                    Ok(Self::TokenFile(Arc::new(tokens)))
                }
                (None, Some(claim)) => {
                    if !access.verifies_jwt() {
                        bail!("{at}.target.jwt_claim: needs [route.auth.jwt] to verify the token");
                    }
                    if claim.is_empty() {
                        bail!("{at}.target.jwt_claim: must be a claim name");
                    }
                    Ok(Self::Claim(claim.clone()))
                }
                _ => bail!("{at}.target: set exactly one of token_file and jwt_claim"),
            },
            (Some(_), Some(_)) => bail!("{at}: backend and [route.target] exclude each other"),
            (None, None) => bail!("{at}.backend: required (or a [route.target] table)"),
        }
    }

    /// This request's backend: 404 for a missing or unknown token-file token (like an
    /// unknown path), 403 for a token whose claims name no usable target.
    pub async fn resolve<B>(
        &self,
        req: &Request<B>,
        granted: &Granted,
    ) -> Result<BackendAddr, RejectError> {
        match self {
            Self::Fixed(addr) => Ok(addr.clone()),
            Self::TokenFile(file) => {
                let token =
                    query_value(req.uri().query(), &file.param).ok_or(RejectError::UnknownToken)?;
                file.lookup(&token).await.ok_or(RejectError::UnknownToken)
            }
            Self::Claim(name) => {
                let value = granted
                    .claims
                    .as_ref()
                    .and_then(|c| c.get(name))
                    .and_then(|v| v.as_str())
                    .ok_or(RejectError::Forbidden("token names no target"))?;
                parse_target(value)
                    .map_err(|_| RejectError::Forbidden("token names no valid target"))
            }
            // The edge dials the pool itself; reaching here is a wiring mistake, not a panic.
            Self::Pool => Err(RejectError::BackendUnreachable(std::io::Error::other(
                "a pool route has no single target",
            ))),
        }
    }
}

/// A fixed target compares equal to its address.
impl PartialEq<BackendAddr> for Target {
    fn eq(&self, other: &BackendAddr) -> bool {
        matches!(self, Self::Fixed(addr) if addr == other)
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Fixed(addr) => addr.fmt(f),
            Self::TokenFile(file) => write!(f, "token-file:{}", file.path.display()),
            Self::Claim(name) => write!(f, "jwt-claim:{name}"),
            Self::Pool => f.write_str("pool"),
        }
    }
}

/// `host:port` or `[v6]:port` from a token file or a claim: a TCP target; or
/// `udp://host:port`, a UDP one (the only kind a target may name).
fn parse_target(text: &str) -> anyhow::Result<BackendAddr> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix("udp://") {
        if rest.contains("://") {
            bail!("{text:?}: expected host:port or udp://host:port");
        }
        return BackendAddr::parse(text);
    }
    if text.contains("://") {
        bail!("{text:?}: expected host:port or udp://host:port");
    }
    BackendAddr::parse(&format!("tcp://{text}"))
}

// ---------------------------------------------------------------------------------------------
// Token files.

/// `token -> (host, port)`.
type TokenTable = HashMap<String, BackendAddr>;

/// A websockify token file, re-read when it changes.
pub struct TokenFile {
    path: PathBuf,
    param: String,
    table: RwLock<Arc<TokenTable>>,
    /// Held while checking the file; a lookup that finds it held uses the current table.
    reload: tokio::sync::Mutex<ReloadState>,
}

struct ReloadState {
    /// What the file looked like when last read; `None` after a failed stat.
    stamp: Option<Stamp>,
    checked: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
}

/// Never prints the tokens.
impl std::fmt::Debug for TokenFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len();
        f.debug_struct("TokenFile")
            .field("path", &self.path)
            .field("param", &self.param)
            .field("tokens", &len)
            .finish()
    }
}

impl TokenFile {
    /// Read and parse the file now; any error is a config error.
    pub fn load(path: &Path, param: &str) -> anyhow::Result<Self> {
        let (stamp, text) = read_token_file(path)?;
        let table = parse_token_file(&text).with_context(|| format!("{}", path.display()))?;
        Ok(Self {
            path: path.to_owned(),
            param: param.to_owned(),
            table: RwLock::new(Arc::new(table)),
            reload: tokio::sync::Mutex::new(ReloadState {
                stamp: Some(stamp),
                checked: Instant::now(),
            }),
        })
    }

    /// The target for `token`, after re-reading the file if it changed.
    pub async fn lookup(&self, token: &str) -> Option<BackendAddr> {
        self.refresh().await;
        let table = self
            .table
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        table.get(token).cloned()
    }

    async fn refresh(&self) {
        let Ok(mut state) = self.reload.try_lock() else {
            return;
        };
        if state.checked.elapsed() < TOKEN_FILE_CHECK_INTERVAL {
            return;
        }
        state.checked = Instant::now();
        let path = self.path.clone();
        let known = state.stamp.clone();
        // stat (and, on a change, read) off the async workers.
        let checked = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
            let stamp = stamp(&path)?;
            if known.as_ref() == Some(&stamp) {
                return Ok(None);
            }
            let (stamp, text) = read_token_file(&path)?;
            Ok(Some((stamp, parse_token_file(&text))))
        })
        .await;
        let file = self.path.display();
        match checked {
            Ok(Ok(None)) => {}
            Ok(Ok(Some((stamp, Ok(table))))) => {
                info!(file = %file, tokens = table.len(), "token file reloaded");
                *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
                state.stamp = Some(stamp);
            }
            Ok(Ok(Some((stamp, Err(e))))) => {
                error!(file = %file, error = %format!("{e:#}"), "token file not reloaded: keeping the last good table");
                state.stamp = Some(stamp);
            }
            Ok(Err(e)) => {
                // Logged once per failure, not on every check.
                if state.stamp.take().is_some() {
                    error!(file = %file, error = %format!("{e:#}"), "token file unreadable: keeping the last good table");
                }
            }
            Err(e) => error!(file = %file, error = %e, "token file check failed"),
        }
    }
}

fn stamp(path: &Path) -> anyhow::Result<Stamp> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if !meta.is_file() {
        bail!("{}: not a regular file", path.display());
    }
    Ok(Stamp {
        modified: meta.modified().ok(),
        len: meta.len(),
    })
}

fn read_token_file(path: &Path) -> anyhow::Result<(Stamp, String)> {
    let stamp = stamp(path)?;
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    Ok((stamp, text))
}

/// websockify's format: `token: host:port` per line (the first `:` followed by a space or
/// tab ends the token); blank lines and `#` comments skipped. A later line for the same
/// token wins, as in websockify. Any bad line fails the whole file, naming the line.
fn parse_token_file(text: &str) -> anyhow::Result<TokenTable> {
    let mut table = TokenTable::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let split = line
            .char_indices()
            .find(|&(i, c)| c == ':' && line[i + 1..].starts_with([' ', '\t']))
            .map(|(i, _)| i);
        let Some(i) = split else {
            bail!("line {}: expected `token: host:port`", n + 1);
        };
        let token = line[..i].trim();
        if token.is_empty() {
            bail!("line {}: empty token", n + 1);
        }
        let target = parse_target(&line[i + 1..]).with_context(|| format!("line {}", n + 1))?;
        table.insert(token.to_owned(), target);
    }
    Ok(table)
}

// ---------------------------------------------------------------------------------------------
// Egress.

/// The resolved egress allowlist.
#[derive(Debug, Clone)]
pub struct Egress {
    rules: Vec<(IpNet, RangeInclusive<u16>)>,
}

impl Egress {
    /// Parse `[egress] allow`; errors name the entry.
    pub fn from_config(config: &EgressConfig) -> anyhow::Result<Self> {
        if config.allow.is_empty() {
            bail!(
                "egress.allow: an empty list would refuse every dial; remove [egress] to allow all"
            );
        }
        let rules = config
            .allow
            .iter()
            .enumerate()
            .map(|(i, entry)| {
                parse_egress_rule(entry).with_context(|| {
                    format!("egress.allow[{i}]: {entry:?} is not CIDR[:PORT[-PORT]] ([IPv6] before a port)")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(Self { rules })
    }

    /// Whether a dial to `addr` is allowed (IPv4-mapped IPv6 counts as IPv4).
    pub fn allows(&self, addr: SocketAddr) -> bool {
        let ip = addr.ip().to_canonical();
        self.rules
            .iter()
            .any(|(net, ports)| net.contains(&ip) && ports.contains(&addr.port()))
    }
}

fn parse_egress_rule(entry: &str) -> anyhow::Result<(IpNet, RangeInclusive<u16>)> {
    let entry = entry.trim();
    let (net, ports) = if let Some(rest) = entry.strip_prefix('[') {
        let (net, after) = rest.split_once(']').context("missing ]")?;
        match after {
            "" => (net, None),
            _ => (
                net,
                Some(after.strip_prefix(':').context("expected :PORT after ]")?),
            ),
        }
    } else if entry.matches(':').count() > 1 {
        (entry, None) // bare IPv6, no port
    } else {
        match entry.split_once(':') {
            Some((net, ports)) => (net, Some(ports)),
            None => (entry, None),
        }
    };
    let net: IpNet = match net.parse::<IpNet>() {
        Ok(n) => n.trunc(),
        Err(_) => IpNet::from(net.parse::<IpAddr>().context("bad address")?),
    };
    let ports = match ports {
        None => 1..=u16::MAX,
        Some(p) => {
            let (lo, hi) = p.split_once('-').unwrap_or((p, p));
            let lo: u16 = lo.parse().context("bad port")?;
            let hi: u16 = hi.parse().context("bad port")?;
            if lo == 0 || lo > hi {
                bail!("port range must be 1-65535, low first");
            }
            lo..=hi
        }
    };
    Ok((net, ports))
}

/// Resolve `host` once and keep the addresses the allowlist admits; the caller connects
/// to these and nothing else. No allowlist: every resolved address.
pub async fn resolve_allowed(
    host: &str,
    port: u16,
    egress: Option<&Egress>,
) -> Result<Vec<SocketAddr>, RejectError> {
    let resolved: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(RejectError::BackendUnreachable)?
        .collect();
    let Some(egress) = egress else {
        return Ok(resolved);
    };
    let (allowed, denied): (Vec<_>, Vec<_>) = resolved.into_iter().partition(|a| egress.allows(*a));
    if allowed.is_empty() {
        let denied: Vec<String> = denied.iter().map(ToString::to_string).collect();
        return Err(RejectError::EgressDenied(
            format!(
                "{host}:{port} resolved to [{}], none of them in [egress] allow",
                denied.join(", ")
            )
            .into(),
        ));
    }
    Ok(allowed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn egress(allow: &[&str]) -> Egress {
        Egress::from_config(&EgressConfig {
            allow: allow.iter().map(|s| s.to_string()).collect(),
        })
        .unwrap()
    }

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn egress_rules() {
        let e = egress(&[
            "127.0.0.0/8",
            "10.1.2.0/24:5900-5999",
            "[::1]:22",
            "fd00::/8",
            "192.0.2.7:80",
        ]);
        assert!(e.allows(sa("127.9.9.9:1")));
        assert!(e.allows(sa("10.1.2.3:5900")));
        assert!(e.allows(sa("10.1.2.3:5999")));
        assert!(!e.allows(sa("10.1.2.3:6000")));
        assert!(!e.allows(sa("10.1.3.3:5900")));
        assert!(e.allows(sa("[::1]:22")));
        assert!(!e.allows(sa("[::1]:23")));
        assert!(e.allows(sa("[fd12::1]:443")));
        assert!(e.allows(sa("192.0.2.7:80")));
        assert!(!e.allows(sa("192.0.2.8:80")));
        assert!(e.allows(sa("[::ffff:127.0.0.1]:80")), "IPv4-mapped is IPv4");
        assert!(!e.allows(sa("[::ffff:10.9.9.9]:80")));
        assert!(!e.allows(sa("169.254.169.254:80")));
    }

    #[test]
    fn bad_egress_entries_name_themselves() {
        for bad in [
            "example.com",
            "10.0.0.0/33",
            "10.0.0.1:0",
            "10.0.0.1:9-1",
            "[::1",
            "[::1]22",
            "::1:22x",
        ] {
            let e = Egress::from_config(&EgressConfig {
                allow: vec!["127.0.0.1".into(), bad.into()],
            })
            .unwrap_err();
            assert!(format!("{e:#}").contains("egress.allow[1]"), "{bad}: {e:#}");
        }
        assert!(Egress::from_config(&EgressConfig { allow: vec![] }).is_err());
    }

    #[tokio::test]
    async fn names_are_checked_after_resolution() {
        let only_v6 = egress(&["[::1]:1"]);
        let e = resolve_allowed("localhost", 5900, Some(&only_v6))
            .await
            .unwrap_err();
        assert_eq!(e.label(), "egress_denied");
        let loopback = egress(&["127.0.0.0/8", "::1"]);
        let addrs = resolve_allowed("localhost", 5900, Some(&loopback))
            .await
            .unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        let literal = resolve_allowed("127.0.0.1", 7, Some(&loopback))
            .await
            .unwrap();
        assert_eq!(literal, [sa("127.0.0.1:7")]);
    }

    #[test]
    fn websockify_token_files() {
        let table = parse_token_file(
            "# comment\n\nvnc1: 127.0.0.1:5901\n  vnc2:\t host.internal:5902  \nv6: [::1]:5903\nvnc1: 10.0.0.1:5900\n",
        )
        .unwrap();
        assert_eq!(table.len(), 3);
        assert_eq!(
            table["vnc1"].to_string(),
            "tcp://10.0.0.1:5900",
            "a later line wins"
        );
        assert_eq!(table["vnc2"].to_string(), "tcp://host.internal:5902");
        assert_eq!(table["v6"].to_string(), "tcp://[::1]:5903");
        for (bad, needle) in [
            ("a 127.0.0.1:1\n", "line 1"),
            ("ok: h:1\nb: host\n", "line 2"),
            ("ok: h:1\n\nc: ws://h:1\n", "line 3"),
            (": h:1\n", "empty token"),
        ] {
            let e = parse_token_file(bad).unwrap_err();
            assert!(format!("{e:#}").contains(needle), "{bad:?}: {e:#}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn token_file_follows_edits_and_survives_broken_ones() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens.cfg");
        std::fs::write(&path, "a: h:1\n").unwrap();
        let file = TokenFile::load(&path, "token").unwrap();
        let later = || tokio::time::advance(TOKEN_FILE_CHECK_INTERVAL);

        std::fs::write(&path, "a: h:1\nb: h:2\n").unwrap();
        assert!(
            file.lookup("b").await.is_none(),
            "checked at most once per interval"
        );
        later().await;
        assert_eq!(file.lookup("b").await.unwrap().to_string(), "tcp://h:2");

        std::fs::write(&path, "a: h:1\nbroken line\n").unwrap();
        later().await;
        assert!(
            file.lookup("b").await.is_some(),
            "a broken edit keeps the last good table"
        );
        std::fs::remove_file(&path).unwrap();
        later().await;
        assert!(file.lookup("a").await.is_some(), "so does a vanished file");

        std::fs::write(&path, "c: h:3\n").unwrap();
        later().await;
        assert!(file.lookup("c").await.is_some());
        assert!(file.lookup("a").await.is_none());
        assert!(
            !format!("{file:?}").contains("h:3"),
            "Debug never shows targets"
        );
    }

    #[test]
    fn claim_targets_are_tcp_host_port() {
        assert_eq!(
            parse_target("db.internal:5432").unwrap().to_string(),
            "tcp://db.internal:5432"
        );
        assert!(parse_target("ws://h:1").is_err());
        assert_eq!(
            parse_target(" udp://[::1]:53").unwrap().to_string(),
            "udp://[::1]:53"
        );
        assert!(parse_target("udp://h").is_err());
        assert!(parse_target("h").is_err());
        assert!(parse_target("h:0").is_err());
    }
}
