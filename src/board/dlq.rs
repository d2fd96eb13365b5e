//! The board's view of the dead-letter topic: the newest records, read from the start of
//! the topic and followed, with the original event redacted.
//!
//! Bounded: [`MAX_RECORDS`] records and [`MAX_BYTES`] bytes of events (oldest forgotten
//! first; `switchyard dlq replay --dry-run` reads the whole topic). An event is kept up to
//! [`MAX_EVENT_BYTES`]; a longer one is cut, and says so.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::config::KafkaConfig;
use crate::dlq;
use crate::dlq::replay::DeadLetter;
use crate::kafka::tail::TopicTail;

pub const MAX_RECORDS: usize = 10_000;
pub const MAX_BYTES: usize = 64 * 1024 * 1024;
pub const MAX_EVENT_BYTES: usize = 64 * 1024;

/// One dead-letter record as the board shows it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Letter {
    pub partition: i32,
    pub offset: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_id: Option<String>,
    pub class: String,
    pub error: String,
    pub failed_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Where the event was read (`topic/partition/offset`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// The original event: its JSON when it parses, else its text; secrets redacted.
    pub event: Value,
    /// The event was longer than [`MAX_EVENT_BYTES`] and is cut.
    pub event_truncated: bool,
    #[serde(skip)]
    weight: usize,
}

impl Letter {
    pub fn of(l: &DeadLetter) -> Letter {
        let payload = l.payload.as_deref().unwrap_or_default();
        let truncated = payload.len() > MAX_EVENT_BYTES;
        let event = if truncated {
            let cut = String::from_utf8_lossy(&payload[..MAX_EVENT_BYTES]);
            Value::String(crate::secrets::redact(&cut).into_owned())
        } else {
            match serde_json::from_slice::<Value>(payload) {
                Ok(mut v) => {
                    crate::secrets::redact_value(&mut v);
                    v
                }
                Err(_) => Value::String(
                    crate::secrets::redact(&String::from_utf8_lossy(payload)).into_owned(),
                ),
            }
        };
        let header = |name| l.header(name).unwrap_or_default();
        let error = crate::secrets::redact(&header(dlq::H_ERROR)).into_owned();
        Letter {
            partition: l.partition,
            offset: l.offset,
            run_id: l.run_id(),
            class: header(dlq::H_CLASS),
            weight: 256 + payload.len().min(MAX_EVENT_BYTES) + error.len(),
            error,
            failed_at: header(dlq::H_FAILED_AT),
            attempts: l.header(dlq::H_ATTEMPTS).and_then(|a| a.parse().ok()),
            source: l.header(dlq::H_SOURCE),
            event,
            event_truncated: truncated,
        }
    }
}

#[derive(Default)]
struct Inner {
    letters: VecDeque<Letter>,
    bytes: usize,
    forgotten: u64,
}

/// The newest dead-letter records.
#[derive(Default)]
pub struct DlqIndex {
    inner: Mutex<Inner>,
}

/// A DLQ listing: newest first, with counts per class over every record held.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DlqListing {
    pub records: Vec<Letter>,
    pub classes: std::collections::BTreeMap<String, usize>,
    /// Records held (the listing's filter aside).
    pub held: usize,
    /// Older records no longer held (the bound); the CLI reads them all.
    pub forgotten: u64,
}

impl DlqIndex {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn add(&self, letter: Letter) {
        let mut inner = self.lock();
        inner.bytes += letter.weight;
        inner.letters.push_back(letter);
        while inner.letters.len() > MAX_RECORDS || inner.bytes > MAX_BYTES {
            let Some(old) = inner.letters.pop_front() else {
                break;
            };
            inner.bytes = inner.bytes.saturating_sub(old.weight);
            inner.forgotten += 1;
        }
    }

    /// The newest records of `run_id`.
    pub fn of_run(&self, run_id: &str) -> Vec<Letter> {
        let inner = self.lock();
        inner
            .letters
            .iter()
            .rev()
            .filter(|l| l.run_id.as_deref() == Some(run_id))
            .cloned()
            .collect()
    }

    /// Records that `selection` picks (the CLI's selection), newest first, at most `limit`.
    pub fn list(&self, s: &crate::dlq::replay::Selection, limit: usize) -> DlqListing {
        let inner = self.lock();
        let mut classes = std::collections::BTreeMap::new();
        let mut records = Vec::new();
        for l in inner.letters.iter().rev() {
            *classes.entry(l.class.clone()).or_default() += 1;
            let picked = s.picks(l.run_id.as_deref(), Some(&l.class), &l.failed_at);
            if picked && records.len() < limit {
                records.push(l.clone());
            }
        }
        DlqListing {
            records,
            classes,
            held: inner.letters.len(),
            forgotten: inner.forgotten,
        }
    }
}

/// Read the DLQ topic from its start into `index`, and follow it until `stop`.
pub async fn follow(
    kafka: &KafkaConfig,
    index: Arc<DlqIndex>,
    stop: CancellationToken,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut tail = TopicTail::open(kafka, &kafka.dlq_topic, "board-dlq", &[]).await?;
    Ok(tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                m = tail.next(Duration::from_secs(3600)) => m,
                _ = stop.cancelled() => return,
            };
            match msg {
                Ok(Some(m)) => {
                    index.add(Letter::of(&DeadLetter::read(&m)));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "the board's DLQ reader failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letter(n: usize, class: &str, payload: &[u8]) -> Letter {
        Letter::of(&DeadLetter {
            partition: 0,
            offset: n as i64,
            key: None,
            payload: Some(payload.to_vec()),
            headers: vec![
                (dlq::H_CLASS.into(), Some(class.as_bytes().to_vec())),
                (
                    dlq::H_FAILED_AT.into(),
                    Some(format!("2026-12-03T10:00:{:02}Z", n % 60).into_bytes()),
                ),
            ],
        })
    }

    #[test]
    fn listing_selects_like_the_cli_and_memory_is_bounded() {
        let index = DlqIndex::default();
        for n in 0..MAX_RECORDS + 5 {
            let class = if n % 2 == 0 { "invalid" } else { "backend" };
            let ev = format!(r#"{{"run":{{"id":"r{n}"}}}}"#);
            index.add(letter(n, class, ev.as_bytes()));
        }
        let all = index.list(&Default::default(), 20);
        assert_eq!((all.held, all.forgotten), (MAX_RECORDS, 5));
        assert_eq!(all.records.len(), 20);
        assert_eq!(
            all.records[0].run_id.as_deref(),
            Some("r10004"),
            "newest first"
        );
        let mut s = crate::dlq::replay::Selection::default();
        s.classes.insert("backend".into());
        let picked = index.list(&s, usize::MAX);
        assert_eq!(picked.records.len(), MAX_RECORDS / 2);
        assert!(picked.records.iter().all(|l| l.class == "backend"));
        assert_eq!(index.of_run("r10003").len(), 1);
        assert!(index.of_run("r0").is_empty(), "forgotten");
    }

    #[test]
    fn long_and_non_json_events_are_kept_as_text_and_cut() {
        let l = letter(1, "invalid", b"not json {");
        assert_eq!(l.event, Value::String("not json {".into()));
        let big = vec![b'x'; MAX_EVENT_BYTES + 10];
        let l = letter(2, "too_large", &big);
        assert!(l.event_truncated);
        assert_eq!(l.event.as_str().map(str::len), Some(MAX_EVENT_BYTES));
    }
}
