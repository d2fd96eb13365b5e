//! The triggers-topic consumer: one group member on a dedicated thread, one tokio task per
//! assigned partition.
//!
//! The thread polls librdkafka, tracks every offset it hands out in the partition's
//! [`PartitionTracker`], and applies completions that come back from the pipeline:
//! - an offset is stored (`store_offsets`, exact value, no `+1`) only when a completion
//!   moves the partition's contiguous watermark, and auto-commit only commits stored
//!   offsets (`enable.auto.offset.store=false`);
//! - each assigned partition gets its own librdkafka queue (`split_partition_queue`, done
//!   in the assign callback, before its first fetch can arrive); the thread reads a
//!   partition's queue only while the partition has fewer than `partition_window` events
//!   in flight, so a full partition is simply not read. A split partition is never
//!   paused: pausing makes librdkafka drop the partition's prefetched records and fetch
//!   them again, which held throughput to a fraction of what the pipe allows
//!   (BENCHMARKS.md). Only a partition whose records arrive on the main queue (not yet
//!   split) is paused, when its backlog outgrows the window. librdkafka's
//!   prefetch per partition is bounded by `queued.min.messages` and
//!   `queued.max.messages.kbytes`. The thread keeps polling the main queue, so the member
//!   stays in the group and callbacks are served;
//! - on revoke and on shutdown, intake stops, started work drains up to the grace period,
//!   the watermarks are committed synchronously and the partition state is dropped, so
//!   completions that arrive later (an older generation) are ignored.
//!
//! Polling runs on its own OS thread because the rebalance callback blocks while it drains;
//! on a tokio worker that would stall the very tasks it waits for.

use std::collections::HashMap;
use std::future::Future;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::TopicPartitionList;
use tokio_util::sync::CancellationToken;

mod drain;
mod partition;
mod ticket;

pub use partition::Ctx;
use partition::State;
use ticket::Completion;
pub use ticket::{isolate, Detached, Panicked, Ticket};

use super::offsets::{PartitionTracker, Tracked};
use crate::config::{Config, GroupProtocol};
use crate::model::TriggerRecord;

/// How long one `poll` of the main queue may block. It bounds how late completions are
/// applied and how long a record waits in its partition's queue when all is idle (the
/// partition queues cannot wake a blocked main-queue poll).
const POLL_INTERVAL: Duration = Duration::from_millis(2);

/// How often the per-partition gauges are refreshed.
const EXPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Receives the records of one partition, in offset order, from that partition's task.
pub trait Sink: Send + Sync + 'static {
    /// Take one record. The [`Ticket`] must be completed once the run update for the event
    /// is acknowledged; dropping it leaves the offset uncommitted (it will be redelivered).
    fn accept(&self, record: TriggerRecord, ticket: Ticket) -> impl Future<Output = ()> + Send;

    /// Partitions were assigned to this member (called on the consumer thread).
    fn assigned(&self, _partitions: &[(String, i32)]) {}

    /// Partitions were revoked, after their in-flight events drained (consumer thread).
    fn revoked(&self, _partitions: &[(String, i32)]) {}
}

type Tp = (String, i32);

/// What a consumer reads: its group and topics.
#[derive(Debug, Clone)]
pub struct Subscription {
    /// The cluster (brokers, security, client options).
    pub kafka: crate::config::KafkaConfig,
    pub group: String,
    pub topics: Vec<String>,
    /// Joining the group makes `/readyz` ready (the triggers consumer).
    pub marks_ready: bool,
}

impl Subscription {
    /// The dispatcher's: `kafka.group_id` on the triggers topic and `kafka.inputs`.
    pub fn triggers(cfg: &Config) -> Self {
        Subscription {
            kafka: cfg.kafka.clone(),
            group: cfg.kafka.group_id.clone(),
            topics: cfg.input_topics().into_iter().map(|(t, _)| t).collect(),
            marks_ready: true,
        }
    }
}

pub(super) fn partitions_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

pub(super) fn single(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition(&tp.0, tp.1);
    tpl
}

