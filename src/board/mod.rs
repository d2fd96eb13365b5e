//! The live run board: a web page at `/` on the HTTP listener, and the routes it reads.
//!
//! - `GET /` and `/board/*`: the page, embedded in the binary (`board/` in the repository;
//!   nothing is fetched from elsewhere at run time).
//! - `GET /v1/board`: how the page must authenticate (no token needed to ask).
//! - `GET /v1/runs`: the newest runs matching `status`, `action`, `backend` (each a comma
//!   list), `since`, `until` (RFC 3339, on `createdAt`), `q` (part of a run id or external
//!   run id) and `limit` (≤ 10,000), with counts per status over every match.
//! - `GET /v1/events`: Server-Sent Events: `runs` (summaries of runs that changed,
//!   batched over at most [`BATCH`]), `health` (when the strip changes) and `reset` (the
//!   reader fell behind: read `/v1/runs` again).
//! - `GET /v1/health`: the health strip ([`health`]).
//! - `GET /v1/dlq`: the newest dead-letter records, selected like `switchyard dlq
//!   replay` (`runId`, `class`, each a comma list; `since`, `until`).
//! - `POST /v1/dlq/replay` `{runIds?, classes?, since?, until?, dryRun}`: `switchyard dlq
//!   replay` over the whole DLQ; `dryRun: true` lists what would be replayed.
//!
//! Access: the status API's tokens, `read` for every `GET`, `write` for the replay. With
//! no token configured the page and its read routes answer without one, and only on a
//! loopback listener; the replay and the API's writes are then not routed at all (404).

pub mod dlq;
pub mod health;
mod stream;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::api::{authorize, Api, Failure, Need};
use crate::config::Config;
use crate::model::RunStatus;
use crate::status::view::Filter;

/// Longest a change waits before the event stream sends it (changes in the window are
/// sent together).
pub const BATCH: Duration = Duration::from_millis(100);
/// Most runs one listing returns (the page holds this many).
pub const MAX_LIST: usize = 10_000;
/// Changed runs one `runs` event carries at most (a fuller batch is sent early).
pub(crate) const MAX_BATCH_RUNS: usize = 5_000;

pub struct Board {
    pub api: Arc<Api>,
    pub dlq: Arc<dlq::DlqIndex>,
    pub health: watch::Receiver<health::Health>,
    pub config: Arc<Config>,
    /// Ends the event streams at shutdown.
    pub stop: CancellationToken,
    /// One replay at a time.
    replaying: tokio::sync::Mutex<()>,
    /// The event streams' hub: each event encoded once for every stream.
    events: tokio::sync::broadcast::Sender<Bytes>,
}

impl Board {
    pub fn new(
        api: Arc<Api>,
        dlq: Arc<dlq::DlqIndex>,
        health: watch::Receiver<health::Health>,
        config: Arc<Config>,
        stop: CancellationToken,
    ) -> Self {
        let events = stream::hub(api.view.clone(), health.clone(), stop.clone());
        Board {
            events,
            api,
            dlq,
            health,
            config,
            stop,
            replaying: tokio::sync::Mutex::new(()),
        }
    }

    /// No tokens are configured (so the listener is on loopback): reads need none, and
    /// nothing is written.
    pub fn open(&self) -> bool {
        self.api.tokens.is_empty()
    }
}

const INDEX_HTML: &str = include_str!("../../board/index.html");
const APP_JS: &str = include_str!("../../board/dist/app.js");
const APP_CSS: &str = include_str!("../../board/app.css");

