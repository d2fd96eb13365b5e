//! What only a real broker can show: topics switchyard creates (CreateTopics and
//! DescribeConfigs, which the mock cluster lacks) and the KIP-848 consumer group
//! protocol. Built only with the `real-broker` feature; without `SWITCHYARD_TEST_BROKERS`
//! these tests fail.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::*;
use serde_json::json;
use switchyard::model::RunStatus;

const WAIT: Duration = Duration::from_secs(60);

/// `kafka.create_topics = true`: the triggers, status, DLQ and watches topics are created
/// at start with `kafka.topic_partitions` partitions, the watches topic compacted; the
/// entities topic on the first UPSERT_ENTITY run, compacted too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_topics_are_created_when_configured() {
    let kafka = Kafka::start();
    let t = Topics {
        triggers: unique("new-trig"),
        status: unique("new-status"),
        dlq: unique("new-dlq"),
        group: unique("group"),
        actions: unique("actions"),
        entities: unique("new-entities"),
        watches: unique("new-watches"),
        triggers_partitions: 4,
        status_partitions: 4,
    };
    let rx = Receiver::start().await;
    let cfg = config_toml(
        &kafka,
        &t,
        "[kafka]\ncreate_topics = true\ntopic_partitions = 4",
    );
    let d = Dispatcher::start_with_config(&cfg, &[]);
    let deadline = std::time::Instant::now() + WAIT;
    while !d.logs().contains("created missing topics") {
        assert!(
            std::time::Instant::now() < deadline,
            "no topics created:\n{}",
            d.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for topic in [&t.triggers, &t.status, &t.dlq, &t.watches] {
        assert_eq!(kafka.partitions(topic), 4, "partitions of {topic}");
    }
    let upsert = json!({
        "run": {"id": "r_created_entity"},
        "action": {"identifier": "register", "blueprint": "service",
            "invocationMethod": {"type": "UPSERT_ENTITY", "blueprintIdentifier": "service",
                "mapping": {"identifier": "svc-new", "properties": {}}}},
        "trigger": {}, "inputs": {}, "entity": null, "event": null
    });
    kafka
        .produce(
            &t.triggers,
            &[
                record(
                    Some("r_created"),
                    &webhook_event("r_created", &rx.url("/ok"), true),
                ),
                record(Some("r_created_entity"), &upsert),
            ],
        )
        .await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(2, WAIT).await;
    assert_eq!(
        log.sole_terminal("r_created").await.status,
        Some(RunStatus::Success)
    );
    assert_eq!(
        log.sole_terminal("r_created_entity").await.status,
        Some(RunStatus::Success)
    );
    assert_eq!(
        kafka.partitions(&t.entities),
        4,
        "partitions of {}",
        t.entities
    );
    let mut policies = Vec::new();
    for (topic, want) in [
        (&t.watches, "compact"),
        (&t.entities, "compact"),
        (&t.status, "delete"),
        (&t.dlq, "delete"),
    ] {
        let policy = kafka.topic_config(topic, "cleanup.policy").await;
        assert_eq!(policy.as_deref(), Some(want), "cleanup.policy of {topic}");
        policies.push(format!("{topic}={}", policy.unwrap()));
    }
    // The DLQ holds any record the broker's default accepts, plus switchyard's headers.
    let dlq_max = kafka.topic_config(&t.dlq, "max.message.bytes").await;
    assert_eq!(
        dlq_max.as_deref(),
        Some(
            switchyard::kafka::topics::DLQ_MAX_MESSAGE
                .to_string()
                .as_str()
        )
    );
    assert!(
        d.logs().contains("max_input_bytes=1048588"),
        "the input cap follows the DLQ's max.message.bytes: {}",
        d.logs()
    );
    println!(
        "created: 5 topics of 4 partitions; cleanup.policy {policies:?}; DLQ max.message.bytes {}",
        dlq_max.unwrap()
    );
}

/// `kafka.group_protocol = "consumer"` (KIP-848): two members share six partitions, one is
/// killed mid-run and a third joins; every run still ends exactly once and the group
/// commits past every record. The broker owns the session timeout here (scripts/broker.sh
/// sets `group.consumer.session.timeout.ms` to 6 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kip848_consumer_protocol_group_survives_a_kill_and_a_join() {
    const RUNS: usize = 600;
    let kafka = Kafka::start();
    let t = kafka.topics(6).await;
    let rx = Receiver::start().await;
    rx.set_default_delay(Duration::from_millis(10));
    // The classic-only client settings must go: librdkafka refuses them under KIP-848.
    let cfg = Setup::new(&kafka, &t)
        .without(&["kafka", "consumer", "session.timeout.ms"])
        .without(&["kafka", "consumer", "heartbeat.interval.ms"])
        .toml();
    let env = [("SWITCHYARD_KAFKA__GROUP_PROTOCOL", "consumer")];
    let mut members: Vec<Dispatcher> = (0..2)
        .map(|_| Dispatcher::start_with_config(&cfg, &env))
        .collect();
    let runs: Vec<String> = (0..RUNS).map(|n| format!("r_848_{n}")).collect();
    let url = rx.url("/deploy");
    let records: Vec<_> = runs
        .iter()
        .map(|r| record(Some(r), &webhook_event(r, &url, true)))
        .collect();
    kafka.produce(&t.triggers, &records[..RUNS / 2]).await;
    rx.wait_requests(RUNS / 4, WAIT).await;
    members[0].kill();
    members.push(Dispatcher::start_with_config(&cfg, &env));
    kafka.produce(&t.triggers, &records[RUNS / 2..]).await;

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(RUNS, Duration::from_secs(120)).await;
    log.settle(QUIET).await;
    for r in &runs {
        let done = log.sole_terminal(r).await;
        assert_eq!(done.status, Some(RunStatus::Success), "run {r}: {done:?}");
    }
    let committed = kafka.wait_committed(&t, RUNS as i64, WAIT).await;
    assert_eq!(committed, RUNS as i64);
    let logs = members[2].logs();
    assert!(
        logs.contains("group_protocol=Consumer"),
        "the member did not use KIP-848:\n{logs}"
    );
    assert!(logs.contains("partitions assigned"), "{logs}");
    println!(
        "kip-848: runs {RUNS}, one terminal each, committed {committed}, receiver requests {} \
         (duplicates {})",
        rx.count(),
        rx.count() - RUNS
    );
}

