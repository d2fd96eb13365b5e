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
    if let Some(v) = get("STREAMER_NAME") {
        if !v.eq_ignore_ascii_case("KAFKA") {
            problems.push(format!(
                "environment STREAMER_NAME: {v:?} is not supported; switchyard consumes Kafka (KAFKA)"
            ));
        }
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
    } else if get("PORT_ORG_ID").is_some() {
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
