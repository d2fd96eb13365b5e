//! Dead-letter records: the original record plus headers that say why it failed.

pub mod replay;

use crate::model::now_rfc3339;
use crate::model::DlqRecord;
use crate::model::TriggerRecord;

pub use crate::model::dead_letter::{
    H_ATTEMPTS, H_CLASS, H_ERROR, H_FAILED_AT, H_REPLAYED_FROM, H_REPLAY_MAC, H_SOURCE,
};

/// The MAC of a replayed record (see [`H_REPLAY_MAC`]).
pub fn replay_mac(
    key: &[u8],
    replayed_from: &str,
    record_key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::{Digest, Sha256};
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(b"switchyard-replay/v1\n");
    mac.update(replayed_from.as_bytes());
    mac.update(b"\n");
    mac.update(&Sha256::digest(record_key.unwrap_or_default()));
    mac.update(&Sha256::digest(value.unwrap_or_default()));
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether a record carries a replay marker with a valid MAC under `key`. A marker
/// without one (a producer setting the header itself) is counted and ignored.
pub fn verified_replay(
    key: Option<&[u8]>,
    headers: &[(String, Option<Vec<u8>>)],
    record_key: Option<&[u8]>,
    value: Option<&[u8]>,
) -> bool {
    use subtle::ConstantTimeEq as _;
    let header = |name: &str| {
        headers
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| v.as_deref())
    };
    let Some(from) = header(H_REPLAYED_FROM) else {
        return false;
    };
    let valid = match (key, header(H_REPLAY_MAC)) {
        (Some(key), Some(given)) => {
            let want = replay_mac(key, &String::from_utf8_lossy(from), record_key, value);
            bool::from(want.as_bytes().ct_eq(given))
        }
        _ => false,
    };
    if !valid {
        crate::telemetry::metrics::get()
            .refusals
            .with_label_values(&["replay_mac"])
            .inc();
        tracing::warn!(replayed_from = %String::from_utf8_lossy(from),
            "a record claims to be a DLQ replay without a valid switchyard-replay-mac; \
             it is treated as an ordinary record (duplicate and age checks apply)");
    }
    valid
}

/// Build the DLQ record for `record`: original key, value and headers, then ours.
pub fn record(source: &TriggerRecord, error: &str, class: &str, attempts: u32) -> DlqRecord {
    let mut headers: Vec<(String, Option<Vec<u8>>)> = source
        .headers
        .iter()
        .filter(|(k, _)| !k.starts_with("switchyard-"))
        .cloned()
        .collect();
    for (k, v) in [
        (
            H_ERROR,
            crate::model::truncate(&crate::secrets::redact(error), 4096),
        ),
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

/// Header of a truncated DLQ copy: the original value's size in bytes.
pub const H_TRUNCATED_FROM: &str = "switchyard-truncated-from";

/// Keep the first `keep` bytes of the record's value and drop its original headers (the
/// DLQ's own stay), noting the original size; `switchyard-source` still points at the
/// full record.
pub fn truncate(rec: &mut DlqRecord, keep: usize) {
    let size = rec.payload.as_ref().map_or(0, Vec::len);
    if let Some(p) = rec.payload.as_mut() {
        p.truncate(keep);
    }
    if rec.key.as_ref().is_some_and(|k| k.len() > 1024) {
        rec.key = rec.key.as_ref().map(|k| k[..1024].to_vec());
    }
    rec.headers.retain(|(k, _)| k.starts_with("switchyard-"));
    rec.headers.push((
        H_TRUNCATED_FROM.to_owned(),
        Some(size.to_string().into_bytes()),
    ));
}
