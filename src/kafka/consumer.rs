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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc as tmpsc;
use tokio_util::sync::CancellationToken;

use super::offsets::{PartitionTracker, Tracked};
use crate::config::{Config, GroupProtocol};
use crate::model::TriggerRecord;
use crate::telemetry::metrics;

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

/// A completed (or abandoned) offset, sent back to the consumer thread.
struct Completion {
    tp: Tp,
    generation: u64,
    offset: i64,
    done: bool,
}

/// The right and duty to complete one offset. Holding it is holding a slot of the
/// partition's window.
pub struct Ticket {
    tp: Tp,
    generation: u64,
    offset: i64,
    tx: Sender<Completion>,
    intake: CancellationToken,
    hard: CancellationToken,
    done: bool,
}

impl Ticket {
    /// The event's run update has been acknowledged: its offset may be committed.
    pub fn complete(mut self) {
        self.done = true;
        self.send(true);
    }

    /// True once the partition is being revoked or switchyard is stopping: an event that
    /// has not started yet must not start (it will be redelivered to the next owner).
    pub fn intake_stopped(&self) -> bool {
        self.intake.is_cancelled()
    }

    /// Fires when the grace period for this partition ran out: abandon the work.
    pub fn abandoned(&self) -> &CancellationToken {
        &self.hard
    }

    fn send(&self, done: bool) {
        // The consumer thread may already be gone at shutdown; nothing to report then.
        let _ = self.tx.send(Completion {
            tp: self.tp.clone(),
            generation: self.generation,
            offset: self.offset,
            done,
        });
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        if rescuing() {
            // A run's task panicked (see [`isolate`]): hand the ticket to the task boundary,
            // which fails the run and completes the offset, instead of pinning it.
            let rescued = Ticket {
                tp: self.tp.clone(),
                generation: self.generation,
                offset: self.offset,
                tx: self.tx.clone(),
                intake: self.intake.clone(),
                hard: self.hard.clone(),
                done: false,
            };
            self.done = true;
            RESCUE.with(|r| r.borrow_mut().1.push(rescued));
            return;
        }
        self.send(false);
    }
}

/// When a dropped ticket is rescued rather than returned: while a panic unwinds inside
/// an [`isolate`]d future, and while that future is dropped after the panic.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Rescue {
    Off,
    Unwinding,
    Dropping,
}

thread_local! {
    static RESCUE: std::cell::RefCell<(Rescue, Vec<Ticket>)> =
        const { std::cell::RefCell::new((Rescue::Off, Vec::new())) };
}

fn rescuing() -> bool {
    RESCUE.with(|r| match r.borrow().0 {
        Rescue::Off => false,
        Rescue::Unwinding => std::thread::panicking(),
        Rescue::Dropping => true,
    })
}

/// Switch the mode and take the tickets rescued so far (dropped outside a rescue, they
/// are returned as usual).
fn set_rescue(mode: Rescue) -> Vec<Ticket> {
    RESCUE.with(|r| {
        let mut r = r.borrow_mut();
        r.0 = mode;
        std::mem::take(&mut r.1)
    })
}

/// A run's task panicked: what it said, and the tickets it held (rescued, not returned).
pub struct Panicked {
    pub message: String,
    pub tickets: Vec<Ticket>,
}

/// Run `fut`, catching a panic at this boundary. The tickets the future held are
/// rescued, so that the caller can fail the run and complete its offset: a panic never
/// pins a partition's watermark.
pub async fn isolate<F: std::future::Future>(fut: F) -> Result<F::Output, Panicked> {
    let mut fut = Some(Box::pin(fut));
    std::future::poll_fn(move |cx| {
        let Some(inner) = fut.as_mut() else {
            unreachable!("polled after completion")
        };
        set_rescue(Rescue::Unwinding);
        let polled =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.as_mut().poll(cx)));
        match polled {
            Ok(std::task::Poll::Pending) => {
                drop(set_rescue(Rescue::Off));
                std::task::Poll::Pending
            }
            Ok(std::task::Poll::Ready(v)) => {
                drop(set_rescue(Rescue::Off));
                fut = None;
                std::task::Poll::Ready(Ok(v))
            }
            Err(payload) => {
                let mut tickets = set_rescue(Rescue::Dropping);
                drop(fut.take());
                tickets.extend(set_rescue(Rescue::Off));
                let message = payload
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| payload.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic with no message".to_owned());
                std::task::Poll::Ready(Err(Panicked { message, tickets }))
            }
        }
    })
    .await
}

