//! A record of an input topic, detached from librdkafka's buffers.

/// A record read from the triggers topic, detached from librdkafka's buffers.
#[derive(Debug, Clone)]
pub struct TriggerRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: Vec<(String, Option<Vec<u8>>)>,
    /// Record timestamp in milliseconds since the epoch, when the record has one.
    pub timestamp_ms: Option<i64>,
}

impl TriggerRecord {
    /// Bytes of the record: key, value and headers.
    pub fn size(&self) -> usize {
        self.payload.as_ref().map_or(0, Vec::len)
            + self.key.as_ref().map_or(0, Vec::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }

    /// `topic/partition/offset`, the `switchyard-source` notation.
    pub fn source(&self) -> super::SourceRef {
        super::SourceRef {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }

    /// The record key as text, when it is UTF-8.
    pub fn key_str(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}
