//! Start-up check that switchyard's topics exist, creating them when configured to.

use std::collections::{BTreeSet, HashSet};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

use crate::config::KafkaConfig;

/// How long metadata requests and topic creation may take before start-up fails.
const ADMIN_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("cannot read cluster metadata from {brokers}: {source}")]
    Metadata {
        brokers: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("missing topics: {}; create them or set kafka.create_topics = true", .0.join(", "))]
    Missing(Vec<String>),
    #[error("creating topic {topic} failed: {reason}")]
    Create { topic: String, reason: String },
    #[error("topics {} were created but did not appear in metadata within {:?}", .0.join(", "), ADMIN_TIMEOUT)]
    NotVisible(Vec<String>),
}

/// A topic switchyard needs, and how to create it when it is missing.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    pub name: &'a str,
    /// Create with `cleanup.policy=compact` (keyed state such as entities).
    pub compacted: bool,
    /// Create with this `max.message.bytes` (the DLQ: room for any accepted record).
    pub max_message_bytes: Option<usize>,
}

impl<'a> TopicSpec<'a> {
    pub fn plain(name: &'a str) -> Self {
        TopicSpec {
            name,
            compacted: false,
            max_message_bytes: None,
        }
    }
}

/// Apache Kafka's default `max.message.bytes` (`message.max.bytes` of the broker).
pub const BROKER_DEFAULT_MAX_MESSAGE: usize = 1_048_588;
/// Room kept in a DLQ record for switchyard's headers (error, class, source, …).
pub const DLQ_HEADER_ROOM: usize = 64 * 1024;
/// `max.message.bytes` of a DLQ that switchyard creates: any record the broker's default
/// accepts on an input topic, plus the DLQ headers.
pub const DLQ_MAX_MESSAGE: usize = BROKER_DEFAULT_MAX_MESSAGE + DLQ_HEADER_ROOM;

/// The `max.message.bytes` of `topic`, from the broker (DescribeConfigs); `None` when the
/// broker does not say (librdkafka's mock cluster, missing ACLs).
pub async fn max_message_bytes(cfg: &KafkaConfig, topic: &str) -> Option<usize> {
    use rdkafka::admin::ResourceSpecifier;
    let admin: AdminClient<DefaultClientContext> = super::client_config(cfg).create().ok()?;
    let opts = AdminOptions::new().request_timeout(Some(Duration::from_secs(10)));
    let described = tokio::time::timeout(
        Duration::from_secs(15),
        admin.describe_configs([&ResourceSpecifier::Topic(topic)], &opts),
    )
    .await
    .ok()?
    .ok()?;
    let resource = described.into_iter().next()?.ok()?;
    resource
        .get("max.message.bytes")
        .and_then(|e| e.value.as_deref())
        .and_then(|v| v.parse().ok())
}

