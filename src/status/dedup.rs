//! Duplicate suppression: a view of the status topic that says which runs are finished,
//! and which non-idempotent dispatches (GITHUB, GITLAB, AZURE_DEVOPS) already happened.
//!
//! Every instance tails the status topic from the beginning into the view, so any
//! instance can tell whether a redelivered event's run is done, whoever dispatched it.
//! Before the consumer starts, the view catches up with the watermarks read at start.
//! Memory is bounded by `dedup.max_runs` (oldest entries are forgotten first). The same
//! tail ([`tail`]) feeds the run view of the status API.
//!
//! The view trails the topic, by about 100 ms normally, by seconds after a broker outage
//! (the tail reconnects on its own schedule). A partition just assigned may hold events
//! whose runs finished moments ago, so every assignment asks for a catch-up
//! ([`Ledger::catch_up`]): the events of the new partitions wait (at most
//! `dedup.catch_up`) until the tail has read the status topic up to where it ended at
//! the assignment ([`Ledger::caught_up_for`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::{Duration, Instant};

use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::kafka::tail::{reached, TopicTail};
use crate::model::RunUpdate;
use crate::status::fingerprint::{RunKey, RunWindow};

/// The tail fetches at most this long ([`LEDGER_FETCH_MIN_BYTES`] permitting)…
const LEDGER_FETCH_WAIT_MS: u64 = 100;
/// …or until this much is ready, whichever comes first.
const LEDGER_FETCH_MIN_BYTES: u64 = 64 * 1024;

/// Backends whose dispatch must not be repeated once it happened.
pub const NON_IDEMPOTENT: [&str; 3] = ["GITHUB", "GITLAB", "AZURE_DEVOPS"];

/// What the status topic says about a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// It has a terminal status.
    Finished,
    /// A non-idempotent dispatch of it happened (the run may still be open).
    Dispatched,
}

/// The most the ledger holds per run of `dedup.max_runs`, in bytes: a 16-byte
/// fingerprint and its state in the map (a 24-byte slot and a control byte, up to
/// 2 × 8 / 7 slots a run just after the map doubled) and in the eviction queue (16
/// bytes, up to 2 slots a run). Allocated at start: at the default 200,000 runs,
/// 262,144 map slots and 200,000 queue slots, 9.8 MB (49 bytes a run). Below 1,000 runs
/// add up to 1 KiB (the smallest allocations).
pub const LEDGER_BYTES_PER_RUN: usize = 25 * 16 / 7 + 1 + 2 * 16;

pub struct Ledger {
    /// Runs by fingerprint: at most [`LEDGER_BYTES_PER_RUN`] bytes each, whatever the ids.
    view: Mutex<RunWindow<Seen>>,
    suppressed: AtomicU64,
    /// How far the tail has read the status topic: next offset per partition.
    position: Mutex<HashMap<i32, i64>>,
    /// Catch-ups asked for by partition assignments, numbered from 1.
    asked: AtomicU64,
    /// The newest catch-up done (wakes the events waiting for it).
    met: tokio::sync::watch::Sender<u64>,
    /// Newly assigned partitions whose catch-up is not done yet, with its number.
    waiting: Mutex<HashMap<(String, i32), u64>>,
    /// Assignments arrive on the consumer thread; catch-ups run here.
    runtime: tokio::runtime::Handle,
    /// Where the status topic is, and how long a catch-up may hold events.
    kafka: KafkaConfig,
    limit: Duration,
}

