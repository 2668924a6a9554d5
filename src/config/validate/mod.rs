//! Validation, once at load: every check of a [`FileConfig`] that needs nothing but the
//! file, and its resolution into the [`Config`] the gateway runs on (durations, digests,
//! defaults filled in). A route's own checks are in `route.rs`; `policy` checks the rest
//! (origins, key files, token files) when it compiles a route.

mod route;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use anyhow::{bail, Context};

pub use route::is_hop_header;

use super::*;

/// Seconds at `timeouts.{name}` as a `Duration` (see [`secs_at`]).
pub(super) fn secs(name: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    secs_at(&format!("timeouts.{name}"), value, allow_zero)
}

/// Seconds at key `key` (its full name) as a `Duration`: finite, at most a day.
pub(super) fn secs_at(key: &str, value: f64, allow_zero: bool) -> anyhow::Result<Duration> {
    if !value.is_finite() || value < 0.0 || (!allow_zero && value == 0.0) || value > 86_400.0 {
        bail!(
            "{key}: must be {} and at most 86400, got {value}",
            if allow_zero { ">= 0" } else { "> 0" }
        );
    }
    Ok(Duration::from_secs_f64(value))
}

impl FileConfig {
    /// Check everything once and resolve it into a [`Config`].
    pub fn validate(self) -> anyhow::Result<Config> {
        if self.listeners.is_empty() {
            bail!("listener: at least one [[listener]] is required");
        }
        if self.routes.is_empty() {
            bail!("route: at least one [[route]] is required");
        }
        self.check_listeners_and_admin()?;
        // Before the routes, which inherit its values: a bad default is named as such.
        validate_limits(&self.limits)?;
        self.http2.validate()?;
        if self.runtime.worker_threads > 1024 {
            bail!(
                "runtime.worker_threads: must be 0..=1024, got {}",
                self.runtime.worker_threads
            );
        }
        self.runtime.mode.supported().context("runtime.mode")?;
        let mut names = HashSet::new();
        let mut claims = HashMap::new();
        for (i, r) in self.routes.iter().enumerate() {
            self.validate_route(i, r, &mut names, &mut claims)?;
        }
        self.check_services()?;
        let t = &self.timeouts;
        let ping = secs("ping_interval_secs", t.ping_interval_secs, true)?;
        let keepalive = secs("backend_keepalive_secs", t.backend_keepalive_secs, true)?;
        let user_timeout = secs(
            "backend_user_timeout_secs",
            t.backend_user_timeout_secs,
            true,
        )?;
        let l = &self.limits;
        Ok(Config {
            admin: self.admin.as_ref().map(|a| a.address),
            admin_bearer_sha256: admin_digest(self.admin.as_ref())?,
            drain_grace: secs("drain_grace_secs", t.drain_grace_secs, true)?,
            tls_handshake_timeout: secs("tls_handshake_secs", t.tls_handshake_secs, false)?,
            header_read_timeout: secs("header_read_secs", t.header_read_secs, false)?,
            backend_connect_timeout: secs("backend_connect_secs", t.backend_connect_secs, false)?,
            backend_keepalive: (!keepalive.is_zero()).then_some(keepalive),
            backend_user_timeout: (!user_timeout.is_zero()).then_some(user_timeout),
            ping_interval: (!ping.is_zero()).then_some(ping),
            pong_timeout: secs("pong_timeout_secs", t.pong_timeout_secs, false)?,
            close_grace: secs("close_grace_secs", t.close_grace_secs, false)?,
            backend_stall: secs("backend_stall_secs", t.backend_stall_secs, false)?,
            shutdown_grace: secs("shutdown_grace_secs", t.shutdown_grace_secs, false)?,
            runtime_mode: self.runtime.mode,
            worker_threads: self.runtime.worker_threads,
            max_connections: l.max_connections,
            buffer_bytes: l.buffer_bytes,
            max_header_bytes: l.max_header_bytes,
            listeners: self.listeners,
            routes: self.routes,
            egress: self.egress,
            limits: self.limits,
            http2: self.http2,
            reload: self.reload,
            log: self.log,
            admin_allowed_hosts: self
                .admin
                .iter()
                .flat_map(|a| &a.allowed_hosts)
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            web_max_responses: self.web.as_ref().map_or(0, |w| w.max_responses),
            web_follow_external_symlinks: self
                .web
                .as_ref()
                .is_some_and(|w| w.follow_external_symlinks),
            web_root: self.web.map(|w| w.root),
            udp: self.udp,
            resume: self.resume,
            acme: self.acme,
            signin: self.signin,
        })
    }

