//! Shared HTTP plumbing for backends: one exchange with a capped body read, and the
//! default classification of a response (DESIGN.md "Failure classes").

use std::time::Instant;

use reqwest::{RequestBuilder, StatusCode};
use serde_json::Value;

use super::{error_chain, Outcome, Report};

pub use crate::net::{read_capped, MAX_BODY};
/// Largest response kept in a `response` run update.
const MAX_STORED_RESPONSE: usize = 256 * 1024;
/// How much of an error body goes into a failure summary.
const SUMMARY_BODY: usize = 1024;

/// A response, read.
#[derive(Debug, Clone)]
pub struct Exchange {
    pub status: StatusCode,
    pub body: Vec<u8>,
    /// Time from sending to the end of the body, in milliseconds.
    pub ms: u128,
    /// What the server asked us to wait before trying again (see [`wait_hint`]).
    pub retry_after: Option<std::time::Duration>,
    pub headers: reqwest::header::HeaderMap,
}

/// Send `request` and read the response body (up to 1 MiB). `target` names the
/// destination in error summaries ("POST deployer.internal"). Connection and read
/// errors come back as a retryable report.
pub async fn exchange(request: RequestBuilder, target: &str) -> Result<Exchange, Report> {
    let start = Instant::now();
    let request = match crate::telemetry::trace::current() {
        Some(tp) => request.header(crate::telemetry::trace::HEADER, tp),
        None => request,
    };
    let failed = |what: &str, e: &reqwest::Error| {
        if let Some(refused) = crate::policy::refusal_in(e) {
            return refused_report(refused);
        }
        let mut r = Report::new(
            Outcome::Retryable,
            format!("{target}: {what}: {}", error_chain(e)),
        );
        r.error_class = Some("connection");
        r
    };
    let response = request
        .send()
        .await
        .map_err(|e| failed("request failed", &e))?;
    let status = response.status();
    let retry_after = wait_hint(response.headers(), std::time::Duration::from_secs(3600));
    let headers = response.headers().clone();
    let body = read_capped(response, MAX_BODY)
        .await
        .map_err(|e| failed("reading the response failed", &e))?;
    Ok(Exchange {
        status,
        body,
        ms: start.elapsed().as_millis(),
        retry_after,
        headers,
    })
}

/// Percent-encode one URL path segment.
pub fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A destination the policy refused: a permanent failure, no request made.
pub fn refused(refused: &crate::policy::Refused) -> Report {
    crate::telemetry::metrics::get()
        .refusals
        .with_label_values(&["destination"])
        .inc();
    refused_report(refused)
}

fn refused_report(refused: &crate::policy::Refused) -> Report {
    let mut r = Report::new(Outcome::Permanent, refused.0.clone());
    r.error_class = Some("destination");
    r
}

/// Map an HTTP response to a report (see the module rules).
pub fn classify(ex: &Exchange, synchronized: bool) -> Report {
    let (status, body, ms) = (ex.status, ex.body.as_slice(), ex.ms);
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
        failure(ex, "")
    }
}