/// The page's routes that end like any request (under `api.request_timeout`).
pub fn routes(board: Arc<Board>) -> Router {
    let mut r = Router::new()
        .route(
            "/",
            get(|| async { asset("text/html; charset=utf-8", INDEX_HTML) }),
        )
        .route(
            "/board/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/board/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route("/v1/board", get(board_info))
        .route("/v1/runs", get(list_runs))
        .route("/v1/health", get(read_health))
        .route("/v1/dlq", get(list_dlq));
    if !board.open() {
        r = r.route("/v1/dlq/replay", post(replay));
    }
    r.with_state(board)
}

/// The event stream: long-lived, so outside the request timeout.
pub fn stream_routes(board: Arc<Board>) -> Router {
    Router::new()
        .route("/v1/events", get(stream::events))
        .with_state(board)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(
                    "default-src 'none'; script-src 'self'; style-src 'self'; \
                     connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                     form-action 'none'; frame-ancestors 'none'",
                ),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::REFERRER_POLICY,
                HeaderValue::from_static("no-referrer"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// A read: a `read` token, or none when no tokens are configured ([`authorize`]).
pub(crate) fn read(board: &Board, headers: &HeaderMap) -> Result<(), Failure> {
    authorize(&board.api, headers, Need::Read)
}

async fn board_info(State(b): State<Arc<Board>>) -> Response {
    Json(json!({
        "auth": if b.open() { "none" } else { "token" },
        "note": if b.open() {
            "No api.tokens are configured: this board is open to anyone who can reach this \
             loopback listener, and read-only (replay needs a token with the write scope)."
        } else {
            "Paste a token from api.tokens: read shows the board, write also replays the DLQ."
        },
        "replay": !b.open(),
        "healthScope": "instance",
        "maxList": MAX_LIST,
    }))
    .into_response()
}

fn bad(msg: String) -> Failure {
    Failure(StatusCode::BAD_REQUEST, "invalid_query", msg)
}

fn list_of(q: &HashMap<String, String>, key: &str) -> HashSet<String> {
    q.get(key)
        .map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

fn time_of(q: &HashMap<String, String>, key: &str) -> Result<Option<String>, Failure> {
    checked_time(key, q.get(key))
}

/// `value` when it is an RFC 3339 time (empty: none).
fn checked_time(key: &str, value: Option<&String>) -> Result<Option<String>, Failure> {
    let Some(v) = value.filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    time::OffsetDateTime::parse(v, &time::format_description::well_known::Rfc3339)
        .map_err(|e| bad(format!("{key}: not an RFC 3339 time ({e})")))?;
    Ok(Some(v.clone()))
}

/// Refuse unknown parameters, so a typo never silently widens a selection.
fn known_keys(q: &HashMap<String, String>, keys: &[&str]) -> Result<(), Failure> {
    match q.keys().find(|k| !keys.contains(&k.as_str())) {
        Some(k) => Err(bad(format!(
            "{k}: unknown parameter (known: {})",
            keys.join(", ")
        ))),
        None => Ok(()),
    }
}

/// `limit`, at most `max` (absent: `default`).
fn limit_of(q: &HashMap<String, String>, default: usize, max: usize) -> Result<usize, Failure> {
    match q.get("limit") {
        None => Ok(default.min(max)),
        Some(l) => l
            .parse::<usize>()
            .map(|n| n.min(max))
            .map_err(|_| bad(format!("limit: {l} is not a number"))),
    }
}

/// The filter a query describes (unknown keys are refused, so a typo is not a no-op).
fn filter_of(q: &HashMap<String, String>) -> Result<(Filter, usize), Failure> {
    known_keys(
        q,
        &[
            "status", "action", "backend", "since", "until", "q", "limit",
        ],
    )?;
    let mut statuses = HashSet::new();
    for s in list_of(q, "status") {
        statuses.insert(match s.as_str() {
            "IN_PROGRESS" => RunStatus::InProgress,
            "SUCCESS" => RunStatus::Success,
            "FAILURE" => RunStatus::Failure,
            other => {
                return Err(bad(format!(
                    "status: {other} is not IN_PROGRESS, SUCCESS or FAILURE"
                )))
            }
        });
    }
    let limit = limit_of(q, MAX_LIST, MAX_LIST)?;
    let filter = Filter {
        statuses,
        actions: list_of(q, "action"),
        backends: list_of(q, "backend"),
        since: time_of(q, "since")?,
        until: time_of(q, "until")?,
        search: q.get("q").filter(|s| !s.is_empty()).cloned(),
    };
    Ok((filter, limit))
}

async fn list_runs(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    read(&b, &headers)?;
    let (filter, limit) = filter_of(&q)?;
    Ok(Json(b.api.view.list(&filter, limit)).into_response())
}

async fn read_health(State(b): State<Arc<Board>>, headers: HeaderMap) -> Result<Response, Failure> {
    read(&b, &headers)?;
    let h = b.health.borrow().clone();
    Ok(Json(h).into_response())
}

fn selection_of(
    run_ids: HashSet<String>,
    classes: HashSet<String>,
    since: Option<String>,
    until: Option<String>,
) -> crate::dlq::replay::Selection {
    crate::dlq::replay::Selection {
        run_ids: run_ids.into_iter().collect(),
        classes: classes.into_iter().collect(),
        since,
        until,
    }
}

async fn list_dlq(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, Failure> {
    read(&b, &headers)?;
    known_keys(&q, &["runId", "class", "since", "until", "limit"])?;
    let limit = limit_of(&q, 1_000, dlq::MAX_RECORDS)?;
    let s = selection_of(
        list_of(&q, "runId"),
        list_of(&q, "class"),
        time_of(&q, "since")?,
        time_of(&q, "until")?,
    );
    Ok(Json(b.dlq.list(&s, limit)).into_response())
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct ReplayRequest {
    #[serde(default)]
    run_ids: Vec<String>,
    #[serde(default)]
    classes: Vec<String>,
    since: Option<String>,
    until: Option<String>,
    dry_run: bool,
}

async fn replay(
    State(b): State<Arc<Board>>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    authorize(&b.api, &headers, Need::Write)?;
    let req: ReplayRequest = crate::api::parse(&body)?;
    let s = selection_of(
        req.run_ids.into_iter().collect(),
        req.classes.into_iter().collect(),
        checked_time("since", req.since.as_ref())?,
        checked_time("until", req.until.as_ref())?,
    );
    let cfg = &b.config;
    let conflict = |m: String| Failure(StatusCode::CONFLICT, "cannot_replay", m);
    if cfg.agent_mode() && !req.dry_run {
        return Err(conflict(
            "in Port mode a replay would publish to Port's cluster, which is read-only to \
             switchyard; run those actions again in Port"
                .into(),
        ));
    }
    if !req.dry_run && cfg.replay_key().ok().flatten().is_none() {
        return Err(conflict(
            "dlq.replay_key is not set: a replayed record is honoured only with a MAC made \
             with that key"
                .into(),
        ));
    }
    let _one = b.replaying.lock().await;
    let own = cfg
        .own_topics_kafka()
        .map_err(|e| conflict(e.to_string()))?;
    let unavailable = |e: anyhow::Error| {
        Failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "dlq_unavailable",
            crate::secrets::redact(&format!("{e:#}")).into_owned(),
        )
    };
    let letters = crate::dlq::replay::select(&own, &s)
        .await
        .map_err(unavailable)?;
    let destinations: BTreeSet<String> = letters.iter().map(|l| l.destination(cfg)).collect();
    let records: Vec<dlq::Letter> = letters.iter().map(dlq::Letter::of).collect();
    if req.dry_run {
        return Ok(Json(json!({
            "dryRun": true, "count": records.len(), "destinations": destinations,
            "records": records,
        }))
        .into_response());
    }
    let n = crate::dlq::replay::replay(cfg, &letters)
        .await
        .map_err(unavailable)?;
    tracing::info!(records = n, "the board replayed dead-letter records");
    Ok(Json(json!({"dryRun": false, "count": n, "destinations": destinations})).into_response())
}
