//! The producer side: run updates to the status topic and failed records to the DLQ.
//!
//! Both go through one idempotent producer (`enable.idempotence=true`, `acks=all`). A send
//! returns only once the broker has acknowledged the record; failures are retried with
//! backoff until they succeed or the hard-stop token fires. Nothing is dropped: a caller
//! that gets [`Stopped`] must not complete the offset of its event.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use std::sync::Arc;

use crate::backoff::{Backoff, Jitter};
use crate::config::KafkaConfig;
use crate::telemetry::metrics;
use crate::telemetry::scopeguard;

pub use super::producer::SharedProducer;
use super::sanitize::sanitized;
use crate::model::{DlqRecord, RunUpdate};

/// The publish was abandoned because switchyard is stopping (past its grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("publish abandoned: switchyard is stopping")]
pub struct Stopped;

pub struct Publisher {
    producer: SharedProducer,
    codec: Arc<crate::codec::avro::Codec>,
    status_topic: String,
    dlq_topic: String,
    stop: CancellationToken,
    /// Port mode without an output cluster: run updates go here instead of the status
    /// topic, DLQ records are logged and counted, watches are not kept.
    direct: Option<Arc<dyn Direct>>,
}

/// Where run updates go when there is no status topic (Port mode without
/// `[kafka.output]`): Port's API. Returns once the update was taken (or refused for
/// good), or `Stopped` when `stop` fires first.
pub trait Direct: Send + Sync {
    fn update<'a>(
        &'a self,
        update: &'a RunUpdate,
        stop: &'a CancellationToken,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), Stopped>> + Send + 'a>>;
}

impl Publisher {
    /// Create the producer. `stop` is the hard-stop token: once it fires, pending
    /// publishes give up with [`Stopped`].
    pub fn new(
        cfg: &KafkaConfig,
        codec: Arc<crate::codec::avro::Codec>,
        stop: CancellationToken,
    ) -> rdkafka::error::KafkaResult<Self> {
        Ok(Publisher {
            producer: SharedProducer::new(super::producer_config(cfg))?,
            codec,
            status_topic: cfg.status_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            stop,
            direct: None,
        })
    }

    /// A publisher without switchyard's topics: run updates go to `direct`, DLQ records
    /// are logged and counted, watches are not kept. `cfg` is the cluster of the KAFKA and
    /// UPSERT_ENTITY backends' producer, created on first use only.
    pub fn direct(
        cfg: &KafkaConfig,
        codec: Arc<crate::codec::avro::Codec>,
        stop: CancellationToken,
        direct: Arc<dyn Direct>,
    ) -> Self {
        Publisher {
            producer: SharedProducer::lazy(super::producer_config(cfg)),
            codec,
            status_topic: String::new(),
            dlq_topic: String::new(),
            stop,
            direct: Some(direct),
        }
    }

    /// Whether switchyard's own topics are off (updates go straight to Port's API).
    pub fn is_direct(&self) -> bool {
        self.direct.is_some()
    }

    /// Publish a run update keyed by its run id; returns once the broker acknowledged it.
    pub async fn send_update(&self, update: &RunUpdate) -> Result<(), Stopped> {
        self.send_update_traced(update, None).await
    }

    /// [`send_update`](Self::send_update) with the run's W3C `traceparent` as a header.
    pub async fn send_update_traced(
        &self,
        update: &RunUpdate,
        traceparent: Option<&str>,
    ) -> Result<(), Stopped> {
        if let Some(d) = &self.direct {
            d.update(&sanitized(update), &self.stop).await?;
            metrics::get().run_updates.inc();
            return Ok(());
        }
        let payload = self.encoded(update).await?;
        let headers = update_headers(&payload, traceparent);
        self.send(
            &self.status_topic,
            Some(update.run_id.as_bytes()),
            Some(&payload),
            headers,
            Target::Status,
        )
        .await?;
        metrics::get().run_updates.inc();
        Ok(())
    }

