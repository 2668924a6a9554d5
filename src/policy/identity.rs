//! Who the client is, as far as the gateway could verify: its address (the TCP peer, or what
//! a trusted load balancer said in a PROXY header or forwarded headers) and the names of a
//! client certificate the listener checked. `edge` fills it per connection; `policy` reads it.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use hyper::header::HeaderMap;

use crate::config::ForwardedHeader;
use crate::tls::HostCheck;
use ipnet::IpNet;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a request handler knows of its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address: what logs, per-address limits and PROXY headers to backends
    /// use. The TCP peer, unless a trusted load balancer said otherwise (`source`).
    pub peer: SocketAddr,
    /// The socket's peer: the load balancer when one is in front.
    pub tcp_peer: SocketAddr,
    /// The address the client connected to: a PROXY header's destination, else our socket's.
    pub local: SocketAddr,
    /// Where `peer` comes from.
    pub source: ClientSource,
    /// On a listener with `forwarded_header`: the header, and the proxies it is believed from.
    pub trust_forwarded: Option<Arc<ForwardedTrust>>,
    /// The client came over TLS (`wss`).
    pub tls: bool,
    /// The client certificate the listener verified (mTLS), if one was sent.
    pub client_cert: Option<Arc<ClientCert>>,
    /// TLS: the name the client's handshake asked for (SNI), lower case.
    pub sni: Option<Arc<str>>,
    /// TLS: the listener's rule for which hosts this connection may serve (`421`).
    pub host_check: Option<Arc<HostCheck>>,
}

/// Where a connection's client address comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientSource {
    /// The TCP peer.
    Socket,
    /// A trusted load balancer's PROXY header.
    ProxyProtocol,
    /// A trusted load balancer's `forwarded_header`.
    ForwardedHeaders,
}

impl ConnInfo {
    /// A direct client: every address from the socket.
    pub fn direct(peer: SocketAddr, local: SocketAddr, tls: bool) -> Self {
        Self {
            peer,
            tcp_peer: peer,
            local,
            source: ClientSource::Socket,
            trust_forwarded: None,
            tls,
            client_cert: None,
            sni: None,
            host_check: None,
        }
    }

    /// This request's view: on a listener with a `forwarded_header`, and from one of its
    /// trusted proxies, the client that header names; otherwise `None` (`self` stands).
    pub fn for_request(&self, headers: &HeaderMap) -> Option<Self> {
        let trust = self.trust_forwarded.as_ref()?;
        if !trust.proxies.contains(self.tcp_peer.ip()) {
            return None;
        }
        let client = forwarded_client(headers, trust.header, &trust.proxies)?;
        Some(Self {
            peer: client,
            source: ClientSource::ForwardedHeaders,
            ..self.clone()
        })
    }
}

/// A listener's client-identity rules, compiled from its config.
#[derive(Debug, Clone, Default)]
pub struct ListenerTrust {
    /// `proxy_protocol`: connections from these must open with a PROXY header.
    pub proxy_protocol: Option<Arc<TrustedProxies>>,
    /// `forwarded_header`: requests from these name the client in that header.
    pub forwarded_headers: Option<Arc<ForwardedTrust>>,
}

impl ListenerTrust {
    /// Listener `i`'s rules; errors name the key.
    pub fn from_config(i: usize, l: &crate::config::ListenerConfig) -> anyhow::Result<Self> {
        let trusted = Arc::new(TrustedProxies::from_config(
            &format!("listener[{i}].trusted_proxies"),
            &l.trusted_proxies,
        )?);
        Ok(Self {
            proxy_protocol: l.proxy_protocol.then(|| trusted.clone()),
            forwarded_headers: l.forwarded_header.map(|header| {
                Arc::new(ForwardedTrust {
                    header,
                    proxies: trusted,
                })
            }),
        })
    }
}

/// A listener's `forwarded_header` and the `trusted_proxies` it is believed from.
#[derive(Debug, Clone)]
pub struct ForwardedTrust {
    pub header: ForwardedHeader,
    pub proxies: Arc<TrustedProxies>,
}

/// A listener's `trusted_proxies`: the load balancers whose word about the client is taken.
#[derive(Debug, Clone, Default)]
pub struct TrustedProxies(Vec<IpNet>);

impl TrustedProxies {
    /// Parse `trusted_proxies` (validated by config); errors name `at`.
    pub fn from_config(at: &str, list: &[String]) -> anyhow::Result<Self> {
        list.iter()
            .enumerate()
            .map(|(i, c)| crate::config::parse_cidr(c).with_context(|| format!("{at}[{i}]")))
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// Whether `ip` (an IPv4-mapped IPv6 address counts as its IPv4 address) is trusted.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.0.iter().any(|n| n.contains(&ip))
    }
}

/// The client that `header` names: the right-most address that is not a trusted proxy
/// (each proxy appends the address it saw, so what a client wrote itself is on the left);
/// when all are trusted, the left-most. Only `header` is read: a balancer passes on, untouched,
/// what the client sent in the headers it does not write. `X-Real-IP` is one address that
/// the balancer sets, so more than one value is refused. `None` when the header is absent,
/// or the walk meets a value that is not an address (`unknown`, obfuscated names, garbage):
/// then the load balancer's own address is kept.
pub fn forwarded_client(
    headers: &HeaderMap,
    header: ForwardedHeader,
    trusted: &TrustedProxies,
) -> Option<SocketAddr> {
    let values = headers
        .get_all(header.name())
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','));
    let hops: Vec<&str> = match header {
        ForwardedHeader::Forwarded => values
            // An element without `for=` (only `proto=`, say) names no hop: skipped.
            .filter_map(|element| {
                element.split(';').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    k.trim().eq_ignore_ascii_case("for").then_some(v.trim())
                })
            })
            .collect(),
        ForwardedHeader::XForwardedFor | ForwardedHeader::XRealIp => {
            values.map(str::trim).collect()
        }
    };
    if header == ForwardedHeader::XRealIp && hops.len() > 1 {
        return None;
    }
    let mut leftmost = None;
    for hop in hops.iter().rev() {
        let addr = parse_hop(hop)?;
        if !trusted.contains(addr.ip()) {
            return Some(addr);
        }
        leftmost = Some(addr);
    }
    leftmost
}

