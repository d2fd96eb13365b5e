//! What a Port run reports once its request is answered: the agent's progress logs, the
//! response, and the agent's default report (reference §7.4) with the mapping's `report`
//! block applied on top.
//!
//! Defaults: a non-2xx response is FAILURE with "Failed to invoke the webhook with status
//! code: N. Response: <text>."; a 2xx of a synchronized run is SUCCESS; a 2xx of an async
//! run sets nothing (the run stays IN_PROGRESS for its backend to finish). A request that
//! got no response at all (connection error, timeout, open breaker) is FAILURE with
//! switchyard's summary; the agent would have crashed and reported nothing.

use serde_json::{json, Map, Value};

use crate::backends::http::Exchange;
use crate::backends::Report;
use crate::model::RunStatus;
use crate::port::envelope::{Kind, PortRun};
use crate::port::mapping::{Entry, Mapping, Prepared};

/// The first KiB of a response in logs and summaries.
const TEXT_IN_SUMMARY: usize = 1024;

pub const RECEIVED: &str = "An action message has been received";
pub const RECEIVED_NODE: &str = "A workflow node run has been received";
pub const PREPARING: &str = "Preparing the payload for the request";
pub const SENDING: &str = "Sending the request";
pub const FINISHED: &str = "Port agent finished processing the action run";
pub const FINISHED_NODE: &str = "Port agent finished processing the workflow node run";
pub const REPORTING_RESPONSE: &str = "Reporting the run response";
/// With the agent's trailing space.
pub const RESPONSE_REPORTED: &str = "The run response was reported successfully ";

/// A status update to write.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// `None`: no status change (a link, summary or external id on a running run).
    pub status: Option<RunStatus>,
    pub summary: Option<String>,
    pub link: Vec<String>,
    pub external_run_id: Option<String>,
    /// Node runs: `{status, data}` of a synchronized node's response (sent as `output`).
    pub node_response: Option<Value>,
}

/// Everything a finished request reports, in order.
#[derive(Debug, Clone, Default)]
pub struct Conclusion {
    /// "The request was successful with status code: 200", or why it failed.
    pub result_log: String,
    /// The backend's response (synchronized action runs with a non-empty body).
    pub response: Option<Value>,
    pub status: Option<Status>,
    /// The agent's closing log line (after a 2xx).
    pub finished: bool,
    /// jq errors and ignored report values.
    pub warnings: Vec<String>,
}

impl Conclusion {
    pub fn failed(&self) -> bool {
        self.status
            .as_ref()
            .is_some_and(|s| s.status == Some(RunStatus::Failure))
    }
}

/// Conclude a Port run from the pool's final report; `message` is the run's message as
/// the mapping read it (decrypted).
pub fn conclude(
    mapping: &Mapping,
    entry: &Entry,
    run: (&PortRun, &Value),
    prepared: &Prepared,
    report: &Report,
) -> Conclusion {
    conclude_with(mapping, entry, run, prepared, report, true)
}

