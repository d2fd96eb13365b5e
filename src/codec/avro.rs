//! Avro wire format (Confluent framing: magic byte 0, a 4-byte big-endian schema id,
//! then the Avro binary datum) for the triggers and status topics, with an optional
//! schema-registry client.
//!
//! - Decoding a trigger reads the writer schema by id (the registry's
//!   `GET /schemas/ids/{id}`, cached; without a registry, the configured id of the bundled
//!   `schemas/trigger_event.v1.avsc`), resolves it against the bundled reader schema
//!   (Apache Avro's resolution rules), and turns the datum into the JSON event that the
//!   rest of the pipeline reads. Any failure is a bad input of class `avro`.
//! - Encoding a run update uses the bundled `schemas/run_update.v1.avsc`, registered once
//!   under `{status_topic}-value` (`POST /subjects/{subject}/versions`), or the configured
//!   id without a registry.
//! - Readers of the status topic ([`Codec::decode_update`]) accept both formats: a record
//!   that starts with `{` is JSON, one that starts with byte 0 is Avro.
//!
//! Free-form JSON parts of an event (`inputs`, `entity`, `invocationMethod` values, …)
//! are `JsonValue` records: `{"value": null | boolean | long | double | string |
//! array<JsonValue> | map<JsonValue>}`.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use apache_avro::types::Value as Avro;
use apache_avro::Schema;
use serde_json::{Map, Value as Json};

use crate::config::{AvroConfig, Format};
use crate::model::RunUpdate;

pub const TRIGGER_SCHEMA: &str = include_str!("../../schemas/trigger_event.v1.avsc");
/// The run-update schema switchyard writes (v2: v1 plus `action`).
pub const RUN_UPDATE_SCHEMA: &str = include_str!("../../schemas/run_update.v2.avsc");
/// The first run-update schema; data written with it is still read.
pub const RUN_UPDATE_SCHEMA_V1: &str = include_str!("../../schemas/run_update.v1.avsc");

/// Why an Avro record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AvroError(pub String);

fn err(e: impl std::fmt::Display) -> AvroError {
    AvroError(e.to_string())
}

pub struct Codec {
    triggers: Format,
    status: Format,
    /// Formats the status topic is decoded in (`kafka.status_read_formats`).
    status_reads: Vec<Format>,
    status_subject: String,
    triggers_subject: String,
    registry: Option<Registry>,
    trigger_reader: Schema,
    run_update: Schema,
    local_trigger_id: u32,
    local_run_update_id: u32,
    local_run_update_v1_id: u32,
    /// Writer schemas by id (registry answers, and the bundled ones under their ids).
    schemas: Mutex<HashMap<u32, Arc<Schema>>>,
    /// The id run updates are written under, once known.
    update_id: tokio::sync::OnceCell<u32>,
}

impl Codec {
    /// The codec of a configuration's triggers and status topics.
    pub fn from_config(cfg: &crate::config::Config) -> Arc<Self> {
        let k = &cfg.kafka;
        let mut c = Self::new(
            &cfg.avro,
            k.triggers_format,
            k.status_format,
            &k.status_topic,
        );
        c.triggers_subject = format!("{}-value", k.triggers_topic);
        c.status_reads = cfg.status_reads();
        Arc::new(c)
    }

    pub fn new(cfg: &AvroConfig, triggers: Format, status: Format, status_topic: &str) -> Self {
        let trigger_reader = Schema::parse_str(TRIGGER_SCHEMA).expect("bundled schema parses");
        let run_update = Schema::parse_str(RUN_UPDATE_SCHEMA).expect("bundled schema parses");
        let mut schemas = HashMap::new();
        if cfg.registry_url.is_none() {
            schemas.insert(cfg.trigger_schema_id, Arc::new(trigger_reader.clone()));
            schemas.insert(cfg.run_update_schema_id, Arc::new(run_update.clone()));
            let v1 = Schema::parse_str(RUN_UPDATE_SCHEMA_V1).expect("bundled schema parses");
            schemas.insert(cfg.run_update_v1_schema_id, Arc::new(v1));
        }
        Codec {
            triggers,
            status,
            status_reads: vec![status],
            status_subject: format!("{status_topic}-value"),
            triggers_subject: String::new(),
            registry: cfg.registry_url.as_deref().map(Registry::new),
            trigger_reader,
            run_update,
            local_trigger_id: cfg.trigger_schema_id,
            local_run_update_id: cfg.run_update_schema_id,
            local_run_update_v1_id: cfg.run_update_v1_schema_id,
            schemas: Mutex::new(schemas),
            update_id: tokio::sync::OnceCell::new(),
        }
    }

