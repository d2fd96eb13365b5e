//! Test harness: a Kafka endpoint (librdkafka's in-process mock cluster, or the Apache
//! Kafka broker named by `SWITCHYARD_TEST_BROKERS`), fresh topics per test, the switchyard
//! binary as a child process, readers for the status and DLQ topics that read to the end
//! of the topic before they say "nothing else", and a scriptable HTTP receiver.

#![allow(dead_code)]

pub mod broker;
pub mod github;
pub mod gitlab;
pub mod port_api;
pub mod receiver;
pub mod registry;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message, OwnedMessage};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use switchyard::model::RunUpdate;

/// The value of `.secrets.token` (and of the `credential` secret) in test dispatchers.
pub const TEST_TOKEN: &str = "t0ken-from-env";
/// The DLQ replay MAC key of the test configuration (`dlq.replay_key`).
pub const REPLAY_KEY: &str = "replay-key-for-tests-0123456789";

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A name no other test (or earlier run against the same broker) uses.
pub fn unique(prefix: &str) -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis()
        % 100_000_000;
    format!("{prefix}-{}-{ms}-{n}", std::process::id())
}

/// The Kafka endpoint of one test.
pub struct Kafka {
    pub brokers: String,
    mock: Option<MockCluster<'static, DefaultProducerContext>>,
    /// librdkafka options of every client of the test (security settings).
    options: Vec<(String, String)>,
}

impl Kafka {
    /// The broker named by `SWITCHYARD_TEST_BROKERS`, or else a mock cluster of the test's
    /// own. With the `real-broker` feature on, a missing `SWITCHYARD_TEST_BROKERS` fails
    /// the test: that pass exists to run on Apache Kafka, never silently on the mock.
    pub fn start() -> Kafka {
        match std::env::var("SWITCHYARD_TEST_BROKERS") {
            Ok(b) if !b.is_empty() => Kafka {
                brokers: b,
                mock: None,
                options: Vec::new(),
            },
            _ if cfg!(feature = "real-broker") => panic!(
                "the real-broker feature is on but SWITCHYARD_TEST_BROKERS is not set: start \
                 Apache Kafka with `scripts/broker.sh start` and set it to the address printed"
            ),
            _ => {
                let mock = MockCluster::new(1).expect("starting the mock cluster");
                Kafka {
                    brokers: mock.bootstrap_servers(),
                    mock: Some(mock),
                    options: Vec::new(),
                }
            }
        }
    }

    /// A mock cluster of the test's own, on either pass (a second cluster beside
    /// [`Kafka::start`]'s).
    pub fn mock_cluster() -> Kafka {
        let mock = MockCluster::new(1).expect("starting the mock cluster");
        Kafka {
            brokers: mock.bootstrap_servers(),
            mock: Some(mock),
            options: Vec::new(),
        }
    }

    /// The names of the cluster's topics.
    pub fn topic_names(&self) -> Vec<String> {
        let c: rdkafka::consumer::BaseConsumer = self.config().create().unwrap();
        let md = c
            .fetch_metadata(None, Duration::from_secs(10))
            .expect("reading the cluster's metadata");
        let mut names: Vec<String> = md.topics().iter().map(|t| t.name().to_owned()).collect();
        names.sort();
        names
    }

    /// The consumer groups the cluster knows.
    pub fn group_names(&self) -> Vec<String> {
        let c: rdkafka::consumer::BaseConsumer = self.config().create().unwrap();
        let list = c
            .fetch_group_list(None, Duration::from_secs(10))
            .expect("listing the cluster's groups");
        list.groups().iter().map(|g| g.name().to_owned()).collect()
    }

    /// A real broker at `brokers` (tests that run their own broker).
    pub fn at(brokers: &str) -> Kafka {
        Self::at_with(brokers, &[])
    }

