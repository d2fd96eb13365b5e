//! `[port]`: Port compatibility settings, and the Port agent's environment variables as
//! aliases, so that an agent deployment's environment works unchanged.
//!
//! Precedence, lowest first: the TOML file, the agent's variables (`PORT_ORG_ID`,
//! `KAFKA_CONSUMER_GROUP_ID`, …), `SWITCHYARD_*` overrides, then the defaults that
//! `port.org_id` implies (`<org>.runs` and `<org>.change.log` in the `port` format, group
//! `<org>.switchyard`) for whatever is still unset.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::SecretSource;

/// Port's API, where the agent reports runs (`PORT_API_BASE_URL`'s default).
pub const PORT_API: &str = "https://api.getport.io";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PortConfig {
    /// The Port organisation id. Implies the Port topics and consumer group (above).
    pub org_id: Option<String>,
    /// Port API client id (reporting to Port's API).
    pub client_id: Option<String>,
    /// Port API client secret: the key of message signatures (incoming and outgoing), of
    /// `fieldsToDecryptPaths`, and of the API token.
    pub client_secret: Option<SecretSource>,
    /// Port's API base URL. With `client_id` and `client_secret`, every run update of a
    /// Port run is also reported there. Unset: no reporting (the status topic only).
    pub api_url: Option<String>,
    /// The agent's payload mapping file (JSON array). Unset: the agent's built-in default.
    pub mapping_file: Option<String>,
    /// Oldest signature timestamp accepted on Port messages (replay protection). `0s`
    /// accepts any age. Replays from the DLQ are exempt (the signature still has to match).
    #[serde(with = "humantime_serde")]
    pub signature_max_age: Duration,
    /// Fetch the Kafka brokers and SASL credentials from Port's API
    /// (`GET /v1/kafka-credentials`) at start, and again when the brokers refuse them, as
    /// the agent does. On with the agent's environment unless `USING_LOCAL_PORT_INSTANCE`
    /// is true.
    pub fetch_kafka_credentials: bool,
    /// Response texts in Port run logs and failure summaries (`DETAILED_LOGGING`).
    pub detailed_logging: bool,
    /// A mapping jq program that does not compile stops the start (exit 78). Off (the
    /// default in Port mode, as the agent): it yields null with a warning at run time.
    pub strict_mapping: bool,
    /// Mapping warnings (a jq error, a field to decrypt that is missing) are also posted
    /// as WARN run logs to the run in Port. Off (the default in Port mode): stdout only,
    /// as the agent.
    pub mapping_warnings_in_run_log: bool,
    /// How Port hands agent runs over: `KAFKA` (the `<org>.runs` topic) or `POLLING`
    /// (claimed from Port's API; `STREAMER_NAME`).
    pub streamer: Streamer,
    /// The POLLING streamer's settings (the agent's `POLLING_*`).
    pub polling: PollingConfig,
}

/// `port.streamer`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Streamer {
    Kafka,
    Polling,
}

impl Streamer {
    pub fn as_str(self) -> &'static str {
        match self {
            Streamer::Kafka => "KAFKA",
            Streamer::Polling => "POLLING",
        }
    }
}

/// `[port.polling]`: claiming runs from Port's API, with the agent's defaults.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct PollingConfig {
    /// Pause between claims when the last one was not full (`POLLING_INTERVAL_SECONDS`).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Most runs claimed at once (`POLLING_RUNS_BATCH_SIZE`); fewer while that many are
    /// still being dispatched.
    pub batch_size: usize,
    /// Waits after a failed claim: from `initial_backoff`, times `backoff_factor`, up to
    /// `max_backoff`, each ± `backoff_jitter` (`POLLING_*_BACKOFF_*`).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    pub backoff_factor: f64,
    pub backoff_jitter: f64,
    /// Claims failing without a break for this long stop switchyard (exit 1), as the
    /// agent exits (`POLLING_MAX_FAILURE_DURATION_SECONDS`).
    #[serde(with = "humantime_serde")]
    pub max_failure_duration: Duration,
}

impl Default for PollingConfig {
    fn default() -> Self {
        PollingConfig {
            interval: Duration::from_secs(10),
            batch_size: 100,
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(300),
            backoff_factor: 2.0,
            backoff_jitter: 0.1,
            max_failure_duration: Duration::from_secs(3600),
        }
    }
}

