//! Shared HTTP plumbing for backends: one exchange with a capped body read, and the
//! default classification of a response (DESIGN.md "Failure classes").

use std::time::Instant;

use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

use super::{error_chain, Outcome, Report};

/// Largest response body read; the rest is discarded.
const MAX_BODY: usize = 1024 * 1024;
/// Largest response kept in a `response` run update.
const MAX_STORED_RESPONSE: usize = 256 * 1024;
/// How much of an error body goes into a failure summary.
const SUMMARY_BODY: usize = 1024;

/// Send `request` and read the response body (up to 1 MiB). `target` names the
/// destination in error summaries ("POST deployer.internal"). Connection and read
/// errors come back as a retryable report.
pub async fn exchange(
    request: RequestBuilder,
    target: &str,
) -> Result<(StatusCode, Vec<u8>, u128), Report> {
    let start = Instant::now();
    let failed = |what: &str, e: &reqwest::Error| {
        let mut r = Report::new(
            Outcome::Retryable,
            format!("{target}: {what}: {}", error_chain(e)),
        );
        r.error_class = Some("connection");
        r
    };
    let mut response = request
        .send()
        .await
        .map_err(|e| failed("request failed", &e))?;
    let status = response.status();
    let mut body = Vec::new();
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| failed("reading the response failed", &e))?
    {
        let room = MAX_BODY.saturating_sub(body.len());
        body.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if room <= chunk.len() {
            break;
        }
    }
    Ok((status, body, start.elapsed().as_millis()))
}

/// Map an HTTP response to a report (see the module rules).
pub fn classify(status: StatusCode, body: &[u8], synchronized: bool, ms: u128) -> Report {
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
        failure(status, body, "")
    }
}

/// A non-2xx response: 401/403 credentials, 408/425/429/5xx retryable, other permanent.
/// The summary names the status and the first KiB of the body, after `prefix`.
pub fn failure(status: StatusCode, body: &[u8], prefix: &str) -> Report {
    let code = status.as_u16();
    let outcome = match code {
        401 | 403 => Outcome::CredentialsRejected,
        408 | 425 | 429 | 500..=599 => Outcome::Retryable,
        _ => Outcome::Permanent,
    };
    let reason = status.canonical_reason().unwrap_or("");
    let text = head(body, SUMMARY_BODY);
    let summary = if text.is_empty() {
        format!("{prefix}HTTP {code} {reason}")
            .trim_end()
            .to_owned()
    } else {
        format!("{prefix}HTTP {code} {reason}: {text}")
    };
    let mut r = Report::new(outcome, summary);
    r.response = stored_response(body);
    r.error_class = Some("http_status");
    r
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
