//! A route's checks that need nothing but the file: name and path, hosts against other
//! routes, backends and what they allow, recording, resuming, sizes and caps.

use std::collections::{HashMap, HashSet};

use anyhow::{bail, Context};

use super::{bandwidth, cap, host_pattern, secs_at};
use crate::config::*;

impl FileConfig {
    /// The checks of route `i` that need nothing but the file; `policy` checks the rest
    /// (origins, digests, key files, token files) when it compiles the route.
    pub(super) fn validate_route(
        &self,
        i: usize,
        r: &RouteConfig,
        names: &mut HashSet<String>,
        claims: &mut HashMap<(String, String), usize>,
    ) -> anyhow::Result<()> {
        check_name_and_path(i, r, names)?;
        let at = format!("route[{i}]");
        if let Some(record) = &r.record {
            check_record(&at, r, record)?;
        }
        self.claim_hosts_and_path(&at, i, r, claims)?;
        let backends = self.route_backends(&at, r)?;
        check_backend_options(&at, r, &backends)?;
        self.check_route_limits(&at, r)?;
        if let Some(resume) = &r.resume {
            validate_resume(&at, r, resume, &backends, &self.limits)?;
        }
        if r.compression_level > 9 {
            bail!(
                "{at}.compression_level: must be 0..=9, got {}",
                r.compression_level
            );
        }
        if let Some(b) = r
            .watch_backlog_bytes
            .filter(|&b| b > MAX_WATCH_BACKLOG_BYTES)
        {
            bail!("{at}.watch_backlog_bytes: must be 0..={MAX_WATCH_BACKLOG_BYTES}, got {b}");
        }
        Ok(())
    }

    /// Two routes that could match one request at the same precedence: same path, and the
    /// same exact name, the same wildcard, or no hosts at all.
    fn claim_hosts_and_path(
        &self,
        at: &str,
        i: usize,
        r: &RouteConfig,
        claims: &mut HashMap<(String, String), usize>,
    ) -> anyhow::Result<()> {
        let mut patterns = Vec::with_capacity(r.hosts.len());
        for (n, host) in r.hosts.iter().enumerate() {
            let pattern = host_pattern(host).with_context(|| format!("{at}.hosts[{n}]"))?;
            if patterns.contains(&pattern) {
                bail!("{at}.hosts[{n}]: {host:?} is listed twice");
            }
            patterns.push(pattern);
        }
        if patterns.is_empty() {
            patterns.push(String::new());
        }
        for pattern in patterns {
            let key = (pattern, r.path.clone());
            if let Some(&j) = claims.get(&key) {
                let other = &self.routes[j].name;
                let host = match key.0.as_str() {
                    "" => "any host (neither lists hosts)".to_owned(),
                    h => format!("host {h:?}"),
                };
                bail!(
                    "{at}.path: routes {other:?} (route[{j}]) and {:?} (route[{i}]) both match \
                     {host} and path {:?}; give one of them other hosts or another path",
                    r.name,
                    r.path
                );
            }
            claims.insert(key, i);
        }
        Ok(())
    }

    /// The route's backends as parsed (none for a target table), with the client
    /// certificate and wss:// options they need checked.
    fn route_backends(&self, at: &str, r: &RouteConfig) -> anyhow::Result<Vec<BackendAddr>> {
        let needs_client_cert = r
            .auth
            .as_ref()
            .is_some_and(|a| a.client_cert_required || !a.client_cert_names.is_empty());
        if needs_client_cert
            && !self
                .listeners
                .iter()
                .any(|l| l.tls.as_ref().is_some_and(|t| t.client_ca_file.is_some()))
        {
            bail!(
                "{at}.auth: requires a client certificate, but no listener has tls.client_ca_file"
            );
        }
        let backends = match (&r.backend, &r.target, r.backends.is_empty()) {
            (Some(url), None, true) => {
                vec![BackendAddr::parse(url).with_context(|| format!("{at}.backend"))?]
            }
            (None, None, false) => validate_pool(at, r)?,
            (Some(_), Some(_), _) => bail!("{at}: backend and [route.target] exclude each other"),
            (_, _, false) => bail!("{at}.backends: excludes backend and [route.target]"),
            (None, None, true) => {
                bail!("{at}.backend: required (or backends, or a [route.target] table)")
            }
            (None, Some(_), true) => Vec::new(),
        };
        let is_wss = backends
            .iter()
            .any(|b| matches!(b, BackendAddr::WebSocket { tls: true, .. }));
        if !is_wss && (r.tls_ca_file.is_some() || r.insecure_skip_verify) {
            bail!("{at}: tls_ca_file and insecure_skip_verify apply to wss:// backends only");
        }
        Ok(backends)
    }

