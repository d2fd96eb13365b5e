//! Turning trigger-record bytes into a [`TriggerEvent`], or into a [`BadInput`] that says
//! what was wrong and where.

pub mod avro;
pub mod registry;

use serde_json::Value;

use crate::model::TriggerEvent;

pub use crate::model::BadInput;

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
