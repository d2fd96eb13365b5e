//! Publishing trigger events (the `trigger` command and the demo).

use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use switchyard::codec::decode_json;
use switchyard::config::{Config, Format};

/// Publish one trigger event to the triggers topic, keyed by its ordering key or run id.
/// Returns the run id. With `validate`, an event that switchyard would reject is refused
/// here, with the same message. On an Avro triggers topic the JSON event is encoded in the
/// Avro wire format first.
pub async fn publish(config: &Config, payload: &[u8], validate: bool) -> anyhow::Result<String> {
    let cfg = &config.kafka;
    let decoded = if cfg.triggers_format == Format::Port {
        port_envelope(payload)
    } else {
        decode_json(payload)
            .map(|ev| {
                (
                    ev.ordering_key.clone().unwrap_or_else(|| ev.run.id.clone()),
                    ev.run.id,
                )
            })
            .map_err(|(bad, id)| (bad.to_string(), id))
    };
    let (key, run_id) = match decoded {
        Ok((key, run_id)) => (Some(key), run_id),
        Err((bad, _)) if validate => bail!("{bad} (use --no-validate to publish it anyway)"),
        Err((_, id)) => (id.clone(), id.unwrap_or_default()),
    };
    let producer: FutureProducer = switchyard::kafka::producer_config(cfg)
        .set("message.timeout.ms", "30000")
        .create()
        .context("creating the producer")?;
    let encoded;
    let payload = if cfg.triggers_format == Format::Avro {
        let event: serde_json::Value =
            serde_json::from_slice(payload).context("an Avro trigger is written from JSON")?;
        encoded = switchyard::codec::avro::Codec::from_config(config)
            .encode_trigger(&event)
            .await
            .map_err(|e| anyhow::anyhow!("encoding the event as Avro: {e}"))?;
        &encoded[..]
    } else {
        payload
    };
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

/// A Port agent envelope on a `port`-format triggers topic: keyed by `context.runId`, sent
/// as it is (its signature covers the exact message).
fn port_envelope(payload: &[u8]) -> Result<(String, String), (String, Option<String>)> {
    let v: serde_json::Value =
        serde_json::from_slice(payload).map_err(|e| (format!("malformed JSON: {e}"), None))?;
    match v
        .pointer("/context/runId")
        .and_then(serde_json::Value::as_str)
    {
        Some(id) if !id.is_empty() => Ok((id.to_owned(), id.to_owned())),
        _ => Err(("missing run id: context.runId: missing field".into(), None)),
    }
}
