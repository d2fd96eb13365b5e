//! A fake of Port's API on loopback, with the real endpoint shapes (reference §5.4, §7.1):
//! `POST /v1/auth/access_token` `{clientId, clientSecret}` → `{accessToken, expiresIn}`,
//! then, with `Authorization: Bearer <token>`: `PATCH /v1/actions/runs/{id}`,
//! `POST /v1/actions/runs/{id}/logs`, `PATCH /v1/actions/runs/{id}/response`,
//! `PATCH /v1/workflows/nodes/runs/{id}` and `POST /v1/workflows/nodes/runs/{id}/logs`.
//! `GET /v1/kafka-credentials` answers the credentials set with
//! [`FakePort::set_kafka_credentials`] (`{credentials: {brokers, username, password}}`), and
//! `PATCH /v1/organization` takes the streamer setting.
//! Every call is recorded; the next N report calls can be made to fail with a status.
//! Only tokens this fake issued are accepted (each unguessable), as Port accepts only its
//! own.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct ApiCall {
    pub method: String,
    pub path: String,
    pub body: Value,
    /// The call carried `x-port-reserved-usage: true` (the claim queue's calls).
    pub reserved: bool,
}

#[derive(Default)]
struct Inner {
    calls: Vec<ApiCall>,
    tokens_issued: u32,
    /// Every access token issued, as `Bearer <token>`.
    issued: Vec<String>,
    /// Report calls still to fail, and with which status.
    failing: u32,
    fail_status: u16,
    refused: u32,
    /// The answer of `GET /v1/kafka-credentials`: brokers, username, password.
    kafka: Option<(Vec<String>, String, String)>,
    /// Per-path answers overriding `{"ok": true}` (status, body).
    answers: std::collections::HashMap<String, (u16, Value)>,
    /// Runs waiting to be claimed (POLLING): action runs, workflow node runs.
    pending_runs: std::collections::VecDeque<Value>,
    pending_nodes: std::collections::VecDeque<Value>,
    /// Run statuses set by the test (a service reporting to Port directly).
    statuses: std::collections::HashMap<String, String>,
}

#[derive(Clone)]
pub struct FakePort {
    pub addr: SocketAddr,
    client_id: String,
    client_secret: String,
    inner: Arc<Mutex<Inner>>,
}

