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
    pub backends: BackendsConfig,
    pub watch: WatchConfig,
    /// Secrets available to templates as `.secrets.NAME`, each read from an environment
    /// variable or a file at start. Events can never supply secrets.
    pub secrets: BTreeMap<String, SecretSource>,
    pub log: LogConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// Consumer group; scale out by starting more members with the same id.
    pub group_id: String,
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
            triggers_topic: "switchyard.triggers".into(),
            status_topic: "switchyard.status".into(),
            dlq_topic: "switchyard.dlq".into(),
            watches_topic: "switchyard.watches".into(),
            create_topics: false,
            topic_partitions: 6,
            topic_replication: 1,
            common: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
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
}

impl Default for DispatchConfig {
    fn default() -> Self {
        DispatchConfig {
            ordering: Ordering::Key,
            partition_window: 512,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BackendsConfig {
    pub webhook: PoolConfig,
    pub kafka: KafkaBackendConfig,
    pub upsert_entity: UpsertEntityConfig,
    pub azure_devops: AzureDevopsConfig,
    pub gitlab: GitlabConfig,
    pub github: GithubConfig,
}

/// GITHUB backend: workflow dispatches, followed to completion.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct GithubConfig {
    pub concurrency: usize,
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
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
}

impl Default for WatchConfig {
    fn default() -> Self {
        WatchConfig {
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
    /// Topic for actions that do not name one (`invocationMethod.topic`).
    pub topic: String,
}

impl Default for KafkaBackendConfig {
    fn default() -> Self {
        let pool = PoolConfig::default();
        KafkaBackendConfig {
            concurrency: pool.concurrency,
            timeout: pool.timeout,
            topic: "switchyard.actions".into(),
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
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            concurrency: 64,
            timeout: Duration::from_secs(30),
        }
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
                }
            }
        }
    )*};
}

inline_pool!(
    GithubConfig,
    GitlabConfig,
    AzureDevopsConfig,
    KafkaBackendConfig,
    UpsertEntityConfig
);

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
        let mut problems = Vec::new();
        let mut root: toml::Table = text
            .parse()
            .map_err(|e: toml::de::Error| ConfigErrors(vec![format!("TOML syntax: {e}")]))?;
        for (name, value) in env {
            // Only `SECTION__FIELD` names are overrides, so that variables such as
            // SWITCHYARD_CONFIG or a secret's SWITCHYARD_TOKEN are not mistaken for one.
            if let Some(path) = name.strip_prefix(ENV_PREFIX).filter(|p| p.contains("__")) {
                if let Err(p) = apply_override(&mut root, path, &value) {
                    problems.push(format!("environment {name}: {p}"));
                }
            }
        }
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
        ] {
            if k.consumer.contains_key(key) || k.common.contains_key(key) {
                p.push(format!(
                    "kafka.consumer.\"{key}\": cannot be overridden ({owner})"
                ));
            }
        }
        if self.dispatch.partition_window == 0 {
            p.push("dispatch.partition_window: must be at least 1".into());
        }
        let b = &self.backends;
        let pools = [
            ("webhook", b.webhook.clone()),
            ("kafka", b.kafka.pool()),
            ("upsert_entity", b.upsert_entity.pool()),
            ("azure_devops", b.azure_devops.pool()),
            ("gitlab", b.gitlab.pool()),
            ("github", b.github.pool()),
        ];
        for (name, pool) in pools {
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
        for (name, source) in &self.secrets {
            if let Err(e) = source.resolve() {
                p.push(format!("secrets.{name}: {e}"));
            }
        }
        p
    }

    /// Read every configured secret. Validation has already checked that each resolves.
    pub fn resolve_secrets(&self) -> Result<Map<String, Value>, ConfigErrors> {
        let mut out = Map::new();
        let mut problems = Vec::new();
        for (name, source) in &self.secrets {
            match source.resolve() {
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
    fn resolve(&self) -> Result<String, String> {
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
    let (last, parents) = segments
        .split_last()
        .expect("split always yields a segment");
    let mut table = root;
    for seg in parents {
        let entry = table
            .entry(seg.clone())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        table = entry
            .as_table_mut()
            .ok_or_else(|| format!("{seg} is not a table"))?;
    }
    table.insert(last.clone(), scalar(raw));
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
mod tests {
    use super::*;

    fn no_env() -> Vec<(String, String)> {
        Vec::new()
    }

    #[test]
    fn defaults_are_valid() {
        let cfg = Config::from_toml("", no_env()).unwrap();
        assert_eq!(cfg.dispatch.ordering, Ordering::Key);
        assert_eq!(cfg.backends.webhook.concurrency, 64);
    }

    #[test]
    fn environment_overrides_file_values() {
        let env = vec![
            ("SWITCHYARD_KAFKA__BROKERS".into(), "10.0.0.1:9092".into()),
            ("SWITCHYARD_KAFKA__CREATE_TOPICS".into(), "true".into()),
            ("SWITCHYARD_BACKENDS__WEBHOOK__TIMEOUT".into(), "5s".into()),
            ("OTHER".into(), "ignored".into()),
            ("SWITCHYARD_CONFIG".into(), "not an override".into()),
        ];
        let cfg = Config::from_toml("[kafka]\nbrokers = \"a:1\"\n", env).unwrap();
        assert_eq!(cfg.kafka.brokers, "10.0.0.1:9092");
        assert!(cfg.kafka.create_topics);
        assert_eq!(cfg.backends.webhook.timeout, Duration::from_secs(5));
    }

    #[test]
    fn every_problem_is_listed() {
        let text = r#"
            [kafka]
            brokers = ""
            triggers_topic = "bad topic"
            brokerz = "typo"
            [dispatch]
            partition_window = 0
            [backends.webhook]
            concurrency = 0
            [secrets]
            token = { env = "SWITCHYARD_TEST_SURELY_UNSET_VAR" }
        "#;
        let errs = Config::from_toml(text, no_env()).unwrap_err().0;
        let all = errs.join("\n");
        for needle in [
            "kafka.brokerz: unknown field",
            "kafka.brokers: must name",
            "kafka.triggers_topic: \"bad topic\" contains ' '",
            "dispatch.partition_window",
            "backends.webhook.concurrency",
            "secrets.token: environment variable SWITCHYARD_TEST_SURELY_UNSET_VAR is not set",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_eq!(errs.len(), 6, "{all}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let errs = Config::from_toml("[dispatch]\nordering = \"random\"\n", no_env())
            .unwrap_err()
            .0;
        assert!(errs[0].contains("unknown variant `random`"), "{errs:?}");
    }

    #[test]
    fn librdkafka_options_pass_through_but_offset_store_is_ours() {
        let text = "[kafka.consumer]\n\"fetch.min.bytes\" = \"1\"\n\"enable.auto.offset.store\" = \"true\"\n";
        let errs = Config::from_toml(text, no_env()).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("enable.auto.offset.store"));
    }
}
