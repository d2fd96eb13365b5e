//! The HTTP listener: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`,
//! the status API ([`crate::api`]) and the run board ([`crate::board`]).
//!
//! `/readyz` answers 200 once the consumer has joined its group and the producer can
//! reach a broker (a metadata request, bounded to 2 s, made at most every 5 s however
//! often `/readyz` is probed); otherwise 503 with the reason.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use rdkafka::producer::Producer as _;
use tokio_util::sync::CancellationToken;

use crate::kafka::publisher::Publisher;
use crate::telemetry::metrics;

struct Shared {
    publisher: Arc<Publisher>,
    /// The last broker check and when it ran: `/readyz` asks the broker at most once per
    /// [`READY_TTL`], however often it is probed.
    last_check: tokio::sync::Mutex<Option<(std::time::Instant, StatusCode, String)>>,
}

/// More routes for the listener (the run board's): `timed` ones answer within
/// `api.request_timeout`; `streaming` ones (event streams) are long-lived.
pub struct Routes {
    pub timed: Router,
    pub streaming: Router,
}

/// How long a `/readyz` broker check is reused.
const READY_TTL: Duration = Duration::from_secs(5);

/// Bind `listen` and serve until `stop` fires. Returns the bound address.
pub async fn start(
    listen: &str,
    publisher: Arc<Publisher>,
    api: Option<Arc<crate::api::Api>>,
    board: Option<Routes>,
    request_timeout: Duration,
    stop: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let listener = bind(listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let mut app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(Arc::new(Shared {
            publisher,
            last_check: tokio::sync::Mutex::new(None),
        }));
    let with_api = api.as_ref().map(|a| a.tokens.is_empty());
    if let Some(api) = api {
        app = app.merge(crate::api::routes(api));
    }
    let (board_routes, streams) = match board {
        Some(r) => (Some(r.timed), Some(r.streaming)),
        None => (None, None),
    };
    let with_board = board_routes.is_some();
    if let Some(r) = board_routes {
        app = app.merge(r);
    }
    // Every request, body included, within `api.request_timeout` (the board's event
    // stream is routed outside this layer).
    let app = app.layer(axum::middleware::from_fn(
        move |req: axum::extract::Request, next: axum::middleware::Next| async move {
            match tokio::time::timeout(request_timeout, next.run(req)).await {
                Ok(resp) => resp,
                Err(_) => (
                    StatusCode::REQUEST_TIMEOUT,
                    format!(
                        "the request took longer than api.request_timeout ({request_timeout:?})\n"
                    ),
                )
                    .into_response(),
            }
        },
    ));
    let app = match streams {
        Some(s) => app.merge(s),
        None => app,
    };
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http listener failed");
        }
    });
    let what = match (with_api, with_board) {
        (Some(false), true) => {
            "/metrics, /healthz, /readyz, status API /v1/actions/runs, run board /"
        }
        (Some(false), false) => "/metrics, /healthz, /readyz, status API /v1/actions/runs",
        (Some(true), true) => {
            "/metrics, /healthz, /readyz, run board / (read-only, no token: no api.tokens \
             on a loopback listener); status API writes disabled (no api.tokens)"
        }
        _ => "/metrics, /healthz, /readyz; status API disabled (no api.tokens)",
    };
    tracing::info!("http listening on {addr} ({what})");
    Ok(addr)
}

/// `/metrics` and `/healthz` only (`switchyard automations run`, which has no status
/// publisher of its own).
pub async fn start_metrics(listen: &str, stop: CancellationToken) -> anyhow::Result<SocketAddr> {
    let listener = bind(listen)
        .await
        .with_context(|| format!("http.listen: cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let app: Router = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }));
    tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "http listener failed");
        }
    });
    tracing::info!("http listening on {addr} (/metrics, /healthz)");
    Ok(addr)
}

/// Bind `listen`. An address still in use is tried again for a few seconds: when Port's
/// new Kafka credentials restart the dispatcher in-process, the previous listener may
/// still be closing.
async fn bind(listen: &str) -> std::io::Result<tokio::net::TcpListener> {
    let mut tries = 0;
    loop {
        match tokio::net::TcpListener::bind(listen).await {
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && tries < 50 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return other,
        }
    }
}

async fn metrics_text() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        metrics::get().render(),
    )
}

async fn ready(State(s): State<Arc<Shared>>) -> (StatusCode, String) {
    if !crate::telemetry::readiness::joined() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the consumer has not joined its group yet\n".into(),
        );
    }
    if s.publisher.is_direct() {
        // Port mode without an output cluster: switchyard writes to no broker (Port's
        // is read-only), so there is no producer to check; the group membership above
        // (or, for POLLING, a successful claim) is the readiness.
        return (StatusCode::OK, "ready\n".into());
    }
    let mut last = s.last_check.lock().await;
    if let Some((at, code, text)) = last.as_ref() {
        if at.elapsed() < READY_TTL {
            return (*code, text.clone());
        }
    }
    let (code, text) = broker_check(&s).await;
    *last = Some((std::time::Instant::now(), code, text.clone()));
    (code, text)
}

async fn broker_check(s: &Shared) -> (StatusCode, String) {
    let producer = s.publisher.producer().get();
    let reach = tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(None, Duration::from_secs(2))
            .map(|md| md.brokers().len())
    })
    .await;
    match reach {
        Ok(Ok(n)) if n > 0 => (StatusCode::OK, "ready\n".into()),
        Ok(Ok(_)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: the producer sees no broker\n".into(),
        ),
        Ok(Err(e)) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: the producer cannot reach the brokers ({e})\n"),
        ),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}
