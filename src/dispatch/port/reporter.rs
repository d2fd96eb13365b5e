//! Reporting Port runs to Port's API, from the status topic.
//!
//! The status topic stays the source of truth: a consumer group of its own
//! (`<kafka.group_id>.port-reporter`) reads every run update and forwards the ones of Port
//! runs (updates whose source is a `port`-format topic; changelog deliveries are not Port
//! runs) as the agent would have sent them:
//!
//! | run update | action run (`r_…`) | workflow node run (`wfnr_…`) |
//! |---|---|---|
//! | log | `POST /v1/actions/runs/{id}/logs` `{message}` | `POST /v1/workflows/nodes/runs/{id}/logs` `{logs: [{level, message}]}` |
//! | response | `PATCH /v1/actions/runs/{id}/response` `{response}` | — |
//! | SUCCESS / FAILURE | `PATCH /v1/actions/runs/{id}` `{status, summary, statusLabel, link, externalRunId}` | `PATCH /v1/workflows/nodes/runs/{id}` `{status: "COMPLETED", result, output}` |
//! | IN_PROGRESS with a label, link or external id | `PATCH /v1/actions/runs/{id}` with those | — |
//!
//! Updates of one run are sent in order (one lane per run); different runs in parallel.
//! A failed call is retried with capped backoff (the server's `Retry-After` first) until
//! it succeeds, so a Port outage delays reports and loses none: the update's offset is
//! committed only once Port took it. A call Port refuses (4xx other than 401, 408, 425
//! and 429: an unknown or finished run) is logged and counted, and the reporter moves on.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};

use super::client::{CallError, PortClient};
use crate::backoff::{Backoff, Jitter};
use crate::kafka::consumer::{Sink, Ticket};
use crate::lanes::Lanes;
use crate::model::TriggerRecord;
use crate::model::{LogLevel, RunStatus, RunUpdate, UpdateKind};
use crate::telemetry::metrics;

const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// One call to Port's API.
#[derive(Debug, Clone, PartialEq)]
pub struct Call {
    /// Metric label: `run`, `logs`, `response`, `node`, `node_logs`.
    pub name: &'static str,
    pub method: Method,
    pub path: String,
    pub body: Value,
}

struct Item {
    run_id: String,
    calls: Vec<Call>,
    ticket: Ticket,
}

/// The status-topic sink that reports to Port.
pub struct Reporter {
    codec: Arc<crate::codec::avro::Codec>,
    port_topics: HashSet<String>,
    lanes: Arc<Lanes<Item>>,
}

impl Reporter {
    pub fn new(
        client: PortClient,
        codec: Arc<crate::codec::avro::Codec>,
        port_topics: HashSet<String>,
    ) -> Self {
        let client = Arc::new(client);
        let lanes = Lanes::new(move |item: Item| {
            let client = client.clone();
            async move { deliver(&client, item).await }
        });
        Reporter {
            codec,
            port_topics,
            lanes,
        }
    }
}

impl Sink for Reporter {
    async fn accept(&self, record: TriggerRecord, ticket: Ticket) {
        if ticket.intake_stopped() {
            return;
        }
        let payload = record.payload.as_deref().unwrap_or_default();
        let Some(u) = self.codec.decode_update(payload).await else {
            ticket.complete(); // not a run update (logged by the codec)
            return;
        };
        let ours = u
            .source
            .as_ref()
            .is_some_and(|s| self.port_topics.contains(&s.topic));
        let calls = if ours && !u.run_id.starts_with("cl_") {
            calls_for(&u)
        } else {
            Vec::new()
        };
        if calls.is_empty() {
            ticket.complete();
            return;
        }
        self.lanes.submit(
            u.run_id.clone(),
            Item {
                run_id: u.run_id,
                calls,
                ticket,
            },
        );
    }
}

/// Send an item's calls in order, each until Port takes or refuses it.
async fn deliver(client: &PortClient, item: Item) {
    for call in &item.calls {
        if !send_call(client, &item.run_id, call, item.ticket.abandoned()).await {
            return; // redelivered later
        }
    }
    item.ticket.complete();
}

