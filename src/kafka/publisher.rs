//! The producer side: run updates to the status topic and failed records to the DLQ.
//!
//! Both go through one idempotent producer (`enable.idempotence=true`, `acks=all`). A send
//! returns only once the broker has acknowledged the record; failures are retried with
//! backoff until they succeed or the hard-stop token fires. Nothing is dropped: a caller
//! that gets [`Stopped`] must not complete the offset of its event.

use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use std::sync::Arc;

use crate::model::{now_rfc3339, RunUpdate, SourceRef};

/// The publish was abandoned because switchyard is stopping (past its grace period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("publish abandoned: switchyard is stopping")]
pub struct Stopped;

/// A record for the dead-letter topic: the original record plus error headers.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

pub struct Publisher {
    producer: FutureProducer,
    status_topic: String,
    dlq_topic: String,
    stop: CancellationToken,
}

impl Publisher {
    /// Create the producer. `stop` is the hard-stop token: once it fires, pending
    /// publishes give up with [`Stopped`].
    pub fn new(cfg: &KafkaConfig, stop: CancellationToken) -> rdkafka::error::KafkaResult<Self> {
        let mut c = super::client_config(cfg);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2");
        for (k, v) in &cfg.producer {
            c.set(k, v);
        }
        Ok(Publisher {
            producer: c.create()?,
            status_topic: cfg.status_topic.clone(),
            dlq_topic: cfg.dlq_topic.clone(),
            stop,
        })
    }

    /// Publish a run update keyed by its run id; returns once the broker acknowledged it.
    pub async fn send_update(&self, update: &RunUpdate) -> Result<(), Stopped> {
        let payload = serde_json::to_vec(update).expect("a RunUpdate always serialises");
        let headers = OwnedHeaders::new().insert(Header {
            key: "content-type",
            value: Some("application/json"),
        });
        self.send(
            &self.status_topic,
            Some(update.run_id.as_bytes()),
            Some(&payload),
            headers,
        )
        .await
    }

    /// Publish a DLQ record; returns once the broker acknowledged it.
    pub async fn send_dlq(&self, record: &DlqRecord) -> Result<(), Stopped> {
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
        )
        .await
    }

    /// Publish a JSON record (or a tombstone, with `payload` None) to `topic`; returns
    /// once the broker acknowledged it.
    pub async fn send_keyed(
        &self,
        topic: &str,
        key: &str,
        payload: Option<&[u8]>,
    ) -> Result<(), Stopped> {
        self.send(topic, Some(key.as_bytes()), payload, OwnedHeaders::new())
            .await
    }

    /// Send one record, retrying every failure with capped exponential backoff.
    async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        payload: Option<&[u8]>,
        headers: OwnedHeaders,
    ) -> Result<(), Stopped> {
        let mut backoff = Duration::from_millis(100);
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
            let send = self
                .producer
                .send(record, Timeout::After(Duration::from_secs(5)));
            let result = tokio::select! {
                r = send => r,
                _ = self.stop.cancelled() => return Err(Stopped),
            };
            match result {
                Ok(_) => return Ok(()),
                Err((err, _)) => {
                    tracing::warn!(topic, error = %err, retry_in_ms = backoff.as_millis() as u64,
                        "publish failed; retrying");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => return Err(Stopped),
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Wait until every queued record is delivered, up to `timeout`.
    pub fn flush(&self, timeout: Duration) -> rdkafka::error::KafkaResult<()> {
        self.producer.flush(Timeout::After(timeout))
    }

    /// The shared idempotent producer, for backends that produce (KAFKA, UPSERT_ENTITY).
    pub fn producer(&self) -> FutureProducer {
        self.producer.clone()
    }

    pub fn status_topic(&self) -> &str {
        &self.status_topic
    }
}

/// Writes the updates of one run in order, numbering them (`seq`) and stamping time,
/// backend and source.
pub struct RunWriter {
    publisher: Arc<Publisher>,
    pub run_id: String,
    /// `seq` of the last update written.
    pub seq: u64,
    pub backend: Option<&'static str>,
    pub source: SourceRef,
}

impl RunWriter {
    pub fn new(
        publisher: Arc<Publisher>,
        run_id: &str,
        backend: Option<&'static str>,
        source: SourceRef,
    ) -> Self {
        RunWriter {
            publisher,
            run_id: run_id.to_owned(),
            seq: 0,
            backend,
            source,
        }
    }

    /// Publish `u` as this run's next update; returns once the broker acknowledged it.
    pub async fn emit(&mut self, mut u: RunUpdate) -> Result<(), Stopped> {
        self.seq += 1;
        u.seq = self.seq;
        u.at = now_rfc3339();
        u.backend = self.backend.map(str::to_owned);
        u.source = Some(self.source.clone());
        self.publisher.send_update(&u).await
    }
}
