//! Avro wire format (Confluent framing: magic byte 0, a 4-byte big-endian schema id,
//! then the Avro binary datum) for the triggers and status topics, with an optional
//! schema-registry client.
//!
//! - Decoding a trigger reads the writer schema by id (the registry's
//!   `GET /schemas/ids/{id}`, cached; without a registry, the configured id of the bundled
//!   `schemas/trigger_event.v1.avsc`), resolves it against the bundled reader schema
//!   (Apache Avro's resolution rules), and turns the datum into the JSON event that the
//!   rest of the pipeline reads. Any failure is a bad input of class `avro`.
//! - Encoding a run update uses the bundled `schemas/run_update.v2.avsc`, registered once
//!   under `{status_topic}-value` (`POST /subjects/{subject}/versions`), or the configured
//!   id without a registry.
//! - Readers of the status topic ([`Codec::decode_update`]) accept both formats: a record
//!   that starts with `{` is JSON, one that starts with byte 0 is Avro.
//!
//! Free-form JSON parts of an event (`inputs`, `entity`, `invocationMethod` values, …)
//! are `JsonValue` records: `{"value": null | boolean | long | double | string |
//! array<JsonValue> | map<JsonValue>}` ([`convert`]). Every datum is checked within a
//! budget before apache-avro decodes it ([`check`]); the registry client is
//! [`super::registry`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use apache_avro::Schema;
use serde_json::Value as Json;

use crate::config::{AvroConfig, Format};
use crate::model::RunUpdate;

mod check;
mod convert;

use super::registry::Registry;
pub use check::{check_datum, MAX_AVRO_DEPTH};
use convert::update_to_avro;
pub use convert::{encode_trigger, to_json};

pub const TRIGGER_SCHEMA: &str = include_str!("../../../schemas/trigger_event.v1.avsc");
/// The run-update schema switchyard writes (v2: v1 plus `action`).
pub const RUN_UPDATE_SCHEMA: &str = include_str!("../../../schemas/run_update.v2.avsc");
/// The first run-update schema; data written with it is still read.
pub const RUN_UPDATE_SCHEMA_V1: &str = include_str!("../../../schemas/run_update.v1.avsc");

/// Why an Avro record could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AvroError(pub String);

pub(crate) fn err(e: impl std::fmt::Display) -> AvroError {
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
