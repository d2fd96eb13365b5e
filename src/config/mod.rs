//! Configuration: one TOML file, overridden by `SWITCHYARD_*` environment variables,
//! validated at start. Every problem is reported at once; `main` exits with 78 (EX_CONFIG).
//!
//! Environment overrides use `__` between path segments:
//! `SWITCHYARD_KAFKA__BROKERS=127.0.0.1:9092` sets `kafka.brokers`. A `SWITCHYARD_` name
//! without `__` (such as `SWITCHYARD_CONFIG`) is not an override. Values are read as TOML
//! scalars when they parse as one (`true`, `42`), else as strings.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Exit code for an invalid configuration (sysexits.h `EX_CONFIG`).
pub const EXIT_CONFIG: i32 = 78;

/// Prefix of environment overrides.
pub const ENV_PREFIX: &str = "SWITCHYARD_";

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub dispatch: DispatchConfig,
    pub templates: TemplatesConfig,
    pub actions: ActionsConfig,
    pub dlq: DlqConfig,
    pub backends: BackendsConfig,
    pub watch: WatchConfig,
    pub dedup: DedupConfig,
    /// Secrets, each read from an environment variable or a file (see `crate::secrets`).
    /// Templates see one as `.secrets.NAME` only when the run's destination matches its
    /// `hosts`/`backends` scope. Events can never supply secrets.
    pub secrets: BTreeMap<String, SecretConfig>,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub api: ApiConfig,
    pub avro: AvroConfig,
    pub port: PortConfig,
    pub run_timeout: RunTimeoutConfig,
    pub automations: AutomationsConfig,
}

/// The status API on the HTTP listener.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct ApiConfig {
    /// Bearer tokens the API accepts, each read like a secret (`{ env = "VAR" }` or
    /// `{ file = "/path" }`), with optional `scopes = ["read"]` or `["read", "write"]`
    /// (absent: both). None: the API is disabled (its routes answer 404).
    pub tokens: Vec<ApiTokenConfig>,
    /// Most log lines one run may receive through the API (later appends get 429).
    pub max_log_appends: u64,
    /// Longest a request may take, body included (`408` past it).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Most runs the run view remembers (oldest forgotten first).
    pub max_runs: usize,
    /// Most log lines kept per run in the view (later ones are counted, not kept).
    pub max_logs: usize,
    /// Most bytes of run state the view keeps (oldest runs forgotten first).
    pub max_view_bytes: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            tokens: Vec::new(),
            max_log_appends: 10_000,
            request_timeout: Duration::from_secs(30),
            max_runs: 100_000,
            max_logs: 1_000,
            max_view_bytes: 512 * 1024 * 1024,
        }
    }
}

