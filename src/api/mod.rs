//! The status API: asynchronous backends report back the way they do to Port (Port's
//! reporting endpoints and rules), and anyone can read a run's state.
//!
//! - `PATCH /v1/actions/runs/{id}` `{status?, statusLabel?, link?, summary?, externalRunId?}`
//! - `POST /v1/actions/runs/{id}/logs` `{message, terminationStatus?, statusLabel?}`
//! - `PATCH /v1/actions/runs/{id}/response` `{response}`
//! - `GET /v1/actions/runs/{id}`
//!
//! Writes become run updates on the status topic; a request is answered only after the
//! broker acknowledged them. Reads come from the [`RunView`], which every instance builds
//! from the whole status topic. Rules (Port's): a finished run cannot change (409); a
//! `terminationStatus` is accepted once; an unknown run is 404; bodies over 1 MiB are
//! 413; a malformed body is 400 naming the field. Every request needs
//! `Authorization: Bearer <token>` with a configured token (401 otherwise) that has the
//! scope: `read` for `GET`, `write` for the rest (403 otherwise). With no token
//! configured, on a loopback listener only, `GET` answers without one (the run board's
//! read-only mode) and the writes are not routed (404). A run takes at most
//! `api.max_log_appends` log lines (429 past it).

pub mod server;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::config::ApiToken;
use crate::kafka::publisher::Publisher;
use crate::model::{now_rfc3339, LogLevel, RunStatus, RunUpdate};
use crate::status::view::{RunState, RunView};
use crate::status::writer::Sequencer;

/// Port's request-body limit.
pub const MAX_BODY: usize = 1024 * 1024;

/// How long a write or read waits for a run this instance has not seen yet (a run
/// dispatched a moment ago by another instance may still be on its way to the view).
const UNKNOWN_RUN_WAIT: Duration = Duration::from_secs(2);

pub struct Api {
    pub view: Arc<RunView>,
    pub publisher: Arc<Publisher>,
    /// Numbers the API's updates together with this process's other writers.
    pub seqs: Arc<Sequencer>,
    pub tokens: Vec<ApiToken>,
    /// Most log lines one run may receive through the API.
    max_log_appends: u64,
    /// Writes to one run are serialised within this instance (striped by run id).
    locks: Vec<tokio::sync::Mutex<()>>,
}

impl Api {
    pub fn new(
        view: Arc<RunView>,
        publisher: Arc<Publisher>,
        seqs: Arc<Sequencer>,
        tokens: Vec<ApiToken>,
        cfg: &crate::config::ApiConfig,
    ) -> Self {
        Api {
            view,
            publisher,
            seqs,
            tokens,
            max_log_appends: cfg.max_log_appends,
            locks: (0..64).map(|_| tokio::sync::Mutex::new(())).collect(),
        }
    }

    fn lock_for(&self, run_id: &str) -> &tokio::sync::Mutex<()> {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        run_id.hash(&mut h);
        &self.locks[(h.finish() % self.locks.len() as u64) as usize]
    }
}

/// The API's routes (merged into the HTTP listener's router).
///
/// Without tokens (a loopback listener's open, read-only board) only `GET` is routed:
/// the writes answer the router's 404.
pub fn routes(api: Arc<Api>) -> Router {
    let r = if api.tokens.is_empty() {
        // Other methods on the path answer as if it were not routed at all.
        Router::new().route(
            "/v1/actions/runs/{id}",
            get(get_run).fallback(|| async { StatusCode::NOT_FOUND }),
        )
    } else {
        Router::new()
            .route("/v1/actions/runs/{id}", get(get_run).patch(patch_run))
            .route("/v1/actions/runs/{id}/logs", post(post_log))
            .route("/v1/actions/runs/{id}/response", patch(patch_response))
    };
    r.layer(DefaultBodyLimit::max(MAX_BODY)).with_state(api)
}

/// An API error: status and a message, as `{"ok": false, "error", "message"}`.
pub(crate) struct Failure(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for Failure {
    fn into_response(self) -> Response {
        let body = json!({"ok": false, "error": self.1, "message": self.2});
        (self.0, Json(body)).into_response()
    }
}

/// What a request needs from its token.
#[derive(Clone, Copy)]
pub(crate) enum Need {
    Read,
    Write,
}

pub(crate) fn authorize(api: &Api, headers: &HeaderMap, need: Need) -> Result<(), Failure> {
    use subtle::ConstantTimeEq as _;
    // No tokens: the API exists only on a loopback listener, for reading (its write
    // routes are not routed; see `routes`).
    if api.tokens.is_empty() {
        return match need {
            Need::Read => Ok(()),
            Need::Write => Err(Failure(
                StatusCode::NOT_FOUND,
                "not_found",
                "no api.tokens are configured: writes are disabled".into(),
            )),
        };
    }
    let given = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let Some(given) = given else {
        return Err(Failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing Authorization: Bearer <token>".into(),
        ));
    };
    // Every token is compared, in constant time, whichever matches.
    let matched = api.tokens.iter().fold(None, |found, t| {
        let eq = bool::from(t.token.as_bytes().ct_eq(given.as_bytes()));
        found.or(eq.then_some(t))
    });
    let Some(token) = matched else {
        return Err(Failure(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "the bearer token is not valid".into(),
        ));
    };
    let (allowed, scope) = match need {
        Need::Read => (token.read, "read"),
        Need::Write => (token.write, "write"),
    };
    if !allowed {
        crate::telemetry::metrics::get()
            .refusals
            .with_label_values(&["api_scope"])
            .inc();
        return Err(Failure(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token lacks the {scope} scope"),
        ));
    }
    Ok(())
}

