//! Automatic certificates over ACME (RFC 8555, through instant-acme): an account kept in the
//! state folder, one order per name proved with TLS-ALPN-01 on the TLS listeners (RFC 8737)
//! or HTTP-01 on a plain listener (RFC 8555 §8.3), renewal at about two-thirds of a certificate's lifetime, back-off after failures while
//! the current certificate keeps serving.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{AcmeChallenge, AcmeConfig};
use crate::metrics;
use crate::tls::AcmeCertificates;

/// The longest wait between attempts after failures.
const MAX_RETRY: Duration = Duration::from_secs(86_400);

/// One name's certificate and when to renew it.
struct Managed {
    name: String,
    renew_at: SystemTime,
    /// The wait after the next failure.
    retry: Duration,
}

/// Keep a certificate for every `[acme]` name in `store` until `stop`: load what the state
/// folder holds, order what is missing or due, and renew on schedule.
pub async fn run(config: AcmeConfig, store: Arc<AcmeCertificates>, stop: CancellationToken) {
    let first_retry = Duration::from_secs_f64(config.retry_secs);
    let mut managed: Vec<Managed> = config
        .names
        .iter()
        .map(|name| {
            let name = name.trim_end_matches('.').to_ascii_lowercase();
            let renew_at = match load_stored(&config.state_dir, &name) {
                Ok((key, renew_at)) => {
                    info!(name, "ACME certificate loaded from the state folder");
                    store.install(&name, key);
                    renew_at
                }
                Err(_) => SystemTime::now(),
            };
            Managed {
                name,
                renew_at,
                retry: first_retry,
            }
        })
        .collect();
    let mut account = None;
    loop {
        let Some(next) = managed.iter_mut().min_by_key(|m| m.renew_at) else {
            return;
        };
        let wait = next
            .renew_at
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
        let result = tokio::select! {
            r = obtain(&config, &mut account, &store, &next.name) => r,
            () = stop.cancelled() => return,
        };
        match result {
            Ok(renew_at) => {
                metrics::acme_order("issued");
                info!(name = next.name, "ACME certificate obtained");
                // A CA that backdates short certificates could put two-thirds in the past:
                // never order again sooner than a failure would.
                next.renew_at = renew_at.max(SystemTime::now() + first_retry);
                next.retry = first_retry;
            }
            Err(e) => {
                metrics::acme_order("failed");
                warn!(
                    name = next.name,
                    error = format!("{e:#}"),
                    retry_in_secs = next.retry.as_secs_f64(),
                    "ACME order failed; the current certificate (if any) keeps serving"
                );
                // A broken account (a CA reset, a stopped server) is made again next time.
                account = None;
                next.renew_at = SystemTime::now() + next.retry;
                next.retry = (next.retry * 2).min(MAX_RETRY);
            }
        }
    }
}

/// Order, validate, finalize and store a certificate for `name`; install it in `store`.
/// Returns when to renew it.
async fn obtain(
    config: &AcmeConfig,
    account: &mut Option<Account>,
    store: &AcmeCertificates,
    name: &str,
) -> anyhow::Result<SystemTime> {
    let account = match account {
        Some(a) => a,
        None => account.insert(load_or_create_account(config).await?),
    };
    let identifiers = [Identifier::Dns(name.to_owned())];
    let mut order = account
        .new_order(&NewOrder::new(&identifiers))
        .await
        .context("creating the order")?;
    let mut authorizations = order.authorizations();
    // Challenge answers for this order, withdrawn when it is validated or fails.
    let mut answered = Answered {
        store,
        name,
        tokens: Vec::new(),
    };
    while let Some(authz) = authorizations.next().await {
        let mut authz = authz.context("reading an authorization")?;
        if authz.status == AuthorizationStatus::Valid {
            continue;
        }
        let mut challenge = match config.challenge {
            AcmeChallenge::TlsAlpn01 => {
                let challenge = authz
                    .challenge(ChallengeType::TlsAlpn01)
                    .context("the CA offers no tls-alpn-01 challenge")?;
                let digest = challenge.key_authorization().digest();
                store.set_challenge(name, Some(challenge_certificate(name, digest.as_ref())?));
                challenge
            }
            AcmeChallenge::Http01 => {
                let challenge = authz
                    .challenge(ChallengeType::Http01)
                    .context("the CA offers no http-01 challenge")?;
                let answer = challenge.key_authorization().as_str().to_owned();
                store.set_http_token(&challenge.token, Some(answer));
                answered.tokens.push(challenge.token.clone());
                challenge
            }
        };
        challenge
            .set_ready()
            .await
            .context("telling the CA the challenge is ready")?;
    }
    let polling = RetryPolicy::new().timeout(Duration::from_secs(120));
    let status = order.poll_ready(&polling).await;
    drop(answered);
    match status.context("waiting for validation")? {
        OrderStatus::Ready => {}
        other => bail!("the order is {other:?} after validation"),
    }
    let key_pem = order.finalize().await.context("finalizing the order")?;
    let chain_pem = order
        .poll_certificate(&polling)
        .await
        .context("downloading the certificate")?;
    let (cert_file, key_file) = stored_files(&config.state_dir, name);
    write_private(&key_file, key_pem.as_bytes())?;
    write_private(&cert_file, chain_pem.as_bytes())?;
    let (key, renew_at) = load_stored(&config.state_dir, name)?;
    store.install(name, key);
    Ok(renew_at)
}

