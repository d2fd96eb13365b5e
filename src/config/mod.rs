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
}

/// Record format of a topic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    #[default]
    Json,
    Avro,
    /// Port's agent messages: run envelopes and changelog messages (see `[port]`).
    Port,
}

/// The consumer group protocol of the dispatcher's group members.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupProtocol {
    /// The classic protocol (JoinGroup/SyncGroup) with `cooperative-sticky` assignment:
    /// a rebalance moves only the partitions that change owner, and the others keep
    /// flowing. Works on every broker, including managed clusters older than Kafka 4.0;
    /// `session.timeout.ms` and `heartbeat.interval.ms` are client settings.
    #[default]
    Classic,
    /// KIP-848 (`group.protocol=consumer`, Kafka 4.0 and later): the broker assigns
    /// partitions incrementally and owns the session timeout and heartbeat interval
    /// (`group.consumer.*` broker settings), so the client settings for them are refused.
    Consumer,
}

/// librdkafka consumer settings that `group.protocol=consumer` refuses, and where the
/// setting lives under KIP-848.
const CLASSIC_ONLY: [(&str, &str); 4] = [
    (
        "session.timeout.ms",
        "set by the broker: group.consumer.session.timeout.ms",
    ),
    (
        "heartbeat.interval.ms",
        "set by the broker: group.consumer.heartbeat.interval.ms",
    ),
    (
        "partition.assignment.strategy",
        "the broker assigns: group.remote.assignor names its assignor",
    ),
    ("group.protocol.type", "classic protocol only"),
];

/// One more topic to consume besides `kafka.triggers_topic`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputTopic {
    pub topic: String,
    #[serde(default)]
    pub format: Format,
}

/// The Avro wire format: schema ids and the optional schema registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct AvroConfig {
    /// Confluent-compatible schema registry (`GET /schemas/ids/{id}`, `POST
    /// /subjects/{topic}-value/versions`). Unset: the bundled schemas are used under the
    /// ids below.
    pub registry_url: Option<String>,
    /// Id of the bundled trigger schema when there is no registry.
    pub trigger_schema_id: u32,
    /// Id of the bundled run-update schema (v2) when there is no registry.
    pub run_update_schema_id: u32,
    /// Id that run updates written with the v1 schema carry (read only), when there is
    /// no registry.
    pub run_update_v1_schema_id: u32,
}

