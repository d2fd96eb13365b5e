//! One measured run of a system under test: topics, the child process, the producer of
//! triggers and the reader of terminal updates.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::ClientConfig;

use switchyard::model::RunUpdate;

use super::pipe::Sink;
use super::*;

pub(super) fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("bench-{prefix}-{}-{nanos}", std::process::id())
}

pub(super) fn client(brokers: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers);
    c
}

pub(super) async fn create_topics(
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

pub(super) struct Run {
    triggers: String,
    status: String,
}

pub(super) async fn measure(
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
    // The board systems listen on a free loopback port (an open, read-only board).
    let board_addr = match system {
        "board" | "board-sse" => Some(
            std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .to_string(),
        ),
        _ => None,
    };
    let mut children = match system {
        "switchyard" | "board" | "board-sse" => {
            // The first member serves the board (when it is on); further members serve no
            // HTTP, so that they do not compete for its port.
            let config = |listen: &str| {
                format!(
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
listen = "{listen}"
[log]
format = "text"
level = "warn,librdkafka=error"
{extra}
"#,
                    t = run.triggers,
                    s = run.status,
                    c = opts.concurrency,
                    fw = opts.fetch_wait_ms,
                    extra = opts.switchyard_toml,
                )
            };
            let path = dir.join("switchyard.toml");
            std::fs::write(&path, config(board_addr.as_deref().unwrap_or("")))?;
            let quiet_path = dir.join("member.toml");
            if opts.members > 1 {
                std::fs::write(&quiet_path, config(""))?;
            }
            let mut members = Vec::new();
            for m in 0..opts.members.max(1) {
                let (cfg, log) = match m {
                    0 => (&path, dir.join("child.log")),
                    _ => (&quiet_path, dir.join(format!("member{m}.log"))),
                };
                members.push(spawn(
                    Command::new(exe).arg("run").arg("--config").arg(cfg),
                    &log,
                )?);
            }
            members
        }
        "pipe" => vec![spawn(
            Command::new(exe)
                .arg("bench-pipe")
                .args(["--brokers", brokers, "--group", &group])
                .args(["--triggers", &run.triggers, "--status", &run.status])
                .args(["--url", &url])
                .args(["--concurrency", &opts.concurrency.to_string()])
                .args(["--fetch-wait-ms", &opts.fetch_wait_ms.to_string()]),
            &dir.join("child.log"),
        )?],
        other => bail!("unknown system {other:?} (pipe, switchyard, board, board-sse)"),
    };
    let pids: Vec<u32> = children.iter().map(Child::id).collect();
    let pid = pids[0];
    let clients = match (&board_addr, system) {
        (Some(addr), "board-sse") => {
            Some(super::board::Clients::connect(addr, opts.board_clients).await?)
        }
        (Some(addr), _) => {
            super::board::Clients::connect(addr, 0).await?;
            None
        }
        _ => None,
    };
    let rss_at_start = status_kb(pid, "VmRSS:");
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
    if pids.len() > 1 {
        wait_for_members(&reader, &group, pids.len()).await?;
    }
    let cpu_of = |pids: &[u32]| pids.iter().map(|p| cpu_seconds(*p)).sum::<f64>();
    let rss_of = |pids: &[u32]| pids.iter().map(|p| rss_kb(*p)).max().unwrap_or(0);
    let cpu_before = cpu_of(&pids);
    let started = Instant::now();
    let mut next_rss_line = Duration::from_secs(opts.rss_every_s);
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
            peak_rss = peak_rss.max(rss_of(&pids));
            last_rss_check = Instant::now();
        }
        if opts.rss_every_s > 0 && started.elapsed() >= next_rss_line {
            let now: u64 = pids.iter().map(|p| status_kb(*p, "VmRSS:")).sum();
            println!(
                "{system:<10} rss at {:>4} s: {:.1} MB, {} of {total} runs finished",
                next_rss_line.as_secs(),
                now as f64 / 1024.0,
                done_at.len()
            );
            next_rss_line += Duration::from_secs(opts.rss_every_s);
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
    peak_rss = peak_rss.max(rss_of(&pids));
    if board_addr.is_some() {
        let received = clients.map(|c| c.stop());
        super::board::report(system, rss_at_start, peak_rss, received);
    }
    let cpu = cpu_of(&pids) - cpu_before;
    for pid in &pids {
        let _ = Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status();
    }
    let stop_deadline = Instant::now() + Duration::from_secs(20);
    for child in &mut children {
        while child.try_wait()?.is_none() && Instant::now() < stop_deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = child.kill();
        let _ = child.wait();
    }
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
        p999_ms: pct(0.999),
        peak_rss_mb: peak_rss as f64 / 1024.0,
        cpu_s_per_10k: cpu / total as f64 * 10_000.0,
        timeline: timeline(first, &sent_at, &done_at),
    })
}

/// Wait (up to 60 s) until the consumer group `group` has `n` members and is stable, so
/// that a measured run does not include members joining.
async fn wait_for_members(reader: &StreamConsumer, group: &str, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let seen = reader
            .fetch_group_list(Some(group), Duration::from_secs(5))
            .ok()
            .and_then(|l| {
                l.groups()
                    .iter()
                    .find(|g| g.name() == group)
                    .map(|g| (g.members().len(), g.state().to_owned()))
            });
        match seen {
            Some((m, state)) if m == n && state == "Stable" => return Ok(()),
            other => anyhow::ensure!(
                Instant::now() < deadline,
                "the group {group} did not reach {n} stable members within 60 s (last seen: {other:?})"
            ),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

pub(super) fn now_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

/// Start a system under test, its stderr to `log`.
pub(super) fn spawn(cmd: &mut Command, log: &std::path::Path) -> anyhow::Result<Child> {
    let log = std::fs::File::create(log)?;
    cmd.stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .context("starting the system under test")
}

pub(super) fn status_reader(
    brokers: &str,
    topic: &str,
    partitions: i32,
) -> anyhow::Result<StreamConsumer> {
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
pub(super) fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:")
}

/// A kB field of `/proc/PID/status` (`VmHWM:`, `VmRSS:`); 0 when unknown.
pub(super) fn status_kb(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// User + system CPU seconds of `pid` (`/proc/PID/stat`, 100 ticks per second).
pub(super) fn cpu_seconds(pid: u32) -> f64 {
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
