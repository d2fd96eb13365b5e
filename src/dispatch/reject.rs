//! Bad input: a FAILURE update when the run id is known, a DLQ record, then the offset
//! completes.

use super::*;

impl Inner {
    /// Bad input: a FAILURE update when the run id is known, a DLQ record, then the
    /// offset completes.
    pub(super) async fn reject(
        &self,
        record: TriggerRecord,
        ticket: Ticket,
        run_id: Option<String>,
        bad: BadInput,
    ) {
        let message = bad.to_string();
        tracing::warn!(run_id = run_id.as_deref().unwrap_or(""), class = bad.class(),
            source = %record.source(), error = %message, "rejected trigger event");
        if let Some(id) = &run_id {
            let mut w = RunWriter::new(
                self.publisher.clone(),
                &self.seqs,
                id,
                None,
                record.source(),
            )
            .traced(crate::telemetry::trace::from_headers(&record.headers));
            let u = RunUpdate::status(id, RunStatus::Failure).with_summary(message.clone());
            if w.emit(u).await.is_err() {
                return;
            }
        }
        let mut rec = dlq::record(&record, &message, bad.class(), 0);
        if matches!(bad, BadInput::TooLarge(_)) {
            let max_input = self.max_input.load(std::sync::atomic::Ordering::Relaxed);
            dlq::truncate(&mut rec, TRUNCATED_COPY.min(max_input / 2));
        }
        if self.publisher.send_dlq(&rec).await.is_err() {
            return;
        }
        ticket.complete();
    }
}

/// How much of a too-large record the DLQ keeps.
const TRUNCATED_COPY: usize = 64 * 1024;

/// The run id of a JSON event (`run.id`), read without building the event (the record
/// may be huge); `None` when it is not there or the record does not parse.
pub(super) fn run_id_of(payload: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Run {
        id: String,
    }
    #[derive(serde::Deserialize)]
    struct Event {
        run: Run,
    }
    serde_json::from_slice::<Event>(payload)
        .ok()
        .map(|e| e.run.id)
        .filter(|id| !id.is_empty() && id.len() <= 256)
}
