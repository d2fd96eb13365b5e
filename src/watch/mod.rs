//! Following asynchronous runs (a GitLab pipeline, a GitHub workflow) to completion.
//!
//! A backend that started remote work returns `follow` state in its report. The pipeline
//! hands the run to the [`Watcher`], which first records it on the compacted watches
//! topic (key = run id) and only then lets the event's offset complete, so a followed run
//! survives a crash. A watch holds no dispatch slot: it sleeps between polls, takes one of
//! `max_concurrent_polls` permits only while a poll is in flight, and obeys the
//! provider's rate-limit hints. A label change is published as `statusLabel` (and
//! re-recorded); a finish is published as the terminal status, then the record is
//! deleted (tombstone).
//!
//! A run may also have a deadline (`[run_timeout]`, per backend or per action): a followed
//! run, or an async run nobody polls (a WEBHOOK that answered 202, a KAFKA or
//! AZURE_DEVOPS run), is recorded with it. Past the deadline the run fails with "timed
//! out after …", unless it finished elsewhere meanwhile ([`RunEnded`]: a terminal update
//! on the status topic, or a final status in Port).
//!
//! Ownership follows the triggers topic: the instance that owns the partition a run's
//! event came from follows the run. Every instance tails the watches topic into a table;
//! when a partition is assigned, its recorded runs are resumed, and when it is revoked,
//! their watches stop (without a tombstone) for the next owner to resume.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::message::Message;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Progress};
use crate::config::{KafkaConfig, WatchConfig};
use crate::kafka::publisher::{Publisher, Stopped};
use crate::kafka::tail::TopicTail;
use crate::model::{RunStatus, RunUpdate, SourceRef};
use crate::status::writer::{RunWriter, Sequencer};

mod deadline;
pub use deadline::{Deadline, RunEnded};

/// A run being followed.
pub struct Watch {
    pub writer: RunWriter,
    /// Backend-specific state (e.g. project and pipeline id).
    pub state: Value,
    pub label: Option<String>,
    /// When the run times out (`[run_timeout]`); `None` from the dispatcher: the
    /// watcher sets it from the configuration.
    pub deadline: Option<Deadline>,
}

impl Watch {
    /// A run to follow by polling its backend.
    pub fn follow(writer: RunWriter, state: Value) -> Self {
        Watch {
            writer,
            state,
            label: None,
            deadline: None,
        }
    }
}

/// The watches-topic record of a followed run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    run_id: String,
    backend: String,
    state: Value,
    /// `seq` of the run's last update.
    seq: u64,
    label: Option<String>,
    source: SourceRef,
    /// The run's action identifier (absent in records written before run update v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    action: Option<String>,
    /// Epoch ms past which the run times out, and the timeout in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    /// A deadline only: the backend is not polled (no `state`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    no_poll: bool,
}

type Tp = (String, i32);

#[derive(Default)]
struct Book {
    /// Every recorded watch (all instances'), from the watches topic.
    table: HashMap<String, Record>,
    /// Triggers partitions this instance owns.
    owned: std::collections::HashSet<Tp>,
    /// Watches running here, with the token that stops them.
    running: HashMap<String, (Tp, CancellationToken)>,
}

pub struct Watcher {
    backends: BTreeMap<&'static str, Arc<dyn Backend>>,
    permits: Semaphore,
    active: AtomicUsize,
    cfg: WatchConfig,
    publisher: Arc<Publisher>,
    seqs: Arc<Sequencer>,
    topic: String,
    book: Mutex<Book>,
    stop: CancellationToken,
    /// Rebalance callbacks run on the consumer thread, outside the runtime.
    handle: tokio::runtime::Handle,
    /// The watches-topic reader, joined at shutdown so its client closes before we return.
    reader: Mutex<Option<tokio::task::JoinHandle<()>>>,
    timeouts: crate::config::RunTimeoutConfig,
    ended: Option<Arc<dyn RunEnded>>,
}

