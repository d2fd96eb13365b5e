//! Before a dispatch: duplicates (the dedup ledger), expiry, verified replay markers.

use super::*;

impl Inner {
    /// A redelivered run that is finished, or whose non-idempotent dispatch happened, is
    /// not dispatched again (replays from the DLQ are always dispatched). The event of a
    /// partition just assigned first waits for the view to catch up.
    pub(super) async fn is_duplicate(&self, run_id: &str, record: &TriggerRecord) -> bool {
        let Some(ledger) = &self.ledger else {
            return false;
        };
        if self.replayed(record) {
            return false;
        }
        ledger.caught_up_for(&record.topic, record.partition).await;
        let Some(seen) = ledger.seen(run_id) else {
            return false;
        };
        let total = ledger.suppressed();
        crate::telemetry::metrics::get().duplicates_suppressed.inc();
        tracing::info!(run_id, seen = ?seen, suppressed_total = total, source = %record.source(),
            "duplicate run suppressed; not dispatched again");
        true
    }

    /// An event past its `deadline`, or older than `max_event_age`, is not dispatched.
    pub(super) fn check_expiry(
        &self,
        event: &TriggerEvent,
        record: &TriggerRecord,
    ) -> Result<(), BadInput> {
        use time::format_description::well_known::Rfc3339;
        let now = time::OffsetDateTime::now_utc();
        if let Some(text) = &event.deadline {
            let deadline = time::OffsetDateTime::parse(text, &Rfc3339).map_err(|e| {
                BadInput::InvalidEvent(format!("deadline: {text:?} is not an RFC 3339 time ({e})"))
            })?;
            if now > deadline {
                return Err(BadInput::Expired(format!("deadline {text} passed")));
            }
        }
        if let (Some(max), Some(ts)) = (self.max_event_age, record.timestamp_ms) {
            let age_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64 - ts;
            if age_ms > max.as_millis() as i64 {
                return Err(BadInput::Expired(format!(
                    "the event is {:.1} s old; dispatch.max_event_age is {max:?}",
                    age_ms as f64 / 1000.0
                )));
            }
        }
        Ok(())
    }

    /// Whether `dlq replay` re-published this record (its MAC checked).
    pub(super) fn replayed(&self, record: &TriggerRecord) -> bool {
        dlq::verified_replay(
            self.replay_key.as_deref(),
            &record.headers,
            record.key.as_deref(),
            record.payload.as_deref(),
        )
    }

    /// Whether the automations engine emitted this record (its MAC checked).
    pub(super) fn emitted_by_automation(&self, record: &TriggerRecord) -> bool {
        crate::automations::event::verified(
            self.replay_key.as_deref(),
            &record.headers,
            record.key.as_deref(),
            record.payload.as_deref(),
        )
    }
}