impl Ledger {
    /// Call from inside the tokio runtime (catch-ups are spawned on it). `limit` bounds
    /// how long a catch-up holds the events of newly assigned partitions.
    pub fn new(max_runs: usize, kafka: &KafkaConfig, limit: Duration) -> Arc<Self> {
        Arc::new(Ledger {
            view: Mutex::new(RunWindow::with_capacity(max_runs)),
            suppressed: AtomicU64::new(0),
            position: Mutex::new(HashMap::new()),
            asked: AtomicU64::new(0),
            met: tokio::sync::watch::Sender::new(0),
            waiting: Mutex::new(HashMap::new()),
            runtime: tokio::runtime::Handle::current(),
            kafka: kafka.clone(),
            limit,
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, RunWindow<Seen>> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, HashMap<(String, i32), u64>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The tail read the status topic's `partition` up to `next` (exclusive).
    pub fn advance(&self, partition: i32, next: i64) {
        let mut pos = self.position.lock().unwrap_or_else(|p| p.into_inner());
        pos.insert(partition, next);
    }

    fn reached(&self, ends: &HashMap<i32, i64>) -> bool {
        reached(
            &self.position.lock().unwrap_or_else(|p| p.into_inner()),
            ends,
        )
    }

    /// `partitions` were just assigned: their events wait until the view has read the
    /// status topic to where it ends now, or the limit passed. Returns at once (called
    /// on the consumer thread); the catch-up runs on the runtime.
    pub fn catch_up(self: &Arc<Self>, partitions: &[(String, i32)]) {
        if partitions.is_empty() {
            return;
        }
        let number = {
            let mut waiting = self.waiting();
            // Numbered under the lock, after the partitions are in: an event that sees
            // the new number finds its partition there.
            let n = self.asked.load(Ordering::Acquire) + 1;
            for tp in partitions {
                waiting.insert(tp.clone(), n);
            }
            self.asked.store(n, Ordering::Release);
            n
        };
        let me = self.clone();
        self.runtime.spawn(async move {
            let (kafka, limit) = (&me.kafka, me.limit);
            let deadline = Instant::now() + limit;
            let mut done = false;
            while !done && Instant::now() < deadline {
                match crate::kafka::topics::from_start(kafka, &kafka.status_topic).await {
                    Ok((_, ends)) => {
                        while !me.reached(&ends) && Instant::now() < deadline {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                        }
                        done = me.reached(&ends);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the status topic's end for a catch-up failed; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
            if !done {
                tracing::warn!(wait = ?limit,
                    "the view of the status topic did not catch up after a partition assignment; dispatching anyway (a run that just finished elsewhere may be dispatched again)");
            }
            me.met.send_if_modified(|met| {
                let newer = number > *met;
                *met = (*met).max(number);
                newer
            });
            let met = *me.met.borrow();
            me.waiting().retain(|_, n| *n > met);
        });
    }

    /// Wait until the catch-up asked for when `topic`/`partition` was assigned is done
    /// (at once when none is pending).
    pub async fn caught_up_for(&self, topic: &str, partition: i32) {
        // The common case, on every event: no catch-up pending, no lock taken.
        if *self.met.borrow() >= self.asked.load(Ordering::Acquire) {
            return;
        }
        let Some(need) = self.waiting().get(&(topic.to_owned(), partition)).copied() else {
            return;
        };
        let mut rx = self.met.subscribe();
        // The sender lives as long as the ledger, which the caller holds.
        let _ = rx.wait_for(|met| *met >= need).await;
    }

    /// What is known about `run_id`.
    pub fn seen(&self, run_id: &str) -> Option<Seen> {
        self.view().get(&RunKey::of(run_id)).copied()
    }

    /// Count a suppressed duplicate; returns the running total.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Fold one run update into the view.
    pub fn observe(&self, u: &RunUpdate) {
        let seen = if u.is_terminal() {
            Seen::Finished
        } else if u.seq >= 2
            && u.backend
                .as_deref()
                .is_some_and(|b| NON_IDEMPOTENT.contains(&b))
        {
            // Updates after the first ("dispatching …") come after the dispatch call.
            Seen::Dispatched
        } else {
            return;
        };
        let key = RunKey::of(&u.run_id);
        let mut v = self.view();
        match v.get_mut(&key) {
            Some(Seen::Finished) => {}
            Some(Seen::Dispatched) if seen == Seen::Dispatched => {}
            Some(known) => *known = seen,
            None => v.insert_new(key, seen),
        }
    }
}

/// Tail the status topic from the beginning, handing every run update to `observe`
/// (the duplicate ledger, the run view). Returns once the tail has caught up with the
/// watermarks read now (or after `catch_up` at most), and keeps tailing until `stop`.
///
/// `ledger`, when there is one, is told how far the tail has read, for its catch-ups.
pub async fn tail(
    kafka: &KafkaConfig,
    codec: Arc<crate::codec::avro::Codec>,
    full: bool,
    catch_up: Duration,
    stop: CancellationToken,
    ledger: Option<Arc<Ledger>>,
    observe: impl Fn(&RunUpdate) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tail = TopicTail::open(
        kafka,
        &kafka.status_topic,
        "ledger",
        // The view may trail by a fraction of a second; what it must not do is cost
        // the broker one fetch per few records (three run updates per event).
        &[
            ("fetch.wait.max.ms", LEDGER_FETCH_WAIT_MS.to_string()),
            ("fetch.min.bytes", LEDGER_FETCH_MIN_BYTES.to_string()),
        ],
    )
    .await?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        loop {
            if ready.is_some() && tail.caught_up() {
                let _ = ready.take().map(|r| r.send(()));
            }
            let msg = tokio::select! {
                m = tail.next(Duration::from_secs(3600)) => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(Some(m)) => {
                    if let Some(l) = &ledger {
                        l.advance(m.partition(), m.offset() + 1);
                    }
                    let bytes = m.payload().unwrap_or_default();
                    let u = match (full, bytes.first()) {
                        // The ledger alone needs five fields: skip the rest unparsed.
                        (false, Some(b'{')) => brief(bytes),
                        _ => codec.decode_update(bytes).await,
                    };
                    if let Some(u) = u {
                        observe(&u);
                    }
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "reading the status topic failed"),
            }
        }
    });
    if tokio::time::timeout(catch_up, ready_rx).await.is_err() {
        tracing::warn!(wait = ?catch_up, "the view of the status topic has not caught up; starting anyway");
    }
    Ok(task)
}

/// The fields the ledger reads, parsed from a JSON run update without the rest (a
/// response body, a summary) being built.
fn brief(bytes: &[u8]) -> Option<RunUpdate> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Brief {
        run_id: String,
        seq: u64,
        kind: crate::model::UpdateKind,
        #[serde(default)]
        status: Option<crate::model::RunStatus>,
        #[serde(default)]
        backend: Option<String>,
    }
    let b: Brief = serde_json::from_slice(bytes).ok()?;
    let mut u = RunUpdate::new(b.run_id, b.kind);
    u.seq = b.seq;
    u.status = b.status;
    u.backend = b.backend;
    Some(u)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RunStatus;

    fn update(run: &str, seq: u64, backend: &str, status: RunStatus) -> RunUpdate {
        let mut u = RunUpdate::status(run, status);
        u.seq = seq;
        u.backend = Some(backend.into());
        u
    }

    #[tokio::test]
    async fn finished_runs_and_started_non_idempotent_dispatches_are_remembered() {
        let l = Ledger::new(10, &KafkaConfig::default(), Duration::from_secs(1));
        l.observe(&update("a", 1, "WEBHOOK", RunStatus::InProgress));
        assert_eq!(l.seen("a"), None);
        l.observe(&update("a", 3, "WEBHOOK", RunStatus::Success));
        assert_eq!(l.seen("a"), Some(Seen::Finished));
        l.observe(&update("g", 1, "GITHUB", RunStatus::InProgress));
        assert_eq!(l.seen("g"), None, "seq 1 comes before the dispatch call");
        l.observe(&update("g", 2, "GITHUB", RunStatus::InProgress));
        assert_eq!(l.seen("g"), Some(Seen::Dispatched));
        l.observe(&update("g", 5, "GITHUB", RunStatus::Failure));
        assert_eq!(l.seen("g"), Some(Seen::Finished));
    }

    /// A newly assigned partition's events wait until the view has read the status topic
    /// to its end at the assignment; other partitions do not wait; the limit bounds it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn events_of_a_new_partition_wait_for_the_view_to_catch_up() {
        use rdkafka::producer::{FutureProducer, FutureRecord};
        let mock = rdkafka::mocking::MockCluster::new(1).unwrap();
        mock.create_topic("status", 2, 1).unwrap();
        let kafka = KafkaConfig {
            brokers: mock.bootstrap_servers(),
            status_topic: "status".into(),
            ..KafkaConfig::default()
        };
        let producer: FutureProducer = crate::kafka::client_config(&kafka).create().unwrap();
        for _ in 0..3 {
            let r = FutureRecord::<str, str>::to("status")
                .partition(0)
                .payload("{}");
            producer.send(r, Duration::from_secs(5)).await.unwrap();
        }
        let l = Ledger::new(10, &kafka, Duration::from_secs(30));
        l.catch_up(&[("trig".to_owned(), 0)]);
        let wait = |p: i32| {
            let l = l.clone();
            tokio::spawn(async move { l.caught_up_for("trig", p).await })
        };
        let other = wait(1);
        tokio::time::timeout(Duration::from_secs(1), other)
            .await
            .expect("a partition without a catch-up does not wait")
            .unwrap();
        let mut new = wait(0);
        l.advance(0, 2);
        assert!(
            tokio::time::timeout(Duration::from_millis(500), &mut new)
                .await
                .is_err(),
            "released before the view reached the end (3)"
        );
        l.advance(0, 3);
        tokio::time::timeout(Duration::from_secs(5), new)
            .await
            .expect("released once the view reached the end")
            .unwrap();

        // A view that never catches up holds the events for the limit only.
        let stuck = Ledger::new(10, &kafka, Duration::from_millis(300));
        stuck.catch_up(&[("trig".to_owned(), 0)]);
        let started = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), stuck.caught_up_for("trig", 0))
            .await
            .expect("released at the limit");
        assert!(started.elapsed() >= Duration::from_millis(250));
    }

