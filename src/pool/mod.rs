//! Per-backend worker pool: bounded concurrency, the attempt timeout, and retries.
//!
//! A backend performs one attempt; the pool decides what happens next. HTTP failures are
//! reclassified with the backend's `retry_statuses` (401/403 stay credential failures).
//! Transient failures are retried up to `max_attempts`, with exponential backoff and full
//! jitter capped at `max_backoff`, or after the destination's `Retry-After` (also capped).
//! A concurrency permit is held only while an attempt runs, never while waiting, and each
//! retry is announced on the run ("attempt 2/5 after HTTP 503, waiting 1.8 s").
//!
//! Before an attempt, the destination's circuit breaker and the rate limit are consulted
//! ([`breaker`], [`rate_limit`]): an open breaker refuses the attempt without a request (a retryable
//! failure that waits for the next probe), and the rate limit delays it.

pub mod breaker;
pub mod pause;
pub mod rate_limit;

use std::time::Duration;

use tokio::time::Instant;

use rand::Rng;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Outcome, Registry, Report, Request};
use crate::config::{PoolConfig, RetryConfig};
use crate::model::{LogLevel, RunUpdate};
use crate::status::writer::RunWriter;
use crate::telemetry::metrics;
use crate::telemetry::scopeguard;
use breaker::Breakers;
use pause::CredentialPauses;
use rate_limit::RateLimiter;

/// A backend with its worker pool.
pub struct Pooled {
    pub backend: std::sync::Arc<dyn Backend>,
    pub pool: Pool,
}

/// Every backend of a [`Registry`] with a pool of its own, by `invocationMethod.type`.
pub struct Pools {
    by_type: std::collections::BTreeMap<&'static str, Pooled>,
}

impl Pools {
    pub fn new(registry: &Registry) -> Pools {
        let by_type = registry
            .iter()
            .map(|(kind, r)| {
                let pooled = Pooled {
                    backend: r.backend.clone(),
                    pool: Pool::new(kind, &r.pool),
                };
                (kind, pooled)
            })
            .collect();
        Pools { by_type }
    }

    pub fn get(&self, kind: &str) -> Option<&Pooled> {
        self.by_type.get(kind)
    }

    /// Comma-separated list of known types, for error messages.
    pub fn known(&self) -> String {
        self.by_type.keys().copied().collect::<Vec<_>>().join(", ")
    }
}

pub struct Pool {
    name: &'static str,
    permits: Semaphore,
    timeout: Duration,
    retry: RetryConfig,
    /// Destinations paused after a credential failure.
    pauses: CredentialPauses,
    breakers: Breakers,
    limiter: Option<RateLimiter>,
}

/// A finished run of attempts.
pub struct Attempted {
    pub report: Report,
    /// Attempts made (1 when the first one settled it).
    pub attempt: u32,
    /// From the first attempt's start to the last one's end.
    pub duration: Duration,
}

impl Pool {
    pub fn new(name: &'static str, cfg: &PoolConfig) -> Self {
        Pool {
            name,
            permits: Semaphore::new(cfg.concurrency),
            timeout: cfg.timeout,
            retry: cfg.retry.clone(),
            pauses: CredentialPauses::new(name, cfg.retry.credentials_pause),
            breakers: Breakers::new(name, &cfg.breaker),
            limiter: RateLimiter::new(&cfg.rate_limit),
        }
    }

    /// Destinations paused after a credential failure.
    pub fn paused(&self) -> usize {
        self.pauses.paused()
    }

    /// Wait out the pause of `dest`, or until `limit`; `None` when `abandon` fires
    /// first.
    async fn unpaused(
        &self,
        dest: &str,
        limit: Option<Instant>,
        abandon: &CancellationToken,
    ) -> Option<()> {
        while let Some(until) = self.pauses.deadline(dest) {
            let until = limit.map_or(until, |l| until.min(l));
            if until <= Instant::now() {
                break;
            }
            tokio::select! {
                _ = tokio::time::sleep_until(until) => {}
                _ = abandon.cancelled() => return None,
            }
        }
        Some(())
    }

