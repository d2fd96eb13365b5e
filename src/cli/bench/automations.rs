//! `switchyard bench --automations N`: entity changes the automations engine evaluates per
//! second with N automations loaded, and its CPU per 10k changes (the engine process plus
//! its template workers, which evaluate the conditions).
//!
//! Every automation listens to every change (`ANY_ENTITY_CHANGE` on one blueprint), so each
//! change evaluates N conditions; condition i is `.diff.after.properties.n % N == i`, so
//! each change fires exactly one automation. The changes are produced before the engine
//! starts; the clock runs from the moment its partitions are ready to the moment its group
//! has committed the last change (each commit is the transaction that carries the fires).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};

use super::measure::{client, cpu_seconds, create_topics, now_ms, rss_kb, spawn, unique};
use super::Options;

pub(super) async fn automations(n: usize, opts: &Options, exe: &Path) -> anyhow::Result<()> {
    anyhow::ensure!(n > 0, "--automations needs at least 1");
    let cluster = match &opts.brokers {
        Some(_) => None,
        None => Some(rdkafka::mocking::MockCluster::new(1).context("starting the mock cluster")?),
    };
    let brokers = match (&opts.brokers, &cluster) {
        (Some(b), _) => b.clone(),
        (None, Some(c)) => c.bootstrap_servers(),
        (None, None) => unreachable!("one of the two is set"),
    };
    let (entities, timers, triggers) = (unique("entities"), unique("timers"), unique("triggers"));
    let parts = opts.partitions;
    create_topics(
        &brokers,
        cluster.as_ref(),
        &[(&entities, parts), (&timers, parts), (&triggers, parts)],
    )
    .await?;
    let dir = std::env::temp_dir().join(unique("automations"));
    let defs = dir.join("definitions");
    std::fs::create_dir_all(&defs)?;
    for i in 0..n {
        let def = serde_json::json!({
            "identifier": format!("a{i}"),
            "trigger": {"type": "automation",
                "event": {"type": "ANY_ENTITY_CHANGE", "blueprintIdentifier": "service"},
                "condition": {"type": "JQ", "combinator": "and",
                    "expressions": [format!(".diff.after.properties.n % {n} == {i}")]}},
            "invocationMethod": {"type": "WEBHOOK", "url": "http://127.0.0.1:9/x",
                "body": {"service": "{{ .event.context.entityIdentifier }}"}}
        });
        std::fs::write(defs.join(format!("a{i}.json")), def.to_string())?;
    }
    let changes = opts.events;
    println!(
        "bench automations: brokers {brokers}{}, {n} automations (each change evaluates {n} \
         conditions, fires 1), {changes} entity changes, {parts} partitions",
        if opts.brokers.is_none() {
            " (mock cluster)"
        } else {
            ""
        },
    );
    let producer: FutureProducer = client(&brokers)
        .set("linger.ms", "5")
        .set("enable.idempotence", "true")
        .create()?;
    let mut pending = Vec::with_capacity(changes);
    for i in 0..changes {
        let key = format!("service/e{}", i % 1000);
        let value = serde_json::json!({"identifier": format!("e{}", i % 1000),
            "properties": {"n": i, "status": if i % 2 == 0 { "Healthy" } else { "Unhealthy" }}})
        .to_string();
        let record = FutureRecord::to(&entities).key(&key).payload(&value);
        pending.push(producer.send_result(record).map_err(|(e, _)| e)?);
    }
    for p in pending {
        p.await?.map_err(|(e, _)| e)?;
    }
    let group = unique("group");
    let config = format!(
        r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
triggers_topic = "{triggers}"
create_topics = false

[log]
format = "text"
level = "info,librdkafka=warn"

[http]
listen = ""

[automations]
dir = "{defs}"
entities_topic = "{entities}"
timers_topic = "{timers}"
runs = false
start_from = "earliest"
"#,
        defs = defs.display()
    );
    let cfg_path = dir.join("switchyard.toml");
    std::fs::write(&cfg_path, config)?;
    let mut child = spawn(
        Command::new(exe)
            .args(["automations", "run", "--config"])
            .arg(&cfg_path),
        &dir.join("child.log"),
    )?;
    let pid = child.id();
    let log = dir.join("child.log");
    let deadline = Instant::now() + opts.timeout;
    let outcome = async {
        while std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("automations partition ready")
            .count()
            < parts as usize
        {
            anyhow::ensure!(
                Instant::now() < deadline,
                "the engine did not get its partitions ready:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
            anyhow::ensure!(child.try_wait()?.is_none(), "the engine exited");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let (t0, cpu0) = (now_ms(), tree_cpu(pid));
        let reader: BaseConsumer = client(&brokers)
            .set("group.id", format!("{group}.automations"))
            .create()?;
        loop {
            let mut tpl = rdkafka::TopicPartitionList::new();
            for p in 0..parts {
                tpl.add_partition(&entities, p);
            }
            let done: i64 = reader
                .committed_offsets(tpl, Duration::from_secs(10))?
                .elements()
                .iter()
                .filter_map(|e| e.offset().to_raw())
                .filter(|o| *o > 0)
                .sum();
            if done >= changes as i64 {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "{done} of {changes} changes committed before --timeout"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let (t1, cpu1) = (now_ms(), tree_cpu(pid));
        let seconds = (t1 - t0) as f64 / 1000.0;
        println!(
            "automations  {n} loaded  changes {changes}  {seconds:.2} s  {:.0} changes/s  cpu {:.2} s/10k ({:.2} engine + {:.2} template workers)  peak RSS {:.1} MB (engine)",
            changes as f64 / seconds,
            (cpu1.0 + cpu1.1 - cpu0.0 - cpu0.1) / changes as f64 * 10_000.0,
            (cpu1.0 - cpu0.0) / changes as f64 * 10_000.0,
            (cpu1.1 - cpu0.1) / changes as f64 * 10_000.0,
            rss_kb(pid) as f64 / 1024.0
        );
        Ok(())
    }
    .await;
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    outcome
}

/// CPU seconds of `pid`, and of its children (the template workers): the live ones plus
/// those it has reaped (a worker is replaced after a number of renders).
fn tree_cpu(pid: u32) -> (f64, f64) {
    let children: f64 = std::fs::read_dir("/proc")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .filter(|p| parent_of(*p) == Some(pid))
                .map(cpu_seconds)
                .sum()
        })
        .unwrap_or(0.0);
    (cpu_seconds(pid), children + reaped_cpu(pid))
}

fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?
        .1
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// CPU seconds of the children `pid` has waited for (`cutime` + `cstime`).
fn reaped_cpu(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let f: Vec<&str> = s.rsplit_once(')')?.1.split_whitespace().collect();
            let cutime: f64 = f.get(13)?.parse().ok()?;
            let cstime: f64 = f.get(14)?.parse().ok()?;
            Some((cutime + cstime) / 100.0)
        })
        .unwrap_or(0.0)
}
