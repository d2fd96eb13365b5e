//! `GET /v1/events`: the board's Server-Sent Events (see the module above for the events).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::{read, Board, BATCH, MAX_BATCH_RUNS};
use crate::api::Failure;

/// One Server-Sent Event.
fn sse(event: &str, data: &impl serde::Serialize) -> Bytes {
    let data = serde_json::to_string(data).unwrap_or_else(|_| "null".into());
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

pub(super) async fn events(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    read(&b, &headers)?;
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(16);
    let mut changes = b.api.view.subscribe();
    let mut health = b.health.clone();
    let (view, stop) = (b.api.view.clone(), b.stop.clone());
    tokio::spawn(async move {
        use tokio::sync::broadcast::error::RecvError;
        let first = sse("health", &*health.borrow_and_update());
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
                r = changes.recv() => match r {
                    Ok(id) => {
                        // Gather what else changes within the batch window.
                        let mut ids: Vec<Arc<str>> = vec![id];
                        let mut seen: HashSet<Arc<str>> = ids.iter().cloned().collect();
                        let until = tokio::time::Instant::now() + BATCH;
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
                            if ids.len() > MAX_BATCH_RUNS {
                                lagged = true;
                                break;
                            }
                        }
                        if lagged {
                            sse("reset", &json!({"reason": "the stream fell behind"}))
                        } else {
                            sse("runs", &view.summaries(ids.iter().map(|i| &**i)))
                        }
                    }
                    Err(RecvError::Lagged(_)) => {
                        sse("reset", &json!({"reason": "the stream fell behind"}))
                    }
                    Err(RecvError::Closed) => return,
                },
                r = health.changed() => match r {
                    Ok(()) => sse("health", &*health.borrow_and_update()),
                    Err(_) => return,
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
