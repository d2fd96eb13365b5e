//! Backends: one file per `invocationMethod.type`, plus the registry below.
//!
//! A backend performs **one attempt** of its I/O and classifies the result in a
//! [`Report`]. Timeouts, concurrency (and, later, retries and rate limits) belong to the
//! pool ([`crate::pool`]), not to the backend.

pub mod webhook;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::Config;
use crate::model::TriggerEvent;
use crate::pool::Pool;

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
        }
    }

    /// A malformed invocation: a permanent failure that names the field.
    pub fn invalid(field: &str, problem: impl std::fmt::Display) -> Self {
        let mut r = Report::new(
            Outcome::Permanent,
            format!("invocationMethod.{field}: {problem}"),
        );
        r.error_class = Some("invalid_invocation");
        r
    }
}

pub type AttemptFuture<'a> = Pin<Box<dyn Future<Output = Report> + Send + 'a>>;

/// One backend type.
pub trait Backend: Send + Sync + 'static {
    /// The `invocationMethod.type` this backend serves, e.g. `WEBHOOK`.
    fn kind(&self) -> &'static str;
    /// Perform one attempt.
    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a>;
}

/// A backend with its worker pool.
pub struct Registered {
    pub backend: Arc<dyn Backend>,
    pub pool: Pool,
}

/// All backends, by `invocationMethod.type`.
pub struct Registry {
    by_type: BTreeMap<&'static str, Registered>,
}

impl Registry {
    /// Build every backend from the configuration. Adding a backend is one line here.
    pub fn from_config(cfg: &Config) -> anyhow::Result<Registry> {
        let mut r = Registry {
            by_type: BTreeMap::new(),
        };
        r.add(
            Arc::new(webhook::Webhook::new(&cfg.backends.webhook)?),
            &cfg.backends.webhook,
        );
        Ok(r)
    }

    fn add(&mut self, backend: Arc<dyn Backend>, pool: &crate::config::PoolConfig) {
        let kind = backend.kind();
        self.by_type.insert(
            kind,
            Registered {
                backend,
                pool: Pool::new(kind, pool),
            },
        );
    }

    pub fn get(&self, kind: &str) -> Option<&Registered> {
        self.by_type.get(kind)
    }

    /// Comma-separated list of known types, for error messages.
    pub fn known(&self) -> String {
        self.by_type.keys().copied().collect::<Vec<_>>().join(", ")
    }
}
