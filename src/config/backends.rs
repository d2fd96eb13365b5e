//! Backend sections of the configuration (`[backends.*]`) and the watcher (`[watch]`).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendsConfig {
    pub webhook: WebhookConfig,
    pub kafka: KafkaBackendConfig,
    pub upsert_entity: UpsertEntityConfig,
    pub azure_devops: AzureDevopsConfig,
    pub gitlab: GitlabConfig,
    pub github: GithubConfig,
}

/// WEBHOOK backend: one HTTP request per attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WebhookConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
    /// Secret (in `[secrets]`) that signs every request the way Port signs its webhooks:
    /// `X-Port-Timestamp` and `X-Port-Signature: v1,base64(HMAC-SHA256(secret,
    /// "<timestamp>.<body>"))`, over the exact bytes sent. Unset: `port.client_secret`
    /// when it is configured, else no signature.
    pub signing_secret: Option<String>,
    /// Verify the TLS certificates of webhook destinations. Turn off only for test
    /// servers with self-signed certificates (Port agent: `WEBHOOK_VERIFY_SSL`).
    pub verify_tls: bool,
    /// More trusted CA certificates: files, or directories whose `*.crt` and `*.pem`
    /// files (one level of subdirectories too) are read, on top of the system's store
    /// (which `SSL_CERT_FILE` and `SSL_CERT_DIR` extend). The defaults are where the
    /// agent's image collects them, including Helm's `selfSignedCertificate` mount; a
    /// path that does not exist is skipped.
    pub ca_certificates: Vec<String>,
    /// Where event-chosen URLs may go (see `crate::policy`). Default: no loopback,
    /// link-local, private, multicast or unspecified addresses.
    pub destinations: crate::policy::DestinationsConfig,
}

/// The CA directories the Port agent's image reads at start.
pub const DEFAULT_CA_PATHS: [&str; 2] = [
    "/usr/local/share/ca-certificates",
    "/usr/share/ca-certificates",
];

impl Default for WebhookConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        WebhookConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            retry: pool.retry,
            breaker: pool.breaker,
            rate_limit: pool.rate_limit,
            signing_secret: None,
            verify_tls: true,
            ca_certificates: DEFAULT_CA_PATHS.map(String::from).to_vec(),
            destinations: Default::default(),
        }
    }
}

/// GITHUB backend: workflow dispatches, followed to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GithubConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
    /// REST API root; GitHub Enterprise Server: `https://HOST/api/v3`.
    pub api_url: String,
    /// Secret holding a token with `actions: write` (and read, to follow runs).
    pub token_secret: Option<String>,
    /// GitHub App id; with `app_private_key_secret`, the App authenticates instead of
    /// `token_secret` (installation tokens are fetched per repository and cached).
    pub app_id: Option<String>,
    /// Secret holding the App's private key (PEM; a `{ file = "…" }` secret suits it).
    pub app_private_key_secret: Option<String>,
    /// Branch to dispatch when `workflowInputs.ref` is absent; unset: the repository's
    /// default branch.
    pub default_ref: Option<String>,
}

impl Default for GithubConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        GithubConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            retry: pool.retry,
            breaker: pool.breaker,
            rate_limit: pool.rate_limit,
            api_url: "https://api.github.com".into(),
            token_secret: None,
            app_id: None,
            app_private_key_secret: None,
            default_ref: None,
        }
    }
}

/// GITLAB backend: pipeline triggers, followed to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GitlabConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
    /// GitLab base URL (self-managed instances: their own URL).
    pub base_url: String,
    /// Trigger-token secret per project path (`"group/sub/project" = "secret_name"`).
    /// Without an entry, the secret named by the path with `/` turned into `_` is used.
    pub trigger_tokens: BTreeMap<String, String>,
    /// Secret holding a token with `read_api`, sent as `PRIVATE-TOKEN` when following
    /// pipelines. Unset: pipelines are not followed and runs stay IN_PROGRESS.
    pub read_token_secret: Option<String>,
}

impl Default for GitlabConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        GitlabConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            retry: pool.retry,
            breaker: pool.breaker,
            rate_limit: pool.rate_limit,
            base_url: "https://gitlab.com".into(),
            trigger_tokens: BTreeMap::new(),
            read_token_secret: None,
        }
    }
}

