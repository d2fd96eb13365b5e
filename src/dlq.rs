//! Dead-letter records: the original record plus headers that say why it failed.

use crate::kafka::publisher::DlqRecord;
use crate::kafka::TriggerRecord;
use crate::model::now_rfc3339;

pub const H_ERROR: &str = "switchyard-error";
pub const H_CLASS: &str = "switchyard-error-class";
pub const H_ATTEMPTS: &str = "switchyard-attempts";
pub const H_SOURCE: &str = "switchyard-source";
pub const H_FAILED_AT: &str = "switchyard-failed-at";
/// Set on events that `dlq replay` re-published: `dlq-topic/partition/offset`.
pub const H_REPLAYED_FROM: &str = "switchyard-replayed-from";

/// Build the DLQ record for `record`: original key, value and headers, then ours.
pub fn record(source: &TriggerRecord, error: &str, class: &str, attempts: u32) -> DlqRecord {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = source
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("switchyard-"))
        .cloned()
        .collect();
    for (k, v) in [
        (H_ERROR, error.to_owned()),
        (H_CLASS, class.to_owned()),
        (H_ATTEMPTS, attempts.to_string()),
        (H_SOURCE, source.source().to_string()),
        (H_FAILED_AT, now_rfc3339()),
    ] {
        headers.push((k.to_owned(), Some(v.into_bytes())));
    }
    DlqRecord {
        key: source.key.clone(),
        payload: source.payload.clone(),
        headers,
    }
}
