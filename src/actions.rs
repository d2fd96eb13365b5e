//! Registered actions (`actions.mode = "registered"`): events name an action and carry
//! inputs only; the `invocationMethod` comes from the operator's file.
//!
//! In the default `inline` mode an event carries its action's `invocationMethod`, as
//! Port's events do: whoever can publish a trigger chooses the destination and the
//! templates (within the sandbox and the destination policy). In `registered` mode the
//! operator decides both; an event that carries its own `invocationMethod` is rejected.
//! This is the recommended posture for native (non-Port) triggers in production.
//!
//! The file is JSON: an object of `identifier → {"invocationMethod": {…}}`, or an array
//! of action definitions with `identifier` and `invocationMethod` (Port's action format).

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::model::BadInput;
use crate::model::TriggerEvent;

/// The operator's actions, by identifier.
#[derive(Debug, Default)]
pub struct Registered {
    actions: HashMap<String, Map<String, Value>>,
}

impl Registered {
    /// Read and check the actions file.
    pub fn load(path: &str) -> Result<Registered, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))?;
        Self::parse(&text).map_err(|e| format!("{path}: {e}"))
    }

    pub fn parse(text: &str) -> Result<Registered, String> {
        let doc: Value = serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        let entries: Vec<(String, &Value)> = match &doc {
            Value::Object(map) => map.iter().map(|(k, v)| (k.clone(), v)).collect(),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.get("identifier")
                        .and_then(Value::as_str)
                        .map(|id| (id.to_owned(), v))
                        .ok_or_else(|| format!("[{i}]: no \"identifier\""))
                })
                .collect::<Result<_, _>>()?,
            _ => return Err("expected an object or an array of actions".into()),
        };
        let mut actions = HashMap::new();
        for (id, def) in entries {
            let inv = def
                .get("invocationMethod")
                .and_then(Value::as_object)
                .ok_or_else(|| format!("{id}: no \"invocationMethod\" object"))?;
            if !inv.get("type").is_some_and(Value::is_string) {
                return Err(format!("{id}: invocationMethod.type must be a string"));
            }
            if actions.insert(id.clone(), inv.clone()).is_some() {
                return Err(format!("{id}: defined twice"));
            }
        }
        Ok(Registered { actions })
    }

    /// How many actions are registered.
    pub fn len(&self) -> usize {
        self.actions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.actions.is_empty()
    }

    /// The event with its registered `invocationMethod`, or why it cannot run.
    pub fn resolve(&self, event: &Arc<TriggerEvent>) -> Result<Arc<TriggerEvent>, BadInput> {
        if !event.action.invocation_method.is_empty() {
            return Err(BadInput::InvalidEvent(
                "action.invocationMethod: events may not carry one when actions.mode is \
                 \"registered\"; name a registered action and send inputs only"
                    .into(),
            ));
        }
        let id = &event.action.identifier;
        let Some(inv) = self.actions.get(id) else {
            crate::telemetry::metrics::get()
                .refusals
                .with_label_values(&["action_not_registered"])
                .inc();
            return Err(BadInput::InvalidEvent(format!(
                "action.identifier: {id:?} is not a registered action (actions.file)"
            )));
        };
        let mut resolved = (**event).clone();
        resolved.action.invocation_method = inv.clone();
        Ok(Arc::new(resolved))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(v: Value) -> Arc<TriggerEvent> {
        Arc::new(serde_json::from_value(v).unwrap())
    }

    #[test]
    fn events_name_actions_and_cannot_bring_their_own_invocation() {
        let r = Registered::parse(
            r#"{"deploy": {"invocationMethod": {"type": "WEBHOOK", "url": "https://d/{{ .inputs.svc }}"}}}"#,
        )
        .unwrap();
        let ok = r
            .resolve(&event(
                serde_json::json!({"run": {"id": "r"}, "action": {"identifier": "deploy"},
                "inputs": {"svc": "a"}}),
            ))
            .unwrap();
        assert_eq!(ok.backend_type(), Some("WEBHOOK"));
        let own = r.resolve(&event(
            serde_json::json!({"run": {"id": "r"}, "action": {"identifier": "deploy",
            "invocationMethod": {"type": "WEBHOOK", "url": "http://169.254.169.254/"}}}),
        ));
        assert!(own.unwrap_err().to_string().contains("may not carry one"));
        let unknown = r.resolve(&event(
            serde_json::json!({"run": {"id": "r"}, "action": {"identifier": "nope"}}),
        ));
        assert!(unknown
            .unwrap_err()
            .to_string()
            .contains("\"nope\" is not a registered action"));
    }

    #[test]
    fn port_style_arrays_load_and_bad_files_say_why() {
        let r = Registered::parse(
            r#"[{"identifier": "a", "title": "A", "invocationMethod": {"type": "GITHUB", "org": "o"}}]"#,
        )
        .unwrap();
        assert_eq!(r.len(), 1);
        assert!(Registered::parse("[{}]")
            .unwrap_err()
            .contains("no \"identifier\""));
        assert!(Registered::parse(r#"{"a": {}}"#)
            .unwrap_err()
            .contains("no \"invocationMethod\""));
        assert!(Registered::parse("5").is_err());
    }
}
