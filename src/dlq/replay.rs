//! `switchyard dlq replay`: re-publish dead-lettered events to the topic they were read
//! from (the triggers topic, or another input topic such as Port's changelog).
//!
//! Records are selected by run id, error class and failure time. The original key,
//! value and headers are published again (our `switchyard-*` headers removed, a
//! `switchyard-replayed-from` header added). `--dry-run` lists what would be replayed.
//!
//! The DLQ is read from the beginning until every partition has reached the high
//! watermark read at start and no record arrived for a second (some brokers report the
//! watermark late, so the watermark alone is not trusted to mean "the end").

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;

use crate::config::{Config, KafkaConfig};
use crate::dlq;
use crate::kafka::tail::TopicTail;

/// Which DLQ records to replay. Empty sets select everything.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub run_ids: BTreeSet<String>,
    pub classes: BTreeSet<String>,
    /// Failure time bounds (RFC 3339 text compares in time order for UTC `…Z` values).
    pub since: Option<String>,
    pub until: Option<String>,
}

impl Selection {
    /// Whether a record with this run id, error class and failure time is selected.
    pub fn picks(&self, run_id: Option<&str>, class: Option<&str>, failed_at: &str) -> bool {
        (self.run_ids.is_empty() || run_id.is_some_and(|r| self.run_ids.contains(r)))
            && (self.classes.is_empty() || class.is_some_and(|c| self.classes.contains(c)))
            && self.since.as_deref().is_none_or(|t| failed_at >= t)
            && self.until.as_deref().is_none_or(|t| failed_at <= t)
    }
}

/// One DLQ record as read.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}

impl DeadLetter {
    /// The record as consumed.
    pub fn read(msg: &impl Message) -> DeadLetter {
        DeadLetter {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            payload: msg.payload().map(<[u8]>::to_vec),
            headers: msg
                .headers()
                .map(|hs| {
                    hs.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
            .map(|v| String::from_utf8_lossy(v).into_owned())
    }

    /// The run id, from the payload when it still parses (`run.id`, or a Port
    /// envelope's `context.runId`).
    pub fn run_id(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_slice(self.payload.as_deref()?).ok()?;
        v.pointer("/run/id")
            .or_else(|| v.pointer("/context/runId"))?
            .as_str()
            .map(str::to_owned)
    }

    /// The topic the record was consumed from (`switchyard-source`: topic/partition/offset).
    pub fn origin_topic(&self) -> Option<String> {
        let source = self.header(dlq::H_SOURCE)?;
        let (topic, _) = source.split_once('/')?;
        Some(topic.to_owned())
    }

    /// Where a replay publishes this record: its origin when switchyard consumes that
    /// topic, else the triggers topic.
    pub fn destination(&self, cfg: &Config) -> String {
        self.origin_topic()
            .filter(|t| cfg.input_topics().iter().any(|(input, _)| input == t))
            .unwrap_or_else(|| cfg.kafka.triggers_topic.clone())
    }

    fn selected(&self, s: &Selection) -> bool {
        s.picks(
            self.run_id().as_deref(),
            self.header(dlq::H_CLASS).as_deref(),
            &self.header(dlq::H_FAILED_AT).unwrap_or_default(),
        )
    }

    /// One line for the listing.
    pub fn describe(&self, topic: &str) -> String {
        format!(
            "{topic}/{}@{}  {}  [{}]  {}  (failed at {})",
            self.partition,
            self.offset,
            self.run_id().unwrap_or_else(|| "(no run id)".into()),
            self.header(dlq::H_CLASS).unwrap_or_default(),
            self.header(dlq::H_ERROR).unwrap_or_default(),
            self.header(dlq::H_FAILED_AT).unwrap_or_default(),
        )
    }
}

/// Read every DLQ record and return the selected ones.
pub async fn select(cfg: &KafkaConfig, s: &Selection) -> anyhow::Result<Vec<DeadLetter>> {
    let mut tail = TopicTail::open(cfg, &cfg.dlq_topic, "dlq-replay", &[]).await?;
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let caught_up = tail.caught_up();
        let idle = if caught_up {
            Duration::from_secs(1)
        } else {
            Duration::from_secs(15)
        };
        let msg = match tail.next(idle).await? {
            None if caught_up => break,
            None => anyhow::bail!("no DLQ records arrived for 15 s before reaching the end"),
            Some(m) => m,
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading the DLQ took over 5 minutes"
        );
        let letter = DeadLetter::read(&msg);
        if letter.selected(s) {
            out.push(letter);
        }
    }
    Ok(out)
}

/// Publish `letters` to the topics they came from; returns how many were published.
pub async fn replay(config: &Config, letters: &[DeadLetter]) -> anyhow::Result<usize> {
    let cfg = &config.kafka;
    let key = config.replay_key()?.ok_or_else(|| {
        anyhow::anyhow!(
            "dlq.replay_key is not set: switchyard honours a replayed record (no duplicate \
             check, no age check) only with a MAC made with that key; set it to the same \
             secret as the dispatchers'"
        )
    })?;
    let producer: FutureProducer = crate::kafka::producer_config(cfg).create()?;
    for l in letters {
        let source = format!("{}/{}/{}", cfg.dlq_topic, l.partition, l.offset);
        let mut headers = OwnedHeaders::new();
        for (k, v) in l
            .headers
            .iter()
            .filter(|(k, _)| !k.starts_with("switchyard-"))
        {
            headers = headers.insert(Header {
                key: k,
                value: v.as_deref(),
            });
        }
        headers = headers.insert(Header {
            key: dlq::H_REPLAYED_FROM,
            value: Some(source.as_str()),
        });
        let mac = dlq::replay_mac(&key, &source, l.key.as_deref(), l.payload.as_deref());
        headers = headers.insert(Header {
            key: dlq::H_REPLAY_MAC,
            value: Some(mac.as_str()),
        });
        let topic = l.destination(config);
        let mut record = FutureRecord::<[u8], [u8]>::to(&topic).headers(headers);
        if let Some(k) = &l.key {
            record = record.key(k);
        }
        if let Some(p) = &l.payload {
            record = record.payload(p);
        }
        producer
            .send(record, Timeout::After(Duration::from_secs(10)))
            .await
            .map_err(|(e, _)| anyhow::anyhow!("replaying {source}: {e}"))?;
    }
    Ok(letters.len())
}