impl ApiConfig {
    /// The configured tokens, read now.
    pub fn resolve_tokens(&self) -> Result<Vec<ApiToken>, ConfigErrors> {
        let mut out = Vec::new();
        let mut problems = Vec::new();
        for (i, entry) in self.tokens.iter().enumerate() {
            match entry.source.resolve() {
                Ok(t) if t.is_empty() => problems.push(format!("api.tokens[{i}]: is empty")),
                Ok(t) => out.push(ApiToken {
                    token: t,
                    read: entry
                        .scopes
                        .as_ref()
                        .is_none_or(|s| s.contains(&Scope::Read)),
                    write: entry
                        .scopes
                        .as_ref()
                        .is_none_or(|s| s.contains(&Scope::Write)),
                }),
                Err(e) => problems.push(format!("api.tokens[{i}]: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

/// The HTTP listener: metrics, health, the status API and the run board.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to listen on, `host:port`; empty disables the listener. In a container,
    /// use `0.0.0.0:8080`.
    pub listen: String,
    /// Serve the live run board at `/` (with `api.tokens`; without any, only on a loopback
    /// listener, read-only). It reads the whole status topic into the run view.
    pub board: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            board: true,
        }
    }
}

/// Duplicate suppression: a redelivered event whose run is already finished (or whose
/// non-idempotent dispatch already happened) is not dispatched again.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DedupConfig {
    pub enabled: bool,
    /// Most runs remembered; the oldest are forgotten first.
    pub max_runs: usize,
    /// Longest wait at start for the view of the status topic to catch up.
    #[serde(with = "humantime_serde")]
    pub catch_up: Duration,
}

impl Default for DedupConfig {
    fn default() -> Self {
        DedupConfig {
            enabled: true,
            max_runs: 200_000,
            catch_up: Duration::from_secs(60),
        }
    }
}

/// How events are ordered relative to each other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Ordering {
    /// Same ordering key (orderingKey, else record key, else run id): one after another.
    #[default]
    Key,
    /// One event at a time per partition.
    Partition,
    /// No ordering: every event may run in parallel.
    Unordered,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct DispatchConfig {
    pub ordering: Ordering,
    /// Most events of one partition in flight at once; a full partition is not read.
    pub partition_window: usize,
    /// Most bytes of records (key, value, headers) of one partition in flight at once;
    /// a partition past it is not read until events finish (one event always may be in
    /// flight, however large).
    pub partition_window_bytes: usize,
    /// How long revoke and shutdown wait for in-flight runs before committing.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// Events whose record is older than this are not dispatched; they fail as
    /// "expired". Unset: no limit (an event's own `deadline` still applies).
    #[serde(with = "humantime_serde")]
    pub max_event_age: Option<Duration>,
    /// Largest input record dispatched, in bytes (key, value and headers). The effective
    /// cap is the smaller of this and the DLQ topic's `max.message.bytes` less 64 KiB, so
    /// that every accepted record also fits the DLQ. Unset: the DLQ's bound alone.
    pub max_event_bytes: Option<usize>,
    /// How long a run's IN_PROGRESS mark ("dispatching to WEBHOOK") is held back: a run
    /// that finishes sooner gets its terminal update as its first and only status. `0s`
    /// writes the mark at dispatch. Runs of GITHUB, GITLAB and AZURE_DEVOPS always get
    /// it at dispatch (the duplicate ledger counts on it).
    #[serde(with = "humantime_serde")]
    pub in_progress_after: Duration,
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            ordering: Ordering::Key,
            partition_window: 512,
            partition_window_bytes: 8 * 1024 * 1024,
            shutdown_grace: Duration::from_secs(30),
            max_event_age: None,
            max_event_bytes: None,
            in_progress_after: Duration::from_secs(1),
        }
    }
}

/// Where an event's `invocationMethod` comes from (see `crate::actions`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActionsMode {
    /// From the event (Port's events carry it).
    #[default]
    Inline,
    /// From `actions.file`; events name an action and carry inputs only.
    Registered,
}

/// `[actions]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ActionsConfig {
    pub mode: ActionsMode,
    /// The registered actions (JSON), for `mode = "registered"`.
    pub file: Option<String>,
}

/// `[dlq]`: replays.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DlqConfig {
    /// Key of the MAC that `switchyard dlq replay` adds to a replayed record; the
    /// dispatcher honours the replay marker (no duplicate check, no age check) only with
    /// a valid MAC. Every dispatcher and the replaying operator need the same key.
    /// Unset: replays are refused, and markers are ignored.
    pub replay_key: Option<SecretSource>,
}

pub use crate::template::sandbox::TemplatesConfig;

mod automations;
mod backends;
mod kafka;
mod load;
mod port;
mod timeouts;
mod validate;

pub use automations::{AutomationsConfig, StartFrom};
pub use backends::*;
pub use kafka::*;
pub use port::{PollingConfig, PortConfig, Streamer, PORT_API};
pub use timeouts::RunTimeoutConfig;

/// One `api.tokens` entry.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiTokenConfig {
    #[serde(flatten)]
    pub source: SecretSource,
    /// What the token may do; absent: read and write (configs from before scopes keep
    /// working).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scopes: Option<Vec<Scope>>,
}

/// A status API permission.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// `GET` a run.
    Read,
    /// Report on a run (`PATCH`, `POST …/logs`).
    Write,
}

/// A token the status API accepts, read, with its scopes.
#[derive(Debug, Clone)]
pub struct ApiToken {
    pub token: String,
    pub read: bool,
    pub write: bool,
}

