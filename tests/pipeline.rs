//! The pipeline end to end, through the public surface: events produced to a real Kafka
//! protocol implementation, `switchyard run` as a child process, a local webhook
//! receiver, and the status and DLQ topics read back.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::json;
use switchyard::model::{RunStatus, UpdateKind};

const WAIT: Duration = Duration::from_secs(60);

/// A run that finishes within `dispatch.in_progress_after` (1 s) is one record: its
/// terminal update, carrying the response.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_success_is_one_terminal_update_with_the_response() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let ev = webhook_event("r_sync_ok", &rx.url("/deploy?status=200"), true);
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| u.iter().any(|u| u.is_terminal()))
        .await;
    let updates = log.of("r_sync_ok");
    let kinds: Vec<_> = updates.iter().map(|u| (u.seq, u.kind, u.status)).collect();
    assert_eq!(
        kinds,
        vec![(1, UpdateKind::Status, Some(RunStatus::Success))]
    );
    let done = updates[0];
    assert_eq!(done.response, Some(json!({"ok": true, "path": "/deploy"})));
    assert!(done.summary.as_deref().unwrap().starts_with("HTTP 200 in "));
    assert_eq!(done.backend.as_deref(), Some("WEBHOOK"));
    assert_eq!(done.attempt, Some(1));
    assert_eq!(done.source.as_ref().unwrap().topic, t.triggers);

    let reqs = rx.requests();
    assert_eq!(reqs.len(), 1);
    let r = &reqs[0];
    assert_eq!(r.method, "POST");
    assert_eq!(r.headers["idempotency-key"], "r_sync_ok");
    assert_eq!(r.headers["run_id"], "r_sync_ok");
    assert_eq!(
        r.headers["x-token"], TEST_TOKEN,
        "secret resolved from config"
    );
    assert_eq!(
        r.body,
        json!({"version": "1.4.2", "n": 0, "run": "r_sync_ok"})
    );
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_failure_reports_status_and_body_and_dead_letters() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let url = rx.url("/deploy?status=422&body=version%201.4.2%20is%20not%20released");
    let ev = webhook_event("r_sync_fail", &url, true);
    kafka.produce(&t.triggers, &[record(Some("k1"), &ev)]).await;

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "FAILURE", |u| u.iter().any(|u| u.is_terminal()))
        .await;
    let fail = log.sole_terminal("r_sync_fail").await;
    assert_eq!(fail.status, Some(RunStatus::Failure));
    assert_eq!(
        fail.summary.as_deref(),
        Some("HTTP 422 Unprocessable Entity: version 1.4.2 is not released")
    );
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "http_status");
    assert_eq!(dlq[0].headers["switchyard-attempts"], "1");
    assert_eq!(dlq[0].key.as_deref(), Some(&b"k1"[..]));
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_stays_in_progress_with_an_accepted_log() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let ev = webhook_event("r_async", &rx.url("/jobs?status=202"), false);
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "accepted log", |u| {
        u.iter().any(|u| u.kind == UpdateKind::Log)
    })
    .await;
    // The offset completes once the log update is acknowledged...
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);
    log.settle(Duration::from_millis(500)).await;
    let updates = log.of("r_async");
    assert_eq!(updates.len(), 2, "{updates:#?}");
    assert_eq!(updates[0].status, Some(RunStatus::InProgress));
    assert_eq!(
        updates[1].message.as_deref(),
        Some("request accepted: HTTP 202")
    );
    // ...and the run stays open for the backend to report.
    assert!(log.terminal("r_async").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn async_run_with_non_2xx_still_fails() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let ev = webhook_event("r_async_fail", &rx.url("/jobs?status=404"), false);
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "FAILURE", |u| u.iter().any(|u| u.is_terminal()))
        .await;
    let f = log.sole_terminal("r_async_fail").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert!(f.summary.unwrap().starts_with("HTTP 404 Not Found"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_fail_to_the_dlq_and_offsets_move_past_them() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");

    let mut unknown = webhook_event("r_unknown", &rx.url("/x"), true);
    unknown["action"]["invocationMethod"]["type"] = json!("CARRIER_PIGEON");
    let mut bad_template = webhook_event("r_template", &rx.url("/x"), true);
    bad_template["action"]["invocationMethod"]["body"]["version"] =
        json!("{{ .inputs.version + 1 }}");
    let good = webhook_event("r_after", &rx.url("/ok"), true);
    let records = vec![
        (
            Some("k-malformed".to_owned()),
            b"{\"run\": {\"id\": ".to_vec(),
        ),
        record(
            None,
            &json!({"action": {"identifier": "x", "invocationMethod": {}}}),
        ),
        record(None, &unknown),
        record(None, &bad_template),
        record(None, &good),
    ];
    kafka.produce(&t.triggers, &records).await;

    let dlq = read_dlq(&kafka, &t, 4, WAIT).await;
    let by_class: HashMap<&str, &DlqEntry> = dlq
        .iter()
        .map(|d| (d.headers["switchyard-error-class"].as_str(), d))
        .collect();
    for d in &dlq {
        for h in [
            "switchyard-error",
            "switchyard-error-class",
            "switchyard-attempts",
            "switchyard-source",
            "switchyard-failed-at",
        ] {
            assert!(d.headers.contains_key(h), "missing {h} in {d:?}");
        }
        assert!(d.headers["switchyard-source"].starts_with(&format!("{}/0/", t.triggers)));
    }
    let malformed = by_class["malformed_json"];
    assert_eq!(
        malformed.payload.as_deref(),
        Some(&b"{\"run\": {\"id\": "[..])
    );
    assert_eq!(malformed.key.as_deref(), Some(&b"k-malformed"[..]));
    assert_eq!(
        malformed.headers["switchyard-source"],
        format!("{}/0/0", t.triggers)
    );
    assert!(malformed.headers["switchyard-error"].contains("line 1 column"));
    assert_eq!(
        by_class["missing_run_id"].headers["switchyard-error"],
        "missing run id: run.id: missing field"
    );
    assert!(by_class["unknown_backend"].headers["switchyard-error"].contains("\"CARRIER_PIGEON\""));
    let tmpl = &by_class["template_error"].headers["switchyard-error"];
    assert!(tmpl.contains("invocationMethod.body.version"), "{tmpl}");
    assert!(tmpl.contains("jq error"), "{tmpl}");

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "three terminal statuses", |u| {
        StatusLog::finished(u) >= 3
    })
    .await;
    for run in ["r_unknown", "r_template"] {
        let f = log.terminal(run);
        assert_eq!(f.len(), 1, "{run}");
        assert_eq!(f[0].status, Some(RunStatus::Failure));
    }
    assert!(log
        .sole_terminal("r_unknown")
        .await
        .summary
        .as_deref()
        .unwrap()
        .contains("unknown invocationMethod.type"));
    assert_eq!(
        log.sole_terminal("r_after").await.status,
        Some(RunStatus::Success)
    );
    assert_eq!(rx.count(), 1, "only the good event reaches the receiver");
    assert_eq!(
        kafka.wait_committed(&t, 5, WAIT).await,
        5,
        "committed past all five"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_key_events_run_strictly_in_order() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    // Earlier events are slower, so any overlap would reorder arrivals.
    let records: Vec<_> = (0..50)
        .map(|n| {
            let url = rx.url(&format!("/seq?delay_ms={}", (50 - n) % 7));
            let mut ev = webhook_event(&format!("r_ord_{n}"), &url, true);
            ev["inputs"]["n"] = json!(n);
            ev["orderingKey"] = json!("service/checkout");
            record(Some("service/checkout"), &ev)
        })
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "50 terminal", |u| StatusLog::finished(u) >= 50)
        .await;
    let order: Vec<i64> = rx
        .requests()
        .iter()
        .map(|r| r.body["n"].as_i64().unwrap())
        .collect();
    assert_eq!(order, (0..50).collect::<Vec<_>>());
    assert_eq!(rx.max_concurrency(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distinct_keys_run_in_parallel_inside_one_partition() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, "");
    let url = rx.url("/slow?delay_ms=1500");
    let records: Vec<_> = (0..32)
        .map(|n| record(None, &webhook_event(&format!("r_par_{n}"), &url, true)))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "32 terminal", |u| StatusLog::finished(u) >= 32)
        .await;
    let max = rx.max_concurrency();
    println!("max concurrent requests from one partition: {max}");
    assert!(max >= 16, "only {max} concurrent requests");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_partition_window_holds_intake_and_still_completes() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let url = rx.url("/slow?delay_ms=300");
    let records: Vec<_> = (0..20)
        .map(|n| record(None, &webhook_event(&format!("r_win_{n}"), &url, true)))
        .collect();
    // Produced before the dispatcher starts, so the window fills at once.
    kafka.produce(&t.triggers, &records).await;
    let cfg = config_toml(&kafka, &t, "[dispatch]\npartition_window = 4\n");
    let debug = [(
        "SWITCHYARD_LOG__LEVEL",
        "info,switchyard::kafka::consumer=debug",
    )];
    let d = Dispatcher::start_with_config(&cfg, &debug);
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "20 terminal", |u| StatusLog::finished(u) >= 20)
        .await;
    let max = rx.max_concurrency();
    println!("max concurrent requests with a window of 4: {max}");
    assert!(max <= 4, "window of 4 allowed {max} concurrent requests");
    let logs = d.logs();
    let (full, room) = (
        logs.matches("window full; not read until a slot frees")
            .count(),
        logs.matches("window has room; reading again").count(),
    );
    println!("partition window full {full} times, room again {room} times");
    assert!(full >= 1 && room >= 1, "no full window logged:\n{logs}");
    assert_eq!(kafka.wait_committed(&t, 20, WAIT).await, 20);
}