/// Send one call until Port takes or refuses it; false when `abandon` fired first.
async fn send_call(
    client: &PortClient,
    run_id: &str,
    call: &Call,
    abandon: &tokio_util::sync::CancellationToken,
) -> bool {
    let m = metrics::get();
    let mut backoff = Backoff::new(Duration::from_millis(500), MAX_BACKOFF, Jitter::Half);
    loop {
        let result = tokio::select! {
            r = client.call(call.method.clone(), &call.path, &call.body) => r,
            _ = abandon.cancelled() => return false,
        };
        match result {
            Ok(()) => {
                m.port_api_calls.with_label_values(&[call.name, "ok"]).inc();
                return true;
            }
            Err(CallError::Rejected { status, body }) => {
                m.port_api_calls
                    .with_label_values(&[call.name, "rejected"])
                    .inc();
                tracing::warn!(run_id, call = call.name, status, answer = %body,
                    "Port refused a report; it is not retried");
                return true;
            }
            Err(CallError::Retry { why, wait }) => {
                m.port_api_calls
                    .with_label_values(&[call.name, "retried"])
                    .inc();
                let drawn = backoff.next_wait();
                let wait = wait.unwrap_or(drawn);
                tracing::warn!(run_id, call = call.name, error = %why,
                    retry_in_ms = wait.as_millis() as u64, "reporting to Port failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait.min(MAX_BACKOFF)) => {}
                    _ = abandon.cancelled() => return false,
                }
            }
        }
    }
}

/// Port mode without a status topic: each run update of a Port run is reported to Port's
/// API as it is written, and the writer (so the event's offset) waits until Port took it.
pub struct DirectReporter {
    client: PortClient,
    port_topics: HashSet<String>,
}

impl DirectReporter {
    pub fn new(client: PortClient, port_topics: HashSet<String>) -> Self {
        DirectReporter {
            client,
            port_topics,
        }
    }
}

impl crate::kafka::publisher::Direct for DirectReporter {
    fn update<'a>(
        &'a self,
        u: &'a RunUpdate,
        stop: &'a tokio_util::sync::CancellationToken,
    ) -> std::pin::Pin<
        Box<
            dyn std::future::Future<Output = Result<(), crate::kafka::publisher::Stopped>>
                + Send
                + 'a,
        >,
    > {
        Box::pin(async move {
            let ours = u
                .source
                .as_ref()
                .is_some_and(|s| self.port_topics.contains(&s.topic));
            if !ours || u.run_id.starts_with("cl_") {
                return Ok(());
            }
            for call in calls_for(u) {
                if !send_call(&self.client, &u.run_id, &call, stop).await {
                    return Err(crate::kafka::publisher::Stopped);
                }
            }
            Ok(())
        })
    }
}

/// The Port API calls that report `u` (none for updates Port has no place for).
pub fn calls_for(u: &RunUpdate) -> Vec<Call> {
    let id = segment(&u.run_id);
    let node = u.run_id.starts_with("wfnr_");
    let call = |name, method, path: String, body| Call {
        name,
        method,
        path,
        body,
    };
    match (u.kind, node) {
        (UpdateKind::Log, false) => vec![call(
            "logs",
            Method::POST,
            format!("/v1/actions/runs/{id}/logs"),
            json!({"message": u.message.clone().unwrap_or_default()}),
        )],
        (UpdateKind::Log, true) => {
            let level = match u.level.unwrap_or(LogLevel::Info) {
                LogLevel::Debug => "DEBUG",
                LogLevel::Info => "INFO",
                LogLevel::Warn => "WARN",
                LogLevel::Error => "ERROR",
            };
            vec![call(
                "node_logs",
                Method::POST,
                format!("/v1/workflows/nodes/runs/{id}/logs"),
                json!({"logs": [{"level": level, "message": u.message.clone().unwrap_or_default()}]}),
            )]
        }
        (UpdateKind::Response, false) => vec![call(
            "response",
            Method::PATCH,
            format!("/v1/actions/runs/{id}/response"),
            json!({"response": u.response.clone().unwrap_or(Value::Null)}),
        )],
        (UpdateKind::Response, true) => Vec::new(),
        (UpdateKind::Status, false) => {
            // A terminal update may carry the response: Port takes it first.
            let response = u.response.as_ref().map(|r| {
                call(
                    "response",
                    Method::PATCH,
                    format!("/v1/actions/runs/{id}/response"),
                    json!({"response": r}),
                )
            });
            let run = run_patch(u)
                .map(|body| call("run", Method::PATCH, format!("/v1/actions/runs/{id}"), body));
            response.into_iter().chain(run).collect()
        }
        (UpdateKind::Status, true) => {
            let result = match u.status {
                Some(RunStatus::Success) => "SUCCESS",
                Some(RunStatus::Failure) => "FAILED",
                _ => return Vec::new(),
            };
            let mut body = json!({"status": "COMPLETED", "result": result});
            if let Some(r) = &u.response {
                body["output"] = json!({"response": r});
            }
            vec![call(
                "node",
                Method::PATCH,
                format!("/v1/workflows/nodes/runs/{id}"),
                body,
            )]
        }
    }
}

