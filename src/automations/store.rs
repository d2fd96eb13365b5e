//! The loaded definitions and their sources: a directory (checked every
//! `automations.reload_interval`) and a compacted topic (followed). A change takes effect
//! for the next change evaluated; no restart. A definition that does not load is logged
//! with its file (or topic key) and field, and the previous set stays in force.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rdkafka::message::Message;
use tokio_util::sync::CancellationToken;

use super::definition::{self, Automation, Automations};
use crate::config::KafkaConfig;

/// The definitions in force, shared by the engine's thread and the sources.
#[derive(Default)]
pub struct Definitions {
    current: RwLock<Arc<Automations>>,
    dir: RwLock<Vec<Automation>>,
    topic: RwLock<BTreeMap<String, Automation>>,
}

impl Definitions {
    /// A fixed set (tests, `automations test`).
    pub fn fixed(list: Vec<Automation>) -> Arc<Definitions> {
        let d = Arc::new(Definitions::default());
        *d.dir.write().unwrap_or_else(|p| p.into_inner()) = list;
        d.rebuild();
        d
    }

    pub fn get(&self) -> Arc<Automations> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn rebuild(&self) {
        let dir = self.dir.read().unwrap_or_else(|p| p.into_inner()).clone();
        let mut all: BTreeMap<String, Automation> =
            self.topic.read().unwrap_or_else(|p| p.into_inner()).clone();
        for a in dir {
            if all.contains_key(&a.identifier) {
                tracing::error!(automation = %a.identifier,
                    "defined in automations.dir and on automations.topic; the directory's definition is used");
            }
            all.insert(a.identifier.clone(), a);
        }
        let set = Automations::from_list(all.into_values().collect());
        crate::telemetry::metrics::get()
            .automations_loaded
            .set(set.len() as i64);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
    }

    /// Load `dir` now (at start: an error stops the start) and check it for changes
    /// every `every` until `stop`.
    pub fn watch_dir(
        self: &Arc<Self>,
        dir: PathBuf,
        every: Duration,
        stop: CancellationToken,
    ) -> Result<(), Vec<String>> {
        let list = definition::load_dir(&dir)?;
        tracing::info!(dir = %dir.display(), automations = list.len(), "automations loaded");
        *self.dir.write().unwrap_or_else(|p| p.into_inner()) = list;
        self.rebuild();
        let me = self.clone();
        let mut seen = fingerprint(&dir);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = stop.cancelled() => return,
                }
                let now = fingerprint(&dir);
                if now == seen {
                    continue;
                }
                seen = now;
                match definition::load_dir(&dir) {
                    Ok(list) => {
                        tracing::info!(dir = %dir.display(), automations = list.len(), "automations reloaded");
                        *me.dir.write().unwrap_or_else(|p| p.into_inner()) = list;
                        me.rebuild();
                    }
                    Err(problems) => {
                        for p in &problems {
                            tracing::error!(problem = %p, "automation definition not loaded");
                        }
                        tracing::error!(dir = %dir.display(), problems = problems.len(),
                            "automations not reloaded; the previous definitions stay in force");
                    }
                }
            }
        });
        Ok(())
    }

    /// Follow the compacted definitions topic: key = identifier, a tombstone deletes.
    /// Returns once the records written before the call are loaded.
    pub async fn follow_topic(
        self: &Arc<Self>,
        kafka: &KafkaConfig,
        topic: &str,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut tail =
            crate::kafka::tail::TopicTail::open(kafka, topic, "automations", &[]).await?;
        let me = self.clone();
        let topic = topic.to_owned();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                if tail.caught_up() {
                    if let Some(r) = ready.take() {
                        let _ = r.send(());
                    }
                }
                let idle = Duration::from_millis(if ready.is_some() { 500 } else { 3_600_000 });
                let m = tokio::select! {
                    m = tail.next(idle) => m,
                    _ = stop.cancelled() => return,
                };
                let (key, value) = match m {
                    Ok(Some(m)) => (
                        m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        m.payload().map(<[u8]>::to_vec),
                    ),
                    // Idle while loading: the watermark may count transaction markers.
                    Ok(None) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "reading the automations topic failed");
                        continue;
                    }
                };
                let Some(key) = key else {
                    tracing::error!(topic = %topic, "an automation record without a key is ignored (key = identifier)");
                    continue;
                };
                me.apply_record(&topic, &key, value.as_deref());
            }
        });
        let _ = tokio::time::timeout(Duration::from_secs(30), ready_rx).await;
        Ok(())
    }

    fn apply_record(&self, topic: &str, key: &str, value: Option<&[u8]>) {
        let mut map = self.topic.write().unwrap_or_else(|p| p.into_inner());
        let Some(bytes) = value else {
            if map.remove(key).is_some() {
                tracing::info!(automation = %key, "automation deleted (tombstone)");
            }
            drop(map);
            self.rebuild();
            return;
        };
        let parsed = serde_json::from_slice(bytes)
            .map_err(|e| vec![format!("not JSON: {e}")])
            .and_then(|v| definition::parse(&v));
        match parsed {
            Ok(a) if a.identifier == key => {
                tracing::info!(automation = %key, "automation loaded from the topic");
                map.insert(key.to_owned(), a);
            }
            Ok(a) => tracing::error!(topic = %topic, key = %key, identifier = %a.identifier,
                "automation not loaded: the record key must be its identifier"),
            Err(problems) => {
                for p in problems {
                    tracing::error!(topic = %topic, key = %key, problem = %p,
                        "automation definition not loaded; the previous one (if any) stays");
                }
            }
        }
        drop(map);
        self.rebuild();
    }
}

/// Names, sizes and modification times of the directory's JSON files.
fn fingerprint(dir: &std::path::Path) -> Vec<(PathBuf, u64, Option<SystemTime>)> {
    let mut out: Vec<_> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter(|e| e.path().extension().is_some_and(|x| x == "json"))
                .map(|e| {
                    let md = e.metadata().ok();
                    (
                        e.path(),
                        md.as_ref().map_or(0, |m| m.len()),
                        md.and_then(|m| m.modified().ok()),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}
