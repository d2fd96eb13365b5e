//! Writing a run's updates: the one place that numbers them (`seq`).
//!
//! Every writer of a run's updates in this process (the dispatch, the watcher, the status
//! API) takes its numbers from one [`Sequencer`], so two writers of one run never reuse a
//! number, whatever the order they run in and however far the run view trails the topic.

use std::sync::{Arc, Mutex};

use crate::kafka::publisher::{Pending, Publisher, Stopped};
use crate::model::{now_rfc3339, RunUpdate, SourceRef};
use crate::status::fingerprint::{RunKey, RunWindow};
use crate::telemetry::metrics;

/// The last `seq` of each run written recently, for all of this process's writers.
///
/// Bounded: the `capacity` runs that got a number most recently are remembered; for an
/// older run the writer's own knowledge (its last number, or the run view's) is the floor.
pub struct Sequencer {
    last: Mutex<RunWindow<u64>>,
}

/// Runs remembered: the last 65,536 runs numbered. By fingerprint, so the sequencer holds
/// at most 131,072 map slots of 25 bytes and 65,536 queue slots of 16: 4.3 MB.
pub const SEQUENCER_RUNS: usize = 65_536;

impl Sequencer {
    pub fn new(capacity: usize) -> Self {
        Sequencer {
            last: Mutex::new(RunWindow::with_capacity(capacity)),
        }
    }

    /// Reserve `n` numbers for `run`, above `floor` (the highest number the caller knows
    /// of) and above every number handed out for it; returns the first.
    pub fn reserve(&self, run: &str, floor: u64, n: u64) -> u64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let run = RunKey::of(run);
        match last.get_mut(&run) {
            Some(seq) => {
                let first = (*seq).max(floor) + 1;
                *seq = first + n - 1;
                first
            }
            None => {
                last.insert_new(run, floor + n);
                floor + 1
            }
        }
    }

    /// The last number handed out for `run`, when it is remembered.
    #[cfg(test)]
    fn last(&self, run: &str) -> Option<u64> {
        let last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        last.get(&RunKey::of(run)).copied()
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
    /// The run's IN_PROGRESS mark while it is held back ([`hold_mark`](Self::hold_mark)).
    mark: Option<Arc<HeldMark>>,
}

/// A run's IN_PROGRESS mark, held back so that a run that finishes quickly is written
/// as one record (its terminal update). It is written by whichever comes first: the
/// hold's end ([`HeldMark::write`], from the dispatch), or any update of the run other
/// than its terminal one (which drops it instead).
pub struct HeldMark {
    state: tokio::sync::Mutex<Held>,
    traceparent: Option<String>,
}

enum Held {
    /// Not written; `seq` and `at` are set when it is.
    Waiting(RunUpdate),
    /// Enqueued with this `seq`; the delivery is awaited by the writer's `settle`.
    Written(u64, Option<Pending>),
    /// The run finished first: never written.
    Dropped,
}

impl HeldMark {
    /// Write the mark now unless it was written or dropped already. Under the mark's
    /// lock, so no update of the run can be enqueued before it.
    pub async fn write(&self, publisher: &Publisher, seqs: &Sequencer) -> Result<(), Stopped> {
        let mut state = self.state.lock().await;
        self.write_locked(&mut state, publisher, seqs).await
    }

    /// [`write`](Self::write) with the lock held. On `Stopped` the mark is given up: the
    /// run's event is redelivered, and no later update of the run can be written either.
    async fn write_locked(
        &self,
        state: &mut Held,
        publisher: &Publisher,
        seqs: &Sequencer,
    ) -> Result<(), Stopped> {
        let Held::Waiting(u) = state else {
            return Ok(()); // written or dropped already
        };
        let mut u = std::mem::replace(u, RunUpdate::new(String::new(), u.kind));
        // Given up unless the enqueue below succeeds.
        *state = Held::Dropped;
        u.seq = seqs.reserve(&u.run_id, 0, 1);
        u.at = now_rfc3339();
        let seq = u.seq;
        let p = publisher
            .enqueue_update(u, self.traceparent.clone())
            .await?;
        *state = Held::Written(seq, Some(p));
        Ok(())
    }
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
            mark: None,
        }
    }

    /// Hold `u` (the IN_PROGRESS mark) back: it is written before this run's next update
    /// unless that update is terminal ([`finish_held`](Self::finish_held)), or when the
    /// caller calls [`HeldMark::write`] on the returned handle (its hold ended).
    pub fn hold_mark(&mut self, u: RunUpdate) -> Arc<HeldMark> {
        let u = self.stamp_fields(u);
        let mark = Arc::new(HeldMark {
            state: tokio::sync::Mutex::new(Held::Waiting(u)),
            traceparent: self.traceparent.clone(),
        });
        self.mark = Some(mark.clone());
        mark
    }

    /// The run is about to write its terminal update: a mark still held is dropped (the
    /// terminal update is the run's first), one written is kept.
    pub async fn finish_held(&mut self) {
        if let Some(mark) = &self.mark {
            let mut state = mark.state.lock().await;
            if matches!(*state, Held::Waiting(_)) {
                *state = Held::Dropped;
            }
        }
    }

    /// Write a held mark before any other update, and take its `seq` as the floor.
    async fn release_mark(&mut self) -> Result<(), Stopped> {
        let Some(mark) = self.mark.clone() else {
            return Ok(());
        };
        let mut state = mark.state.lock().await;
        mark.write_locked(&mut state, &self.publisher, &self.seqs)
            .await?;
        if let Held::Written(seq, pending) = &mut *state {
            self.seq = self.seq.max(*seq);
            if let Some(p) = pending.take() {
                self.pending.insert(0, p);
            }
        }
        // Written (and taken) or dropped: nothing more to do for it.
        self.mark = None;
        Ok(())
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

    fn stamp(&mut self, u: RunUpdate) -> RunUpdate {
        self.seq = self.seqs.reserve(&self.run_id, self.seq, 1);
        let mut u = self.stamp_fields(u);
        u.seq = self.seq;
        u
    }

    fn stamp_fields(&self, mut u: RunUpdate) -> RunUpdate {
        u.at = now_rfc3339();
        u.backend = self.backend.map(str::to_owned);
        u.action.clone_from(&self.action);
        u.source = Some(self.source.clone());
        u
    }

    /// Publish `u` as this run's next update; returns once the broker acknowledged it
    /// (and every update enqueued before it).
    pub async fn emit(&mut self, u: RunUpdate) -> Result<(), Stopped> {
        self.release_mark().await?;
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
        self.release_mark().await?;
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
        self.release_mark().await?;
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