/// Check that `topics` exist; create the missing ones when `create` is set.
pub async fn ensure_topics(
    cfg: &KafkaConfig,
    specs: &[TopicSpec<'_>],
    create: bool,
) -> Result<(), TopicError> {
    let topics: Vec<&str> = specs.iter().map(|s| s.name).collect();
    let topics = topics.as_slice();
    let admin: AdminClient<DefaultClientContext> =
        super::client_config(cfg)
            .create()
            .map_err(|source| TopicError::Metadata {
                brokers: cfg.brokers.clone(),
                source,
            })?;
    let missing = missing_topics(&admin, cfg, topics).await?;
    if missing.is_empty() {
        return Ok(());
    }
    if !create {
        return Err(TopicError::Missing(missing));
    }
    let sizes: Vec<(&str, String)> = specs
        .iter()
        .filter_map(|s| s.max_message_bytes.map(|n| (s.name, n.to_string())))
        .collect();
    let new: Vec<NewTopic<'_>> = missing
        .iter()
        .map(|t| {
            let topic = NewTopic::new(
                t,
                cfg.topic_partitions,
                TopicReplication::Fixed(cfg.topic_replication),
            );
            let spec = specs.iter().find(|s| s.name == t);
            let topic = if spec.is_some_and(|s| s.compacted) {
                topic.set("cleanup.policy", "compact")
            } else {
                topic
            };
            match sizes.iter().find(|(name, _)| name == t) {
                Some((_, n)) => topic.set("max.message.bytes", n),
                None => topic,
            }
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = tokio::time::timeout(ADMIN_TIMEOUT, admin.create_topics(&new, &opts))
        .await
        .map_err(|_| TopicError::Create {
            topic: missing.join(", "),
            reason: format!("no reply within {ADMIN_TIMEOUT:?}"),
        })?
        .map_err(|e| TopicError::Create {
            topic: missing.join(", "),
            reason: e.to_string(),
        })?;
    for r in results {
        if let Err((topic, code)) = r {
            if code != rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                return Err(TopicError::Create {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    tracing::info!(topics = %missing.join(","), partitions = cfg.topic_partitions, "created missing topics");
    // Creation is asynchronous on some brokers: wait until metadata shows the topics.
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let still = missing_topics(&admin, cfg, topics).await?;
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(TopicError::NotVisible(still));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn missing_topics(
    admin: &AdminClient<DefaultClientContext>,
    cfg: &KafkaConfig,
    topics: &[&str],
) -> Result<Vec<String>, TopicError> {
    // Metadata for *all* topics: asking for one topic by name would auto-create it on
    // brokers that allow that, which would hide a misconfigured name.
    let client = admin.inner();
    let md = tokio::task::block_in_place(|| client.fetch_metadata(None, ADMIN_TIMEOUT)).map_err(
        |source| TopicError::Metadata {
            brokers: cfg.brokers.clone(),
            source,
        },
    )?;
    let existing: BTreeSet<&str> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    let mut missing: Vec<String> = topics
        .iter()
        .filter(|t| !existing.contains(**t))
        .map(|t| t.to_string())
        .collect();
    missing.dedup();
    Ok(missing)
}

/// Checks a topic on first use only (backends whose topics are needed only when an action
/// uses them). Successful checks are remembered for the life of the process.
pub struct TopicGuard {
    cfg: KafkaConfig,
    ready: tokio::sync::Mutex<HashSet<String>>,
}

impl TopicGuard {
    pub fn new(cfg: &KafkaConfig) -> Self {
        TopicGuard {
            cfg: cfg.clone(),
            ready: tokio::sync::Mutex::new(HashSet::new()),
        }
    }

    /// Make sure `spec` exists, creating it when `create` is set.
    pub async fn ensure(&self, spec: TopicSpec<'_>, create: bool) -> Result<(), TopicError> {
        let mut ready = self.ready.lock().await;
        if ready.contains(spec.name) {
            return Ok(());
        }
        ensure_topics(&self.cfg, &[spec], create).await?;
        ready.insert(spec.name.to_owned());
        Ok(())
    }

    pub fn create_topics(&self) -> bool {
        self.cfg.create_topics
    }
}

/// Every partition of `topic` from the beginning, with its high watermark now: what a
/// reader must reach to have seen everything written before this call. (Some brokers
/// report watermarks late; readers also wait for a quiet moment, see `replay`.)
pub async fn from_start(
    cfg: &KafkaConfig,
    topic: &str,
) -> anyhow::Result<(
    rdkafka::TopicPartitionList,
    std::collections::HashMap<i32, i64>,
)> {
    let probe: rdkafka::consumer::BaseConsumer = super::consumer_config(cfg).create()?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        use rdkafka::consumer::Consumer;
        let md = probe
            .fetch_metadata(Some(&topic), ADMIN_TIMEOUT)
            .map_err(|e| anyhow::anyhow!("reading metadata of {topic}: {e}"))?;
        let mut tpl = rdkafka::TopicPartitionList::new();
        let mut ends = std::collections::HashMap::new();
        for t in md.topics() {
            for p in t.partitions() {
                tpl.add_partition_offset(&topic, p.id(), rdkafka::Offset::Beginning)?;
                let (_, high) = probe.fetch_watermarks(&topic, p.id(), ADMIN_TIMEOUT)?;
                ends.insert(p.id(), high);
            }
        }
        Ok((tpl, ends))
    })
    .await?
}
