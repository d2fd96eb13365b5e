//! A fake GitHub REST API with the shapes switchyard uses: repository
//! (`default_branch`), workflow dispatch (200 with run details, or 204 like older GHES),
//! workflow runs listing, and a workflow run whose status follows a script. The first
//! polls can be answered with a secondary rate limit (403 + Retry-After).
//!
//! Every route authenticates, as GitHub does: with a personal token, only the test token
//! ([`super::TEST_TOKEN`]); as an App, an App JWT for the App endpoints and, elsewhere,
//! an unexpired installation token of the installation that owns the repository's org
//! (`acme` is installation 4242, `globex` 4343). Unknown run ids are 404. The listing
//! holds three `workflow_dispatch` runs: one from an hour before the dispatch, the one
//! the dispatch created ([`RUN_ID`]), and one two minutes after it.

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
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Call {
    pub method: &'static str,
    pub path: String,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct Inner {
    calls: Vec<Call>,
    /// Token mode: the one token accepted.
    pat: Option<String>,
    /// App mode: installation tokens issued (token, installation, expiry), and their
    /// lifetime.
    app: Option<rsa::pkcs1v15::VerifyingKey<sha2::Sha256>>,
    issued: Vec<(String, u64, std::time::SystemTime)>,
    token_ttl: std::time::Duration,
    /// When the last dispatch arrived (the listing's runs are placed around it).
    dispatched_at: Option<time::OffsetDateTime>,
    /// (status, conclusion) per poll; the last one stays.
    script: VecDeque<(String, Option<String>)>,
    run_details: bool,
    limited_polls: u32,
    primary_limited_polls: u32,
}

#[derive(Clone)]
pub struct FakeGithub {
    pub addr: SocketAddr,
    inner: Arc<Mutex<Inner>>,
}

pub const RUN_ID: u64 = 9001;

/// The App's installations, by org.
pub const INSTALLATIONS: [(&str, u64); 2] = [("acme", 4242), ("globex", 4343)];

fn installation_of(org: &str) -> Option<u64> {
    INSTALLATIONS
        .iter()
        .find(|(o, _)| *o == org)
        .map(|(_, id)| *id)
}

type St = State<Arc<Mutex<Inner>>>;

impl FakeGithub {
    pub async fn start(run_details: bool, script: &[(&str, Option<&str>)]) -> FakeGithub {
        let inner = Arc::new(Mutex::new(Inner {
            script: script
                .iter()
                .map(|(s, c)| (s.to_string(), c.map(str::to_owned)))
                .collect(),
            run_details,
            pat: Some(super::TEST_TOKEN.to_owned()),
            ..Inner::default()
        }));
        let app = Router::new()
            .route("/repos/{org}/{repo}", get(repository))
            .route(
                "/repos/{org}/{repo}/actions/workflows/{wf}/dispatches",
                post(dispatch),
            )
            .route(
                "/repos/{org}/{repo}/actions/workflows/{wf}/runs",
                get(list_runs),
            )
            .route("/repos/{org}/{repo}/actions/runs/{id}", get(run))
            .route("/repos/{org}/{repo}/installation", get(installation))
            .route("/app/installations/{id}/access_tokens", post(access_token))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakeGithub { addr, inner }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Require GitHub App auth: JWTs signed with `tests/fixtures/github-app-test-key.pem`
    /// (iss 12345) for the App endpoints, issued installation tokens elsewhere.
    pub fn require_app(&self, token_ttl: std::time::Duration) {
        use rsa::pkcs1::DecodeRsaPrivateKey;
        let pem = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/github-app-test-key.pem"
        ))
        .unwrap();
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(&pem).unwrap();
        let mut st = self.inner.lock().unwrap();
        st.app = Some(rsa::pkcs1v15::VerifyingKey::new(key.to_public_key()));
        st.pat = None;
        st.token_ttl = token_ttl;
    }

    /// Replace the status script of the workflow run (e.g. to finish a held run).
    pub fn set_script(&self, script: &[(&str, Option<&str>)]) {
        self.inner.lock().unwrap().script = script
            .iter()
            .map(|(s, c)| (s.to_string(), c.map(str::to_owned)))
            .collect();
    }

    pub fn set_token_ttl(&self, ttl: std::time::Duration) {
        self.inner.lock().unwrap().token_ttl = ttl;
    }

    /// Answer the next `n` polls like GitHub's primary rate limit: 403 with
    /// `x-ratelimit-remaining: 0` and `x-ratelimit-reset` two seconds ahead.
    pub fn primary_limit_next_polls(&self, n: u32) {
        self.inner.lock().unwrap().primary_limited_polls = n;
    }

    pub fn secondary_limit_next_polls(&self, n: u32) {
        self.inner.lock().unwrap().limited_polls = n;
    }
}

