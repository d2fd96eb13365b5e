//! `switchyard bench`: end-to-end throughput and latency of switchyard against the pipe
//! limit of the same machine, broker and sink.
//!
//! The parent process owns the broker (the given one, or librdkafka's mock cluster), a
//! webhook sink on loopback (axum/hyper, keep-alive, a fixed latency), the producer of
//! trigger events and the reader of the status topic. Each system under test runs as a
//! child process, so its CPU time and peak RSS are its own:
//! - `switchyard run` with a generated configuration;
//! - the pipe (`switchyard bench-pipe`): consume → the same HTTP request with the same
//!   concurrency → one status record per event (idempotent producer, `acks=all`), with no
//!   templates, router, pools, ordering or offset tracking.
//!
//! Throughput is measured from the first trigger's timestamp to the last terminal
//! update's; end-to-end latency per event is the terminal update's record timestamp minus
//! the trigger's. Every loop is bounded by count and by `--timeout`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;
use tokio::sync::Semaphore;

use crate::model::{RunStatus, RunUpdate};

/// What to measure: the `bench` command's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct Options {
    /// Broker to use; unset starts librdkafka's in-process mock cluster.
    #[arg(long)]
    pub brokers: Option<String>,
    /// Trigger events to send (throughput mode).
    #[arg(long, default_value_t = 100_000)]
    pub events: usize,
    /// Partitions of the triggers and status topics.
    #[arg(long, default_value_t = 6)]
    pub partitions: i32,
    /// Hot keys (0: every event its own key).
    #[arg(long, default_value_t = 0)]
    pub keys: usize,
    /// Latency of the webhook sink, in milliseconds.
    #[arg(long, default_value_t = 0)]
    pub sink_latency_ms: u64,
    /// Webhook concurrency of both systems.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
    /// Offered rate in events/s for --duration (latency mode) instead of --events.
    #[arg(long)]
    pub rate: Option<u64>,
    /// Length of a latency-mode run.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Systems to measure, in order: switchyard, pipe (comma-separated).
    #[arg(long, default_value = "pipe,switchyard", value_delimiter = ',')]
    pub systems: Vec<String>,
    /// Give up on a system after this long.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// `fetch.wait.max.ms` of both systems' consumers (librdkafka's default is 500, and
    /// the mock cluster holds every fetch that long).
    #[arg(long, default_value_t = 10)]
    pub fetch_wait_ms: u64,
    /// Also print each system's latency per second of sending (p50, p99, max), to show
    /// when a run's latency changes, e.g. as a broker slows while it fills.
    #[arg(long)]
    pub timeline: bool,
    /// Measure only the cost of rendering a run's templates, this many renders per
    /// case: in-process plain paths, and jq programs in the sandbox's worker processes.
    #[arg(long)]
    pub templates: Option<usize>,
}

/// One system's measurements.
#[derive(Debug, Clone)]
pub struct Measured {
    pub system: String,
    pub events: usize,
    pub seconds: f64,
    pub throughput: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub peak_rss_mb: f64,
    pub cpu_s_per_10k: f64,
    /// Latency by the second (from the first send) in which each event was sent.
    pub timeline: Vec<Second>,
}

