//! Chaos on Apache Kafka: members killed mid-run (once, and repeatedly), the broker killed
//! and restarted on its log, the DLQ refusing writes, and hanging requests in the way of a
//! rebalance. Every test asserts that each run has exactly one terminal update (SUCCESS),
//! that the group committed past every record, and bounds the duplicate deliveries by
//! what the killed members had started and not committed. Each prints one `chaos:` line
//! with its counts (`.ci/run` runs these tests with `--nocapture`).
//!
//! Built only with the `real-broker` feature (see Cargo.toml); without
//! `SWITCHYARD_TEST_BROKERS` the shared-broker tests fail instead of running on the mock.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::broker::{Broker, BrokerOptions};
use common::receiver::Receiver;
use common::*;
use rand::{Rng, SeedableRng};
use rdkafka::producer::{FutureProducer, FutureRecord};
use switchyard::model::{RunStatus, RunUpdate};

type Record = (Option<String>, Vec<u8>);

/// The longest a partition that stays with its member may go without a terminal update
/// while another member dies, joins or drains (runs arrive every ~60 ms per partition).
/// A regression guard: eager assignment stopped every partition for 4.8 s.
const UNMOVED_GAP_MS: i128 = 2500;

/// The rebalance target of issue 20 (BENCHMARKS.md): each run prints whether it held.
/// Measured on Apache Kafka 4.4: 398–411 ms in nine CI runs, 1,253 ms in one.
const GAP_TARGET_MS: i128 = 1000;

/// The slack above the grace for a partition kept by a member that drains a revoke
/// (librdkafka pauses its whole assignment until the drain returns).
const KEPT_SLACK_MS: i128 = 2500;

/// Runs `prefix_0 … prefix_{n-1}`, each a WEBHOOK event keyed by its own run id; `url_of`
/// picks each run's URL.
fn workload(
    n: usize,
    prefix: &str,
    url_of: impl Fn(usize) -> String,
) -> (Vec<String>, Vec<Record>) {
    let runs: Vec<String> = (0..n).map(|i| format!("{prefix}_{i}")).collect();
    let records = runs
        .iter()
        .enumerate()
        .map(|(i, r)| record(Some(r), &webhook_event(r, &url_of(i), true)))
        .collect();
    (runs, records)
}

/// Produce `records` at about `per_second`, batched the way a real producer batches
/// (linger 5 ms, many records per request), then wait for every acknowledgement.
/// Bounded by the number of records.
async fn produce_paced(kafka: &Kafka, topic: &str, records: &[Record], per_second: usize) {
    let p: FutureProducer = kafka
        .config()
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .create()
        .unwrap();
    let tick = Duration::from_millis(50);
    let per_tick = (per_second / 20).max(1);
    let mut pending = Vec::with_capacity(records.len());
    let mut next = tokio::time::Instant::now();
    for chunk in records.chunks(per_tick) {
        for (key, value) in chunk {
            let mut r = FutureRecord::<str, [u8]>::to(topic).payload(value);
            if let Some(k) = key {
                r = r.key(k);
            }
            pending.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
        }
        next += tick;
        tokio::time::sleep_until(next).await;
    }
    for f in pending {
        f.await.expect("delivery future").expect("delivered");
    }
}

/// How far each member's log had got at one moment (whole lines), to tell what happened
/// before that moment from what happened after it.
fn marks(members: &[Dispatcher]) -> Vec<usize> {
    members
        .iter()
        .map(|m| m.logs().rfind('\n').map_or(0, |i| i + 1))
        .collect()
}

/// Partitions that did not move after the mark, each with the member that kept it: held
/// then by a member other than `gone`, and assigned to no other member afterwards.
/// (Members that started after the mark have no mark: their whole log is "afterwards".)
fn unmoved(
    logs: &[String],
    marks: &[usize],
    gone: Option<usize>,
    topic: &str,
) -> BTreeMap<i32, usize> {
    let mark = |i: usize| marks.get(i).copied().unwrap_or(0);
    let before: Vec<BTreeSet<i32>> = (0..logs.len())
        .map(|i| held(&logs[i][..mark(i)], topic).last)
        .collect();
    let after: Vec<BTreeSet<i32>> = (0..logs.len())
        .map(|i| held(&logs[i][mark(i)..], topic).ever)
        .collect();
    let mut out = BTreeMap::new();
    for (owner, parts) in before.iter().enumerate() {
        if Some(owner) == gone {
            continue;
        }
        for p in parts {
            if (0..logs.len()).all(|j| j == owner || !after[j].contains(p)) {
                out.insert(*p, owner);
            }
        }
    }
    out
}