fn record(
    inner: &Mutex<Inner>,
    method: &'static str,
    path: String,
    headers: &HeaderMap,
    body: &[u8],
) {
    inner.lock().unwrap().calls.push(Call {
        method,
        path,
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: serde_json::from_slice(body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
}

fn bearer(h: &HeaderMap) -> String {
    h.get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("")
        .to_owned()
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        Json(json!({"message": "Bad credentials"})),
    )
        .into_response()
}

/// Check an App JWT: RS256 over `header.claims` with the test key, iss 12345, not expired.
fn valid_jwt(key: &rsa::pkcs1v15::VerifyingKey<sha2::Sha256>, jwt: &str) -> bool {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine;
    use rsa::signature::Verifier;
    let parts: Vec<&str> = jwt.split('.').collect();
    let [h, c, sig] = parts[..] else { return false };
    let Ok(sig) = URL_SAFE_NO_PAD.decode(sig) else {
        return false;
    };
    let Ok(sig) = rsa::pkcs1v15::Signature::try_from(sig.as_slice()) else {
        return false;
    };
    if key.verify(format!("{h}.{c}").as_bytes(), &sig).is_err() {
        return false;
    }
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).unwrap()).unwrap();
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).unwrap()).unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    header["alg"] == "RS256"
        && claims["iss"] == "12345"
        && claims["iat"].as_u64().unwrap() <= now
        && claims["exp"].as_u64().unwrap() > now
        && claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap() <= 600
}

/// Whether a repository call of `org` is authenticated: the personal token, or an issued,
/// unexpired installation token of the org's installation.
fn token_ok(st: &Inner, h: &HeaderMap, org: &str) -> bool {
    let t = bearer(h);
    if let Some(pat) = &st.pat {
        return t == *pat;
    }
    let Some(installation) = installation_of(org) else {
        return false;
    };
    st.issued.iter().any(|(tok, inst, exp)| {
        *tok == t && *inst == installation && *exp > std::time::SystemTime::now()
    })
}

fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        Json(json!({"message": "Not Found",
                    "documentation_url": "https://docs.github.com/rest"})),
    )
        .into_response()
}