    /// A real broker at `brokers` that every client reaches with `options` (e.g.
    /// `security.protocol`, `sasl.*`, `ssl.ca.location`).
    pub fn at_with(brokers: &str, options: &[(&str, &str)]) -> Kafka {
        Kafka {
            brokers: brokers.to_owned(),
            mock: None,
            options: options
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The mock cluster, for fault injection (None on a real broker).
    pub fn mock(&self) -> Option<&MockCluster<'static, DefaultProducerContext>> {
        self.mock.as_ref()
    }

    pub fn is_real(&self) -> bool {
        self.mock.is_none()
    }

    /// Create the triggers, status and DLQ topics of one test.
    pub async fn topics(&self, triggers_partitions: i32) -> Topics {
        let t = Topics {
            triggers: unique("trig"),
            status: unique("status"),
            dlq: unique("dlq"),
            group: unique("group"),
            actions: unique("actions"),
            entities: unique("entities"),
            watches: unique("watches"),
            triggers_partitions,
            status_partitions: 3,
        };
        self.create_topic(&t.triggers, triggers_partitions).await;
        self.create_topic(&t.status, t.status_partitions).await;
        self.create_topic(&t.dlq, 1).await;
        self.create_topic(&t.actions, 1).await;
        self.create_topic(&t.watches, 1).await;
        if let Some(m) = &self.mock {
            // The mock cannot create topics through the admin API (switchyard creates the
            // entities topic itself on a real broker).
            m.create_topic(&t.entities, 1, 1).unwrap();
        }
        t
    }

    pub async fn create_topic(&self, name: &str, partitions: i32) {
        if let Some(m) = &self.mock {
            // AdminClient::create_topics gets no reply from the mock cluster.
            m.create_topic(name, partitions, 1)
                .expect("mock create_topic");
            return;
        }
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1));
        let res = admin
            .create_topics([&topic], &AdminOptions::new())
            .await
            .expect("create_topics");
        for r in res {
            r.expect("topic created");
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let md = admin
                .inner()
                .fetch_metadata(Some(name), Duration::from_secs(5))
                .unwrap();
            if md
                .topics()
                .iter()
                .any(|t| t.name() == name && t.partitions().len() == partitions as usize)
            {
                return;
            }
            assert!(Instant::now() < deadline, "topic {name} never appeared");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Partition count of an existing topic.
    pub fn partitions(&self, topic: &str) -> i32 {
        let c: BaseConsumer = self.config().create().unwrap();
        let md = c
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .unwrap();
        md.topics()[0].partitions().len() as i32
    }

    /// One configuration value of a topic (DescribeConfigs; real broker only).
    pub async fn topic_config(&self, topic: &str, key: &str) -> Option<String> {
        use rdkafka::admin::ResourceSpecifier;
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let res = admin
            .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
            .await
            .expect("describe_configs");
        let resource = res.into_iter().next()?.expect("topic config");
        resource.get(key).and_then(|e| e.value.clone())
    }

    /// Set one configuration value of a topic (AlterConfigs; real broker only). Other
    /// values of the topic return to their defaults, as AlterConfigs replaces them all.
    pub async fn alter_topic_config(&self, topic: &str, key: &str, value: &str) {
        use rdkafka::admin::{AlterConfig, ResourceSpecifier};
        assert!(self.is_real(), "the mock cluster has no AlterConfigs");
        let admin: AdminClient<DefaultClientContext> = self.config().create().unwrap();
        let change = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
        let res = admin
            .alter_configs([&change], &AdminOptions::new())
            .await
            .expect("alter_configs");
        for r in res {
            r.unwrap_or_else(|e| panic!("setting {key}={value} on {topic}: {e:?}"));
        }
        // The broker applies it through its metadata log; wait until it reads back.
        let deadline = Instant::now() + Duration::from_secs(15);
        while self.topic_config(topic, key).await.as_deref() != Some(value) {
            assert!(
                Instant::now() < deadline,
                "{key}={value} never applied to {topic}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.options {
            c.set(k, v);
        }
        c
    }

    pub fn producer(&self) -> FutureProducer {
        self.config()
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .create()
            .unwrap()
    }

    /// Produce records and wait for every acknowledgement.
    pub async fn produce(&self, topic: &str, records: &[(Option<String>, Vec<u8>)]) {
        let p = self.producer();
        let mut pending = Vec::new();
        for (key, value) in records {
            let mut r = FutureRecord::<str, [u8]>::to(topic).payload(value);
            if let Some(k) = key {
                r = r.key(k);
            }
            pending.push(p.send_result(r).map_err(|(e, _)| e).expect("enqueue"));
        }
        for f in pending {
            f.await.expect("delivery future").expect("delivered");
        }
    }

    /// Produce records one at a time, each acknowledged before the next is sent, so that
    /// every record is its own batch.
    pub async fn produce_each(&self, topic: &str, records: &[(Option<String>, Vec<u8>)]) {
        let p = self.producer();
        for (key, value) in records {
            let mut r = FutureRecord::<str, [u8]>::to(topic).payload(value);
            if let Some(k) = key {
                r = r.key(k);
            }
            p.send(r, Timeout::After(Duration::from_secs(10)))
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
    }

    /// Committed offsets of `group` on `topic`, by partition; a partition with no commit
    /// yet is absent. A request or partition error fails the test: a committed total that
    /// silently left out a partition would look like "nothing committed" there.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let c: BaseConsumer = self.config().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c
            .committed_offsets(tpl, Timeout::After(Duration::from_secs(10)))
            .unwrap_or_else(|e| panic!("reading the committed offsets of {group}: {e}"));
        let mut out = HashMap::new();
        for e in got.elements() {
            if let Err(err) = e.error() {
                panic!(
                    "committed offset of {group} on {topic}/{}: {err}",
                    e.partition()
                );
            }
            match e.offset() {
                Offset::Offset(o) => {
                    out.insert(e.partition(), o);
                }
                Offset::Invalid => {} // nothing committed on this partition yet
                other => panic!(
                    "committed offset of {group} on {topic}/{}: unexpected {other:?}",
                    e.partition()
                ),
            }
        }
        out
    }

    /// Sum of committed offsets across partitions (= records committed past, when each
    /// partition starts at 0).
    pub fn committed_total(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        self.committed(group, topic, partitions).values().sum()
    }

    /// Poll until the committed total reaches `want`; returns it (callers compare it
    /// exactly). Fails the test when `timeout` passes first.
    pub async fn wait_committed(&self, t: &Topics, want: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.committed_total(&t.group, &t.triggers, t.triggers_partitions);
            if got >= want {
                return got;
            }
            assert!(
                Instant::now() < deadline,
                "group {} committed {got} of {want} records on {} within {timeout:?}",
                t.group,
                t.triggers
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// High watermark of every partition of `topic`.
    pub fn high_watermarks(&self, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let c: BaseConsumer = self.config().create().unwrap();
        (0..partitions)
            .map(|p| {
                let (_, high) = c
                    .fetch_watermarks(topic, p, Duration::from_secs(10))
                    .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"));
                (p, high)
            })
            .collect()
    }

    /// A reader of every partition of `topic`, from the beginning.
    pub fn reader(&self, topic: &str, partitions: i32) -> StreamConsumer {
        let c: StreamConsumer = self
            .config()
            .set("group.id", unique("reader"))
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        c.assign(&tpl).unwrap();
        c
    }
}

/// The topics and group of one test.
#[derive(Debug, Clone)]
pub struct Topics {
    pub triggers: String,
    pub status: String,
    pub dlq: String,
    pub group: String,
    /// Default topic of the KAFKA backend.
    pub actions: String,
    /// Entities topic of the UPSERT_ENTITY backend (created by switchyard on a real broker).
    pub entities: String,
    /// Followed runs (compacted in production; plain in tests).
    pub watches: String,
    pub triggers_partitions: i32,
    pub status_partitions: i32,
}

/// How long a reader waits for "nothing else arrives" before it checks the high
/// watermarks.
pub const QUIET: Duration = Duration::from_millis(500);

/// Longest a reader may take to reach the high watermarks it was shown.
const CATCH_UP: Duration = Duration::from_secs(60);

/// Reads every partition of a topic from the beginning and knows how far it got, so that
/// "nothing else" is checked against the topic's high watermarks, not only against a
/// quiet moment. Consumer errors (a broker restarting, say) are logged and skipped.
pub struct Tail {
    consumer: StreamConsumer,
    topic: String,
    partitions: i32,
    /// One past the last offset read, per partition.
    next: HashMap<i32, i64>,
}

impl Tail {
    pub fn new(kafka: &Kafka, topic: &str, partitions: i32) -> Tail {
        Tail {
            consumer: kafka.reader(topic, partitions),
            topic: topic.to_owned(),
            partitions,
            next: HashMap::new(),
        }
    }

    /// The next record, or `None` once `deadline` passes.
    pub async fn next_before(&mut self, deadline: tokio::time::Instant) -> Option<OwnedMessage> {
        loop {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    self.next.insert(m.partition(), m.offset() + 1);
                    return Some(m.detach());
                }
                Ok(Err(e)) => eprintln!("reader of {}: {e}; continuing", self.topic),
                Err(_) => return None,
            }
        }
    }

    /// Everything still to come: read until `quiet` passes with nothing new, then on to
    /// the high watermarks of every partition (fails the test if they are not reached
    /// within a minute).
    pub async fn rest(&mut self, quiet: Duration) -> Vec<OwnedMessage> {
        let mut out = Vec::new();
        while let Some(m) = self.next_before(tokio::time::Instant::now() + quiet).await {
            out.push(m);
        }
        let deadline = tokio::time::Instant::now() + CATCH_UP;
        loop {
            let behind: Vec<(i32, i64, i64)> = (0..self.partitions)
                .filter_map(|p| {
                    let (low, high) = self
                        .consumer
                        .fetch_watermarks(&self.topic, p, Duration::from_secs(10))
                        .unwrap_or_else(|e| panic!("watermarks of {}/{p}: {e}", self.topic));
                    let at = self.next.get(&p).copied().unwrap_or(0).max(low);
                    (at < high).then_some((p, at, high))
                })
                .collect();
            if behind.is_empty() {
                return out;
            }
            match self.next_before(deadline).await {
                Some(m) => out.push(m),
                None => panic!(
                    "reader of {} did not reach the high watermarks within {CATCH_UP:?}: \
                     (partition, read to, high) {behind:?}",
                    self.topic
                ),
            }
        }
    }
}

/// Follows the status topic and keeps every run update seen.
pub struct StatusLog {
    tail: Tail,
    pub updates: Vec<RunUpdate>,
    /// Runs with a terminal update among `updates`.
    done: std::collections::HashSet<String>,
    /// Read to the end of the topic since the last update arrived.
    settled: bool,
}

impl StatusLog {
    pub fn new(kafka: &Kafka, t: &Topics) -> StatusLog {
        StatusLog {
            tail: Tail::new(kafka, &t.status, t.status_partitions),
            updates: Vec::new(),
            done: std::collections::HashSet::new(),
            settled: false,
        }
    }

    fn push(&mut self, m: &OwnedMessage) {
        let u: RunUpdate =
            serde_json::from_slice(m.payload().expect("status records have a value"))
                .expect("status records are run updates");
        assert_eq!(
            m.key(),
            Some(u.run_id.as_bytes()),
            "status key is the run id"
        );
        if u.is_terminal() {
            self.done.insert(u.run_id.clone());
        }
        self.updates.push(u);
        self.settled = false;
    }

    /// Read until `n` distinct runs have a terminal update (cheap per record, for
    /// thousands of runs); panics with the count after `timeout`.
    pub async fn wait_finished(&mut self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.done.len() < n {
            match self.tail.next_before(deadline).await {
                Some(m) => self.push(&m),
                None => panic!(
                    "timed out after {timeout:?}: {} of {n} runs have a terminal update",
                    self.done.len()
                ),
            }
        }
    }

    /// Read until `done(updates)` holds; panics with what was seen after `timeout`.
    /// Read whatever arrives within `d`.
    pub async fn read_for(&mut self, d: Duration) {
        let deadline = tokio::time::Instant::now() + d;
        while let Some(m) = self.tail.next_before(deadline).await {
            self.push(&m);
        }
    }

    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[RunUpdate]) -> bool,
    ) -> &[RunUpdate] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.updates) {
            match self.tail.next_before(deadline).await {
                Some(m) => self.push(&m),
                None => panic!(
                    "timed out after {timeout:?} waiting for {what}; saw {} updates: {:#?}",
                    self.updates.len(),
                    self.updates.iter().rev().take(10).collect::<Vec<_>>()
                ),
            }
        }
        &self.updates
    }

    /// Collect the stragglers: read until `quiet` passes with nothing new, then to the
    /// status topic's high watermarks, so that "nothing else came" means nothing else is
    /// on the topic.
    pub async fn settle(&mut self, quiet: Duration) {
        for m in self.tail.rest(quiet).await {
            self.push(&m);
        }
        self.settled = true;
    }

    /// Number of distinct runs with a terminal status among `updates`.
    pub fn finished(updates: &[RunUpdate]) -> usize {
        updates
            .iter()
            .filter(|u| u.is_terminal())
            .map(|u| u.run_id.as_str())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    }

    pub fn of(&self, run: &str) -> Vec<&RunUpdate> {
        self.updates.iter().filter(|u| u.run_id == run).collect()
    }

    pub fn terminal(&self, run: &str) -> Vec<&RunUpdate> {
        self.of(run)
            .into_iter()
            .filter(|u| u.is_terminal())
            .collect()
    }

    /// The one terminal update of `run`, read after the topic settled (a second one
    /// arriving later would otherwise go unseen). Fails unless there is exactly one.
    pub async fn sole_terminal(&mut self, run: &str) -> RunUpdate {
        if !self.settled {
            self.settle(QUIET).await;
        }
        let terminal = self.terminal(run);
        assert_eq!(
            terminal.len(),
            1,
            "run {run}: expected exactly one terminal update, got {terminal:#?}"
        );
        terminal[0].clone()
    }
}

