//! The authorization code flow itself: to the provider with a fresh state, nonce and PKCE
//! verifier, and back to the callback, which redeems the code and verifies the ID token.

use anyhow::{bail, Context};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hyper::{Request, Response, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use tracing::info;

use super::{
    form_encode, now, redirect, Identity, Signin, FLOW_SECS, MAX_COOKIE_BYTES, MAX_GROUPS,
};
use crate::http_util::{query_value, Body};
use crate::logsafe::Escaped;
use crate::metrics;
use crate::policy::jwt::Claims;
use crate::policy::provider_client::post_form;

/// A sign-in under way, in the flow cookie.
#[derive(Serialize, Deserialize)]
struct Flow {
    state: String,
    nonce: String,
    verifier: String,
    back: String,
    exp: u64,
}

impl Signin {
    /// To the provider: a fresh state, nonce and PKCE verifier in the flow cookie.
    pub(super) async fn start(&self, back: &str) -> anyhow::Result<Response<Body>> {
        let endpoints = self.endpoints().await?;
        let flow = Flow {
            state: self.cookies.random_token(32)?,
            nonce: self.cookies.random_token(32)?,
            verifier: self.cookies.random_token(32)?,
            back: back.to_owned(),
            exp: now() + FLOW_SECS,
        };
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            flow.verifier.as_bytes(),
        ));
        let mut scopes: Vec<&str> = vec!["openid"];
        scopes.extend(
            self.config
                .scopes
                .iter()
                .map(String::as_str)
                .filter(|s| *s != "openid"),
        );
        let params = [
            ("response_type", "code"),
            ("client_id", &self.config.client_id),
            ("redirect_uri", &self.config.redirect_url),
            ("scope", &scopes.join(" ")),
            ("state", &flow.state),
            ("nonce", &flow.nonce),
            ("code_challenge", &challenge),
            ("code_challenge_method", "S256"),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        let authorize = endpoints.to_string();
        let sep = if authorize.contains('?') { '&' } else { '?' };
        let mut response = redirect(&format!("{authorize}{sep}{params}"));
        let sealed = self
            .cookies
            .seal(&self.flow_cookie, &serde_json::to_vec(&flow)?)?;
        self.set_cookie(&mut response, &self.flow_cookie, &sealed, FLOW_SECS, "/");
        Ok(response)
    }

    async fn endpoints(&self) -> anyhow::Result<Uri> {
        let set = self.key_set().context("no key set")?;
        if set.discovered().is_none() {
            let _ = set.fetch("signin").await;
        }
        Ok(set
            .discovered()
            .context("the provider's discovery document has no authorization and token endpoints")?
            .authorization_endpoint
            .clone())
    }

    /// Back from the provider: state, code, ID token, then the session cookie.
    pub(super) async fn callback<B>(
        &self,
        req: &Request<B>,
    ) -> Result<Response<Body>, (StatusCode, &'static str, String)> {
        let refused = |why: &'static str, detail: String| (StatusCode::BAD_REQUEST, why, detail);
        let query = req.uri().query();
        if let Some(error) = query_value(query, "error") {
            return Err((StatusCode::UNAUTHORIZED, "the provider refused", error));
        }
        let flow: Flow = self
            .cookie(req, &self.flow_cookie)
            .and_then(|v| self.cookies.open(&self.flow_cookie, v))
            .and_then(|plain| serde_json::from_slice(&plain).ok())
            .ok_or_else(|| refused("no sign-in under way in this browser", String::new()))?;
        if flow.exp < now() {
            return Err(refused("the sign-in took too long", String::new()));
        }
        let state = query_value(query, "state").unwrap_or_default();
        if !bool::from(state.as_bytes().ct_eq(flow.state.as_bytes())) {
            return Err(refused("state mismatch", String::new()));
        }
        let code = query_value(query, "code")
            .ok_or_else(|| refused("no authorization code", String::new()))?;
        let id_token = self.redeem(&code, &flow.verifier).await.map_err(|e| {
            (
                StatusCode::BAD_GATEWAY,
                "the token request failed",
                format!("{e:#}"),
            )
        })?;
        let claims = self.id_tokens.verify(&id_token).await.map_err(|e| {
            (
                StatusCode::UNAUTHORIZED,
                "the ID token was refused",
                e.to_string(),
            )
        })?;
        let nonce = claims.get("nonce").and_then(|n| n.as_str()).unwrap_or("");
        if !bool::from(nonce.as_bytes().ct_eq(flow.nonce.as_bytes())) {
            return Err((StatusCode::UNAUTHORIZED, "nonce mismatch", String::new()));
        }
        // Several audiences: the token must have been issued to this client (Core §3.1.3.7).
        if claims
            .get("aud")
            .and_then(|a| a.as_array())
            .is_some_and(|a| a.len() > 1)
            && claims.get("azp").and_then(|a| a.as_str()) != Some(&self.config.client_id)
        {
            return Err((StatusCode::UNAUTHORIZED, "azp mismatch", String::new()));
        }
        let identity = self.identity_of(&claims)?;
        let sealed = serde_json::to_vec(&identity)
            .map_err(anyhow::Error::from)
            .and_then(|plain| self.cookies.seal(&self.config.cookie_name, &plain))
            .map_err(|e| {
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "no session",
                    format!("{e:#}"),
                )
            })?;
        // Browsers drop cookies over about 4 KB without a word: say so here instead.
        if sealed.len() > MAX_COOKIE_BYTES {
            return Err((
                StatusCode::UNAUTHORIZED,
                "too many claims for a session cookie",
                format!("{} bytes", sealed.len()),
            ));
        }
        let mut response = redirect(&flow.back);
        self.set_cookie(
            &mut response,
            &self.config.cookie_name,
            &sealed,
            self.config.session_lifetime_secs,
            "/",
        );
        self.set_cookie(&mut response, &self.flow_cookie, "", 0, "/");
        info!(event = "signin", user = %Escaped(&identity.label()), "signed in");
        metrics::signed_in("ok");
        Ok(response)
    }

    fn identity_of(&self, claims: &Claims) -> Result<Identity, (StatusCode, &'static str, String)> {
        let text = |k: &str| claims.get(k).and_then(|v| v.as_str()).map(str::to_owned);
        let sub = text("sub").ok_or((
            StatusCode::UNAUTHORIZED,
            "the ID token has no sub",
            String::new(),
        ))?;
        let groups = match claims.get(&self.config.groups_claim) {
            Some(serde_json::Value::Array(list)) => list
                .iter()
                .filter_map(|g| g.as_str().map(str::to_owned))
                .take(MAX_GROUPS)
                .collect(),
            Some(serde_json::Value::String(one)) => vec![one.clone()],
            _ => Vec::new(),
        };
        Ok(Identity {
            sub,
            email: text("email"),
            email_verified: claims
                .get("email_verified")
                .and_then(|v| v.as_bool())
                .unwrap_or(false),
            name: text("name"),
            groups,
            exp: now() + self.config.session_lifetime_secs,
        })
    }

    /// The token request (authorization code grant, client secret, PKCE verifier): the ID token.
    async fn redeem(&self, code: &str, verifier: &str) -> anyhow::Result<String> {
        let set = self.key_set().context("no key set")?;
        let endpoint = set
            .discovered()
            .context("no token endpoint")?
            .token_endpoint
            .clone();
        let form = [
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", &self.config.redirect_url),
            ("code_verifier", verifier),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", form_encode(v)))
        .collect::<Vec<_>>()
        .join("&");
        let (tls, timeout) = set.client();
        let (status, body) = post_form(&endpoint, tls, timeout, &self.credentials, form).await?;
        if status != StatusCode::OK {
            bail!(
                "token endpoint answered {status}: {}",
                Escaped(&String::from_utf8_lossy(&body[..body.len().min(300)]))
            );
        }
        #[derive(Deserialize)]
        struct TokenResponse {
            id_token: String,
        }
        let tokens: TokenResponse =
            serde_json::from_slice(&body).context("token response without id_token")?;
        Ok(tokens.id_token)
    }
}