/// Parse a JSON body; the error names the field (`link: invalid type …`).
pub(crate) fn parse<T: DeserializeOwned>(body: &Bytes) -> Result<T, Failure> {
    let mut de = serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        let msg = if path == "." || path.is_empty() {
            inner.to_string()
        } else {
            format!("{path}: {inner}")
        };
        Failure(StatusCode::BAD_REQUEST, "invalid_body", msg)
    })
}

/// The run, waiting briefly for one this instance has not seen yet.
async fn known_run(api: &Api, run_id: &str) -> Result<RunState, Failure> {
    let deadline = Instant::now() + UNKNOWN_RUN_WAIT;
    loop {
        if let Some(run) = api.view.get(run_id) {
            return Ok(run);
        }
        if Instant::now() >= deadline {
            return Err(Failure(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("run {run_id} was not found"),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finished(run: &RunState) -> Failure {
    Failure(
        StatusCode::CONFLICT,
        "run_finished",
        format!(
            "run {} is already {}; a finished run cannot be changed",
            run.id,
            run.status.as_str()
        ),
    )
}

fn ok(run: RunState) -> Response {
    Json(json!({"ok": true, "run": run})).into_response()
}

/// Publish `updates` for `run` (numbered after its last update; see `status::writer`) and fold them into the
/// view once the broker acknowledged them.
async fn write(api: &Api, run: &RunState, updates: Vec<RunUpdate>) -> Result<RunState, Failure> {
    // Numbered by the process's sequencer: above the view's last update and above any
    // number this process handed out for the run, which the view may not show yet.
    let first = api
        .seqs
        .reserve(&run.id, run.last_seq, updates.len() as u64);
    for (seq, mut u) in (first..).zip(updates) {
        u.seq = seq;
        u.at = now_rfc3339();
        u.backend.clone_from(&run.backend);
        u.action.clone_from(&run.action);
        // The trigger's source, so readers (the Port reporter) know whose run it is.
        u.source.clone_from(&run.source);
        api.publisher.send_update(&u).await.map_err(|_| {
            Failure(
                StatusCode::SERVICE_UNAVAILABLE,
                "stopping",
                "switchyard is stopping; the update was not written".into(),
            )
        })?;
        api.view.applied_locally(&u);
    }
    Ok(api.view.get(&run.id).unwrap_or_else(|| run.clone()))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Links {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PatchRun {
    status: Option<Terminal>,
    status_label: Option<String>,
    link: Option<Links>,
    summary: Option<String>,
    external_run_id: Option<String>,
    /// Deprecated in Port; accepted as a summary.
    message: Option<String>,
}

/// Statuses a report may set.
#[derive(Deserialize, Clone, Copy)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
enum Terminal {
    Success,
    Failure,
}

impl From<Terminal> for RunStatus {
    fn from(t: Terminal) -> RunStatus {
        match t {
            Terminal::Success => RunStatus::Success,
            Terminal::Failure => RunStatus::Failure,
        }
    }
}

async fn get_run(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Failure> {
    authorize(&api, &headers, Need::Read)?;
    Ok(ok(known_run(&api, &id).await?))
}

async fn patch_run(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    authorize(&api, &headers, Need::Write)?;
    let req: PatchRun = parse(&body)?;
    let _guard = api.lock_for(&id).lock().await;
    let run = known_run(&api, &id).await?;
    if run.is_terminal() {
        return Err(finished(&run));
    }
    let mut u = RunUpdate::status(
        &id,
        req.status.map_or(RunStatus::InProgress, RunStatus::from),
    );
    u.status_label = req.status_label;
    u.link = req.link.map(|l| match l {
        Links::One(s) => vec![s],
        Links::Many(v) => v,
    });
    u.summary = req.summary.or(req.message);
    u.external_run_id = req.external_run_id;
    Ok(ok(write(&api, &run, vec![u]).await?))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct PostLog {
    message: String,
    termination_status: Option<Terminal>,
    status_label: Option<String>,
}

async fn post_log(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    authorize(&api, &headers, Need::Write)?;
    let req: PostLog = parse(&body)?;
    let _guard = api.lock_for(&id).lock().await;
    let run = known_run(&api, &id).await?;
    if run.logs.len() as u64 + run.logs_dropped >= api.max_log_appends {
        return Err(Failure(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_logs",
            format!(
                "run {id} has {} log lines; api.max_log_appends is {}",
                run.logs.len() as u64 + run.logs_dropped,
                api.max_log_appends
            ),
        ));
    }
    let mut updates = vec![RunUpdate::log(&id, LogLevel::Info, req.message)];
    // A termination status closes the run; a label alone changes it while it is open.
    if req.termination_status.is_some() || req.status_label.is_some() {
        if run.is_terminal() {
            return Err(finished(&run));
        }
        let status = req
            .termination_status
            .map_or(RunStatus::InProgress, RunStatus::from);
        let mut u = RunUpdate::status(&id, status);
        u.status_label = req.status_label;
        updates.push(u);
    }
    Ok(ok(write(&api, &run, updates).await?))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PatchResponse {
    response: Value,
}

async fn patch_response(
    State(api): State<Arc<Api>>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Failure> {
    authorize(&api, &headers, Need::Write)?;
    let req: PatchResponse = parse(&body)?;
    if !(req.response.is_object() || req.response.is_array() || req.response.is_string()) {
        return Err(Failure(
            StatusCode::BAD_REQUEST,
            "invalid_body",
            "response: expected an object, an array or a string".into(),
        ));
    }
    let _guard = api.lock_for(&id).lock().await;
    let run = known_run(&api, &id).await?;
    if run.is_terminal() {
        return Err(finished(&run));
    }
    let u = RunUpdate::response(&id, req.response);
    Ok(ok(write(&api, &run, vec![u]).await?))
}
