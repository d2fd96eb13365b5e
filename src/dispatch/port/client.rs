//! A client of Port's API (reference §7.1): an access token from
//! `POST /v1/auth/access_token`, cached until a minute before it expires (and dropped on
//! a 401), then one call per request.
//!
//! Each call is one attempt, classified: 2xx is done; 408, 425, 429, 5xx and transport
//! errors are worth retrying (with the server's `Retry-After`); any other status is a
//! rejection that retrying cannot fix (an unknown or finished run, a malformed body).

use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::Value;

use crate::backends::error_chain;

/// How long a token is trusted when Port does not say (`expiresIn`).
const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(600);
/// Tokens are renewed this long before they expire.
const TOKEN_MARGIN: Duration = Duration::from_secs(60);

/// Why a call did not succeed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// Transient: retry after the wait (the server's, when it gave one).
    #[error("{why}")]
    Retry { why: String, wait: Option<Duration> },
    /// Port refused the request; retrying will not change it.
    #[error("HTTP {status}: {body}")]
    Rejected { status: u16, body: String },
}

/// Brokers and SASL credentials from `GET /v1/kafka-credentials`.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaCredentials {
    pub brokers: String,
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for KafkaCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaCredentials")
            .field("brokers", &self.brokers)
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

pub struct PortClient {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: String,
    token: tokio::sync::Mutex<Option<(String, Instant)>>,
}

impl PortClient {
    pub fn new(base: &str, client_id: &str, client_secret: &str) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(PortClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            token: tokio::sync::Mutex::new(None),
        })
    }

    /// One call: `method path` with a JSON body and a bearer token. A 401 renews the
    /// token and tries once more.
    pub async fn call(&self, method: Method, path: &str, body: &Value) -> Result<(), CallError> {
        self.request(method, path, Some(body)).await.map(drop)
    }

    /// [`call`](Self::call) that returns the answer's JSON (`null` when it is not JSON);
    /// `body` None sends no body (a GET).
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, CallError> {
        self.exchange(method, path, body, false).await
    }

    /// A call of the claim queue (POLLING), which carries `x-port-reserved-usage: true`.
    pub async fn reserved(
        &self,
        method: Method,
        path: &str,
        body: &Value,
    ) -> Result<Value, CallError> {
        self.exchange(method, path, Some(body), true).await
    }

    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        reserved: bool,
    ) -> Result<Value, CallError> {
        match self.send(false, &method, path, body, reserved).await {
            Err(CallError::Rejected { status: 401, .. }) => {
                self.send(true, &method, path, body, reserved).await
            }
            other => other,
        }
    }

    /// The org's Kafka brokers and SASL credentials (`GET /v1/kafka-credentials`), as
    /// the agent fetches them.
    pub async fn kafka_credentials(&self) -> Result<KafkaCredentials, CallError> {
        let answer = self
            .request(Method::GET, "/v1/kafka-credentials", None)
            .await?;
        let c = &answer["credentials"];
        let brokers: Vec<&str> = c["brokers"]
            .as_array()
            .map(|b| b.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        let text = |k: &str| c[k].as_str().unwrap_or_default().to_owned();
        if brokers.is_empty() {
            return Err(CallError::Rejected {
                status: 200,
                body: "the answer names no brokers (credentials.brokers)".into(),
            });
        }
        Ok(KafkaCredentials {
            brokers: brokers.join(","),
            username: text("username"),
            password: text("password"),
        })
    }

    async fn send(
        &self,
        fresh_token: bool,
        method: &Method,
        path: &str,
        body: Option<&Value>,
        reserved: bool,
    ) -> Result<Value, CallError> {
        let token = self.token(fresh_token).await?;
        let mut request = self
            .http
            .request(method.clone(), format!("{}{path}", self.base))
            .bearer_auth(&token);
        if reserved {
            request = request.header("x-port-reserved-usage", "true");
        }
        if let Some(b) = body {
            request = request.json(b);
        }
        classify(request.send().await).await
    }

    /// The cached token, or a new one (`fresh`: always a new one).
    async fn token(&self, fresh: bool) -> Result<String, CallError> {
        let mut slot = self.token.lock().await;
        if let Some((t, until)) = slot.as_ref() {
            if !fresh && Instant::now() < *until {
                return Ok(t.clone());
            }
        }
        let sent = self
            .http
            .post(format!("{}/v1/auth/access_token", self.base))
            .json(&serde_json::json!({"clientId": self.client_id, "clientSecret": self.client_secret}))
            .send()
            .await;
        let body = match classify(sent).await {
            Ok(b) => b,
            // Wrong credentials stay wrong, but the updates must not be dropped: retry
            // (slowly) until an operator fixes them.
            Err(CallError::Rejected { status, body }) => {
                tracing::error!(status, body = %body, "Port rejected the client credentials (port.client_id / client_secret)");
                return Err(CallError::Retry {
                    why: format!("access token refused: HTTP {status}: {body}"),
                    wait: Some(Duration::from_secs(30)),
                });
            }
            Err(e) => return Err(e),
        };
        let token = body
            .get("accessToken")
            .and_then(Value::as_str)
            .ok_or_else(|| CallError::Retry {
                why: "the access token answer has no accessToken".into(),
                wait: None,
            })?
            .to_owned();
        let life = body
            .get("expiresIn")
            .and_then(Value::as_u64)
            .map_or(DEFAULT_TOKEN_LIFE, Duration::from_secs);
        *slot = Some((
            token.clone(),
            Instant::now() + life.saturating_sub(TOKEN_MARGIN),
        ));
        Ok(token)
    }
}

async fn classify(sent: reqwest::Result<reqwest::Response>) -> Result<Value, CallError> {
    let response = sent.map_err(|e| CallError::Retry {
        why: format!("request failed: {}", error_chain(&e)),
        wait: None,
    })?;
    let status = response.status();
    let wait = crate::backends::http::wait_hint(response.headers(), Duration::from_secs(300));
    let bytes = crate::net::read_capped(response, crate::net::MAX_BODY)
        .await
        .map_err(|e| CallError::Retry {
            why: format!("reading the answer failed: {}", error_chain(&e)),
            wait: None,
        })?;
    let text = String::from_utf8_lossy(&bytes).into_owned();
    if status.is_success() {
        return Ok(serde_json::from_str(&text).unwrap_or(Value::Null));
    }
    let body: String = text.chars().take(1024).collect();
    match status.as_u16() {
        code if crate::config::retried_by_default(code) => {}
        _ => {
            return Err(CallError::Rejected {
                status: status.as_u16(),
                body,
            })
        }
    }
    Err(CallError::Retry {
        why: format!("HTTP {}: {body}", status.as_u16()),
        wait,
    })
}