/// `192.0.2.1`, `192.0.2.1:4711`, `2001:db8::1`, `[2001:db8::1]:4711`, optionally quoted;
/// port 0 when none is given.
fn parse_hop(hop: &str) -> Option<SocketAddr> {
    let hop = hop.trim().trim_matches('"');
    if let Ok(a) = hop.parse::<SocketAddr>() {
        return Some(a);
    }
    let bare = hop.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().ok().map(|ip| SocketAddr::new(ip, 0))
}

/// The names of a client certificate that the listener's verifier accepted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientCert {
    pub common_names: Vec<String>,
    pub dns_names: Vec<String>,
    pub emails: Vec<String>,
}

impl ClientCert {
    /// Read the subject CN and the DNS and email SANs of a DER certificate.
    pub fn from_der(der: &[u8]) -> Option<Self> {
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let common_names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok())
            .map(str::to_owned)
            .collect();
        let mut dns_names = Vec::new();
        let mut emails = Vec::new();
        if let Ok(Some(san)) = cert.subject_alternative_name() {
            for name in &san.value.general_names {
                match name {
                    GeneralName::DNSName(d) => dns_names.push((*d).to_owned()),
                    GeneralName::RFC822Name(e) => emails.push((*e).to_owned()),
                    _ => {}
                }
            }
        }
        Some(Self {
            common_names,
            dns_names,
            emails,
        })
    }

    /// Every name, CN first.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.common_names
            .iter()
            .chain(&self.dns_names)
            .chain(&self.emails)
            .map(String::as_str)
    }

    pub(crate) fn matches_any(&self, allowed: &[String]) -> bool {
        self.names()
            .any(|n| allowed.iter().any(|a| a.trim().eq_ignore_ascii_case(n)))
    }

    /// The verified peer certificate of a TLS connection, if it sent one.
    pub fn of_connection(conn: &rustls::ServerConnection) -> Option<Arc<Self>> {
        let der = conn.peer_certificates()?.first()?;
        Self::from_der(der.as_ref()).map(Arc::new)
    }

    /// A name for the log: the first CN or SAN.
    pub fn label(&self) -> &str {
        self.names().next().unwrap_or("(unnamed certificate)")
    }
}

/// The key a client address is counted under: IPv4 as is, IPv6 by its /64.
pub fn client_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(
                u128::from(v6) & 0xffff_ffff_ffff_ffff_0000_0000_0000_0000,
            )),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trusted(list: &[&str]) -> TrustedProxies {
        let list: Vec<String> = list.iter().map(|s| s.to_string()).collect();
        TrustedProxies::from_config("t", &list).unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn right_most_untrusted_address_wins() {
        let t = trusted(&["10.0.0.0/8", "::1"]);
        let client =
            |header, pairs| forwarded_client(&headers(pairs), header, &t).map(|a| a.to_string());
        let xff = ForwardedHeader::XForwardedFor;
        // A client-supplied spoof on the left is ignored: 198.51.100.7 is what our LB saw.
        assert_eq!(
            client(
                xff,
                &[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.1.1.1")]
            ),
            Some("198.51.100.7:0".into())
        );
        assert_eq!(
            client(
                xff,
                &[
                    ("x-forwarded-for", "1.2.3.4"),
                    ("x-forwarded-for", "10.0.0.2")
                ]
            ),
            Some("1.2.3.4:0".into())
        );
        assert_eq!(
            client(xff, &[("x-forwarded-for", "10.0.0.3, 10.0.0.2")]),
            Some("10.0.0.3:0".into())
        );
        assert_eq!(client(xff, &[("x-forwarded-for", "unknown")]), None);
        assert_eq!(client(xff, &[]), None);
        // Only the configured header counts: a client's own `Forwarded` is not read.
        let both = [
            ("x-forwarded-for", "9.9.9.9"),
            (
                "forwarded",
                r#"for=192.0.2.60;proto=http, for="[2001:db8:cafe::17]:4711";by=10.0.0.1"#,
            ),
            ("forwarded", "For=10.2.3.4"),
            ("forwarded", "proto=https"),
            ("x-real-ip", "203.0.113.5"),
        ];
        assert_eq!(client(xff, &both), Some("9.9.9.9:0".into()));
        assert_eq!(
            client(ForwardedHeader::Forwarded, &both),
            Some("[2001:db8:cafe::17]:4711".into())
        );
        assert_eq!(
            client(ForwardedHeader::XRealIp, &both),
            Some("203.0.113.5:0".into())
        );
        // X-Real-IP is one address: a list is not believed.
        assert_eq!(
            client(
                ForwardedHeader::XRealIp,
                &[("x-real-ip", "1.2.3.4"), ("x-real-ip", "203.0.113.5")]
            ),
            None
        );
    }

    #[test]
    fn mapped_addresses_match_their_ipv4_network() {
        let t = trusted(&["127.0.0.1"]);
        assert!(t.contains("::ffff:127.0.0.1".parse().unwrap()));
        assert!(!t.contains("127.0.0.2".parse().unwrap()));
    }
}