/// `partition_window_bytes` bounds a partition's events in flight by their records'
/// bytes: records of about 600 bytes under a 1,300-byte window go at most three at a
/// time (one more may start while the window is under the limit), and all complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partition_window_in_bytes_holds_intake_and_still_completes() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let url = rx.url("/slow?delay_ms=200");
    let records: Vec<_> = (0..12)
        .map(|n| record(None, &webhook_event(&format!("r_bytes_{n}"), &url, true)))
        .collect();
    let size = records[0].1.len();
    assert!((400..800).contains(&size), "records of {size} bytes");
    kafka.produce(&t.triggers, &records).await;
    let cfg = config_toml(&kafka, &t, "[dispatch]\npartition_window_bytes = 1300\n");
    let _d = Dispatcher::start_with_config(&cfg, &[]);
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "12 terminal", |u| StatusLog::finished(u) >= 12)
        .await;
    let max = rx.max_concurrency();
    println!("max concurrent requests with a window of 1,300 bytes ({size}-byte records): {max}");
    assert!(max <= 1300 / size + 1, "{max} concurrent requests");
    assert!(max >= 2, "the byte window let only {max} through at a time");
    assert_eq!(kafka.wait_committed(&t, 12, WAIT).await, 12);
}

/// Kill the dispatcher (SIGKILL) with 200 runs in flight against a slow receiver; a new
/// instance in the same group must bring every run to a terminal status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_run_is_lost_when_the_dispatcher_is_killed_mid_flight() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    rx.set_default_delay(Duration::from_secs(30));
    let extra = "[backends.webhook]\nconcurrency = 256\n";
    let mut first = Dispatcher::start(&kafka, &t, extra);
    let url = rx.url("/deploy");
    let runs: Vec<String> = (0..200).map(|n| format!("r_kill_{n}")).collect();
    let records: Vec<_> = runs
        .iter()
        .map(|r| record(None, &webhook_event(r, &url, true)))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    rx.wait_requests(200, WAIT).await;
    first.kill();
    let committed_at_kill = kafka.committed_total(&t.group, &t.triggers, 3);

    rx.set_default_delay(Duration::from_millis(5));
    let _second = Dispatcher::start(&kafka, &t, extra);
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(Duration::from_secs(120), "200 terminal runs", |u| {
        StatusLog::finished(u) >= 200
    })
    .await;
    log.settle(QUIET).await;
    let missing: Vec<_> = runs.iter().filter(|r| log.terminal(r).is_empty()).collect();
    let requests = rx.count();
    println!(
        "killed with 200 in flight (committed {committed_at_kill}); requests {requests}, \
         duplicates {}, missing {}",
        requests - 200,
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "runs without a terminal status: {missing:?}"
    );
    for r in &runs {
        let done = log.sole_terminal(r).await;
        assert_eq!(done.status, Some(RunStatus::Success), "run {r}: {done:?}");
    }
    assert_eq!(
        committed_at_kill, 0,
        "nothing may be committed before its update"
    );
    assert_eq!(kafka.wait_committed(&t, 200, WAIT).await, 200);
}