/// [`conclude`]; `detailed` false (`DETAILED_LOGGING=false`) leaves the response text
/// out of the run log and the failure summary, as the agent does.
pub fn conclude_with(
    mapping: &Mapping,
    entry: &Entry,
    (run, message): (&PortRun, &Value),
    prepared: &Prepared,
    report: &Report,
    detailed: bool,
) -> Conclusion {
    let (kind, synchronized) = (run.kind, run.synchronized);
    let Some(ex) = report.exchange.as_deref() else {
        return Conclusion {
            result_log: format!("The request failed: {}", report.summary),
            status: Some(Status {
                status: Some(RunStatus::Failure),
                summary: Some(report.summary.clone()),
                link: Vec::new(),
                external_run_id: None,
                node_response: None,
            }),
            ..Conclusion::default()
        };
    };
    let code = ex.status.as_u16();
    let ok = ex.status.is_success();
    let text = String::from_utf8_lossy(&ex.body).into_owned();
    let parsed: Option<Value> = serde_json::from_slice(&ex.body).ok();
    let body = parsed
        .clone()
        .unwrap_or_else(|| Value::String(text.clone()));
    let has_body = !matches!(&body, Value::Null | Value::Bool(false))
        && body != json!("")
        && body != json!({})
        && body != json!([]);
    let short = head(&text);
    let mut c = Conclusion {
        result_log: match (ok, detailed) {
            (true, _) => {
                format!("Action invocation has completed successfully with status code: {code}")
            }
            (false, true) => {
                format!("Action invocation failed with status code: {code} and response: {short}")
            }
            (false, false) => format!("Action invocation failed with status code: {code}"),
        },
        finished: ok,
        ..Conclusion::default()
    };
    if synchronized && has_body && kind != Kind::Node {
        c.response = Some(body.clone());
    }
    let mut status = Status {
        status: match (ok, synchronized) {
            (false, _) => Some(RunStatus::Failure),
            (true, true) => Some(RunStatus::Success),
            (true, false) => None,
        },
        summary: (!ok).then(|| {
            let mut s = format!("Failed to invoke the webhook with status code: {code}.");
            if detailed {
                s.push_str(&format!(" Response: {short}"));
            }
            s
        }),
        link: Vec::new(),
        external_run_id: None,
        // The agent (v0.8.9) sends a node's output on success only, `{}` for no body.
        node_response: (kind == Kind::Node && synchronized && ok).then(|| {
            let data = if has_body { body.clone() } else { json!({}) };
            json!({"status": code, "data": data})
        }),
    };
    if kind == Kind::Node {
        // The agent ignores `report` for workflow node runs.
        c.status = status.status.map(|st| Status {
            status: Some(st),
            ..status
        });
        return c;
    }
    let context = json!({"body": message, "request": prepared.context(),
        "response": {"statusCode": code, "headers": headers(ex), "text": text, "json": parsed}});
    let o = mapping.report(entry, &context, &mut c.warnings);
    if let Some(v) = o.status {
        status.status = match v.as_str() {
            Some("SUCCESS") => Some(RunStatus::Success),
            Some("FAILURE") => Some(RunStatus::Failure),
            None if v.is_null() => None,
            _ => {
                c.warnings.push(format!(
                    "report.status: {v} is not \"SUCCESS\" or \"FAILURE\"; no status is set"
                ));
                None
            }
        };
    }
    if let Some(v) = o.summary {
        status.summary = text_of(v);
    }
    if let Some(v) = o.link {
        status.link = match v {
            Value::Null => Vec::new(),
            Value::String(s) => vec![s],
            Value::Array(items) => items.into_iter().filter_map(text_of).collect(),
            other => {
                c.warnings.push(format!(
                    "report.link: {other} is not a URL or a list of URLs; ignored"
                ));
                Vec::new()
            }
        };
    }
    if let Some(v) = o.external_run_id {
        status.external_run_id = text_of(v);
    }
    let empty = status.status.is_none()
        && status.summary.is_none()
        && status.link.is_empty()
        && status.external_run_id.is_none();
    if !empty {
        c.status = Some(status);
    }
    c
}