fn millis_of(at: &str) -> i128 {
    time::OffsetDateTime::parse(at, &time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|e| panic!("run update time {at:?}: {e}"))
        .unix_timestamp_nanos()
        / 1_000_000
}

/// The longest time between two consecutive terminal updates of one partition, over
/// `partitions` and the runs `counted` picks: (gap in ms, partition).
fn longest_gap(
    updates: &[RunUpdate],
    partitions: &BTreeSet<i32>,
    counted: impl Fn(&str) -> bool,
) -> (i128, i32) {
    let mut times: BTreeMap<i32, Vec<i128>> = BTreeMap::new();
    for u in updates
        .iter()
        .filter(|u| u.is_terminal() && counted(&u.run_id))
    {
        let src = u
            .source
            .as_ref()
            .expect("terminal updates name their source");
        if partitions.contains(&src.partition) {
            times
                .entry(src.partition)
                .or_default()
                .push(millis_of(&u.at));
        }
    }
    let mut worst = (0, -1);
    for (p, mut t) in times {
        t.sort_unstable();
        for w in t.windows(2) {
            if w[1] - w[0] > worst.0 {
                worst = (w[1] - w[0], p);
            }
        }
    }
    worst
}

/// The outcome of a chaos run, from the settled status topic and the receiver.
struct Tally {
    runs: usize,
    terminal: usize,
    lost: Vec<String>,
    doubled: Vec<String>,
    not_success: Vec<String>,
    requests: usize,
    requested_runs: usize,
    /// Where each run's trigger was read from (from its terminal update).
    source: HashMap<String, (i32, i64)>,
}

impl Tally {
    fn of(log: &StatusLog, runs: &[String], rx: &Receiver) -> Tally {
        let mut terminals: HashMap<&str, Vec<&RunUpdate>> = HashMap::new();
        for u in log.updates.iter().filter(|u| u.is_terminal()) {
            terminals.entry(u.run_id.as_str()).or_default().push(u);
        }
        let mut t = Tally {
            runs: runs.len(),
            terminal: terminals.values().map(Vec::len).sum(),
            lost: Vec::new(),
            doubled: Vec::new(),
            not_success: Vec::new(),
            requests: 0,
            requested_runs: 0,
            source: HashMap::new(),
        };
        for r in runs {
            match terminals.get(r.as_str()).map(Vec::as_slice) {
                None | Some([]) => t.lost.push(r.clone()),
                Some([one]) => {
                    if one.status != Some(RunStatus::Success) {
                        t.not_success.push(r.clone());
                    }
                    let src = one
                        .source
                        .as_ref()
                        .expect("terminal updates name their source");
                    t.source.insert(r.clone(), (src.partition, src.offset));
                }
                Some(many) => {
                    let shown: Vec<String> = many
                        .iter()
                        .map(|u| format!("seq {} at {} {:?} {:?}", u.seq, u.at, u.status, u.source))
                        .collect();
                    t.doubled.push(format!("{r}: {}", shown.join("; ")));
                }
            }
        }
        let requests = rx.requests();
        t.requests = requests.len();
        t.requested_runs = requests
            .iter()
            .filter_map(|s| s.body["run"].as_str())
            .collect::<HashSet<_>>()
            .len();
        t
    }

    fn duplicates(&self) -> usize {
        self.requests - self.requested_runs
    }

    /// Every run ended exactly once, and the group committed past every record.
    fn assert_complete(&self, committed: i64) {
        self.assert_exactly_once();
        assert_eq!(committed, self.runs as i64, "committed offsets = records");
    }

