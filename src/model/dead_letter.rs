//! The dead-letter record and the headers that say why a record failed.

pub const H_ERROR: &str = "switchyard-error";
pub const H_CLASS: &str = "switchyard-error-class";
pub const H_ATTEMPTS: &str = "switchyard-attempts";
pub const H_SOURCE: &str = "switchyard-source";
pub const H_FAILED_AT: &str = "switchyard-failed-at";
/// Set on events that `dlq replay` re-published: `dlq-topic/partition/offset`.
pub const H_REPLAYED_FROM: &str = "switchyard-replayed-from";
/// `base64(HMAC-SHA256(dlq.replay_key, …))` over the replay marker, the key and the
/// value: only `switchyard dlq replay` can make a marker the dispatcher honours.
pub const H_REPLAY_MAC: &str = "switchyard-replay-mac";

/// A record for the dead-letter topic: the original record plus error headers.
#[derive(Debug, Clone)]
pub struct DlqRecord {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
}
