//! Kafka plumbing: client settings, the topic check, the status/DLQ publisher, the
//! consumer (partition tasks) and the offset watermark tracker.

pub mod consumer;
pub mod offsets;
pub mod publisher;
pub mod topics;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Base librdkafka settings shared by every client: brokers plus `kafka.common`.
pub fn client_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    for (k, v) in &cfg.common {
        c.set(k, v);
    }
    c
}

/// Settings of a consumer: [`client_config`] plus `kafka.consumer`.
pub fn consumer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    for (k, v) in &cfg.consumer {
        c.set(k, v);
    }
    c
}

/// A record read from the triggers topic, detached from librdkafka's buffers.
#[derive(Debug, Clone)]
pub struct TriggerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Record timestamp in milliseconds since the epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
}

impl TriggerRecord {
    /// `topic/partition/offset`, the `switchyard-source` notation.
    pub fn source(&self) -> crate::model::SourceRef {
        crate::model::SourceRef {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The record key as text, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}