    /// Hand a run update to the producer without waiting for the broker: the returned
    /// [`Pending`] is awaited later ([`RunWriter::settle`]). The record is queued before
    /// this returns, so updates enqueued one after another keep their order.
    pub async fn enqueue_update(
        &self,
        update: RunUpdate,
        traceparent: Option<String>,
    ) -> Result<Pending, Stopped> {
        if self.direct.is_some() {
            // Sent in order by `RunWriter::settle`.
            return Ok(Pending {
                update,
                traceparent,
                delivery: None,
            });
        }
        let payload = self.encoded(&update).await?;
        let headers = update_headers(&payload, traceparent.as_deref());
        let record = FutureRecord::<[u8], [u8]>::to(&self.status_topic)
            .key(update.run_id.as_bytes())
            .payload(&payload)
            .headers(headers);
        let delivery = self.producer.get().send_result(record).ok();
        Ok(Pending {
            update,
            traceparent,
            delivery,
        })
    }

    /// The update in the status topic's format; an encoding failure (the schema registry
    /// unreachable) is retried like a failed publish.
    async fn encoded(&self, update: &RunUpdate) -> Result<Vec<u8>, Stopped> {
        let update = &*sanitized(update);
        if let Some(json) = self.codec.encode_update_json(update) {
            return Ok(json);
        }
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            Jitter::None,
        );
        let mut wait = backoff.next_wait();
        loop {
            // Boxed: the Avro path (a registry request) would size every caller's future.
            match Box::pin(self.codec.encode_update(update)).await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => {
                    metrics::get().publish_failures.inc();
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "encoding a run update failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return Err(Stopped),
            }
            wait = backoff.next_wait();
        }
    }

    /// The codec of the triggers and status topics.
    pub fn codec(&self) -> &Arc<crate::codec::avro::Codec> {
        &self.codec
    }

    /// Publish a DLQ record; returns once the broker acknowledged it.
    pub async fn send_dlq(&self, record: &DlqRecord) -> Result<(), Stopped> {
        if self.direct.is_some() {
            log_unwritten_dlq(record);
            return Ok(());
        }
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (key, value) in &record.headers {
            headers = headers.insert(Header {
                key,
                value: value.as_deref(),
            });
        }
        self.send(
            &self.dlq_topic,
            record.key.as_deref(),
            record.payload.as_deref(),
            headers,
            Target::Dlq,
        )
        .await?;
        let class = record
            .headers
            .iter()
            .find(|(k, _)| k == crate::model::dead_letter::H_CLASS)
            .and_then(|(_, v)| std::str::from_utf8(v.as_deref()?).ok())
            .unwrap_or("unknown");
        metrics::get().dlq_records.with_label_values(&[class]).inc();
        Ok(())
    }

    /// Publish a JSON record (or a tombstone, with `payload` None) to `topic`; returns
    /// once the broker acknowledged it.
    pub async fn send_keyed(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(), Stopped> {
        if self.direct.is_some() {
            return Ok(()); // no watches topic: follows are not resumed after a restart
        }
        self.send(
            topic,
            Some(key.as_bytes()),
            payload,
            OwnedHeaders::new(),
            Target::Other,
        )
        .await
    }

    /// Send one record, retrying every failure with capped exponential backoff.
    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
        target: Target,
    ) -> Result<(), Stopped> {
        let mut backoff = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
            Jitter::None,
        );
        let mut wait = backoff.next_wait();
        // While a DLQ write keeps failing, its partition cannot commit past the event.
        let mut blocked = None;
        loop {
            let mut record = FutureRecord::<[u8], [u8]>::to(topic).headers(headers.clone());
            if let Some(k) = key {
                record = record.key(k);
            }
            if let Some(p) = payload {
                record = record.payload(p);
            }
            // The queue timeout makes `send` wait (instead of failing) while the local
            // queue is full; the delivery itself is bounded by `message.timeout.ms`.
            let producer = self.producer.get();
            let send = producer.send(record, Timeout::After(Duration::from_secs(5)));
            let result = tokio::select! {
                r = send => r,
                _ = self.stop.cancelled() => return Err(Stopped),
            };
            match result {
                Ok(_) => return Ok(()),
                Err((err, _)) => {
                    let m = metrics::get();
                    match target {
                        Target::Dlq => {
                            m.dlq_failures.inc();
                            blocked.get_or_insert_with(|| {
                                m.dlq_blocked.inc();
                                scopeguard(|| metrics::get().dlq_blocked.dec())
                            });
                        }
                        Target::Status => m.publish_failures.inc(),
                        Target::Other => {}
                    }
                    let too_large = matches!(
                        err.rdkafka_error_code(),
                        Some(
                            rdkafka::types::RDKafkaErrorCode::MessageSizeTooLarge
                                | rdkafka::types::RDKafkaErrorCode::InvalidMessageSize
                        )
                    );
                    if too_large {
                        let size = payload.map_or(0, <[u8]>::len) + key.map_or(0, <[u8]>::len);
                        tracing::error!(topic, error = %err, bytes = size,
                            "the broker refuses this record as too large: raise the topic's \
                             max.message.bytes (and the producer's message.max.bytes). Nothing \
                             is dropped: the event's partition is held here, retrying");
                    } else {
                        tracing::warn!(topic, error = %err, retry_in_ms = wait.as_millis() as u64,
                            "publish failed; retrying (the event's offset is not committed meanwhile)");
                    }
                    self.producer.recover(&producer, &err);
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.stop.cancelled() => return Err(Stopped),
            }
            wait = backoff.next_wait();
        }
    }

    /// Wait until every queued record is delivered, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        match self.producer.created() {
            Some(p) => p.flush(Timeout::After(timeout)),
            None => Ok(()),
        }
    }

    /// The shared idempotent producer, for backends that produce (KAFKA, UPSERT_ENTITY).
    pub fn producer(&self) -> SharedProducer {
        self.producer.clone()
    }

    pub fn status_topic(&self) -> &str {
        &self.status_topic
    }
}

