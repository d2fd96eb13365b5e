//! Kafka plumbing: client settings, the topic check, the status/DLQ publisher, the
//! consumer (partition tasks) and the offset watermark tracker.

pub mod consumer;
pub mod offsets;
pub mod producer;
pub mod publisher;
pub mod sanitize;
pub mod tail;
pub mod topics;

use rdkafka::ClientConfig;

use crate::config::KafkaConfig;

/// Fired when a broker refuses the client's credentials (SASL authentication failed), so
/// that Port mode can fetch new ones from Port's API.
pub fn auth_failures() -> &'static tokio::sync::Notify {
    static N: std::sync::OnceLock<tokio::sync::Notify> = std::sync::OnceLock::new();
    N.get_or_init(tokio::sync::Notify::new)
}

/// Note a client error; an authentication failure fires [`auth_failures`].
pub fn note_client_error(error: &rdkafka::error::KafkaError) {
    use rdkafka::types::RDKafkaErrorCode as C;
    if matches!(
        error.rdkafka_error_code(),
        Some(C::Authentication | C::SaslAuthenticationFailed)
    ) {
        auth_failures().notify_one();
    }
}

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
