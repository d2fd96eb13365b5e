//! The shared idempotent producer of the publisher and the KAFKA and UPSERT_ENTITY
//! backends: created at start (or on first use), replaced when librdkafka reports it
//! fenced or fatal.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// The idempotent producer, replaced when librdkafka reports a fatal error.
///
/// An idempotent producer that hits a fatal error (for example a broker that answers the
/// epoch bump after a rejected batch with `PRODUCER_FENCED`) fails every later send. A
/// sender that sees a failure calls [`SharedProducer::recover`], which swaps in a new
/// producer (a new producer id) once; the sender's retry then goes through it.
#[derive(Clone)]
pub struct SharedProducer {
    inner: Arc<SharedInner>,
}

struct SharedInner {
    config: rdkafka::ClientConfig,
    /// `None` until first used, for a producer created lazily.
    current: std::sync::RwLock<Option<FutureProducer>>,
}

impl SharedProducer {
    pub(super) fn new(config: rdkafka::ClientConfig) -> rdkafka::error::KafkaResult<Self> {
        let producer = config.create()?;
        Ok(SharedProducer {
            inner: Arc::new(SharedInner {
                config,
                current: std::sync::RwLock::new(Some(producer)),
            }),
        })
    }

    /// A producer created on first use: in Port mode without an output cluster, no
    /// producer (no connection) exists unless a KAFKA or UPSERT_ENTITY run needs one.
    pub(super) fn lazy(config: rdkafka::ClientConfig) -> Self {
        SharedProducer {
            inner: Arc::new(SharedInner {
                config,
                current: std::sync::RwLock::new(None),
            }),
        }
    }

    /// The producer to send with now.
    pub fn get(&self) -> FutureProducer {
        if let Some(p) = self
            .inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
        {
            return p.clone();
        }
        let mut slot = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        slot.get_or_insert_with(|| {
            self.inner
                .config
                .create()
                .expect("the producer settings were checked at start")
        })
        .clone()
    }

    /// The producer, when one was created.
    pub(super) fn created(&self) -> Option<FutureProducer> {
        self.inner
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Send one record (waiting up to `queue_timeout` for room in the local queue) and
    /// replace the producer when the failure says it is fenced or fatal.
    pub async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: Duration,
    ) -> rdkafka::producer::future_producer::OwnedDeliveryResult
    where
        K: rdkafka::message::ToBytes + ?Sized,
        P: rdkafka::message::ToBytes + ?Sized,
    {
        let producer = self.get();
        let sent = producer.send(record, Timeout::After(queue_timeout)).await;
        if let Err((e, _)) = &sent {
            self.recover(&producer, e);
        }
        sent
    }

    /// After a send through `used` failed with `err`: when `used` is in a fatal state,
    /// or the broker fenced its producer id, replace it (unless another sender already
    /// did).
    pub fn recover(&self, used: &FutureProducer, err: &rdkafka::error::KafkaError) {
        use rdkafka::error::RDKafkaErrorCode as C;
        let (code, reason) = match used.client().fatal_error() {
            Some(fatal) => fatal,
            None => match err.rdkafka_error_code() {
                Some(
                    c @ (C::ProducerFenced
                    | C::InvalidProducerEpoch
                    | C::OutOfOrderSequenceNumber
                    | C::UnknownProducerId),
                ) => (c, err.to_string()),
                _ => return,
            },
        };
        let mut current = self
            .inner
            .current
            .write()
            .unwrap_or_else(|p| p.into_inner());
        if current
            .as_ref()
            .is_some_and(|c| c.client().native_ptr() != used.client().native_ptr())
        {
            return; // already replaced
        }
        match self.inner.config.create::<FutureProducer>() {
            Ok(fresh) => {
                *current = Some(fresh);
                tracing::error!(error = ?code, reason, "producer hit a fatal error; replaced it with a new producer (pending sends are retried through it)");
            }
            Err(e) => {
                tracing::error!(error = %e, "producer hit a fatal error and a new one could not be created; retrying")
            }
        }
    }
}
