//! Reading a record of a `port`-format topic (reference §5): an agent run envelope
//! (§5.1), a workflow node run (§5.4) or a changelog message (§5.3).
//!
//! - Runs are routed by `payload.action.invocationMethod`, changelog messages by
//!   `changelogDestination`. Messages whose `agent` is falsy are not meant for an agent
//!   (KAFKA-type payloads, direct webhooks): they are skipped, not failed.
//! - Run envelopes must carry a valid signature; changelog messages carry none (the
//!   agent does not check them either). The run id is `context.runId`; node runs start
//!   with `wfnr_`. A changelog delivery is not a Port run: it gets its own id,
//!   `cl_<topic>_<partition>_<offset>`, stable across redeliveries, and a 2xx finishes it
//!   (SUCCESS), since no service reports on it later.

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};

use super::signature;
use crate::model::BadInput;
use crate::model::TriggerRecord;
use crate::model::{Action, RunRef, TriggerEvent};

/// What kind of Port message a record holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An action or automation run (`r_…`).
    Run,
    /// A workflow node run (`wfnr_…`), reported through the node endpoints.
    Node,
    /// A catalog change for a `changelogDestination`.
    Changelog,
}

/// A Port message to dispatch.
#[derive(Debug, Clone)]
pub struct PortRun {
    pub kind: Kind,
    pub run_id: String,
    /// The message as verified, without its signature headers: what the mapping reads
    /// and, by default, the body sent.
    pub message: Value,
    /// `payload.action.invocationMethod`, or `changelogDestination`.
    pub invocation: Map<String, Value>,
    pub synchronized: bool,
}

/// The outcome of reading one record.
#[derive(Debug)]
pub enum Decoded {
    /// Not for an agent: logged and counted, the offset completes.
    Skip {
        reason: &'static str,
        why: String,
    },
    Run(Arc<PortRun>, Arc<TriggerEvent>),
    /// Bad input: FAILURE (when the run id is known) and a DLQ record.
    Bad(BadInput, Option<String>),
}

/// Read one record. `secret` verifies signatures; `max_age` bounds their age (`None`:
/// any, as for replays from the DLQ).
pub fn decode(
    raw: &[u8],
    record: &TriggerRecord,
    secret: &str,
    max_age: Option<Duration>,
) -> Decoded {
    decode_routed(raw, record, secret, max_age, Route::Content)
}

/// How a topic's messages are routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// By content: a `changelogDestination` key makes a changelog delivery, anything
    /// else is read as a run envelope.
    Content,
    /// Port mode's runs topic, as the agent routes it: `payload.action.invocationMethod`
    /// only, and always signed (the agent skips the signature check of a run message that
    /// carries a `changelogDestination` key; switchyard does not).
    Runs,
    /// Port mode's change log topic: `changelogDestination` only.
    ChangeLog,
}