impl PollingConfig {
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.batch_size == 0 {
            p.push("port.polling.batch_size: must be at least 1".into());
        }
        if self.interval.is_zero() || self.initial_backoff.is_zero() {
            p.push("port.polling.interval, initial_backoff: must be greater than 0".into());
        }
        if !(self.backoff_factor >= 1.0 && self.backoff_factor.is_finite()) {
            p.push("port.polling.backoff_factor: must be at least 1".into());
        }
        if !(0.0..1.0).contains(&self.backoff_jitter) {
            p.push("port.polling.backoff_jitter: must be in [0, 1)".into());
        }
        p
    }
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            org_id: None,
            client_id: None,
            client_secret: None,
            api_url: None,
            mapping_file: None,
            signature_max_age: Duration::from_secs(24 * 3600),
            fetch_kafka_credentials: false,
            detailed_logging: true,
            strict_mapping: true,
            mapping_warnings_in_run_log: true,
            streamer: Streamer::Kafka,
            polling: PollingConfig::default(),
        }
    }
}

impl PortConfig {
    /// Whether run updates are reported to Port's API.
    pub fn reports(&self) -> bool {
        self.api_url.is_some()
    }
}

/// Apply the Port agent's environment variables to the TOML tree. Returns problems.
pub fn apply_agent_env(root: &mut toml::Table, env: &BTreeMap<String, String>) -> Vec<String> {
    let mut problems = Vec::new();
    let get = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let s = |v: &str| toml::Value::String(v.to_owned());
    let mut polling = false;
    if let Some(v) = get("STREAMER_NAME") {
        match v.to_ascii_uppercase().as_str() {
            "KAFKA" => set(root, &["port", "streamer"], s("KAFKA")),
            "POLLING" => {
                polling = true;
                set(root, &["port", "streamer"], s("POLLING"));
            }
            _ => problems.push(format!(
                "environment STREAMER_NAME: {v:?} is not KAFKA or POLLING"
            )),
        }
    }
    for (var, key, unit) in [
        ("POLLING_INTERVAL_SECONDS", "interval", "s"),
        ("POLLING_RUNS_BATCH_SIZE", "batch_size", ""),
        ("POLLING_INITIAL_BACKOFF_SECONDS", "initial_backoff", "s"),
        ("POLLING_MAX_BACKOFF_SECONDS", "max_backoff", "s"),
        ("POLLING_BACKOFF_FACTOR", "backoff_factor", ""),
        ("POLLING_BACKOFF_JITTER_FACTOR", "backoff_jitter", ""),
        (
            "POLLING_MAX_FAILURE_DURATION_SECONDS",
            "max_failure_duration",
            "s",
        ),
    ] {
        let Some(v) = get(var) else { continue };
        let value = match (v.parse::<f64>(), unit) {
            (Ok(n), "s") if n > 0.0 && n.is_finite() => {
                s(&format!("{}ms", (n * 1000.0).round() as u64))
            }
            (Ok(n), "") if key == "batch_size" && n >= 1.0 && n.fract() == 0.0 => {
                toml::Value::Integer(n as i64)
            }
            (Ok(n), "") if key != "batch_size" && n.is_finite() => toml::Value::Float(n),
            _ => {
                problems.push(format!("environment {var}: {v:?} is not a valid number"));
                continue;
            }
        };
        set(root, &["port", "polling", key], value);
    }
    let flag = |name: &str| get(name).map(|v| agent_bool(name, v));
    let local = match flag("USING_LOCAL_PORT_INSTANCE") {
        Some(Ok(b)) => b,
        Some(Err(p)) => {
            problems.push(p);
            false
        }
        None => false,
    };
    // The agent reads its brokers (and, before v0.7.6 / Nov 2023, its credentials) from
    // the environment only for a local Port instance; otherwise they come from Port's API.
    if local {
        for (var, path) in [
            ("KAFKA_CONSUMER_BROKERS", &["kafka", "brokers"][..]),
            ("KAFKA_CONSUMER_BOOTSTRAP_SERVERS", &["kafka", "brokers"]),
            (
                "KAFKA_CONSUMER_USERNAME",
                &["kafka", "common", "sasl.username"],
            ),
            (
                "KAFKA_CONSUMER_PASSWORD",
                &["kafka", "common", "sasl.password"],
            ),
        ] {
            if let Some(v) = get(var) {
                set(root, path, s(v));
            }
        }
    } else if get("PORT_ORG_ID").is_some() && !polling {
        if get("KAFKA_CONSUMER_BOOTSTRAP_SERVERS").is_some() {
            problems.push(
                "environment KAFKA_CONSUMER_BOOTSTRAP_SERVERS: read only with \
                 USING_LOCAL_PORT_INSTANCE=true (as the agent); otherwise the brokers and \
                 credentials come from Port's API (GET /v1/kafka-credentials)"
                    .into(),
            );
        }
        set(root, &["port", "fetch_kafka_credentials"], true.into());
    }
    match flag("DETAILED_LOGGING") {
        Some(Ok(b)) => set(root, &["port", "detailed_logging"], b.into()),
        Some(Err(p)) => problems.push(p),
        None => {}
    }
    for (var, path) in [
        ("PORT_ORG_ID", &["port", "org_id"][..]),
        ("PORT_CLIENT_ID", &["port", "client_id"]),
        ("PORT_API_BASE_URL", &["port", "api_url"]),
        ("CONTROL_THE_PAYLOAD_CONFIG_PATH", &["port", "mapping_file"]),
        ("KAFKA_CONSUMER_GROUP_ID", &["kafka", "group_id"]),
        (
            "KAFKA_CONSUMER_SESSION_TIMEOUT_MS",
            &["kafka", "consumer", "session.timeout.ms"],
        ),
        (
            "KAFKA_CONSUMER_AUTO_OFFSET_RESET",
            &["kafka", "consumer", "auto.offset.reset"],
        ),
    ] {
        if let Some(v) = get(var) {
            set(root, path, s(v));
        }
    }
    if get("PORT_CLIENT_SECRET").is_some() {
        let mut t = toml::Table::new();
        t.insert("env".into(), s("PORT_CLIENT_SECRET"));
        set(root, &["port", "client_secret"], toml::Value::Table(t));
    }
    // The agent always reports to Port's API; so does an agent environment here.
    if get("PORT_CLIENT_ID").is_some() && get("PORT_CLIENT_SECRET").is_some() {
        set_default(root, &["port", "api_url"], s(PORT_API));
    }
    if let Some(v) = get("KAFKA_CONSUMER_SECURITY_PROTOCOL") {
        set(
            root,
            &["kafka", "common", "security.protocol"],
            s(&v.to_ascii_lowercase()),
        );
    }
    if let Some(v) = get("KAFKA_CONSUMER_AUTHENTICATION_MECHANISM") {
        if !v.eq_ignore_ascii_case("none") {
            set(
                root,
                &["kafka", "common", "sasl.mechanism"],
                s(&v.to_ascii_uppercase()),
            );
        }
    }
    if let Some(v) = get("KAFKA_RUNS_TOPIC") {
        set(root, &["kafka", "triggers_topic"], s(v));
        set(root, &["kafka", "triggers_format"], s("port"));
    }
    if let Some(v) = get("KAFKA_CHANGE_LOG_TOPIC") {
        set(
            root,
            &["kafka", "inputs"],
            toml::Value::Array(vec![port_input(v)]),
        );
    }
    if let Some(v) = get("WEBHOOK_INVOKER_TIMEOUT") {
        match v.parse::<f64>() {
            Ok(secs) if secs > 0.0 && secs.is_finite() => {
                let ms = (secs * 1000.0).round() as u64;
                set(
                    root,
                    &["backends", "webhook", "timeout"],
                    s(&format!("{ms}ms")),
                );
            }
            _ => problems.push(format!(
                "environment WEBHOOK_INVOKER_TIMEOUT: {v:?} is not a number of seconds above 0"
            )),
        }
    }
    match flag("WEBHOOK_VERIFY_SSL") {
        Some(Ok(b)) => set(root, &["backends", "webhook", "verify_tls"], b.into()),
        Some(Err(p)) => problems.push(p),
        None => {}
    }
    if let Some(v) = get("LOG_LEVEL") {
        set(root, &["log", "level"], s(&log_level(v)));
    }
    problems
}

