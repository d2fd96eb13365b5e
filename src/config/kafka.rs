//! The `[kafka]` and `[avro]` sections: brokers, topics, client settings, formats.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

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
pub(super) const CLASSIC_ONLY: [(&str, &str); 4] = [
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
    /// Where switchyard's own topics (status, DLQ, watches) and its extra groups live
    /// when that is not the triggers' cluster. In Port mode (`port.org_id`) Port's Kafka is
    /// read-only to switchyard: without this section those topics are off.
    pub output: Option<OutputCluster>,
}

/// `[kafka.output]`: a second cluster for switchyard's own topics.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct OutputCluster {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    /// librdkafka options of its clients (security), in place of `kafka.common`.
    #[serde(deserialize_with = "options")]
    pub common: BTreeMap<String, String>,
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
            output: None,
        }
    }
}

/// librdkafka options are strings; accept TOML numbers and booleans too, so that
/// `"session.timeout.ms" = 6000` and environment overrides work as written.
pub(super) fn options<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<BTreeMap<String, String>, D::Error> {
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