impl Default for AvroConfig {
    fn default() -> Self {
        AvroConfig {
            registry_url: None,
            trigger_schema_id: 1,
            run_update_schema_id: 3,
            run_update_v1_schema_id: 2,
        }
    }
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

/// The HTTP listener (metrics and health; the status API later).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct HttpConfig {
    /// Address to listen on, `host:port`; empty disables the listener. In a container,
    /// use `0.0.0.0:8080`.
    pub listen: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; scale out by starting more members with the same id.
    pub group_id: String,
    /// Group protocol: `classic` (default; cooperative-sticky assignment) or `consumer`
    /// (KIP-848, brokers 4.0 and later). For rolling restarts without a rebalance, give
    /// each member a stable `kafka.consumer."group.instance.id"` (static membership).
    pub group_protocol: GroupProtocol,
    pub triggers_topic: String,
    pub status_topic: String,
    pub dlq_topic: String,
    /// Compacted topic holding the runs being followed (GitHub workflows, GitLab
    /// pipelines), so that a restart or a rebalance resumes them.
    pub watches_topic: String,
    /// Create missing topics at start (through the admin API). When false, missing topics
    /// are a startup error that names them.
    pub create_topics: bool,
    /// Partitions of topics that switchyard creates.
    pub topic_partitions: i32,
    /// Replication factor of topics that switchyard creates.
    pub topic_replication: i32,
    /// Wire format of the triggers topic: `json`, or `avro` (Confluent framing; see
    /// `[avro]`).
    pub triggers_format: Format,
    /// Wire format of the run updates switchyard writes (`json` or `avro`).
    pub status_format: Format,
    /// Formats the readers of the status topic decode (the duplicate ledger, the run
    /// view, `runs`). Empty: `status_format` only. During a migration from JSON to Avro
    /// list both (`["json", "avro"]`); a record in a format not listed is skipped, so an
    /// Avro record is never decoded in a JSON deployment.
    pub status_read_formats: Vec<Format>,
    /// More topics to consume, each with its own format, e.g.
    /// `[{ topic = "org_X.change.log", format = "port" }]`.
    pub inputs: Vec<InputTopic>,
    /// librdkafka options for every client, passed through unchanged.
    #[serde(deserialize_with = "options")]
    pub common: BTreeMap<String, String>,
    /// librdkafka options for the consumer only.
    #[serde(deserialize_with = "options")]
    pub consumer: BTreeMap<String, String>,
    /// librdkafka options for the producer only.
    #[serde(deserialize_with = "options")]
    pub producer: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "127.0.0.1:9092".into(),
            group_id: "switchyard".into(),
            group_protocol: GroupProtocol::Classic,
            triggers_topic: "switchyard.triggers".into(),
            status_topic: "switchyard.status".into(),
            dlq_topic: "switchyard.dlq".into(),
            watches_topic: "switchyard.watches".into(),
            create_topics: false,
            triggers_format: Format::Json,
            status_format: Format::Json,
            status_read_formats: Vec::new(),
            inputs: Vec::new(),
            topic_partitions: 6,
            topic_replication: 1,
            common: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
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
    /// Most events of one partition in flight at once; a full partition is paused.
    pub partition_window: usize,
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
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            ordering: Ordering::Key,
            partition_window: 512,
            shutdown_grace: Duration::from_secs(30),
            max_event_age: None,
            max_event_bytes: None,
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

mod backends;
mod port;

pub use backends::*;
pub use port::{PortConfig, PORT_API};

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
    /// Load `path` (when given; `None` means defaults) and apply environment overrides
    /// from `env`, then validate.
    pub fn load(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigErrors(vec![format!("cannot read {}: {e}", p.display())]))?,
            None => String::new(),
        };
        Self::from_toml(&text, env)
    }

    /// Parse TOML text, apply overrides, validate.
    pub fn from_toml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigErrors> {
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("TOML syntax: {e}")]))?;
        let env: BTreeMap<String, String> = env.into_iter().collect();
        let mut problems = port::apply_agent_env(&mut root, &env);
        for (name, value) in env {
            // Only `SECTION__FIELD` names are overrides, so that variables such as
            // SWITCHYARD_CONFIG or a secret's SWITCHYARD_TOKEN are not mistaken for one.
            if let Some(path) = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__")) {
                if let Err(p) = apply_override(&mut root, path, &value) {
                    problems.push(format!("environment {name}: {p}"));
                }
            }
        }
        port::apply_org_defaults(&mut root);
        let mut unknown = Vec::new();
        let parsed: Result<Config, _> =
            serde_ignored::deserialize(toml::Value::Table(root), |path| {
                unknown.push(path.to_string())
            });
        problems.extend(unknown.into_iter().map(|p| format!("{p}: unknown field")));
        match parsed {
            Ok(cfg) => {
                problems.extend(cfg.problems());
                if problems.is_empty() {
                    Ok(cfg)
                } else {
                    Err(ConfigErrors(problems))
                }
            }
            Err(e) => {
                problems.push(e.to_string().trim().replace('\n', " "));
                Err(ConfigErrors(problems))
            }
        }
    }

    /// Semantic checks, all of them.
    fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        let k = &self.kafka;
        if k.brokers.trim().is_empty() {
            p.push("kafka.brokers: must name at least one broker".into());
        }
        if k.group_id.trim().is_empty() {
            p.push("kafka.group_id: must not be empty".into());
        }
        for (field, topic) in [
            ("kafka.triggers_topic", &k.triggers_topic),
            ("kafka.status_topic", &k.status_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.watches_topic", &k.watches_topic),
        ] {
            if let Err(why) = check_topic_name(topic) {
                p.push(format!("{field}: {why}"));
            }
        }
        for (field, topic) in [
            ("backends.kafka.topic", &self.backends.kafka.topic),
            (
                "backends.upsert_entity.topic",
                &self.backends.upsert_entity.topic,
            ),
        ] {
            if let Err(why) = check_topic_name(topic) {
                p.push(format!("{field}: {why}"));
            }
        }
        if let Some(url) = &self.backends.upsert_entity.catalog_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!(
                    "backends.upsert_entity.catalog_url: {url:?} is not an http(s) URL"
                ));
            }
        }
        for (field, name) in [
            (
                "backends.upsert_entity.catalog_token_secret",
                &self.backends.upsert_entity.catalog_token_secret,
            ),
            (
                "backends.azure_devops.secret",
                &self.backends.azure_devops.secret,
            ),
        ] {
            if let Some(name) = name.as_ref().filter(|n| !self.secrets.contains_key(*n)) {
                p.push(format!("{field}: no secret named {name:?} in [secrets]"));
            }
        }
        for (project, name) in &self.backends.gitlab.trigger_tokens {
            if !self.secrets.contains_key(name) {
                p.push(format!(
                    "backends.gitlab.trigger_tokens.\"{project}\": no secret named {name:?} in [secrets]"
                ));
            }
        }
        let gl = &self.backends.gitlab.base_url;
        if !(gl.starts_with("http://") || gl.starts_with("https://")) {
            p.push(format!(
                "backends.gitlab.base_url: {gl:?} is not an http(s) URL"
            ));
        }
        let w = &self.watch;
        if w.poll_interval.is_zero() || w.max_concurrent_polls == 0 || w.max_watches == 0 {
            p.push(
                "watch: poll_interval, max_concurrent_polls and max_watches must be above 0".into(),
            );
        }
        let ado = &self.backends.azure_devops;
        if !(ado.base_url.starts_with("http://") || ado.base_url.starts_with("https://")) {
            p.push(format!(
                "backends.azure_devops.base_url: {:?} is not an http(s) URL",
                ado.base_url
            ));
        }
        if reqwest::header::HeaderName::from_bytes(ado.signature_header.as_bytes()).is_err() {
            p.push(format!(
                "backends.azure_devops.signature_header: {:?} is not a valid header name",
                ado.signature_header
            ));
        }
        if k.triggers_topic == k.status_topic || k.triggers_topic == k.dlq_topic {
            p.push("kafka.triggers_topic: must differ from status_topic and dlq_topic".into());
        }
        p.extend(self.input_problems());
        if k.topic_partitions < 1 {
            p.push("kafka.topic_partitions: must be at least 1".into());
        }
        if k.topic_replication < 1 {
            p.push("kafka.topic_replication: must be at least 1".into());
        }
        for (key, owner) in [
            (
                "enable.auto.offset.store",
                "switchyard stores offsets itself",
            ),
            ("group.id", "use kafka.group_id"),
            ("bootstrap.servers", "use kafka.brokers"),
            ("group.protocol", "use kafka.group_protocol"),
        ] {
            if k.consumer.contains_key(key) || k.common.contains_key(key) {
                p.push(format!(
                    "kafka.consumer.\"{key}\": cannot be overridden ({owner})"
                ));
            }
        }
        if k.group_protocol == GroupProtocol::Consumer {
            for (key, why) in CLASSIC_ONLY {
                for (section, options) in [("consumer", &k.consumer), ("common", &k.common)] {
                    if options.contains_key(key) {
                        p.push(format!(
                            "kafka.{section}.\"{key}\": not supported with kafka.group_protocol = \"consumer\" ({why}); remove it or use the classic protocol"
                        ));
                    }
                }
            }
        }
        if !self.http.listen.is_empty() && self.http.listen.parse::<std::net::SocketAddr>().is_err()
        {
            p.push(format!(
                "http.listen: {:?} is not an address such as 127.0.0.1:8080 (empty disables it)",
                self.http.listen
            ));
        }
        if let Some(url) = &self.avro.registry_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("avro.registry_url: {url:?} is not an http(s) URL"));
            }
        } else {
            let a = &self.avro;
            let ids = [
                a.trigger_schema_id,
                a.run_update_schema_id,
                a.run_update_v1_schema_id,
            ];
            if ids[0] == ids[1] || ids[0] == ids[2] || ids[1] == ids[2] {
                p.push(
                    "avro: trigger_schema_id, run_update_schema_id and run_update_v1_schema_id \
                     must differ"
                        .into(),
                );
            }
        }
        if let Err(e) = self.api.resolve_tokens() {
            p.extend(e.0);
        }
        if !self.api.tokens.is_empty() && self.http.listen.is_empty() {
            p.push("api.tokens: the status API needs http.listen".into());
        }
        if self.api.max_runs == 0 {
            p.push("api.max_runs: must be at least 1".into());
        }
        if self.dedup.max_runs == 0 {
            p.push("dedup.max_runs: must be at least 1".into());
        }
        if let Err(errs) = crate::policy::Policy::new(&self.backends.webhook.destinations, false) {
            p.extend(
                errs.into_iter()
                    .map(|e| format!("backends.webhook.destinations.{e}")),
            );
        }
        let t = &self.templates;
        if t.workers == 0 || t.workers > 64 {
            p.push("templates.workers: must be between 1 and 64".into());
        }
        if t.timeout.is_zero() {
            p.push("templates.timeout: must be more than 0".into());
        }
        if t.max_memory_bytes < 64 * 1024 * 1024 {
            p.push("templates.max_memory_bytes: must be at least 64 MiB (a worker needs room to start)".into());
        }
        if t.max_output_bytes == 0 || t.max_depth == 0 || t.max_program_bytes == 0 {
            p.push(
                "templates: max_output_bytes, max_depth and max_program_bytes must be at least 1"
                    .into(),
            );
        }
        if self.dispatch.partition_window == 0 {
            p.push("dispatch.partition_window: must be at least 1".into());
        }
        let b = &self.backends;
        let pools = [
            ("webhook", b.webhook.pool()),
            ("kafka", b.kafka.pool()),
            ("upsert_entity", b.upsert_entity.pool()),
            ("azure_devops", b.azure_devops.pool()),
            ("gitlab", b.gitlab.pool()),
            ("github", b.github.pool()),
        ];
        for (name, pool) in pools {
            p.extend(pool.retry.problems(&format!("backends.{name}")));
            p.extend(pool.protection_problems(&format!("backends.{name}")));
            if pool.concurrency == 0 {
                p.push(format!("backends.{name}.concurrency: must be at least 1"));
            }
            if pool.timeout.is_zero() {
                p.push(format!("backends.{name}.timeout: must be greater than 0"));
            }
        }
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            p.push(format!("log.level: {e}"));
        }
        for (name, s) in &self.secrets {
            if let Err(e) = s.source.resolve() {
                p.push(format!("secrets.{name}: {e}"));
            }
            for b in &s.backends {
                if !KINDS.contains(&b.to_ascii_uppercase().as_str()) {
                    p.push(format!(
                        "secrets.{name}.backends: {b:?} is not one of {}",
                        KINDS.join(", ")
                    ));
                }
            }
            for h in &s.hosts {
                if h.is_empty() || h.contains(['/', ' ']) || h[1..].contains('*') {
                    p.push(format!(
                        "secrets.{name}.hosts: {h:?} is not a host name or `*.domain`"
                    ));
                }
            }
        }
        match (self.actions.mode, &self.actions.file) {
            (ActionsMode::Registered, None) => {
                p.push("actions.file: mode \"registered\" needs the actions file".into())
            }
            (ActionsMode::Registered, Some(f)) => {
                if let Err(e) = crate::actions::Registered::load(f) {
                    p.push(format!("actions.file: {e}"));
                }
            }
            (ActionsMode::Inline, Some(_)) => p.push(
                "actions.file: only read with mode = \"registered\"; set the mode or remove it"
                    .into(),
            ),
            (ActionsMode::Inline, None) => {}
        }
        if let Err(e) = self.replay_key() {
            p.push(e.to_string());
        }
        let own = self.own_topics();
        let kb = &self.backends.kafka;
        for (field, topic) in std::iter::once(("backends.kafka.topic", &kb.topic))
            .chain(kb.topics.iter().map(|t| ("backends.kafka.topics", t)))
        {
            if own.contains(topic) {
                p.push(format!(
                    "{field}: {topic:?} is one of switchyard's own topics; the KAFKA backend \
                     never writes to those"
                ));
            }
        }
        for (field, name) in self.credential_secrets() {
            if let Some(s) = self.secrets.get(&name) {
                if !s.hosts.is_empty() || !s.backends.is_empty() {
                    p.push(format!(
                        "secrets.{name}: it is a backend credential ({field}), which templates never \
                         see; remove its hosts/backends, or use a separate secret for templates"
                    ));
                }
            }
        }
        p
    }

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

    /// Problems of the input topics and of the Port settings they need.
    fn input_problems(&self) -> Vec<String> {
        let k = &self.kafka;
        let mut p = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, input) in k.inputs.iter().enumerate() {
            if let Err(why) = check_topic_name(&input.topic) {
                p.push(format!("kafka.inputs[{i}].topic: {why}"));
            }
            if [&k.status_topic, &k.dlq_topic, &k.watches_topic].contains(&&input.topic) {
                p.push(format!(
                    "kafka.inputs[{i}].topic: {:?} is also the status, DLQ or watches topic",
                    input.topic
                ));
            }
        }
        for (topic, _) in self.input_topics() {
            if !seen.insert(topic.clone()) {
                p.push(format!("kafka.inputs: {topic:?} is consumed twice"));
            }
        }
        if k.status_read_formats.contains(&Format::Port) {
            p.push(
                "kafka.status_read_formats: \"port\" is an input format; use json or avro".into(),
            );
        }
        if !k.status_read_formats.is_empty() && !k.status_read_formats.contains(&k.status_format) {
            p.push(format!(
                "kafka.status_read_formats: must include status_format ({:?}), or readers skip \
                 switchyard's own updates",
                k.status_format
            ));
        }
        if k.status_format == Format::Port {
            p.push("kafka.status_format: \"port\" is an input format; use json or avro".into());
        }
        let port_inputs = self.input_topics().iter().any(|(_, f)| *f == Format::Port);
        let pc = &self.port;
        if port_inputs && pc.client_secret.is_none() {
            p.push(
                "port.client_secret: the port input format needs it (Port signs its messages with it; PORT_CLIENT_SECRET)"
                    .into(),
            );
        }
        if let Some(secret) = &pc.client_secret {
            if let Err(e) = secret.resolve() {
                p.push(format!("port.client_secret: {e}"));
            }
        }
        if let Some(url) = &pc.api_url {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                p.push(format!("port.api_url: {url:?} is not an http(s) URL"));
            }
            if pc.client_id.as_deref().is_none_or(str::is_empty) || pc.client_secret.is_none() {
                p.push("port.api_url: reporting to Port needs port.client_id and port.client_secret (PORT_CLIENT_ID, PORT_CLIENT_SECRET)".into());
            }
        }
        if let Some(path) = &pc.mapping_file {
            if let Err(errs) = crate::port::mapping::Mapping::load(Path::new(path)) {
                p.extend(errs.into_iter().map(|e| format!("port.mapping_file: {e}")));
            }
        }
        if let Some(name) = self
            .backends
            .webhook
            .signing_secret
            .as_ref()
            .filter(|n| !self.secrets.contains_key(*n))
        {
            p.push(format!(
                "backends.webhook.signing_secret: no secret named {name:?} in [secrets]"
            ));
        }
        p
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

