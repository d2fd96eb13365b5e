//! UPSERT_ENTITY: render and validate an entity, then write it to the compacted entities
//! topic (key `blueprint/identifier`) and, when configured, to a catalog API
//! (`PUT {catalog}/blueprints/{bp}/entities/{id}`).
//!
//! Validation (Port's rules): `identifier` is a required non-empty string; `team` is a
//! string or a list of strings; each relation is a string, a list of strings, or null.
//! The broker's acknowledgement gives SUCCESS, or the catalog's response when one is set.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;

use crate::kafka::publisher::SharedProducer;
use serde_json::{json, Map, Value};

use super::http::enc;
use super::{http, required_str, AttemptFuture, Backend, Invalid, Outcome, Report, Request};
use crate::config::UpsertEntityConfig;
use crate::kafka::topics::{TopicGuard, TopicSpec};

pub struct UpsertEntity {
    producer: SharedProducer,
    topic: String,
    topics: Arc<TopicGuard>,
    catalog: Option<Catalog>,
}

struct Catalog {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
}

impl UpsertEntity {
    pub fn new(
        cfg: &UpsertEntityConfig,
        producer: SharedProducer,
        topics: Arc<TopicGuard>,
        secrets: &Map<String, Value>,
    ) -> anyhow::Result<Self> {
        let catalog = match &cfg.catalog_url {
            None => None,
            Some(url) => Some(Catalog {
                client: reqwest::Client::builder()
                    .connect_timeout(cfg.timeout)
                    .build()?,
                url: url.trim_end_matches('/').to_owned(),
                token: super::secret(secrets, cfg.catalog_token_secret.as_ref()),
            }),
        };
        Ok(UpsertEntity {
            producer,
            topic: cfg.topic.clone(),
            topics,
            catalog,
        })
    }
}

impl Backend for UpsertEntity {
    fn kind(&self) -> &'static str {
        "UPSERT_ENTITY"
    }

    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a> {
        Box::pin(self.upsert(req))
    }

    fn destination(&self, _req: &Request) -> Option<String> {
        super::host_port(&self.catalog.as_ref()?.url)
    }
}

/// The entity record: validated and normalised from `mapping`.
pub fn entity(inv: &Map<String, Value>) -> Result<(String, String, Value), Invalid> {
    let blueprint = required_str(inv, "blueprintIdentifier")?.to_owned();
    let mapping = match inv.get("mapping") {
        Some(Value::Object(m)) => m,
        None | Some(Value::Null) => return Err(Invalid::new("mapping", "missing")),
        Some(other) => {
            return Err(Invalid::new(
                "mapping",
                format!("expected object, got {other}"),
            ))
        }
    };
    let identifier = match mapping.get("identifier") {
        Some(Value::String(s)) if !s.trim().is_empty() => s.clone(),
        Some(Value::String(_)) => return Err(Invalid::new("mapping.identifier", "empty string")),
        None | Some(Value::Null) => return Err(Invalid::new("mapping.identifier", "missing")),
        Some(other) => {
            return Err(Invalid::new(
                "mapping.identifier",
                format!("expected string, got {other}"),
            ))
        }
    };
    if identifier.contains('/') {
        return Err(Invalid::new("mapping.identifier", "must not contain '/'"));
    }
    for field in ["title", "icon"] {
        if let Some(v) = mapping
            .get(field)
            .filter(|v| !v.is_null() && !v.is_string())
        {
            return Err(Invalid::new(
                &format!("mapping.{field}"),
                format!("expected string, got {v}"),
            ));
        }
    }
    if let Some(team) = mapping.get("team").filter(|t| !t.is_null()) {
        if !is_str_or_strs(team) {
            return Err(Invalid::new(
                "mapping.team",
                format!("expected a string or a list of strings, got {team}"),
            ));
        }
    }
    match mapping.get("properties") {
        None | Some(Value::Null) | Some(Value::Object(_)) => {}
        Some(other) => {
            return Err(Invalid::new(
                "mapping.properties",
                format!("expected object, got {other}"),
            ))
        }
    }
    match mapping.get("relations") {
        None | Some(Value::Null) => {}
        Some(Value::Object(rels)) => {
            for (name, v) in rels {
                if !(v.is_null() || is_str_or_strs(v)) {
                    return Err(Invalid::new(
                        &format!("mapping.relations.{name}"),
                        format!("expected a string, a list of strings or null, got {v}"),
                    ));
                }
            }
        }
        Some(other) => {
            return Err(Invalid::new(
                "mapping.relations",
                format!("expected object, got {other}"),
            ))
        }
    }
    let mut out = Map::new();
    out.insert("identifier".into(), Value::String(identifier.clone()));
    out.insert("blueprint".into(), Value::String(blueprint.clone()));
    for field in ["title", "icon", "team"] {
        if let Some(v) = mapping.get(field).filter(|v| !v.is_null()) {
            out.insert(field.into(), v.clone());
        }
    }
    out.insert(
        "properties".into(),
        mapping
            .get("properties")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(json!({})),
    );
    out.insert(
        "relations".into(),
        mapping
            .get("relations")
            .filter(|v| !v.is_null())
            .cloned()
            .unwrap_or(json!({})),
    );
    Ok((blueprint, identifier, Value::Object(out)))
}

