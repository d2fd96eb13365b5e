//! Port's message signatures (reference §6.2, §6.3).
//!
//! A Kafka runs message carries `headers: {"X-Port-Signature": "v1,<base64>",
//! "X-Port-Timestamp": <epoch seconds>}`. The signature is
//! `base64(HMAC-SHA256(client secret, "<timestamp>.<message>"))`, where `<message>` is the
//! message with the two signature headers removed (leaving `"headers": {}`; GITLAB
//! messages are signed before Port adds `headers`, so the whole key is removed), written
//! as JavaScript's `JSON.stringify` would ([`super::json`]). Comparison is constant-time.
//!
//! Outgoing requests are signed the same way over the exact body bytes sent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use hmac::{Hmac, Mac};
use serde_json::{Map, Value};
use sha2::Sha256;

pub const SIGNATURE: &str = "X-Port-Signature";
pub const TIMESTAMP: &str = "X-Port-Timestamp";

/// How much a timestamp may lie in the future (clock skew between Port and us).
const FUTURE_SKEW: Duration = Duration::from_secs(300);

/// Why a message's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the message has no headers.{0}")]
    Missing(&'static str),
    #[error("headers.{TIMESTAMP} is not an epoch-seconds timestamp: {0}")]
    BadTimestamp(String),
    #[error("headers.{SIGNATURE} is not a v1 signature (\"v1,<base64>\")")]
    BadFormat,
    #[error("the signature does not match the message (wrong secret, or the message was changed)")]
    Mismatch,
    #[error("the timestamp {ts} is {age_s} s old; older than the accepted {max_s} s")]
    TooOld { ts: i64, age_s: i64, max_s: u64 },
    #[error("the timestamp {ts} is {ahead_s} s in the future")]
    InFuture { ts: i64, ahead_s: i64 },
}

/// `v1,` + base64 of the HMAC-SHA256 of `"<timestamp>.<body>"`.
pub fn sign(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = mac(secret, timestamp);
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

fn mac(secret: &str, timestamp: &str) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any size");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac
}

/// Sign `msg` as Port signs its Kafka messages, in place: `headers` gets
/// `X-Port-Signature` and `X-Port-Timestamp` (with `whole_headers`, the GITLAB form, the
/// signature covers the message without its `headers` key). The POLLING streamer seals
/// the runs it claimed over Port's authenticated API, so that they take the same path as
/// Kafka messages.
pub fn seal(msg: &mut Map<String, Value>, secret: &str, whole_headers: bool, now: i64) {
    let ts = now.to_string();
    if whole_headers {
        msg.shift_remove("headers");
    } else {
        msg.insert("headers".into(), Value::Object(Map::new()));
    }
    let sig = sign(
        secret,
        &ts,
        super::json::stringify(&Value::Object(msg.clone())).as_bytes(),
    );
    // In place: the key keeps the position it was signed at.
    let headers = msg
        .entry("headers")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(h) = headers {
        h.insert(SIGNATURE.into(), Value::String(sig));
        h.insert(TIMESTAMP.into(), Value::from(now));
    }
}

/// The current time in epoch seconds, as sent in `X-Port-Timestamp`.
pub fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs() as i64
}

/// A message whose signature checked out.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The signing time, epoch seconds.
    pub timestamp: i64,
}

/// Verify the signature of `msg` in place: the signature headers are removed (the whole
/// `headers` key when `whole_headers`, for GITLAB messages), which is also the shape the
/// message is forwarded in. `max_age`: the oldest timestamp accepted (`None`: any age).
pub fn verify(
    msg: &mut Map<String, Value>,
    secret: &str,
    whole_headers: bool,
    max_age: Option<Duration>,
    now: i64,
) -> Result<Verified, SignatureError> {
    let headers = match msg.get_mut("headers") {
        Some(Value::Object(h)) => h,
        _ => return Err(SignatureError::Missing(SIGNATURE)),
    };
    let signature = headers.shift_remove(SIGNATURE);
    let timestamp = headers.shift_remove(TIMESTAMP);
    if whole_headers {
        msg.shift_remove("headers");
    }
    let signature = match signature {
        Some(Value::String(s)) => s,
        _ => return Err(SignatureError::Missing(SIGNATURE)),
    };
    let (ts_text, ts) = match &timestamp {
        Some(Value::Number(n)) => (super::json::number(n), n.as_f64().map(|f| f as i64)),
        Some(Value::String(s)) => (s.clone(), s.trim().parse::<i64>().ok()),
        None | Some(Value::Null) => return Err(SignatureError::Missing(TIMESTAMP)),
        Some(other) => return Err(SignatureError::BadTimestamp(other.to_string())),
    };
    let ts = ts.ok_or_else(|| SignatureError::BadTimestamp(ts_text.clone()))?;
    let given = signature
        .strip_prefix("v1,")
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .ok_or(SignatureError::BadFormat)?;
    let mut mac = mac(secret, &ts_text);
    mac.update(super::json::stringify(&Value::Object(msg.clone())).as_bytes());
    // `verify_slice` compares in constant time.
    mac.verify_slice(&given)
        .map_err(|_| SignatureError::Mismatch)?;
    if ts - now > FUTURE_SKEW.as_secs() as i64 {
        return Err(SignatureError::InFuture {
            ts,
            ahead_s: ts - now,
        });
    }
    if let Some(max) = max_age {
        if now - ts > max.as_secs() as i64 {
            return Err(SignatureError::TooOld {
                ts,
                age_s: now - ts,
                max_s: max.as_secs(),
            });
        }
    }
    Ok(Verified { timestamp: ts })
}

