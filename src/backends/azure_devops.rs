//! AZURE_DEVOPS: trigger a pipeline through an Azure DevOps "Incoming WebHook" service
//! connection (Port fields `org`, `webhook`, `payload`).
//!
//! `POST {base}/{org}/_apis/public/distributedtask/webhooks/{webhook}?api-version=6.0-preview`
//! with the rendered payload as the body, signed with HMAC-SHA1 over the exact bytes sent:
//! header `{signature_header}: sha1=<hex>` (the header the service connection checks).
//! 2xx leaves the run IN_PROGRESS (the pipeline reports back); anything else is FAILURE.

use hmac::{Hmac, Mac};
use reqwest::header::CONTENT_TYPE;
use serde_json::{Map, Value};
use sha1::Sha1;

use super::{http, required_str, AttemptFuture, Backend, Report, Request};
use crate::config::AzureDevopsConfig;

pub struct AzureDevops {
    client: reqwest::Client,
    base: String,
    header: String,
    secret: Option<String>,
}

impl AzureDevops {
    pub fn new(cfg: &AzureDevopsConfig, secrets: &Map<String, Value>) -> anyhow::Result<Self> {
        Ok(AzureDevops {
            client: reqwest::Client::builder()
                .connect_timeout(cfg.timeout)
                .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
                .build()?,
            base: cfg.base_url.trim_end_matches('/').to_owned(),
            header: cfg.signature_header.clone(),
            secret: super::secret(secrets, cfg.secret.as_ref()),
        })
    }
}

impl Backend for AzureDevops {
    fn kind(&self) -> &'static str {
        "AZURE_DEVOPS"
    }

    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a> {
        Box::pin(self.trigger(req))
    }

    fn destination(&self, _req: &Request) -> Option<String> {
        super::host_port(&self.base)
    }
}

/// `sha1=<hex of HMAC-SHA1(secret, body)>`, the Incoming WebHook signature format.
pub fn signature(secret: &str, body: &[u8]) -> String {
    let mut mac =
        Hmac::<Sha1>::new_from_slice(secret.as_bytes()).expect("HMAC accepts keys of any length");
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha1={hex}")
}

impl AzureDevops {
    async fn trigger(&self, req: &Request) -> Report {
        let inv = &req.invocation;
        let (org, webhook) = match (required_str(inv, "org"), required_str(inv, "webhook")) {
            (Ok(o), Ok(w)) => (o, w),
            (Err(e), _) | (_, Err(e)) => return e.into(),
        };
        let payload = match inv.get("payload") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(p @ (Value::Object(_) | Value::Array(_))) => p.clone(),
            Some(other) => {
                return Report::invalid("payload", format!("expected object or array, got {other}"))
            }
        };
        let url = format!(
            "{}/{}/_apis/public/distributedtask/webhooks/{}?api-version=6.0-preview",
            self.base,
            super::http::enc(org),
            super::http::enc(webhook)
        );
        let body = serde_json::to_vec(&payload).expect("a JSON value always serialises");
        let mut request = self
            .client
            .post(&url)
            .header(CONTENT_TYPE, "application/json")
            .header("Idempotency-Key", &req.run_id);
        if let Some(secret) = &self.secret {
            request = request.header(self.header.as_str(), signature(secret, &body));
        }
        let target = format!("Azure DevOps {org}/{webhook}");
        match http::exchange(request.body(body), &target).await {
            Ok(ex) if ex.status.is_success() => {
                let status = ex.status;
                let mut r = http::classify(&ex, false);
                r.log = Some(format!(
                    "Azure DevOps webhook {webhook} accepted: HTTP {}",
                    status.as_u16()
                ));
                r
            }
            Ok(ex) => http::failure(&ex, "Azure DevOps "),
            Err(r) => r,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_github_style_hmac_sha1() {
        // RFC 2202 test case 2: key "Jefe", data "what do ya want for nothing?".
        assert_eq!(
            signature("Jefe", b"what do ya want for nothing?"),
            "sha1=effcdf6ae5eb2fa2d27416d5f184df9c259a7c79"
        );
    }
}
