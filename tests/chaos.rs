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

use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::receiver::Receiver;
use common::*;

struct Tansu {
    child: Option<Child>,
    port: u16,
    db: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl Tansu {
    fn start(port: u16, dir: &std::path::Path) -> Tansu {
        let mut t = Tansu {
            child: None,
            port,
            db: dir.join("tansu.db"),
            log: dir.join("tansu.log"),
        };
        t.spawn();
        t
    }

    fn spawn(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = Command::new("tansu")
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            // Tansu reads the SQLite path relative to its working directory.
            .args(["--storage-engine", "sqlite://tansu.db"])
            .current_dir(self.db.parent().unwrap())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("tansu on PATH (the real-broker pass installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "tansu did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().unwrap().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        self.stop();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "Tansu 0.6.0 SQLite engine panics on OffsetCommit; see the module comment"]
async fn broker_restart_mid_run_loses_no_run() {
    if std::env::var("SWITCHYARD_TEST_BROKERS").is_err() {
        println!("runs in the real-broker pass (it starts its own Tansu)");
        return;
    }
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
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
