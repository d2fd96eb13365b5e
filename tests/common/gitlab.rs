//! A fake GitLab speaking the two REST endpoints switchyard uses, with the real shapes:
//! `POST /api/v4/projects/:id/trigger/pipeline` (form: token, ref, variables[KEY]) →
//! 201 pipeline JSON, and `GET /api/v4/projects/:id/pipelines/:pipeline_id` (header
//! PRIVATE-TOKEN) → pipeline JSON whose `status` follows a script. Pipelines are keyed by
//! (project, id), as in GitLab: a pipeline id asked for under another project is 404.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    /// The path as received (still percent-encoded).
    pub path: String,
    pub headers: HashMap<String, String>,
    pub form: Vec<(String, String)>,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    next_id: u64,
    /// Statuses each new pipeline goes through, one per poll (the last one stays).
    script: Vec<String>,
    /// By (project path, pipeline id).
    pipelines: HashMap<(String, u64), VecDeque<String>>,
    /// Polls to answer with 429 + Retry-After before the real answers.
    rate_limited_polls: u32,
    trigger_token: String,
    read_token: String,
}

#[derive(Clone)]
pub struct FakeGitlab {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

impl FakeGitlab {
    pub async fn start(trigger_token: &str, read_token: &str, script: &[&str]) -> FakeGitlab {
        let inner = Arc::new(Mutex::new(Inner {
            next_id: 77,
            script: script.iter().map(|s| s.to_string()).collect(),
            trigger_token: trigger_token.into(),
            read_token: read_token.into(),
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/api/v4/projects/{project}/trigger/pipeline", post(trigger))
            .route("/api/v4/projects/{project}/pipelines/{id}", get(pipeline))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGitlab { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    pub fn rate_limit_next_polls(&self, n: u32) {
        self.inner.lock().unwrap().rate_limited_polls = n;
    }
}

fn headers_map(h: &HeaderMap) -> HashMap<String, String> {
    h.iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.replace('+', " ").into_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

async fn trigger(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let form: Vec<(String, String)> = std::str::from_utf8(&body)
        .unwrap()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (decode(k), decode(v)))
        .collect();
    let mut st = inner.lock().unwrap();
    st.calls.push(Call {
        method: "POST",
        path: format!(
            "/api/v4/projects/{}/trigger/pipeline",
            project.replace('/', "%2F")
        ),
        headers: headers_map(&headers),
        form: form.clone(),
        at: Instant::now(),
    });
    let token = form
        .iter()
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.as_str());
    if token != Some(st.trigger_token.as_str()) {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "404 Not Found"})),
        )
            .into_response();
    }
    let id = st.next_id;
    st.next_id += 1;
    let script: VecDeque<String> = st.script.iter().cloned().collect();
    st.pipelines.insert((project.clone(), id), script);
    let git_ref = form
        .iter()
        .find(|(k, _)| k == "ref")
        .map(|(_, v)| v.clone());
    (
        StatusCode::CREATED,
        Json(json!({
            "id": id, "iid": id - 76, "project_id": 42, "sha": "a91957a858320c0e17f3a0eca7cfacbff50ea29a",
            "ref": git_ref, "status": "created", "source": "trigger",
            "created_at": "2026-11-28T10:00:00.000Z", "updated_at": "2026-11-28T10:00:00.000Z",
            "web_url": format!("https://gitlab.example.com/{}/-/pipelines/{id}", project)
        })),
    )
        .into_response()
}

async fn pipeline(
    State(inner): State<Arc<Mutex<Inner>>>,
    Path((project, id)): Path<(String, u64)>,
    headers: HeaderMap,
) -> Response {
    let mut st = inner.lock().unwrap();
    st.calls.push(Call {
        method: "GET",
        path: format!(
            "/api/v4/projects/{}/pipelines/{id}",
            project.replace('/', "%2F")
        ),
        headers: headers_map(&headers),
        form: vec![],
        at: Instant::now(),
    });
    if headers.get("private-token").and_then(|v| v.to_str().ok()) != Some(st.read_token.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"message": "401 Unauthorized"})),
        )
            .into_response();
    }
    if st.rate_limited_polls > 0 {
        st.rate_limited_polls -= 1;
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 1;
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [
                ("retry-after", "1".to_owned()),
                ("ratelimit-limit", "600".to_owned()),
                ("ratelimit-remaining", "0".to_owned()),
                ("ratelimit-reset", reset.to_string()),
            ],
            "Retry later",
        )
            .into_response();
    }
    let Some(script) = st.pipelines.get_mut(&(project.clone(), id)) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"message": "404 Not found"})),
        )
            .into_response();
    };
    let status = if script.len() > 1 {
        script.pop_front().unwrap()
    } else {
        script.front().cloned().unwrap_or_else(|| "success".into())
    };
    Json(
        json!({"id": id, "iid": id - 76, "project_id": 42, "status": status, "ref": "main",
                "web_url": format!("https://gitlab.example.com/{}/-/pipelines/{id}", project)}),
    )
    .into_response()
}