    /// The same codec, decoding the status topic in `formats` (a migration lists both).
    pub fn reading(mut self, formats: &[Format]) -> Self {
        self.status_reads = formats.to_vec();
        self
    }

    /// A codec for JSON on both topics (no Avro involved).
    pub fn json() -> Self {
        Self::new(&AvroConfig::default(), Format::Json, Format::Json, "")
    }

    pub fn triggers_format(&self) -> Format {
        self.triggers
    }

    /// The trigger event in `payload`, read from a topic of `format`, as JSON bytes
    /// (unchanged unless the topic is Avro).
    pub async fn trigger_json<'a>(
        &self,
        format: Format,
        payload: &'a [u8],
    ) -> Result<std::borrow::Cow<'a, [u8]>, AvroError> {
        if format != Format::Avro {
            return Ok(std::borrow::Cow::Borrowed(payload));
        }
        let (id, datum) = unframe(payload)?;
        let writer = self.schema(id).await?;
        check_datum(&writer, datum).map_err(|e| AvroError(format!("schema id {id}: {e}")))?;
        let value =
            apache_avro::from_avro_datum(&writer, &mut &datum[..], Some(&self.trigger_reader))
                .map_err(|e| AvroError(format!("schema id {id}: {e}")))?;
        Ok(serde_json::to_vec(&to_json(value))
            .expect("JSON values serialise")
            .into())
    }

    /// A JSON trigger event as the triggers topic's format wants it (registering the
    /// trigger schema under `{triggers_topic}-value` when there is a registry).
    pub async fn encode_trigger(&self, event: &Json) -> Result<Vec<u8>, AvroError> {
        if self.triggers != Format::Avro {
            return Ok(serde_json::to_vec(event).expect("JSON values serialise"));
        }
        let id = match &self.registry {
            Some(r) => r.register(&self.triggers_subject, TRIGGER_SCHEMA).await?,
            None => self.local_trigger_id,
        };
        encode_trigger(event, id)
    }

    /// The run update as JSON when the status topic is JSON (no await needed), else
    /// `None`: use [`encode_update`](Self::encode_update).
    pub fn encode_update_json(&self, u: &RunUpdate) -> Option<Vec<u8>> {
        (self.status != Format::Avro)
            .then(|| serde_json::to_vec(u).expect("a RunUpdate always serialises"))
    }

    /// The run update as the status topic's format wants it.
    pub async fn encode_update(&self, u: &RunUpdate) -> Result<Vec<u8>, AvroError> {
        if let Some(json) = self.encode_update_json(u) {
            return Ok(json);
        }
        let id = *self
            .update_id
            .get_or_try_init(|| async {
                let id = match &self.registry {
                    Some(r) => r.register(&self.status_subject, RUN_UPDATE_SCHEMA).await?,
                    None => self.local_run_update_id,
                };
                // Readers of the status topic in this process need not fetch it back.
                self.schemas
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(id, Arc::new(self.run_update.clone()));
                Ok::<u32, AvroError>(id)
            })
            .await?;
        let datum = apache_avro::to_avro_datum(&self.run_update, update_to_avro(u))
            .map_err(|e| AvroError(format!("encoding a run update: {e}")))?;
        Ok(frame(id, &datum))
    }

    /// A run update read from the status topic, in one of the formats its readers decode
    /// ([`Codec::reading`]); `None` otherwise (Avro failures are logged).
    pub async fn decode_update(&self, payload: &[u8]) -> Option<RunUpdate> {
        match payload.first() {
            Some(b'{') if self.status_reads.contains(&Format::Json) => {
                serde_json::from_slice(payload).ok()
            }
            Some(0) if self.status_reads.contains(&Format::Avro) => {
                let decoded = async {
                    let (id, datum) = unframe(payload)?;
                    let writer = self.schema(id).await?;
                    check_datum(&writer, datum).map_err(err)?;
                    let v = apache_avro::from_avro_datum(
                        &writer,
                        &mut &datum[..],
                        Some(&self.run_update),
                    )
                    .map_err(err)?;
                    serde_json::from_value(to_json(v)).map_err(err)
                };
                match decoded.await {
                    Ok(u) => Some(u),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable Avro run update skipped");
                        None
                    }
                }
            }
            _ => None,
        }
    }

    /// The writer schema with `id`: cached, else from the registry.
    async fn schema(&self, id: u32) -> Result<Arc<Schema>, AvroError> {
        if let Some(s) = self
            .schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(s.clone());
        }
        let Some(r) = &self.registry else {
            return Err(AvroError(format!(
                "unknown schema id {id} (no registry; the bundled schemas are ids {} and {}, \
                 and {} for run updates written before v2)",
                self.local_trigger_id, self.local_run_update_id, self.local_run_update_v1_id
            )));
        };
        let s = Arc::new(r.fetch(id).await?);
        self.schemas
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, s.clone());
        Ok(s)
    }
}