/// [`decode`] with the topic's route.
pub fn decode_routed(
    raw: &[u8],
    record: &TriggerRecord,
    secret: &str,
    max_age: Option<Duration>,
    route: Route,
) -> Decoded {
    let value: Value = match serde_json::from_slice(raw) {
        Ok(v) => v,
        Err(e) => return Decoded::Bad(BadInput::MalformedJson(e.to_string()), None),
    };
    let Value::Object(mut msg) = value else {
        return skip("the message is not a JSON object (not an agent envelope)");
    };
    match route {
        Route::ChangeLog if !msg.contains_key("changelogDestination") => {
            return skip("no changelogDestination (a change log message not for an agent)");
        }
        Route::ChangeLog => return changelog(msg, record),
        Route::Content if msg.contains_key("changelogDestination") => {
            return changelog(msg, record);
        }
        Route::Content | Route::Runs => {}
    }
    let Some(Value::Object(invocation)) = msg
        .get("payload")
        .and_then(|p| p.pointer("/action/invocationMethod"))
        .cloned()
    else {
        return skip("no payload.action.invocationMethod (not an agent envelope)");
    };
    if !truthy(invocation.get("agent")) {
        return skip("invocationMethod.agent is not true");
    }
    let run_id = match msg.get("context").and_then(|c| c.get("runId")) {
        Some(Value::String(id)) if !id.is_empty() => id.clone(),
        None | Some(Value::Null) => {
            return Decoded::Bad(
                BadInput::MissingRunId("context.runId: missing field".into()),
                None,
            )
        }
        Some(other) => {
            return Decoded::Bad(
                BadInput::MissingRunId(format!(
                    "context.runId: expected a non-empty string, found {other}"
                )),
                None,
            )
        }
    };
    let whole_headers = signature::signed_without_headers(&msg);
    if let Err(e) = signature::verify(
        &mut msg,
        secret,
        whole_headers,
        max_age,
        signature::now_secs(),
    ) {
        return Decoded::Bad(BadInput::Signature(e.to_string()), Some(run_id));
    }
    let kind = if run_id.starts_with("wfnr_") {
        Kind::Node
    } else {
        Kind::Run
    };
    let action = msg
        .get("action")
        .and_then(Value::as_str)
        .or_else(|| {
            msg.get("payload")
                .and_then(|p| p.pointer("/action/identifier"))
                .and_then(Value::as_str)
        })
        .unwrap_or("port_action")
        .to_owned();
    let run = PortRun {
        kind,
        run_id,
        synchronized: truthy(invocation.get("synchronized")),
        invocation,
        message: Value::Object(msg),
    };
    let event = event_of(&run, action);
    Decoded::Run(Arc::new(run), Arc::new(event))
}

fn changelog(msg: Map<String, Value>, record: &TriggerRecord) -> Decoded {
    let Some(Value::Object(dest)) = msg.get("changelogDestination").cloned() else {
        return Decoded::Bad(
            BadInput::InvalidEvent("changelogDestination: expected an object".into()),
            None,
        );
    };
    if !truthy(dest.get("agent")) {
        return skip("changelogDestination.agent is not true");
    }
    let run = PortRun {
        kind: Kind::Changelog,
        run_id: format!("cl_{}_{}_{}", record.topic, record.partition, record.offset),
        // Nobody reports a delivery back later: a 2xx finishes it.
        synchronized: true,
        invocation: dest,
        message: Value::Object(msg),
    };
    let event = event_of(&run, "changelog".into());
    Decoded::Run(Arc::new(run), Arc::new(event))
}

fn skip(why: &str) -> Decoded {
    Decoded::Skip {
        reason: "not_for_agent",
        why: why.to_owned(),
    }
}

/// The event the rest of the pipeline sees (run id, action, lane, expiry, logs).
fn event_of(run: &PortRun, action: String) -> TriggerEvent {
    let m = &run.message;
    let mut invocation = run.invocation.clone();
    invocation
        .entry("type")
        .or_insert_with(|| Value::String("WEBHOOK".into()));
    TriggerEvent {
        run: RunRef {
            id: run.run_id.clone(),
            extra: Map::new(),
        },
        action: Action {
            identifier: action,
            blueprint: m
                .pointer("/context/blueprint")
                .and_then(Value::as_str)
                .map(str::to_owned),
            invocation_method: invocation,
            extra: Map::new(),
        },
        trigger: m.get("trigger").cloned().unwrap_or_default(),
        inputs: m
            .pointer("/payload/properties")
            .cloned()
            .unwrap_or_default(),
        entity: m.pointer("/payload/entity").cloned().unwrap_or_default(),
        event: Value::Null,
        ordering_key: None,
        deadline: None,
        extra: Map::new(),
    }
}

