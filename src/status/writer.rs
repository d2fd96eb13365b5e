//! Writing a run's updates: the one place that numbers them (`seq`).
//!
//! Every writer of a run's updates in this process (the dispatch, the watcher, the status
//! API) takes its numbers from one [`Sequencer`], so two writers of one run never reuse a
//! number, whatever the order they run in and however far the run view trails the topic.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use crate::kafka::publisher::{Pending, Publisher, Stopped};
use crate::model::{now_rfc3339, RunUpdate, SourceRef};
use crate::telemetry::metrics;

/// The last `seq` of each run written recently, for all of this process's writers.
///
/// Bounded: the `capacity` runs that got a number most recently are remembered; for an
/// older run the writer's own knowledge (its last number, or the run view's) is the floor.
pub struct Sequencer {
    capacity: usize,
    inner: Mutex<Numbers>,
}

#[derive(Default)]
struct Numbers {
    last: HashMap<String, u64>,
    /// Runs in the order they were first numbered, for eviction.
    order: VecDeque<String>,
}

/// Runs remembered by default: at 3 updates per run, the last ~65k runs.
pub const SEQUENCER_RUNS: usize = 65_536;

impl Sequencer {
    pub fn new(capacity: usize) -> Self {
        Sequencer {
            capacity: capacity.max(1),
            inner: Mutex::new(Numbers::default()),
        }
    }

    /// Reserve `n` numbers for `run`, above `floor` (the highest number the caller knows
    /// of) and above every number handed out for it; returns the first.
    pub fn reserve(&self, run: &str, floor: u64, n: u64) -> u64 {
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let Numbers { last, order } = &mut *g;
        let first = match last.get_mut(run) {
            Some(seq) => {
                let first = (*seq).max(floor) + 1;
                *seq = first + n - 1;
                first
            }
            None => {
                if last.len() >= self.capacity {
                    if let Some(old) = order.pop_front() {
                        last.remove(&old);
                    }
                }
                last.insert(run.to_owned(), floor + n);
                order.push_back(run.to_owned());
                floor + 1
            }
        };
        first
    }

    /// The last number handed out for `run`, when it is remembered.
    #[cfg(test)]
    fn last(&self, run: &str) -> Option<u64> {
        let g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        g.last.get(run).copied()
    }
}

impl Default for Sequencer {
    fn default() -> Self {
        Sequencer::new(SEQUENCER_RUNS)
    }
}

/// Writes the updates of one run in order, numbering them (`seq`) and stamping time,
/// backend and source.
pub struct RunWriter {
    publisher: Arc<Publisher>,
    seqs: Arc<Sequencer>,
    pub run_id: String,
    /// `seq` of the last update written.
    pub seq: u64,
    pub backend: Option<&'static str>,
    /// The run's action identifier, carried on every update (run update v2).
    pub action: Option<String>,
    pub source: SourceRef,
    /// W3C trace context of the trigger record, sent as a header on every update.
    pub traceparent: Option<String>,
    /// Updates enqueued by [`emit_nowait`](Self::emit_nowait), oldest first.
    pending: Vec<Pending>,
}

impl RunWriter {
    pub fn new(
        publisher: Arc<Publisher>,
        seqs: &Arc<Sequencer>,
        run_id: &str,
        backend: Option<&'static str>,
        source: SourceRef,
    ) -> Self {
        RunWriter {
            publisher,
            seqs: seqs.clone(),
            run_id: run_id.to_owned(),
            seq: 0,
            backend,
            action: None,
            source,
            traceparent: None,
            pending: Vec::new(),
        }
    }

    /// Carry the run's action identifier on its updates.
    pub fn for_action(mut self, action: Option<String>) -> Self {
        self.action = action;
        self
    }

