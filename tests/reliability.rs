//! Reliability: retries with backoff and `Retry-After`, attempts running out into the
//! DLQ, credential pauses, deadlines, DLQ replay, and a hanging backend.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use switchyard::model::{RunStatus, UpdateKind};

const WAIT: Duration = Duration::from_secs(60);
const FAST_RETRIES: &str =
    "[backends.webhook.retry]\nmax_attempts = 3\ninitial_backoff = \"100ms\"\nmax_backoff = \"5s\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_503_then_succeeds() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, FAST_RETRIES);
    let url = rx.url("/flaky?fail_first=2&fail_status=503");
    kafka
        .produce(
            &t.triggers,
            &[record(None, &webhook_event("r_flaky", &url, true))],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    let done = log.sole_terminal("r_flaky").await;
    assert_eq!(done.status, Some(RunStatus::Success));
    assert_eq!(done.attempt, Some(3));
    let notices: Vec<String> = log
        .of("r_flaky")
        .iter()
        .filter(|u| u.kind == UpdateKind::Log)
        .map(|u| u.message.clone().unwrap())
        .collect();
    println!("retry notices: {notices:?}");
    assert_eq!(notices.len(), 2);
    assert!(notices[0].starts_with("attempt 2/3 after HTTP 503 Service Unavailable, waiting "));
    assert!(notices[1].starts_with("attempt 3/3 after HTTP 503 Service Unavailable, waiting "));
    assert_eq!(rx.count(), 3);
    assert!(rx
        .requests()
        .iter()
        .all(|r| r.headers["idempotency-key"] == "r_flaky"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_429_is_honoured() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, FAST_RETRIES);
    let url = rx.url("/limited?fail_first=1&fail_status=429&retry_after=2");
    kafka
        .produce(
            &t.triggers,
            &[record(None, &webhook_event("r_429", &url, true))],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 2);
    let gap = reqs[1].at - reqs[0].at;
    println!("429 with Retry-After: 2; next request after {gap:?}");
    assert!(gap >= Duration::from_secs(2), "retried after {gap:?}");
    let notice = log.of("r_429")[1].message.clone().unwrap();
    assert_eq!(
        notice,
        "attempt 2/3 after HTTP 429 Too Many Requests, waiting 2.0 s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn attempts_run_out_into_failure_and_the_dlq() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let _d = Dispatcher::start(&kafka, &t, FAST_RETRIES);
    let url = rx.url("/down?status=503");
    kafka
        .produce(
            &t.triggers,
            &[record(None, &webhook_event("r_down", &url, true))],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "FAILURE", |u| StatusLog::finished(u) >= 1)
        .await;
    let f = log.sole_terminal("r_down").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert_eq!(f.attempt, Some(3));
    assert!(f.summary.unwrap().starts_with("HTTP 503"));
    let dlq = read_dlq(&kafka, &t, 1, WAIT).await;
    assert_eq!(dlq[0].headers["switchyard-attempts"], "3");
    assert_eq!(rx.count(), 3, "not retried forever");
    assert_eq!(kafka.wait_committed(&t, 1, WAIT).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_events_are_not_dispatched() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let url = rx.url("/deploy");
    let mut past = webhook_event("r_past_deadline", &url, true);
    past["deadline"] = serde_json::json!("2020-01-01T00:00:00Z");
    let mut future = webhook_event("r_future_deadline", &url, true);
    future["deadline"] = serde_json::json!("2999-01-01T00:00:00Z");
    let old = webhook_event("r_too_old", &url, true);
    // Produced two seconds before a dispatcher with max_event_age = 1s starts.
    kafka
        .produce(
            &t.triggers,
            &[
                record(None, &past),
                record(None, &future),
                record(None, &old),
            ],
        )
        .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cfg = "[dispatch]\nmax_event_age = \"1s\"\n";
    let _d = Dispatcher::start(&kafka, &t, cfg);
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "three terminal", |u| StatusLog::finished(u) >= 3)
        .await;
    let f = log.sole_terminal("r_past_deadline").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert_eq!(
        f.summary.as_deref(),
        Some("expired: deadline 2020-01-01T00:00:00Z passed")
    );
    let old = log.sole_terminal("r_too_old").await;
    assert!(old
        .summary
        .unwrap()
        .contains("dispatch.max_event_age is 1s"));
    // The future deadline does not expire, but max_event_age applies to it as well.
    let fut = log.sole_terminal("r_future_deadline").await;
    assert!(fut.summary.unwrap().starts_with("expired: the event is"));
    assert_eq!(rx.count(), 0, "nothing expired was dispatched");
    let dlq = read_dlq(&kafka, &t, 3, WAIT).await;
    assert!(dlq
        .iter()
        .all(|d| d.headers["switchyard-error-class"] == "expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_selects_by_class_and_run_with_a_dry_run() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    rx.set_default_status(503);
    let cfg = config_toml(&kafka, &t, "[backends.webhook.retry]\nmax_attempts = 1\n");
    let path = scratch_dir().join("switchyard.toml");
    std::fs::write(&path, &cfg).unwrap();
    let _d = Dispatcher::start_with_config(&cfg, &[]);
    let url = rx.url("/deploy");
    kafka
        .produce(
            &t.triggers,
            &[
                record(Some("k1"), &webhook_event("r_rep_1", &url, true)),
                record(Some("k2"), &webhook_event("r_rep_2", &url, true)),
                (None, b"{ not json".to_vec()),
            ],
        )
        .await;
    read_dlq(&kafka, &t, 3, WAIT).await;
    let replay = |args: &[&str]| {
        let out = cmd()
            .args(["dlq", "replay", "--config"])
            .arg(&path)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let listed = replay(&["--class", "http_status", "--dry-run"]);
    println!("{listed}");
    assert!(
        listed.contains("r_rep_1") && listed.contains("r_rep_2"),
        "{listed}"
    );
    assert!(!listed.contains("malformed_json"), "{listed}");
    assert!(listed.contains("2 records would be replayed"), "{listed}");

    rx.set_default_status(200);
    let before = rx.count();
    let done = replay(&["--run", "r_rep_1"]);
    assert!(done.contains("replayed 1 records"), "{done}");
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "replayed run succeeds", |u| {
        u.iter()
            .any(|u| u.run_id == "r_rep_1" && u.status == Some(RunStatus::Success))
    })
    .await;
    log.settle(Duration::from_millis(500)).await;
    assert_eq!(rx.count(), before + 1, "only the selected run was replayed");
    assert!(log
        .of("r_rep_2")
        .iter()
        .all(|u| u.status != Some(RunStatus::Success)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credential_failures_pause_the_destination_without_failing_runs() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(
        &kafka,
        &t,
        "[backends.webhook.retry]\ncredentials_pause = \"1s\"\n",
    );
    // The credentials are "fixed" after two rejections.
    let url = rx.url("/secure?fail_first=2&fail_status=401");
    kafka
        .produce(
            &t.triggers,
            &[record(None, &webhook_event("r_401", &url, true))],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    assert_eq!(
        log.sole_terminal("r_401").await.status,
        Some(RunStatus::Success)
    );
    let updates = log.of("r_401");
    assert!(
        updates.iter().all(|u| u.status != Some(RunStatus::Failure)),
        "{updates:#?}"
    );
    let paused = format!(
        "{} paused: credentials rejected (HTTP 401 Unauthorized)",
        rx.addr
    );
    let pauses: Vec<_> = updates
        .iter()
        .filter_map(|u| u.message.as_deref())
        .filter(|m| m.starts_with(&paused))
        .collect();
    assert_eq!(pauses.len(), 2, "{updates:#?}");
    let reqs = rx.requests();
    assert_eq!(reqs.len(), 3);
    for w in reqs.windows(2) {
        let gap = w[1].at - w[0].at;
        assert!(
            gap >= Duration::from_millis(950),
            "probe came after {gap:?}"
        );
    }
    assert!(d.logs().contains("destination paused"), "{}", d.logs());
    assert!(d.logs().contains("destination resumed"), "{}", d.logs());
}

/// A receiver that hangs: the attempt timeout fires, other lanes keep flowing meanwhile,
/// and the consumer stays in the group for longer than `max.poll.interval.ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_backend_times_out_while_other_lanes_flow() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let cfg = "[backends.webhook]\ntimeout = \"8s\"\n[backends.webhook.retry]\nmax_attempts = 1\n";
    let cfg = config_toml(&kafka, &t, cfg);
    // The hanging attempt (8 s) outlasts max.poll.interval.ms (6 s).
    let env = [("SWITCHYARD_KAFKA__CONSUMER__MAX.POLL.INTERVAL.MS", "6000")];
    let d = Dispatcher::start_with_config(&cfg, &env);
    let hang = rx.url("/hang?delay_ms=60000");
    let ok = rx.url("/ok");
    let mut records = vec![record(None, &webhook_event("r_hang", &hang, true))];
    records
        .extend((0..20).map(|n| record(None, &webhook_event(&format!("r_flow_{n}"), &ok, true))));
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "20 flowing runs", |u| {
        (0..20).all(|n| {
            u.iter()
                .any(|u| u.run_id == format!("r_flow_{n}") && u.is_terminal())
        })
    })
    .await;
    assert!(
        log.terminal("r_hang").is_empty(),
        "the hanging run is still in flight"
    );
    log.wait_until(WAIT, "hang times out", |u| StatusLog::finished(u) >= 21)
        .await;
    let f = log.sole_terminal("r_hang").await;
    assert_eq!(f.status, Some(RunStatus::Failure));
    assert_eq!(
        f.summary.as_deref(),
        Some("WEBHOOK attempt timed out after 8s")
    );
    assert!(f.duration_ms.unwrap() >= 8000);
    // Committed past everything, and never kicked out of the group meanwhile.
    assert_eq!(kafka.wait_committed(&t, 21, WAIT).await, 21);
    let logs = d.logs();
    assert!(
        !logs.contains("partitions revoked"),
        "left the group:\n{logs}"
    );
    assert!(
        !logs.contains("MAXPOLL"),
        "max.poll.interval.ms exceeded:\n{logs}"
    );
}

/// A redelivered event whose run already finished is not dispatched again — also by an
/// instance that did not dispatch it — and a replay from the DLQ still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_runs_are_not_dispatched_again() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let first = Dispatcher::start(&kafka, &t, "");
    let ev = webhook_event("r_once", &rx.url("/deploy"), true);
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "SUCCESS", |u| StatusLog::finished(u) >= 1)
        .await;
    drop(first);

    // A fresh instance (new group, so it reads the event again) and a second copy.
    let mut t2 = t.clone();
    t2.group = unique("group");
    let second = Dispatcher::start(&kafka, &t2, "");
    kafka.produce(&t.triggers, &[record(None, &ev)]).await;
    let deadline = std::time::Instant::now() + WAIT;
    while !second
        .logs()
        .matches("duplicate run suppressed")
        .count()
        .eq(&2)
    {
        assert!(std::time::Instant::now() < deadline, "{}", second.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    log.settle(Duration::from_millis(500)).await;
    println!(
        "dedup: requests {}, terminal updates {}",
        rx.count(),
        log.terminal("r_once").len()
    );
    assert_eq!(rx.count(), 1, "dispatched once");
    assert_eq!(log.terminal("r_once").len(), 1, "one terminal status");
    assert_eq!(
        kafka.wait_committed(&t2, 2, WAIT).await,
        2,
        "duplicates still complete"
    );
}