/// Verify a message as received (`switchyard port verify`): parse it, keeping key order,
/// and check its signature the way its backend type is signed.
pub fn verify_bytes(
    raw: &[u8],
    secret: &str,
    max_age: Option<Duration>,
) -> Result<Verified, String> {
    let mut msg: Map<String, Value> = match serde_json::from_slice(raw) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err("the message is not a JSON object".into()),
        Err(e) => return Err(format!("not JSON: {e}")),
    };
    let gitlab = signed_without_headers(&msg);
    verify(&mut msg, secret, gitlab, max_age, now_secs()).map_err(|e| e.to_string())
}

/// Whether the message's backend is GITLAB (signed without `headers`).
pub fn signed_without_headers(msg: &Map<String, Value>) -> bool {
    msg.get("payload")
        .and_then(|p| p.pointer("/action/invocationMethod/type"))
        .and_then(Value::as_str)
        == Some("GITLAB")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../tests/fixtures/port/agent_run_signed.json");
    const FIXTURE_TS: i64 = 1713277889;

    fn fixture() -> Map<String, Value> {
        serde_json::from_str(FIXTURE).unwrap()
    }

    /// Sign `msg` as Port does (`headers` added after signing for GITLAB).
    fn port_signed(mut msg: Map<String, Value>, secret: &str, ts: i64) -> Map<String, Value> {
        let gitlab = signed_without_headers(&msg);
        if !gitlab {
            msg.insert("headers".into(), json!({}));
        }
        let sig = sign(
            secret,
            &ts.to_string(),
            super::super::json::stringify(&Value::Object(msg.clone())).as_bytes(),
        );
        let h = json!({SIGNATURE: sig, TIMESTAMP: ts});
        match msg.get_mut("headers") {
            Some(Value::Object(existing)) => existing.extend(h.as_object().unwrap().clone()),
            _ => {
                msg.insert("headers".into(), h);
            }
        }
        msg
    }

    #[test]
    fn the_published_vector_verifies_with_secret_test() {
        let mut m = fixture();
        let v = verify(&mut m, "test", false, None, FIXTURE_TS).unwrap();
        assert_eq!(v.timestamp, FIXTURE_TS);
        assert_eq!(
            m["headers"],
            json!({}),
            "signature headers removed, key kept"
        );
        let mut m = fixture();
        assert_eq!(
            verify(&mut m, "wrong", false, None, FIXTURE_TS).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn a_tampered_message_does_not_verify() {
        let mut m = fixture();
        m["payload"]["properties"] = json!({"foo": "injected"});
        assert_eq!(
            verify(&mut m, "test", false, None, FIXTURE_TS).unwrap_err(),
            SignatureError::Mismatch
        );
        // Reordering keys changes the signed text too.
        let mut m = fixture();
        let status = m.shift_remove("status").unwrap();
        m.insert("status".into(), status);
        assert_eq!(
            verify(&mut m, "test", false, None, FIXTURE_TS).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn missing_headers_are_named() {
        let mut m = fixture();
        m.shift_remove("headers");
        assert_eq!(
            verify(&mut m, "test", false, None, 0)
                .unwrap_err()
                .to_string(),
            "the message has no headers.X-Port-Signature"
        );
        let mut m = fixture();
        m["headers"]
            .as_object_mut()
            .unwrap()
            .shift_remove(TIMESTAMP);
        assert_eq!(
            verify(&mut m, "test", false, None, 0).unwrap_err(),
            SignatureError::Missing(TIMESTAMP)
        );
        let mut m = fixture();
        m["headers"][SIGNATURE] = json!("sha256=abc");
        assert_eq!(
            verify(&mut m, "test", false, None, FIXTURE_TS).unwrap_err(),
            SignatureError::BadFormat
        );
    }

    #[test]
    fn gitlab_messages_are_signed_without_the_headers_key() {
        let msg: Map<String, Value> = serde_json::from_value(json!({
            "action": "trigger_pipeline", "resourceType": "run", "status": "TRIGGERED",
            "context": {"runId": "r_gl"},
            "payload": {"action": {"invocationMethod": {"type": "GITLAB", "agent": true,
                "groupName": "grp/sub", "projectName": "svc"}}, "properties": {"ref": "main"}}
        }))
        .unwrap();
        let signed = port_signed(msg.clone(), "s3cret", 1_800_000_000);
        let mut m = signed.clone();
        assert!(signed_without_headers(&m));
        verify(&mut m, "s3cret", true, None, 1_800_000_000).unwrap();
        assert!(!m.contains_key("headers"), "{m:?}");
        // Verified the WEBHOOK way (keeping `"headers": {}`), it does not match.
        let mut m = signed;
        assert_eq!(
            verify(&mut m, "s3cret", false, None, 1_800_000_000).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn non_ascii_text_verifies_as_json_stringify_writes_it() {
        let msg: Map<String, Value> = serde_json::from_value(json!({
            "context": {"runId": "r_ü"},
            "payload": {"properties": {"name": "Zoë — 日本語 ✓", "emoji": "🚀", "ratio": 0.5,
                                       "big": 1e21, "tiny": 1.5e-7, "whole": 2.0}}
        }))
        .unwrap();
        let signed = port_signed(msg, "s3cret", 1_800_000_000);
        // What goes on the wire: the same text, non-ASCII as UTF-8 (JSON.stringify).
        let wire = super::super::json::stringify(&Value::Object(signed));
        assert!(
            wire.contains("Zoë — 日本語 ✓")
                && wire.contains("1e+21")
                && wire.contains("\"whole\":2")
        );
        let mut m: Map<String, Value> = serde_json::from_str(&wire).unwrap();
        verify(&mut m, "s3cret", false, None, 1_800_000_000).unwrap();
        // The same message written ASCII-escaped (Python's default) parses to the same
        // value, so it verifies too: the check is over the parsed message.
        let escaped = wire.replace('ë', "\\u00eb");
        let mut m: Map<String, Value> = serde_json::from_str(&escaped).unwrap();
        verify(&mut m, "s3cret", false, None, 1_800_000_000).unwrap();
    }

    #[test]
    fn a_message_signed_by_javascript_verifies() {
        // Signed by Node's JSON.stringify + crypto (tests/fixtures/port/README.md).
        let raw = include_str!("../../tests/fixtures/port/js_non_ascii_signed.json");
        let mut m: Map<String, Value> = serde_json::from_str(raw).unwrap();
        verify(&mut m, "port-js-vector-secret", false, None, 1796180000).unwrap();
        let mut m: Map<String, Value> = serde_json::from_str(raw).unwrap();
        m["payload"]["properties"]["name"] = json!("Zoe");
        assert_eq!(
            verify(&mut m, "port-js-vector-secret", false, None, 1796180000).unwrap_err(),
            SignatureError::Mismatch
        );
    }

    #[test]
    fn timestamps_outside_the_window_are_refused() {
        let day = Duration::from_secs(86_400);
        let mut m = fixture();
        let err = verify(&mut m, "test", false, Some(day), FIXTURE_TS + 86_401).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the timestamp 1713277889 is 86401 s old; older than the accepted 86400 s"
        );
        let mut m = fixture();
        verify(&mut m, "test", false, Some(day), FIXTURE_TS + 86_400).unwrap();
        let mut m = fixture();
        assert!(matches!(
            verify(&mut m, "test", false, Some(day), FIXTURE_TS - 301).unwrap_err(),
            SignatureError::InFuture { ahead_s: 301, .. }
        ));
    }

    #[test]
    fn outgoing_signatures_cover_the_exact_bytes() {
        let body = br#"{"a":1}"#;
        let s = sign("test", "1713277889", body);
        assert!(s.starts_with("v1,"));
        assert_ne!(s, sign("test", "1713277889", br#"{"a": 1}"#));
    }
}