/// Following asynchronous runs (GitLab pipelines) to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct WatchConfig {
    /// Time between polls of one run (longer when the provider asks).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Most polls in flight at once.
    pub max_concurrent_polls: usize,
    /// Most runs followed at once; past it, a run is reported as not followed.
    pub max_watches: usize,
    /// A run still not finished after this long fails with "gave up".
    #[serde(with = "humantime_serde")]
    pub max_duration: Duration,
    /// Longest one poll may take; past it the poll counts as failed (and is retried).
    #[serde(with = "humantime_serde")]
    pub poll_timeout: Duration,
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
            poll_timeout: Duration::from_secs(30),
            poll_interval: Duration::from_secs(10),
            max_concurrent_polls: 16,
            max_watches: 10_000,
            max_duration: Duration::from_secs(24 * 3600),
        }
    }
}

/// AZURE_DEVOPS backend: Incoming WebHook service connections.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AzureDevopsConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
    /// Organisation URLs are `{base_url}/{org}`; change it for Azure DevOps Server.
    pub base_url: String,
    /// Name of the secret (in `[secrets]`) that signs requests; unset sends no signature.
    pub secret: Option<String>,
    /// Header the service connection checks (Port sends `x-port-signature`).
    pub signature_header: String,
}

impl Default for AzureDevopsConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        AzureDevopsConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            retry: pool.retry,
            breaker: pool.breaker,
            rate_limit: pool.rate_limit,
            base_url: "https://dev.azure.com".into(),
            secret: None,
            signature_header: "x-port-signature".into(),
        }
    }
}

/// KAFKA backend: produce the rendered payload to a topic.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaBackendConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
    /// Topic for actions that do not name one (`invocationMethod.topic`).
    pub topic: String,
    /// Topics an event may name in `invocationMethod.topic`, besides `topic`. None of
    /// switchyard's own topics (triggers, inputs, status, DLQ, watches) may be listed,
    /// and a listed topic must exist: no topic is created on an event's behalf.
    pub topics: Vec<String>,
}

impl Default for KafkaBackendConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        KafkaBackendConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            retry: pool.retry,
            breaker: pool.breaker,
            rate_limit: pool.rate_limit,
            topic: "switchyard.actions".into(),
            topics: Vec::new(),
        }
    }
}

/// UPSERT_ENTITY backend: write entities to a compacted topic, optionally to a catalog.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct UpsertEntityConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
    /// Compacted topic, key `blueprint/identifier`; created (compacted) when missing.
    pub topic: String,
    /// Optional catalog API: `PUT {catalog_url}/blueprints/{bp}/entities/{id}`; when set,
    /// its response decides the run's status.
    pub catalog_url: Option<String>,
    /// Name of the secret sent as `Authorization: Bearer …` to the catalog.
    pub catalog_token_secret: Option<String>,
}

impl Default for UpsertEntityConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        UpsertEntityConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            retry: pool.retry,
            breaker: pool.breaker,
            rate_limit: pool.rate_limit,
            topic: "switchyard.entities".into(),
            catalog_url: None,
            catalog_token_secret: None,
        }
    }
}

/// Bounds of one backend's worker pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PoolConfig {
    /// Most attempts of this backend running at once, across partitions.
    pub concurrency: usize,
    /// Limit of one attempt (connect, send, and read the response).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub breaker: BreakerConfig,
    pub rate_limit: RateLimitConfig,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            concurrency: 64,
            timeout: Duration::from_secs(30),
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            rate_limit: RateLimitConfig::default(),
        }
    }
}

/// A circuit breaker per destination (`host:port`) of one backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct BreakerConfig {
    pub enabled: bool,
    /// Consecutive transient failures (timeouts, connection errors, 5xx) that open it.
    pub failures: u32,
    /// How long it stays open before one probe attempt is let through.
    #[serde(with = "humantime_serde")]
    pub open_for: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            enabled: true,
            failures: 5,
            open_for: Duration::from_secs(30),
        }
    }
}

/// A token-bucket rate limit on one backend's attempts.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct RateLimitConfig {
    /// Attempts per second; 0 (the default) means no limit.
    pub per_second: f64,
    /// Attempts allowed at once after an idle spell; default: `per_second` (at least 1).
    pub burst: Option<u32>,
    /// One bucket per destination (`host:port`) instead of one for the whole backend.
    pub per_host: bool,
}

impl PoolConfig {
    /// Problems with the protection settings, for validation.
    pub fn protection_problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.breaker.failures == 0 {
            p.push(format!("{section}.breaker.failures: must be at least 1"));
        }
        if self.breaker.open_for.is_zero() {
            p.push(format!(
                "{section}.breaker.open_for: must be greater than 0"
            ));
        }
        let r = &self.rate_limit;
        if !(r.per_second >= 0.0 && r.per_second.is_finite()) {
            p.push(format!(
                "{section}.rate_limit.per_second: must be a number ≥ 0 (0 = no limit)"
            ));
        }
        if r.burst == Some(0) {
            p.push(format!("{section}.rate_limit.burst: must be at least 1"));
        }
        p
    }
}