/// librdkafka options are strings; accept TOML numbers and booleans too, so that
/// `"session.timeout.ms" = 6000` and environment overrides work as written.
fn options<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        S(String),
        I(i64),
        F(f64),
        B(bool),
    }
    let raw = BTreeMap::<String, Scalar>::deserialize(d)?;
    Ok(raw
        .into_iter()
        .map(|(k, v)| {
            let v = match v {
                Scalar::S(s) => s,
                Scalar::I(i) => i.to_string(),
                Scalar::F(f) => f.to_string(),
                Scalar::B(b) => b.to_string(),
            };
            (k, v)
        })
        .collect())
}

/// Kafka's topic-name rule: 1–249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 249 || name == "." || name == ".." {
        return Err(format!("{name:?} is not a legal topic name"));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        Some(c) => Err(format!("{name:?} contains {c:?}; use [a-zA-Z0-9._-]")),
        None => Ok(()),
    }
}

/// Set `a__b__c` (case-insensitive segments) in `root` to `raw`.
fn apply_override(root: &mut toml::Table, path: &str, raw: &str) -> Result<(), String> {
    let segments: Vec<String> = path.split("__").map(|s| s.to_ascii_lowercase()).collect();
    if segments.iter().any(String::is_empty) {
        return Err("empty path segment".into());
    }
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    set_path(root, &segments, scalar(raw))
}

/// Set `path` (a non-empty list of keys) in `root` to `value`, creating tables on the way.
fn set_path(root: &mut toml::Table, path: &[&str], value: toml::Value) -> Result<(), String> {
    let (last, parents) = path.split_last().expect("paths are not empty");
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{seg} is not a table"))?;
    }
    table.insert(last.to_string(), value);
    Ok(())
}

fn scalar(raw: &str) -> toml::Value {
    format!("v = {raw}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .filter(|v| !v.is_table())
        .unwrap_or_else(|| toml::Value::String(raw.to_owned()))
}

#[cfg(test)]
mod tests;