/// Port mode without a DLQ: the record is logged (its switchyard-error headers, never its
/// payload) and counted in `port_skipped_total{reason=<class>}`, as the agent logs and
/// skips what it cannot process.
fn log_unwritten_dlq(record: &DlqRecord) {
    let header = |name: &str| {
        record
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    use crate::model::dead_letter as h;
    let class = header(h::H_CLASS);
    tracing::error!(class = %class, error = %header(h::H_ERROR), source = %header(h::H_SOURCE),
        "dead letter not written (Port mode without [kafka.output]: no DLQ topic); skipped");
    metrics::get()
        .port_skipped
        .with_label_values(&[&class])
        .inc();
}

/// Headers of a run-update record: its content type (from the encoded payload's first
/// byte) and the run's trace context.
fn update_headers(payload: &[u8], traceparent: Option<&str>) -> OwnedHeaders {
    let content_type = match payload.first() {
        Some(0) => "application/vnd.switchyard.run-update.v1+avro",
        _ => "application/json",
    };
    let headers = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some(content_type),
    });
    match traceparent {
        Some(tp) => headers.insert(Header {
            key: crate::telemetry::trace::HEADER,
            value: Some(tp),
        }),
        None => headers,
    }
}

/// A run update handed to the producer and not yet acknowledged.
pub struct Pending {
    pub(crate) update: RunUpdate,
    pub(crate) traceparent: Option<String>,
    /// `None` when the local queue refused it (it is then sent the slow way).
    pub(crate) delivery: Option<rdkafka::producer::DeliveryFuture>,
}

/// What a send is for, for metrics.
#[derive(Clone, Copy)]
enum Target {
    Status,
    Dlq,
    Other,
}
