//! KAFKA: produce the rendered `payload` (object or array) to a topic.
//!
//! - topic: `invocationMethod.topic`, else `backends.kafka.topic`;
//! - key = run id; headers `switchyard-run-id` and `switchyard-action`;
//! - the shared idempotent producer (`acks=all`);
//! - a log update "published to topic/partition@offset"; the run stays IN_PROGRESS until
//!   the consumer reports, unless `synchronized: true`, where the acknowledgement is SUCCESS.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::kafka::publisher::SharedProducer;
use serde_json::Value;

use super::{flag, AttemptFuture, Backend, Outcome, Report, Request};
use crate::config::KafkaBackendConfig;
use crate::kafka::topics::{TopicGuard, TopicSpec};

pub struct KafkaBackend {
    producer: SharedProducer,
    default_topic: String,
    /// Topics an event may name (`backends.kafka.topics`), besides the default.
    allowed: Vec<String>,
    /// switchyard's own topics: never written here, even if configured by mistake.
    own: Vec<String>,
    topics: Arc<TopicGuard>,
}

impl KafkaBackend {
    pub fn new(
        cfg: &KafkaBackendConfig,
        producer: SharedProducer,
        topics: Arc<TopicGuard>,
        own: Vec<String>,
    ) -> Self {
        KafkaBackend {
            producer,
            default_topic: cfg.topic.clone(),
            allowed: cfg.topics.clone(),
            own,
            topics,
        }
    }
}

impl Backend for KafkaBackend {
    fn kind(&self) -> &'static str {
        "KAFKA"
    }

    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a> {
        Box::pin(self.produce(req))
    }
}

impl KafkaBackend {
    /// Whether an event may write to `topic`.
    fn check_topic(&self, topic: &str) -> Result<(), String> {
        if self.own.iter().any(|t| t == topic) {
            return Err(format!(
                "invocationMethod.topic: {topic:?} is one of switchyard's own topics; the KAFKA \
                 backend never writes to it"
            ));
        }
        if topic == self.default_topic || self.allowed.iter().any(|t| t == topic) {
            return Ok(());
        }
        Err(format!(
            "invocationMethod.topic: {topic:?} is not allowed; backends.kafka.topics lists the \
             topics events may name (now: {:?}, besides {:?})",
            self.allowed, self.default_topic
        ))
    }

    async fn produce(&self, req: &Request) -> Report {
        let inv = &req.invocation;
        let payload = match inv.get("payload") {
            Some(p @ (Value::Object(_) | Value::Array(_))) => p,
            None | Some(Value::Null) => return Report::invalid("payload", "missing"),
            Some(other) => {
                return Report::invalid("payload", format!("expected object or array, got {other}"))
            }
        };
        let topic = match inv.get("topic") {
            None | Some(Value::Null) => self.default_topic.as_str(),
            Some(Value::String(t)) if !t.is_empty() => t.as_str(),
            Some(other) => {
                return Report::invalid("topic", format!("expected a topic name, got {other}"))
            }
        };
        let synchronized = match flag(inv.get("synchronized")) {
            Ok(s) => s,
            Err(e) => return Report::invalid("synchronized", e),
        };
        if let Err(refusal) = self.check_topic(topic) {
            crate::telemetry::metrics::get()
                .refusals
                .with_label_values(&["kafka_topic"])
                .inc();
            let mut r = Report::new(Outcome::Permanent, refusal);
            r.error_class = Some("kafka_topic");
            return r;
        }
        // Only the operator's default topic may be created; an event never creates one.
        let create = topic == self.default_topic && self.topics.create_topics();
        let spec = TopicSpec::plain(topic);
        if let Err(e) = self.topics.ensure(spec, create).await {
            let mut r = Report::new(Outcome::Retryable, format!("topic {topic}: {e}"));
            r.error_class = Some("kafka");
            return r;
        }
        let bytes = serde_json::to_vec(payload).expect("a JSON value always serialises");
        let traceparent = crate::telemetry::trace::current();
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: "switchyard-run-id",
                value: Some(req.run_id.as_str()),
            })
            .insert(Header {
                key: "switchyard-action",
                value: Some(req.event.action.identifier.as_str()),
            })
            .insert(Header {
                key: "content-type",
                value: Some("application/json"),
            });
        if let Some(tp) = &traceparent {
            headers = headers.insert(Header {
                key: crate::telemetry::trace::HEADER,
                value: Some(tp.as_str()),
            });
        }
        let record = FutureRecord::<str, [u8]>::to(topic)
            .key(&req.run_id)
            .payload(&bytes)
            .headers(headers);
        let sent = self.producer.send(record, Duration::from_secs(5)).await;
        match sent {
            Ok(d) => {
                let line = format!("published to {topic}/{}@{}", d.partition, d.offset);
                let outcome = if synchronized {
                    Outcome::Succeeded
                } else {
                    Outcome::Accepted
                };
                let mut r = Report::new(outcome, line.clone());
                r.log = Some(line);
                r
            }
            Err((e, _)) => {
                let mut r = Report::new(
                    Outcome::Retryable,
                    format!("publishing to {topic} failed: {e}"),
                );
                r.error_class = Some("kafka");
                r
            }
        }
    }
}
