//! `GET /v1/events`: the board's Server-Sent Events (see the module above for the events).
//!
//! One hub task reads the run view's change notices and the health strip, and encodes
//! each event once; every open stream forwards the same bytes. So a batch costs one lock
//! of the view and one JSON encoding however many people watch, and a slow reader falls
//! behind on its own (it is sent a `reset`) without holding anyone else back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tokio::sync::broadcast::{self, error::RecvError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::health::Health;
use super::{read, Board, BATCH, MAX_BATCH_RUNS};
use crate::api::Failure;
use crate::status::view::RunView;

/// A batch this large makes the next window [`BUSY_WINDOW`] long.
const BUSY_BATCH: usize = 100;
const BUSY_WINDOW: Duration = Duration::from_millis(400);

/// Encoded events a stream may fall behind by before it is sent a `reset`.
const HUB_CAPACITY: usize = 64;

/// One Server-Sent Event.
fn sse(event: &str, data: &impl serde::Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

fn reset() -> Bytes {
    sse("reset", &json!({"reason": "the stream fell behind"}))
}

/// Start the hub: events for every stream, encoded once, until `stop`.
pub(super) fn hub(
    view: Arc<RunView>,
    mut health: watch::Receiver<Health>,
    stop: CancellationToken,
) -> broadcast::Sender<Bytes> {
    let (tx, _) = broadcast::channel::<Bytes>(HUB_CAPACITY);
    let out = tx.clone();
    let mut changes = view.subscribe();
    tokio::spawn(async move {
        // Under load a longer window sends each busy run once instead of once per update
        // (a run's updates come within milliseconds), at a latency still under a second.
        let mut window = BATCH;
        loop {
            let event = tokio::select! {
                r = changes.recv() => match r {
                    Ok(id) => {
                        // Gather what else changes within the batch window.
                        let mut ids: Vec<Arc<str>> = vec![id];
                        let mut seen: HashSet<Arc<str>> = ids.iter().cloned().collect();
                        let until = tokio::time::Instant::now() + window;
                        let mut lagged = false;
                        loop {
                            match tokio::time::timeout_at(until, changes.recv()).await {
                                Ok(Ok(id)) => {
                                    if seen.insert(id.clone()) {
                                        ids.push(id);
                                    }
                                }
                                Ok(Err(RecvError::Lagged(_))) => lagged = true,
                                Ok(Err(RecvError::Closed)) | Err(_) => break,
                            }
                            if ids.len() >= MAX_BATCH_RUNS {
                                break; // a full batch goes now
                            }
                        }
                        window = if ids.len() > BUSY_BATCH { BUSY_WINDOW } else { BATCH };
                        if out.receiver_count() == 0 {
                            continue; // nobody watches: nothing to encode
                        }
                        if lagged {
                            reset()
                        } else {
                            sse("runs", &view.summaries(ids.iter().map(|i| &**i)))
                        }
                    }
                    Err(RecvError::Lagged(_)) => reset(),
                    Err(RecvError::Closed) => return,
                },
                r = health.changed() => match r {
                    Ok(()) => sse("health", &*health.borrow_and_update()),
                    Err(_) => return,
                },
                _ = stop.cancelled() => return,
            };
            let _ = out.send(event); // no stream open: dropped
        }
    });
    tx
}

pub(super) async fn events(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    read(&b, &headers)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(4);
    let mut events = b.events.subscribe();
    let first = sse("health", &*b.health.borrow());
    let stop = b.stop.clone();
    tokio::spawn(async move {
        if tx
            .send(Bytes::from_static(b"retry: 1000\n\n"))
            .await
            .is_err()
            || tx.send(first).await.is_err()
        {
            return;
        }
        let mut keepalive = tokio::time::interval(Duration::from_secs(15));
        loop {
            let out = tokio::select! {
                r = events.recv() => match r {
                    Ok(bytes) => bytes,
                    Err(RecvError::Lagged(_)) => reset(),
                    Err(RecvError::Closed) => return,
                },
                _ = keepalive.tick() => Bytes::from_static(b": keepalive\n\n"),
                _ = stop.cancelled() => return,
                _ = tx.closed() => return,
            };
            if tx.send(out).await.is_err() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, std::convert::Infallible>(b), rx))
    });
    Ok((
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(stream),
    )
        .into_response())
}
