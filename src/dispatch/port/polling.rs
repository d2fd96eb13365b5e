//! The POLLING streamer (`STREAMER_NAME=POLLING`): runs claimed from Port's API instead
//! of read from `<org>.runs` (reference §4.3).
//!
//! Every `port.polling.interval` (at once again after a full batch):
//! 1. `POST /v1/actions/runs/claim-pending` `{installationId: "_PORT_EXEC_AGENT", limit,
//!    invocationMethod: "WEBHOOK"}` → `{runs}`, then `PATCH /v1/actions/runs/ack`
//!    `{runIds}`;
//! 2. `POST /v1/workflows/runs/claim-pending` `{installationId, limit}` → `{nodeRuns}`,
//!    then `PATCH /v1/workflows/runs/ack` `{nodeRunIdentifier}` per node run.
//!
//! Claim and ack calls carry `x-port-reserved-usage: true`. A claimed run is acknowledged
//! before it is dispatched, as the agent does: Port hands an un-acked run to another
//! claimant once its claim expires, and a run sent twice is worse for a non-idempotent
//! webhook than a run that a crash leaves IN_PROGRESS. Each claimed run is rebuilt as
//! the agent's envelope (its body, with `payload.action.invocationMethod` and
//! `context.runId` set from the run), sealed with the client secret (it came over Port's
//! authenticated API), and dispatched on the same path as a Kafka message: mapping,
//! request, reports.
//!
//! A failed claim waits with the agent's backoff; claims failing without a break for
//! `max_failure_duration` stop switchyard with an error, as the agent exits.

use std::sync::Arc;
use std::time::Duration;

use reqwest::Method;
use serde_json::{json, Map, Value};
use tokio_util::sync::CancellationToken;

use super::client::{CallError, PortClient};
use crate::config::PollingConfig;
use crate::kafka::consumer::{Detached, Sink};
use crate::model::TriggerRecord;

/// The installation id the agent claims under.
pub const INSTALLATION: &str = "_PORT_EXEC_AGENT";

