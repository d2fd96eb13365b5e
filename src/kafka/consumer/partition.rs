//! The consumer thread's partition state and the librdkafka context that owns it:
//! assignment, queue splitting, handing records out within the window, completions.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Instant;

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc as tmpsc;
use tokio_util::sync::CancellationToken;

use super::*;
use crate::model::TriggerRecord;
use crate::telemetry::metrics;

/// Consumer-thread state of one assigned partition.
pub(super) struct PartState<S: Sink> {
    pub(super) generation: u64,
    pub(super) tracker: PartitionTracker,
    /// Tickets handed out and not yet returned.
    pub(super) live: usize,
    /// When each in-flight offset was handed out (for the oldest-in-flight age), and its
    /// record's size.
    pub(super) started: BTreeMap<i64, (Instant, usize)>,
    /// Bytes of the records in flight (`dispatch.partition_window_bytes`).
    pub(super) bytes: usize,
    /// The partition's own queue (`None` if librdkafka could not split it: its records
    /// then come through the main queue, and the partition is paused when they pile up).
    pub(super) queue: Option<PartitionQueue<Ctx<S>>>,
    /// Records that came through the main queue: fetched before the split, so they
    /// precede everything in `queue` and are handed out first.
    pub(super) backlog: VecDeque<TriggerRecord>,
    /// The window is full (for the gauge, and to log the change once).
    pub(super) full: bool,
    /// Paused because `backlog` grew past the window (unsplit partitions only).
    pub(super) paused: bool,
    pub(super) tx: Option<tmpsc::Sender<(TriggerRecord, Ticket)>>,
    pub(super) intake: CancellationToken,
    pub(super) hard: CancellationToken,
}

pub(super) struct State<S: Sink> {
    pub(super) parts: HashMap<Tp, PartState<S>>,
    pub(super) next_generation: u64,
}

/// librdkafka context: owns the partition state so rebalance callbacks can drain it.
pub struct Ctx<S: Sink> {
    pub(super) marks_ready: bool,
    /// The consumer that owns this context, to split partition queues from inside the
    /// assign callback (which only gets a reference). Weak: the consumer owns us.
    pub(super) me: OnceLock<Weak<BaseConsumer<Ctx<S>>>>,
    pub(super) state: Mutex<State<S>>,
    pub(super) sink: Arc<S>,
    pub(super) handle: tokio::runtime::Handle,
    pub(super) tx: Sender<Completion>,
    pub(super) rx: Mutex<Receiver<Completion>>,
    pub(super) window: usize,
    pub(super) window_bytes: usize,
    pub(super) grace: Duration,
}

impl<S: Sink> ClientContext for Ctx<S> {
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(error = %error, reason, "kafka client error");
        crate::kafka::note_client_error(&error);
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
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, State<S>> {
        // Only the consumer thread takes this lock; a poisoned lock means that thread
        // panicked, and its state is still the best record of what is in flight.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn assign(&self, tps: &[Tp]) {
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
                    bytes: 0,
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
    pub(super) fn split(&self, tps: &[Tp]) {
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
    pub(super) fn on_main_queue(&self, consumer: &BaseConsumer<Self>, record: TriggerRecord) {
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
    pub(super) fn fill(&self, consumer: &BaseConsumer<Self>) {
        let mut out = Vec::new();
        {
            let mut st = self.lock();
            for (tp, part) in st.parts.iter_mut() {
                let Some(tx) = part.tx.clone() else {
                    continue; // revoked: draining
                };
                while self.has_room(part) {
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
                let full = !self.has_room(part);
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

    /// Whether `part` may take another record: under the window in events and in bytes
    /// (one record always may be in flight, however large).
    fn has_room(&self, part: &PartState<S>) -> bool {
        let n = part.tracker.in_flight();
        n < self.window && (n == 0 || part.bytes < self.window_bytes)
    }

    /// Track one record of `part`; its ticket, or `None` for a re-fetched offset.
    pub(super) fn track(
        &self,
        tp: &Tp,
        part: &mut PartState<S>,
        record: &TriggerRecord,
    ) -> Option<Ticket> {
        if part.tracker.track(record.offset) == Tracked::Duplicate {
            tracing::debug!(topic = %tp.0, partition = tp.1, offset = record.offset, "re-fetched record skipped");
            return None;
        }
        part.live += 1;
        let size = record.size();
        part.bytes += size;
        part.started.insert(record.offset, (Instant::now(), size));
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
    pub(super) fn apply(&self, st: &mut State<S>, c: Completion) -> Option<(Tp, i64)> {
        let part = st.parts.get_mut(&c.tp)?;
        if part.generation != c.generation {
            return None; // completion of a revoked generation: dropped
        }
        part.live -= 1;
        if let Some((_, size)) = part.started.remove(&c.offset) {
            part.bytes = part.bytes.saturating_sub(size);
        }
        let wm = if c.done {
            part.tracker.complete(c.offset)
        } else {
            None
        };
        wm.map(|wm| (c.tp, wm))
    }

    /// Apply all waiting completions: store advanced watermarks.
    pub(super) fn apply_pending(&self, consumer: &BaseConsumer<Self>, first: Option<Completion>) {
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
}