    /// Attempt `req` until it settles or the attempts run out. Retries are announced
    /// through `writer`. Returns `None` when `abandon` fires first, or when a retry notice
    /// cannot be published because switchyard is stopping (the run is redelivered).
    pub async fn run(
        &self,
        backend: &dyn Backend,
        req: &Request,
        abandon: &CancellationToken,
        writer: &mut RunWriter,
    ) -> Option<Attempted> {
        let start = Instant::now();
        let max = self.retry.max_attempts.max(1);
        let mut attempt = 1;
        let in_flight = metrics::get().in_flight.with_label_values(&[self.name]);
        in_flight.inc();
        let _done = scopeguard(move || in_flight.dec());
        // A credential pause holds this destination only (a backend with no per-run
        // destination pauses as a whole), and a run waits on pauses for at most
        // `credentials_max_wait` in all.
        let dest = backend.destination(req).unwrap_or_default();
        let cap = self.retry.credentials_max_wait;
        let mut rejected: Option<(Instant, Report)> = None;
        loop {
            let limit = rejected.as_ref().map(|(since, _)| *since + cap);
            self.unpaused(&dest, limit, abandon).await?;
            if let Some((since, last)) = rejected.take_if(|(since, _)| since.elapsed() >= cap) {
                metrics::get()
                    .refusals
                    .with_label_values(&["credentials_wait"])
                    .inc();
                let mut report = last;
                report.summary = format!(
                    "{} (credentials still rejected after {:.0} s; retry.credentials_max_wait \
                     is {cap:?})",
                    report.summary,
                    since.elapsed().as_secs_f64()
                );
                return Some(Attempted {
                    report,
                    attempt,
                    duration: start.elapsed(),
                });
            }
            let report = self.once(backend, req, abandon).await?;
            if report.outcome == Outcome::CredentialsRejected {
                // Do not burn the event: the destination pauses and this run waits to
                // probe again.
                let until = self.pauses.pause(&dest, &report.summary);
                let since = rejected.as_ref().map_or_else(Instant::now, |(s, _)| *s);
                let wait = until
                    .saturating_duration_since(Instant::now())
                    .min(cap.saturating_sub(since.elapsed()));
                let shown = if dest.is_empty() {
                    self.name
                } else {
                    dest.as_str()
                };
                let notice = format!(
                    "{shown} paused: credentials rejected ({}); retrying in {:.0} s",
                    cause(&report.summary),
                    wait.as_secs_f64()
                );
                let u = RunUpdate::log(&req.run_id, LogLevel::Error, notice);
                Box::pin(writer.emit(u)).await.ok()?;
                rejected = Some((since, report));
                continue;
            }
            self.pauses.resume(&dest);
            if report.outcome != Outcome::Retryable || attempt >= max {
                return Some(Attempted {
                    report,
                    attempt,
                    duration: start.elapsed(),
                });
            }
            let wait = self.backoff(attempt, report.retry_after);
            let cause = cause(&report.summary);
            let notice = format!(
                "attempt {}/{max} after {cause}, waiting {:.1} s",
                attempt + 1,
                wait.as_secs_f64()
            );
            tracing::warn!(run_id = %req.run_id, backend = self.name, "{notice}");
            metrics::get().retries.with_label_values(&[self.name]).inc();
            let u = RunUpdate::log(&req.run_id, LogLevel::Warn, notice);
            Box::pin(writer.emit(u)).await.ok()?;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = abandon.cancelled() => return None,
            }
            attempt += 1;
        }
    }

    /// One attempt: past the destination's breaker and the rate limit, under a
    /// concurrency permit and the timeout; classified with this backend's status classes.
    async fn once(
        &self,
        backend: &dyn Backend,
        req: &Request,
        abandon: &CancellationToken,
    ) -> Option<Report> {
        let m = metrics::get();
        let dest = backend.destination(req);
        let refused = |d: &str, r: breaker::Refused| {
            m.breaker_rejections.with_label_values(&[self.name]).inc();
            let mut rep = Report::new(
                Outcome::Retryable,
                format!(
                    "circuit open for {d} after {} consecutive failures",
                    r.failures
                ),
            );
            rep.error_class = Some("circuit_open");
            rep.retry_after = Some(r.wait);
            rep
        };
        // Turn the attempt away early when the breaker is open, rather than after it
        // queued for a token and a permit.
        if let Some(d) = &dest {
            if let Err(r) = self.breakers.check(d) {
                return Some(refused(d, r));
            }
        }
        if let Some(limiter) = &self.limiter {
            let wait = limiter.reserve(dest.as_deref());
            if !wait.is_zero() {
                m.rate_limited.with_label_values(&[self.name]).inc();
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = abandon.cancelled() => return None,
                }
            }
        }
        let _permit = tokio::select! {
            p = self.permits.acquire() => p.expect("pool semaphores are never closed"),
            _ = abandon.cancelled() => return None,
        };
        // The breaker may have opened while this attempt waited; this also picks the
        // half-open probe.
        if let Some(d) = &dest {
            if let Err(r) = self.breakers.admit(d) {
                return Some(refused(d, r));
            }
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(self.timeout, backend.attempt(req)) => r,
            _ = abandon.cancelled() => return None,
        };
        m.dispatch_seconds
            .with_label_values(&[self.name])
            .observe(started.elapsed().as_secs_f64());
        let report = self.reclassify(result.unwrap_or_else(|_| {
            let mut r = Report::new(
                Outcome::Retryable,
                format!("{} attempt timed out after {:?}", self.name, self.timeout),
            );
            r.error_class = Some("timeout");
            r
        }));
        if let Some(d) = &dest {
            match report.outcome {
                // 429 asks us to slow down; Retry-After handles it, the host is healthy.
                Outcome::Retryable => self.breakers.record(d, report.http_status != Some(429)),
                Outcome::CredentialsRejected => {}
                _ => self.breakers.record(d, false),
            }
        }
        Some(report)
    }

    /// Apply this backend's status classes to an HTTP failure.
    fn reclassify(&self, mut report: Report) -> Report {
        if let Some(code) = report.http_status {
            if report.outcome.is_failure() && !matches!(code, 401 | 403) {
                report.outcome = if self.retry.retries(code) {
                    Outcome::Retryable
                } else {
                    Outcome::Permanent
                };
            }
        }
        report
    }

    /// The wait before retry number `attempt` (1-based): the server's `Retry-After`
    /// when it gave one, else full jitter below `initial × 2^(attempt-1)`; both capped.
    fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.retry.max_backoff;
        if let Some(wait) = retry_after {
            return wait.min(cap);
        }
        let ceiling = self
            .retry
            .initial_backoff
            .saturating_mul(2u32.saturating_pow(attempt - 1))
            .min(cap);
        ceiling.mul_f64(rand::rng().random::<f64>())
    }

    pub fn name(&self) -> &'static str {
        self.name
    }
}