impl FakePort {
    pub async fn start(client_id: &str, client_secret: &str) -> FakePort {
        let fake = FakePort {
            addr: "127.0.0.1:0".parse().unwrap(),
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            inner: Arc::default(),
        };
        let f = fake.clone();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let f = f.clone();
                async move { f.handle(method, uri, headers, body) }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        FakePort { addr, ..fake }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The next `n` report calls answer `status` (then they succeed).
    pub fn fail_next(&self, n: u32, status: u16) {
        let mut i = self.inner.lock().unwrap();
        i.failing = n;
        i.fail_status = status;
    }

    /// What `GET /v1/kafka-credentials` answers from now on.
    pub fn set_kafka_credentials(&self, brokers: &str, username: &str, password: &str) {
        self.inner.lock().unwrap().kafka = Some((
            brokers.split(',').map(str::to_owned).collect(),
            username.into(),
            password.into(),
        ));
    }

    /// Queue action runs (Port's run objects) for `claim-pending`.
    pub fn queue_runs(&self, runs: impl IntoIterator<Item = Value>) {
        self.inner.lock().unwrap().pending_runs.extend(runs);
    }

    /// Queue workflow node runs (`{identifier, config}`) for the workflows' `claim-pending`.
    pub fn queue_node_runs(&self, nodes: impl IntoIterator<Item = Value>) {
        self.inner.lock().unwrap().pending_nodes.extend(nodes);
    }

    /// The run's status in Port from now on, as if its service had reported it directly.
    pub fn set_run_status(&self, run: &str, status: &str) {
        self.inner
            .lock()
            .unwrap()
            .statuses
            .insert(run.into(), status.into());
    }

    /// Calls to `path` (any method) answer `status` with `body` from now on.
    pub fn answer(&self, path: &str, status: u16, body: Value) {
        self.inner
            .lock()
            .unwrap()
            .answers
            .insert(path.into(), (status, body));
    }

    /// Report calls accepted, in arrival order (token requests and failed calls excluded).
    pub fn calls(&self) -> Vec<ApiCall> {
        self.inner.lock().unwrap().calls.clone()
    }

    /// Accepted calls about one run, in order.
    pub fn calls_for(&self, run: &str) -> Vec<ApiCall> {
        self.calls()
            .into_iter()
            .filter(|c| c.path.split('/').any(|seg| seg == run))
            .collect()
    }

    pub fn tokens_issued(&self) -> u32 {
        self.inner.lock().unwrap().tokens_issued
    }

    /// Calls answered with a scripted failure.
    pub fn refused(&self) -> u32 {
        self.inner.lock().unwrap().refused
    }

    /// Wait until `done(calls)` holds (panics with the calls after `timeout`).
    pub async fn wait_until(
        &self,
        timeout: Duration,
        what: &str,
        done: impl Fn(&[ApiCall]) -> bool,
    ) {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.calls();
            if done(&calls) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; Port API saw {calls:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn handle(
        &self,
        method: Method,
        uri: Uri,
        headers: HeaderMap,
        body: Bytes,
    ) -> axum::response::Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let path = uri.path().to_owned();
        let mut i = self.inner.lock().unwrap();
        if method == Method::POST && path == "/v1/auth/access_token" {
            if body["clientId"] != self.client_id.as_str()
                || body["clientSecret"] != self.client_secret.as_str()
            {
                return (StatusCode::UNAUTHORIZED, "bad credentials").into_response();
            }
            i.tokens_issued += 1;
            let token = format!("tok-{}-{:016x}", i.tokens_issued, rand::random::<u64>());
            i.issued.push(format!("Bearer {token}"));
            return axum::Json(
                json!({"ok": true, "accessToken": token, "expiresIn": 3600, "tokenType": "Bearer"}),
            )
            .into_response();
        }
        let auth = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !i.issued.iter().any(|t| t == auth) {
            return (StatusCode::UNAUTHORIZED, "not a token this API issued").into_response();
        }
        let reserved = headers
            .get("x-port-reserved-usage")
            .is_some_and(|v| v == "true");
        let record = |i: &mut Inner, body: Value| {
            i.calls.push(ApiCall {
                method: method.to_string(),
                path: path.clone(),
                body,
                reserved,
            })
        };
        match (method.as_str(), path.as_str()) {
            ("POST", "/v1/actions/runs/claim-pending") => {
                let limit = body["limit"].as_u64().unwrap_or(0) as usize;
                let n = limit.min(i.pending_runs.len());
                let runs: Vec<Value> = i.pending_runs.drain(..n).collect();
                record(&mut i, body);
                return axum::Json(json!({"ok": true, "runs": runs})).into_response();
            }
            ("POST", "/v1/workflows/runs/claim-pending") => {
                let limit = body["limit"].as_u64().unwrap_or(0) as usize;
                let n = limit.min(i.pending_nodes.len());
                let nodes: Vec<Value> = i.pending_nodes.drain(..n).collect();
                record(&mut i, body);
                return axum::Json(json!({"ok": true, "nodeRuns": nodes})).into_response();
            }
            ("PATCH", "/v1/actions/runs/ack") => {
                let n = body["runIds"].as_array().map_or(0, Vec::len);
                record(&mut i, body);
                return axum::Json(json!({"ok": true, "ackedCount": n})).into_response();
            }
            ("PATCH", "/v1/workflows/runs/ack") => {
                record(&mut i, body);
                return axum::Json(json!({"ok": true, "acked": true})).into_response();
            }
            _ => {}
        }
        if let ("GET", ["", "v1", "actions", "runs", run]) = (
            method.as_str(),
            path.split('/').collect::<Vec<_>>().as_slice(),
        ) {
            // The status set by the test, else the last one reported, else IN_PROGRESS.
            let reported = i
                .calls
                .iter()
                .rev()
                .filter(|c| c.method == "PATCH" && c.path == path)
                .find_map(|c| c.body["status"].as_str().map(str::to_owned));
            let status = i
                .statuses
                .get(*run)
                .cloned()
                .or(reported)
                .unwrap_or_else(|| "IN_PROGRESS".into());
            let answer = json!({"ok": true, "run": {"id": run, "status": status}});
            record(&mut i, Value::Null);
            return axum::Json(answer).into_response();
        }
        if method == Method::GET && path == "/v1/kafka-credentials" {
            let Some((brokers, username, password)) = i.kafka.clone() else {
                return (StatusCode::NOT_FOUND, "no Kafka credentials for this org")
                    .into_response();
            };
            record(&mut i, Value::Null);
            return axum::Json(json!({"ok": true, "credentials":
                {"brokers": brokers, "username": username, "password": password}}))
            .into_response();
        }
        let known = matches!(
            (
                method.as_str(),
                path.split('/').collect::<Vec<_>>().as_slice()
            ),
            ("PATCH", ["", "v1", "organization"])
                | ("PATCH", ["", "v1", "actions", "runs", _])
                | ("POST", ["", "v1", "actions", "runs", _, "logs"])
                | ("PATCH", ["", "v1", "actions", "runs", _, "response"])
                | ("PATCH", ["", "v1", "workflows", "nodes", "runs", _])
                | ("POST", ["", "v1", "workflows", "nodes", "runs", _, "logs"])
        );
        if !known {
            return (StatusCode::NOT_FOUND, format!("no route {method} {path}")).into_response();
        }
        if i.failing > 0 {
            i.failing -= 1;
            i.refused += 1;
            let status = StatusCode::from_u16(i.fail_status).unwrap();
            return (status, "scripted outage").into_response();
        }
        let answer = i.answers.get(&path).cloned();
        record(&mut i, body);
        match answer {
            Some((status, body)) => {
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
            }
            None => axum::Json(json!({"ok": true})).into_response(),
        }
    }
}

/// Seconds since the epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

/// `v1,base64(HMAC-SHA256(secret, text))`.
pub fn hmac_b64(secret: &str, text: &[u8]) -> String {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(text);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// Sign a message as Port does, now: over its compact JSON with `"headers": {}` in place
/// (for ASCII text serde_json's compact form is JSON.stringify's).
pub fn port_signed_with(secret: &str, msg: Value) -> Value {
    port_signed_at(secret, msg, now())
}

/// [`port_signed_with`] with the timestamp `ts`.
pub fn port_signed_at(secret: &str, mut msg: Value, ts: i64) -> Value {
    msg["headers"] = json!({});
    let sig = hmac_b64(secret, format!("{ts}.{}", msg).as_bytes());
    msg["headers"] = json!({"X-Port-Signature": sig, "X-Port-Timestamp": ts});
    msg
}

/// An agent envelope (reference §5.1) for a WEBHOOK run.
pub fn envelope(run: &str, url: &str, synchronized: bool) -> Value {
    json!({
        "action": "deploy_service", "resourceType": "run", "status": "TRIGGERED",
        "trigger": {"by": {"orgId": "org_T", "userId": "auth0|u1"}, "origin": "UI",
                    "at": "2026-11-28T10:00:00.000Z"},
        "context": {"entity": null, "blueprint": "service", "runId": run},
        "payload": {"entity": null,
            "action": {"invocationMethod": {"type": "WEBHOOK", "agent": true,
                "synchronized": synchronized, "method": "POST", "url": url},
                "trigger": "CREATE"},
            "properties": {"version": "1.2.3"}, "censoredProperties": []},
        "headers": {}
    })
}

/// Calls as short lines: `log <message>`, `response <json>`, `run <body>`, else
/// `<METHOD> <path>`.
pub fn summary(calls: &[ApiCall]) -> Vec<String> {
    calls
        .iter()
        .map(|c| {
            let tail = c.path.rsplit('/').next().unwrap();
            match (c.method.as_str(), tail) {
                ("POST", "logs") => {
                    let m = c.body["message"]
                        .as_str()
                        .or(c.body["logs"][0]["message"].as_str());
                    format!("log {}", m.unwrap_or("?"))
                }
                ("PATCH", "response") => format!("response {}", c.body["response"]),
                ("PATCH", _) => format!("run {}", c.body),
                _ => format!("{} {}", c.method, c.path),
            }
        })
        .collect()
}
