//! Circuit breaker per destination (`host:port`).
//!
//! `failures` consecutive transient failures (timeouts, connection errors, 5xx; not 429,
//! which has its own `Retry-After`) open it for `open_for`. Attempts meanwhile are
//! refused without a request and count as a retryable attempt of their run. After
//! `open_for` one probe attempt is let through (half-open): success closes the breaker,
//! failure opens it again. Only destinations with recent failures are remembered.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that tests can pause and advance it (outside a runtime it is the
// system's monotonic clock).
use tokio::time::Instant;

use crate::backends::{Outcome, Report};
use crate::config::BreakerConfig;
use crate::telemetry::metrics;

/// Most destinations tracked by one breaker map or one per-host limiter before idle
/// entries are dropped.
pub(super) const MAX_TRACKED: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { probe_started: Instant },
}

/// Why an attempt was refused.
#[derive(Debug, Clone, PartialEq)]
pub struct Refused {
    /// Until the next probe may go.
    pub wait: Duration,
    pub failures: u32,
}

pub struct Breakers {
    backend: &'static str,
    cfg: BreakerConfig,
    /// Destinations with consecutive failures: their state and that count.
    hosts: Mutex<HashMap<String, (State, u32)>>,
}

impl Breakers {
    pub fn new(backend: &'static str, cfg: &BreakerConfig) -> Self {
        Breakers {
            backend,
            cfg: cfg.clone(),
            hosts: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (State, u32)>> {
        self.hosts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Would an attempt to `host` be refused now? Changes nothing; lets the pool turn
    /// an attempt away before it queues for a permit.
    pub fn check(&self, host: &str) -> Result<(), Refused> {
        let hosts = self.lock();
        match hosts.get(host) {
            Some((State::Open { until }, failures)) if self.cfg.enabled => {
                let wait = until.saturating_duration_since(Instant::now());
                if wait.is_zero() {
                    Ok(())
                } else {
                    Err(Refused {
                        wait,
                        failures: *failures,
                    })
                }
            }
            _ => Ok(()),
        }
    }

    /// May an attempt to `host` go now? Refused while open, and while a half-open
    /// probe is out. Admitting the first attempt after `open_for` makes it the probe.
    pub fn admit(&self, host: &str) -> Result<(), Refused> {
        if !self.cfg.enabled {
            return Ok(());
        }
        let now = Instant::now();
        let mut hosts = self.lock();
        let Some((state, failures)) = hosts.get_mut(host) else {
            return Ok(());
        };
        match *state {
            State::Closed => Ok(()),
            State::Open { until } if now < until => Err(Refused {
                wait: until - now,
                failures: *failures,
            }),
            State::Open { .. } => {
                *state = State::HalfOpen { probe_started: now };
                self.transition(host, "half_open");
                Ok(())
            }
            // A probe that never reported (abandoned at shutdown) is replaced after
            // another `open_for`.
            State::HalfOpen { probe_started } if now >= probe_started + self.cfg.open_for => {
                *state = State::HalfOpen { probe_started: now };
                Ok(())
            }
            State::HalfOpen { probe_started } => Err(Refused {
                wait: (probe_started + self.cfg.open_for - now).min(Duration::from_secs(1)),
                failures: *failures,
            }),
        }
    }

    /// The report of an attempt the breaker refused: a retryable failure that waits
    /// for the next probe.
    pub fn refusal(&self, host: &str, r: Refused) -> Report {
        metrics::get()
            .breaker_rejections
            .with_label_values(&[self.backend])
            .inc();
        let mut rep = Report::new(
            Outcome::Retryable,
            format!(
                "circuit open for {host} after {} consecutive failures",
                r.failures
            ),
        );
        rep.error_class = Some("circuit_open");
        rep.retry_after = Some(r.wait);
        rep
    }

    /// Record an admitted attempt's classified report. A 429 asks us to slow down
    /// (Retry-After handles it; the host is healthy), and a credential rejection says
    /// nothing about the host's health.
    pub fn record_outcome(&self, host: &str, report: &Report) {
        match report.outcome {
            Outcome::Retryable => self.record(host, report.http_status != Some(429)),
            Outcome::CredentialsRejected => {}
            _ => self.record(host, false),
        }
    }

    /// Record the result of an admitted attempt to `host`: `failed` for transient
    /// failures only.
    pub fn record(&self, host: &str, failed: bool) {
        if !self.cfg.enabled {
            return;
        }
        let mut hosts = self.lock();
        if !failed {
            if let Some((state, _)) = hosts.remove(host) {
                if !matches!(state, State::Closed) {
                    self.transition(host, "closed");
                    self.export(&hosts);
                }
            }
            return;
        }
        if hosts.len() >= MAX_TRACKED && !hosts.contains_key(host) {
            hosts.retain(|_, (s, _)| !matches!(s, State::Closed));
            if hosts.len() >= MAX_TRACKED {
                // Bounded: past the cap, a new destination is not tracked (its failures
                // still fail and retry; only the breaker does not open for it).
                return;
            }
        }
        let open_until = Instant::now() + self.cfg.open_for;
        let (state, failures) = hosts.entry(host.to_owned()).or_insert((State::Closed, 0));
        *failures += 1;
        match *state {
            State::Closed if *failures >= self.cfg.failures => {
                *state = State::Open { until: open_until };
                tracing::error!(
                    backend = self.backend,
                    destination = host,
                    failures = *failures,
                    open_s = self.cfg.open_for.as_secs_f64(),
                    "circuit breaker opened: attempts to this destination are held back"
                );
                self.transition(host, "open");
            }
            State::Closed => {}
            State::HalfOpen { .. } => {
                *state = State::Open { until: open_until };
                tracing::warn!(
                    backend = self.backend,
                    destination = host,
                    "circuit breaker probe failed; open again"
                );
                self.transition(host, "open");
            }
            State::Open { .. } => {} // an attempt admitted before it opened
        }
        self.export(&hosts);
    }

    fn transition(&self, host: &str, to: &'static str) {
        if to == "closed" {
            tracing::info!(
                backend = self.backend,
                destination = host,
                "circuit breaker closed"
            );
        }
        metrics::get()
            .breaker_transitions
            .with_label_values(&[self.backend, to])
            .inc();
    }

    fn export(&self, hosts: &HashMap<String, (State, u32)>) {
        let open = hosts
            .values()
            .filter(|(s, _)| !matches!(s, State::Closed))
            .count();
        metrics::get()
            .breakers_open
            .with_label_values(&[self.backend])
            .set(open as i64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breakers(failures: u32, open_for: Duration) -> Breakers {
        Breakers::new(
            "TEST",
            &BreakerConfig {
                enabled: true,
                failures,
                open_for,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = breakers(3, Duration::from_secs(60));
        b.record("h:1", true);
        b.record("h:1", true);
        b.record("h:1", false);
        b.record("h:1", true);
        b.record("h:1", true);
        assert!(b.admit("h:1").is_ok(), "the success reset the count");
        b.record("h:1", true);
        let refused = b.admit("h:1").unwrap_err();
        assert_eq!(refused.wait, Duration::from_secs(60));
        assert_eq!(refused.failures, 3);
        assert!(b.admit("other:1").is_ok(), "per destination");
        tokio::time::advance(Duration::from_secs(59)).await;
        assert_eq!(b.check("h:1").unwrap_err().wait, Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through_and_its_result_decides() {
        let b = breakers(1, Duration::from_millis(30));
        b.record("h:1", true);
        assert!(b.admit("h:1").is_err());
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(b.admit("h:1").is_err(), "still open 1 ms before open_for");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admit("h:1").is_ok(), "the probe");
        assert!(b.admit("h:1").is_err(), "only one probe at a time");
        b.record("h:1", true);
        assert!(b.admit("h:1").is_err(), "probe failed: open again");
        tokio::time::advance(Duration::from_millis(30)).await;
        assert!(b.admit("h:1").is_ok());
        b.record("h:1", false);
        assert!(b.admit("h:1").is_ok(), "probe succeeded: closed");
        assert!(b.admit("h:1").is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_unreported_probe_is_replaced_after_open_for() {
        let b = breakers(1, Duration::from_millis(30));
        b.record("h:1", true);
        tokio::time::advance(Duration::from_millis(30)).await;
        assert!(b.admit("h:1").is_ok(), "the probe, which never reports");
        tokio::time::advance(Duration::from_millis(29)).await;
        assert!(b.admit("h:1").is_err());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(b.admit("h:1").is_ok(), "a new probe");
    }
}
