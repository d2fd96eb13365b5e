//! The retry layer: which failures are worth another attempt, and how long to wait.
//!
//! HTTP failures are reclassified with the backend's `retry_statuses` (401/403 stay
//! credential failures). A transient failure is retried up to `max_attempts`, after the
//! destination's `Retry-After` when it sent one, else after full jitter below a doubling
//! ceiling; both capped at `max_backoff`.

use std::time::Duration;

use crate::backends::{Outcome, Report};
use crate::backoff::{self, Jitter};
use crate::config::RetryConfig;

pub struct Retry {
    cfg: RetryConfig,
}

impl Retry {
    pub fn new(cfg: &RetryConfig) -> Self {
        Retry { cfg: cfg.clone() }
    }

    pub fn max_attempts(&self) -> u32 {
        self.cfg.max_attempts.max(1)
    }

    /// Apply the backend's status classes to an HTTP failure.
    pub fn reclassify(&self, mut report: Report) -> Report {
        if let Some(code) = report.http_status {
            if report.outcome.is_failure() && !matches!(code, 401 | 403) {
                report.outcome = if self.cfg.retries(code) {
                    Outcome::Retryable
                } else {
                    Outcome::Permanent
                };
            }
        }
        report
    }

    /// The wait before another attempt after attempt number `attempt` (1-based) ended
    /// with `report`; `None` when the run is settled (success, a permanent failure, or
    /// the attempts are used up).
    pub fn after(&self, attempt: u32, report: &Report) -> Option<Duration> {
        if report.outcome != Outcome::Retryable || attempt >= self.max_attempts() {
            return None;
        }
        Some(self.backoff(attempt, report.retry_after))
    }

    /// The wait before retry number `attempt` (1-based): the server's `Retry-After`
    /// when it gave one, else full jitter below `initial × 2^(attempt-1)`; both capped.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.cfg.max_backoff;
        match retry_after {
            Some(wait) => wait.min(cap),
            None => backoff::nth(self.cfg.initial_backoff, cap, attempt, Jitter::Full),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn retry(retry_statuses: &[&str]) -> Retry {
        Retry::new(&RetryConfig {
            retry_statuses: retry_statuses.iter().map(|s| s.to_string()).collect(),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        })
    }

    fn http_failure(code: u16) -> Report {
        let mut r = Report::new(Outcome::Permanent, format!("HTTP {code}"));
        r.http_status = Some(code);
        r
    }

    #[test]
    fn status_classes_come_from_config() {
        let p = retry(&["409", "5xx"]);
        assert_eq!(p.reclassify(http_failure(409)).outcome, Outcome::Retryable);
        assert_eq!(p.reclassify(http_failure(502)).outcome, Outcome::Retryable);
        assert_eq!(p.reclassify(http_failure(429)).outcome, Outcome::Permanent);
        let mut auth = http_failure(401);
        auth.outcome = Outcome::CredentialsRejected;
        assert_eq!(p.reclassify(auth).outcome, Outcome::CredentialsRejected);
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_capped_ceiling() {
        let p = retry(&["5xx"]);
        for attempt in 1..8 {
            let ceiling =
                Duration::from_millis(100 * 2u64.pow(attempt - 1)).min(Duration::from_secs(1));
            for _ in 0..50 {
                assert!(p.backoff(attempt, None) <= ceiling);
            }
        }
        assert_eq!(
            p.backoff(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(60))),
            Duration::from_secs(1),
            "capped"
        );
    }

    #[test]
    fn only_retryable_failures_within_the_attempts_are_retried() {
        let p = retry(&["5xx"]);
        let retryable = p.reclassify(http_failure(503));
        assert!(p.after(1, &retryable).is_some());
        assert!(p.after(p.max_attempts(), &retryable).is_none(), "used up");
        assert!(p.after(1, &p.reclassify(http_failure(404))).is_none());
        assert!(p.after(1, &Report::new(Outcome::Succeeded, "ok")).is_none());
    }
}
