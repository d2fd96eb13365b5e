//! WEBHOOK: one HTTP request per attempt (Port fields `url`, `method`, `headers`, `body`,
//! `synchronized`).
//!
//! - Every request carries `Idempotency-Key: <run id>`.
//! - `synchronized: true`: 2xx is SUCCESS with the body as a `response` update.
//! - `synchronized: false`: 2xx leaves the run IN_PROGRESS ("request accepted: HTTP 202").
//! - Any other status fails: 408, 425, 429 and 5xx (and connection errors) are retryable,
//!   401 and 403 are credential failures, other statuses are permanent.

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::Method;
use serde_json::Value;

use super::{flag, http, AttemptFuture, Backend, Report, Request};
use crate::config::PoolConfig;

pub struct Webhook {
    client: reqwest::Client,
}

impl Webhook {
    pub fn new(cfg: &PoolConfig) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .connect_timeout(cfg.timeout)
            .pool_max_idle_per_host(cfg.concurrency)
            .user_agent(concat!("switchyard/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Webhook { client })
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
        let url = match reqwest::Url::parse(url) {
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
        if let Some(body) = inv.get("body").filter(|b| !b.is_null()) {
            let bytes = serde_json::to_vec(body).expect("a JSON value always serialises");
            request = request.header(CONTENT_TYPE, "application/json").body(bytes);
        }

        let target = format!("{} {}", method, url.host_str().unwrap_or("?"));
        match http::exchange(request, &target).await {
            Ok(ex) => http::classify(&ex, synchronized),
            Err(report) => report,
        }
    }
}
