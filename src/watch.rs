//! Following asynchronous runs (a GitLab pipeline, a GitHub workflow) to completion.
//!
//! A backend that started remote work returns `follow` state in its report; the pipeline
//! then completes the event's offset and hands the run to the [`Watcher`]. A watch holds
//! no dispatch slot: it sleeps between polls, takes one of `max_concurrent_polls` permits
//! only while a poll is in flight, and obeys the provider's rate-limit hints.
//!
//! Each poll reports [`Progress`]: a label change is published as `statusLabel`; a finish
//! is published as the terminal status. Watches are bounded in number (`max_watches`)
//! and in time (`max_duration`, after which the run fails with "gave up").

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::backends::Backend;
use crate::config::WatchConfig;
use crate::kafka::publisher::RunWriter;
use crate::model::{RunStatus, RunUpdate};

/// What one poll of a followed run found.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// Still running; `label` is the provider's state ("pending", "running"); `wait`, when
    /// set, is how long the provider asks us to wait before the next poll.
    Running {
        label: String,
        wait: Option<Duration>,
    },
    /// Done.
    Finished { status: RunStatus, summary: String },
    /// The provider asked us to wait (rate limit); poll again after this long.
    Wait(Duration),
    /// The poll failed (network, 5xx); retried with backoff.
    Failed(String),
}

/// A run being followed.
pub struct Watch {
    pub writer: RunWriter,
    /// Backend-specific state (e.g. project and pipeline id).
    pub state: Value,
    pub label: Option<String>,
}

pub struct Watcher {
    backends: BTreeMap<&'static str, Arc<dyn Backend>>,
    permits: Semaphore,
    active: AtomicUsize,
    cfg: WatchConfig,
    stop: CancellationToken,
}

impl Watcher {
    pub fn new(
        backends: BTreeMap<&'static str, Arc<dyn Backend>>,
        cfg: &WatchConfig,
        stop: CancellationToken,
    ) -> Arc<Self> {
        Arc::new(Watcher {
            backends,
            permits: Semaphore::new(cfg.max_concurrent_polls),
            active: AtomicUsize::new(0),
            cfg: cfg.clone(),
            stop,
        })
    }

    /// Number of runs being followed.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::SeqCst)
    }

    /// Start following `watch`. Returns false (and follows nothing) when `max_watches`
    /// runs are already followed; the caller reports that on the run.
    pub fn follow(self: &Arc<Self>, watch: Watch) -> bool {
        let backend = watch
            .writer
            .backend
            .and_then(|b| self.backends.get(b))
            .cloned();
        let Some(backend) = backend else {
            return false;
        };
        if self.active.fetch_add(1, Ordering::SeqCst) >= self.cfg.max_watches {
            self.active.fetch_sub(1, Ordering::SeqCst);
            return false;
        }
        let this = self.clone();
        tokio::spawn(async move {
            this.run(backend, watch).await;
            this.active.fetch_sub(1, Ordering::SeqCst);
        });
        true
    }

    async fn run(&self, backend: Arc<dyn Backend>, mut watch: Watch) {
        let started = Instant::now();
        let mut delay = self.cfg.poll_interval;
        let mut failures = 0u32;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = self.stop.cancelled() => return,
            }
            if started.elapsed() > self.cfg.max_duration {
                let summary = format!(
                    "gave up following after {:?}; the run may still finish remotely",
                    self.cfg.max_duration
                );
                let _ = self.finish(&mut watch, RunStatus::Failure, summary).await;
                return;
            }
            let progress = {
                let _permit = tokio::select! {
                    p = self.permits.acquire() => p.expect("the watch semaphore is never closed"),
                    _ = self.stop.cancelled() => return,
                };
                tokio::select! {
                    p = backend.follow(&watch.state) => p,
                    _ = self.stop.cancelled() => return,
                }
            };
            delay = self.cfg.poll_interval;
            match progress {
                Progress::Running { label, wait } => {
                    failures = 0;
                    if let Some(w) = wait {
                        delay = w.max(self.cfg.poll_interval);
                    }
                    if watch.label.as_deref() != Some(label.as_str()) {
                        let mut u = RunUpdate::status(&watch.writer.run_id, RunStatus::InProgress);
                        u.status_label = Some(label.clone());
                        if watch.writer.emit(u).await.is_err() {
                            return;
                        }
                        watch.label = Some(label);
                    }
                }
                Progress::Finished { status, summary } => {
                    let _ = self.finish(&mut watch, status, summary).await;
                    return;
                }
                Progress::Wait(d) => {
                    tracing::info!(run_id = %watch.writer.run_id, wait_ms = d.as_millis() as u64,
                        "provider rate limit; waiting before the next poll");
                    delay = d.min(self.cfg.max_duration);
                }
                Progress::Failed(why) => {
                    failures += 1;
                    delay = (self.cfg.poll_interval * 2u32.saturating_pow(failures.min(6)))
                        .min(Duration::from_secs(300));
                    tracing::warn!(run_id = %watch.writer.run_id, error = %why, failures,
                        retry_ms = delay.as_millis() as u64, "poll failed");
                }
            }
        }
    }

    async fn finish(
        &self,
        watch: &mut Watch,
        status: RunStatus,
        summary: String,
    ) -> Result<(), crate::kafka::publisher::Stopped> {
        tracing::info!(run_id = %watch.writer.run_id, status = status.as_str(), summary = %summary,
            "followed run finished");
        let mut u = RunUpdate::status(&watch.writer.run_id, status).with_summary(summary);
        u.status_label = watch.label.clone();
        watch.writer.emit(u).await
    }
}