/// `PATCH /v1/actions/runs/{id}`'s body, or `None` when Port would learn nothing (the
/// dispatcher's own "dispatching to …" marks a run that Port already shows as running).
fn run_patch(u: &RunUpdate) -> Option<Value> {
    let mut body = Map::new();
    let terminal = u.is_terminal();
    if terminal {
        body.insert("status".into(), json!(u.status.map(RunStatus::as_str)));
    }
    if let Some(l) = &u.status_label {
        body.insert("statusLabel".into(), json!(l));
    }
    match u.link.as_deref() {
        Some([one]) => {
            body.insert("link".into(), json!(one));
        }
        Some(many) if !many.is_empty() => {
            body.insert("link".into(), json!(many));
        }
        _ => {}
    }
    if let Some(x) = &u.external_run_id {
        body.insert("externalRunId".into(), json!(x));
    }
    // A summary alone is sent too (an async run's `report.summary`), except the
    // dispatcher's own "dispatching to …" mark on a run Port already shows as running.
    match &u.summary {
        Some(s) if !u.is_dispatching_mark() => {
            body.insert("summary".into(), json!(s));
        }
        _ => {}
    }
    (!body.is_empty()).then_some(Value::Object(body))
}

/// Whether Port shows the run finished (`GET /v1/actions/runs/{id}` → `run.status` is
/// SUCCESS or FAILURE; a node run: `GET /v1/workflows/nodes/runs/{id}` → `status` is
/// COMPLETED), e.g. because its service reported to Port directly.
pub async fn ended_in_port(client: &PortClient, run_id: &str) -> Result<bool, CallError> {
    let id = segment(run_id);
    if run_id.starts_with("wfnr_") {
        let answer = client
            .request(Method::GET, &format!("/v1/workflows/nodes/runs/{id}"), None)
            .await?;
        let node = answer.get("nodeRun").unwrap_or(&answer);
        return Ok(node["status"] == "COMPLETED");
    }
    let answer = client
        .request(Method::GET, &format!("/v1/actions/runs/{id}"), None)
        .await?;
    Ok(matches!(
        answer["run"]["status"].as_str(),
        Some("SUCCESS" | "FAILURE")
    ))
}

/// A run id as one URL path segment.
fn segment(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn updates_map_to_the_agents_calls() {
        let log = RunUpdate::log("r_1", LogLevel::Info, "Sending the request");
        assert_eq!(
            calls_for(&log),
            vec![Call {
                name: "logs",
                method: Method::POST,
                path: "/v1/actions/runs/r_1/logs".into(),
                body: json!({"message": "Sending the request"}),
            }]
        );
        let resp = RunUpdate::response("r_1", json!({"id": 7}));
        assert_eq!(calls_for(&resp)[0].body, json!({"response": {"id": 7}}));
        assert_eq!(calls_for(&resp)[0].path, "/v1/actions/runs/r_1/response");
        let mut done = RunUpdate::status("r_1", RunStatus::Failure).with_summary("HTTP 503");
        done.link = Some(vec!["https://x/1".into()]);
        assert_eq!(
            calls_for(&done)[0].body,
            json!({"status": "FAILURE", "link": "https://x/1", "summary": "HTTP 503"})
        );
        let started =
            RunUpdate::status("r_1", RunStatus::InProgress).with_summary("dispatching to WEBHOOK");
        assert!(
            calls_for(&started).is_empty(),
            "Port already shows the run as running"
        );
        let mut labelled = RunUpdate::status("r_1", RunStatus::InProgress);
        labelled.status_label = Some("running".into());
        assert_eq!(
            calls_for(&labelled)[0].body,
            json!({"statusLabel": "running"})
        );
    }

    #[test]
    fn node_runs_use_the_node_endpoints() {
        let log = RunUpdate::log("wfnr_9", LogLevel::Warn, "careful");
        assert_eq!(
            calls_for(&log)[0],
            Call {
                name: "node_logs",
                method: Method::POST,
                path: "/v1/workflows/nodes/runs/wfnr_9/logs".into(),
                body: json!({"logs": [{"level": "WARN", "message": "careful"}]}),
            }
        );
        let mut ok = RunUpdate::status("wfnr_9", RunStatus::Success);
        ok.response = Some(json!({"status": 200, "data": {"a": 1}}));
        assert_eq!(
            calls_for(&ok)[0].body,
            json!({"status": "COMPLETED", "result": "SUCCESS",
                   "output": {"response": {"status": 200, "data": {"a": 1}}}})
        );
        let failed = RunUpdate::status("wfnr_9", RunStatus::Failure);
        assert_eq!(
            calls_for(&failed)[0].body,
            json!({"status": "COMPLETED", "result": "FAILED"})
        );
        assert!(calls_for(&RunUpdate::response("wfnr_9", json!(1))).is_empty());
    }

    #[test]
    fn run_ids_are_one_path_segment() {
        assert_eq!(segment("r_ab-C.9~"), "r_ab-C.9~");
        assert_eq!(segment("a/b c"), "a%2Fb%20c");
    }
}