/// The agent's reading of a flag: `true`, or a non-empty string other than "false".
pub fn truthy(v: Option<&Value>) -> bool {
    match v {
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !s.is_empty() && !s.eq_ignore_ascii_case("false"),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(Value::Array(a)) => !a.is_empty(),
        Some(Value::Object(o)) => !o.is_empty(),
        None | Some(Value::Null) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const FIXTURE: &str = include_str!("../../tests/fixtures/port/agent_run_signed.json");

    fn record() -> TriggerRecord {
        TriggerRecord {
            topic: "org.runs".into(),
            partition: 2,
            offset: 41,
            key: None,
            payload: None,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn a_signed_envelope_becomes_a_run() {
        let Decoded::Run(run, event) = decode(FIXTURE.as_bytes(), &record(), "test", None) else {
            panic!("expected a run");
        };
        assert_eq!(run.kind, Kind::Run);
        assert_eq!(run.run_id, "r_jE5FhDURh4Uen2Qr");
        assert_eq!(run.message["headers"], json!({}));
        assert_eq!(run.invocation["url"], "http://localhost:80/api/test");
        assert!(!run.synchronized);
        assert_eq!(event.run.id, "r_jE5FhDURh4Uen2Qr");
        assert_eq!(event.action.identifier, "Create");
        assert_eq!(event.backend_type(), Some("WEBHOOK"));
    }

    #[test]
    fn messages_not_for_an_agent_are_skipped() {
        let mut m: Value = serde_json::from_str(FIXTURE).unwrap();
        m["payload"]["action"]["invocationMethod"]["agent"] = json!(false);
        for raw in [
            m.to_string(),
            json!({"any": "KAFKA payload"}).to_string(),
            json!([1, 2]).to_string(),
            json!({"changelogDestination": {"type": "KAFKA"}}).to_string(),
        ] {
            assert!(
                matches!(
                    decode(raw.as_bytes(), &record(), "test", None),
                    Decoded::Skip {
                        reason: "not_for_agent",
                        ..
                    }
                ),
                "{raw}"
            );
        }
    }

    #[test]
    fn a_bad_signature_fails_the_run_it_names() {
        let Decoded::Bad(bad, id) = decode(FIXTURE.as_bytes(), &record(), "wrong", None) else {
            panic!("expected bad input");
        };
        assert_eq!(id.as_deref(), Some("r_jE5FhDURh4Uen2Qr"));
        assert_eq!(bad.class(), "signature");
        assert!(bad.to_string().contains("does not match"), "{bad}");
        // A fresh-only window refuses the 2024 fixture.
        let Decoded::Bad(bad, _) = decode(
            FIXTURE.as_bytes(),
            &record(),
            "test",
            Some(Duration::from_secs(3600)),
        ) else {
            panic!("expected bad input");
        };
        assert!(bad.to_string().contains("s old"), "{bad}");
        let mut m: Value = serde_json::from_str(FIXTURE).unwrap();
        m["context"].as_object_mut().unwrap().remove("runId");
        let Decoded::Bad(bad, None) = decode(m.to_string().as_bytes(), &record(), "test", None)
        else {
            panic!("expected bad input without a run id");
        };
        assert_eq!(
            bad.to_string(),
            "missing run id: context.runId: missing field"
        );
    }

    #[test]
    fn changelog_messages_are_unsigned_and_get_a_delivery_id() {
        let raw = json!({"action": "UPDATE", "resourceType": "entity", "status": "SUCCESS",
            "context": {"entity": "vm-1", "blueprint": "vm"}, "diff": {"before": null, "after": {}},
            "changelogDestination": {"type": "WEBHOOK", "agent": true, "url": "http://svc/changes"}});
        let Decoded::Run(run, event) = decode(raw.to_string().as_bytes(), &record(), "test", None)
        else {
            panic!("expected a changelog run");
        };
        assert_eq!(run.kind, Kind::Changelog);
        assert_eq!(run.run_id, "cl_org.runs_2_41");
        assert_eq!(event.action.identifier, "changelog");
        assert_eq!(run.invocation["url"], "http://svc/changes");
    }
}
