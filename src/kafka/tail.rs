//! Reading a topic from its start: first up to the high watermarks read when the tail
//! opens (everything written before), then, for callers that go on, following new
//! records. The run view and the dedup ledger, the watcher's table, `dlq replay` and
//! `switchyard runs` all read this way; only their stopping rules differ.
//!
//! A tail joins no group: it assigns every partition itself and never commits.

use std::collections::HashMap;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message};

use crate::config::KafkaConfig;

pub struct TopicTail {
    topic: String,
    consumer: StreamConsumer,
    /// High watermark of each partition when the tail opened.
    ends: HashMap<i32, i64>,
    /// The next offset to read, per partition.
    position: HashMap<i32, i64>,
}

impl TopicTail {
    /// Open `topic` from the start of every partition. `reader` names the client
    /// (`{group_id}.{reader}`, for the broker's logs and quotas); `settings` are extra
    /// librdkafka settings (fetch sizes).
    pub async fn open(
        kafka: &KafkaConfig,
        topic: &str,
        reader: &str,
        settings: &[(&str, String)],
    ) -> anyhow::Result<TopicTail> {
        let (tpl, ends) = super::topics::from_start(kafka, topic).await?;
        let mut config = super::consumer_config(kafka);
        config
            .set("group.id", format!("{}.{reader}", kafka.group_id))
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", "earliest");
        for (k, v) in settings {
            config.set(*k, v);
        }
        let consumer: StreamConsumer = config.create()?;
        consumer.assign(&tpl)?;
        let position = ends.keys().map(|p| (*p, 0)).collect();
        Ok(TopicTail {
            topic: topic.to_owned(),
            consumer,
            ends,
            position,
        })
    }

    /// Whether every record written before the tail opened has been read.
    pub fn caught_up(&self) -> bool {
        reached(&self.position, &self.ends)
    }

    /// The next record, or `Ok(None)` when none arrives within `idle`. A read error
    /// names the topic.
    pub async fn next(&mut self, idle: Duration) -> anyhow::Result<Option<BorrowedMessage<'_>>> {
        let m = match tokio::time::timeout(idle, self.consumer.recv()).await {
            Err(_) => return Ok(None),
            Ok(Err(e)) => anyhow::bail!("reading {}: {e}", self.topic),
            Ok(Ok(m)) => m,
        };
        self.position.insert(m.partition(), m.offset() + 1);
        Ok(Some(m))
    }
}

/// Whether `position` (the next offset read, per partition) has reached `ends`.
pub fn reached(position: &HashMap<i32, i64>, ends: &HashMap<i32, i64>) -> bool {
    ends.iter()
        .all(|(p, end)| position.get(p).copied().unwrap_or(0) >= *end)
}
