//! `switchyard demo`: the whole flow on one machine with no setup.
//!
//! Starts librdkafka's in-process mock cluster, a sample webhook receiver on loopback and
//! the dispatcher; publishes four sample triggers (a synchronized success, a failing
//! webhook, an async run and a malformed event); prints every run update and DLQ record
//! as it arrives; exits once each sample has reached its expected state.
//!
//! With `--board` it then keeps going: it prints the run board's URL and publishes a
//! sample run every few seconds until Ctrl-C, so the board has something to show.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use switchyard::config::{Config, LogFormat};
use switchyard::model::{RunUpdate, UpdateKind};

const DEADLINE: Duration = Duration::from_secs(30);

/// How often `--board` publishes another sample run.
const BOARD_EVERY: Duration = Duration::from_secs(3);

/// Run the demo; returns an error when a sample did not reach its expected state.
pub async fn run(color: bool, board: bool) -> anyhow::Result<()> {
    let started = Instant::now();
    let cluster = MockCluster::new(1).context("starting the mock cluster")?;
    let mut cfg = Config::default();
    cfg.kafka.brokers = cluster.bootstrap_servers();
    cfg.kafka.group_id = "switchyard-demo".into();
    cfg.kafka.create_topics = false;
    cfg.log.format = LogFormat::Text;
    cfg.http.listen = if board {
        // The board's usual address when it is free, else any free loopback port.
        let l = std::net::TcpListener::bind("127.0.0.1:8080")
            .or_else(|_| std::net::TcpListener::bind("127.0.0.1:0"))
            .context("finding a loopback port for the board")?;
        l.local_addr()?.to_string()
    } else {
        "127.0.0.1:0".into()
    };
    // Quick retries, so the failing sample shows them within the demo's few seconds.
    cfg.backends.webhook.retry.max_attempts = 3;
    cfg.backends.webhook.retry.initial_backoff = std::time::Duration::from_millis(200);
    // The sample receiver is on loopback, which the destination policy refuses unless
    // the operator opens it: the demo opens exactly that address.
    cfg.backends.webhook.destinations.allow = vec!["127.0.0.1".into()];
    for (topic, partitions) in [
        (&cfg.kafka.triggers_topic, 3),
        (&cfg.kafka.status_topic, 1),
        (&cfg.kafka.dlq_topic, 1),
        (&cfg.kafka.watches_topic, 1),
    ] {
        cluster
            .create_topic(topic, partitions, 1)
            .with_context(|| format!("creating {topic}"))?;
    }
    let receiver = start_receiver("127.0.0.1:0").await?;
    println!("switchyard demo");
    println!("  mock Kafka cluster  {}", cfg.kafka.brokers);
    println!("  sample receiver     http://{receiver}");
    println!(
        "  topics              {} → {} (+ {})\n",
        cfg.kafka.triggers_topic, cfg.kafka.status_topic, cfg.kafka.dlq_topic
    );

    let shutdown = CancellationToken::new();
    let dispatcher = tokio::spawn(switchyard::app::run(cfg.clone(), shutdown.clone()));
    let watcher = watch_topics(&cfg)?;

    for (name, event) in samples(receiver) {
        let bytes = event.as_bytes();
        crate::cli::trigger::publish(&cfg, bytes, false)
            .await
            .with_context(|| format!("publishing the {name} sample"))?;
        println!("published  {name}");
    }
    println!();

    let result = follow(&watcher, color).await;
    if result.is_ok() {
        println!(
            "\nall four samples reached their expected state in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    let result = match result {
        Ok(()) if board => keep_publishing(&cfg, receiver, &watcher, color).await,
        other => other,
    };
    shutdown.cancel();
    dispatcher.await??;
    result
}

/// `--board`: print the board's URL, then publish a sample run every [`BOARD_EVERY`] and
/// print its updates, until Ctrl-C.
async fn keep_publishing(
    cfg: &Config,
    receiver: SocketAddr,
    watcher: &StreamConsumer,
    color: bool,
) -> anyhow::Result<()> {
    println!(
        "\nthe run board: http://{}/  (open, read-only: no api.tokens on a loopback listener)",
        cfg.http.listen
    );
    println!(
        "publishing a sample run every {} s; Ctrl-C stops\n",
        BOARD_EVERY.as_secs()
    );
    let mut tick = tokio::time::interval(BOARD_EVERY);
    tick.tick().await;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    let mut n = 0u64;
    loop {
        tokio::select! {
            _ = &mut ctrl_c => {
                println!("\nstopping the demo ({n} more sample runs published)");
                return Ok(());
            }
            _ = tick.tick() => {
                n += 1;
                // Mostly successes, a failure every fourth run, an async run every fifth.
                let (path, sync) = match n {
                    n if n % 5 == 0 => ("/async", false),
                    n if n % 4 == 0 => ("/fail", true),
                    _ => ("/deploy", true),
                };
                let (_, event) = &samples(receiver)[0];
                let mut v: Value = serde_json::from_str(event)?;
                let run = format!("r_demo_{n:04}");
                v["run"]["id"] = json!(run);
                v["action"]["invocationMethod"]["url"] = json!(format!("http://{receiver}{path}"));
                v["action"]["invocationMethod"]["synchronized"] = json!(sync);
                v["action"]["identifier"] = json!(["deploy_service", "rotate_secret", "create_service"][n as usize % 3]);
                crate::cli::trigger::publish(cfg, v.to_string().as_bytes(), false)
                    .await
                    .with_context(|| format!("publishing {run}"))?;
                println!("published  {run} ({path})");
            }
            m = watcher.recv() => {
                let m = m?;
                if let Ok(u) = serde_json::from_slice::<RunUpdate>(m.payload().unwrap_or_default()) {
                    println!("{}", switchyard::status::display::line(&u, color));
                }
            }
        }
    }
}

/// The four sample events, as raw JSON text.
fn samples(receiver: SocketAddr) -> Vec<(&'static str, String)> {
    let event = |run: &str, path: &str, sync: bool| {
        json!({
            "run": {"id": run},
            "action": {"identifier": "deploy_service", "blueprint": "service",
                "invocationMethod": {"type": "WEBHOOK", "url": format!("http://{receiver}{path}"),
                    "method": "POST", "synchronized": sync,
                    "headers": {"RUN_ID": "{{ .run.id }}"},
                    "body": {"version": "{{ .inputs.version }}", "service": "{{ .entity.identifier }}"}}},
            "trigger": {"by": {"user": {"email": "dev@acme.io"}}, "origin": "UI",
                        "at": "2026-11-28T10:00:00Z", "operation": "DAY-2"},
            "inputs": {"version": "1.4.2"},
            "entity": {"identifier": "checkout", "blueprint": "service", "properties": {}},
            "event": null,
            "orderingKey": "service/checkout"
        })
        .to_string()
    };
    vec![
        (
            "r_demo_sync_ok (synchronized webhook → 200)",
            event("r_demo_sync_ok", "/deploy", true),
        ),
        (
            "r_demo_fails (webhook → 503)",
            event("r_demo_fails", "/fail", true),
        ),
        (
            "r_demo_async (async webhook → 202)",
            event("r_demo_async", "/async", false),
        ),
        (
            "a malformed event (truncated JSON)",
            r#"{"run": {"id": "r_demo_bad"}, "action": "#.to_owned(),
        ),
    ]
}

/// The sample receiver (also `switchyard receiver`, for docker compose): `POST /deploy`
/// answers 200 with a deployment, `POST /fail` 503, `POST /async` 202.
pub async fn start_receiver(listen: &str) -> anyhow::Result<SocketAddr> {
    let app = Router::new()
        .route(
            "/deploy",
            post(|Json(body): Json<Value>| async move {
                Json(json!({"deployment": "d-42", "version": body["version"]}))
            }),
        )
        .route(
            "/fail",
            post(|| async {
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "deployer is down for maintenance",
                )
            }),
        )
        .route("/async", post(|| async { StatusCode::ACCEPTED }));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "sample receiver failed");
        }
    });
    Ok(addr)
}

