//! Between Avro values and switchyard's JSON: trigger events (free-form parts as
//! `JsonValue` records) and run updates.

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{Map, Value as Json};

use super::{err, frame, AvroError, TRIGGER_SCHEMA};
use crate::model::RunUpdate;

/// An Avro value as JSON; `JsonValue` wrapper records (one field named `value`) unwrap.
pub fn to_json(v: Avro) -> Json {
    match v {
        Avro::Null => Json::Null,
        Avro::Boolean(b) => Json::Bool(b),
        Avro::Int(i) => i.into(),
        Avro::Long(i) => i.into(),
        Avro::Float(f) => {
            serde_json::Number::from_f64(f64::from(f)).map_or(Json::Null, Json::Number)
        }
        Avro::Double(f) => serde_json::Number::from_f64(f).map_or(Json::Null, Json::Number),
        Avro::String(s) | Avro::Enum(_, s) => Json::String(s),
        Avro::Bytes(b) | Avro::Fixed(_, b) => {
            Json::String(String::from_utf8_lossy(&b).into_owned())
        }
        Avro::Union(_, inner) => to_json(*inner),
        Avro::Array(items) => Json::Array(items.into_iter().map(to_json).collect()),
        Avro::Map(m) => Json::Object(m.into_iter().map(|(k, v)| (k, to_json(v))).collect()),
        Avro::Record(mut fields) if fields.len() == 1 && fields[0].0 == "value" => {
            to_json(fields.pop().expect("one field").1)
        }
        Avro::Record(fields) => Json::Object(
            fields
                .into_iter()
                .filter(|(_, v)| !is_null(v)) // absent optional fields, as in the JSON contract
                .map(|(k, v)| (k, to_json(v)))
                .collect(),
        ),
        other => Json::String(format!("{other:?}")),
    }
}

pub(super) fn is_null(v: &Avro) -> bool {
    match v {
        Avro::Null => true,
        Avro::Union(_, inner) => is_null(inner),
        _ => false,
    }
}

/// A JSON value as a `JsonValue` record (unions are resolved against the schema later).
pub(super) fn json_value(j: &Json) -> Avro {
    let inner = match j {
        Json::Null => Avro::Null,
        Json::Bool(b) => Avro::Boolean(*b),
        Json::Number(n) => match n.as_i64() {
            Some(i) => Avro::Long(i),
            None => Avro::Double(n.as_f64().unwrap_or(0.0)),
        },
        Json::String(s) => Avro::String(s.clone()),
        Json::Array(a) => Avro::Array(a.iter().map(json_value).collect()),
        Json::Object(o) => Avro::Map(o.iter().map(|(k, v)| (k.clone(), json_value(v))).collect()),
    };
    Avro::Record(vec![("value".into(), inner)])
}

pub(super) fn opt_str(j: Option<&Json>) -> Avro {
    match j.and_then(Json::as_str) {
        Some(s) => Avro::String(s.to_owned()),
        None => Avro::Null,
    }
}

pub(super) fn opt_json_value(j: Option<&Json>) -> Avro {
    match j {
        None | Some(Json::Null) => Avro::Null,
        Some(v) => json_value(v),
    }
}

