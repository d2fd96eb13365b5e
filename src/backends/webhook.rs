//! WEBHOOK: one HTTP request per attempt (Port fields `url`, `method`, `headers`, `body`,
//! `synchronized`, plus `query`: parameters added to the URL).
//!
//! - Every request carries `Idempotency-Key: <run id>`.
//! - With a signing secret, `X-Port-Timestamp` and `X-Port-Signature` sign the exact body
//!   bytes sent (Port's scheme, [`crate::port::signature`]).
//! - `synchronized: true`: 2xx is SUCCESS with the body as a `response` update.
//! - `synchronized: false`: 2xx leaves the run IN_PROGRESS ("request accepted: HTTP 202").
//! - Any other status fails: 408, 425, 429 and 5xx (and connection errors) are retryable,
//!   401 and 403 are credential failures, other statuses are permanent.

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use super::{flag, http, AttemptFuture, Backend, Invalid, Report, Request};
use crate::config::WebhookConfig;
use crate::policy::{Policy, PolicyResolver, SystemLookup};
use crate::port::signature;

pub struct Webhook {
    client: reqwest::Client,
    policy: std::sync::Arc<Policy>,
    /// Signs every request when set.
    signing_secret: Option<String>,
    /// Port mode: bodies are written as the agent's Python writes them (see
    /// [`crate::port::json::python_dumps`]), and a null body is signed as `null`.
    python_bodies: bool,
}

impl Webhook {
    pub fn new(
        cfg: &WebhookConfig,
        signing_secret: Option<String>,
        port_mode: bool,
    ) -> anyhow::Result<Self> {
        let policy = std::sync::Arc::new(
            Policy::new(&cfg.destinations, port_mode)
                .map_err(|e| anyhow::anyhow!("backends.webhook.destinations: {}", e.join("; ")))?,
        );
        if !cfg.verify_tls {
            tracing::warn!(
                "backends.webhook.verify_tls is off: webhook TLS certificates are not checked"
            );
        }
        let mut builder = reqwest::Client::builder();
        for cert in crate::net::extra_roots(&cfg.ca_certificates) {
            builder = builder.add_root_certificate(cert);
        }
        let client = builder
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .danger_accept_invalid_certs(!cfg.verify_tls)
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            // Every connection goes to an address the policy allowed after resolution.
            .dns_resolver(std::sync::Arc::new(PolicyResolver::new(
                policy.clone(),
                std::sync::Arc::new(SystemLookup),
            )))
            .redirect(crate::policy::redirects(policy.clone()))
            .no_proxy()
            .build()?;
        Ok(Webhook {
            client,
            policy,
            signing_secret,
            python_bodies: port_mode,
        })
    }
}

impl Backend for Webhook {
    fn kind(&self) -> &'static str {
        "WEBHOOK"
    }

    fn attempt<'a>(&'a self, req: &'a Request) -> AttemptFuture<'a> {
        Box::pin(self.call(req))
    }

    fn destination(&self, req: &Request) -> Option<String> {
        super::host_port(req.invocation.get("url")?.as_str()?)
    }
}