/// A boolean as the agent's settings (pydantic) read one.
fn agent_bool(name: &str, v: &str) -> Result<bool, String> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "t" | "yes" | "y" | "on" => Ok(true),
        "0" | "false" | "f" | "no" | "n" | "off" => Ok(false),
        _ => Err(format!("environment {name}: {v:?} is not true or false")),
    }
}

/// The agent's `LOG_LEVEL` (Python's level names) as a log filter: WARNING is `warn`,
/// CRITICAL and FATAL are `error`; a tracing filter (`info,switchyard=debug`) passes
/// through.
fn log_level(v: &str) -> String {
    match v.to_ascii_lowercase().as_str() {
        "warning" | "warn" => "warn".into(),
        "critical" | "fatal" => "error".into(),
        "notset" => "trace".into(),
        other => other.to_owned(),
    }
}

/// The defaults `port.org_id` implies, for keys still unset.
pub fn apply_org_defaults(root: &mut toml::Table) {
    let Some(org) = lookup(root, &["port", "org_id"])
        .and_then(|v| v.as_str())
        .map(str::to_owned)
    else {
        return;
    };
    let s = |v: String| toml::Value::String(v);
    if lookup(root, &["kafka", "triggers_topic"]).is_none() {
        set(root, &["kafka", "triggers_topic"], s(format!("{org}.runs")));
        set_default(root, &["kafka", "triggers_format"], s("port".into()));
    }
    set_default(
        root,
        &["kafka", "inputs"],
        toml::Value::Array(vec![port_input(&format!("{org}.change.log"))]),
    );
    // Port's managed Kafka only admits groups named `<org>.<anything>`.
    set_default(root, &["kafka", "group_id"], s(format!("{org}.switchyard")));
    // The agent's semantics (docs/port.md "Differences"): one attempt, a 401/403 fails the
    // run, no breaker, no signature age limit, and jq that does not compile yields null.
    let webhook = ["backends", "webhook"];
    for (path, value) in [
        (&["retry", "max_attempts"][..], toml::Value::Integer(1)),
        (&["retry", "credentials_pause"], s("0s".into())),
        (&["breaker", "enabled"], false.into()),
    ] {
        let full: Vec<&str> = webhook.iter().chain(path).copied().collect();
        set_default(root, &full, value);
    }
    set_default(root, &["port", "signature_max_age"], s("0s".into()));
    set_default(root, &["port", "strict_mapping"], false.into());
    set_default(root, &["port", "mapping_warnings_in_run_log"], false.into());
}