/// SIGTERM drains in-flight runs, commits, and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_runs_and_commits() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let mut d = Dispatcher::start(&kafka, &t, "[dispatch]\nshutdown_grace = \"20s\"\n");
    let url = rx.url("/deploy?delay_ms=1000");
    let records: Vec<_> = (0..30)
        .map(|n| record(None, &webhook_event(&format!("r_term_{n}"), &url, true)))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    rx.wait_requests(30, WAIT).await;
    let status = d.terminate(Duration::from_secs(30));
    assert!(status.success(), "exit status {status:?}:\n{}", d.logs());
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "30 terminal", |u| StatusLog::finished(u) >= 30)
        .await;
    assert_eq!(kafka.committed_total(&t.group, &t.triggers, 3), 30);
}

/// While the DLQ cannot be written, the partition does not advance past the bad record;
/// once it can, the record lands in the DLQ and the offset completes. On the mock the
/// DLQ topic refuses writes (fault injection). On Apache Kafka the DLQ topic's
/// `max.message.bytes` is lowered below any DLQ record (the broker answers
/// MESSAGE_TOO_LARGE), then restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dlq_write_blocks_the_partition_until_it_succeeds() {
    use rdkafka::types::RDKafkaRespErr;
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let cfg = config_toml(&kafka, &t, "");
    // Delivery failures surface after 3 s instead of librdkafka's default 300 s.
    let env = [("SWITCHYARD_KAFKA__PRODUCER__MESSAGE.TIMEOUT.MS", "3000")];
    let d = Dispatcher::start_with_config(&cfg, &env);
    let good = webhook_event("r_before", &rx.url("/ok"), true);
    kafka.produce(&t.triggers, &[record(None, &good)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "first run", |u| u.iter().any(|u| u.is_terminal()))
        .await;
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);

    let how = match kafka.mock() {
        Some(mock) => {
            // From now on the DLQ topic's metadata says the producer may not write to it.
            mock.topic_error(
                &t.dlq,
                RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED,
            )
            .unwrap();
            "refused writes (mock fault injection)"
        }
        None => {
            kafka
                .alter_topic_config(&t.dlq, "max.message.bytes", "64")
                .await;
            "refusing records (max.message.bytes = 64)"
        }
    };
    // The poisoned record, then a good one behind it.
    let after = webhook_event("r_after", &rx.url("/ok"), true);
    kafka
        .produce_each(
            &t.triggers,
            &[(None, b"not json".to_vec()), record(None, &after)],
        )
        .await;
    log.wait_until(WAIT, "the run behind the poisoned record", |u| {
        u.iter().any(|u| u.run_id == "r_after" && u.is_terminal())
    })
    .await;
    let deadline = std::time::Instant::now() + WAIT;
    let page = loop {
        let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
        if sample(&page, "switchyard_dlq_write_failures_total") >= Some(1.0)
            || std::time::Instant::now() > deadline
        {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let failures = sample(&page, "switchyard_dlq_write_failures_total");
    assert!(failures >= Some(1.0), "{page}");
    assert_eq!(sample(&page, "switchyard_dlq_blocked"), Some(1.0));
    let blocked = kafka.committed_total(&t.group, &t.triggers, 1);
    assert_eq!(blocked, 1, "committed past a record whose DLQ write failed");
    // A size refusal is said loudly, naming the setting; other refusals are retried.
    let said = match kafka.mock() {
        Some(_) => "publish failed; retrying",
        None => "the broker refuses this record as too large: raise the topic's max.message.bytes",
    };
    assert!(d.logs().contains(said), "{}", d.logs());

    match kafka.mock() {
        Some(mock) => mock
            .topic_error(&t.dlq, RDKafkaRespErr::RD_KAFKA_RESP_ERR_NO_ERROR)
            .unwrap(),
        None => {
            kafka
                .alter_topic_config(&t.dlq, "max.message.bytes", "1048588")
                .await
        }
    }
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "malformed_json");
    let committed = kafka.wait_committed(&t, 3, WAIT).await;
    println!(
        "DLQ {how}: committed {blocked} while it failed ({} failed writes, dlq_blocked 1; \
         the run behind it finished but did not commit); after it came back: {} DLQ record, \
         committed {committed}",
        failures.unwrap(),
        dlq.len()
    );
    assert_eq!(committed, 3);
}

