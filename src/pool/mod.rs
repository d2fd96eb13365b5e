//! Per-backend worker pool: the reliability layers around one backend attempt.
//!
//! A backend performs one attempt; the pool decides what happens around it. The layers,
//! one file each, are composed in order in [`Pool::run`] (one `async fn`, so one state
//! machine):
//!
//! 1. [`pause`]: a destination that rejected credentials (401/403) holds its runs, at
//!    most `retry.credentials_max_wait` in all;
//! 2. [`breaker`]: an open circuit refuses the attempt without a request (a retryable
//!    failure that waits for the next probe);
//! 3. [`rate_limit`]: the token bucket delays the attempt;
//! 4. the concurrency permit (held only while an attempt runs, never while waiting) and
//!    the attempt timeout;
//! 5. [`retry`]: reclassification by `retry_statuses`, then backoff or `Retry-After`.
//!
//! What a run waits for is announced through [`Notices`] ("attempt 2/5 after HTTP 503,
//! waiting 1.8 s"): the run's writer publishes them, tests collect them. Every wait uses
//! tokio's clock, so the layers are tested with paused time (`tests.rs`).

pub mod breaker;
pub mod pause;
pub mod rate_limit;
pub mod retry;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backends::{Backend, Outcome, Registry, Report, Request};
use crate::config::PoolConfig;
use crate::kafka::publisher::Stopped;
use crate::model::{LogLevel, RunUpdate};
use crate::telemetry::{metrics, scopeguard};
use breaker::Breakers;
use pause::CredentialPauses;
use rate_limit::RateLimiter;
use retry::Retry;

/// Where the pool tells a run what it waits for (a retry, a credential pause).
/// [`crate::status::writer::RunWriter`] publishes the notices as log updates.
pub trait Notices: Send {
    /// Publish `u`; `Err` when switchyard is stopping (the run is then redelivered).
    fn notice(&mut self, u: RunUpdate) -> NoticeFuture<'_>;
}

pub type NoticeFuture<'a> = Pin<Box<dyn Future<Output = Result<(), Stopped>> + Send + 'a>>;