/// Where the Port agent's image mounts the mapping (Helm and Docker set no variable):
/// the agent's working directory is `/app`.
pub const AGENT_MAPPING_FILE: &str = "control_the_payload_config.json";

/// In Port mode (`port.org_id` set) with no `port.mapping_file`: the agent's mapping
/// file in `dir` (the working directory), when it exists, as the agent reads it.
pub fn discover_mapping(root: &mut toml::Table, dir: &std::path::Path) {
    let port_mode = lookup(root, &["port", "org_id"]).is_some();
    if !port_mode || lookup(root, &["port", "mapping_file"]).is_some() {
        return;
    }
    let candidate = dir.join(AGENT_MAPPING_FILE);
    if candidate.is_file() {
        let path = candidate.to_string_lossy().into_owned();
        set(root, &["port", "mapping_file"], toml::Value::String(path));
    }
}

fn port_input(topic: &str) -> toml::Value {
    let mut t = toml::Table::new();
    t.insert("topic".into(), toml::Value::String(topic.to_owned()));
    t.insert("format".into(), toml::Value::String("port".into()));
    toml::Value::Table(t)
}

fn lookup<'a>(root: &'a toml::Table, path: &[&str]) -> Option<&'a toml::Value> {
    let (last, parents) = path.split_last()?;
    let mut t = root;
    for seg in parents {
        t = t.get(*seg)?.as_table()?;
    }
    t.get(*last)
}

fn set(root: &mut toml::Table, path: &[&str], value: toml::Value) {
    // A scalar where a section belongs is the file's error, which validation reports.
    let _ = super::load::set_path(root, path, value);
}

fn set_default(root: &mut toml::Table, path: &[&str], value: toml::Value) {
    if lookup(root, path).is_none() {
        set(root, path, value);
    }
}