/// A non-2xx response: 401/403 credentials, 408/425/429/5xx retryable, other permanent.
/// The summary names the status and the first KiB of the body, after `prefix`.
pub fn failure(ex: &Exchange, prefix: &str) -> Report {
    let (status, body) = (ex.status, ex.body.as_slice());
    let code = status.as_u16();
    let outcome = match code {
        401 | 403 => Outcome::CredentialsRejected,
        c if crate::config::retried_by_default(c) => Outcome::Retryable,
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
    r.http_status = Some(code);
    r.retry_after = ex.retry_after;
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

/// How long the provider asks us to wait, from `Retry-After` (seconds or HTTP date), or
/// from an exhausted `RateLimit-Remaining`/`x-ratelimit-remaining` with its reset time
/// (`RateLimit-Reset`/`x-ratelimit-reset`, epoch seconds). Capped at `cap`.
pub fn wait_hint(
    headers: &reqwest::header::HeaderMap,
    cap: std::time::Duration,
) -> Option<std::time::Duration> {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(v) = get("retry-after") {
        let wait = match v.parse::<u64>() {
            Ok(secs) => Some(Duration::from_secs(secs)),
            Err(_) => httpdate::parse_http_date(v)
                .ok()
                .map(|at| at.duration_since(SystemTime::now()).unwrap_or_default()),
        };
        if let Some(w) = wait {
            return Some(w.min(cap));
        }
    }
    let remaining = get("ratelimit-remaining").or_else(|| get("x-ratelimit-remaining"))?;
    if remaining.parse::<u64>().ok()? > 0 {
        return None;
    }
    let reset: u64 = get("ratelimit-reset")
        .or_else(|| get("x-ratelimit-reset"))?
        .parse()
        .ok()?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    Some(Duration::from_secs(reset.saturating_sub(now).max(1)).min(cap))
}

/// One poll of a followed run: the JSON body and any rate-limit hint, or the
/// [`Progress`](crate::backends::Progress) to report instead (a wait when the provider
/// limits us, a failure otherwise) with the HTTP status when there was one.
pub async fn poll_json(
    request: RequestBuilder,
    provider: &str,
    cap: std::time::Duration,
) -> Result<(Value, Option<std::time::Duration>), (crate::backends::Progress, Option<u16>)> {
    use crate::backends::Progress;
    let response = request
        .send()
        .await
        .map_err(|e| (Progress::Failed(error_chain(&e)), None))?;
    let status = response.status();
    let code = Some(status.as_u16());
    let wait = wait_hint(response.headers(), cap);
    if matches!(status.as_u16(), 403 | 429) {
        if let Some(w) = wait {
            return Err((Progress::Wait(w), code));
        }
    }
    let body = response
        .bytes()
        .await
        .map_err(|e| (Progress::Failed(error_chain(&e)), code))?;
    if !status.is_success() {
        let ex = Exchange {
            status,
            body: body.to_vec(),
            ms: 0,
            retry_after: wait,
            headers: reqwest::header::HeaderMap::new(),
        };
        let summary = failure(&ex, &format!("{provider} ")).summary;
        return Err((Progress::Failed(summary), code));
    }
    Ok((serde_json::from_slice(&body).unwrap_or(Value::Null), wait))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(code: u16, body: &[u8]) -> Exchange {
        Exchange {
            status: StatusCode::from_u16(code).unwrap(),
            body: body.to_vec(),
            ms: 1,
            retry_after: None,
            headers: reqwest::header::HeaderMap::new(),
        }
    }

    #[test]
    fn wait_hints_follow_retry_after_and_exhausted_rate_limits() {
        use reqwest::header::{HeaderMap, HeaderValue};
        use std::time::{Duration, SystemTime, UNIX_EPOCH};
        let cap = Duration::from_secs(600);
        let mut h = HeaderMap::new();
        assert_eq!(wait_hint(&h, cap), None);
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(wait_hint(&h, cap), Some(Duration::from_secs(7)));
        assert_eq!(
            wait_hint(&h, Duration::from_secs(3)),
            Some(Duration::from_secs(3))
        );
        let mut h = HeaderMap::new();
        let reset = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 30;
        h.insert("ratelimit-remaining", HeaderValue::from_static("5"));
        h.insert(
            "ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        assert_eq!(wait_hint(&h, cap), None, "budget left: no wait");
        h.insert("ratelimit-remaining", HeaderValue::from_static("0"));
        let w = wait_hint(&h, cap).unwrap();
        assert!(
            w >= Duration::from_secs(28) && w <= Duration::from_secs(30),
            "{w:?}"
        );
        // GitHub spells them x-ratelimit-*.
        let mut h = HeaderMap::new();
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&reset.to_string()).unwrap(),
        );
        assert!(wait_hint(&h, cap).unwrap() >= Duration::from_secs(28));
        let mut h = HeaderMap::new();
        let date = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(20));
        h.insert("retry-after", HeaderValue::from_str(&date).unwrap());
        let w = wait_hint(&h, cap).unwrap();
        assert!(
            w >= Duration::from_secs(18) && w <= Duration::from_secs(20),
            "{w:?}"
        );
    }

    #[test]
    fn status_classes_follow_the_design_defaults() {
        let c = |code: u16| classify(&ex(code, b""), true).outcome;
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
        let r = classify(&ex(202, b""), false);
        assert_eq!(r.outcome, Outcome::Accepted);
        assert_eq!(r.log.as_deref(), Some("request accepted: HTTP 202"));
    }

    #[test]
    fn failure_summary_names_status_and_first_kib_of_body() {
        let body = "x".repeat(5000);
        let r = classify(&ex(502, body.as_bytes()), true);
        assert!(
            r.summary.starts_with("HTTP 502 Bad Gateway: xxx"),
            "{}",
            r.summary
        );
        assert_eq!(r.summary.chars().filter(|&c| c == 'x').count(), 1024);
    }

    #[test]
    fn sync_response_is_json_or_text() {
        let r = classify(&ex(200, br#"{"id": 77}"#), true);
        assert_eq!(r.response, Some(serde_json::json!({"id": 77})));
        let r = classify(&ex(200, b"done"), true);
        assert_eq!(r.response, Some(Value::String("done".into())));
    }
}
