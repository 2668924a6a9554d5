//! HTTP/1.1 exchanges with an OpenID provider, one connection each over rustls: GET a
//! discovery document or key set (`jwks`), POST a token request (`signin`).

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// The largest key set or discovery document read, in bytes.
const MAX_DOCUMENT_BYTES: usize = 256 * 1024;

/// `localhost` or a loopback address (IPv6 in brackets or not).
pub(super) fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost")
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
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
pub(super) async fn get(
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
pub(super) async fn post_form(
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
    fn max_age_is_read_and_no_cache_is_zero() {
        assert_eq!(
            max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(max_age("no-cache"), Some(Duration::ZERO));
        assert_eq!(max_age("private"), None);
    }
}