    /// Every run: exactly one terminal update, SUCCESS, and at least one request.
    fn assert_exactly_once(&self) {
        assert!(
            self.lost.is_empty(),
            "runs without a terminal update: {:?}",
            self.lost
        );
        assert!(
            self.doubled.is_empty(),
            "runs with more than one terminal update: {:?}",
            self.doubled
        );
        assert!(
            self.not_success.is_empty(),
            "runs whose terminal update is not SUCCESS: {:?}",
            self.not_success
        );
        assert_eq!(
            self.requested_runs, self.runs,
            "every run reached the receiver"
        );
    }
}

/// Read the status topic until every run has a terminal update and the topic settled,
/// and the group's committed offsets (up to 90 s for them to reach every record; `runs`
/// are all the records of the triggers topic). The caller prints its `chaos:` line,
/// then checks with [`Tally::assert_complete`].
async fn settle_and_tally(
    kafka: &Kafka,
    t: &Topics,
    runs: &[String],
    rx: &Receiver,
    timeout: Duration,
) -> (StatusLog, Tally, i64) {
    let mut log = StatusLog::new(kafka, t);
    log.wait_finished(runs.len(), timeout).await;
    log.settle(QUIET).await;
    let tally = Tally::of(&log, runs, rx);
    let want = runs.len() as i64;
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut committed = kafka.committed_total(&t.group, &t.triggers, t.triggers_partitions);
    while committed < want && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        committed = kafka.committed_total(&t.group, &t.triggers, t.triggers_partitions);
    }
    (log, tally, committed)
}

/// Runs a killed member had started and not committed: in the partitions it held when it
/// died, at or past the committed offset read right after the kill, and requested at the
/// receiver by then (plus 1 s for a request already on the wire; the partitions move to
/// another member only after the 6 s session timeout).
fn in_flight_at_kill(
    tally: &Tally,
    held_at_kill: &BTreeSet<i32>,
    committed: &HashMap<i32, i64>,
    killed_at: Instant,
    rx: &Receiver,
) -> BTreeSet<String> {
    let cutoff = killed_at + Duration::from_secs(1);
    rx.requests()
        .iter()
        .filter(|s| s.at <= cutoff)
        .filter_map(|s| s.body["run"].as_str())
        .filter(|run| {
            tally.source.get(*run).is_some_and(|(p, offset)| {
                held_at_kill.contains(p) && *offset >= committed.get(p).copied().unwrap_or(0)
            })
        })
        .map(str::to_owned)
        .collect()
}

/// A receiver that answers in 10 ms, and `n` members of the test's group (with `extra`
/// configuration), each of which has joined.
async fn receiver_and_members(
    kafka: &Kafka,
    t: &Topics,
    n: usize,
    extra: &str,
) -> (Receiver, Vec<Dispatcher>) {
    let rx = Receiver::start().await;
    rx.set_default_delay(Duration::from_millis(10));
    let members: Vec<Dispatcher> = (0..n).map(|_| Dispatcher::start(kafka, t, extra)).collect();
    wait_joined(&members.iter().collect::<Vec<_>>(), Duration::from_secs(60)).await;
    (rx, members)
}