    /// Carry the trigger record's trace context on this run's updates.
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    fn stamp(&mut self, mut u: RunUpdate) -> RunUpdate {
        self.seq = self.seqs.reserve(&self.run_id, self.seq, 1);
        u.seq = self.seq;
        u.at = now_rfc3339();
        u.backend = self.backend.map(str::to_owned);
        u.action.clone_from(&self.action);
        u.source = Some(self.source.clone());
        u
    }

    /// Publish `u` as this run's next update; returns once the broker acknowledged it
    /// (and every update enqueued before it).
    pub async fn emit(&mut self, u: RunUpdate) -> Result<(), Stopped> {
        self.settle().await?;
        let u = self.stamp(u);
        self.publisher
            .send_update_traced(&u, self.traceparent.as_deref())
            .await
    }

    /// Enqueue `u` as this run's next update without waiting for the broker; the caller
    /// must [`settle`](Self::settle) before it treats the update as written (before the
    /// event's offset may complete).
    pub async fn emit_nowait(&mut self, u: RunUpdate) -> Result<(), Stopped> {
        let u = self.stamp(u);
        let p = self
            .publisher
            .enqueue_update(u, self.traceparent.clone())
            .await?;
        self.pending.push(p);
        Ok(())
    }

    /// Wait until every enqueued update is acknowledged; a failed one is re-sent with
    /// the retrying path (its `seq` keeps the logical order).
    pub async fn settle(&mut self) -> Result<(), Stopped> {
        for p in std::mem::take(&mut self.pending) {
            let delivered = match p.delivery {
                Some(d) => matches!(d.await, Ok(Ok(_))),
                None => false,
            };
            if delivered {
                metrics::get().run_updates.inc();
            } else {
                // Boxed: the retrying send is rare here, and large.
                Box::pin(
                    self.publisher
                        .send_update_traced(&p.update, p.traceparent.as_deref()),
                )
                .await?;
            }
        }
        Ok(())
    }
}

/// The pool's notices (retries, credential pauses) become this run's log updates.
impl crate::pool::Notices for RunWriter {
    fn notice(&mut self, u: RunUpdate) -> crate::pool::NoticeFuture<'_> {
        // Boxed: the pool's future stays small, and notices are rare.
        Box::pin(self.emit(u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_of_one_run_never_share_a_number() {
        let seqs = Sequencer::new(100);
        // The dispatch wrote 1 and 2; the API, whose view shows only 1, reserves two.
        assert_eq!(seqs.reserve("r", 0, 1), 1);
        assert_eq!(seqs.reserve("r", 1, 1), 2);
        assert_eq!(
            seqs.reserve("r", 1, 2),
            3,
            "above the view's floor and the 2"
        );
        assert_eq!(
            seqs.reserve("r", 2, 1),
            5,
            "the dispatch goes on after the API"
        );
        // A writer that knows more (a watch restored at 9) moves the numbering up.
        assert_eq!(seqs.reserve("r", 9, 1), 10);
        assert_eq!(seqs.last("r"), Some(10));
        assert_eq!(seqs.reserve("other", 0, 1), 1, "per run");
    }

    #[test]
    fn concurrent_reservations_are_distinct() {
        let seqs = Arc::new(Sequencer::new(100));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let seqs = seqs.clone();
                std::thread::spawn(move || {
                    (0..250)
                        .map(|_| seqs.reserve("r", 0, 1))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect();
        all.sort_unstable();
        assert_eq!(all, (1..=1000).collect::<Vec<u64>>());
    }

    #[test]
    fn the_oldest_runs_are_forgotten_past_the_capacity() {
        let seqs = Sequencer::new(2);
        seqs.reserve("a", 0, 3);
        seqs.reserve("b", 0, 1);
        seqs.reserve("c", 0, 1);
        assert_eq!(seqs.last("a"), None, "evicted");
        assert_eq!(seqs.last("c"), Some(1));
        // A forgotten run is numbered from its writer's floor.
        assert_eq!(seqs.reserve("a", 3, 1), 4);
    }
}
