//! Publishing trigger events (the `trigger` command and the demo).

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::config::KafkaConfig;
use crate::decode::decode_json;

/// Publish one trigger event to the triggers topic, keyed by its ordering key or run id.
/// Returns the run id. With `validate`, an event that switchyard would reject is refused
/// here, with the same message.
pub async fn publish(cfg: &KafkaConfig, payload: &[u8], validate: bool) -> anyhow::Result<String> {
    let (key, run_id) = match decode_json(payload) {
        Ok(ev) => {
            let key = ev.ordering_key.clone().unwrap_or_else(|| ev.run.id.clone());
            (Some(key), ev.run.id)
        }
        Err((bad, _)) if validate => bail!("{bad} (use --no-validate to publish it anyway)"),
        Err((_, id)) => (id.clone(), id.unwrap_or_default()),
    };
    let producer: FutureProducer = super::kafka::client_config(cfg)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the producer")?;
    let mut record = FutureRecord::<str, [u8]>::to(&cfg.triggers_topic).payload(payload);
    if let Some(k) = key.as_deref() {
        record = record.key(k);
    }
    producer
        .send(record, Timeout::After(Duration::from_secs(10)))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("publishing to {} failed: {e}", cfg.triggers_topic))?;
    Ok(run_id)
}
