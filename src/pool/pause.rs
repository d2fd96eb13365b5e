//! The pause layer: credential pauses per destination.
//!
//! A 401/403 pauses the destination for `retry.credentials_pause`; its runs wait and then
//! probe again, and a run gives up after `retry.credentials_max_wait` in all.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::breaker::MAX_TRACKED;
use crate::backends::Report;
use crate::telemetry::metrics;

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

    /// Wait out the pause of `dest`, or until `limit`; `None` when `abandon` fires
    /// first.
    pub async fn wait(
        &self,
        dest: &str,
        limit: Option<Instant>,
        abandon: &CancellationToken,
    ) -> Option<()> {
        while let Some(until) = self.deadline(dest) {
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

    /// Pause `dest` after a run's attempt was rejected (`summary`); the run has been
    /// rejected since `since` and waits at most `cap` in all. Returns the run's notice.
    pub fn pause_run(
        &self,
        dest: &str,
        shown: &str,
        summary: &str,
        since: Instant,
        cap: Duration,
    ) -> String {
        let until = self.pause(dest, summary);
        let wait = until
            .saturating_duration_since(Instant::now())
            .min(cap.saturating_sub(since.elapsed()));
        format!(
            "{shown} paused: credentials rejected ({}); retrying in {:.0} s",
            super::cause(summary),
            wait.as_secs_f64()
        )
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

/// The run's last rejection, as its final report once it waited `cap` in all.
pub fn gave_up(mut last: Report, since: Instant, cap: Duration) -> Report {
    metrics::get()
        .refusals
        .with_label_values(&["credentials_wait"])
        .inc();
    last.summary = format!(
        "{} (credentials still rejected after {:.0} s; retry.credentials_max_wait is {cap:?})",
        last.summary,
        since.elapsed().as_secs_f64()
    );
    last
}

#[cfg(test)]
mod tests {
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
