//! GitHub credentials: a token, or a GitHub App.
//!
//! App flow: an RS256 JWT signed with the App's private key (`iss` = app id, 9 minutes of
//! validity) → `GET /repos/{org}/{repo}/installation` → `POST
//! /app/installations/{id}/access_tokens`. Installation ids are cached per repository and
//! installation tokens until a minute before they expire; a 401 drops them.
//!
//! The JWT is assembled here (header, claims, RSASSA-PKCS1-v1_5 with SHA-256 from the
//! `rsa` crate) rather than through a JWT library, which would pull in every algorithm
//! family to sign one fixed kind of token.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use rsa::RsaPrivateKey;
use serde_json::{json, Value};
use sha2::Sha256;

use super::{http, Outcome, Report};

/// Refresh an installation token when less than this remains.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);

pub enum Auth {
    None,
    Token(String),
    App(Box<App>),
}

pub struct App {
    app_id: String,
    key: SigningKey<Sha256>,
    client: reqwest::Client,
    api: String,
    installations: Mutex<HashMap<String, u64>>,
    tokens: Mutex<HashMap<u64, (String, SystemTime)>>,
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

impl App {
    /// `pem`: the App's private key (PKCS#1 as GitHub issues it, or PKCS#8).
    pub fn new(app_id: &str, pem: &str, client: reqwest::Client, api: &str) -> anyhow::Result<App> {
        let key = RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| RsaPrivateKey::from_pkcs8_pem(pem))
            .map_err(|e| anyhow::anyhow!("GitHub App private key: {e}"))?;
        Ok(App {
            app_id: app_id.to_owned(),
            key: SigningKey::<Sha256>::new(key),
            client,
            api: api.to_owned(),
            installations: Mutex::new(HashMap::new()),
            tokens: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh App JWT (valid from a minute ago for nine minutes, within GitHub's ten).
    pub fn jwt(&self) -> String {
        let now = unix(SystemTime::now());
        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
        let claims = json!({"iat": now.saturating_sub(60), "exp": now + 540, "iss": self.app_id});
        let claims = URL_SAFE_NO_PAD.encode(claims.to_string());
        let input = format!("{header}.{claims}");
        let signature = self.key.sign(input.as_bytes()).to_bytes();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    async fn installation(&self, repo: &str) -> Result<u64, Report> {
        if let Some(id) = self
            .installations
            .lock()
            .expect("no panics under this lock")
            .get(repo)
        {
            return Ok(*id);
        }
        let url = format!("{}/repos/{repo}/installation", self.api);
        let req = self.client.get(&url).bearer_auth(self.jwt());
        let ex = http::exchange(github(req), &format!("GitHub App {repo}")).await?;
        if !ex.status.is_success() {
            let prefix = format!("GitHub App installation for {repo}: ");
            return Err(http::failure(&ex, &prefix));
        }
        let body = ex.body;
        let id = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_u64))
            .ok_or_else(|| provider_error(format!("GitHub App installation for {repo}: no id")))?;
        self.installations
            .lock()
            .expect("no panics under this lock")
            .insert(repo.to_owned(), id);
        Ok(id)
    }

    async fn token(&self, repo: &str) -> Result<String, Report> {
        let id = self.installation(repo).await?;
        if let Some((token, expires)) = self
            .tokens
            .lock()
            .expect("no panics under this lock")
            .get(&id)
        {
            if *expires > SystemTime::now() + REFRESH_MARGIN {
                return Ok(token.clone());
            }
        }
        let url = format!("{}/app/installations/{id}/access_tokens", self.api);
        let req = self.client.post(&url).bearer_auth(self.jwt());
        let ex = http::exchange(github(req), "GitHub App access token").await?;
        if !ex.status.is_success() {
            return Err(http::failure(&ex, "GitHub App access token: "));
        }
        let body = ex.body;
        let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let token = v
            .get("token")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                provider_error("GitHub App access token: no token in the response".into())
            })?
            .to_owned();
        let expires = v
            .get("expires_at")
            .and_then(Value::as_str)
            .and_then(|t| {
                time::OffsetDateTime::parse(t, &time::format_description::well_known::Rfc3339).ok()
            })
            .map(|t| UNIX_EPOCH + Duration::from_secs(t.unix_timestamp().max(0) as u64))
            .unwrap_or_else(|| SystemTime::now() + Duration::from_secs(3600));
        tracing::debug!(installation = id, "GitHub App installation token refreshed");
        self.tokens
            .lock()
            .expect("no panics under this lock")
            .insert(id, (token.clone(), expires));
        Ok(token)
    }

    fn forget(&self, repo: &str) {
        let id = self
            .installations
            .lock()
            .expect("no panics under this lock")
            .remove(repo);
        if let Some(id) = id {
            self.tokens
                .lock()
                .expect("no panics under this lock")
                .remove(&id);
        }
    }
}

fn provider_error(summary: String) -> Report {
    let mut r = Report::new(Outcome::Retryable, summary);
    r.error_class = Some("provider_response");
    r
}

/// Headers every GitHub REST call carries.
pub fn github(req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
    req.header("Accept", "application/vnd.github+json")
        .header("X-GitHub-Api-Version", "2022-11-28")
}

impl Auth {
    /// Add credentials for `repo` (`org/name`) to `req`.
    pub async fn apply(
        &self,
        req: reqwest::RequestBuilder,
        repo: &str,
    ) -> Result<reqwest::RequestBuilder, Report> {
        let req = github(req);
        Ok(match self {
            Auth::None => req,
            Auth::Token(t) => req.bearer_auth(t),
            Auth::App(app) => req.bearer_auth(app.token(repo).await?),
        })
    }

    /// The credentials for `repo` were rejected: forget cached App tokens.
    pub fn rejected(&self, repo: &str) {
        if let Auth::App(app) = self {
            app.forget(repo);
        }
    }
}
