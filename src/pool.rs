//! Per-backend worker pool: bounded concurrency and the attempt timeout.
//!
//! Retries, rate limits and circuit breakers will live here too, never in a backend.

use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Outcome, Report, Request};
use crate::config::PoolConfig;

pub struct Pool {
    name: &'static str,
    permits: Semaphore,
    timeout: Duration,
}

/// A finished attempt with its timing.
pub struct Attempted {
    pub report: Report,
    pub attempt: u32,
    pub duration: Duration,
}

impl Pool {
    pub fn new(name: &'static str, cfg: &PoolConfig) -> Self {
        Pool {
            name,
            permits: Semaphore::new(cfg.concurrency),
            timeout: cfg.timeout,
        }
    }

    /// Run one attempt under a concurrency permit and the timeout. Returns `None` when
    /// `abandon` fires first (the run is cut off and will be redelivered).
    pub async fn run(
        &self,
        backend: &dyn Backend,
        req: &Request,
        abandon: &CancellationToken,
    ) -> Option<Attempted> {
        let _permit = tokio::select! {
            p = self.permits.acquire() => p.expect("pool semaphores are never closed"),
            _ = abandon.cancelled() => return None,
        };
        let start = Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(self.timeout, backend.attempt(req)) => r,
            _ = abandon.cancelled() => return None,
        };
        let report = result.unwrap_or_else(|_| {
            let mut r = Report::new(
                Outcome::Retryable,
                format!("{} attempt timed out after {:?}", self.name, self.timeout),
            );
            r.error_class = Some("timeout");
            r
        });
        Some(Attempted {
            report,
            attempt: 1,
            duration: start.elapsed(),
        })
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}