async fn wait_joined(members: &[&Dispatcher], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    for m in members {
        while !m.logs().contains("partitions assigned") {
            assert!(
                Instant::now() < deadline,
                "a member never joined:\n{}",
                m.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Three members share six partitions; one is killed (SIGKILL) a third of the way
/// through and a fourth joins. Also measures the longest gap in terminal updates on the
/// partitions that never moved (a member that keeps its partitions should keep flowing).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_group_failover_keeps_exactly_one_terminal_per_run() {
    const RUNS: usize = 3000;
    let kafka = Kafka::start();
    let t = kafka.topics(6).await;
    let (rx, mut members) = receiver_and_members(&kafka, &t, 3, "").await;
    let (runs, records) = workload(RUNS, "r_fo", |_| rx.url("/deploy"));
    // 100 runs/s for 30 s, so the kill, the eviction (6 s session timeout) and the join
    // all happen while runs keep arriving on every partition.
    let produce = produce_paced(&kafka, &t.triggers, &records, 100);
    let chaos = async {
        rx.wait_requests(RUNS / 3, Duration::from_secs(120)).await;
        let at_kill = marks(&members);
        members[0].kill();
        let killed_at = Instant::now();
        let committed = kafka.committed(&t.group, &t.triggers, 6);
        members.push(Dispatcher::start(&kafka, &t, ""));
        (killed_at, committed, at_kill)
    };
    let ((), (killed_at, committed_at_kill, at_kill)) = tokio::join!(produce, chaos);

    let (log, tally, committed) =
        settle_and_tally(&kafka, &t, &runs, &rx, Duration::from_secs(240)).await;

    let logs: Vec<String> = members.iter().map(Dispatcher::logs).collect();
    let held_at_kill = held(&logs[0], &t.triggers).last;
    assert!(
        !held_at_kill.is_empty(),
        "the killed member held no partition:\n{}",
        logs[0]
    );
    let in_flight = in_flight_at_kill(&tally, &held_at_kill, &committed_at_kill, killed_at, &rx);
    let still: BTreeSet<i32> = unmoved(&logs, &at_kill, Some(0), &t.triggers)
        .into_keys()
        .collect();
    assert!(
        !still.is_empty(),
        "every partition moved; nothing to measure the gap on"
    );
    let (gap, gap_partition) = longest_gap(&log.updates, &still, |_| true);
    println!(
        "chaos: group failover: runs {RUNS}, terminal updates {}, lost {}, more than one \
         terminal {}, committed {committed}, receiver requests {} (duplicates {}), killed \
         member's in-flight {} on partitions {held_at_kill:?}, unmoved partitions {still:?}, \
         longest gap in terminal updates there {gap} ms (partition {gap_partition}; \
         target {GAP_TARGET_MS} ms {})",
        tally.terminal,
        tally.lost.len(),
        tally.doubled.len(),
        tally.requests,
        tally.duplicates(),
        in_flight.len(),
        if gap <= GAP_TARGET_MS {
            "met"
        } else {
            "NOT met"
        },
    );
    tally.assert_complete(committed);
    assert!(
        tally.duplicates() <= in_flight.len(),
        "{} duplicate deliveries, but the killed member had only {} runs in flight",
        tally.duplicates(),
        in_flight.len()
    );
    // Eager assignment stopped every partition until the dead member was evicted (4.8 s
    // here); cooperative-sticky leaves the survivors' partitions alone.
    assert!(
        gap <= UNMOVED_GAP_MS,
        "partition {gap_partition} never moved but had no terminal update for {gap} ms"
    );
}

/// Five times: SIGKILL a random member, start it again 3 s later. 10,000 runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_repeated_churn_keeps_exactly_one_terminal_per_run() {
    const RUNS: usize = 10_000;
    const KILLS: usize = 5;
    let kafka = Kafka::start();
    let t = kafka.topics(6).await;
    let (rx, mut members) = receiver_and_members(&kafka, &t, 3, "").await;
    let seed: u64 = rand::rng().random();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let (runs, records) = workload(RUNS, "r_churn", |_| rx.url("/deploy"));
    // 200 runs/s for 50 s; a kill every 9 s from the 5th second on.
    let produce = produce_paced(&kafka, &t.triggers, &records, 200);
    let mut dead_logs: Vec<String> = Vec::new();
    let chaos = async {
        let mut kills = Vec::new();
        for _ in 0..KILLS {
            tokio::time::sleep(Duration::from_secs(6)).await;
            let victim = rng.random_range(0..members.len());
            members[victim].kill();
            let killed_at = Instant::now();
            let committed = kafka.committed(&t.group, &t.triggers, 6);
            let logs = members[victim].logs();
            kills.push((victim, killed_at, committed, dead_logs.len()));
            dead_logs.push(logs);
            tokio::time::sleep(Duration::from_secs(3)).await;
            members[victim] = Dispatcher::start(&kafka, &t, "");
        }
        kills
    };
    let ((), kills) = tokio::join!(produce, chaos);

    let (_, tally, committed) =
        settle_and_tally(&kafka, &t, &runs, &rx, Duration::from_secs(300)).await;
    let mut in_flight = BTreeSet::new();
    let mut victims = Vec::new();
    for (victim, killed_at, committed, log_index) in &kills {
        let held_at_kill = held(&dead_logs[*log_index], &t.triggers).last;
        victims.push(format!("member {victim} holding {held_at_kill:?}"));
        in_flight.extend(in_flight_at_kill(
            &tally,
            &held_at_kill,
            committed,
            *killed_at,
            &rx,
        ));
    }
    let dups = tally.duplicates();
    println!(
        "chaos: repeated churn: runs {RUNS}, kills {KILLS} (seed {seed}: {}), terminal \
         updates {}, lost {}, more than one terminal {}, committed {committed}, receiver \
         requests {} (duplicates {dups} = {:.2}%), killed members' in-flight {}",
        victims.join(", "),
        tally.terminal,
        tally.lost.len(),
        tally.doubled.len(),
        tally.requests,
        100.0 * dups as f64 / RUNS as f64,
        in_flight.len(),
    );
    tally.assert_complete(committed);
    assert!(
        dups <= in_flight.len(),
        "{dups} duplicate deliveries, but the killed members had only {} runs in flight",
        in_flight.len()
    );
}

/// SIGKILL the broker mid-run and start it again on the same log directory. The members
/// are not restarted: they reconnect, rejoin, and finish every run exactly once. Runs on
/// a broker of its own, so the tests sharing CI's broker are not hit.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_broker_restart_mid_run_loses_no_run() {
    const RUNS: usize = 1000;
    let mut broker = Broker::start(BrokerOptions::default());
    let kafka = Kafka::at(&broker.bootstrap());
    let t = kafka.topics(3).await;
    let (rx, mut members) = receiver_and_members(&kafka, &t, 2, "").await;
    let (runs, records) = workload(RUNS, "r_brk", |_| rx.url("/deploy"));
    // 50 runs/s for 20 s; the broker is down for a few seconds a third of the way in.
    let produce = produce_paced(&kafka, &t.triggers, &records, 50);
    let chaos = async {
        rx.wait_requests(RUNS / 3, Duration::from_secs(120)).await;
        let before = rx.count();
        broker.kill();
        let down = Instant::now();
        tokio::time::sleep(Duration::from_secs(3)).await;
        broker.restart();
        (before, down.elapsed())
    };
    let ((), (before, down_for)) = tokio::join!(produce, chaos);

    let (_, tally, committed) =
        settle_and_tally(&kafka, &t, &runs, &rx, Duration::from_secs(240)).await;
    let alive = members
        .iter_mut()
        .filter_map(|m| m.is_running().then_some(()))
        .count();
    println!(
        "chaos: broker restart: runs {RUNS}, broker down {:.1} s after {before} requests, \
         terminal updates {}, lost {}, more than one terminal {}, committed {committed}, \
         receiver requests {} (duplicates {}), members still running {alive} of 2",
        down_for.as_secs_f64(),
        tally.terminal,
        tally.lost.len(),
        tally.doubled.len(),
        tally.requests,
        tally.duplicates(),
    );
    tally.assert_complete(committed);
    assert_eq!(
        alive, 2,
        "a member exited instead of riding out the broker restart"
    );
    let reconnected = members
        .iter()
        .all(|m| m.logs().contains("partitions assigned"));
    assert!(reconnected);
}

/// The DLQ refuses writes (its `max.message.bytes` below any DLQ record): the partition
/// holding the malformed record stops committing at that record, over several commit
/// intervals, while the other partitions go on; once the DLQ takes writes again,
/// everything commits and the DLQ holds exactly one record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_dlq_outage_holds_the_partition_until_the_dlq_recovers() {
    const PARTITIONS: i32 = 3;
    let kafka = Kafka::start();
    let t = kafka.topics(PARTITIONS).await;
    let rx = Receiver::start().await;
    let cfg = config_toml(&kafka, &t, "");
    // Delivery failures surface after 3 s instead of librdkafka's default 300 s.
    let env = [("SWITCHYARD_KAFKA__PRODUCER__MESSAGE.TIMEOUT.MS", "3000")];
    let d = Dispatcher::start_with_config(&cfg, &env);
    wait_joined(&[&d], Duration::from_secs(60)).await;
    kafka
        .alter_topic_config(&t.dlq, "max.message.bytes", "64")
        .await;

    // Partition 0: ten runs, the malformed record, ten more. Partitions 1 and 2: twenty
    // runs each.
    let url = rx.url("/ok");
    let p: FutureProducer = kafka.producer();
    let mut runs = Vec::new();
    let mut poison_offset = None;
    for (partition, n) in [(0, 21), (1, 20), (2, 20)] {
        for i in 0..n {
            let (offset_sent, run) = if partition == 0 && i == 10 {
                let r = FutureRecord::<str, [u8]>::to(&t.triggers)
                    .partition(0)
                    .payload(&b"not json"[..]);
                (p.send(r, Duration::from_secs(10)).await, None)
            } else {
                let run = format!("r_dlq_{partition}_{i}");
                let value = serde_json::to_vec(&webhook_event(&run, &url, true)).unwrap();
                let r = FutureRecord::to(&t.triggers)
                    .partition(partition)
                    .key(&run)
                    .payload(&value);
                (p.send(r, Duration::from_secs(10)).await, Some(run))
            };
            let offset = offset_sent.map_err(|(e, _)| e).expect("delivered").offset;
            match run {
                Some(run) => runs.push(run),
                None => poison_offset = Some(offset),
            }
        }
    }
    let poison_offset = poison_offset.expect("the malformed record was sent");
    let mut log = StatusLog::new(&kafka, &t);
    log.wait_finished(runs.len(), Duration::from_secs(60)).await;

    // Several commit intervals (250 ms) with the DLQ down: partition 0 stays at the
    // malformed record, the others reach their end.
    let mut samples = 0;
    for _ in 0..12 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let c = kafka.committed(&t.group, &t.triggers, PARTITIONS);
        assert!(
            c.get(&0).copied().unwrap_or(0) <= poison_offset,
            "committed {c:?} past the record whose DLQ write failed (offset {poison_offset})"
        );
        samples += 1;
    }
    let page = http_get(&format!("{}/metrics", d.http_base())).await.1;
    let failures = sample(&page, "switchyard_dlq_write_failures_total").unwrap_or(0.0);
    assert!(failures >= 1.0, "no failed DLQ write counted:\n{page}");
    assert_eq!(sample(&page, "switchyard_dlq_blocked"), Some(1.0));
    let during = kafka.committed(&t.group, &t.triggers, PARTITIONS);
    assert_eq!(
        during.get(&0),
        Some(&poison_offset),
        "partition 0 committed up to the malformed record: {during:?}"
    );
    assert_eq!(
        during.get(&1),
        Some(&20),
        "partition 1 kept committing: {during:?}"
    );
    assert_eq!(
        during.get(&2),
        Some(&20),
        "partition 2 kept committing: {during:?}"
    );

    kafka
        .alter_topic_config(&t.dlq, "max.message.bytes", "1048588")
        .await;
    let dlq = read_dlq(&kafka, &t, 1, Duration::from_secs(60)).await;
    assert_eq!(dlq[0].headers["switchyard-error-class"], "malformed_json");
    assert_eq!(
        dlq[0].headers["switchyard-source"],
        format!("{}/0/{poison_offset}", t.triggers)
    );
    let committed = kafka.wait_committed(&t, 61, Duration::from_secs(60)).await;
    assert_eq!(committed, 61);
    log.settle(QUIET).await;
    let tally = Tally::of(&log, &runs, &rx);
    tally.assert_exactly_once();
    println!(
        "chaos: dlq outage: {} failed DLQ writes; partition 0 held at offset {poison_offset} \
         over {samples} samples 250 ms apart while partitions 1 and 2 committed 20 each; \
         after recovery: DLQ records 1, committed {committed} of 61, runs {} with one \
         terminal each",
        failures,
        runs.len()
    );
}