/// A JSON trigger event in the Avro wire format with schema `id` (for `switchyard
/// trigger` on an Avro topic, and for tests). Fails when the event does not fit the
/// schema (for example a missing `run.id`).
pub fn encode_trigger(event: &Json, id: u32) -> Result<Vec<u8>, AvroError> {
    let schema = Schema::parse_str(TRIGGER_SCHEMA).expect("bundled schema parses");
    let empty = Map::new();
    let action = event["action"].as_object().unwrap_or(&empty);
    let invocation = action
        .get("invocationMethod")
        .and_then(Json::as_object)
        .unwrap_or(&empty);
    let value = Avro::Record(vec![
        (
            "run".into(),
            Avro::Record(vec![("id".into(), opt_str(event["run"].get("id")))]),
        ),
        (
            "action".into(),
            Avro::Record(vec![
                ("identifier".into(), opt_str(action.get("identifier"))),
                ("blueprint".into(), opt_str(action.get("blueprint"))),
                (
                    "invocationMethod".into(),
                    Avro::Map(
                        invocation
                            .iter()
                            .map(|(k, v)| (k.clone(), json_value(v)))
                            .collect(),
                    ),
                ),
            ]),
        ),
        ("trigger".into(), opt_json_value(event.get("trigger"))),
        ("inputs".into(), opt_json_value(event.get("inputs"))),
        ("entity".into(), opt_json_value(event.get("entity"))),
        ("event".into(), opt_json_value(event.get("event"))),
        ("orderingKey".into(), opt_str(event.get("orderingKey"))),
        ("deadline".into(), opt_str(event.get("deadline"))),
    ]);
    let value = value
        .resolve(&schema)
        .map_err(|e| AvroError(format!("the event does not fit the trigger schema: {e}")))?;
    let datum = apache_avro::to_avro_datum(&schema, value).map_err(err)?;
    Ok(frame(id, &datum))
}

pub(super) fn update_to_avro(u: &RunUpdate) -> Avro {
    let opt = |s: &Option<String>| match s {
        Some(s) => Avro::Union(1, Box::new(Avro::String(s.clone()))),
        None => Avro::Union(0, Box::new(Avro::Null)),
    };
    let none = || Avro::Union(0, Box::new(Avro::Null));
    let some = |v: Avro| Avro::Union(1, Box::new(v));
    let kind = match u.kind {
        crate::model::UpdateKind::Status => Avro::Enum(0, "status".into()),
        crate::model::UpdateKind::Log => Avro::Enum(1, "log".into()),
        crate::model::UpdateKind::Response => Avro::Enum(2, "response".into()),
    };
    let status = u.status.map_or_else(none, |s| {
        let i = match s {
            crate::model::RunStatus::InProgress => 0,
            crate::model::RunStatus::Success => 1,
            crate::model::RunStatus::Failure => 2,
        };
        some(Avro::Enum(i, s.as_str().into()))
    });
    let level = u.level.map_or_else(none, |l| {
        let (i, name) = match l {
            crate::model::LogLevel::Debug => (0, "DEBUG"),
            crate::model::LogLevel::Info => (1, "INFO"),
            crate::model::LogLevel::Warn => (2, "WARN"),
            crate::model::LogLevel::Error => (3, "ERROR"),
        };
        some(Avro::Enum(i, name.into()))
    });
    let link = u.link.as_ref().map_or_else(none, |l| {
        some(Avro::Array(
            l.iter().map(|s| Avro::String(s.clone())).collect(),
        ))
    });
    let response = opt(&u.response.as_ref().map(|r| r.to_string()));
    let source = u.source.as_ref().map_or_else(none, |s| {
        some(Avro::Record(vec![
            ("topic".into(), Avro::String(s.topic.clone())),
            ("partition".into(), Avro::Int(s.partition)),
            ("offset".into(), Avro::Long(s.offset)),
        ]))
    });
    Avro::Record(vec![
        ("runId".into(), Avro::String(u.run_id.clone())),
        ("seq".into(), Avro::Long(u.seq as i64)),
        ("at".into(), Avro::String(u.at.clone())),
        ("kind".into(), kind),
        ("status".into(), status),
        ("statusLabel".into(), opt(&u.status_label)),
        ("summary".into(), opt(&u.summary)),
        ("link".into(), link),
        ("externalRunId".into(), opt(&u.external_run_id)),
        ("message".into(), opt(&u.message)),
        ("level".into(), level),
        ("response".into(), response),
        ("backend".into(), opt(&u.backend)),
        ("action".into(), opt(&u.action)),
        (
            "attempt".into(),
            u.attempt.map_or_else(none, |a| some(Avro::Int(a as i32))),
        ),
        (
            "durationMs".into(),
            u.duration_ms
                .map_or_else(none, |d| some(Avro::Long(d as i64))),
        ),
        ("source".into(), source),
    ])
}