/// One `[secrets]` entry: where its value comes from, and where it may go.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SecretConfig {
    #[serde(flatten)]
    pub source: SecretSource,
    /// Destination hosts (names or `*.domain`) whose runs' templates may read it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hosts: Vec<String>,
    /// Backends (`WEBHOOK`, `GITHUB`, …) whose runs' templates may read it.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub backends: Vec<String>,
}

/// Where a secret's value comes from.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SecretSource {
    /// Name of an environment variable.
    Env(String),
    /// Path of a file; its content, without a trailing newline.
    File(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line (production).
    #[default]
    Json,
    /// Human-readable lines.
    Text,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `switchyard=debug,rdkafka=warn`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Json,
            level: "info".into(),
        }
    }
}

/// Every problem found in a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
pub struct ConfigErrors(pub Vec<String>);

impl Config {
    /// switchyard's own topics: every consumed topic, status, DLQ and watches.
    pub fn own_topics(&self) -> Vec<String> {
        let k = &self.kafka;
        let mut out: Vec<String> = self.input_topics().into_iter().map(|(t, _)| t).collect();
        out.extend([
            k.status_topic.clone(),
            k.dlq_topic.clone(),
            k.watches_topic.clone(),
        ]);
        out
    }

    /// The secrets that backend settings name, as (setting, secret name): backend
    /// credentials, which no template sees.
    pub fn credential_secrets(&self) -> Vec<(String, String)> {
        let b = &self.backends;
        let mut out: Vec<(String, String)> = [
            ("backends.webhook.signing_secret", &b.webhook.signing_secret),
            ("backends.github.token_secret", &b.github.token_secret),
            (
                "backends.github.app_private_key_secret",
                &b.github.app_private_key_secret,
            ),
            (
                "backends.gitlab.read_token_secret",
                &b.gitlab.read_token_secret,
            ),
            ("backends.azure_devops.secret", &b.azure_devops.secret),
            (
                "backends.upsert_entity.catalog_token_secret",
                &b.upsert_entity.catalog_token_secret,
            ),
        ]
        .into_iter()
        .filter_map(|(f, n)| n.clone().map(|n| (f.to_owned(), n)))
        .collect();
        for (project, name) in &b.gitlab.trigger_tokens {
            out.push((
                format!("backends.gitlab.trigger_tokens.\"{project}\""),
                name.clone(),
            ));
        }
        out
    }

    /// The formats status-topic readers decode (see `kafka.status_read_formats`).
    pub fn status_reads(&self) -> Vec<Format> {
        if self.kafka.status_read_formats.is_empty() {
            vec![self.kafka.status_format]
        } else {
            self.kafka.status_read_formats.clone()
        }
    }

    /// Every topic consumed, with its format: `triggers_topic` first, then `inputs`.
    pub fn input_topics(&self) -> Vec<(String, Format)> {
        let k = &self.kafka;
        std::iter::once((k.triggers_topic.clone(), k.triggers_format))
            .chain(k.inputs.iter().map(|i| (i.topic.clone(), i.format)))
            .collect()
    }

    /// The format of records read from `topic`.
    pub fn format_of(&self, topic: &str) -> Format {
        self.input_topics()
            .into_iter()
            .find(|(t, _)| t == topic)
            .map_or(self.kafka.triggers_format, |(_, f)| f)
    }

    /// The replay MAC key, read now.
    pub fn replay_key(&self) -> anyhow::Result<Option<Vec<u8>>> {
        match &self.dlq.replay_key {
            None => Ok(None),
            Some(s) => match s.resolve() {
                Ok(k) if k.len() >= 16 => Ok(Some(k.into_bytes())),
                Ok(_) => anyhow::bail!("dlq.replay_key: must be at least 16 bytes"),
                Err(e) => anyhow::bail!("dlq.replay_key: {e}"),
            },
        }
    }

    /// Whether a consumed topic carries Port's agent messages (the defaults of some
    /// policies follow Port's agent then).
    pub fn port_mode(&self) -> bool {
        self.input_topics().iter().any(|(_, f)| *f == Format::Port)
    }