pub(super) fn tpl_offsets(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

pub(super) fn detach<M: Message>(m: &M) -> TriggerRecord {
    let headers = m
        .headers()
        .map(|hs| {
            hs.iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect()
        })
        .unwrap_or_default();
    TriggerRecord {
        topic: m.topic().to_owned(),
        partition: m.partition(),
        offset: m.offset(),
        key: m.key().map(<[u8]>::to_vec),
        payload: m.payload().map(<[u8]>::to_vec),
        headers,
        timestamp_ms: m.timestamp().to_millis(),
    }
}

/// Handle on the running consumer thread.
pub struct ConsumerHandle {
    thread: std::thread::JoinHandle<()>,
}

impl ConsumerHandle {
    /// Wait for the thread to finish its shutdown drain and commit.
    pub async fn join(self) {
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Create the group member, subscribe, and start the polling thread. The thread runs
/// until `shutdown` fires, then drains, commits and closes.
pub fn start<S: Sink>(
    cfg: &Config,
    sub: Subscription,
    sink: Arc<S>,
    shutdown: CancellationToken,
) -> Result<ConsumerHandle, rdkafka::error::KafkaError> {
    let k = &sub.kafka;
    let mut c = super::client_config(k);
    c.set("group.id", &sub.group)
        .set("enable.auto.commit", "true")
        // Frequent commits of stored offsets keep the redelivery window small when a
        // commit in the revoke callback is refused (some brokers reject commits while
        // the group is rebalancing).
        .set("auto.commit.interval.ms", "250")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // Feeds the consumer-lag metric.
        .set("statistics.interval.ms", "5000")
        // Each partition has its own queue, and these bound what librdkafka prefetches
        // into each one (its defaults, 100,000 records or 64 MiB, apply per partition
        // then): about two windows ahead of what is in flight.
        .set(
            "queued.min.messages",
            (cfg.dispatch.partition_window * 2).max(1000).to_string(),
        )
        .set("queued.max.messages.kbytes", "16384");
    match k.group_protocol {
        // Incremental rebalancing: only the partitions that change owner are revoked,
        // the others keep flowing (eager assignment stops the whole group).
        GroupProtocol::Classic => c.set("partition.assignment.strategy", "cooperative-sticky"),
        // KIP-848: the broker assigns, incrementally too. Validation refuses the
        // classic-only settings librdkafka would reject.
        GroupProtocol::Consumer => c.set("group.protocol", "consumer"),
    };
    // The operator's consumer options win over these defaults (validation keeps
    // enable.auto.offset.store, group.id and group.protocol ours).
    for (key, v) in &k.consumer {
        c.set(key, v);
    }
    let static_member = c.get("group.instance.id").is_some_and(|id| !id.is_empty());
    let (tx, rx) = mpsc::channel();
    let ctx = Ctx {
        marks_ready: sub.marks_ready,
        me: OnceLock::new(),
        state: Mutex::new(State {
            parts: HashMap::new(),
            next_generation: 0,
        }),
        sink,
        handle: tokio::runtime::Handle::current(),
        tx,
        rx: Mutex::new(rx),
        window: cfg.dispatch.partition_window,
        window_bytes: cfg.dispatch.partition_window_bytes,
        grace: cfg.dispatch.shutdown_grace,
    };
    let consumer: Arc<BaseConsumer<Ctx<S>>> = Arc::new(c.create_with_context(ctx)?);
    let _ = consumer.context().me.set(Arc::downgrade(&consumer));
    let topics: Vec<&str> = sub.topics.iter().map(String::as_str).collect();
    consumer.subscribe(&topics)?;
    let thread = std::thread::Builder::new()
        .name("switchyard-consumer".into())
        .spawn(move || poll_loop(consumer, shutdown, static_member))
        .expect("spawning a thread only fails when the OS is out of resources");
    Ok(ConsumerHandle { thread })
}

/// `static_member`: the member has a `group.instance.id` (KIP-345), so it must not leave
/// the group on shutdown: the instance that comes back with the same id within the
/// session timeout gets its partitions back without a rebalance.
fn poll_loop<S: Sink>(
    consumer: Arc<BaseConsumer<Ctx<S>>>,
    shutdown: CancellationToken,
    static_member: bool,
) {
    let mut exported = Instant::now();
    while !shutdown.is_cancelled() {
        if exported.elapsed() >= EXPORT_INTERVAL {
            consumer.context().export();
            exported = Instant::now();
        }
        // The main queue: callbacks, and records fetched before their partition's
        // queue was split. It is emptied before the partition queues are read, so those
        // records are handed out before any that were fetched after the split.
        let mut wait = POLL_INTERVAL;
        while let Some(polled) = consumer.poll(wait) {
            match polled {
                Ok(m) => {
                    let record = detach(&m);
                    drop(m);
                    consumer.context().on_main_queue(&consumer, record);
                }
                Err(e) => tracing::warn!(error = %e, "consumer error"),
            }
            wait = Duration::ZERO;
        }
        consumer.context().apply_pending(&consumer, None);
        consumer.context().fill(&consumer);
    }
    let ctx = consumer.context();
    let all = ctx.assigned();
    tracing::info!(partitions = all.len(), "stopping: draining in-flight runs");
    ctx.drain(&consumer, &all);
    ctx.sink.revoked(&all);
    if static_member {
        // Closing (the drop below) does not send LeaveGroup for a static member;
        // unsubscribing would.
        tracing::info!("static group member: keeping the membership for the next start");
    } else {
        consumer.unsubscribe();
    }
    // The drain dropped the partition queues, which held the only other references.
    drop(consumer);
    tracing::info!("consumer closed");
}