/// The latency of the events sent in one second of a run.
#[derive(Debug, Clone)]
pub struct Second {
    pub second: usize,
    pub events: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

pub async fn run(opts: Options) -> anyhow::Result<Vec<Measured>> {
    let exe = std::env::current_exe().context("locating the switchyard binary")?;
    if let Some(n) = opts.templates {
        templates(n, exe).await?;
        return Ok(Vec::new());
    }
    let cluster = match &opts.brokers {
        Some(_) => None,
        None => Some(MockCluster::new(1).context("starting the mock cluster")?),
    };
    let brokers = match (&opts.brokers, &cluster) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.bootstrap_servers(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let sink = Sink::start(opts.sink_latency_ms).await?;
    println!(
        "bench: brokers {brokers}{}, sink http://{} ({} ms), {} partitions, keys {}, concurrency {}, fetch.wait.max.ms {}",
        if opts.brokers.is_none() { " (mock cluster)" } else { "" },
        sink.addr,
        opts.sink_latency_ms,
        opts.partitions,
        if opts.keys == 0 { "distinct".to_owned() } else { opts.keys.to_string() },
        opts.concurrency,
        opts.fetch_wait_ms
    );
    let mut results = Vec::new();
    for system in &opts.systems {
        let m = measure(&exe, &brokers, cluster.as_ref(), &sink, &opts, system).await?;
        print_row(&m);
        if opts.timeline {
            print_timeline(&m);
        }
        results.push(m);
    }
    if let (Some(s), Some(p)) = (
        results.iter().find(|m| m.system == "switchyard"),
        results.iter().find(|m| m.system == "pipe"),
    ) {
        println!(
            "ratio switchyard / pipe limit: throughput {:.2}, p50 {:+.1} ms, p99 {:+.1} ms, cpu/10k {:.2}",
            s.throughput / p.throughput,
            s.p50_ms - p.p50_ms,
            s.p99_ms - p.p99_ms,
            s.cpu_s_per_10k / p.cpu_s_per_10k
        );
    }
    Ok(results)
}

fn print_row(m: &Measured) {
    println!(
        "{:<10} events {:>7}  {:>7.2} s  {:>9.0} ev/s  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  peak RSS {:>6.1} MB  cpu {:>5.2} s/10k",
        m.system, m.events, m.seconds, m.throughput, m.p50_ms, m.p99_ms, m.max_ms, m.peak_rss_mb, m.cpu_s_per_10k
    );
}

fn print_timeline(m: &Measured) {
    for w in &m.timeline {
        println!(
            "{:<10}   second {:>3}  events {:>6}  p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
            m.system, w.second, w.events, w.p50_ms, w.p99_ms, w.max_ms
        );
    }
}

/// Nearest-rank percentile `p` (0..=1) of sorted `v` (not empty).
fn percentile(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

/// Latencies grouped by the second of the run (from `first`, the first send) in which
/// each event was sent.
fn timeline(first: i64, sent_at: &[i64], done_at: &HashMap<usize, i64>) -> Vec<Second> {
    let mut by_second: Vec<Vec<f64>> = Vec::new();
    for (n, done) in done_at {
        let sent = sent_at[*n];
        let s = ((sent - first) / 1000) as usize;
        if by_second.len() <= s {
            by_second.resize_with(s + 1, Vec::new);
        }
        by_second[s].push((done - sent) as f64);
    }
    by_second
        .into_iter()
        .enumerate()
        .filter(|(_, v)| !v.is_empty())
        .map(|(second, mut v)| {
            v.sort_by(f64::total_cmp);
            Second {
                second,
                events: v.len(),
                p50_ms: percentile(&v, 0.50),
                p99_ms: percentile(&v, 0.99),
                max_ms: percentile(&v, 1.0),
            }
        })
        .collect()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{prefix}-{}-{nanos}", std::process::id())
}

fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

async fn create_topics(
    brokers: &str,
    mock: Option<&MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    topics: &[(&str, i32)],
) -> anyhow::Result<()> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    if let Some(m) = mock {
        // The mock cluster never answers CreateTopics.
        for (name, partitions) in topics {
            m.create_topic(name, *partitions, 1)?;
        }
        return Ok(());
    }
    let admin: AdminClient<rdkafka::client::DefaultClientContext> = client(brokers).create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|(n, p)| NewTopic::new(n, *p, TopicReplication::Fixed(1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let res = tokio::time::timeout(Duration::from_secs(15), admin.create_topics(&new, &opts))
        .await
        .context("creating the bench topics timed out")??;
    for r in res {
        r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
    }
    Ok(())
}

struct Run {
    triggers: String,
    status: String,
}

async fn measure(
    exe: &PathBuf,
    brokers: &str,
    mock: Option<&MockCluster<'static, rdkafka::producer::DefaultProducerContext>>,
    sink: &Sink,
    opts: &Options,
    system: &str,
) -> anyhow::Result<Measured> {
    let run = Run {
        triggers: unique("triggers"),
        status: unique("status"),
    };
    let dlq = unique("dlq");
    let watches = unique("watches");
    create_topics(
        brokers,
        mock,
        &[
            (&run.triggers, opts.partitions),
            (&run.status, opts.partitions),
            (&dlq, 1),
            (&watches, 1),
        ],
    )
    .await?;
    let group = unique("group");
    let dir = std::env::temp_dir().join(unique("dir"));
    std::fs::create_dir_all(&dir)?;
    let url = format!("http://{}/hook", sink.addr);
    let mut child = match system {
        "switchyard" => {
            let cfg = format!(
                r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
triggers_topic = "{t}"
status_topic = "{s}"
dlq_topic = "{dlq}"
watches_topic = "{watches}"
[kafka.consumer]
"fetch.wait.max.ms" = {fw}
[backends.webhook]
concurrency = {c}
[backends.webhook.destinations]
allow = ["127.0.0.1"]
[http]
listen = ""
[log]
format = "text"
level = "warn,librdkafka=error"
"#,
                t = run.triggers,
                s = run.status,
                c = opts.concurrency,
                fw = opts.fetch_wait_ms
            );
            let path = dir.join("switchyard.toml");
            std::fs::write(&path, cfg)?;
            spawn(
                Command::new(exe).arg("run").arg("--config").arg(&path),
                &dir,
            )?
        }
        "pipe" => spawn(
            Command::new(exe)
                .arg("bench-pipe")
                .args(["--brokers", brokers, "--group", &group])
                .args(["--triggers", &run.triggers, "--status", &run.status])
                .args(["--url", &url])
                .args(["--concurrency", &opts.concurrency.to_string()])
                .args(["--fetch-wait-ms", &opts.fetch_wait_ms.to_string()]),
            &dir,
        )?,
        other => bail!("unknown system {other:?} (switchyard, pipe)"),
    };
    let pid = child.id();
    let reader = status_reader(brokers, &run.status, opts.partitions)?;
    let hook = url.clone();
    let body = move |n: usize| {
        serde_json::json!({
            "run": {"id": format!("r{n}")},
            "action": {"identifier": "deploy", "invocationMethod": {
                "type": "WEBHOOK", "url": hook, "synchronized": true,
                "body": {"service": "{{ .entity.identifier }}", "version": "{{ .inputs.version }}"}}},
            "inputs": {"version": "1.4.2"},
            "entity": {"identifier": format!("svc-{n}")}
        })
        .to_string()
    };
    let mut pc = client(brokers);
    // Latency mode sends at once; throughput mode batches.
    pc.set("linger.ms", if opts.rate.is_some() { "0" } else { "5" })
        .set("queue.buffering.max.messages", "1000000");
    let producer: FutureProducer = pc.create()?;
    // Warm up before the clock starts: one event through the whole path (the child has
    // joined its group, its connections are open).
    let warm = body(usize::MAX).replace(&format!("r{}", usize::MAX), "rwarmup");
    producer
        .send(
            FutureRecord::to(&run.triggers).key("warmup").payload(&warm),
            Timeout::After(Duration::from_secs(30)),
        )
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing the warm-up event: {e}"))?;
    let warm_deadline = Instant::now() + Duration::from_secs(90);
    loop {
        anyhow::ensure!(
            Instant::now() < warm_deadline,
            "{system}: the warm-up event did not finish within 90 s (see {})",
            dir.join("child.log").display()
        );
        let Ok(Ok(m)) = tokio::time::timeout(Duration::from_secs(1), reader.recv()).await else {
            continue;
        };
        let done = m
            .payload()
            .and_then(|p| serde_json::from_slice::<RunUpdate>(p).ok())
            .is_some_and(|u| u.run_id == "rwarmup" && u.is_terminal());
        if done {
            break;
        }
    }
    let cpu_before = cpu_seconds(pid);
    let deadline = Instant::now() + opts.timeout;
    let total = match opts.rate {
        Some(r) => (r as usize) * opts.duration.as_secs() as usize,
        None => opts.events,
    };
    // Produce in the background (at the offered rate, or as fast as the broker takes
    // them); returns each event's record timestamp, by its number.
    let produce = {
        let producer = producer.clone();
        let topic = run.triggers.clone();
        let keys = opts.keys;
        let rate = opts.rate;
        tokio::spawn(async move {
            let start = Instant::now();
            let mut sent_at = Vec::with_capacity(total);
            let mut pending = Vec::with_capacity(1024);
            for n in 0..total {
                if let Some(r) = rate {
                    let due = start + Duration::from_secs_f64(n as f64 / r as f64);
                    if due > Instant::now() {
                        tokio::time::sleep_until(due.into()).await;
                    }
                }
                if Instant::now() > deadline {
                    break;
                }
                let payload = body(n);
                let key = if keys == 0 {
                    format!("k{n}")
                } else {
                    format!("k{}", n % keys)
                };
                let ts = now_ms();
                let rec = FutureRecord::to(&topic)
                    .key(&key)
                    .payload(&payload)
                    .timestamp(ts);
                match producer.send_result(rec) {
                    Ok(f) => pending.push(f),
                    Err((e, _)) => return Err(anyhow::anyhow!("producing: {e}")),
                }
                sent_at.push(ts);
                if pending.len() >= 1024 {
                    for f in pending.drain(..) {
                        f.await?
                            .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
                    }
                }
            }
            for f in pending.drain(..) {
                f.await?
                    .map_err(|(e, _)| anyhow::anyhow!("producing: {e}"))?;
            }
            Ok::<_, anyhow::Error>(sent_at)
        })
    };
    // Read terminal updates until every event has one (bounded by the deadline): the
    // first terminal update's record timestamp per run.
    let mut done_at: HashMap<usize, i64> = HashMap::with_capacity(total);
    let mut peak_rss = 0u64;
    let mut last_rss_check = Instant::now();
    while done_at.len() < total && Instant::now() < deadline {
        if last_rss_check.elapsed() > Duration::from_millis(250) {
            peak_rss = peak_rss.max(rss_kb(pid));
            last_rss_check = Instant::now();
        }
        let msg = match tokio::time::timeout(Duration::from_secs(1), reader.recv()).await {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => bail!("reading {}: {e}", run.status),
            Err(_) => continue,
        };
        let Some(u) = msg
            .payload()
            .and_then(|p| serde_json::from_slice::<RunUpdate>(p).ok())
        else {
            continue;
        };
        let (true, Some(ts), Some(n)) = (
            u.is_terminal(),
            msg.timestamp().to_millis(),
            u.run_id
                .strip_prefix('r')
                .and_then(|n| n.parse::<usize>().ok()),
        ) else {
            continue;
        };
        done_at.entry(n).or_insert(ts);
    }
    let sent_at = produce.await??;
    peak_rss = peak_rss.max(rss_kb(pid));
    let cpu = cpu_seconds(pid) - cpu_before;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait()?.is_none() && Instant::now() < stop_deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    if done_at.len() < total {
        bail!(
            "{system}: {} of {total} runs finished within {:?}",
            done_at.len(),
            opts.timeout
        );
    }
    let failed = done_at.keys().filter(|n| **n >= sent_at.len()).count();
    if failed > 0 {
        bail!("{system}: {failed} terminal updates for events that were not sent");
    }
    let mut lat_ms: Vec<f64> = done_at
        .iter()
        .map(|(n, done)| (done - sent_at[*n]) as f64)
        .collect();
    lat_ms.sort_by(f64::total_cmp);
    let pct = |p: f64| percentile(&lat_ms, p);
    let first = sent_at.iter().copied().min().unwrap_or(0);
    let last = done_at.values().copied().max().unwrap_or(first);
    let seconds = (last - first).max(1) as f64 / 1000.0;
    Ok(Measured {
        system: system.to_owned(),
        events: total,
        seconds,
        throughput: total as f64 / seconds,
        p50_ms: pct(0.50),
        p99_ms: pct(0.99),
        max_ms: pct(1.0),
        peak_rss_mb: peak_rss as f64 / 1024.0,
        cpu_s_per_10k: cpu / total as f64 * 10_000.0,
        timeline: timeline(first, &sent_at, &done_at),
    })
}

fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

fn spawn(cmd: &mut Command, dir: &std::path::Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(dir.join("child.log"))?;
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the system under test")
}

fn status_reader(brokers: &str, topic: &str, partitions: i32) -> anyhow::Result<StreamConsumer> {
    let c: StreamConsumer = client(brokers)
        .set("group.id", unique("reader"))
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = rdkafka::TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning)?;
    }
    c.assign(&tpl)?;
    Ok(c)
}

/// Peak resident set size of `pid` so far, in kB (`/proc/PID/status` VmHWM); 0 when
/// unknown.
fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid` (`/proc/PID/stat`, 100 ticks per second).
fn cpu_seconds(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / 100.0)
        })
        .unwrap_or(0.0)
}

/// The webhook sink: answers every request after a fixed latency.
struct Sink {
    addr: std::net::SocketAddr,
}

impl Sink {
    async fn start(latency_ms: u64) -> anyhow::Result<Sink> {
        use axum::routing::post;
        let app = axum::Router::new().route(
            "/hook",
            post(move || async move {
                if latency_ms > 0 {
                    tokio::time::sleep(Duration::from_millis(latency_ms)).await;
                }
                axum::Json(serde_json::json!({"ok": true}))
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Sink { addr })
    }
}

/// The pipe limit (`switchyard bench-pipe`): consume, POST, produce one status record.
pub async fn pipe(
    brokers: &str,
    group: &str,
    triggers: &str,
    status: &str,
    url: &str,
    concurrency: usize,
    fetch_wait_ms: u64,
) -> anyhow::Result<()> {
    let consumer: StreamConsumer = client(brokers)
        .set("group.id", group)
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .create()?;
    consumer.subscribe(&[triggers])?;
    let producer: FutureProducer = client(brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "2")
        .create()?;
    let http = reqwest::Client::new();
    let permits = Arc::new(Semaphore::new(concurrency));
    let status = Arc::new(status.to_owned());
    let url = Arc::new(url.to_owned());
    loop {
        let m = consumer.recv().await?;
        let payload = m.payload().unwrap_or_default().to_vec();
        let run_id = serde_json::from_slice::<serde_json::Value>(&payload)
            .ok()
            .and_then(|v| v.pointer("/run/id")?.as_str().map(str::to_owned))
            .unwrap_or_default();
        let permit = permits.clone().acquire_owned().await?;
        let (http, producer, status, url) =
            (http.clone(), producer.clone(), status.clone(), url.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let ok = http
                .post(url.as_str())
                .header("content-type", "application/json")
                .body(payload)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            let mut u = RunUpdate::status(
                &run_id,
                if ok {
                    RunStatus::Success
                } else {
                    RunStatus::Failure
                },
            );
            u.seq = 1;
            u.at = crate::model::now_rfc3339();
            let bytes = serde_json::to_vec(&u).expect("serialisable");
            let _ = producer
                .send(
                    FutureRecord::to(status.as_str())
                        .key(&run_id)
                        .payload(&bytes),
                    Timeout::After(Duration::from_secs(30)),
                )
                .await;
        });
    }
}

/// The cost of one run's render: plain paths in-process, and jq programs in the
/// sandbox's worker processes (one at a time, and two workers in parallel). Prints one
/// line per case.
async fn templates(n: usize, exe: std::path::PathBuf) -> anyhow::Result<()> {
    use crate::sandbox::Sandbox;
    use crate::template::Context;
    use std::sync::Arc;
    let n = n.clamp(1, 1_000_000);
    let event: crate::model::TriggerEvent = serde_json::from_value(serde_json::json!({
        "run": {"id": "r_bench"},
        "action": {"identifier": "deploy", "invocationMethod": {}},
        "inputs": {"service": "checkout", "version": "1.4.2", "replicas": 3, "tags": ["a", "b"]},
        "trigger": {"by": {"user": {"email": "dev@acme.io"}}}
    }))?;
    let secrets = crate::template::secrets_val(&serde_json::Map::new());
    let plain: serde_json::Map<String, serde_json::Value> =
        serde_json::from_value(serde_json::json!({
            "type": "WEBHOOK", "url": "https://deploy.example/{{ .inputs.service }}",
            "body": {"version": "{{ .inputs.version }}", "run": "{{ .run.id }}",
                     "by": "{{ .trigger.by.user.email }}", "n": "{{ .inputs.replicas }}"}
        }))?;
    let jq: serde_json::Map<String, serde_json::Value> = serde_json::from_value(
        serde_json::json!({
            "type": "WEBHOOK", "url": "https://deploy.example/{{ .inputs.service | ascii_downcase }}",
            "body": {"version": "{{ .inputs.version }}", "tags": "{{ .inputs.tags | join(\",\") }}",
                     "n": "{{ .inputs.replicas * 2 }}", "run": "{{ .run.id }}"}
        }),
    )?;
    type Template = serde_json::Map<String, serde_json::Value>;
    /// `count` renders of `template`, each with its run's context built as the
    /// pipeline builds it.
    async fn renders(
        sandbox: Arc<Sandbox>,
        template: Arc<Template>,
        event: Arc<crate::model::TriggerEvent>,
        secrets: jaq_json::Val,
        count: usize,
    ) -> anyhow::Result<()> {
        for _ in 0..count {
            let ctx = Context::for_event(&event, &secrets);
            sandbox
                .render_object(&template, &ctx, "invocationMethod")
                .await
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        }
        Ok(())
    }
    let cfg = crate::config::TemplatesConfig::default();
    let sandbox = Arc::new(Sandbox::new(&cfg, exe));
    let (plain, jq, event) = (Arc::new(plain), Arc::new(jq), Arc::new(event));
    let run = |template: &Arc<Template>, count: usize| {
        renders(
            sandbox.clone(),
            template.clone(),
            event.clone(),
            secrets.clone(),
            count,
        )
    };
    // Warm up: start the workers and compile the programs.
    run(&jq, cfg.workers * 2).await?;
    let time = |label: &str, started: Instant, count: usize| {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "templates {label}: {count} renders in {secs:.2} s = {:.1} µs/render, {:.0} renders/s",
            secs * 1e6 / count as f64,
            count as f64 / secs
        );
    };
    let started = Instant::now();
    run(&plain, n).await?;
    time("plain paths, in-process", started, n);
    let started = Instant::now();
    run(&jq, n).await?;
    time("jq programs, sandbox, 1 at a time", started, n);
    let started = Instant::now();
    let tasks: Vec<_> = (0..cfg.workers)
        .map(|_| tokio::spawn(run(&jq, n / cfg.workers)))
        .collect();
    for t in tasks {
        t.await??;
    }
    time(
        &format!("jq programs, sandbox, {} workers in parallel", cfg.workers),
        started,
        n / cfg.workers * cfg.workers,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_timeline_groups_latency_by_the_second_of_sending() {
        // Sent at 0, 400, 1,100 and 3,000 ms after the first; done 10, 20, 50 and 5 ms later.
        let sent_at = [1_000, 1_400, 2_100, 4_000];
        let done_at: HashMap<usize, i64> = [(0, 1_010), (1, 1_420), (2, 2_150), (3, 4_005)].into();
        let t = timeline(1_000, &sent_at, &done_at);
        let rows: Vec<_> = t
            .iter()
            .map(|s| (s.second, s.events, s.p50_ms, s.max_ms))
            .collect();
        assert_eq!(
            rows,
            [(0, 2, 20.0, 20.0), (1, 1, 50.0, 50.0), (3, 1, 5.0, 5.0)],
            "second 2 had no events and is left out"
        );
    }
}