    /// Listener addresses unique, TLS and client identity settings, and an admin address
    /// apart from them.
    fn check_listeners_and_admin(&self) -> anyhow::Result<()> {
        let mut addrs = HashSet::new();
        for (i, l) in self.listeners.iter().enumerate() {
            if l.address.port() != 0 && !addrs.insert(l.address) {
                bail!("listener[{i}].address: {} is used twice", l.address);
            }
            if l.tls.is_some() && l.h2c {
                bail!("listener[{i}].h2c: for plain listeners; a TLS listener offers h2 by ALPN (`http2`)");
            }
            if let Some(tls) = &l.tls {
                if tls.client_ca_file.is_none() && tls.client_auth.is_some() {
                    bail!("listener[{i}].tls.client_auth: needs client_ca_file");
                }
                for (n, c) in tls.certificates.iter().enumerate() {
                    for (k, name) in c.names.iter().enumerate() {
                        host_pattern(name).with_context(|| {
                            format!("listener[{i}].tls.certificates[{n}].names[{k}]")
                        })?;
                    }
                }
            }
            validate_client_identity(i, l)?;
        }
        if let Some(admin) = &self.admin {
            if admin.address.port() != 0 && addrs.contains(&admin.address) {
                bail!("admin.address: {} is also a public listener", admin.address);
            }
        }
        Ok(())
    }

    /// Reload, log, egress, ACME, `[web]` and the admin's allowed hosts.
    fn check_services(&self) -> anyhow::Result<()> {
        if self.reload.watch_debounce_ms > 60_000 {
            bail!(
                "reload.watch_debounce_ms: must be 0..=60000, got {}",
                self.reload.watch_debounce_ms
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log.level) {
            bail!(
                "log.level: {:?} is not a level or filter: {e}",
                self.log.level
            );
        }
        if let Some(egress) = &self.egress {
            if egress.allow.is_empty() {
                bail!(
                    "egress.allow: an empty list would refuse every dial; remove [egress] to allow all"
                );
            }
        }
        if let Some(acme) = &self.acme {
            validate_acme(acme, &self.listeners)?;
        }
        if let Some(web) = &self.web {
            if !web.root.is_dir() {
                bail!("web.root: {} is not a directory", web.root.display());
            }
            if !(1..=100_000).contains(&web.max_responses) {
                bail!(
                    "web.max_responses: {} is not in 1..=100000",
                    web.max_responses
                );
            }
        }
        for host in self.admin.iter().flat_map(|a| &a.allowed_hosts) {
            if host.is_empty() || host.contains(|c: char| c.is_whitespace() || "/@?#".contains(c)) {
                bail!("admin.allowed_hosts: {host:?} is not a host name (with an optional :port)");
            }
        }
        Ok(())
    }
}

/// A route's `hosts` entry in its compared form: lower case, without a trailing dot; a
/// name of DNS labels (letters, digits, `-`), or `*.` and such a name (one label more). Ports,
/// IP addresses in brackets and wildcards elsewhere are refused.
pub fn host_pattern(host: &str) -> anyhow::Result<String> {
    let lower = host.trim_end_matches('.').to_ascii_lowercase();
    let name = lower.strip_prefix("*.").unwrap_or(&lower);
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if name.is_empty() || name.len() > 253 || !name.split('.').all(label_ok) {
        bail!(
            "{host:?} is not a host name (labels of letters, digits and -, optionally after \
             \"*.\" for exactly one more label; no port)"
        );
    }
    Ok(lower)
}

/// `[acme]`: names it can prove with its challenge: TLS-ALPN-01 on a TLS listener, HTTP-01
/// on a plain one; and a TLS listener to serve the certificates on.
fn validate_acme(acme: &AcmeConfig, listeners: &[ListenerConfig]) -> anyhow::Result<()> {
    if !listeners.iter().any(|l| l.tls.is_some()) {
        bail!(
            "acme: needs a TLS listener ([listener.tls]), which serves the certificates and answers the TLS-ALPN-01 challenges"
        );
    }
    if acme.challenge == AcmeChallenge::Http01 && listeners.iter().all(|l| l.tls.is_some()) {
        bail!(
            "acme.challenge: \"http-01\" needs a plain listener (no [listener.tls]), which the CA reaches on port 80"
        );
    }
    if acme.names.is_empty() {
        bail!("acme.names: list at least one host name");
    }
    for (n, name) in acme.names.iter().enumerate() {
        let pattern = host_pattern(name).with_context(|| format!("acme.names[{n}]"))?;
        if pattern.starts_with("*.") {
            bail!("acme.names[{n}]: {name:?}: wildcards need DNS-01, which wsgate does not do");
        }
    }
    if !acme.directory_url.starts_with("https://") {
        bail!(
            "acme.directory_url: {:?} must be an https:// URL",
            acme.directory_url
        );
    }
    secs_at("acme.retry_secs", acme.retry_secs, false)?;
    Ok(())
}

/// A listener's PROXY protocol and forwarded-header keys.
fn validate_client_identity(i: usize, l: &ListenerConfig) -> anyhow::Result<()> {
    let at = format!("listener[{i}]");
    for (n, cidr) in l.trusted_proxies.iter().enumerate() {
        parse_cidr(cidr).with_context(|| format!("{at}.trusted_proxies[{n}]"))?;
    }
    let uses_them = l.proxy_protocol || l.forwarded_header.is_some();
    if uses_them && l.trusted_proxies.is_empty() {
        bail!("{at}.trusted_proxies: proxy_protocol and forwarded_header need the load balancers' addresses");
    }
    if !uses_them && !l.trusted_proxies.is_empty() {
        bail!("{at}.trusted_proxies: set proxy_protocol or forwarded_header too, or remove it");
    }
    Ok(())
}

/// `"10.0.0.0/8"` or a plain address (one host).
pub fn parse_cidr(text: &str) -> anyhow::Result<ipnet::IpNet> {
    let text = text.trim();
    text.parse::<ipnet::IpNet>()
        .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map(|n| n.trunc())
        .map_err(|_| anyhow::anyhow!("{text:?} is not an address or CIDR"))
}

/// `[admin] bearer_sha256`, checked to be a SHA-256 digest in hex.
fn admin_digest(admin: Option<&AdminConfig>) -> anyhow::Result<Option<String>> {
    match admin.and_then(|a| a.bearer_sha256.as_deref()) {
        Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
            Ok(Some(hex.to_owned()))
        }
        Some(_) => bail!("admin.bearer_sha256: expected 64 hex digits (sha256sum output)"),
        None => Ok(None),
    }
}

