//! Per-destination protection and observability: the circuit breaker, the rate limit,
//! and the `/metrics`, `/healthz` and `/readyz` endpoints.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use switchyard::model::RunStatus;

const WAIT: Duration = Duration::from_secs(60);

/// A destination failing with 503 opens its breaker: later attempts are refused without a
/// request, another destination of the same backend keeps flowing, and once the
/// destination recovers a half-open probe closes the breaker again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_per_destination_and_a_probe_closes_it() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let down = Receiver::start().await;
    down.set_default_status(503);
    let up = Receiver::start().await;
    let d = Dispatcher::start(
        &kafka,
        &t,
        r#"
[dispatch]
ordering = "unordered"
[backends.webhook]
concurrency = 1
[backends.webhook.retry]
max_attempts = 4
initial_backoff = "100ms"
max_backoff = "3s"
[backends.webhook.breaker]
failures = 3
open_for = "2s"
"#,
    );
    let mut records = Vec::new();
    for n in 0..10 {
        records.push(record(
            None,
            &webhook_event(&format!("r_down_{n}"), &down.url("/x"), true),
        ));
        records.push(record(
            None,
            &webhook_event(&format!("r_up_{n}"), &up.url("/x"), true),
        ));
    }
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "20 terminal", |u| StatusLog::finished(u) >= 20)
        .await;
    let mut down_summaries = Vec::new();
    for n in 0..10 {
        let up_run = log.sole_terminal(&format!("r_up_{n}")).await;
        assert_eq!(up_run.status, Some(RunStatus::Success), "{up_run:?}");
        let down_run = log.sole_terminal(&format!("r_down_{n}")).await;
        assert_eq!(down_run.status, Some(RunStatus::Failure));
        down_summaries.push(down_run.summary.unwrap_or_default());
    }
    let circuit_failures = down_summaries
        .iter()
        .filter(|s| s.starts_with("circuit open for 127.0.0.1:"))
        .count();
    let http_failures = down_summaries
        .iter()
        .filter(|s| s.starts_with("HTTP 503"))
        .count();
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    let rejected = sample(
        &page,
        "switchyard_breaker_rejections_total{backend=\"WEBHOOK\"}",
    )
    .unwrap_or(0.0);
    println!(
        "breaker: 10 runs × 4 attempts to a 503 destination → {} requests reached it, \
         {rejected} attempts refused by the breaker, {circuit_failures} runs ended on \
         'circuit open'; other destination: {} requests, 10/10 SUCCESS",
        down.count(),
        up.count()
    );
    assert!(
        down.count() < 20,
        "the breaker held back most of the 40 attempts"
    );
    // Each failed run ends either on its last HTTP 503 or on the open circuit.
    assert_eq!(circuit_failures + http_failures, 10, "{down_summaries:#?}");
    assert!(circuit_failures >= 1, "{down_summaries:#?}");
    assert!(rejected >= 20.0, "{page}");
    assert_eq!(up.count(), 10);
    assert_eq!(
        sample(&page, "switchyard_breakers_open{backend=\"WEBHOOK\"}"),
        Some(1.0)
    );

    // The destination recovers: the next run goes through as the half-open probe.
    down.set_default_status(200);
    tokio::time::sleep(Duration::from_secs(2)).await;
    kafka
        .produce(
            &t.triggers,
            &[record(
                None,
                &webhook_event("r_down_back", &down.url("/x"), true),
            )],
        )
        .await;
    log.wait_until(WAIT, "recovered run", |u| StatusLog::finished(u) >= 21)
        .await;
    assert_eq!(
        log.sole_terminal("r_down_back").await.status,
        Some(RunStatus::Success)
    );
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    assert_eq!(
        sample(&page, "switchyard_breakers_open{backend=\"WEBHOOK\"}"),
        Some(0.0)
    );
    let closed = sample(
        &page,
        "switchyard_breaker_transitions_total{backend=\"WEBHOOK\",state=\"closed\"}",
    );
    assert!(closed >= Some(1.0), "{page}");
    assert!(d.logs().contains("circuit breaker opened"));
    assert!(d.logs().contains("circuit breaker closed"));
}