    #[tokio::test]
    async fn memory_is_bounded_oldest_first() {
        let l = Ledger::new(3, &KafkaConfig::default(), Duration::from_secs(1));
        for r in ["a", "b", "c", "d"] {
            l.observe(&update(r, 2, "WEBHOOK", RunStatus::Success));
        }
        assert_eq!(l.seen("a"), None);
        assert_eq!(l.seen("d"), Some(Seen::Finished));
    }

    /// The bound in bytes holds at every fill, with ids of any length.
    #[tokio::test]
    async fn memory_is_bounded_in_bytes_per_run() {
        for max in [1usize, 7, 1000, 5000] {
            let l = Ledger::new(max, &KafkaConfig::default(), Duration::from_secs(1));
            for n in 0..3 * max {
                let id = format!("r_{n}_{}", "x".repeat(n % 300));
                l.observe(&update(&id, 2, "WEBHOOK", RunStatus::Success));
                let bytes = l.view().bytes();
                let per_run = bytes / (n + 1).min(max);
                assert!(
                    bytes <= max * LEDGER_BYTES_PER_RUN + 1024,
                    "max {max}, {} runs: {bytes} bytes > {} ({per_run} a run)",
                    n + 1,
                    max * LEDGER_BYTES_PER_RUN + 1024
                );
            }
            assert_eq!(l.view().len(), max);
        }
    }
}