    /// Port mode: `port.org_id` is set (the agent's `PORT_ORG_ID`). Port's Kafka is then
    /// read-only to switchyard, and the agent's semantics are the defaults.
    pub fn agent_mode(&self) -> bool {
        self.port.org_id.is_some()
    }

    /// The cluster of switchyard's own topics (status, DLQ, watches) and extra groups:
    /// `[kafka.output]` when set; none in Port mode without it (those topics are off);
    /// else the triggers' cluster.
    pub fn output_kafka(&self) -> Option<KafkaConfig> {
        match &self.kafka.output {
            Some(o) => Some(KafkaConfig {
                brokers: o.brokers.clone(),
                common: o.common.clone(),
                output: None,
                ..self.kafka.clone()
            }),
            None if self.agent_mode() => None,
            None => Some(self.kafka.clone()),
        }
    }

    /// [`output_kafka`](Self::output_kafka), or an error that says why there is none
    /// (for the commands that read switchyard's own topics).
    pub fn own_topics_kafka(&self) -> Result<KafkaConfig, String> {
        self.output_kafka().ok_or_else(|| {
            "Port mode (port.org_id) without [kafka.output] has no status, DLQ or watches \
             topic: Port's Kafka is read-only to switchyard"
                .to_owned()
        })
    }

    /// The automations engine's consumer group.
    pub fn automations_group(&self) -> String {
        match self.automations.group_id.as_str() {
            "" => format!("{}.automations", self.kafka.group_id),
            g => g.to_owned(),
        }
    }

    /// The topic of entity changes the automations engine reads.
    pub fn automations_entities_topic(&self) -> String {
        match self.automations.entities_topic.as_str() {
            "" => self.backends.upsert_entity.topic.clone(),
            t => t.to_owned(),
        }
    }

    /// The topic automations emit to.
    pub fn automations_triggers_topic(&self) -> String {
        match self.automations.triggers_topic.as_str() {
            "" if self.agent_mode() => "switchyard.automations.triggers".into(),
            "" => self.kafka.triggers_topic.clone(),
            t => t.to_owned(),
        }
    }

    /// What stops the automations engine from running with this configuration.
    pub fn automation_problems(&self) -> Vec<String> {
        let mut p = self.automations.problems();
        if self.agent_mode() && self.kafka.output.is_none() {
            p.push("automations: in Port mode they need [kafka.output]: they read and write switchyard's own topics (entities, status, timers, triggers), and Port's Kafka is read-only".into());
        }
        if !self.agent_mode() && self.kafka.triggers_format == Format::Port {
            p.push("automations: kafka.triggers_format is \"port\"; emitted triggers are switchyard trigger events, so the triggers topic must be json or avro".into());
        }
        if self.actions.mode == ActionsMode::Registered && self.dlq.replay_key.is_none() {
            p.push("automations: actions.mode is \"registered\", which accepts an emitted trigger's invocationMethod only with the MAC made with dlq.replay_key; set dlq.replay_key".into());
        }
        p
    }

    /// The Port client secret, read now (validation checked that it resolves).
    pub fn port_secret(&self) -> Option<String> {
        self.port.client_secret.as_ref()?.resolve().ok()
    }

    /// Read every configured secret. Validation has already checked that each resolves.
    pub fn resolve_secrets(&self) -> Result<Map<String, Value>, ConfigErrors> {
        let mut out = Map::new();
        let mut problems = Vec::new();
        for (name, s) in &self.secrets {
            match s.source.resolve() {
                Ok(v) => {
                    out.insert(name.clone(), Value::String(v));
                }
                Err(e) => problems.push(format!("secrets.{name}: {e}")),
            }
        }
        if problems.is_empty() {
            Ok(out)
        } else {
            Err(ConfigErrors(problems))
        }
    }
}

impl SecretSource {
    pub fn resolve(&self) -> Result<String, String> {
        match self {
            SecretSource::Env(var) => {
                std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))
            }
            SecretSource::File(path) => std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|e| format!("cannot read {path}: {e}")),
        }
    }
}

#[cfg(test)]
mod tests;