/// A run still going when its hold ends gets IN_PROGRESS first, then its terminal update
/// with the response; with `in_progress_after = "0s"` the mark is written at dispatch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_runs_and_a_zero_hold_get_in_progress_first() {
    let kafka = Kafka::start();
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    let held = Dispatcher::start(&kafka, &t, "[dispatch]\nin_progress_after = \"300ms\"\n");
    let slow = webhook_event("r_slow", &rx.url("/deploy?delay_ms=1200"), true);
    let fast = webhook_event("r_fast", &rx.url("/deploy"), true);
    kafka
        .produce(&t.triggers, &[record(None, &slow), record(None, &fast)])
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "both finished", |u| StatusLog::finished(u) >= 2)
        .await;
    let kinds = |run: &str, log: &StatusLog| -> Vec<_> {
        log.of(run)
            .iter()
            .map(|u| (u.seq, u.status, u.response.is_some()))
            .collect()
    };
    assert_eq!(
        kinds("r_slow", &log),
        vec![
            (1, Some(RunStatus::InProgress), false),
            (2, Some(RunStatus::Success), true)
        ]
    );
    assert_eq!(
        kinds("r_fast", &log),
        vec![(1, Some(RunStatus::Success), true)]
    );
    assert_eq!(
        log.of("r_slow")[0].summary.as_deref(),
        Some("dispatching to WEBHOOK")
    );
    drop(held);

    let t = kafka.topics(3).await;
    let _d = Dispatcher::start(&kafka, &t, "[dispatch]\nin_progress_after = \"0s\"\n");
    let fast = webhook_event("r_zero", &rx.url("/deploy"), true);
    kafka.produce(&t.triggers, &[record(None, &fast)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    assert_eq!(
        kinds("r_zero", &log),
        vec![
            (1, Some(RunStatus::InProgress), false),
            (2, Some(RunStatus::Success), true)
        ]
    );
}