/// `[limits]` on its own, before any route inherits from it.
fn validate_limits(l: &Limits) -> anyhow::Result<()> {
    if l.max_connections == 0 {
        bail!("limits.max_connections: must be > 0");
    }
    if !(1024..=16 * 1024 * 1024).contains(&l.buffer_bytes) {
        bail!(
            "limits.buffer_bytes: must be 1024..=16777216, got {}",
            l.buffer_bytes
        );
    }
    if !(126..=1 << 30).contains(&l.max_frame_bytes) {
        bail!(
            "limits.max_frame_bytes: must be 126..=1073741824, got {}",
            l.max_frame_bytes
        );
    }
    if l.max_message_bytes > 1 << 32 {
        bail!(
            "limits.max_message_bytes: must be at most 4294967296, got {}",
            l.max_message_bytes
        );
    }
    if l.max_frame_bytes > l.max_message_bytes {
        // Name the key that was written: a lowered message size, or a raised frame size.
        if l.max_frame_bytes == Limits::default().max_frame_bytes {
            bail!(
                "limits.max_message_bytes: {} is below limits.max_frame_bytes ({}): a message \
                 is at least one frame; lower max_frame_bytes too",
                l.max_message_bytes,
                l.max_frame_bytes
            );
        }
        bail!(
            "limits.max_frame_bytes: {} is above limits.max_message_bytes ({}): a message is at \
             least one frame; raise max_message_bytes too",
            l.max_frame_bytes,
            l.max_message_bytes
        );
    }
    if !(l.max_frame_bytes..=1 << 40).contains(&l.frame_budget_bytes) {
        bail!(
            "limits.frame_budget_bytes: must be max_frame_bytes ({})..=1099511627776, got {}",
            l.max_frame_bytes,
            l.frame_budget_bytes
        );
    }
    let rate = l.handshakes_per_ip_per_sec;
    if !rate.is_finite() || rate < 0.0 || (rate > 0.0 && !(0.001..=1_000_000.0).contains(&rate)) {
        bail!("limits.handshakes_per_ip_per_sec: must be 0 (off) or 0.001..=1000000, got {rate}");
    }
    if !(1..=1_000_000).contains(&l.handshake_burst_per_ip) {
        bail!(
            "limits.handshake_burst_per_ip: must be 1..=1000000, got {}",
            l.handshake_burst_per_ip
        );
    }
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
    if l.auth_failures_per_ip_per_min > 1_000_000 {
        bail!(
            "limits.auth_failures_per_ip_per_min: must be 0 (off) or 1..=1000000, got {}",
            l.auth_failures_per_ip_per_min
        );
    }
    if !(1..=1_000_000).contains(&l.auth_failure_burst_per_ip) {
        bail!(
            "limits.auth_failure_burst_per_ip: must be 1..=1000000, got {}",
            l.auth_failure_burst_per_ip
        );
    }
    cap("limits.max_sessions", l.max_sessions)?;
    cap("limits.max_sessions_per_ip", l.max_sessions_per_ip)?;
    cap("limits.max_connections_per_ip", l.max_connections_per_ip)?;
    cap("limits.max_sessions_per_route", l.max_sessions_per_route)?;
    bandwidth("limits.bandwidth_bytes_per_sec", l.bandwidth_bytes_per_sec)?;
    Ok(())
}

/// `0` means "off"; anything else must be at most [`MAX_CAP`].
fn cap(name: &str, value: usize) -> anyhow::Result<()> {
    if value > MAX_CAP {
        bail!("{name}: must be 0 (no cap) or at most {MAX_CAP}, got {value}");
    }
    Ok(())
}

fn bandwidth(name: &str, value: u64) -> anyhow::Result<()> {
    if value != 0 && !(1024..=1 << 40).contains(&value) {
        bail!("{name}: must be 0 (off) or 1024..=1099511627776 bytes per second, got {value}");
    }
    Ok(())
}