/// Consumer-thread state of one assigned partition.
struct PartState<S: Sink> {
    generation: u64,
    tracker: PartitionTracker,
    /// Tickets handed out and not yet returned.
    live: usize,
    /// When each in-flight offset was handed out (for the oldest-in-flight age).
    started: BTreeMap<i64, Instant>,
    /// The partition's own queue (`None` if librdkafka could not split it: its records
    /// then come through the main queue, and the partition is paused when they pile up).
    queue: Option<PartitionQueue<Ctx<S>>>,
    /// Records that came through the main queue: fetched before the split, so they
    /// precede everything in `queue` and are handed out first.
    backlog: VecDeque<TriggerRecord>,
    /// The window is full (for the gauge, and to log the change once).
    full: bool,
    /// Paused because `backlog` grew past the window (unsplit partitions only).
    paused: bool,
    tx: Option<tmpsc::Sender<(TriggerRecord, Ticket)>>,
    intake: CancellationToken,
    hard: CancellationToken,
}

struct State<S: Sink> {
    parts: HashMap<Tp, PartState<S>>,
    next_generation: u64,
}

/// What a consumer reads: its group and topics.
#[derive(Debug, Clone)]
pub struct Subscription {
    pub group: String,
    pub topics: Vec<String>,
    /// Joining the group makes `/readyz` ready (the triggers consumer).
    pub marks_ready: bool,
}

impl Subscription {
    /// The dispatcher's: `kafka.group_id` on the triggers topic and `kafka.inputs`.
    pub fn triggers(cfg: &Config) -> Self {
        Subscription {
            group: cfg.kafka.group_id.clone(),
            topics: cfg.input_topics().into_iter().map(|(t, _)| t).collect(),
            marks_ready: true,
        }
    }
}

/// librdkafka context: owns the partition state so rebalance callbacks can drain it.
pub struct Ctx<S: Sink> {
    marks_ready: bool,
    /// The consumer that owns this context, to split partition queues from inside the
    /// assign callback (which only gets a reference). Weak: the consumer owns us.
    me: OnceLock<Weak<BaseConsumer<Ctx<S>>>>,
    state: Mutex<State<S>>,
    sink: Arc<S>,
    handle: tokio::runtime::Handle,
    tx: Sender<Completion>,
    rx: Mutex<Receiver<Completion>>,
    window: usize,
    grace: Duration,
}

impl<S: Sink> ClientContext for Ctx<S> {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
    }

    /// librdkafka statistics (`statistics.interval.ms`): consumer lag per partition.
    fn stats(&self, stats: rdkafka::Statistics) {
        let m = metrics::get();
        let st = self.lock();
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                let tp = (topic.clone(), *partition);
                if p.consumer_lag >= 0 && st.parts.contains_key(&tp) {
                    m.consumer_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
    }
}

impl<S: Sink> ConsumerContext for Ctx<S> {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(tpl) = rebalance {
            let tps = partitions_of(tpl);
            tracing::info!(partitions = ?tps, "partitions revoked; draining");
            self.drain(consumer, &tps);
            self.sink.revoked(&tps);
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                let tps = partitions_of(tpl);
                tracing::info!(partitions = ?tps, "partitions assigned");
                // A partition paused in an earlier generation must not stay paused.
                if let Err(e) = consumer.resume(tpl) {
                    tracing::warn!(error = %e, "resuming newly assigned partitions failed");
                }
                self.assign(&tps);
                self.split(&tps);
                if self.marks_ready {
                    crate::telemetry::readiness::mark_joined();
                }
                self.sink.assigned(&tps);
            }
            Rebalance::Error(e) => tracing::error!(error = %e, "rebalance failed"),
            Rebalance::Revoke(_) => {}
        }
    }
}

