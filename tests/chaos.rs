//! Chaos: group failover (any broker), and a broker restart mid-run. The restart test
//! starts its own Tansu (file-backed SQLite storage, so data survives the restart) and
//! runs only in the real-broker pass, where `tansu` is installed.
//!
//! The restart test is ignored for now: Tansu 0.6.0's SQLite engine panics while serving the consumer
//! group's OffsetCommit (`tansu-storage` service.rs:337 `unreachable!()` under
//! `update_group`, then lite.rs:503 "more or less than one row"), after which produce
//! requests fail with UNKNOWN_SERVER_ERROR. The memory engine loses every topic on a
//! restart, so it cannot stand in. Run it with `cargo test --test chaos -- --ignored`
//! against a broker whose file-backed storage works.

mod common;

use std::time::Duration;

use common::receiver::Receiver;
use common::tansu::{free_port, Tansu};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "Tansu 0.6.0 SQLite engine panics on OffsetCommit; see the module comment"]
async fn broker_restart_mid_run_loses_no_run() {
    if std::env::var("SWITCHYARD_TEST_BROKERS").is_err() {
        println!("runs in the real-broker pass (it starts its own Tansu)");
        return;
    }
    let port = free_port();
    let dir = scratch_dir();
    let mut broker = Tansu::start(port, &dir);
    let kafka = Kafka::at(&format!("127.0.0.1:{port}"));
    let t = kafka.topics(3).await;
    let rx = Receiver::start().await;
    rx.set_default_delay(Duration::from_millis(20));
    let _d = Dispatcher::start(&kafka, &t, "");
    let url = rx.url("/deploy");
    let runs: Vec<String> = (0..300).map(|n| format!("r_brk_{n}")).collect();
    let records: Vec<_> = runs
        .iter()
        .map(|r| record(Some(r), &webhook_event(r, &url, true)))
        .collect();
    kafka.produce_refetchable(&t.triggers, &records).await;
    rx.wait_requests(100, Duration::from_secs(60)).await;

    broker.stop();
    let down_at = rx.count();
    tokio::time::sleep(Duration::from_secs(2)).await;
    broker.spawn();

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(Duration::from_secs(180), "300 terminal runs", |u| {
        StatusLog::finished(u) >= 300
    })
    .await;
    let missing: Vec<_> = runs.iter().filter(|r| log.terminal(r).is_empty()).collect();
    let requests = rx.count();
    println!(
        "broker restart: runs 300, requests before the restart {down_at}, requests {requests}, \
         duplicates {}, lost {}",
        requests.saturating_sub(300),
        missing.len()
    );
    assert!(missing.is_empty(), "{missing:?}");
}

/// Three instances share a group on six partitions; one is killed mid-run (SIGKILL) and a
/// fourth joins. Every run ends with exactly one terminal status; none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_failover_keeps_exactly_one_terminal_per_run() {
    const RUNS: usize = 3000;
    let kafka = Kafka::start();
    if kafka.is_real() && std::env::var_os("SWITCHYARD_TEST_FAILOVER_ON_REAL").is_none() {
        // Tansu 0.6.0 does not reliably evict a SIGKILLed member: in one CI run the dead
        // member kept its two partitions through later rebalances for minutes, so their
        // events were never consumed (in another run it was evicted after the session
        // timeout and the test passed). See README "Testing".
        println!("skipped on Tansu: it does not reliably evict a killed group member");
        return;
    }
    let t = kafka.topics(6).await;
    let rx = Receiver::start().await;
    rx.set_default_delay(Duration::from_millis(12)); // 5–20 ms on average with queuing
    let mut instances: Vec<Dispatcher> =
        (0..3).map(|_| Dispatcher::start(&kafka, &t, "")).collect();
    let url = rx.url("/deploy");
    let runs: Vec<String> = (0..RUNS).map(|n| format!("r_fo_{n}")).collect();
    let records: Vec<_> = runs
        .iter()
        .map(|r| record(Some(r), &webhook_event(r, &url, true)))
        .collect();
    // Produced while the instances dispatch, one record per batch (see README "Testing"),
    // so the kill lands mid-stream.
    let producer_side = Kafka::at(&kafka.brokers);
    let produce = producer_side.produce_each(&t.triggers, &records);
    let chaos = async {
        rx.wait_requests(RUNS / 3, Duration::from_secs(120)).await;
        instances[0].kill();
        let at_kill = rx.count();
        instances.push(Dispatcher::start(&kafka, &t, ""));
        at_kill
    };
    let ((), at_kill) = tokio::join!(produce, chaos);

    let mut log = StatusLog::new(&kafka, &t);
    log.wait_until(Duration::from_secs(240), "every run terminal", |u| {
        StatusLog::finished(u) >= RUNS
    })
    .await;
    log.settle(Duration::from_secs(3)).await;
    let lost = runs.iter().filter(|r| log.terminal(r).is_empty()).count();
    let doubled = runs.iter().filter(|r| log.terminal(r).len() > 1).count();
    let terminal: usize = runs.iter().map(|r| log.terminal(r).len()).sum();
    let requests = rx.count();
    println!(
        "group failover: runs {RUNS}, terminal statuses {terminal}, lost {lost}, runs with \
         more than one terminal {doubled}, receiver requests {requests} (duplicates {}), \
         requests when one instance was killed {at_kill}",
        requests.saturating_sub(RUNS)
    );
    assert_eq!(lost, 0);
    assert_eq!(doubled, 0, "every run has exactly one terminal status");
}