impl Watcher {
    pub fn new(
        backends: BTreeMap<&'static str, Arc<dyn Backend>>,
        cfg: &WatchConfig,
        publisher: Arc<Publisher>,
        seqs: Arc<Sequencer>,
        topic: &str,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Self::with_timeouts(
            backends,
            cfg,
            publisher,
            seqs,
            topic,
            stop,
            Default::default(),
            None,
        )
    }

    /// [`new`](Self::new) with run timeouts, and the check of runs that ended elsewhere.
    #[allow(clippy::too_many_arguments)]
    pub fn with_timeouts(
        backends: BTreeMap<&'static str, Arc<dyn Backend>>,
        cfg: &WatchConfig,
        publisher: Arc<Publisher>,
        seqs: Arc<Sequencer>,
        topic: &str,
        stop: CancellationToken,
        timeouts: crate::config::RunTimeoutConfig,
        ended: Option<Arc<dyn RunEnded>>,
    ) -> Arc<Self> {
        Arc::new(Watcher {
            backends,
            permits: Semaphore::new(cfg.max_concurrent_polls),
            active: AtomicUsize::new(0),
            cfg: cfg.clone(),
            publisher,
            seqs,
            topic: topic.to_owned(),
            book: Mutex::new(Book::default()),
            stop,
            handle: tokio::runtime::Handle::current(),
            reader: Mutex::new(None),
            timeouts,
            ended,
        })
    }

    fn book(&self) -> std::sync::MutexGuard<'_, Book> {
        // Critical sections only move entries between maps; they cannot panic.
        self.book.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Number of runs being followed here.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Start following a newly dispatched run: record it, then poll it. Returns once the
    /// record is acknowledged (the caller may then complete the event's offset), or
    /// `Err` when switchyard is stopping. A run over `max_watches` is not followed.
    pub async fn follow(self: &Arc<Self>, mut watch: Watch) -> Result<bool, Stopped> {
        if watch.deadline.is_none() {
            let (kind, action) = (watch.writer.backend, watch.writer.action.as_deref());
            watch.deadline = kind
                .and_then(|k| self.timeouts.for_run(k, action))
                .map(Deadline::after);
        }
        let Some(backend) = watch
            .writer
            .backend
            .and_then(|b| self.backends.get(b))
            .cloned()
        else {
            return Ok(false);
        };
        if self.active() >= self.cfg.max_watches {
            return Ok(false);
        }
        let tp = (
            watch.writer.source.topic.clone(),
            watch.writer.source.partition,
        );
        let token = CancellationToken::new();
        // Registered before the record is written, so the tail does not start it twice.
        self.book()
            .running
            .insert(watch.writer.run_id.clone(), (tp, token.clone()));
        self.record(&watch).await?;
        self.spawn(backend, watch, token);
        Ok(true)
    }

    fn spawn(self: &Arc<Self>, backend: Arc<dyn Backend>, watch: Watch, token: CancellationToken) {
        self.active.fetch_add(1, Ordering::SeqCst);
        let this = self.clone();
        self.handle.spawn(async move {
            let run_id = watch.writer.run_id.clone();
            this.run(backend, watch, &token).await;
            this.book().running.remove(&run_id);
            this.active.fetch_sub(1, Ordering::SeqCst);
        });
    }

    async fn record(&self, w: &Watch) -> Result<(), Stopped> {
        let rec = Record {
            run_id: w.writer.run_id.clone(),
            backend: w.writer.backend.unwrap_or_default().to_owned(),
            state: w.state.clone(),
            seq: w.writer.seq,
            label: w.label.clone(),
            source: w.writer.source.clone(),
            action: w.writer.action.clone(),
            deadline_ms: w.deadline.map(|d| d.at_ms),
            timeout_ms: w.deadline.map(|d| d.after.as_millis() as u64),
            no_poll: w.state.is_null(),
        };
        let bytes = serde_json::to_vec(&rec).expect("a watch record always serialises");
        self.publisher
            .send_keyed(&self.topic, &rec.run_id, Some(&bytes))
            .await
    }

