//! Test harness: a Kafka endpoint (librdkafka's in-process mock cluster, or the real broker
//! named by `SWITCHYARD_TEST_BROKERS`), fresh topics per test, the switchyard binary as a
//! child process, readers for the status and DLQ topics, and a scriptable HTTP receiver.

#![allow(dead_code)]

pub mod github;
pub mod gitlab;
pub mod port_api;
pub mod receiver;
pub mod registry;
pub mod tansu;
pub mod tls_proxy;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{DefaultProducerContext, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use switchyard::model::RunUpdate;

/// The value of `.secrets.token` in test dispatchers.
pub const TEST_TOKEN: &str = "t0ken-from-env";

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
    pub fn start() -> Kafka {
        match std::env::var("SWITCHYARD_TEST_BROKERS") {
            Ok(b) if !b.is_empty() => Kafka {
                brokers: b,
                mock: None,
                options: Vec::new(),
            },
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

    /// Produce records that a consumer may have to re-fetch from the middle (after a
    /// pause, or from a committed offset after a rebalance).
    ///
    /// Tansu 0.6.0 returns no records for a fetch that starts inside a record batch;
    /// Apache Kafka returns the containing batch and the client skips ahead. On a real
    /// broker each record is therefore sent as its own batch. See README "Testing".
    pub async fn produce_refetchable(&self, topic: &str, records: &[(Option<String>, Vec<u8>)]) {
        if self.is_real() {
            self.produce_each(topic, records).await
        } else {
            self.produce(topic, records).await
        }
    }

    /// Committed offsets of `group` on `topic`, by partition.
    pub fn committed(&self, group: &str, topic: &str, partitions: i32) -> HashMap<i32, i64> {
        let c: BaseConsumer = self.config().set("group.id", group).create().unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition(topic, p);
        }
        let got = c
            .committed_offsets(tpl, Timeout::After(Duration::from_secs(10)))
            .unwrap();
        got.elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((e.partition(), o)),
                _ => None,
            })
            .collect()
    }

    /// Sum of committed offsets across partitions (= records committed past, when each
    /// partition starts at 0).
    pub fn committed_total(&self, group: &str, topic: &str, partitions: i32) -> i64 {
        self.committed(group, topic, partitions).values().sum()
    }

    /// Poll until the committed total reaches `want` or the timeout passes.
    pub async fn wait_committed(&self, t: &Topics, want: i64, timeout: Duration) -> i64 {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.committed_total(&t.group, &t.triggers, t.triggers_partitions);
            if got >= want || Instant::now() > deadline {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
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

/// Follows the status topic and keeps every run update seen.
pub struct StatusLog {
    consumer: StreamConsumer,
    pub updates: Vec<RunUpdate>,
}

impl StatusLog {
    pub fn new(kafka: &Kafka, t: &Topics) -> StatusLog {
        StatusLog {
            consumer: kafka.reader(&t.status, t.status_partitions),
            updates: Vec::new(),
        }
    }

    /// Read until `done(updates)` holds; panics with what was seen after `timeout`.
    pub async fn wait_until(
        &mut self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[RunUpdate]) -> bool,
    ) -> &[RunUpdate] {
        let deadline = tokio::time::Instant::now() + timeout;
        while !done(&self.updates) {
            match tokio::time::timeout_at(deadline, self.consumer.recv()).await {
                Ok(Ok(m)) => {
                    let u: RunUpdate = serde_json::from_slice(m.payload().unwrap())
                        .expect("status records are run updates");
                    assert_eq!(
                        m.key(),
                        Some(u.run_id.as_bytes()),
                        "status key is the run id"
                    );
                    self.updates.push(u);
                }
                // Transient (e.g. while a broker restarts); librdkafka reconnects.
                Ok(Err(e)) => eprintln!("status reader: {e}; continuing"),
                Err(_) => panic!(
                    "timed out after {timeout:?} waiting for {what}; saw {} updates: {:#?}",
                    self.updates.len(),
                    self.updates.iter().rev().take(10).collect::<Vec<_>>()
                ),
            }
        }
        &self.updates
    }

    /// Keep reading for `quiet` to collect stragglers (e.g. to check nothing else comes).
    pub async fn settle(&mut self, quiet: Duration) {
        while let Ok(Ok(m)) = tokio::time::timeout(quiet, self.consumer.recv()).await {
            self.updates
                .push(serde_json::from_slice(m.payload().unwrap()).unwrap());
        }
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
}

/// A record (DLQ or other) as read back.
#[derive(Debug, Clone)]
pub struct DlqEntry {
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    pub headers: HashMap<String, String>,
}

/// Read `n` DLQ records (panics after `timeout`).
pub async fn read_dlq(kafka: &Kafka, t: &Topics, n: usize, timeout: Duration) -> Vec<DlqEntry> {
    read_records(kafka, &t.dlq, 1, n, timeout).await
}

/// Read `n` records of `topic` from the beginning (panics after `timeout`).
pub async fn read_records(
    kafka: &Kafka,
    topic: &str,
    partitions: i32,
    n: usize,
    timeout: Duration,
) -> Vec<DlqEntry> {
    let c = kafka.reader(topic, partitions);
    let deadline = tokio::time::Instant::now() + timeout;
    let mut out = Vec::new();
    while out.len() < n {
        let m = match tokio::time::timeout_at(deadline, c.recv()).await {
            Ok(m) => m.unwrap(),
            Err(_) => panic!("timed out waiting for {n} records on {topic}; got {out:#?}"),
        };
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
        out.push(DlqEntry {
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
        });
    }
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

/// The configuration a test dispatcher runs with; `extra` is appended TOML.
pub fn config_toml(kafka: &Kafka, t: &Topics, extra: &str) -> String {
    format!(
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
token = {{ env = "SWITCHYARD_TEST_TOKEN" }}

[backends.kafka]
topic = "{actions}"

[backends.upsert_entity]
topic = "{entities}"
{extra}
"#,
        actions = t.actions,
        watches = t.watches,
        entities = t.entities,
        brokers = kafka.brokers,
        group = t.group,
        triggers = t.triggers,
        status = t.status,
        dlq = t.dlq,
    )
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_switchyard")
}

/// `switchyard` with the test environment (the secret the test config names).
pub fn cmd() -> Command {
    let mut c = Command::new(bin());
    c.env_remove("SWITCHYARD_CONFIG")
        .env("SWITCHYARD_TEST_TOKEN", TEST_TOKEN);
    c
}

impl Dispatcher {
    /// Start `switchyard run` with the test configuration plus `extra` TOML.
    pub fn start(kafka: &Kafka, t: &Topics, extra: &str) -> Dispatcher {
        Self::start_with_config(&config_toml(kafka, t, extra), &[])
    }

    /// Start with a full configuration text and extra environment variables.
    pub fn start_with_config(toml: &str, env: &[(&str, &str)]) -> Dispatcher {
        let dir = scratch_dir();
        let cfg = dir.join("switchyard.toml");
        std::fs::write(&cfg, toml).unwrap();
        let log = dir.join("switchyard.log");
        let child = Command::new(bin())
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .env_remove("SWITCHYARD_CONFIG")
            .env("SWITCHYARD_TEST_TOKEN", TEST_TOKEN)
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
