//! A finished attempt's run updates: response, log, links and the terminal status.

use super::*;

impl Inner {
    /// The run updates for one finished attempt.
    pub(super) async fn publish_report(
        &self,
        w: &mut RunWriter,
        report: &Report,
        attempt: u32,
        duration: std::time::Duration,
    ) -> Result<(), Stopped> {
        let status = match report.outcome {
            Outcome::Succeeded => Some(RunStatus::Success),
            Outcome::Accepted => None,
            _ => Some(RunStatus::Failure),
        };
        if status.is_some() {
            // Finished: an IN_PROGRESS mark still held back is not written.
            w.finish_held().await;
        }
        // A response travels on the terminal update when there is one (one record
        // instead of two); an accepted run's response is an update of its own.
        let mut response = report
            .response
            .as_ref()
            .filter(|_| !report.outcome.is_failure());
        if let (Some(resp), None) = (response, status) {
            w.emit_nowait(RunUpdate::response(&w.run_id, resp.clone()))
                .await?;
            response = None;
        }
        if let Some(line) = &report.log {
            w.emit_nowait(RunUpdate::log(&w.run_id, LogLevel::Info, line.clone()))
                .await?;
        }
        let needs_status =
            status.is_some() || !report.link.is_empty() || report.external_run_id.is_some();
        if needs_status {
            let mut u = RunUpdate::status(&w.run_id, status.unwrap_or(RunStatus::InProgress))
                .with_summary(report.summary.clone());
            u.attempt = Some(attempt);
            u.duration_ms = Some(duration.as_millis() as u64);
            if !report.link.is_empty() {
                u.link = Some(report.link.clone());
            }
            u.external_run_id = report.external_run_id.clone();
            u.response = response.cloned();
            w.emit_nowait(u).await?;
        }
        // Response, log and status travel together: one wait for all of them.
        w.settle().await
    }
}
