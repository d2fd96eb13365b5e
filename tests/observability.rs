//! Logs and trace context: JSON log lines about a run carry `run_id`, `backend` and
//! `action`; secrets and `Authorization` never reach logs or run updates; a trigger's
//! `traceparent` reaches the backend request and the run updates.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::util::Timeout;
use serde_json::{json, Value};
use switchyard::model::RunStatus;

const WAIT: Duration = Duration::from_secs(60);
const TRACEPARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_carry_run_fields_hide_secrets_and_trace_context_propagates() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    // JSON logs at debug level: the most a log could leak.
    let cfg = Setup::new(&kafka, &t)
        .config("[backends.webhook.retry]\nmax_attempts = 2\ninitial_backoff = \"50ms\"\n")
        .config(
            "[log]\nformat = \"json\"\n\
             level = \"debug,librdkafka=warn,hyper=info,reqwest=info,h2=info\"\n",
        )
        .toml();
    let d = Dispatcher::start_with_config(&cfg, &[]);
    let event = |run: &str, path: &str| {
        let mut ev = webhook_event(run, &rx.url(path), true);
        ev["action"]["invocationMethod"]["headers"] = json!({"Authorization": "Bearer {{ .secrets.token }}", "X-Api-Key": "{{ .secrets.token }}"});
        ev
    };
    let producer = kafka.producer();
    for (run, path) in [
        ("r_obs_ok", "/ok"),
        ("r_obs_fail", "/fail?status=500&body=upstream%20broke"),
    ] {
        let payload = serde_json::to_vec(&event(run, path)).unwrap();
        let headers = OwnedHeaders::new().insert(Header {
            key: "traceparent",
            value: Some(TRACEPARENT),
        });
        producer
            .send(
                FutureRecord::<str, [u8]>::to(&t.triggers)
                    .payload(&payload)
                    .headers(headers),
                Timeout::After(Duration::from_secs(10)),
            )
            .await
            .unwrap();
    }
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "both terminal", |u| StatusLog::finished(u) >= 2)
        .await;

    // Three requests (the failing run makes two attempts), one SUCCESS, one FAILURE:
    // the checks below then run over something.
    assert_eq!(
        log.sole_terminal("r_obs_ok").await.status,
        Some(RunStatus::Success)
    );
    assert_eq!(
        log.sole_terminal("r_obs_fail").await.status,
        Some(RunStatus::Failure)
    );
    // The backend got the secret (that is its job) and the trace context.
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3, "{reqs:#?}");
    assert!(reqs
        .iter()
        .all(|r| r.headers["authorization"] == format!("Bearer {TEST_TOKEN}")));
    assert!(reqs.iter().all(|r| r.headers["traceparent"] == TRACEPARENT));

    // Every run update carries the trace context, and none carries the secret.
    let n = log.of("r_obs_ok").len() + log.of("r_obs_fail").len();
    assert!(n >= 4, "{:#?}", log.updates);
    let records = read_records(&kafka, &t.status, t.status_partitions, n, WAIT).await;
    for r in &records {
        assert_eq!(
            r.headers.get("traceparent").map(String::as_str),
            Some(TRACEPARENT)
        );
        let text = String::from_utf8_lossy(r.payload.as_deref().unwrap());
        assert!(!text.contains(TEST_TOKEN), "secret in a run update: {text}");
    }
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert!(!dlq[0].headers["switchyard-error"].contains(TEST_TOKEN));

    // Logs: never the secret nor an Authorization value; run lines carry the fields.
    let logs = d.logs();
    assert!(!logs.contains(TEST_TOKEN), "secret in the logs");
    assert!(
        !logs.to_ascii_lowercase().contains("bearer "),
        "an Authorization value in the logs"
    );
    let lines: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // The lines of the dispatch path (pipeline, pools, backends), chosen by target, not
    // by the run id whose presence is being checked.
    let about_runs: Vec<&Value> = lines
        .iter()
        .filter(|l| {
            l["target"].as_str().is_some_and(|t| {
                [
                    "switchyard::dispatch",
                    "switchyard::pool",
                    "switchyard::backends",
                ]
                .iter()
                .any(|p| t.starts_with(p))
            })
        })
        .collect();
    let targets: std::collections::BTreeSet<&str> = about_runs
        .iter()
        .filter_map(|l| l["target"].as_str())
        .collect();
    println!("dispatch-path log targets: {targets:?}");
    assert!(about_runs.len() >= 3, "{logs}");
    for l in &about_runs {
        let fields = &l["span"];
        assert_eq!(fields["name"], "run", "not in the run's span: {l}");
        assert!(
            fields["run_id"]
                .as_str()
                .is_some_and(|r| r.starts_with("r_obs_")),
            "no run_id: {l}"
        );
        assert_eq!(fields["backend"], "WEBHOOK", "{l}");
        assert_eq!(fields["action"], "deploy_service", "{l}");
    }
    println!(
        "{} JSON log lines, {} about the two runs, all with run_id/backend/action; {} run updates with traceparent",
        lines.len(),
        about_runs.len(),
        records.len()
    );
}