    /// Sizes, frame budget, session and bandwidth caps, subprotocol names, window bits.
    fn check_route_limits(&self, at: &str, r: &RouteConfig) -> anyhow::Result<()> {
        check_sizes(at, r, &self.limits)?;
        let frame = r.max_frame_bytes.unwrap_or(self.limits.max_frame_bytes);
        if frame > self.limits.frame_budget_bytes {
            bail!(
                "{at}.max_frame_bytes: must be at most limits.frame_budget_bytes ({}), got {frame}",
                self.limits.frame_budget_bytes
            );
        }
        cap(
            &format!("{at}.max_sessions"),
            r.max_sessions.unwrap_or(self.limits.max_sessions_per_route),
        )?;
        bandwidth(
            &format!("{at}.bandwidth_bytes_per_sec"),
            r.bandwidth_bytes_per_sec
                .unwrap_or(self.limits.bandwidth_bytes_per_sec),
        )?;
        for p in &r.subprotocols {
            if p.is_empty() || !p.bytes().all(is_token_byte) {
                bail!("{at}.subprotocols: {p:?} is not an HTTP token");
            }
        }
        for (key, bits) in [
            (
                "compression_server_max_window_bits",
                r.compression_server_max_window_bits,
            ),
            (
                "compression_client_max_window_bits",
                r.compression_client_max_window_bits,
            ),
        ] {
            if !(9..=15).contains(&bits) {
                bail!("{at}.{key}: must be 9..=15, got {bits}");
            }
        }
        Ok(())
    }
}

/// A route's name: unique, `[A-Za-z0-9_.-]`; its path: absolute, no query.
fn check_name_and_path(
    i: usize,
    r: &RouteConfig,
    names: &mut HashSet<String>,
) -> anyhow::Result<()> {
    if r.name.is_empty()
        || !r
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    {
        bail!(
            "route[{i}].name: {:?} must be non-empty [A-Za-z0-9_.-]",
            r.name
        );
    }
    if !names.insert(r.name.clone()) {
        bail!("route[{i}].name: {:?} is used twice", r.name);
    }
    if !r.path.starts_with('/') || r.path.contains(['?', '#', ' ']) {
        bail!(
            "route[{i}].path: {:?} must start with / and hold no query",
            r.path
        );
    }
    Ok(())
}

/// `[route.record]`: its own keys, and a backend whose stream can be recorded.
fn check_record(at: &str, r: &RouteConfig, record: &RecordConfig) -> anyhow::Result<()> {
    record.validate(at, &r.name)?;
    if r.backend
        .as_deref()
        .is_some_and(|u| u.starts_with("udp://"))
    {
        bail!("{at}.record: udp:// backends are not recorded (datagrams are not a byte stream); only byte backends (tcp://, unix:, targets) and WebSocket backends (ws://, wss://)");
    }
    Ok(())
}

/// What the backends allow: `[route.udp]`, compression, the PROXY header, forwarded headers.
fn check_backend_options(
    at: &str,
    r: &RouteConfig,
    backends: &[BackendAddr],
) -> anyhow::Result<()> {
    // udp:// (`[route.udp]`, no pools, no compression); token-file and claim targets may
    // name udp:// too.
    let udp_possible = r.target.is_some() || backends.iter().any(BackendAddr::is_datagrams);
    if let Some(u) = &r.udp {
        if !udp_possible {
            bail!("{at}.udp: applies to routes with udp:// backends (or targets) only");
        }
        u.resolve(&format!("{at}.udp"))?;
    }
    if r.compression == CompressionMode::On && backends.iter().any(BackendAddr::is_datagrams) {
        bail!("{at}.compression: never negotiated on udp:// routes (a datagram is one message as sent)");
    }
    // Token-file and claim targets are tcp:// or udp://, so never WebSocket.
    if r.send_proxy_protocol.is_some()
        && backends
            .iter()
            .any(|b| !b.is_bytes() || *b == BackendAddr::BuiltinEcho)
    {
        bail!(
            "{at}.send_proxy_protocol: applies to tcp:// and unix: backends only \
             (WebSocket backends get X-Forwarded-For)"
        );
    }
    for h in &r.forward_headers {
        hyper::header::HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes())
            .ok()
            .filter(|n| !is_hop_header(n))
            .with_context(|| {
                format!(
                    "{at}.forward_headers: {h:?} is not a forwardable header (hop-by-hop, \
                     handshake and client-address headers never are: the gateway writes \
                     X-Forwarded-For, -Proto and -Host itself)"
                )
            })?;
    }
    Ok(())
}

/// `[route.resume]`: sane numbers, and a backend kind whose bytes can be counted.
fn validate_resume(
    at: &str,
    r: &RouteConfig,
    resume: &ResumeConfig,
    backends: &[BackendAddr],
    limits: &Limits,
) -> anyhow::Result<()> {
    if backends.iter().any(|b| !b.is_bytes()) {
        bail!(
            "{at}.resume: needs a byte backend (tcp:// or unix:); a WebSocket backend's \
             messages are not resumed (the gateway cannot replay what it has no offsets for); \
             nor is a udp:// backend's"
        );
    }
    if r.record.is_some() {
        bail!("{at}.resume: resumable sessions are not recorded yet; drop [route.record] or [route.resume] on this route");
    }
    if !(resume.grace_secs.is_finite() && (0.1..=86_400.0).contains(&resume.grace_secs)) {
        bail!("{at}.resume.grace_secs: must be 0.1..=86400");
    }
    if !(resume.heartbeat_secs.is_finite() && (0.1..=3600.0).contains(&resume.heartbeat_secs)) {
        bail!("{at}.resume.heartbeat_secs: must be 0.1..=3600");
    }
    if !(4096..=(1 << 30)).contains(&resume.window_bytes) {
        bail!("{at}.resume.window_bytes: must be 4096..=1073741824");
    }
    if r.bandwidth_bytes_per_sec
        .unwrap_or(limits.bandwidth_bytes_per_sec)
        > 0
    {
        bail!("{at}.resume: resumable sessions are not paced; set bandwidth_bytes_per_sec = 0 on this route");
    }
    Ok(())
}