    /// Triggers partitions assigned: resume the recorded runs that came from them.
    pub fn assigned(self: &Arc<Self>, partitions: &[(String, i32)]) {
        let mut book = self.book();
        book.owned.extend(partitions.iter().cloned());
        let resumable: Vec<Record> = book
            .table
            .values()
            .filter(|r| partitions.contains(&(r.source.topic.clone(), r.source.partition)))
            .filter(|r| !book.running.contains_key(&r.run_id))
            .cloned()
            .collect();
        drop(book);
        for rec in resumable {
            self.resume(rec);
        }
    }

    /// Triggers partitions revoked: stop their watches; the next owner resumes them.
    pub fn revoked(&self, partitions: &[(String, i32)]) {
        let mut book = self.book();
        for tp in partitions {
            book.owned.remove(tp);
        }
        for (_, (tp, token)) in book.running.iter() {
            if partitions.contains(tp) {
                token.cancel();
            }
        }
    }

    /// Resume a recorded run when this instance owns its partition and is not already
    /// following it.
    fn resume(self: &Arc<Self>, rec: Record) {
        let tp = (rec.source.topic.clone(), rec.source.partition);
        let Some((kind, backend)) = self
            .backends
            .get_key_value(rec.backend.as_str())
            .map(|(k, b)| (*k, b.clone()))
        else {
            tracing::warn!(run_id = %rec.run_id, backend = %rec.backend, "recorded watch for an unknown backend");
            return;
        };
        let token = CancellationToken::new();
        {
            let mut book = self.book();
            if !book.owned.contains(&tp) || book.running.contains_key(&rec.run_id) {
                return;
            }
            book.running.insert(rec.run_id.clone(), (tp, token.clone()));
        }
        tracing::info!(run_id = %rec.run_id, backend = kind, "resuming a followed run");
        let mut writer = RunWriter::new(
            self.publisher.clone(),
            &self.seqs,
            &rec.run_id,
            Some(kind),
            rec.source,
        )
        .for_action(rec.action);
        writer.seq = rec.seq;
        let deadline = rec.deadline_ms.map(|at_ms| Deadline {
            at_ms,
            after: Duration::from_millis(rec.timeout_ms.unwrap_or(0)),
        });
        let watch = Watch {
            writer,
            state: if rec.no_poll { Value::Null } else { rec.state },
            label: rec.label,
            deadline,
        };
        self.spawn(backend, watch, token);
    }