/// Notices kept in memory (tests, and callers that publish nothing).
impl Notices for Vec<RunUpdate> {
    fn notice(&mut self, u: RunUpdate) -> NoticeFuture<'_> {
        self.push(u);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// A backend with its worker pool.
pub struct Pooled {
    pub backend: Arc<dyn Backend>,
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
    retry: Retry,
    /// The longest a run waits on credential pauses, in all.
    credentials_max_wait: Duration,
    /// `retry.credentials_pause` is 0: a 401/403 ends the run (FAILURE), as the agent.
    credentials_fail: bool,
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
            retry: Retry::new(&cfg.retry),
            credentials_max_wait: cfg.retry.credentials_max_wait,
            credentials_fail: cfg.retry.credentials_pause.is_zero(),
            pauses: CredentialPauses::new(name, cfg.retry.credentials_pause),
            breakers: Breakers::new(name, &cfg.breaker),
            limiter: RateLimiter::new(&cfg.rate_limit),
        }
    }

    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Destinations paused after a credential failure.
    pub fn paused(&self) -> usize {
        self.pauses.paused()
    }

    /// Attempt `req` until it settles or the attempts run out, announcing waits through
    /// `notices`. `None` when `abandon` fires first, or when a notice cannot be published
    /// because switchyard is stopping (the run is redelivered).
    pub async fn run(
        &self,
        backend: &dyn Backend,
        req: &Request,
        abandon: &CancellationToken,
        notices: &mut dyn Notices,
    ) -> Option<Attempted> {
        let start = Instant::now();
        let in_flight = metrics::get().in_flight.with_label_values(&[self.name]);
        in_flight.inc();
        let _done = scopeguard(move || in_flight.dec());
        // A credential pause holds this destination only (a backend with no per-run
        // destination pauses as a whole).
        let dest = backend.destination(req);
        let key = dest.clone().unwrap_or_default();
        let cap = self.credentials_max_wait;
        let settled = |report, attempt| {
            Some(Attempted {
                report,
                attempt,
                duration: start.elapsed(),
            })
        };
        let mut attempt = 1;
        // Since when, and with what, the destination has been rejecting credentials.
        let mut rejected: Option<(Instant, Report)> = None;
        loop {
            // 1. Credential pause.
            let limit = rejected.as_ref().map(|(since, _)| *since + cap);
            self.pauses.wait(&key, limit, abandon).await?;
            if let Some((since, last)) = rejected.take_if(|(since, _)| since.elapsed() >= cap) {
                return settled(pause::gave_up(last, since, cap), attempt);
            }
            // 2–4. Breaker, rate limit, permit and timeout: one attempt.
            let report = self.attempt(backend, req, dest.as_deref(), abandon).await?;
            if report.outcome == Outcome::CredentialsRejected && self.credentials_fail {
                return settled(report, attempt);
            }
            if report.outcome == Outcome::CredentialsRejected {
                // Do not burn the event: the destination pauses and this run waits to
                // probe again.
                let since = rejected.as_ref().map_or_else(Instant::now, |(s, _)| *s);
                let shown = dest.as_deref().unwrap_or(self.name);
                let notice = self
                    .pauses
                    .pause_run(&key, shown, &report.summary, since, cap);
                let u = RunUpdate::log(&req.run_id, LogLevel::Error, notice);
                notices.notice(u).await.ok()?;
                rejected = Some((since, report));
                continue;
            }
            self.pauses.resume(&key);
            // 5. Retry.
            let Some(wait) = self.retry.after(attempt, &report) else {
                return settled(report, attempt);
            };
            let notice = format!(
                "attempt {}/{} after {}, waiting {:.1} s",
                attempt + 1,
                self.retry.max_attempts(),
                cause(&report.summary),
                wait.as_secs_f64()
            );
            tracing::warn!(run_id = %req.run_id, backend = self.name, "{notice}");
            metrics::get().retries.with_label_values(&[self.name]).inc();
            let u = RunUpdate::log(&req.run_id, LogLevel::Warn, notice);
            notices.notice(u).await.ok()?;
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = abandon.cancelled() => return None,
            }
            attempt += 1;
        }
    }

    /// One attempt: past the destination's breaker and the rate limit, under a
    /// concurrency permit and the timeout; classified with this backend's status classes.
    async fn attempt(
        &self,
        backend: &dyn Backend,
        req: &Request,
        dest: Option<&str>,
        abandon: &CancellationToken,
    ) -> Option<Report> {
        // Turn the attempt away early when the breaker is open, rather than after it
        // queued for a token and a permit.
        if let Some(d) = dest {
            if let Err(r) = self.breakers.check(d) {
                return Some(self.breakers.refusal(d, r));
            }
        }
        if let Some(limiter) = &self.limiter {
            limiter.wait(self.name, dest, abandon).await?;
        }
        let _permit = tokio::select! {
            p = self.permits.acquire() => p.expect("pool semaphores are never closed"),
            _ = abandon.cancelled() => return None,
        };
        // The breaker may have opened while this attempt waited; this also picks the
        // half-open probe.
        if let Some(d) = dest {
            if let Err(r) = self.breakers.admit(d) {
                return Some(self.breakers.refusal(d, r));
            }
        }
        let started = Instant::now();
        let result = tokio::select! {
            r = tokio::time::timeout(self.timeout, backend.attempt(req)) => r,
            _ = abandon.cancelled() => return None,
        };
        metrics::get()
            .dispatch_seconds
            .with_label_values(&[self.name])
            .observe(started.elapsed().as_secs_f64());
        let report = self.retry.reclassify(result.unwrap_or_else(|_| {
            let mut r = Report::new(
                Outcome::Retryable,
                format!("{} attempt timed out after {:?}", self.name, self.timeout),
            );
            r.error_class = Some("timeout");
            r
        }));
        if let Some(d) = dest {
            self.breakers.record_outcome(d, &report);
        }
        Some(report)
    }
}

/// The head of a failure summary ("HTTP 503 Service Unavailable" of
/// "HTTP 503 Service Unavailable: <body>"), for one-line notices.
pub(crate) fn cause(summary: &str) -> &str {
    summary.split(": ").next().unwrap_or(summary)
}
