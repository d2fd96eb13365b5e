//! Turning trigger-record bytes into a [`TriggerEvent`], or into a [`BadInput`] that says
//! what was wrong and where.

use serde_json::Value;

use crate::model::TriggerEvent;

/// Why an input could not be dispatched. Every variant is a permanent failure: the run
/// (when its id is known) gets a FAILURE update and the record goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadInput {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("missing run id: {0}")]
    MissingRunId(String),
    #[error("invalid trigger event: {0}")]
    InvalidEvent(String),
    #[error("unknown invocationMethod.type {0}; known types: {1}")]
    UnknownBackend(String, String),
    #[error("template error in {0}")]
    Template(String),
    #[error("template budget exceeded in {0}")]
    TemplateBudget(String),
    #[error("{0}")]
    SecretScope(String),
    #[error("the record is too large: {0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("expired: {0}")]
    Expired(String),
    #[error("unreadable Avro record: {0}")]
    Avro(String),
    #[error("Port signature rejected: {0}")]
    Signature(String),
    #[error("no entry of the payload mapping ({0}) is enabled for this message")]
    NoMapping(String),
}

impl BadInput {
    /// Closed set of error classes, used in the `switchyard-error-class` DLQ header and
    /// as a metric label.
    pub fn class(&self) -> &'static str {
        match self {
            BadInput::MalformedJson(_) => "malformed_json",
            BadInput::MissingRunId(_) => "missing_run_id",
            BadInput::InvalidEvent(_) => "invalid_event",
            BadInput::UnknownBackend(..) => "unknown_backend",
            BadInput::Template(_) => "template_error",
            BadInput::TemplateBudget(_) => "template_budget",
            BadInput::SecretScope(_) => "secret_scope",
            BadInput::TooLarge(_) => "too_large",
            BadInput::Internal(_) => "internal",
            BadInput::Expired(_) => "expired",
            BadInput::Avro(_) => "avro",
            BadInput::Signature(_) => "signature",
            BadInput::NoMapping(_) => "port_mapping",
        }
    }
}

/// A decoded event, or the reason it could not be decoded plus whatever run id could be
/// read from it (so the failure can still be reported on the run).
pub type Decoded = Result<TriggerEvent, (BadInput, Option<String>)>;

/// Decode a JSON trigger event.
pub fn decode_json(bytes: &[u8]) -> Decoded {
    // The common case, a valid event, is parsed straight into its type. Anything that
    // does not parse that way takes the slow path below, which says what is wrong and
    // where (and accepts what it always accepted, such as a repeated key).
    match serde_json::from_slice::<TriggerEvent>(bytes) {
        Ok(event) if !event.run.id.is_empty() => Ok(event),
        _ => explain(bytes),
    }
}

/// The slow path of [`decode_json`]: through a `Value`, so the run id can be read even
/// from an invalid event, and with the path of the field that is wrong.
fn explain(bytes: &[u8]) -> Decoded {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| (BadInput::MalformedJson(e.to_string()), None))?;
    let run_id = value
        .pointer("/run/id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_owned);
    let Some(id) = run_id else {
        let why = match value.pointer("/run/id") {
            None if !value.is_object() => "the event is not a JSON object".to_owned(),
            None => "run.id: missing field".to_owned(),
            Some(Value::String(_)) => "run.id: empty string".to_owned(),
            Some(other) => format!("run.id: expected string, found {}", json_type(other)),
        };
        return Err((BadInput::MissingRunId(why), None));
    };
    serde_path_to_error::deserialize::<_, TriggerEvent>(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let msg = if path == "." {
            inner
        } else {
            format!("{path}: {inner}")
        };
        (BadInput::InvalidEvent(msg), Some(id))
    })
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_json_names_line_and_column() {
        let (err, id) = decode_json(b"{\"run\": ").unwrap_err();
        assert_eq!(err.class(), "malformed_json");
        assert!(err.to_string().contains("line 1 column"), "{err}");
        assert_eq!(id, None);
    }

    #[test]
    fn missing_run_id_is_its_own_class() {
        let (err, _) = decode_json(br#"{"action": {}}"#).unwrap_err();
        assert_eq!(err.class(), "missing_run_id");
        assert_eq!(err.to_string(), "missing run id: run.id: missing field");
        let (err, _) = decode_json(br#"{"run": {"id": 7}}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "missing run id: run.id: expected string, found number"
        );
    }

    #[test]
    fn invalid_event_names_the_path_and_keeps_the_run_id() {
        let raw =
            br#"{"run": {"id": "r_1"}, "action": {"identifier": "x", "invocationMethod": 5}}"#;
        let (err, id) = decode_json(raw).unwrap_err();
        assert_eq!(id.as_deref(), Some("r_1"));
        assert_eq!(err.class(), "invalid_event");
        assert!(err.to_string().contains("action.invocationMethod"), "{err}");
    }
}