/// A record (DLQ or other) as read back.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

impl DlqEntry {
    fn of(m: &OwnedMessage) -> DlqEntry {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        DlqEntry {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        }
    }
}

/// Read the test's DLQ: exactly `n` records (see [`read_records`]).
pub async fn read_dlq(kafka: &Kafka, t: &Topics, n: usize, timeout: Duration) -> Vec<DlqEntry> {
    read_records(kafka, &t.dlq, 1, n, timeout).await
}

/// Read exactly `n` records of `topic` from the beginning: fails when fewer arrive within
/// `timeout`, or when an (n+1)-th is on the topic once it settled (read to its high
/// watermarks).
pub async fn read_records(
    kafka: &Kafka,
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<DlqEntry> {
    let mut tail = Tail::new(kafka, topic, partitions);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        match tail.next_before(deadline).await {
            Some(m) => out.push(DlqEntry::of(&m)),
            None => panic!("timed out waiting for {n} records on {topic}; got {out:#?}"),
        }
    }
    let extra: Vec<DlqEntry> = tail.rest(QUIET).await.iter().map(DlqEntry::of).collect();
    assert!(
        extra.is_empty(),
        "expected exactly {n} records on {topic}; {} more: {extra:#?}",
        extra.len()
    );
    out
}

/// A switchyard process under test.
pub struct Dispatcher {
    child: Option<Child>,
    pub log: PathBuf,
}

