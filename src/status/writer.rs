//! Writing a run's updates in order.

use std::sync::Arc;

use crate::kafka::publisher::{Pending, Publisher, Stopped};
use crate::model::{now_rfc3339, RunUpdate, SourceRef};
use crate::telemetry::metrics;

/// Writes the updates of one run in order, numbering them (`seq`) and stamping time,
/// backend and source.
pub struct RunWriter {
    publisher: Arc<Publisher>,
    pub run_id: String,
    /// `seq` of the last update written.
    pub seq: u64,
    pub backend: Option<&'static str>,
    pub source: SourceRef,
    /// W3C trace context of the trigger record, sent as a header on every update.
    pub traceparent: Option<String>,
    /// Updates enqueued by [`emit_nowait`](Self::emit_nowait), oldest first.
    pending: Vec<Pending>,
}

impl RunWriter {
    pub fn new(
        publisher: Arc<Publisher>,
        run_id: &str,
        backend: Option<&'static str>,
        source: SourceRef,
    ) -> Self {
        RunWriter {
            publisher,
            run_id: run_id.to_owned(),
            seq: 0,
            backend,
            source,
            traceparent: None,
            pending: Vec::new(),
        }
    }

    /// Carry the trigger record's trace context on this run's updates.
    pub fn traced(mut self, traceparent: Option<String>) -> Self {
        self.traceparent = traceparent;
        self
    }

    fn stamp(&mut self, mut u: RunUpdate) -> RunUpdate {
        self.seq += 1;
        u.seq = self.seq;
        u.at = now_rfc3339();
        u.backend = self.backend.map(str::to_owned);
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