/// Hanging requests (15 s) in partitions that move when a fourth member joins: the
/// revoking members wait at most `shutdown_grace` (3 s) before they hand the partitions
/// over, and the partitions that do not move keep flowing meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn chaos_hanging_backends_do_not_hold_a_rebalance() {
    const RUNS: usize = 3000;
    const GRACE_MS: i128 = 3000;
    let kafka = Kafka::start();
    let t = kafka.topics(6).await;
    let extra = "[dispatch]\nshutdown_grace = \"3s\"\n\
                 [backends.webhook]\ntimeout = \"60s\"\n\
                 [backends.webhook.retry]\nmax_attempts = 1\n";
    let (rx, mut members) = receiver_and_members(&kafka, &t, 3, extra).await;
    // One run in 50 hangs for 15 s; 100 runs/s for 30 s.
    let hangs = |i: usize| i % 50 == 7;
    let (runs, records) = workload(RUNS, "r_hang", |i| {
        if hangs(i) {
            rx.url("/hang?delay_ms=15000")
        } else {
            rx.url("/deploy")
        }
    });
    let produce = produce_paced(&kafka, &t.triggers, &records, 100);
    let chaos = async {
        rx.wait_requests(RUNS / 3, Duration::from_secs(120)).await;
        let at_join = marks(&members);
        members.push(Dispatcher::start(&kafka, &t, extra));
        at_join
    };
    let ((), at_join) = tokio::join!(produce, chaos);

    let (log, tally, committed) =
        settle_and_tally(&kafka, &t, &runs, &rx, Duration::from_secs(240)).await;

    let logs: Vec<String> = members.iter().map(Dispatcher::logs).collect();
    // "revoke drained" lines: how long each revoke waited, and what it abandoned.
    let mut revokes: Vec<(i128, u64)> = Vec::new();
    for l in &logs {
        for line in l.lines().filter(|l| l.contains("revoke drained")) {
            let field = |name: &str| -> u64 {
                let at = line.find(&format!("{name}=")).expect(line) + name.len() + 1;
                line[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .expect(line)
            };
            revokes.push((i128::from(field("waited_ms")), field("abandoned")));
        }
    }
    assert!(!revokes.is_empty(), "no revoke happened");
    let longest = revokes.iter().map(|r| r.0).max().unwrap();
    let abandoned: u64 = revokes.iter().map(|r| r.1).sum();
    // librdkafka pauses a member's whole assignment until its revoke callback returns,
    // so the partitions a revoking member keeps wait for its drain (at most the grace);
    // the members that give nothing up must not notice.
    let revoking: BTreeSet<usize> = (0..logs.len())
        .filter(|i| {
            let from = at_join.get(*i).copied().unwrap_or(0);
            logs[*i][from..].contains("partitions revoked")
        })
        .collect();
    let still = unmoved(&logs, &at_join, None, &t.triggers);
    let (elsewhere, kept): (BTreeSet<i32>, BTreeSet<i32>) = {
        let (a, b): (Vec<_>, Vec<_>) = still.iter().partition(|(_, o)| !revoking.contains(o));
        (
            a.into_iter().map(|(p, _)| *p).collect(),
            b.into_iter().map(|(p, _)| *p).collect(),
        )
    };
    assert!(
        !elsewhere.is_empty(),
        "no partition stayed with a member that revoked nothing; nothing to measure"
    );
    // The flow is the quick runs; a hanging run ends 15 s after it started, whatever else
    // happens.
    let hanging: HashSet<&str> = (0..RUNS)
        .filter(|i| hangs(*i))
        .map(|i| runs[i].as_str())
        .collect();
    let quick = |r: &str| !hanging.contains(r);
    let (gap, gap_partition) = longest_gap(&log.updates, &elsewhere, quick);
    let (kept_gap, kept_partition) = longest_gap(&log.updates, &kept, quick);
    println!(
        "chaos: hanging backends during a rebalance: runs {RUNS} (60 hanging 15 s), committed \
         {committed}, revokes {}, \
         longest revoke {longest} ms (grace {GRACE_MS} ms), runs abandoned at the grace {abandoned}, \
         receiver requests {} (duplicates {}), longest gap in terminal updates on the \
         partitions of members that revoked nothing {elsewhere:?}: {gap} ms (partition \
         {gap_partition}); on those the revoking members kept {kept:?}: {kept_gap} ms \
         (partition {kept_partition})",
        revokes.len(),
        tally.requests,
        tally.duplicates(),
    );
    tally.assert_complete(committed);
    assert!(
        abandoned >= 1,
        "no revoke met a hanging request; the test proved nothing"
    );
    assert!(
        longest <= GRACE_MS + 1000,
        "a revoke waited {longest} ms, past the {GRACE_MS} ms grace"
    );
    assert!(
        gap <= UNMOVED_GAP_MS,
        "partition {gap_partition} of a member that revoked nothing stalled {gap} ms"
    );
    assert!(
        kept_gap <= GRACE_MS + KEPT_SLACK_MS,
        "partition {kept_partition}, kept by a revoking member, stalled {kept_gap} ms: past the grace"
    );
}