/// Directory for one test's files.
pub fn scratch_dir() -> PathBuf {
    let d = std::env::temp_dir()
        .join("switchyard-tests")
        .join(unique("t"));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// The configuration a test dispatcher runs with: [`Setup`]'s base with `extra` merged
/// over it.
pub fn config_toml(kafka: &Kafka, t: &Topics, extra: &str) -> String {
    Setup::new(kafka, t).config(extra).toml()
}

/// `extra` (TOML) merged over `base` (TOML): tables merge key by key, recursively; any
/// other value in `extra` replaces the base's. A `[backends.webhook.destinations]`
/// table replaces the base's whole: a test about the destination policy brings all of it.
pub fn merge_config(base: &str, extra: &str) -> String {
    let mut table: toml::Table = base.parse().expect("the base configuration parses");
    merge_into(&mut table, parse_extra(extra));
    toml::to_string(&table).expect("a TOML table serialises")
}

fn parse_extra(extra: &str) -> toml::Table {
    extra
        .parse()
        .unwrap_or_else(|e| panic!("a test's extra configuration does not parse: {e}\n{extra}"))
}

fn merge_into(base: &mut toml::Table, extra: toml::Table) {
    for (key, value) in extra {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(e)) if key != "destinations" => {
                merge_into(b, e)
            }
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// A test dispatcher's configuration: the base below (the test topics, loopback
/// receivers allowed, the test secrets) with TOML tables merged over it.
///
/// ```ignore
/// let d = Setup::new(&kafka, &t)
///     .config("[backends.webhook.retry]\nmax_attempts = 1")
///     .without(&["kafka", "consumer", "session.timeout.ms"])
///     .start();
/// ```
pub struct Setup {
    table: toml::Table,
}

impl Setup {
    pub fn new(kafka: &Kafka, t: &Topics) -> Setup {
        let base = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
triggers_topic = "{triggers}"
status_topic = "{status}"
dlq_topic = "{dlq}"
watches_topic = "{watches}"
create_topics = false

[kafka.consumer]
"session.timeout.ms" = 6000
"heartbeat.interval.ms" = 500

[log]
format = "text"
level = "info,librdkafka=warn"

[http]
listen = "127.0.0.1:0"

[secrets]
# Templates of runs to the test receivers (loopback) may read it.
token = {{ env = "SWITCHYARD_TEST_TOKEN", hosts = ["127.0.0.1", "::1", "localhost"] }}
# The same value as a backend credential (no scope: no template sees it).
credential = {{ env = "SWITCHYARD_TEST_TOKEN" }}

[dlq]
replay_key = {{ env = "SWITCHYARD_TEST_REPLAY_KEY" }}

# Test receivers listen on loopback, which the destination policy refuses unless opened.
[backends.webhook.destinations]
allow = ["127.0.0.1", "::1"]

[backends.kafka]
topic = "{actions}"

[backends.upsert_entity]
topic = "{entities}"
"#,
            actions = t.actions,
            watches = t.watches,
            entities = t.entities,
            brokers = kafka.brokers,
            group = t.group,
            triggers = t.triggers,
            status = t.status,
            dlq = t.dlq,
        );
        Setup {
            table: base.parse().expect("the base test configuration parses"),
        }
    }

    /// Merge a TOML text over the configuration (see [`merge_config`]).
    pub fn config(mut self, toml: &str) -> Setup {
        merge_into(&mut self.table, parse_extra(toml));
        self
    }

    /// Remove the value at `path` (table names, then the key); it must be there.
    pub fn without(mut self, path: &[&str]) -> Setup {
        let (last, tables) = path.split_last().expect("a path");
        let mut table = &mut self.table;
        for name in tables {
            table = table
                .get_mut(*name)
                .and_then(toml::Value::as_table_mut)
                .unwrap_or_else(|| panic!("no table {name} in the configuration"));
        }
        assert!(table.remove(*last).is_some(), "no {last} to remove");
        self
    }

    pub fn toml(&self) -> String {
        toml::to_string(&self.table).expect("a TOML table serialises")
    }

    /// Start `switchyard run` with this configuration.
    pub fn start(&self) -> Dispatcher {
        Dispatcher::start_with_config(&self.toml(), &[])
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// `switchyard` with the test environment (the secret the test config names).
pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("SWITCHYARD_CONFIG")
        .env("SWITCHYARD_TEST_TOKEN", TEST_TOKEN)
        .env("SWITCHYARD_TEST_REPLAY_KEY", REPLAY_KEY);
    c
}

impl Dispatcher {
    /// Start `switchyard run` with the test configuration plus `extra` TOML.
    pub fn start(kafka: &Kafka, t: &Topics, extra: &str) -> Dispatcher {
        Self::start_with_config(&config_toml(kafka, t, extra), &[])
    }

    /// Start with a full configuration text and extra environment variables.
    pub fn start_with_config(toml: &str, env: &[(&str, &str)]) -> Dispatcher {
        Self::start_command(&["run"], toml, env)
    }

    /// Start `switchyard ARGS… --config FILE` with a full configuration text.
    pub fn start_command(args: &[&str], toml: &str, env: &[(&str, &str)]) -> Dispatcher {
        let dir = scratch_dir();
        let cfg = dir.join("switchyard.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = dir.join("switchyard.log");
        let child = Command::new(bin())
            .args(args)
            .arg("--config")
            .arg(&cfg)
            .env_remove("SWITCHYARD_CONFIG")
            .env("SWITCHYARD_TEST_TOKEN", TEST_TOKEN)
            .env("SWITCHYARD_TEST_REPLAY_KEY", REPLAY_KEY)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning switchyard");
        Dispatcher {
            child: Some(child),
            log,
        }
    }

    /// Start `switchyard run` as the Port agent's image would: no `--config`, the
    /// environment `env` only (plus the parent's), in the working directory `dir` (the
    /// agent's `/app`, where a mounted mapping file sits).
    pub fn start_in(dir: &std::path::Path, env: &[(&str, &str)]) -> Dispatcher {
        let log = dir.join("switchyard.log");
        let child = Command::new(bin())
            .arg("run")
            .current_dir(dir)
            .env_remove("SWITCHYARD_CONFIG")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawning switchyard");
        Dispatcher {
            child: Some(child),
            log,
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the process was started").id()
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// SIGKILL: no drain, no commit.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit.
    pub fn terminate(&mut self, timeout: Duration) -> ExitStatus {
        let mut c = self.child.take().expect("dispatcher still running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = c.try_wait().unwrap() {
                return status;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!(
                    "switchyard did not exit within {timeout:?} of SIGTERM:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `http://ADDR` of the dispatcher's HTTP listener, once it logged it.
    pub fn http_base(&self) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let logs = self.logs();
            if let Some(rest) = logs.split("http listening on ").nth(1) {
                let addr = rest.split_whitespace().next().unwrap();
                return format!("http://{addr}");
            }
            assert!(
                Instant::now() < deadline,
                "no http listener logged:\n{logs}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Triggers-topic partitions in `("TOPIC", N)` pairs of one log line.
pub fn partitions_in(line: &str, topic: &str) -> Vec<i32> {
    let needle = format!("(\"{topic}\", ");
    line.match_indices(&needle)
        .filter_map(|(i, _)| {
            let rest = &line[i + needle.len()..];
            let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
            digits.parse().ok()
        })
        .collect()
}

/// What a member's log says it held: every partition it was ever assigned, and what it
/// held at the end (assignments minus revocations, in log order).
pub struct Held {
    pub ever: std::collections::BTreeSet<i32>,
    pub last: std::collections::BTreeSet<i32>,
}

pub fn held(logs: &str, topic: &str) -> Held {
    let mut h = Held {
        ever: std::collections::BTreeSet::new(),
        last: std::collections::BTreeSet::new(),
    };
    for line in logs.lines() {
        if line.contains("partitions assigned") {
            for p in partitions_in(line, topic) {
                h.ever.insert(p);
                h.last.insert(p);
            }
        } else if line.contains("partitions revoked") {
            for p in partitions_in(line, topic) {
                h.last.remove(&p);
            }
        }
    }
    h
}

/// GET `url`: status and body.
pub async fn http_get(url: &str) -> (u16, String) {
    let r = reqwest::get(url).await.unwrap();
    (r.status().as_u16(), r.text().await.unwrap())
}

/// The value of one sample (`name{labels}`, labels as printed) in a Prometheus text page.
pub fn sample(page: &str, series: &str) -> Option<f64> {
    page.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

impl Drop for Dispatcher {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "--- switchyard log ({}) ---\n{}",
                self.log.display(),
                self.logs()
            );
        }
    }
}

/// A WEBHOOK trigger event for `run`, posting to `url`.
pub fn webhook_event(run: &str, url: &str, synchronized: bool) -> serde_json::Value {
    serde_json::json!({
        "run": {"id": run},
        "action": {"identifier": "deploy_service", "blueprint": "service",
            "invocationMethod": {"type": "WEBHOOK", "url": url, "method": "POST",
                "synchronized": synchronized,
                "headers": {"RUN_ID": "{{ .run.id }}", "X-Token": "{{ .secrets.token }}"},
                "body": {"version": "{{ .inputs.version }}", "n": "{{ .inputs.n }}",
                         "run": "{{ .run.id }}"}}},
        "trigger": {"by": {"user": {"email": "dev@acme.io"}}, "origin": "UI",
                    "at": "2026-11-28T10:00:00Z", "operation": "DAY-2"},
        "inputs": {"version": "1.4.2", "n": 0},
        "entity": {"identifier": "checkout", "blueprint": "service", "properties": {}},
        "event": null
    })
}

pub fn record(key: Option<&str>, value: &serde_json::Value) -> (Option<String>, Vec<u8>) {
    (key.map(str::to_owned), serde_json::to_vec(value).unwrap())
}
