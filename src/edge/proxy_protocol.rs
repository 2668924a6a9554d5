//! The PROXY protocol (v1 text, v2 binary) on a listener behind an L4 load balancer: read the
//! header before TLS and HTTP, only from trusted sources, with `ppp` doing the parsing.
//!
//! Rules: a trusted source must send a header (a connection without one is closed: a load
//! balancer configured for PROXY always sends it, so its absence means a misconfiguration
//! that would otherwise make every client look like the balancer). Any other source is a
//! direct client and served as such, unless it opens with a PROXY header, which is refused
//! (a client must not choose its own address). The bytes are peeked, never consumed, until
//! the header is known complete, so what follows it stays in the socket for TLS or HTTP.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use ppp::v2::PROTOCOL_PREFIX as V2_SIGNATURE;
use ppp::{v1, v2, HeaderResult, PartialResult};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

const V1_SIGNATURE: &[u8] = b"PROXY ";
/// The longest v1 line, CRLF included (the specification's figure).
const V1_MAX_BYTES: usize = 107;

/// Largest header accepted: v1 is at most 107 bytes; v2 carries TLVs, which AWS and GCP
/// balancers keep to a few hundred bytes.
pub const MAX_HEADER_BYTES: usize = 4096;

/// What the start of a connection said about its client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proxied {
    /// A header from a trusted balancer with the client's and our address.
    Client {
        source: SocketAddr,
        destination: SocketAddr,
    },
    /// A trusted balancer's own connection (v2 `LOCAL`, v1 `UNKNOWN`: health checks).
    Local,
    /// No header from an untrusted source: a direct client.
    Direct,
}

/// Why a connection was closed before TLS and HTTP.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    #[error("PROXY header from an untrusted source")]
    Untrusted,
    #[error("a trusted proxy sent no PROXY header")]
    Missing,
    #[error("malformed PROXY header: {0}")]
    Malformed(String),
    #[error("connection closed before the PROXY header")]
    Closed,
    #[error("reading the PROXY header: {0}")]
    Io(#[from] io::Error),
}

impl Refused {
    /// Every `reason` of `wsgate_proxy_protocol_refused_total`: each `label()`, and `timeout`,
    /// which the listener records when no header came within the header read timeout.
    pub const LABELS: &'static [&'static str] = &[
        "untrusted_header",
        "missing_header",
        "bad_header",
        "closed",
        "timeout",
    ];

    /// The `reason` label of `wsgate_proxy_protocol_refused_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Untrusted => "untrusted_header",
            Self::Missing => "missing_header",
            Self::Malformed(_) => "bad_header",
            Self::Closed | Self::Io(_) => "closed",
        }
    }
}

/// Read the connection's PROXY header, if `trusted` says one must come, or check that none
/// comes from an untrusted source. The caller bounds it with the header timeout.
pub async fn read(stream: &mut TcpStream, trusted: bool) -> Result<Proxied, Refused> {
    let mut buf = vec![0u8; MAX_HEADER_BYTES];
    let mut seen = 0;
    let mut pause = Duration::from_millis(1);
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(Refused::Closed);
        }
        let bytes = &buf[..n];
        let decided = if trusted {
            parse(bytes)?
        } else {
            match starts_like_a_header(bytes) {
                Some(true) => return Err(Refused::Untrusted),
                Some(false) => Some((0, Proxied::Direct)),
                None => None,
            }
        };
        if let Some((len, proxied)) = decided {
            // Consume exactly the header; the rest stays for TLS or HTTP.
            stream.read_exact(&mut buf[..len]).await?;
            return Ok(proxied);
        }
        if n == buf.len() {
            return Err(Refused::Malformed(format!(
                "longer than {MAX_HEADER_BYTES} bytes"
            )));
        }
        // The header is split over segments (a sender should not, but may): peek returns at
        // once while any byte waits, so wait a little for the rest instead of spinning.
        if n == seen {
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
        }
        seen = n;
    }
}

/// `Some(true)`: a PROXY signature; `Some(false)`: certainly not one; `None`: too few bytes.
fn starts_like_a_header(bytes: &[u8]) -> Option<bool> {
    let mut undecided = false;
    for sig in [V1_SIGNATURE, V2_SIGNATURE] {
        let k = bytes.len().min(sig.len());
        if bytes[..k] == sig[..k] {
            if k == sig.len() {
                return Some(true);
            }
            undecided = true;
        }
    }
    (!undecided).then_some(false)
}