fn text_of(v: Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

/// `response.headers` as the agent's mappings read them: `Location`, `Content-Type`.
/// HTTP clients here see names in lower case, so each is given in the canonical
/// capitalisation (a server's `X-Request-ID` reads `X-Request-Id`); repeated headers are
/// joined with `, `, as Python's requests joins them.
fn headers(ex: &Exchange) -> Value {
    let mut m = Map::new();
    for (k, v) in &ex.headers {
        let value = String::from_utf8_lossy(v.as_bytes()).into_owned();
        match m.entry(title_case(k.as_str())) {
            serde_json::map::Entry::Vacant(e) => {
                e.insert(Value::String(value));
            }
            serde_json::map::Entry::Occupied(mut e) => {
                if let Value::String(s) = e.get_mut() {
                    s.push_str(", ");
                    s.push_str(&value);
                }
            }
        }
    }
    Value::Object(m)
}

/// `content-type` → `Content-Type`.
fn title_case(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut start = true;
    for c in name.chars() {
        out.push(if start { c.to_ascii_uppercase() } else { c });
        start = c == '-';
    }
    out
}

fn head(text: &str) -> String {
    let t = text.trim();
    match t.char_indices().nth(TEXT_IN_SUMMARY) {
        Some((i, _)) => format!("{}…", &t[..i]),
        None => t.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backends::Outcome;
    use reqwest::StatusCode;
    use std::sync::Arc;

    fn exchange(code: u16, body: &str) -> Report {
        let mut r = Report::new(Outcome::Succeeded, "x");
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("x-request-id", "req-7".parse().unwrap());
        r.exchange = Some(Arc::new(Exchange {
            status: StatusCode::from_u16(code).unwrap(),
            body: body.as_bytes().to_vec(),
            ms: 3,
            retry_after: None,
            headers,
        }));
        r
    }

    fn prepared() -> Prepared {
        Prepared {
            method: "POST".into(),
            url: "https://svc/run".into(),
            headers: Map::new(),
            query: Map::new(),
            body: json!({}),
        }
    }

    fn run(kind: Kind, synchronized: bool) -> PortRun {
        PortRun {
            kind,
            run_id: "r_1".into(),
            message: json!({}),
            invocation: Map::new(),
            synchronized,
        }
    }

    fn entry(m: &Mapping) -> &Entry {
        let mut w = Vec::new();
        m.select(&crate::template::Context::plain(&json!({})), &mut w)
            .unwrap()
    }

    #[test]
    fn node_runs_ignore_the_report_block() {
        // T-MAP-10: the agent applies `report` to action runs only.
        let m = Mapping::parse(
            r#"[{"enabled": true, "report": {"status": "\"FAILURE\"", "summary": "\"mapped\""}}]"#,
            "t",
        )
        .unwrap();
        let e = entry(&m);
        let msg = json!({});
        let c = conclude(
            &m,
            e,
            (&run(Kind::Node, true), &msg),
            &prepared(),
            &exchange(200, ""),
        );
        let s = c.status.unwrap();
        assert_eq!(s.status, Some(RunStatus::Success));
        assert_eq!(s.summary, None);
        assert_eq!(s.node_response, Some(json!({"status": 200, "data": {}})));
        let c = conclude(
            &m,
            e,
            (&run(Kind::Run, true), &msg),
            &prepared(),
            &exchange(200, ""),
        );
        assert_eq!(
            c.status.unwrap().status,
            Some(RunStatus::Failure),
            "an action run applies it"
        );
    }

    #[test]
    fn defaults_follow_the_agent() {
        let m = Mapping::parse(r#"[{"enabled": true}]"#, "t").unwrap();
        let e = entry(&m);
        let msg = json!({});
        let c = conclude(
            &m,
            e,
            (&run(Kind::Run, true), &msg),
            &prepared(),
            &exchange(200, r#"{"id": 7}"#),
        );
        assert_eq!(
            c.result_log,
            "Action invocation has completed successfully with status code: 200"
        );
        assert_eq!(c.response, Some(json!({"id": 7})));
        assert_eq!(c.status.as_ref().unwrap().status, Some(RunStatus::Success));
        assert_eq!(c.status.as_ref().unwrap().summary, None);
        assert!(c.finished);
        let c = conclude(
            &m,
            e,
            (&run(Kind::Run, false), &msg),
            &prepared(),
            &exchange(202, ""),
        );
        assert!(
            c.status.is_none() && c.response.is_none() && c.finished,
            "{c:?}"
        );
        let c = conclude(
            &m,
            e,
            (&run(Kind::Run, true), &msg),
            &prepared(),
            &exchange(503, "down"),
        );
        let s = c.status.clone().unwrap();
        assert_eq!(s.status, Some(RunStatus::Failure));
        assert_eq!(
            s.summary.as_deref(),
            Some("Failed to invoke the webhook with status code: 503. Response: down")
        );
        assert_eq!(
            c.result_log,
            "Action invocation failed with status code: 503 and response: down"
        );
        // DETAILED_LOGGING=false (T-ENV-06): no response text in the log or the summary.
        let quiet = conclude_with(
            &m,
            e,
            (&run(Kind::Run, true), &msg),
            &prepared(),
            &exchange(503, "token=abc"),
            false,
        );
        assert_eq!(
            quiet.result_log,
            "Action invocation failed with status code: 503"
        );
        assert_eq!(
            quiet.status.unwrap().summary.as_deref(),
            Some("Failed to invoke the webhook with status code: 503.")
        );
        assert_eq!(
            c.response,
            Some(json!("down")),
            "synchronized: the agent stores it even on failure"
        );
        assert!(!c.finished && c.failed());
    }

    #[test]
    fn the_report_block_overrides_each_default_it_names() {
        let m = Mapping::parse(
            &json!([{"enabled": true, "report": {
                "status": "if .response.statusCode == 201 then \"SUCCESS\" else \"FAILURE\" end",
                "link": "[.response.json.self, .response.headers[\"X-Request-Id\"]]",
                "summary": ".request.url + \" answered \" + (.response.statusCode | tostring)",
                "externalRunId": ".response.json.id"}}])
            .to_string(),
            "t",
        )
        .unwrap();
        let e = entry(&m);
        let msg = json!({});
        let ok = r#"{"id": 9, "self": "https://svc/runs/9"}"#;
        let c = conclude(
            &m,
            e,
            (&run(Kind::Run, false), &msg),
            &prepared(),
            &exchange(201, ok),
        );
        let s = c.status.unwrap();
        assert_eq!(
            s.status,
            Some(RunStatus::Success),
            "async, but the report says SUCCESS"
        );
        assert_eq!(s.link, vec!["https://svc/runs/9", "req-7"]);
        assert_eq!(s.summary.as_deref(), Some("https://svc/run answered 201"));
        assert_eq!(s.external_run_id.as_deref(), Some("9"));
        let c = conclude(
            &m,
            e,
            (&run(Kind::Run, true), &msg),
            &prepared(),
            &exchange(200, ok),
        );
        assert_eq!(
            c.status.unwrap().status,
            Some(RunStatus::Failure),
            "200 is not 201 here"
        );
    }

    #[test]
    fn a_report_jq_error_nulls_its_field_with_a_warning() {
        let m = Mapping::parse(
            &json!([{"enabled": true, "report": {"summary": ".response.json.n + \"x\"", "status": "\"DONE\""}}])
                .to_string(),
            "t",
        )
        .unwrap();
        let msg = json!({});
        let c = conclude(
            &m,
            entry(&m),
            (&run(Kind::Run, true), &msg),
            &prepared(),
            &exchange(500, r#"{"n": 1}"#),
        );
        assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
        assert!(
            c.warnings[0].starts_with("report.summary: jq error"),
            "{:?}",
            c.warnings
        );
        assert!(
            c.warnings[1].starts_with("report.status: \"DONE\""),
            "{:?}",
            c.warnings
        );
        assert!(
            c.status.is_none(),
            "the summary is null and the status is refused: nothing to report"
        );
    }

    #[test]
    fn no_response_is_a_failure_and_node_runs_carry_their_output() {
        let m = Mapping::builtin();
        let msg = json!({"payload": {"action": {"invocationMethod": {"type": "WEBHOOK"}}}});
        let e = entry(&m);
        let mut gone = Report::new(
            Outcome::Retryable,
            "POST svc: request failed: connection refused",
        );
        gone.exchange = None;
        let c = conclude(&m, e, (&run(Kind::Run, true), &msg), &prepared(), &gone);
        assert_eq!(
            c.result_log,
            "The request failed: POST svc: request failed: connection refused"
        );
        assert!(c.failed());
        let c = conclude(
            &m,
            e,
            (&run(Kind::Node, true), &msg),
            &prepared(),
            &exchange(200, r#"{"ok": 1}"#),
        );
        assert_eq!(c.response, None);
        assert_eq!(
            c.status.unwrap().node_response,
            Some(json!({"status": 200, "data": {"ok": 1}}))
        );
    }
}
