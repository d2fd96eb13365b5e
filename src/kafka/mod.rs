//! Kafka plumbing: client settings, the topic check, the status/DLQ publisher, the
//! consumer (partition tasks) and the offset watermark tracker.

pub mod consumer;
pub mod offsets;
pub mod publisher;
pub mod sanitize;
pub mod tail;
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

/// Settings of every producer switchyard creates (the publisher, `dlq replay`,
/// `trigger`): [`client_config`], idempotent with `acks=all`, a 2 ms linger, then
/// `kafka.producer`.
pub fn producer_config(cfg: &KafkaConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2");
    for (k, v) in &cfg.producer {
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
