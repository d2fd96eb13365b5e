//! Revoke and shutdown: stop intake, drain in-flight events up to the grace period,
//! commit the watermarks; and the per-partition gauges.

use std::time::Instant;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{Offset, TopicPartitionList};

use super::*;
use crate::telemetry::metrics;

impl<S: Sink> Ctx<S> {
    /// Stop intake on `tps`, wait for started work up to the grace period, commit the
    /// watermarks synchronously, and forget the partitions.
    ///
    /// Called from the rebalance callback. librdkafka pauses the member's whole
    /// assignment until that callback returns, so the partitions this member keeps wait
    /// for the drain too (at most the grace); other members are not affected by an
    /// incremental rebalance.
    pub(super) fn drain(&self, consumer: &BaseConsumer<Self>, tps: &[Tp]) {
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

    pub(super) fn assigned(&self) -> Vec<Tp> {
        self.lock().parts.keys().cloned().collect()
    }

    /// Refresh the per-partition gauges.
    pub(super) fn export(&self) {
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
                .map_or(0, |(t, _)| now.duration_since(*t).as_secs());
            m.oldest_in_flight_seconds
                .with_label_values(&labels)
                .set(oldest as i64);
        }
    }
}