/// The head of a failure summary ("HTTP 503 Service Unavailable" of
/// "HTTP 503 Service Unavailable: <body>"), for one-line notices.
fn cause(summary: &str) -> &str {
    summary.split(": ").next().unwrap_or(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(retry_statuses: &[&str]) -> Pool {
        let mut cfg = PoolConfig::default();
        cfg.retry.retry_statuses = retry_statuses.iter().map(|s| s.to_string()).collect();
        cfg.retry.initial_backoff = Duration::from_millis(100);
        cfg.retry.max_backoff = Duration::from_secs(1);
        Pool::new("TEST", &cfg)
    }

    fn http_failure(code: u16) -> Report {
        let mut r = Report::new(Outcome::Permanent, format!("HTTP {code}"));
        r.http_status = Some(code);
        r
    }

    #[test]
    fn status_classes_come_from_config() {
        let p = pool(&["409", "5xx"]);
        assert_eq!(p.reclassify(http_failure(409)).outcome, Outcome::Retryable);
        assert_eq!(p.reclassify(http_failure(502)).outcome, Outcome::Retryable);
        assert_eq!(p.reclassify(http_failure(429)).outcome, Outcome::Permanent);
        let mut auth = http_failure(401);
        auth.outcome = Outcome::CredentialsRejected;
        assert_eq!(p.reclassify(auth).outcome, Outcome::CredentialsRejected);
    }

    #[test]
    fn backoff_is_jittered_below_a_doubling_capped_ceiling() {
        let p = pool(&["5xx"]);
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
}
