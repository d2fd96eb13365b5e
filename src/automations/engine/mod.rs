//! The engine: one consumer-group member on its own thread, reading the entities topic,
//! the status topic and the change-log topic, and one transactional producer per
//! assigned partition (`transactional.id` = `switchyard-automations.{group}.{topic}.{partition}`).
//!
//! Per partition, changes are processed in offset order and batched: one transaction
//! carries the batch's emitted triggers, its timer records and the partition's next
//! offset (`send_offsets_to_transaction`). A crash before the commit leaves nothing
//! visible to `read_committed` readers and the offsets where they were, so the batch is
//! processed again from the same state: every qualifying change emits exactly once.
//!
//! On assignment the new owner first initialises its producer (which fences a dead or
//! lingering predecessor with the same transactional id at once and aborts its open
//! transaction), then reads the committed offset, rebuilds the partition's state from the
//! topic itself up to that offset, and loads the partition's timers. On revoke the
//! partition's uncommitted batch is dropped: its changes are the next owner's.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::definition::EventType;
use super::eval::{Evaluator, Verdict};
use super::event::{self, ChangeEvent};
use super::state::{parse_time_ms, Out, PartitionState, SourceKind, Timer};
use super::store::Definitions;
use crate::config::KafkaConfig;
use crate::telemetry::metrics;

mod changes;
mod kafka_io;

use kafka_io::commit;

type Tp = (String, i32);
type TxProducer = ThreadedProducer<DefaultProducerContext>;

const TXN_CALL: Duration = Duration::from_secs(30);

/// Everything the engine's thread needs, fixed at start.
pub struct Settings {
    pub kafka: KafkaConfig,
    pub group: String,
    pub triggers_topic: String,
    pub triggers_avro: bool,
    pub timers_topic: String,
    pub entities_topic: String,
    pub changes_topic: Option<String>,
    /// The status topic, when run changes are read.
    pub status_topic: Option<String>,
    pub max_hops: u32,
    /// A group's first start on a partition begins at its end (earlier changes only
    /// build state), not at its beginning.
    pub start_latest: bool,
    pub max_state_bytes: usize,
    pub max_batch: usize,
    pub flush_interval: Duration,
    pub transaction_timeout: Duration,
    pub mac_key: Option<Vec<u8>>,
}

impl Settings {
    fn kind_of(&self, topic: &str) -> Option<SourceKind> {
        if topic == self.entities_topic {
            Some(SourceKind::Entities)
        } else if Some(topic) == self.changes_topic.as_deref() {
            Some(SourceKind::Changes)
        } else if Some(topic) == self.status_topic.as_deref() {
            Some(SourceKind::Runs)
        } else {
            None
        }
    }

    pub fn topics(&self) -> Vec<String> {
        let mut t = vec![self.entities_topic.clone()];
        t.extend(self.changes_topic.clone());
        t.extend(self.status_topic.clone());
        t
    }
}

/// One assigned partition.
struct Part {
    kind: SourceKind,
    producer: TxProducer,
    state: PartitionState,
    /// Offset committed with the last transaction (the next to process).
    committed: Option<i64>,
    /// Next offset after the last processed record (committed with the next transaction).
    next: Option<i64>,
    batch: Vec<Out>,
    /// Records processed since the last commit.
    pending: usize,
    since: Option<Instant>,
    /// Over `max_state_bytes`: not read until restarted (nothing past it commits).
    stopped: bool,
    /// The producer failed fatally: initialise again.
    broken: bool,
}

struct Ctx {
    parts: Mutex<HashMap<Tp, Part>>,
    assigned: Mutex<Vec<Tp>>,
}

impl ClientContext for Ctx {
    fn error(&self, error: KafkaError, reason: &str) {
        crate::kafka::note_client_error(&error);
        tracing::warn!(error = %error, reason, "automations consumer error");
    }
}