    /// Start tailing the watches topic (all partitions, from the beginning) into the
    /// table, resuming owned runs as their records arrive.
    pub async fn load(self: &Arc<Self>, kafka: &KafkaConfig) -> anyhow::Result<()> {
        let mut tail = TopicTail::open(kafka, &self.topic, "watches", &[]).await?;
        let this = self.clone();
        let reader = tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = tail.next(Duration::from_secs(3600)) => m,
                    _ = this.stop.cancelled() => return,
                };
                match msg {
                    Ok(Some(m)) => this.on_record(m.key(), m.payload()),
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, "reading the watches topic failed"),
                }
            }
        });
        *self.reader.lock().unwrap_or_else(|p| p.into_inner()) = Some(reader);
        Ok(())
    }

    /// Wait for the watches-topic reader to stop (after the stop token fired).
    pub async fn closed(&self) {
        let reader = self.reader.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(r) = reader {
            let _ = r.await;
        }
    }

    fn on_record(self: &Arc<Self>, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let Some(run_id) = key.and_then(|k| std::str::from_utf8(k).ok()) else {
            return;
        };
        let Some(payload) = payload else {
            self.book().table.remove(run_id);
            return;
        };
        let Ok(rec) = serde_json::from_slice::<Record>(payload) else {
            tracing::warn!(run_id, "unreadable record on the watches topic; ignored");
            return;
        };
        self.book().table.insert(run_id.to_owned(), rec.clone());
        self.resume(rec);
    }

    async fn run(&self, backend: Arc<dyn Backend>, mut watch: Watch, token: &CancellationToken) {
        let started = Instant::now();
        // A run with no state is not polled: only its deadline matters.
        let polled = !watch.state.is_null();
        let deadline = watch.deadline.map(|d| (d.instant(), d.after));
        let mut delay = self.cfg.poll_interval;
        let mut failures = 0u32;
        loop {
            let mut nap = if polled {
                delay
            } else {
                Duration::from_secs(3600)
            };
            if let Some((at, _)) = deadline {
                nap = nap.min(at.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                _ = tokio::time::sleep(nap) => {}
                _ = token.cancelled() => return,
                _ = self.stop.cancelled() => return,
            }
            if let Some((at, after)) = deadline {
                if Instant::now() >= at {
                    self.time_out(&mut watch, after, token).await;
                    return;
                }
            }
            if !polled {
                continue;
            }
            if started.elapsed() > self.cfg.max_duration {
                let summary = format!(
                    "gave up following after {:?}; the run may still finish remotely",
                    self.cfg.max_duration
                );
                let _ = self.finish(&mut watch, RunStatus::Failure, summary).await;
                return;
            }
            let progress = {
                let _permit = tokio::select! {
                    p = self.permits.acquire() => p.expect("the watch semaphore is never closed"),
                    _ = token.cancelled() => return,
                    _ = self.stop.cancelled() => return,
                };
                let poll =
                    tokio::time::timeout(self.cfg.poll_timeout, backend.follow(&watch.state));
                tokio::select! {
                    p = poll => p.unwrap_or_else(|_| Progress::Failed(format!(
                        "the poll took longer than watch.poll_timeout ({:?})",
                        self.cfg.poll_timeout
                    ))),
                    _ = token.cancelled() => return,
                    _ = self.stop.cancelled() => return,
                }
            };
            delay = self.cfg.poll_interval;
            match progress {
                Progress::Running { label, wait } => {
                    failures = 0;
                    if let Some(w) = wait {
                        delay = w.max(self.cfg.poll_interval);
                    }
                    if watch.label.as_deref() != Some(label.as_str()) {
                        let mut u = RunUpdate::status(&watch.writer.run_id, RunStatus::InProgress);
                        u.status_label = Some(label.clone());
                        if watch.writer.emit(u).await.is_err() {
                            return;
                        }
                        watch.label = Some(label);
                        if self.record(&watch).await.is_err() {
                            return;
                        }
                    }
                }
                Progress::Finished { status, summary } => {
                    let _ = self.finish(&mut watch, status, summary).await;
                    return;
                }
                Progress::Wait(d) => {
                    tracing::info!(run_id = %watch.writer.run_id, wait_ms = d.as_millis() as u64,
                        "provider rate limit; waiting before the next poll");
                    delay = d.min(self.cfg.max_duration);
                }
                Progress::Failed(why) => {
                    failures += 1;
                    delay = crate::backoff::nth(
                        self.cfg.poll_interval,
                        Duration::from_secs(300),
                        failures.min(6) + 1,
                        crate::backoff::Jitter::None,
                    );
                    tracing::warn!(run_id = %watch.writer.run_id, error = %why, failures,
                        retry_ms = delay.as_millis() as u64, "poll failed");
                }
            }
        }
    }

    /// Publish the terminal status, then delete the watch record.
    async fn finish(
        &self,
        watch: &mut Watch,
        status: RunStatus,
        summary: String,
    ) -> Result<(), Stopped> {
        tracing::info!(run_id = %watch.writer.run_id, status = status.as_str(), summary = %summary,
            "followed run finished");
        let mut u = RunUpdate::status(&watch.writer.run_id, status).with_summary(summary);
        u.status_label = watch.label.clone();
        watch.writer.emit(u).await?;
        self.publisher
            .send_keyed(&self.topic, &watch.writer.run_id, None)
            .await
    }
}
