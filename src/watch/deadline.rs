//! Run timeouts (`[run_timeout]`): a run's deadline, the check of runs that ended
//! elsewhere, and what the watcher does when a deadline passes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{Watch, Watcher};
use crate::kafka::publisher::Stopped;
use crate::model::{RunStatus, SourceRef};
use crate::status::writer::RunWriter;

/// When a run times out, and after how long (for the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline {
    /// Epoch milliseconds.
    pub at_ms: i64,
    pub after: Duration,
}

impl Deadline {
    /// `after` from now.
    pub fn after(after: Duration) -> Self {
        Deadline {
            at_ms: now_ms().saturating_add(after.as_millis() as i64),
            after,
        }
    }

    /// The deadline as an [`Instant`] of this process.
    pub(super) fn instant(&self) -> Instant {
        let left = self.at_ms.saturating_sub(now_ms()).max(0) as u64;
        Instant::now() + Duration::from_millis(left)
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Whether a run finished somewhere else (a service reported it), checked before it
/// times out. `Err`: cannot tell now (checked again, a few times).
pub trait RunEnded: Send + Sync {
    fn ended<'a>(
        &'a self,
        run_id: &'a str,
        source: &'a SourceRef,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<bool, String>> + Send + 'a>>;
}

/// How often a failed "did it end elsewhere?" check is repeated before a run times out.
const TIMEOUT_CHECKS: u32 = 5;

impl Watcher {
    /// An async run nobody polls (a WEBHOOK that answered 202, a KAFKA or AZURE_DEVOPS
    /// run): when `[run_timeout]` gives it a timeout, record its deadline and wait for
    /// it. `Ok(false)`: no timeout applies (or `max_watches` is reached).
    pub async fn time_limit(self: &Arc<Self>, writer: RunWriter) -> Result<bool, Stopped> {
        let (kind, action) = (writer.backend, writer.action.as_deref());
        let Some(after) = kind.and_then(|k| self.timeouts.for_run(k, action)) else {
            return Ok(false);
        };
        let watch = Watch {
            writer,
            state: Value::Null,
            label: None,
            deadline: Some(Deadline::after(after)),
        };
        self.follow(watch).await
    }

    /// The deadline passed: FAILURE, unless the run ended elsewhere meanwhile.
    pub(super) async fn time_out(
        &self,
        watch: &mut Watch,
        after: Duration,
        token: &CancellationToken,
    ) {
        let run_id = watch.writer.run_id.clone();
        if let Some(check) = &self.ended {
            let mut tries = 0u32;
            loop {
                match check.ended(&run_id, &watch.writer.source).await {
                    Ok(true) => {
                        tracing::info!(run_id = %run_id, "the run finished elsewhere before its run_timeout");
                        let _ = self.publisher.send_keyed(&self.topic, &run_id, None).await;
                        return;
                    }
                    Ok(false) => break,
                    Err(why) if tries < TIMEOUT_CHECKS => {
                        tries += 1;
                        let wait = crate::backoff::nth(
                            Duration::from_secs(1),
                            Duration::from_secs(60),
                            tries,
                            crate::backoff::Jitter::Half,
                        );
                        tracing::warn!(run_id = %run_id, error = %why, retry_ms = wait.as_millis() as u64,
                            "cannot tell whether the run finished elsewhere; asking again before timing it out");
                        tokio::select! {
                            _ = tokio::time::sleep(wait) => {}
                            _ = token.cancelled() => return,
                            _ = self.stop.cancelled() => return,
                        }
                    }
                    Err(why) => {
                        tracing::warn!(run_id = %run_id, error = %why,
                            "cannot tell whether the run finished elsewhere; timing it out");
                        break;
                    }
                }
            }
        }
        crate::telemetry::metrics::get()
            .run_timeouts
            .with_label_values(&[watch.writer.backend.unwrap_or("unknown")])
            .inc();
        let summary = format!(
            "timed out after {}: still IN_PROGRESS past its run_timeout",
            humantime::format_duration(after)
        );
        let _ = self.finish(watch, RunStatus::Failure, summary).await;
    }
}
