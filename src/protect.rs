//! Per-destination protection for a backend pool: a circuit breaker per destination
//! (`host:port`) and a token-bucket rate limit per backend, optionally per destination.
//!
//! Breaker: `failures` consecutive transient failures (timeouts, connection errors, 5xx;
//! not 429, which has its own `Retry-After`) open it for `open_for`. Attempts meanwhile
//! are refused without a request and count as a retryable attempt of their run. After
//! `open_for` one probe attempt is let through (half-open): success closes the breaker,
//! failure opens it again. Only destinations with recent failures are remembered.
//!
//! Rate limit: tokens refill at `per_second` up to `burst`; an attempt takes one token or
//! waits for it. Waits are reserved in arrival order, so bursts queue instead of
//! stampeding.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

// tokio's clock, so that tests can pause and advance it (outside a runtime it is the
// system's monotonic clock).
use tokio::time::Instant;

use crate::config::{BreakerConfig, RateLimitConfig};
use crate::metrics;

/// Most destinations tracked by one breaker map or one per-host limiter before idle
/// entries are dropped.
const MAX_TRACKED: usize = 4096;

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

struct Bucket {
    tokens: f64,
    at: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    per_host: bool,
    buckets: Mutex<HashMap<String, Bucket>>,
}

impl RateLimiter {
    /// `None` when the configuration sets no limit.
    pub fn new(cfg: &RateLimitConfig) -> Option<Self> {
        (cfg.per_second > 0.0).then(|| RateLimiter {
            rate: cfg.per_second,
            burst: cfg.burst.map_or(cfg.per_second.max(1.0), f64::from),
            per_host: cfg.per_host,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Take a token for an attempt to `host`; returns how long the caller must wait
    /// before sending (zero when a token was available).
    pub fn reserve(&self, host: Option<&str>) -> Duration {
        let key = if self.per_host {
            host.unwrap_or_default()
        } else {
            ""
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_TRACKED && !buckets.contains_key(key) {
            // Drop buckets that have refilled: forgetting them changes nothing.
            let (rate, burst) = (self.rate, self.burst);
            buckets.retain(|_, b| b.tokens + now.duration_since(b.at).as_secs_f64() * rate < burst);
        }
        let b = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            at: now,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        b.tokens -= 1.0;
        if b.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-b.tokens / self.rate)
        }
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

    #[tokio::test(start_paused = true)]
    async fn token_bucket_allows_the_burst_then_spaces_requests_at_the_rate() {
        let l = RateLimiter::new(&RateLimitConfig {
            per_second: 10.0,
            burst: Some(3),
            per_host: true,
        })
        .unwrap();
        for _ in 0..3 {
            assert_eq!(l.reserve(Some("a")), Duration::ZERO);
        }
        assert_eq!(l.reserve(Some("a")), Duration::from_millis(100));
        assert_eq!(l.reserve(Some("a")), Duration::from_millis(200));
        assert_eq!(l.reserve(Some("b")), Duration::ZERO, "per host");
        // Refill: 300 ms pays back the two borrowed tokens and earns one.
        tokio::time::advance(Duration::from_millis(300)).await;
        assert_eq!(l.reserve(Some("a")), Duration::ZERO);
        assert_eq!(l.reserve(Some("a")), Duration::from_millis(100));
        assert!(RateLimiter::new(&RateLimitConfig::default()).is_none());
    }
}

/// Credential pauses per destination: a 401/403 from one destination holds back that
/// destination's runs only, never the whole backend (events choose webhook URLs, so one
/// event must not stop everyone's runs). Bounded: at most [`MAX_TRACKED`] destinations,
/// expired pauses dropped first.
pub struct CredentialPauses {
    backend: &'static str,
    pause: Duration,
    until: Mutex<HashMap<String, Instant>>,
}

impl CredentialPauses {
    pub fn new(backend: &'static str, pause: Duration) -> Self {
        CredentialPauses {
            backend,
            pause,
            until: Mutex::new(HashMap::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.until.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// When the pause of `dest` ends, if it is paused now.
    pub fn deadline(&self, dest: &str) -> Option<Instant> {
        self.lock()
            .get(dest)
            .copied()
            .filter(|t| *t > Instant::now())
    }

    /// Destinations paused now.
    pub fn paused(&self) -> usize {
        let now = Instant::now();
        self.lock().values().filter(|t| **t > now).count()
    }

    /// Pause `dest` (extending a pause, never shortening it); returns its end.
    pub fn pause(&self, dest: &str, why: &str) -> Instant {
        let now = Instant::now();
        let until = now + self.pause;
        let mut map = self.lock();
        if map.len() >= MAX_TRACKED && !map.contains_key(dest) {
            map.retain(|_, t| *t > now);
            if map.len() >= MAX_TRACKED {
                return until; // not tracked: the run still waits out its own pause
            }
        }
        let entry = map.entry(dest.to_owned()).or_insert(now);
        if *entry < until {
            if *entry <= now {
                tracing::error!(
                    backend = self.backend,
                    destination = dest,
                    pause_s = self.pause.as_secs_f64(),
                    reason = why,
                    "credentials rejected; destination paused, its runs wait"
                );
            }
            *entry = until;
        }
        let until = *entry;
        self.export(&map);
        until
    }

    /// `dest` accepted the credentials: its pause ends.
    pub fn resume(&self, dest: &str) {
        let mut map = self.lock();
        if map.remove(dest).is_some() {
            tracing::info!(
                backend = self.backend,
                destination = dest,
                "credentials accepted again; destination resumed"
            );
            self.export(&map);
        }
    }

    fn export(&self, map: &HashMap<String, Instant>) {
        let now = Instant::now();
        metrics::get()
            .backend_paused
            .with_label_values(&[self.backend])
            .set(map.values().filter(|t| **t > now).count() as i64);
    }
}

#[cfg(test)]
mod pause_tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_pause_holds_one_destination_and_ends_on_success() {
        let p = CredentialPauses::new("WEBHOOK", Duration::from_secs(60));
        let until = p.pause("a:443", "HTTP 401");
        assert!(p.deadline("a:443").is_some());
        assert!(
            p.deadline("b:443").is_none(),
            "another destination is not paused"
        );
        assert_eq!(p.paused(), 1);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(p.pause("a:443", "again"), until + Duration::from_secs(30));
        p.resume("a:443");
        assert!(p.deadline("a:443").is_none());
        p.pause("c:443", "x");
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(p.deadline("c:443").is_none(), "pauses end by themselves");
        assert_eq!(p.paused(), 0);
    }
}