impl ConsumerContext for Ctx {
    fn pre_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let mut parts = self.parts.lock().unwrap_or_else(|p| p.into_inner());
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                let tp = (e.topic().to_owned(), e.partition());
                assigned.retain(|a| *a != tp);
                if let Some(p) = parts.remove(&tp) {
                    tracing::info!(topic = %tp.0, partition = tp.1, uncommitted = p.pending,
                        "automations partition revoked; its uncommitted changes are the next owner's");
                }
            }
        }
    }

    fn post_rebalance(&self, _c: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            for e in tpl.elements() {
                assigned.push((e.topic().to_owned(), e.partition()));
            }
        }
    }
}

/// The running engine.
pub struct EngineHandle {
    thread: std::thread::JoinHandle<()>,
}

impl EngineHandle {
    /// Wait until the engine has committed what it processed and left the group.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Join the group and start the engine's thread; it runs until `shutdown`.
pub fn start(
    settings: Settings,
    defs: Arc<Definitions>,
    evaluator: Evaluator,
    codec: Arc<crate::codec::avro::Codec>,
    shutdown: CancellationToken,
) -> anyhow::Result<EngineHandle> {
    let k = &settings.kafka;
    let mut c = crate::kafka::client_config(k);
    c.set("group.id", &settings.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("isolation.level", "read_committed");
    match k.group_protocol {
        crate::config::GroupProtocol::Classic => {
            c.set("partition.assignment.strategy", "cooperative-sticky")
        }
        crate::config::GroupProtocol::Consumer => c.set("group.protocol", "consumer"),
    };
    for (key, v) in &k.consumer {
        if !matches!(
            key.as_str(),
            "group.id" | "enable.auto.commit" | "isolation.level" | "group.instance.id"
        ) {
            c.set(key, v);
        }
    }
    let ctx = Ctx {
        parts: Mutex::default(),
        assigned: Mutex::default(),
    };
    let consumer: BaseConsumer<Ctx> = c.create_with_context(ctx)?;
    let topics = settings.topics();
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer.subscribe(&names)?;
    tracing::info!(group = %settings.group, topics = ?topics, automations = defs.get().len(),
        "automations engine running");
    let engine = Engine {
        s: settings,
        defs,
        evaluator,
        codec,
        handle: tokio::runtime::Handle::current(),
        retry_at: HashMap::new(),
    };
    let thread = std::thread::Builder::new()
        .name("switchyard-automations".into())
        .spawn(move || engine.run(consumer, shutdown))
        .expect("spawning a thread only fails when the OS is out of resources");
    Ok(EngineHandle { thread })
}

struct Engine {
    s: Settings,
    defs: Arc<Definitions>,
    evaluator: Evaluator,
    codec: Arc<crate::codec::avro::Codec>,
    handle: tokio::runtime::Handle,
    /// Partitions whose initialisation failed, and when to try again.
    retry_at: HashMap<Tp, Instant>,
}

impl Engine {
    fn run(mut self, consumer: BaseConsumer<Ctx>, shutdown: CancellationToken) {
        let mut gauges = Instant::now();
        while !shutdown.is_cancelled() {
            let polled = consumer.poll(self.wait(&consumer));
            self.init_assigned(&consumer);
            match polled {
                Some(Ok(m)) => self.on_record(&consumer, &m),
                Some(Err(e)) => tracing::warn!(error = %e, "automations consumer error"),
                None => {}
            }
            self.fire_timers(&consumer);
            self.flush(&consumer, false);
            if gauges.elapsed() >= Duration::from_secs(1) {
                self.export(&consumer);
                gauges = Instant::now();
            }
        }
        tracing::info!("automations engine stopping: committing what it processed");
        self.flush(&consumer, true);
        consumer.unsubscribe();
        drop(consumer);
        tracing::info!("automations engine stopped");
    }

    /// How long to poll: until the next flush or timer, at most 50 ms.
    fn wait(&self, consumer: &BaseConsumer<Ctx>) -> Duration {
        let parts = lock(&consumer.context().parts);
        let now = now_ms();
        let mut wait = Duration::from_millis(50);
        for p in parts.values() {
            if let Some(since) = p.since {
                wait = wait.min(self.s.flush_interval.saturating_sub(since.elapsed()));
            }
            if let Some(due) = p.state.next_due() {
                wait = wait.min(Duration::from_millis((due - now).max(0) as u64));
            }
        }
        wait
    }

    fn init_assigned(&mut self, consumer: &BaseConsumer<Ctx>) {
        let ctx = consumer.context();
        let broken: Vec<Tp> = lock(&ctx.parts)
            .iter()
            .filter(|(_, p)| p.broken)
            .map(|(tp, _)| tp.clone())
            .collect();
        for tp in broken {
            lock(&ctx.parts).remove(&tp);
            lock(&ctx.assigned).push(tp.clone());
            self.retry_at
                .insert(tp, Instant::now() + Duration::from_secs(1));
        }
        let todo: Vec<Tp> = lock(&ctx.assigned).clone();
        for tp in todo {
            if self.retry_at.get(&tp).is_some_and(|t| Instant::now() < *t) {
                continue;
            }
            let reinit = self.retry_at.remove(&tp).is_some();
            match self.init(consumer, &tp, reinit) {
                Ok(part) => {
                    let mut assigned = lock(&ctx.assigned);
                    // Revoked while it was being initialised: drop it.
                    if assigned.contains(&tp) {
                        assigned.retain(|a| *a != tp);
                        lock(&ctx.parts).insert(tp, part);
                    }
                }
                Err(e) => {
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e,
                        "initialising an automations partition failed; retrying in 5 s");
                    self.retry_at
                        .insert(tp, Instant::now() + Duration::from_secs(5));
                }
            }
        }
    }

    /// Commit the batches that are due (all of them with `all`).
    fn flush(&mut self, consumer: &BaseConsumer<Ctx>, all: bool) {
        let mut parts = lock(&consumer.context().parts);
        for (tp, part) in parts.iter_mut() {
            let Some(since) = part.since else { continue };
            if part.broken
                || !(all
                    || part.pending >= self.s.max_batch
                    || part.batch.len() >= self.s.max_batch
                    || since.elapsed() >= self.s.flush_interval)
            {
                continue;
            }
            match commit(part, tp, consumer) {
                Ok(()) => {
                    part.committed = part.next.or(part.committed);
                    part.batch.clear();
                    part.pending = 0;
                    part.since = None;
                }
                Err(e) => {
                    metrics::get().automation_transaction_aborts.inc();
                    let fatal = matches!(&e, KafkaError::Transaction(t) if t.is_fatal());
                    tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, fatal,
                        "an automations transaction failed and was aborted; retrying");
                    if fatal {
                        // Fenced, or the producer is unusable: initialise the partition
                        // again (a new owner, if any, has it already and fences us).
                        part.broken = true;
                    } else if let Err(e) = part.producer.abort_transaction(TXN_CALL) {
                        tracing::warn!(error = %e, "aborting the transaction failed; initialising again");
                        part.broken = true;
                    }
                    part.since = Some(Instant::now());
                }
            }
        }
    }

    fn export(&self, consumer: &BaseConsumer<Ctx>) {
        let parts = lock(&consumer.context().parts);
        let now = now_ms();
        let m = metrics::get();
        let pending: usize = parts.values().map(|p| p.state.due.len()).sum();
        let oldest = parts
            .values()
            .filter_map(|p| p.state.next_due())
            .min()
            .map_or(0, |d| (now - d).max(0) / 1000);
        let bytes: usize = parts.values().map(|p| p.state.bytes).sum();
        m.automation_timers_pending.set(pending as i64);
        m.automation_timer_overdue_seconds.set(oldest);
        m.automation_state_bytes.set(bytes as i64);
        m.automation_partitions.set(parts.len() as i64);
    }
}

pub(super) fn single(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&tp.0, tp.1);
    tpl
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

pub(super) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

pub(super) fn rfc3339_ms(ms: i64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    t.format(&fmt).unwrap_or_default()
}

pub(super) fn source_label(kind: SourceKind) -> &'static str {
    match kind {
        SourceKind::Entities => "entity",
        SourceKind::Runs => "run",
        SourceKind::Changes => "changes",
    }
}

/// A JSON pointer segment (`~` → `~0`, `/` → `~1`).
pub(super) fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
