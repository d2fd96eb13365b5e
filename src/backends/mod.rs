//! Backends: one file per `invocationMethod.type`, plus the registry below.
//!
//! A backend performs **one attempt** of its I/O and classifies the result in a
//! [`Report`]. Timeouts, concurrency, retries, pauses, the breaker and the rate limit
//! belong to the pool ([`crate::pool`]), not to the backend. Adding a backend is one file here plus
//! one line in [`Registry::from_config`].

pub mod azure_devops;
pub mod github;
pub mod github_auth;
pub mod gitlab;
pub mod http;
pub mod kafka;
pub mod upsert_entity;
pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::model::TriggerEvent;
use std::time::Duration;

use crate::model::RunStatus;

/// What a backend is asked to do: the rendered invocation of one run.
#[derive(Debug, Clone)]
pub struct Request {
    pub run_id: String,
    /// `action.invocationMethod` with every template rendered.
    pub invocation: Map<String, Value>,
    pub event: Arc<TriggerEvent>,
}

/// How one attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done; the run is SUCCESS.
    Succeeded,
    /// Accepted by an asynchronous backend; the run stays IN_PROGRESS until it reports back.
    Accepted,
    /// Transient failure (timeouts, 408, 425, 429, 5xx, connection errors).
    Retryable,
    /// Will not succeed on retry (other 4xx, malformed invocation).
    Permanent,
    /// The destination rejected our credentials (401, 403).
    CredentialsRejected,
}

impl Outcome {
    pub fn is_failure(self) -> bool {
        !matches!(self, Outcome::Succeeded | Outcome::Accepted)
    }

    /// Closed set of labels for logs, metrics and the DLQ error class.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Accepted => "accepted",
            Outcome::Retryable => "retryable",
            Outcome::Permanent => "permanent",
            Outcome::CredentialsRejected => "credentials_rejected",
        }
    }
}

/// The classified result of one attempt.
#[derive(Debug, Clone)]
pub struct Report {
    pub outcome: Outcome,
    /// One line for people: "HTTP 200 in 84 ms", "HTTP 503: upstream down".
    pub summary: String,
    /// The backend's response body, when there is one worth keeping.
    pub response: Option<Value>,
    /// A log line to publish (e.g. "request accepted: HTTP 202").
    pub log: Option<String>,
    pub link: Vec<String>,
    pub external_run_id: Option<String>,
    /// Finer error class for the DLQ header (e.g. `http_status`, `invalid_invocation`).
    pub error_class: Option<&'static str>,
    /// Remote work to follow to completion ([`crate::watch`]); the backend's own state.
    pub follow: Option<Value>,
    /// The HTTP status behind a failure, for the pool's configurable status classes.
    pub http_status: Option<u16>,
    /// How long the destination asked us to wait before retrying (`Retry-After`).
    pub retry_after: Option<std::time::Duration>,
    /// The HTTP response itself (WEBHOOK), for reports computed from it (Port's mapping).
    pub exchange: Option<Arc<http::Exchange>>,
}

impl Report {
    pub fn new(outcome: Outcome, summary: impl Into<String>) -> Self {
        Report {
            outcome,
            summary: summary.into(),
            response: None,
            log: None,
            link: Vec::new(),
            external_run_id: None,
            error_class: None,
            follow: None,
            http_status: None,
            retry_after: None,
            exchange: None,
        }
    }

    /// A malformed invocation: a permanent failure that names the field.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        Invalid::new(field, problem).into()
    }
}

/// A malformed invocation field; becomes a permanent-failure [`Report`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid(String);

impl Invalid {
    pub fn new(field: &str, problem: impl std::fmt::Display) -> Self {
        Invalid(format!("invocationMethod.{field}: {problem}"))
    }
}

impl From<Invalid> for Report {
    fn from(i: Invalid) -> Report {
        let mut r = Report::new(Outcome::Permanent, i.0);
        r.error_class = Some("invalid_invocation");
        r
    }
}

pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Report> + Send + 'a>>;
pub type FollowFuture<'a> = Pin<Box<dyn Future<Output = Progress> + Send + 'a>>;

/// What one poll of a followed run found.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Still running; `label` is the provider's state ("pending", "running"); `wait`, when
    /// set, is how long the provider asks us to wait before the next poll.
    Running {
        label: String,
        wait: Option<Duration>,
    },
    /// Done.
    Finished { status: RunStatus, summary: String },
    /// The provider asked us to wait (rate limit); poll again after this long.
    Wait(Duration),
    /// The poll failed (network, 5xx); retried with backoff.
    Failed(String),
}

/// One backend type.
pub trait Backend: Send + Sync + 'static {
    /// The `invocationMethod.type` this backend serves, e.g. `WEBHOOK`.
    fn kind(&self) -> &'static str;
    /// Perform one attempt.
    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a>;
    /// The destination (`host:port`) an attempt of `req` talks to, for the pool's
    /// per-destination breaker and rate limit. `None`: no such protection applies.
    fn destination(&self, _req: &Request) -> Option<String> {
        None
    }
    /// Poll remote work this backend started (only called with the `follow` state its
    /// own report returned).
    fn follow<'a>(&'a self, _state: &'a Value) -> FollowFuture<'a> {
        let kind = self.kind();
        Box::pin(async move {
            Progress::Finished {
                status: crate::model::RunStatus::Failure,
                summary: format!("{kind} runs cannot be followed"),
            }
        })
    }
}

