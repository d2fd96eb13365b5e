//! WEBHOOK: one HTTP request per attempt (Port fields `url`, `method`, `headers`, `body`,
//! `synchronized`).
//!
//! - Every request carries `Idempotency-Key: <run id>`.
//! - `synchronized: true`: 2xx is SUCCESS with the body as a `response` update.
//! - `synchronized: false`: 2xx leaves the run IN_PROGRESS ("request accepted: HTTP 202").
//! - Any other status fails: 408, 425, 429 and 5xx (and connection errors) are retryable,
//!   401 and 403 are credential failures, other statuses are permanent.

use std::time::Instant;

use reqwest::header::{HeaderName, HeaderValue, CONTENT_TYPE};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::{error_chain, flag, AttemptFuture, Backend, Outcome, Report, Request};
use crate::config::PoolConfig;

/// Largest response body read; the rest is discarded.
const MAX_BODY: usize = 1024 * 1024;
/// Largest response kept in a `response` run update.
const MAX_STORED_RESPONSE: usize = 256 * 1024;
/// How much of an error body goes into a failure summary.
const SUMMARY_BODY: usize = 1024;

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

        let start = Instant::now();
        let target = format!("{} {}", method, url.host_str().unwrap_or("?"));
        let mut response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let mut r = Report::new(
                    Outcome::Retryable,
                    format!("{target}: request failed: {}", error_chain(&e)),
                );
                r.error_class = Some("connection");
                return r;
            }
        };
        let status = response.status();
        let mut body = Vec::new();
        loop {
            match response.chunk().await {
                Ok(Some(chunk)) => {
                    let room = MAX_BODY.saturating_sub(body.len());
                    body.extend_from_slice(&chunk[..chunk.len().min(room)]);
                    if room <= chunk.len() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    let mut r = Report::new(
                        Outcome::Retryable,
                        format!("{target}: reading the response failed: {}", error_chain(&e)),
                    );
                    r.error_class = Some("connection");
                    return r;
                }
            }
        }
        let ms = start.elapsed().as_millis();
        classify(status, &body, synchronized, ms)
    }
}

/// Map an HTTP response to a report (see the module rules).
fn classify(status: StatusCode, body: &[u8], synchronized: bool, ms: u128) -> Report {
    let code = status.as_u16();
    if status.is_success() {
        if synchronized {
            let mut r = Report::new(Outcome::Succeeded, format!("HTTP {code} in {ms} ms"));
            r.response = stored_response(body);
            r
        } else {
            let mut r = Report::new(Outcome::Accepted, format!("request accepted: HTTP {code}"));
            r.log = Some(format!("request accepted: HTTP {code}"));
            r
        }
    } else {
        let outcome = match code {
            401 | 403 => Outcome::CredentialsRejected,
            408 | 425 | 429 | 500..=599 => Outcome::Retryable,
            _ => Outcome::Permanent,
        };
        let reason = status.canonical_reason().unwrap_or("");
        let text = head(body, SUMMARY_BODY);
        let summary = if text.is_empty() {
            format!("HTTP {code} {reason}").trim_end().to_owned()
        } else {
            format!("HTTP {code} {reason}: {text}")
        };
        let mut r = Report::new(outcome, summary);
        r.response = stored_response(body);
        r.error_class = Some("http_status");
        r
    }
}

/// The body as JSON when it parses, as text when it is UTF-8, else nothing.
fn stored_response(body: &[u8]) -> Option<Value> {
    if body.is_empty() || body.len() > MAX_STORED_RESPONSE {
        return None;
    }
    serde_json::from_slice(body).ok().or_else(|| {
        std::str::from_utf8(body)
            .ok()
            .map(|s| Value::String(s.to_owned()))
    })
}

/// The first `max` bytes of `body` as text, cut on a character boundary.
fn head(body: &[u8], max: usize) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(max)]);
    let mut s = text.trim().to_owned();
    if body.len() > max {
        s.push('…');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_follow_the_design_defaults() {
        let c = |code: u16| classify(StatusCode::from_u16(code).unwrap(), b"", true, 1).outcome;
        assert_eq!(c(200), Outcome::Succeeded);
        assert_eq!(c(204), Outcome::Succeeded);
        for code in [408, 425, 429, 500, 502, 503] {
            assert_eq!(c(code), Outcome::Retryable, "{code}");
        }
        assert_eq!(c(401), Outcome::CredentialsRejected);
        assert_eq!(c(403), Outcome::CredentialsRejected);
        for code in [400, 404, 409, 422] {
            assert_eq!(c(code), Outcome::Permanent, "{code}");
        }
    }

    #[test]
    fn async_success_stays_in_progress_with_a_log() {
        let r = classify(StatusCode::ACCEPTED, b"", false, 3);
        assert_eq!(r.outcome, Outcome::Accepted);
        assert_eq!(r.log.as_deref(), Some("request accepted: HTTP 202"));
    }

    #[test]
    fn failure_summary_names_status_and_first_kib_of_body() {
        let body = "x".repeat(5000);
        let r = classify(StatusCode::BAD_GATEWAY, body.as_bytes(), true, 3);
        assert!(
            r.summary.starts_with("HTTP 502 Bad Gateway: xxx"),
            "{}",
            r.summary
        );
        assert_eq!(r.summary.chars().filter(|&c| c == 'x').count(), 1024);
    }

    #[test]
    fn sync_response_is_json_or_text() {
        let r = classify(StatusCode::OK, br#"{"id": 77}"#, true, 1);
        assert_eq!(r.response, Some(serde_json::json!({"id": 77})));
        let r = classify(StatusCode::OK, b"done", true, 1);
        assert_eq!(r.response, Some(Value::String("done".into())));
    }
}