/// Confluent framing.
pub fn frame(id: u32, datum: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + datum.len());
    out.push(0);
    out.extend_from_slice(&id.to_be_bytes());
    out.extend_from_slice(datum);
    out
}

fn unframe(payload: &[u8]) -> Result<(u32, &[u8]), AvroError> {
    match payload {
        [0, a, b, c, d, rest @ ..] => Ok((u32::from_be_bytes([*a, *b, *c, *d]), rest)),
        [first, ..] if *first != 0 => Err(AvroError(format!(
            "expected the Avro wire format (magic byte 0, schema id, datum), got a record starting with byte {first:#04x}"
        ))),
        _ => Err(AvroError(format!(
            "a {}-byte record is too short for the Avro wire format",
            payload.len()
        ))),
    }
}

/// A Confluent-compatible schema registry.
struct Registry {
    base: String,
    http: reqwest::Client,
}

impl Registry {
    fn new(base: &str) -> Self {
        Registry {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a TLS backend is available"),
        }
    }

    async fn fetch(&self, id: u32) -> Result<Schema, AvroError> {
        let url = format!("{}/schemas/ids/{id}", self.base);
        let resp = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| AvroError(format!("schema registry {url}: {e}")))?;
        if !resp.status().is_success() {
            return Err(AvroError(format!(
                "schema registry {url}: HTTP {}",
                resp.status()
            )));
        }
        let bytes = crate::net::read_capped(resp, crate::net::MAX_BODY)
            .await
            .map_err(|e| AvroError(format!("schema registry {url}: {e}")))?;
        let body: Json = serde_json::from_slice(&bytes)
            .map_err(|e| AvroError(format!("schema registry {url}: {e}")))?;
        let text = body["schema"].as_str().ok_or_else(|| {
            AvroError(format!(
                "schema registry {url}: no \"schema\" in the answer"
            ))
        })?;
        Schema::parse_str(text)
            .map_err(|e| AvroError(format!("schema id {id} does not parse: {e}")))
    }

    async fn register(&self, subject: &str, schema: &str) -> Result<u32, AvroError> {
        let url = format!("{}/subjects/{subject}/versions", self.base);
        let resp = self
            .http
            .post(&url)
            .header("content-type", "application/vnd.schemaregistry.v1+json")
            .json(&serde_json::json!({ "schema": schema }))
            .send()
            .await
            .map_err(|e| AvroError(format!("schema registry {url}: {e}")))?;
        if !resp.status().is_success() {
            let status = resp.status();
            let bytes = crate::net::read_capped(resp, 1024)
                .await
                .unwrap_or_default();
            let text = String::from_utf8_lossy(&bytes);
            return Err(AvroError(format!(
                "schema registry {url}: HTTP {status}: {text}"
            )));
        }
        let bytes = crate::net::read_capped(resp, crate::net::MAX_BODY)
            .await
            .map_err(|e| AvroError(format!("schema registry {url}: {e}")))?;
        let body: Json = serde_json::from_slice(&bytes)
            .map_err(|e| AvroError(format!("schema registry {url}: {e}")))?;
        body["id"]
            .as_u64()
            .and_then(|id| u32::try_from(id).ok())
            .ok_or_else(|| AvroError(format!("schema registry {url}: no \"id\" in the answer")))
    }
}

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