fn watch_topics(cfg: &Config) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = switchyard::kafka::client_config(&cfg.kafka)
        .set("group.id", "switchyard-demo-viewer")
        .set("enable.auto.commit", "false")
        .create()?;
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&cfg.kafka.status_topic, 0, Offset::Beginning)?;
    tpl.add_partition_offset(&cfg.kafka.dlq_topic, 0, Offset::Beginning)?;
    consumer.assign(&tpl)?;
    Ok(consumer)
}

/// Print status and DLQ records until every sample is in its expected state.
async fn follow(consumer: &StreamConsumer, color: bool) -> anyhow::Result<()> {
    let mut pending: BTreeSet<&str> = ["r_demo_sync_ok", "r_demo_fails", "r_demo_async", "dlq"]
        .into_iter()
        .collect();
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !pending.is_empty() {
        let msg = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(m) => m?,
            Err(_) => bail!("demo timed out after {DEADLINE:?}; still waiting for {pending:?}"),
        };
        let payload = msg.payload().unwrap_or_default();
        if msg.topic().ends_with(".dlq") {
            let header = |name: &str| {
                msg.headers()
                    .and_then(|hs| hs.iter().find(|h| h.key == name))
                    .and_then(|h| h.value)
                    .map(|v| String::from_utf8_lossy(v).into_owned())
                    .unwrap_or_default()
            };
            println!(
                "{:<31}dlq        [{}] {} (from {})",
                "",
                header("switchyard-error-class"),
                header("switchyard-error"),
                header("switchyard-source")
            );
            pending.remove("dlq");
            continue;
        }
        let Ok(u) = serde_json::from_slice::<RunUpdate>(payload) else {
            continue;
        };
        println!("{}", switchyard::status::display::line(&u, color));
        let reached = match u.run_id.as_str() {
            "r_demo_async" => u.kind == UpdateKind::Log,
            _ => u.is_terminal(),
        };
        if reached {
            pending.remove(u.run_id.as_str());
        }
    }
    Ok(())
}
