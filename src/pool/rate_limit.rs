//! Token-bucket rate limit per backend, optionally per destination.
//!
//! Tokens refill at `per_second` up to `burst`; an attempt takes one token or waits for
//! it. Waits are reserved in arrival order, so bursts queue instead of stampeding.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::breaker::MAX_TRACKED;
use tokio_util::sync::CancellationToken;

use crate::config::RateLimitConfig;
use crate::telemetry::metrics;

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

    /// Take a token for an attempt of `backend` to `host` and wait until it may go;
    /// `None` when `abandon` fires first.
    pub async fn wait(
        &self,
        backend: &str,
        host: Option<&str>,
        abandon: &CancellationToken,
    ) -> Option<()> {
        let wait = self.reserve(host);
        if !wait.is_zero() {
            metrics::get()
                .rate_limited
                .with_label_values(&[backend])
                .inc();
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = abandon.cancelled() => return None,
            }
        }
        Some(())
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
