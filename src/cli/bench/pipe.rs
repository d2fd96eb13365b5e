//! The pipe limit: consume, POST, produce one status record per event.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use tokio::sync::Semaphore;

use super::measure::client;

use switchyard::model::{RunStatus, RunUpdate};

/// The webhook sink: answers every request after a fixed latency.
pub(super) struct Sink {
    pub(super) addr: std::net::SocketAddr,
}

impl Sink {
    pub(super) async fn start(latency_ms: u64) -> anyhow::Result<Sink> {
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
            u.at = switchyard::model::now_rfc3339();
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
