//! A Confluent-compatible schema registry client: writer schemas by id, and registering
//! the run-update schema under the status topic's subject.

use std::time::Duration;

use apache_avro::Schema;
use serde_json::Value as Json;

use super::avro::AvroError;

/// A Confluent-compatible schema registry.
pub(crate) struct Registry {
    base: String,
    http: reqwest::Client,
}

impl Registry {
    pub(crate) fn new(base: &str) -> Self {
        Registry {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("a TLS backend is available"),
        }
    }

    pub(crate) async fn fetch(&self, id: u32) -> Result<Schema, AvroError> {
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

    pub(crate) async fn register(&self, subject: &str, schema: &str) -> Result<u32, AvroError> {
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