/// `host:port` of an http(s) URL (the port explicit or the scheme's default).
pub fn host_port(url: &str) -> Option<String> {
    let u = reqwest::Url::parse(url).ok()?;
    Some(format!("{}:{}", u.host_str()?, u.port_or_known_default()?))
}

/// A backend with the settings of its worker pool (built by [`crate::pool::Pools`]).
pub struct Registered {
    pub backend: Arc<dyn Backend>,
    pub pool: crate::config::PoolConfig,
}

/// All backends, by `invocationMethod.type`.
pub struct Registry {
    by_type: BTreeMap<&'static str, Registered>,
}

impl Registry {
    /// Build every backend from the configuration. Adding a backend is one line here.
    pub fn from_config(
        cfg: &Config,
        producer: crate::kafka::publisher::SharedProducer,
        secrets: &Map<String, Value>,
    ) -> anyhow::Result<Registry> {
        let b = &cfg.backends;
        let topics = Arc::new(crate::kafka::topics::TopicGuard::new(&cfg.kafka));
        let mut r = Registry {
            by_type: BTreeMap::new(),
        };
        let signing =
            secret(secrets, b.webhook.signing_secret.as_ref()).or_else(|| cfg.port_secret());
        r.add(
            Arc::new(webhook::Webhook::new(&b.webhook, signing, cfg.port_mode())?),
            &b.webhook.pool(),
        );
        r.add(
            Arc::new(kafka::KafkaBackend::new(
                &b.kafka,
                producer.clone(),
                topics.clone(),
                cfg.own_topics(),
            )),
            &b.kafka.pool(),
        );
        r.add(
            Arc::new(github::Github::new(&b.github, secrets)?),
            &b.github.pool(),
        );
        r.add(
            Arc::new(gitlab::Gitlab::new(&b.gitlab, secrets)?),
            &b.gitlab.pool(),
        );
        r.add(
            Arc::new(azure_devops::AzureDevops::new(&b.azure_devops, secrets)?),
            &b.azure_devops.pool(),
        );
        r.add(
            Arc::new(upsert_entity::UpsertEntity::new(
                &b.upsert_entity,
                producer,
                topics,
                secrets,
            )?),
            &b.upsert_entity.pool(),
        );
        Ok(r)
    }

    fn add(&mut self, backend: Arc<dyn Backend>, pool: &crate::config::PoolConfig) {
        let kind = backend.kind();
        self.by_type.insert(
            kind,
            Registered {
                backend,
                pool: pool.clone(),
            },
        );
    }

    pub fn get(&self, kind: &str) -> Option<&Registered> {
        self.by_type.get(kind)
    }

    /// Every backend with its pool settings, by type.
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &Registered)> {
        self.by_type.iter().map(|(k, r)| (*k, r))
    }

    /// Every backend by type (for the watcher).
    pub fn backends(&self) -> BTreeMap<&'static str, Arc<dyn Backend>> {
        self.by_type
            .iter()
            .map(|(k, r)| (*k, r.backend.clone()))
            .collect()
    }
}

/// Port allows `synchronized` (and `agent`) as a bool or as a string such as "true".
pub fn flag(v: Option<&Value>) -> Result<bool, String> {
    match v {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(Value::String(s)) => match s.trim() {
            "true" => Ok(true),
            "false" | "" => Ok(false),
            other => Err(format!("expected true or false, got {other:?}")),
        },
        Some(other) => Err(format!("expected boolean, got {other}")),
    }
}

/// An error with its sources: "error sending request: connection refused".
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let text = inner.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        src = inner.source();
    }
    s
}

/// The value of the secret named `name` (config names it; `[secrets]` resolved it).
pub use crate::config::KINDS;

pub fn secret(secrets: &Map<String, Value>, name: Option<&String>) -> Option<String> {
    secrets
        .get(name?)
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// A required, non-empty string field of the invocation.
pub fn required_str<'a>(inv: &'a Map<String, Value>, field: &str) -> Result<&'a str, Invalid> {
    match inv.get(field) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s),
        None | Some(Value::Null) => Err(Invalid::new(field, "missing")),
        Some(Value::String(_)) => Err(Invalid::new(field, "empty string")),
        Some(other) => Err(Invalid::new(
            field,
            format!("expected string, got {}", crate::template::compact(other)),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_accept_bool_or_string() {
        assert_eq!(flag(Some(&Value::Bool(true))), Ok(true));
        assert_eq!(flag(Some(&Value::String("true".into()))), Ok(true));
        assert_eq!(flag(None), Ok(false));
        assert!(flag(Some(&Value::String("yes".into()))).is_err());
    }

    #[test]
    fn required_strings_name_the_field() {
        let inv: Map<String, Value> =
            serde_json::from_str(r#"{"a": "x", "b": "", "c": 3}"#).unwrap();
        assert_eq!(required_str(&inv, "a").unwrap(), "x");
        assert_eq!(
            Report::from(required_str(&inv, "b").unwrap_err()).summary,
            "invocationMethod.b: empty string"
        );
        assert_eq!(
            Report::from(required_str(&inv, "c").unwrap_err()).summary,
            "invocationMethod.c: expected string, got 3"
        );
        assert_eq!(
            Report::from(required_str(&inv, "d").unwrap_err()).summary,
            "invocationMethod.d: missing"
        );
    }
}