/// Static membership (`group.instance.id`) for rolling restarts: a member stopped with
/// SIGTERM and started again with the same id within the session timeout gets its
/// partitions back without a rebalance, and the other member notices nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarts_without_a_rebalance() {
    const RUNS: usize = 60;
    let kafka = Kafka::start();
    let t = kafka.topics(6).await;
    let rx = Receiver::start().await;
    let cfg = |id: &str| {
        config_toml(
            &kafka,
            &t,
            &format!(
                "[kafka.consumer]\n\"session.timeout.ms\" = 30000\n\"group.instance.id\" = \"{id}\"\n"
            ),
        )
    };
    let mut a = Dispatcher::start_with_config(&cfg("sy-static-a"), &[]);
    let b = Dispatcher::start_with_config(&cfg("sy-static-b"), &[]);
    // Stable: both hold partitions and nothing changed for two seconds.
    let deadline = std::time::Instant::now() + WAIT;
    let mut stable_since = None;
    let mut last = (String::new(), String::new());
    loop {
        let now = (a.logs(), b.logs());
        let both = !held(&now.0, &t.triggers).last.is_empty()
            && !held(&now.1, &t.triggers).last.is_empty();
        if both && now == last {
            let since = *stable_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() >= Duration::from_secs(2) {
                break;
            }
        } else {
            stable_since = None;
        }
        last = now;
        assert!(std::time::Instant::now() < deadline, "no stable assignment");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let a_held = held(&a.logs(), &t.triggers).last;
    let b_mark = b.logs().len();

    let status = a.terminate(Duration::from_secs(30));
    assert!(status.success(), "{status:?}:\n{}", a.logs());
    assert!(a.logs().contains("static group member"), "{}", a.logs());
    let a2 = Dispatcher::start_with_config(&cfg("sy-static-a"), &[]);
    let deadline = std::time::Instant::now() + WAIT;
    while held(&a2.logs(), &t.triggers).last.is_empty() {
        assert!(std::time::Instant::now() < deadline, "{}", a2.logs());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let runs: Vec<String> = (0..RUNS).map(|n| format!("r_static_{n}")).collect();
    let url = rx.url("/ok");
    let records: Vec<_> = runs
        .iter()
        .map(|r| record(Some(r), &webhook_event(r, &url, true)))
        .collect();
    kafka.produce(&t.triggers, &records).await;
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(RUNS, WAIT).await;
    log.settle(QUIET).await;
    for r in &runs {
        assert_eq!(log.sole_terminal(r).await.status, Some(RunStatus::Success));
    }
    let a2_held = held(&a2.logs(), &t.triggers).last;
    let b_after = b.logs()[b_mark..].to_owned();
    println!(
        "static membership: a held {a_held:?}, after its restart {a2_held:?}; b's log after \
         the restart: {} lines about partitions",
        b_after.lines().filter(|l| l.contains("partitions")).count()
    );
    assert_eq!(
        a2_held, a_held,
        "the restarted member got its partitions back"
    );
    assert!(
        !b_after.contains("partitions revoked") && !b_after.contains("partitions assigned"),
        "the other member went through a rebalance:\n{b_after}"
    );
}
