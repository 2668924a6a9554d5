//! Who the client is, as far as the gateway could verify: its address and the names of a
//! client certificate the listener checked. `edge` fills it per connection; `policy` reads it.

use std::net::SocketAddr;
use std::sync::Arc;

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

/// What a request handler knows of its connection.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub peer: SocketAddr,
    /// The client came over TLS (`wss`).
    pub tls: bool,
    /// The client certificate the listener verified (mTLS), if one was sent.
    pub client_cert: Option<Arc<ClientCert>>,
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