/// A complete header: its length and what it says. `None`: more bytes are needed.
fn parse(bytes: &[u8]) -> Result<Option<(usize, Proxied)>, Refused> {
    if starts_like_a_header(bytes) == Some(false) {
        return Err(Refused::Missing);
    }
    let header = HeaderResult::parse(bytes);
    if header.is_incomplete() {
        // A v1 line ends at its CRLF within 107 bytes: past that, more bytes cannot help.
        let v1_line_done = bytes.starts_with(V1_SIGNATURE)
            && (bytes.len() >= V1_MAX_BYTES || bytes.contains(&b'\n'));
        if v1_line_done {
            return Err(Refused::Malformed("bad v1 line".into()));
        }
        return Ok(None);
    }
    Ok(Some(match header {
        HeaderResult::V1(Ok(h)) => (
            h.header.len(),
            match h.addresses {
                v1::Addresses::Tcp4(a) => Proxied::Client {
                    source: (a.source_address, a.source_port).into(),
                    destination: (a.destination_address, a.destination_port).into(),
                },
                v1::Addresses::Tcp6(a) => Proxied::Client {
                    source: (a.source_address, a.source_port).into(),
                    destination: (a.destination_address, a.destination_port).into(),
                },
                v1::Addresses::Unknown => Proxied::Local,
            },
        ),
        HeaderResult::V2(Ok(h)) => (
            h.len(),
            match (h.command, h.addresses) {
                (v2::Command::Local, _) => Proxied::Local,
                (v2::Command::Proxy, v2::Addresses::IPv4(a)) => Proxied::Client {
                    source: (a.source_address, a.source_port).into(),
                    destination: (a.destination_address, a.destination_port).into(),
                },
                (v2::Command::Proxy, v2::Addresses::IPv6(a)) => Proxied::Client {
                    source: (a.source_address, a.source_port).into(),
                    destination: (a.destination_address, a.destination_port).into(),
                },
                // UNIX or unspecified families say nothing usable about the client.
                (v2::Command::Proxy, _) => Proxied::Local,
            },
        ),
        HeaderResult::V1(Err(e)) => return Err(Refused::Malformed(e.to_string())),
        HeaderResult::V2(Err(e)) => return Err(Refused::Malformed(e.to_string())),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_lists_every_refusal_label() {
        for refused in [
            Refused::Untrusted,
            Refused::Missing,
            Refused::Malformed("x".into()),
            Refused::Closed,
            Refused::Io(io::Error::other("x")),
        ] {
            assert!(Refused::LABELS.contains(&refused.label()), "{refused:?}");
        }
    }

    #[test]
    fn signatures_are_told_apart_from_http_and_tls() {
        assert_eq!(starts_like_a_header(b"GET / HTTP/1.1\r\n"), Some(false));
        assert_eq!(starts_like_a_header(b"\x16\x03\x01"), Some(false));
        assert_eq!(starts_like_a_header(b"PUT /"), Some(false));
        assert_eq!(starts_like_a_header(b"PRO"), None);
        assert_eq!(starts_like_a_header(b"\r\n\r\n"), None);
        assert_eq!(starts_like_a_header(b"PROXY TCP4"), Some(true));
        assert_eq!(starts_like_a_header(V2_SIGNATURE), Some(true));
    }

    #[test]
    fn v1_and_v2_give_the_client_and_the_rest_stays() {
        let v1 = b"PROXY TCP4 192.0.2.1 198.51.100.2 51000 443\r\nGET /";
        let (len, p) = parse(v1).unwrap().unwrap();
        assert_eq!(&v1[len..], b"GET /");
        assert_eq!(
            p,
            Proxied::Client {
                source: "192.0.2.1:51000".parse().unwrap(),
                destination: "198.51.100.2:443".parse().unwrap()
            }
        );
        assert_eq!(parse(&v1[..20]).unwrap(), None);
        let addrs = crate::backend::ProxyAddrs {
            source: "[2001:db8::1]:4000".parse().unwrap(),
            destination: "[2001:db8::2]:443".parse().unwrap(),
        };
        let mut v2 = addrs.v2_header().unwrap();
        let header_len = v2.len();
        v2.extend_from_slice(b"\x16\x03");
        let (len, p) = parse(&v2).unwrap().unwrap();
        assert_eq!(len, header_len);
        assert_eq!(
            p,
            Proxied::Client {
                source: addrs.source,
                destination: addrs.destination
            }
        );
        assert!(matches!(
            parse(b"GET / HTTP/1.1\r\n"),
            Err(Refused::Missing)
        ));
        let bad = parse(b"PROXY TCP4 nonsense here\r\n");
        assert!(matches!(bad, Err(Refused::Malformed(_))), "{bad:?}");
    }
}