fn is_str_or_strs(v: &Value) -> bool {
    match v {
        Value::String(_) => true,
        Value::Array(items) => items.iter().all(Value::is_string),
        _ => false,
    }
}

impl UpsertEntity {
    async fn upsert(&self, req: &Request) -> Report {
        let (blueprint, identifier, entity) = match entity(&req.invocation) {
            Ok(e) => e,
            Err(invalid) => return invalid.into(),
        };
        let spec = TopicSpec {
            name: &self.topic,
            compacted: true,
            max_message_bytes: None,
        };
        if let Err(e) = self.topics.ensure(spec, true).await {
            let mut r = Report::new(
                Outcome::Retryable,
                format!("entities topic {}: {e}", self.topic),
            );
            r.error_class = Some("kafka");
            return r;
        }
        let key = format!("{blueprint}/{identifier}");
        let bytes = serde_json::to_vec(&entity).expect("a JSON value always serialises");
        let headers = OwnedHeaders::new().insert(Header {
            key: "switchyard-run-id",
            value: Some(req.run_id.as_str()),
        });
        let record = FutureRecord::to(&self.topic)
            .key(&key)
            .payload(&bytes)
            .headers(headers);
        let sent = self.producer.send(record, Duration::from_secs(5)).await;
        let delivery = match sent {
            Ok(d) => d,
            Err((e, _)) => {
                let mut r = Report::new(
                    Outcome::Retryable,
                    format!("writing {key} to {} failed: {e}", self.topic),
                );
                r.error_class = Some("kafka");
                return r;
            }
        };
        let written = format!(
            "upserted {key} ({}/{}@{})",
            self.topic, delivery.partition, delivery.offset
        );
        let Some(catalog) = &self.catalog else {
            let mut r = Report::new(Outcome::Succeeded, written.clone());
            r.log = Some(written);
            return r;
        };
        let url = format!(
            "{}/blueprints/{}/entities/{}",
            catalog.url,
            enc(&blueprint),
            enc(&identifier)
        );
        let mut put = catalog
            .client
            .put(&url)
            .header("Idempotency-Key", &req.run_id)
            .json(&entity);
        if let Some(t) = &catalog.token {
            put = put.bearer_auth(t);
        }
        match http::exchange(put, "catalog").await {
            Ok(ex) if ex.status.is_success() => {
                let summary = format!("{written}; catalog HTTP {}", ex.status.as_u16());
                let mut r = Report::new(Outcome::Succeeded, summary);
                r.log = Some(written);
                r
            }
            Ok(ex) => {
                let mut r = http::failure(&ex, "catalog ");
                r.log = Some(written);
                r
            }
            Err(mut r) => {
                r.log = Some(written);
                r
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(v: Value) -> Map<String, Value> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn valid_entity_is_normalised() {
        let (bp, id, e) = entity(&inv(json!({"blueprintIdentifier": "service", "mapping": {
            "identifier": "svc-a", "title": "SVC-A", "team": ["a", "b"], "icon": "Microservice",
            "properties": {"owner": "x"}, "relations": {"domain": "payments", "deps": ["b"], "none": null}}})))
        .unwrap();
        assert_eq!((bp.as_str(), id.as_str()), ("service", "svc-a"));
        assert_eq!(e["team"], json!(["a", "b"]));
        assert_eq!(e["relations"]["deps"], json!(["b"]));
        assert_eq!(e["blueprint"], "service");
    }

    #[test]
    fn validation_errors_name_the_field() {
        let cases = [
            (json!({"mapping": {"identifier": "a"}}), "invocationMethod.blueprintIdentifier: missing"),
            (json!({"blueprintIdentifier": "s", "mapping": {"identifier": ""}}), "invocationMethod.mapping.identifier: empty string"),
            (json!({"blueprintIdentifier": "s", "mapping": {}}), "invocationMethod.mapping.identifier: missing"),
            (json!({"blueprintIdentifier": "s", "mapping": {"identifier": "a", "team": 5}}), "invocationMethod.mapping.team: expected a string or a list of strings, got 5"),
            (json!({"blueprintIdentifier": "s", "mapping": {"identifier": "a", "relations": {"d": [1]}}}), "invocationMethod.mapping.relations.d: expected a string, a list of strings or null, got [1]"),
        ];
        for (v, want) in cases {
            let err = Report::from(entity(&inv(v)).unwrap_err());
            assert_eq!(err.summary, want);
            assert_eq!(err.outcome, Outcome::Permanent);
        }
    }

    #[test]
    fn path_segments_are_encoded() {
        assert_eq!(enc("a b/c"), "a%20b%2Fc");
    }
}