/// The challenge answers one order put in the store, taken out when it is dropped (the
/// order validated, failed or was cancelled), so failed orders leave nothing behind.
struct Answered<'a> {
    store: &'a AcmeCertificates,
    name: &'a str,
    tokens: Vec<String>,
}

impl Drop for Answered<'_> {
    fn drop(&mut self) {
        self.store.set_challenge(self.name, None);
        for token in &self.tokens {
            self.store.set_http_token(token, None);
        }
    }
}

/// The account of `state_dir/account.json`, or a new one saved there.
async fn load_or_create_account(config: &AcmeConfig) -> anyhow::Result<Account> {
    create_private_dir(&config.state_dir)?;
    let builder = || match &config.ca_file {
        Some(ca) => {
            Account::builder_with_root(ca).with_context(|| format!("acme.ca_file {}", ca.display()))
        }
        None => Account::builder().context("the ACME HTTP client"),
    };
    let saved = config.state_dir.join("account.json");
    if let Ok(text) = std::fs::read_to_string(&saved) {
        let credentials: AccountCredentials =
            serde_json::from_str(&text).with_context(|| format!("reading {}", saved.display()))?;
        return builder()?
            .from_credentials(credentials)
            .await
            .context("restoring the ACME account");
    }
    let contact: Vec<&str> = config.contact.iter().map(String::as_str).collect();
    let (account, credentials) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            config.directory_url.clone(),
            None,
        )
        .await
        .with_context(|| format!("creating an account at {}", config.directory_url))?;
    let text = serde_json::to_string(&credentials).context("serializing the account")?;
    write_private(&saved, text.as_bytes())?;
    info!(directory = config.directory_url, "ACME account created");
    Ok(account)
}

/// The TLS-ALPN-01 answer for `name`: a self-signed certificate for it carrying the key
/// authorization's digest in a critical acmeIdentifier extension (RFC 8737 §3).
fn challenge_certificate(name: &str, digest: &[u8]) -> anyhow::Result<Arc<CertifiedKey>> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .context("a challenge certificate's name")?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().context("a challenge key")?;
    let cert = params
        .self_signed(&key)
        .context("a challenge certificate")?;
    let key = PrivateKeyDer::from_pem_slice(key.serialize_pem().as_bytes())
        .context("the challenge key")?;
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(key)
        .context("the challenge key")?;
    Ok(Arc::new(CertifiedKey::new(
        vec![cert.der().clone()],
        signing,
    )))
}

/// `state_dir/<name>.pem` and `<name>-key.pem`.
fn stored_files(state_dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        state_dir.join(format!("{name}.pem")),
        state_dir.join(format!("{name}-key.pem")),
    )
}

/// The stored certificate of `name`, and when to renew it: two-thirds into its lifetime,
/// moved by up to 1/30 of the lifetime either way so that many names do not renew at once.
fn load_stored(state_dir: &Path, name: &str) -> anyhow::Result<(Arc<CertifiedKey>, SystemTime)> {
    let (cert_file, key_file) = stored_files(state_dir, name);
    let key = crate::tls::certified_key(&cert_file, &key_file)?;
    let leaf = &key.cert[0];
    let (not_before, not_after) = validity(leaf)?;
    metrics::certificate_not_after(name, not_after);
    let lifetime = (not_after - not_before).max(0) as f64;
    let jitter = (random_unit() - 0.5) * lifetime / 15.0;
    let renew_at = not_before as f64 + lifetime * 2.0 / 3.0 + jitter;
    let renew_at = UNIX_EPOCH + Duration::from_secs_f64(renew_at.max(0.0));
    Ok((Arc::new(key), renew_at))
}

fn validity(cert: &CertificateDer<'_>) -> anyhow::Result<(i64, i64)> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| anyhow::anyhow!("parsing the certificate: {e}"))?;
    let v = parsed.validity();
    Ok((v.not_before.timestamp(), v.not_after.timestamp()))
}

/// A number in [0, 1) from the system's random source (0.5 if it fails).
fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 4];
    match ring::rand::SystemRandom::new().fill(&mut bytes) {
        Ok(()) => f64::from(u32::from_le_bytes(bytes)) / (f64::from(u32::MAX) + 1.0),
        Err(_) => 0.5,
    }
}

fn create_private_dir(dir: &Path) -> anyhow::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder
        .create(dir)
        .with_context(|| format!("creating acme.state_dir {}", dir.display()))
}

/// Write `bytes` to `path` readable by its owner only (0600), through a temporary file and
/// a rename, so a crash never leaves half a key.
fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_files_are_owner_only() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        create_private_dir(&state).unwrap();
        let file = state.join("k.pem");
        write_private(&file, b"secret").unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&state), 0o700);
        assert_eq!(mode(&file), 0o600);
        assert_eq!(std::fs::read(&file).unwrap(), b"secret");
    }
}