impl Webhook {
    async fn call(&self, req: &Request) -> Report {
        let inv = &req.invocation;
        let url = match inv.get("url") {
            Some(Value::String(u)) if !u.is_empty() => u,
            Some(Value::String(_)) | None => return Report::invalid("url", "missing"),
            Some(other) => return Report::invalid("url", format!("expected string, got {other}")),
        };
        let mut url = match reqwest::Url::parse(url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => u,
            Ok(u) => return Report::invalid("url", format!("unsupported scheme {}", u.scheme())),
            Err(e) => return Report::invalid("url", e),
        };
        let method = match inv.get("method") {
            None | Some(Value::Null) => Method::POST,
            Some(Value::String(m)) => match m.to_ascii_uppercase().as_str() {
                "POST" => Method::POST,
                "PUT" => Method::PUT,
                "PATCH" => Method::PATCH,
                "DELETE" => Method::DELETE,
                "GET" => Method::GET,
                other => {
                    return Report::invalid(
                        "method",
                        format!("{other} is not one of POST, PUT, PATCH, DELETE, GET"),
                    )
                }
            },
            Some(other) => {
                return Report::invalid("method", format!("expected string, got {other}"))
            }
        };
        let synchronized = match flag(inv.get("synchronized")) {
            Ok(s) => s,
            Err(e) => return Report::invalid("synchronized", e),
        };
        if let Err(invalid) = add_query(&mut url, inv.get("query"), self.python_bodies) {
            return invalid.into();
        }
        if let Err(refused) = self.policy.check_url(&url) {
            return http::refused(&refused);
        }

        let mut request = self
            .client
            .request(method.clone(), url.clone())
            .header("Idempotency-Key", &req.run_id);
        match inv.get("headers") {
            None | Some(Value::Null) => {}
            Some(Value::Object(hs)) => {
                for (name, value) in hs {
                    let text = match value {
                        Value::String(s) => s.clone(),
                        Value::Null => continue,
                        other => other.to_string(),
                    };
                    let Ok(n) = HeaderName::from_bytes(name.as_bytes()) else {
                        return Report::invalid(
                            &format!("headers.{name}"),
                            "not a valid header name",
                        );
                    };
                    let Ok(v) = HeaderValue::from_str(&text) else {
                        return Report::invalid(
                            &format!("headers.{name}"),
                            "not a valid header value",
                        );
                    };
                    request = request.header(n, v);
                }
            }
            Some(other) => {
                return Report::invalid("headers", format!("expected object, got {other}"))
            }
        }
        let mut bytes = Vec::new();
        if let Some(body) = inv.get("body").filter(|b| !b.is_null()) {
            bytes = if self.python_bodies {
                crate::port::json::python_dumps(body).into_bytes()
            } else {
                serde_json::to_vec(body).expect("a JSON value always serialises")
            };
            request = request.header(CONTENT_TYPE, "application/json");
        }
        if let Some(secret) = &self.signing_secret {
            // Signed over the very bytes that go on the wire (the agent signs a missing
            // body as `null`).
            let ts = signature::now_secs().to_string();
            let signed: &[u8] = if bytes.is_empty() && self.python_bodies {
                b"null"
            } else {
                &bytes
            };
            let sig = signature::sign(secret, &ts, signed);
            request = request
                .header(signature::TIMESTAMP, ts)
                .header(signature::SIGNATURE, sig);
        }
        if !bytes.is_empty() {
            request = request.body(bytes);
        }

        let target = format!("{} {}", method, url.host_str().unwrap_or("?"));
        match http::exchange(request, &target).await {
            Ok(ex) => {
                let mut report = http::classify(&ex, synchronized);
                report.exchange = Some(std::sync::Arc::new(ex));
                report
            }
            Err(report) => report,
        }
    }
}

/// Append `query` (an object: strings as they are, lists as repeated parameters, other
/// values as compact JSON, nulls left out) to the URL's query string. `python` (Port
/// mode): booleans and numbers as the agent's Python writes them (`True`, `1e+21`).
fn add_query(url: &mut reqwest::Url, query: Option<&Value>, python: bool) -> Result<(), Invalid> {
    let q = match query {
        None | Some(Value::Null) => return Ok(()),
        Some(Value::Object(q)) => q,
        Some(other) => {
            return Err(Invalid::new(
                "query",
                format!("expected object, got {other}"),
            ))
        }
    };
    if q.is_empty() {
        return Ok(());
    }
    let mut pairs = url.query_pairs_mut();
    for (name, value) in q {
        let values = match value {
            Value::Array(items) => items.iter().collect(),
            v => vec![v],
        };
        for v in values {
            match v {
                Value::Null => {}
                Value::String(s) => {
                    pairs.append_pair(name, s);
                }
                Value::Bool(b) if python => {
                    pairs.append_pair(name, if *b { "True" } else { "False" });
                }
                other if python => {
                    pairs.append_pair(name, &crate::port::json::python_dumps(other));
                }
                other => {
                    pairs.append_pair(name, &other.to_string());
                }
            }
        }
    }
    Ok(())
}