/// In-memory retries of one backend's transient failures.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct RetryConfig {
    /// Attempts in all, the first included (1 = no retries).
    pub max_attempts: u32,
    /// Backoff ceiling of the first retry; it doubles per retry up to `max_backoff`, and
    /// each wait is drawn uniformly below its ceiling (full jitter).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Longest single wait, also the cap on an honoured `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// HTTP statuses that are retried: codes (`"409"`) or classes (`"5xx"`). 401 and 403
    /// are credential failures and other statuses permanent.
    pub retry_statuses: Vec<String>,
    /// After a credential failure (401, 403) the destination pauses this long; its runs
    /// wait instead of failing, and the first attempt after the pause probes again. `0s`:
    /// a 401/403 fails the run at once (the default in Port mode, as the agent).
    #[serde(with = "humantime_serde")]
    pub credentials_pause: Duration,
    /// Longest a run waits on credential pauses before it fails (a destination that
    /// keeps answering 401/403 must not hold a partition for ever).
    #[serde(with = "humantime_serde")]
    pub credentials_max_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            retry_statuses: DEFAULT_RETRY_STATUSES.map(String::from).to_vec(),
            credentials_pause: Duration::from_secs(60),
            credentials_max_wait: Duration::from_secs(600),
        }
    }
}

impl RetryConfig {
    /// Whether `code` is in `retry_statuses`.
    pub fn retries(&self, code: u16) -> bool {
        self.retry_statuses.iter().any(|p| status_matches(p, code))
    }

    /// Problems with this section, for validation.
    pub fn problems(&self, section: &str) -> Vec<String> {
        let mut p = Vec::new();
        if self.max_attempts == 0 {
            p.push(format!("{section}.retry.max_attempts: must be at least 1"));
        }
        if self.credentials_max_wait.is_zero() {
            p.push(format!(
                "{section}.retry.credentials_max_wait: must be greater than 0"
            ));
        }
        if self.initial_backoff > self.max_backoff {
            p.push(format!(
                "{section}.retry.initial_backoff: must not exceed max_backoff"
            ));
        }
        for s in &self.retry_statuses {
            if !valid_status_pattern(s) {
                p.push(format!(
                    "{section}.retry.retry_statuses: {s:?} is not a status (\"503\") or class (\"5xx\")"
                ));
            }
        }
        p
    }
}

fn valid_status_pattern(p: &str) -> bool {
    let b = p.as_bytes();
    b.len() == 3
        && (b'1'..=b'5').contains(&b[0])
        && ((b[1].is_ascii_digit() && b[2].is_ascii_digit()) || (b[1] == b'x' && b[2] == b'x'))
}

/// The HTTP statuses worth another attempt unless a backend's `retry.retry_statuses`
/// says otherwise: request timeout, too early, too many requests, server errors.
pub const DEFAULT_RETRY_STATUSES: [&str; 4] = ["408", "425", "429", "5xx"];

/// Whether `code` is retried by default ([`DEFAULT_RETRY_STATUSES`]).
pub fn retried_by_default(code: u16) -> bool {
    DEFAULT_RETRY_STATUSES
        .iter()
        .any(|p| status_matches(p, code))
}

fn status_matches(pattern: &str, code: u16) -> bool {
    let text = code.to_string();
    match pattern.strip_suffix("xx") {
        Some(class) => text.starts_with(class),
        None => text == pattern,
    }
}

/// Backend sections carry their pool bounds (`concurrency`, `timeout`) inline.
macro_rules! inline_pool {
    ($($t:ty),*) => {$(
        impl $t {
            pub fn pool(&self) -> PoolConfig {
                PoolConfig {
                    concurrency: self.concurrency,
                    timeout: self.timeout,
                    retry: self.retry.clone(),
                    breaker: self.breaker.clone(),
                    rate_limit: self.rate_limit.clone(),
                }
            }
        }
    )*};
}

inline_pool!(
    WebhookConfig,
    GithubConfig,
    GitlabConfig,
    AzureDevopsConfig,
    KafkaBackendConfig,
    UpsertEntityConfig
);

/// Every backend kind, as events name them in `invocationMethod.type`.
pub const KINDS: &[&str] = &[
    "WEBHOOK",
    "GITHUB",
    "GITLAB",
    "KAFKA",
    "UPSERT_ENTITY",
    "AZURE_DEVOPS",
];
