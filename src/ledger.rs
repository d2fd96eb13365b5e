//! Duplicate suppression: a view of the status topic that says which runs are finished,
//! and which non-idempotent dispatches (GITHUB, GITLAB, AZURE_DEVOPS) already happened.
//!
//! Every instance tails the status topic from the beginning into the view, so any
//! instance can tell whether a redelivered event's run is done, whoever dispatched it.
//! Before the consumer starts, the view catches up with the watermarks read at start.
//! Memory is bounded by `dedup.max_runs` (oldest entries are forgotten first). The same
//! tail ([`tail`]) feeds the run view of the status API.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::model::RunUpdate;

/// The tail fetches at most this long ([`LEDGER_FETCH_MIN_BYTES`] permitting)…
const LEDGER_FETCH_WAIT_MS: u64 = 100;
/// …or until this much is ready, whichever comes first.
const LEDGER_FETCH_MIN_BYTES: u64 = 64 * 1024;

/// Backends whose dispatch must not be repeated once it happened.
const NON_IDEMPOTENT: [&str; 3] = ["GITHUB", "GITLAB", "AZURE_DEVOPS"];

/// What the status topic says about a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// It has a terminal status.
    Finished,
    /// A non-idempotent dispatch of it happened (the run may still be open).
    Dispatched,
}

#[derive(Default)]
struct View {
    runs: HashMap<String, Seen>,
    order: VecDeque<String>,
}

pub struct Ledger {
    view: Mutex<View>,
    max_runs: usize,
    suppressed: AtomicU64,
}

impl Ledger {
    pub fn new(max_runs: usize) -> Arc<Self> {
        Arc::new(Ledger {
            view: Mutex::new(View::default()),
            max_runs: max_runs.max(1),
            suppressed: AtomicU64::new(0),
        })
    }

    fn view(&self) -> std::sync::MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What is known about `run_id`.
    pub fn seen(&self, run_id: &str) -> Option<Seen> {
        self.view().runs.get(run_id).copied()
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
        let mut v = self.view();
        match v.runs.get(&u.run_id) {
            Some(Seen::Finished) => return,
            Some(Seen::Dispatched) if seen == Seen::Dispatched => return,
            Some(_) => {}
            None => v.order.push_back(u.run_id.clone()),
        }
        v.runs.insert(u.run_id.clone(), seen);
        while v.runs.len() > self.max_runs {
            let Some(old) = v.order.pop_front() else {
                break;
            };
            v.runs.remove(&old);
        }
    }
}

/// Tail the status topic from the beginning, handing every run update to `observe`
/// (the duplicate ledger, the run view). Returns once the tail has caught up with the
/// watermarks read now (or after `catch_up` at most), and keeps tailing until `stop`.
pub async fn tail(
    kafka: &KafkaConfig,
    codec: Arc<crate::avro::Codec>,
    full: bool,
    catch_up: Duration,
    stop: CancellationToken,
    observe: impl Fn(&RunUpdate) + Send + 'static,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let (tpl, ends) = crate::kafka::topics::from_start(kafka, &kafka.status_topic).await?;
    let consumer: StreamConsumer = crate::kafka::consumer_config(kafka)
        .set("group.id", format!("{}.ledger", kafka.group_id))
        .set("enable.auto.commit", "false")
        // The view may trail by a fraction of a second; what it must not do is cost
        // the broker one fetch per few records (three run updates per event).
        .set("fetch.wait.max.ms", LEDGER_FETCH_WAIT_MS.to_string())
        .set("fetch.min.bytes", LEDGER_FETCH_MIN_BYTES.to_string())
        .create()?;
    consumer.assign(&tpl)?;
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        let mut ready = Some(ready_tx);
        let mut position: HashMap<i32, i64> = ends.keys().map(|p| (*p, 0)).collect();
        loop {
            if ready.is_some() && ends.iter().all(|(p, end)| position[p] >= *end) {
                let _ = ready.take().map(|r| r.send(()));
            }
            let msg = tokio::select! {
                m = consumer.recv() => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(m) => {
                    position.insert(m.partition(), m.offset() + 1);
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

    #[test]
    fn finished_runs_and_started_non_idempotent_dispatches_are_remembered() {
        let l = Ledger::new(10);
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

    #[test]
    fn memory_is_bounded_oldest_first() {
        let l = Ledger::new(3);
        for r in ["a", "b", "c", "d"] {
            l.observe(&update(r, 2, "WEBHOOK", RunStatus::Success));
        }
        assert_eq!(l.seen("a"), None);
        assert_eq!(l.seen("d"), Some(Seen::Finished));
    }
}