fn is_null(v: &Avro) -> bool {
    match v {
        Avro::Null => true,
        Avro::Union(_, inner) => is_null(inner),
        _ => false,
    }
}

/// A JSON value as a `JsonValue` record (unions are resolved against the schema later).
fn json_value(j: &Json) -> Avro {
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

fn opt_str(j: Option<&Json>) -> Avro {
    match j.and_then(Json::as_str) {
        Some(s) => Avro::String(s.to_owned()),
        None => Avro::Null,
    }
}

fn opt_json_value(j: Option<&Json>) -> Avro {
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

fn update_to_avro(u: &RunUpdate) -> Avro {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{LogLevel, RunStatus, SourceRef};

    fn local() -> Codec {
        Codec::new(&AvroConfig::default(), Format::Avro, Format::Avro, "s")
    }

    #[tokio::test]
    async fn run_updates_round_trip_through_avro() {
        let c = local();
        let mut u = RunUpdate::status("r_1", RunStatus::Failure).with_summary("HTTP 503");
        u.seq = 4;
        u.at = "2026-11-28T10:00:00.000Z".into();
        u.link = Some(vec!["https://x".into()]);
        u.response = Some(serde_json::json!({"a": [1, 2.5, null]}));
        u.attempt = Some(3);
        u.duration_ms = Some(1200);
        u.source = Some(SourceRef {
            topic: "t".into(),
            partition: 2,
            offset: 9,
        });
        let bytes = c.encode_update(&u).await.unwrap();
        assert_eq!(&bytes[..5], &[0, 0, 0, 0, 3]);
        let mut back = c.decode_update(&bytes).await.unwrap();
        // The Avro schema carries the response as JSON text.
        assert_eq!(
            back.response.take(),
            Some(Json::String(r#"{"a":[1,2.5,null]}"#.into()))
        );
        u.response = None;
        assert_eq!(back, u);
        let log = RunUpdate::log("r_1", LogLevel::Warn, "retrying");
        let back = c
            .decode_update(&c.encode_update(&log).await.unwrap())
            .await
            .unwrap();
        assert_eq!(back.level, Some(LogLevel::Warn));
        // JSON records are read only when listed (a migration), never by default.
        let json = serde_json::to_vec(&log).unwrap();
        assert!(c.decode_update(&json).await.is_none());
        let both = local().reading(&[Format::Json, Format::Avro]);
        assert_eq!(
            both.decode_update(&json).await.unwrap().message.as_deref(),
            Some("retrying")
        );
        // And an Avro record is never decoded in a JSON deployment.
        let json_only = Codec::json();
        assert!(json_only.decode_update(&bytes).await.is_none());
    }

    #[tokio::test]
    async fn triggers_decode_from_avro_into_the_json_event() {
        let c = local();
        let event = serde_json::json!({
            "run": {"id": "r_a"},
            "action": {"identifier": "deploy", "invocationMethod":
                {"type": "WEBHOOK", "url": "http://h/x", "synchronized": true, "headers": {"A": "b"}}},
            "inputs": {"version": "1.4.2", "n": 3, "ratio": 0.5, "tags": ["a", {"b": null}]},
            "orderingKey": "k"
        });
        let bytes = encode_trigger(&event, 1).unwrap();
        let json: Json =
            serde_json::from_slice(&c.trigger_json(Format::Avro, &bytes).await.unwrap()).unwrap();
        assert_eq!(json["run"]["id"], "r_a");
        assert_eq!(
            json["action"]["invocationMethod"],
            event["action"]["invocationMethod"]
        );
        assert_eq!(json["inputs"], event["inputs"]);
        assert_eq!(json["orderingKey"], "k");
        assert!(json.get("deadline").is_none() && json.get("entity").is_none());

        let e = c
            .trigger_json(Format::Avro, br#"{"run": {}}"#)
            .await
            .unwrap_err();
        assert!(e.0.starts_with("expected the Avro wire format"), "{e}");
        let e = c
            .trigger_json(Format::Avro, &[0, 0, 0, 0, 1, 0xff, 0xff])
            .await
            .unwrap_err();
        assert!(e.0.starts_with("schema id 1:"), "{e}");
        let e = c
            .trigger_json(Format::Avro, &[0, 0, 0, 0, 9, 2])
            .await
            .unwrap_err();
        assert!(e.0.starts_with("unknown schema id 9"), "{e}");
    }
}

/// Deepest nesting of an Avro datum that is decoded (records, arrays, maps, unions).
pub const MAX_AVRO_DEPTH: usize = 64;

/// Check that `datum` is a well-formed encoding of `schema` within a budget, before
/// apache-avro decodes it: apache-avro trusts block counts (it reserves before it reads)
/// and recurses without a depth limit, so a 45-byte record can announce 500 million
/// entries. Every count and length must fit in the bytes left, nesting is limited to
/// [`MAX_AVRO_DEPTH`], and the walk visits each byte a bounded number of times.
pub fn check_datum(schema: &Schema, datum: &[u8]) -> Result<(), String> {
    let resolved = apache_avro::schema::ResolvedSchema::try_from(schema)
        .map_err(|e| format!("schema: {e}"))?;
    let mut c = Check {
        names: resolved.get_names(),
        rest: datum,
    };
    c.value(schema, 0)?;
    if !c.rest.is_empty() {
        return Err(format!("{} bytes left after the record", c.rest.len()));
    }
    Ok(())
}

struct Check<'a, 's> {
    names: &'a apache_avro::schema::NamesRef<'s>,
    rest: &'a [u8],
}

impl Check<'_, '_> {
    fn long(&mut self) -> Result<i64, String> {
        let mut v: u64 = 0;
        for i in 0..10 {
            let (&b, tail) = self
                .rest
                .split_first()
                .ok_or("the record ends inside a number")?;
            self.rest = tail;
            v |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok((v >> 1) as i64 ^ -((v & 1) as i64));
            }
        }
        Err("a number longer than 10 bytes".into())
    }

    fn take(&mut self, n: usize, what: &str) -> Result<(), String> {
        if n > self.rest.len() {
            return Err(format!(
                "{what} of {n} bytes, but only {} bytes are left",
                self.rest.len()
            ));
        }
        self.rest = &self.rest[n..];
        Ok(())
    }

    fn length(&mut self, what: &str) -> Result<(), String> {
        let n = self.long()?;
        let n = usize::try_from(n).map_err(|_| format!("{what} with a negative length {n}"))?;
        self.take(n, what)
    }

    /// Array or map blocks: each count must fit in the bytes left.
    fn blocks(
        &mut self,
        depth: usize,
        mut item: impl FnMut(&mut Self, usize) -> Result<(), String>,
    ) -> Result<(), String> {
        loop {
            let mut count = self.long()?;
            if count == 0 {
                return Ok(());
            }
            if count < 0 {
                // A negative count is followed by the block's size in bytes.
                count = count.checked_neg().ok_or("a block count out of range")?;
                let size = self.long()?;
                if size < 0 || size as u64 > self.rest.len() as u64 {
                    return Err(format!(
                        "a block of {size} bytes, but only {} bytes are left",
                        self.rest.len()
                    ));
                }
            }
            let count = count as u64;
            if count > self.rest.len() as u64 {
                return Err(format!(
                    "a block of {count} items, but only {} bytes are left",
                    self.rest.len()
                ));
            }
            for _ in 0..count {
                item(self, depth + 1)?;
            }
        }
    }

    fn value(&mut self, schema: &Schema, depth: usize) -> Result<(), String> {
        if depth > MAX_AVRO_DEPTH {
            return Err(format!("nested deeper than {MAX_AVRO_DEPTH} levels"));
        }
        match schema {
            Schema::Null => Ok(()),
            Schema::Boolean => self.take(1, "a boolean"),
            Schema::Int
            | Schema::Long
            | Schema::Date
            | Schema::TimeMillis
            | Schema::TimeMicros
            | Schema::TimestampMillis
            | Schema::TimestampMicros
            | Schema::TimestampNanos
            | Schema::LocalTimestampMillis
            | Schema::LocalTimestampMicros
            | Schema::LocalTimestampNanos => self.long().map(drop),
            Schema::Float => self.take(4, "a float"),
            Schema::Double => self.take(8, "a double"),
            Schema::Bytes | Schema::String | Schema::BigDecimal | Schema::Uuid => {
                self.length("a string")
            }
            Schema::Fixed(f) => self.take(f.size, "a fixed"),
            Schema::Duration => self.take(12, "a duration"),
            Schema::Decimal(d) => self.value(&d.inner, depth + 1),
            Schema::Enum(e) => {
                let i = self.long()?;
                if i < 0 || i as usize >= e.symbols.len() {
                    return Err(format!("enum index {i} of {} symbols", e.symbols.len()));
                }
                Ok(())
            }
            Schema::Array(a) => self.blocks(depth, |c, d| c.value(&a.items, d)),
            Schema::Map(m) => self.blocks(depth, |c, d| {
                c.length("a map key")?;
                c.value(&m.types, d)
            }),
            Schema::Union(u) => {
                let i = self.long()?;
                let variant = usize::try_from(i)
                    .ok()
                    .and_then(|i| u.variants().get(i))
                    .ok_or_else(|| format!("union index {i} of {} branches", u.variants().len()))?;
                self.value(variant, depth + 1)
            }
            Schema::Record(r) => {
                for f in &r.fields {
                    self.value(&f.schema, depth + 1)?;
                }
                Ok(())
            }
            Schema::Ref { name } => {
                let target = *self
                    .names
                    .get(name)
                    .ok_or_else(|| format!("unknown named type {name}"))?;
                self.value(target, depth + 1)
            }
        }
    }
}

#[cfg(test)]
mod check_tests {
    use super::*;

    fn trigger() -> Schema {
        Schema::parse_str(TRIGGER_SCHEMA).unwrap()
    }

    #[test]
    fn valid_records_pass_and_huge_counts_fail_without_reserving() {
        let event = serde_json::json!({"run": {"id": "r_1"}, "action": {"identifier": "a",
            "invocationMethod": {"type": "WEBHOOK", "url": "https://x"}}, "inputs": {"a": [1, 2]}});
        let framed = encode_trigger(&event, 1).unwrap();
        let datum = &framed[5..];
        check_datum(&trigger(), datum).unwrap();
        // An array announcing 500 million entries in a few bytes.
        let schema = Schema::parse_str(r#"{"type": "array", "items": "null"}"#).unwrap();
        let mut bomb = Vec::new();
        let mut v = (500_000_000u64) << 1;
        while v >= 0x80 {
            bomb.push((v as u8) | 0x80);
            v >>= 7;
        }
        bomb.push(v as u8);
        bomb.push(0);
        let e = check_datum(&schema, &bomb).unwrap_err();
        assert!(e.contains("a block of 500000000 items"), "{e}");
        // A string longer than the record.
        let s = Schema::parse_str(r#""string""#).unwrap();
        assert!(check_datum(&s, &[0x80, 0x10, b'a']).is_err());
    }

    #[test]
    fn deep_nesting_is_refused() {
        let schema = Schema::parse_str(
            r#"{"type": "record", "name": "N", "fields": [{"name": "n", "type": ["null", "N"]}]}"#,
        )
        .unwrap();
        // 1,000 levels of `n: {n: {…}}`: union branch 1 each, then branch 0 (null).
        let mut datum = vec![2u8; 1000];
        datum.push(0);
        let e = check_datum(&schema, &datum).unwrap_err();
        assert!(e.contains("nested deeper than 64"), "{e}");
        let mut ok = vec![2u8; 10];
        ok.push(0);
        check_datum(&schema, &ok).unwrap();
    }
}