async fn installation(
    State(s): St,
    Path((org, repo)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    record(
        &s,
        "GET",
        format!("/repos/{org}/{repo}/installation"),
        &h,
        b"",
    );
    let st = s.lock().unwrap();
    match &st.app {
        Some(key) if valid_jwt(key, &bearer(&h)) => match installation_of(&org) {
            Some(id) => Json(
                json!({"id": id, "app_id": 12345, "target_type": "Organization",
                        "account": {"login": org}}),
            )
            .into_response(),
            None => not_found(),
        },
        _ => unauthorized(),
    }
}

async fn access_token(State(s): St, Path(id): Path<u64>, h: HeaderMap) -> Response {
    record(
        &s,
        "POST",
        format!("/app/installations/{id}/access_tokens"),
        &h,
        b"",
    );
    let mut st = s.lock().unwrap();
    let ok = st.app.as_ref().is_some_and(|k| valid_jwt(k, &bearer(&h)));
    if !ok {
        return unauthorized();
    }
    if !INSTALLATIONS.iter().any(|(_, i)| *i == id) {
        return not_found();
    }
    let token = format!("ghs_test_{}", st.issued.len() + 1);
    let expires = std::time::SystemTime::now() + st.token_ttl;
    st.issued.push((token.clone(), id, expires));
    let at = time::OffsetDateTime::from(expires);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    (
        StatusCode::CREATED,
        Json(
            json!({"token": token, "expires_at": at.format(&fmt).unwrap(),
                    "permissions": {"actions": "write"}, "repository_selection": "all"}),
        ),
    )
        .into_response()
}

async fn repository(
    State(s): St,
    Path((org, repo)): Path<(String, String)>,
    h: HeaderMap,
) -> Response {
    record(&s, "GET", format!("/repos/{org}/{repo}"), &h, b"");
    if !token_ok(&s.lock().unwrap(), &h, &org) {
        return unauthorized();
    }
    Json(
        json!({"id": 1296269, "name": repo, "full_name": format!("{org}/{repo}"),
                "default_branch": "trunk", "private": false}),
    )
    .into_response()
}

async fn dispatch(
    State(s): St,
    Path((org, repo, wf)): Path<(String, String, String)>,
    h: HeaderMap,
    body: Bytes,
) -> Response {
    record(
        &s,
        "POST",
        format!("/repos/{org}/{repo}/actions/workflows/{wf}/dispatches"),
        &h,
        &body,
    );
    let mut st = s.lock().unwrap();
    if !token_ok(&st, &h, &org) {
        return unauthorized();
    }
    st.dispatched_at = Some(time::OffsetDateTime::now_utc());
    if !st.run_details {
        return StatusCode::NO_CONTENT.into_response();
    }
    Json(json!({
        "workflow_run_id": RUN_ID,
        "run_url": format!("https://api.github.example.com/repos/{org}/{repo}/actions/runs/{RUN_ID}"),
        "html_url": format!("https://github.example.com/{org}/{repo}/actions/runs/{RUN_ID}")
    }))
    .into_response()
}

async fn list_runs(
    State(s): St,
    Path((org, repo, wf)): Path<(String, String, String)>,
    h: HeaderMap,
) -> Response {
    record(
        &s,
        "GET",
        format!("/repos/{org}/{repo}/actions/workflows/{wf}/runs"),
        &h,
        b"",
    );
    let st = s.lock().unwrap();
    if !token_ok(&st, &h, &org) {
        return unauthorized();
    }
    let at = st
        .dispatched_at
        .unwrap_or_else(time::OffsetDateTime::now_utc);
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    // Newest first, as GitHub lists them: someone else's later run, ours, an older one.
    let runs: Vec<Value> = [
        (RUN_ID + 1, at + time::Duration::minutes(2)),
        (RUN_ID, at),
        (RUN_ID - 1, at - time::Duration::hours(1)),
    ]
    .iter()
    .map(|(id, created)| {
        json!({"id": id, "event": "workflow_dispatch", "status": "queued", "conclusion": null,
               "created_at": created.format(&fmt).unwrap(),
               "html_url": format!("https://github.example.com/{org}/{repo}/actions/runs/{id}")})
    })
    .collect();
    Json(json!({"total_count": runs.len(), "workflow_runs": runs})).into_response()
}

async fn run(
    State(s): St,
    Path((org, repo, id)): Path<(String, String, u64)>,
    h: HeaderMap,
) -> Response {
    record(
        &s,
        "GET",
        format!("/repos/{org}/{repo}/actions/runs/{id}"),
        &h,
        b"",
    );
    let mut st = s.lock().unwrap();
    if !token_ok(&st, &h, &org) {
        return unauthorized();
    }
    if id != RUN_ID {
        return not_found();
    }
    if st.primary_limited_polls > 0 {
        st.primary_limited_polls -= 1;
        let reset = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
            + 2;
        return (
            StatusCode::FORBIDDEN,
            [
                ("x-ratelimit-limit", "5000".to_owned()),
                ("x-ratelimit-remaining", "0".to_owned()),
                ("x-ratelimit-reset", reset.to_string()),
            ],
            Json(json!({"message": "API rate limit exceeded for installation ID 4242."})),
        )
            .into_response();
    }
    if st.limited_polls > 0 {
        st.limited_polls -= 1;
        return (
            StatusCode::FORBIDDEN,
            [("retry-after", "1")],
            Json(json!({"message": "You have exceeded a secondary rate limit."})),
        )
            .into_response();
    }
    let (status, conclusion) = if st.script.len() > 1 {
        st.script.pop_front().unwrap()
    } else {
        st.script.front().cloned().unwrap()
    };
    Json(
        json!({"id": id, "status": status, "conclusion": conclusion, "event": "workflow_dispatch",
                "html_url": format!("https://github.example.com/{org}/{repo}/actions/runs/{id}")}),
    )
    .into_response()
}