/// Claim and dispatch until `shutdown` fires, then wait up to `grace` for the runs
/// already claimed. Errors when claims kept failing for `max_failure_duration`.
pub async fn run<S: Sink>(
    client: PortClient,
    sink: Arc<S>,
    cfg: &PollingConfig,
    settings: Streamed,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let hard = CancellationToken::new();
    let tickets = Detached::new(&settings.topic, hard.clone());
    let mut failing_since: Option<tokio::time::Instant> = None;
    let mut failures: i32 = 0;
    let result = loop {
        if shutdown.is_cancelled() {
            break Ok(());
        }
        let room = settings
            .window
            .saturating_sub(tickets.outstanding().max(0) as usize);
        let limit = cfg.batch_size.min(room);
        let wait = if limit == 0 {
            Duration::from_millis(200) // the window is full: let runs finish first
        } else {
            match claim_once(&client, &*sink, &tickets, limit, &settings).await {
                Ok(claimed) => {
                    if failing_since.take().is_some() {
                        tracing::info!("claiming runs from Port's API works again");
                    }
                    failures = 0;
                    crate::telemetry::readiness::mark_joined();
                    if claimed >= limit {
                        Duration::ZERO
                    } else {
                        cfg.interval
                    }
                }
                Err(e) => {
                    let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                    if since.elapsed() >= cfg.max_failure_duration {
                        break Err(anyhow::anyhow!(
                            "claiming runs from Port's API failed for {:?} without a break \
                             (port.polling.max_failure_duration); last error: {e}",
                            since.elapsed()
                        ));
                    }
                    failures = failures.saturating_add(1);
                    let wait = backoff(cfg, failures);
                    tracing::warn!(error = %e, retry_in_ms = wait.as_millis() as u64,
                        "claiming runs from Port's API failed; retrying");
                    wait
                }
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.cancelled() => {}
        }
    };
    // Claimed runs were acknowledged: finish them, up to the grace period.
    let deadline = tokio::time::Instant::now() + settings.grace;
    while tickets.outstanding() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let left = tickets.outstanding();
    if left > 0 {
        tracing::error!(runs = left,
            "claimed runs still running after the shutdown grace period; abandoned (they stay IN_PROGRESS in Port)");
    }
    hard.cancel();
    result
}

/// What the poller needs besides the client: where claimed runs are said to come from,
/// how many may be in flight, how long a shutdown waits, and the key that seals them.
pub struct Streamed {
    /// The runs topic's name, the source of claimed runs in run updates and records.
    pub topic: String,
    pub window: usize,
    pub grace: Duration,
    pub secret: String,
}

/// The wait after the `n`th failure in a row: `initial × factor^(n-1)`, capped, ± jitter.
fn backoff(cfg: &PollingConfig, n: i32) -> Duration {
    let ceiling = cfg.initial_backoff.as_secs_f64() * cfg.backoff_factor.powi(n - 1);
    let base = ceiling.min(cfg.max_backoff.as_secs_f64());
    let spread = 1.0 + cfg.backoff_jitter * (rand::random::<f64>() * 2.0 - 1.0);
    Duration::from_secs_f64((base * spread).max(0.0))
}

/// One round: claim action runs, then node runs; returns how many were claimed in all.
async fn claim_once<S: Sink>(
    client: &PortClient,
    sink: &S,
    tickets: &Detached,
    limit: usize,
    settings: &Streamed,
) -> Result<usize, CallError> {
    let answer = client
        .reserved(
            Method::POST,
            "/v1/actions/runs/claim-pending",
            &json!({"installationId": INSTALLATION, "limit": limit, "invocationMethod": "WEBHOOK"}),
        )
        .await?;
    let runs: Vec<Value> = answer["runs"].as_array().cloned().unwrap_or_default();
    let ids: Vec<&str> = runs.iter().filter_map(|r| r["id"].as_str()).collect();
    if !ids.is_empty() {
        client
            .reserved(
                Method::PATCH,
                "/v1/actions/runs/ack",
                &json!({"runIds": ids}),
            )
            .await?;
    }
    let mut claimed = runs.len();
    for run in &runs {
        if let Some(msg) = action_envelope(run) {
            submit(sink, tickets, msg, settings).await;
        } else {
            tracing::warn!(run = %run, "a claimed run has no id; skipped");
        }
    }
    let room = limit.saturating_sub(claimed);
    if room == 0 {
        return Ok(claimed);
    }
    let answer = client
        .reserved(
            Method::POST,
            "/v1/workflows/runs/claim-pending",
            &json!({"installationId": INSTALLATION, "limit": room}),
        )
        .await?;
    let nodes: Vec<Value> = answer["nodeRuns"].as_array().cloned().unwrap_or_default();
    claimed += nodes.len();
    for node in &nodes {
        let Some(id) = node["identifier"].as_str() else {
            tracing::warn!(node = %node, "a claimed node run has no identifier; skipped");
            continue;
        };
        client
            .reserved(
                Method::PATCH,
                "/v1/workflows/runs/ack",
                &json!({"nodeRunIdentifier": id}),
            )
            .await?;
        submit(sink, tickets, node_envelope(id, &node["config"]), settings).await;
    }
    Ok(claimed)
}

/// The agent's envelope of a claimed action run: its `payload.body` (an object, else
/// `{}`) with `payload.action.invocationMethod` = the run's payload without `body`, and
/// `context.runId` = the run's id.
pub fn action_envelope(run: &Value) -> Option<Map<String, Value>> {
    let id = run["id"].as_str()?;
    let payload = run["payload"].as_object().cloned().unwrap_or_default();
    let mut msg = match payload.get("body") {
        Some(Value::Object(b)) => b.clone(),
        _ => Map::new(),
    };
    let mut invocation = payload;
    invocation.shift_remove("body");
    set(
        &mut msg,
        &["payload", "action", "invocationMethod"],
        Value::Object(invocation),
    );
    set(&mut msg, &["context", "runId"], json!(id));
    Some(msg)
}

/// The envelope of a claimed workflow node run.
pub fn node_envelope(id: &str, config: &Value) -> Map<String, Value> {
    let mut msg = Map::new();
    set(
        &mut msg,
        &["payload", "action", "invocationMethod"],
        config.clone(),
    );
    set(&mut msg, &["context", "runId"], json!(id));
    msg
}

/// Set `path` in `msg`, replacing whatever is not an object on the way.
fn set(msg: &mut Map<String, Value>, path: &[&str], value: Value) {
    let (last, parents) = path.split_last().expect("paths are not empty");
    let mut at = msg;
    for seg in parents {
        let slot = at
            .entry(seg.to_string())
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        at = slot.as_object_mut().expect("made an object above");
    }
    at.insert(last.to_string(), value);
}

async fn submit<S: Sink>(sink: &S, tickets: &Detached, mut msg: Map<String, Value>, s: &Streamed) {
    let gitlab = msg
        .get("payload")
        .and_then(|p| p.pointer("/action/invocationMethod/type"))
        .and_then(Value::as_str)
        == Some("GITLAB");
    crate::port::signature::seal(
        &mut msg,
        &s.secret,
        gitlab,
        crate::port::signature::now_secs(),
    );
    let run_id = msg
        .get("context")
        .and_then(|c| c.get("runId"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let ticket = tickets.issue();
    let record = TriggerRecord {
        topic: s.topic.clone(),
        partition: -1,
        offset: -1,
        key: run_id.map(String::into_bytes),
        payload: Some(serde_json::to_vec(&Value::Object(msg)).expect("JSON serialises")),
        headers: Vec::new(),
        timestamp_ms: Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as i64),
        ),
    };
    sink.accept(record, ticket).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claimed_runs_become_the_agents_envelopes() {
        let run = json!({"id": "r_1", "status": "IN_PROGRESS",
            "payload": {"type": "WEBHOOK", "url": "https://svc/run", "agent": true,
                "synchronized": true, "method": "POST", "headers": {"X-A": "1"},
                "body": {"action": "deploy", "payload": {"properties": {"v": 1}}}}});
        let msg = action_envelope(&run).unwrap();
        assert_eq!(
            Value::Object(msg),
            json!({"action": "deploy",
                "payload": {"properties": {"v": 1}, "action": {"invocationMethod":
                    {"type": "WEBHOOK", "url": "https://svc/run", "agent": true,
                     "synchronized": true, "method": "POST", "headers": {"X-A": "1"}}}},
                "context": {"runId": "r_1"}})
        );
        assert!(action_envelope(&json!({"payload": {}})).is_none());
        let node = node_envelope(
            "wfnr_1",
            &json!({"type": "WEBHOOK", "url": "u", "agent": true}),
        );
        assert_eq!(
            Value::Object(node),
            json!({"payload": {"action": {"invocationMethod": {"type": "WEBHOOK", "url": "u", "agent": true}}},
                   "context": {"runId": "wfnr_1"}})
        );
    }

    #[test]
    fn failed_claims_back_off_as_the_agent() {
        let cfg = PollingConfig {
            backoff_jitter: 0.0,
            ..PollingConfig::default()
        };
        let waits: Vec<u64> = (1..=11).map(|n| backoff(&cfg, n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]);
        let jittered = backoff(&PollingConfig::default(), 3).as_secs_f64();
        assert!((3.6..=4.4).contains(&jittered), "{jittered}");
    }
}