/// A route's `backends` and `[route.health]`.
fn validate_pool(at: &str, r: &RouteConfig) -> anyhow::Result<Vec<BackendAddr>> {
    let mut out = Vec::with_capacity(r.backends.len());
    for (n, url) in r.backends.iter().enumerate() {
        let b = BackendAddr::parse(url).with_context(|| format!("{at}.backends[{n}]"))?;
        if b == BackendAddr::BuiltinEcho {
            bail!("{at}.backends[{n}]: builtin:echo cannot be pooled");
        }
        if b.is_datagrams() {
            bail!("{at}.backends[{n}]: udp:// backends cannot be pooled (use one backend)");
        }
        if out.contains(&b) {
            bail!("{at}.backends[{n}]: {b} is listed twice");
        }
        if out
            .first()
            .is_some_and(|f: &BackendAddr| f.is_bytes() != b.is_bytes())
        {
            bail!("{at}.backends[{n}]: mixes WebSocket and byte (tcp://, unix:) backends");
        }
        out.push(b);
    }
    if out.len() > 1024 {
        bail!("{at}.backends: at most 1024");
    }
    let h = &r.health;
    let name = |k: &str| format!("{at}.health.{k}");
    let eject = secs_at(&name("eject_secs"), h.eject_secs, false)?;
    let max = secs_at(&name("max_eject_secs"), h.max_eject_secs, false)?;
    if max < eject {
        bail!("{at}.health.max_eject_secs: must be at least eject_secs");
    }
    let interval = secs_at(&name("check_interval_secs"), h.check_interval_secs, true)?;
    if !interval.is_zero() && interval < Duration::from_millis(100) {
        bail!("{at}.health.check_interval_secs: must be 0 (off) or at least 0.1");
    }
    secs_at(&name("check_timeout_secs"), h.check_timeout_secs, false)?;
    Ok(out)
}

/// A route's frame and message sizes, each its own key or inherited from `[limits]` (checked
/// already). Errors name a key the route wrote, or say what it inherits.
fn check_sizes(at: &str, r: &RouteConfig, limits: &Limits) -> anyhow::Result<()> {
    let frame = r.max_frame_bytes.unwrap_or(limits.max_frame_bytes);
    let message = r.max_message_bytes.unwrap_or(limits.max_message_bytes);
    if !(126..=1 << 30).contains(&frame) {
        bail!("{at}.max_frame_bytes: must be 126..=1073741824, got {frame}");
    }
    if message > 1 << 32 {
        bail!("{at}.max_message_bytes: must be at most 4294967296, got {message}");
    }
    if message < frame {
        match (r.max_frame_bytes, r.max_message_bytes) {
            (_, Some(_)) => bail!(
                "{at}.max_message_bytes: {message} is below the route's max_frame_bytes \
                 ({frame}{}): a message is at least one frame",
                if r.max_frame_bytes.is_some() {
                    ""
                } else {
                    ", from [limits]"
                }
            ),
            _ => bail!(
                "{at}.max_frame_bytes: {frame} is above the max_message_bytes it inherits from \
                 [limits] ({message}): set {at}.max_message_bytes too"
            ),
        }
    }
    Ok(())
}

/// Headers that belong to one hop or to the handshake itself, or that name the client
/// (`Forwarded`, `X-Forwarded-*`, `X-Real-IP`: a backend would take a client's forgery for the
/// gateway's word); never forwarded.
pub fn is_hop_header(name: &hyper::header::HeaderName) -> bool {
    use hyper::header::*;
    [
        CONNECTION,
        UPGRADE,
        HOST,
        TE,
        TRAILER,
        TRANSFER_ENCODING,
        CONTENT_LENGTH,
        PROXY_AUTHORIZATION,
        SEC_WEBSOCKET_KEY,
        SEC_WEBSOCKET_VERSION,
        SEC_WEBSOCKET_EXTENSIONS,
        SEC_WEBSOCKET_PROTOCOL,
        SEC_WEBSOCKET_ACCEPT,
    ]
    .contains(name)
        || ["keep-alive", "proxy-connection", "forwarded", "x-real-ip"].contains(&name.as_str())
        || name.as_str().starts_with("x-forwarded-")
}

/// RFC 7230 `tchar`: what a subprotocol name may hold.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