impl<S: Sink> Ctx<S> {
    fn lock(&self) -> std::sync::MutexGuard<'_, State<S>> {
        // Only the consumer thread takes this lock; a poisoned lock means that thread
        // panicked, and its state is still the best record of what is in flight.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn assign(&self, tps: &[Tp]) {
        let mut st = self.lock();
        for tp in tps {
            if st.parts.contains_key(tp) {
                continue;
            }
            st.next_generation += 1;
            let (tx, mut rx) = tmpsc::channel::<(TriggerRecord, Ticket)>(self.window.max(1));
            let sink = self.sink.clone();
            // One task per partition: hands records to the sink in offset order.
            self.handle.spawn(async move {
                while let Some((record, ticket)) = rx.recv().await {
                    sink.accept(record, ticket).await;
                }
            });
            let generation = st.next_generation;
            st.parts.insert(
                tp.clone(),
                PartState {
                    generation,
                    tracker: PartitionTracker::new(),
                    live: 0,
                    started: BTreeMap::new(),
                    queue: None,
                    backlog: VecDeque::new(),
                    full: false,
                    paused: false,
                    tx: Some(tx),
                    intake: CancellationToken::new(),
                    hard: CancellationToken::new(),
                },
            );
        }
    }

    /// Give each newly assigned partition its own queue. Called in the assign callback,
    /// right after librdkafka took the assignment and before a first fetch (which waits
    /// for the committed offsets) can have come back.
    fn split(&self, tps: &[Tp]) {
        let Some(consumer) = self.me.get().and_then(Weak::upgrade) else {
            return;
        };
        let mut st = self.lock();
        for tp in tps {
            let Some(part) = st.parts.get_mut(tp) else {
                continue;
            };
            if part.queue.is_none() {
                part.queue = consumer.split_partition_queue(&tp.0, tp.1);
                if part.queue.is_none() {
                    tracing::error!(topic = %tp.0, partition = tp.1,
                        "could not give the partition its own queue; it is read through the main queue (paused when its window is full)");
                }
            }
        }
    }

    /// A record from the main queue: it waits in its partition's backlog, ahead of the
    /// partition queue's records.
    fn on_main_queue(&self, consumer: &BaseConsumer<Self>, record: TriggerRecord) {
        let tp = (record.topic.clone(), record.partition);
        let mut st = self.lock();
        let Some(part) = st.parts.get_mut(&tp) else {
            tracing::warn!(topic = %tp.0, partition = tp.1, offset = record.offset,
                "record for a partition that is not assigned; ignored (it stays uncommitted)");
            return;
        };
        part.backlog.push_back(record);
        // Only an unsplit partition can pile records up here; bound them by pausing.
        if part.backlog.len() > self.window && !part.paused {
            match consumer.pause(&single(&tp)) {
                Ok(()) => part.paused = true,
                Err(e) => tracing::warn!(error = %e, "pausing a partition failed"),
            }
        }
    }

    /// Hand records to every partition that has room in its window: its backlog first,
    /// then its own queue.
    fn fill(&self, consumer: &BaseConsumer<Self>) {
        let mut out = Vec::new();
        {
            let mut st = self.lock();
            for (tp, part) in st.parts.iter_mut() {
                let Some(tx) = part.tx.clone() else {
                    continue; // revoked: draining
                };
                while part.tracker.in_flight() < self.window {
                    let record = match part.backlog.pop_front() {
                        Some(r) => r,
                        None => match part.queue.as_ref().and_then(|q| q.poll(Duration::ZERO)) {
                            Some(Ok(m)) => detach(&m),
                            Some(Err(e)) => {
                                tracing::warn!(topic = %tp.0, partition = tp.1, error = %e, "consumer error");
                                continue;
                            }
                            None => break,
                        },
                    };
                    if let Some(ticket) = self.track(tp, part, &record) {
                        out.push((tx.clone(), record, ticket));
                    }
                }
                let full = part.tracker.in_flight() >= self.window;
                if full != part.full {
                    part.full = full;
                    if full {
                        tracing::debug!(topic = %tp.0, partition = tp.1, "partition window full; not read until a slot frees");
                    } else {
                        tracing::debug!(topic = %tp.0, partition = tp.1, "partition window has room; reading again");
                    }
                }
                if part.paused && part.backlog.len() <= self.window / 2 {
                    part.paused = false;
                    if let Err(e) = consumer.resume(&single(tp)) {
                        tracing::warn!(error = %e, "resuming a partition failed");
                    }
                }
            }
        }
        for (tx, record, ticket) in out {
            let tp = (record.topic.clone(), record.partition);
            match tx.try_send((record, ticket)) {
                Ok(()) => {}
                // Not reachable while the channel holds a window and the window bounds
                // what is in flight; should it happen, wait rather than drop.
                Err(tmpsc::error::TrySendError::Full(item)) => {
                    if tx.blocking_send(item).is_err() {
                        tracing::error!(topic = %tp.0, partition = tp.1, "partition task is gone");
                    }
                }
                Err(tmpsc::error::TrySendError::Closed(_)) => {
                    tracing::error!(topic = %tp.0, partition = tp.1, "partition task is gone");
                }
            }
        }
    }

    /// Track one record of `part`; its ticket, or `None` for a re-fetched offset.
    fn track(&self, tp: &Tp, part: &mut PartState<S>, record: &TriggerRecord) -> Option<Ticket> {
        if part.tracker.track(record.offset) == Tracked::Duplicate {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset = record.offset, "re-fetched record skipped");
            return None;
        }
        part.live += 1;
        part.started.insert(record.offset, Instant::now());
        metrics::get()
            .events_consumed
            .with_label_values(&[&tp.0])
            .inc();
        Some(Ticket {
            tp: tp.clone(),
            generation: part.generation,
            offset: record.offset,
            tx: self.tx.clone(),
            intake: part.intake.clone(),
            hard: part.hard.clone(),
            done: false,
        })
    }

    /// Apply one completion; returns the offset to store when the watermark advanced.
    fn apply(&self, st: &mut State<S>, c: Completion) -> Option<(Tp, i64)> {
        let part = st.parts.get_mut(&c.tp)?;
        if part.generation != c.generation {
            return None; // completion of a revoked generation: dropped
        }
        part.live -= 1;
        part.started.remove(&c.offset);
        let wm = if c.done {
            part.tracker.complete(c.offset)
        } else {
            None
        };
        wm.map(|wm| (c.tp, wm))
    }

    /// Apply all waiting completions: store advanced watermarks.
    fn apply_pending(&self, consumer: &BaseConsumer<Self>, first: Option<Completion>) {
        let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
        let mut st = self.lock();
        let mut stores: HashMap<Tp, i64> = HashMap::new();
        for c in first.into_iter().chain(rx.try_iter()) {
            if let Some((tp, wm)) = self.apply(&mut st, c) {
                stores.insert(tp, wm);
            }
        }
        drop(st);
        drop(rx);
        if !stores.is_empty() {
            let mut tpl = TopicPartitionList::with_capacity(stores.len());
            for ((topic, partition), wm) in &stores {
                let _ = tpl.add_partition_offset(topic, *partition, Offset::Offset(*wm));
            }
            if let Err(e) = consumer.store_offsets(&tpl) {
                // Happens when a partition was revoked between completion and store.
                tracing::warn!(error = %e, "storing offsets failed");
            }
            let m = metrics::get();
            for ((topic, partition), wm) in &stores {
                m.committed_watermark
                    .with_label_values(&[topic, &partition.to_string()])
                    .set(*wm);
            }
        }
    }

    /// Stop intake on `tps`, wait for started work up to the grace period, commit the
    /// watermarks synchronously, and forget the partitions.
    ///
    /// Called from the rebalance callback. librdkafka pauses the member's whole
    /// assignment until that callback returns, so the partitions this member keeps wait
    /// for the drain too (at most the grace); other members are not affected by an
    /// incremental rebalance.
    fn drain(&self, consumer: &BaseConsumer<Self>, tps: &[Tp]) {
        let started = Instant::now();
        {
            let mut st = self.lock();
            for tp in tps {
                if let Some(p) = st.parts.get_mut(tp) {
                    p.intake.cancel();
                    p.tx = None; // the partition task ends once its queue is empty
                }
            }
        }
        let deadline = started + self.grace;
        let abandoned = loop {
            let live: usize = {
                let st = self.lock();
                tps.iter()
                    .filter_map(|tp| st.parts.get(tp))
                    .map(|p| p.live)
                    .sum()
            };
            if live == 0 {
                break 0;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(in_flight = live, grace = ?self.grace,
                    "grace period over; abandoning in-flight runs (they will be redelivered)");
                break live;
            }
            let next = {
                let rx = self.rx.lock().unwrap_or_else(|p| p.into_inner());
                rx.recv_timeout(left.min(Duration::from_millis(50)))
            };
            match next {
                Ok(c) => self.apply_pending(consumer, Some(c)),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => break live,
            }
        };
        let mut tpl = TopicPartitionList::new();
        {
            let mut st = self.lock();
            for tp in tps {
                if let Some(p) = st.parts.remove(tp) {
                    metrics::get().forget_partition(&tp.0, tp.1);
                    p.hard.cancel();
                    if let Some(wm) = p.tracker.published() {
                        let _ = tpl.add_partition_offset(&tp.0, tp.1, Offset::Offset(wm));
                    }
                }
            }
        }
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                Ok(()) => tracing::info!(offsets = ?tpl_offsets(&tpl), "committed"),
                Err(e) => tracing::warn!(error = %e, "synchronous commit failed"),
            }
        }
        tracing::info!(partitions = ?tps, waited_ms = started.elapsed().as_millis() as u64,
            abandoned, "revoke drained");
    }

    fn assigned(&self) -> Vec<Tp> {
        self.lock().parts.keys().cloned().collect()
    }

    /// Refresh the per-partition gauges.
    fn export(&self) {
        let m = metrics::get();
        let st = self.lock();
        let now = Instant::now();
        m.assigned_partitions.set(st.parts.len() as i64);
        m.paused_partitions
            .set(st.parts.values().filter(|p| p.full || p.paused).count() as i64);
        for ((topic, partition), p) in &st.parts {
            let labels = [topic.as_str(), &partition.to_string()];
            m.partition_in_flight
                .with_label_values(&labels)
                .set(p.tracker.in_flight() as i64);
            let oldest = p
                .started
                .values()
                .next()
                .map_or(0, |t| now.duration_since(*t).as_secs());
            m.oldest_in_flight_seconds
                .with_label_values(&labels)
                .set(oldest as i64);
        }
    }
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<Tp> {
    tpl.elements()
        .iter()
        .map(|e| (e.topic().to_owned(), e.partition()))
        .collect()
}

fn single(tp: &Tp) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::with_capacity(1);
    tpl.add_partition(&tp.0, tp.1);
    tpl
}

fn tpl_offsets(tpl: &TopicPartitionList) -> Vec<String> {
    tpl.elements()
        .iter()
        .map(|e| format!("{}/{}@{:?}", e.topic(), e.partition(), e.offset()))
        .collect()
}

fn detach<M: Message>(m: &M) -> TriggerRecord {
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
    let k = &cfg.kafka;
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