/// A token bucket of 10/s with a burst of 2 spaces 30 attempts over at least ~2.8 s, and
/// no one-second window sees more than rate + burst requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_spaces_attempts() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(
        &kafka,
        &t,
        "[dispatch]\nordering = \"unordered\"\n[backends.webhook.rate_limit]\nper_second = 10\nburst = 2\n",
    );
    let records: Vec<_> = (0..30)
        .map(|n| {
            record(
                None,
                &webhook_event(&format!("r_rate_{n}"), &rx.url("/x"), true),
            )
        })
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "30 terminal", |u| StatusLog::finished(u) >= 30)
        .await;
    let mut at: Vec<_> = rx.requests().iter().map(|r| r.at).collect();
    at.sort();
    let span = at[at.len() - 1] - at[0];
    let busiest = at
        .iter()
        .map(|start| {
            at.iter()
                .filter(|t| **t >= *start && **t < *start + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    let waited = sample(&page, "switchyard_rate_limited_total{backend=\"WEBHOOK\"}");
    println!(
        "rate limit 10/s burst 2: 30 requests over {:.2} s, busiest 1 s window {busiest}, \
         {waited:?} attempts waited",
        span.as_secs_f64()
    );
    assert_eq!(at.len(), 30);
    assert!(span >= Duration::from_millis(2600), "{span:?}");
    assert!(busiest <= 12, "{busiest}");
    assert!(waited >= Some(20.0), "{page}");
}

/// `/metrics` carries the documented series with bounded labels (no run ids, no URLs);
/// `/healthz` and `/readyz` answer once the consumer joined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let kafka = Kafka::start();
    let t = kafka.topics(1).await;
    let rx = Receiver::start().await;
    let d = Dispatcher::start(&kafka, &t, "");
    let base = d.http_base();
    assert_eq!(http_get(&format!("{base}/healthz")).await.0, 200);
    kafka
        .produce(
            &t.triggers,
            &[
                record(None, &webhook_event("r_m_ok", &rx.url("/ok"), true)),
                record(
                    None,
                    &webhook_event("r_m_fail", &rx.url("/no?status=400"), true),
                ),
                (None, b"{not json".to_vec()),
            ],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(WAIT, "2 terminal", |u| StatusLog::finished(u) >= 2)
        .await;
    kafka.wait_committed(&t, 3, WAIT).await;
    // Lag comes from librdkafka statistics (every 5 s); gauges are refreshed every 1 s.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let series = format!(
        "switchyard_consumer_lag{{partition=\"0\",topic=\"{}\"}}",
        t.triggers
    );
    let page = loop {
        let page = http_get(&format!("{base}/metrics")).await.1;
        if sample(&page, &series).is_some() || std::time::Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let (ready, why) = http_get(&format!("{base}/readyz")).await;
    assert_eq!(ready, 200, "{why}");
    let tp = format!("partition=\"0\",topic=\"{}\"", t.triggers);
    for (series, want) in [
        (
            "switchyard_dispatches_total{backend=\"WEBHOOK\",outcome=\"succeeded\"}".to_owned(),
            1.0,
        ),
        (
            "switchyard_dispatches_total{backend=\"WEBHOOK\",outcome=\"permanent\"}".to_owned(),
            1.0,
        ),
        (
            "switchyard_dlq_records_total{class=\"malformed_json\"}".to_owned(),
            1.0,
        ),
        (
            "switchyard_dlq_records_total{class=\"http_status\"}".to_owned(),
            1.0,
        ),
        (
            format!(
                "switchyard_events_consumed_total{{topic=\"{}\"}}",
                t.triggers
            ),
            3.0,
        ),
        (format!("switchyard_committed_watermark{{{tp}}}"), 3.0),
        (format!("switchyard_partition_in_flight{{{tp}}}"), 0.0),
        (format!("switchyard_oldest_in_flight_seconds{{{tp}}}"), 0.0),
        (format!("switchyard_consumer_lag{{{tp}}}"), 0.0),
        ("switchyard_dlq_blocked".to_owned(), 0.0),
        ("switchyard_paused_partitions".to_owned(), 0.0),
        ("switchyard_assigned_partitions".to_owned(), 1.0),
        (
            "switchyard_dispatch_duration_seconds_count{backend=\"WEBHOOK\"}".to_owned(),
            2.0,
        ),
        (
            "switchyard_end_to_end_seconds_count{backend=\"WEBHOOK\"}".to_owned(),
            2.0,
        ),
        ("switchyard_in_flight{backend=\"WEBHOOK\"}".to_owned(), 0.0),
    ] {
        assert_eq!(sample(&page, &series), Some(want), "{series}\n{page}");
    }
    // One record a finished run (within `dispatch.in_progress_after`): the success with
    // its response, and the failure (the malformed event has no run id: a DLQ record only).
    assert!(sample(&page, "switchyard_run_updates_total") >= Some(2.0));
    for forbidden in ["r_m_ok", "r_m_fail", "127.0.0.1", "/ok"] {
        assert!(!page.contains(forbidden), "{forbidden} in\n{page}");
    }
    let names: std::collections::BTreeSet<&str> = page
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    println!("{} series names: {names:?}", names.len());
    assert!(names.iter().all(|n| n.starts_with("switchyard_")));
}
