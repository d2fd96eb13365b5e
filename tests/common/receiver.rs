//! A webhook receiver on loopback that records every request and answers as scripted by
//! the query string: `?status=503&delay_ms=200&body=text&location=/runs/7` (`?echo=1` answers with the
//! request body). Without `delay_ms`, the
//! receiver-wide default delay applies (tests change it at run time).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::IntoResponse;
use axum::Router;
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: String,
    /// The body exactly as received.
    pub raw: Vec<u8>,
    pub headers: HashMap<String, String>,
    pub body: Value,
    pub at: Instant,
}

#[derive(Default)]
struct State {
    seen: Mutex<Vec<Seen>>,
    /// Requests so far per (URI, Idempotency-Key), for `fail_first`.
    tries: Mutex<HashMap<(String, String), u32>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    default_delay_ms: AtomicU64,
    default_status: AtomicU64,
    default_body: Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct Receiver {
    pub addr: SocketAddr,
    state: Arc<State>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let state = Arc::new(State::default());
        let s = state.clone();
        let app = Router::new().fallback(
            move |method: Method, uri: Uri, headers: HeaderMap, body: Bytes| {
                let s = s.clone();
                async move { handle(s, method, uri, headers, body).await }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { addr, state }
    }

    /// `http://127.0.0.1:PORT{path_and_query}`
    pub fn url(&self, path_and_query: &str) -> String {
        format!("http://{}{}", self.addr, path_and_query)
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    pub fn count(&self) -> usize {
        self.state.seen.lock().unwrap().len()
    }

    /// Most requests that were being answered at the same time.
    pub fn max_concurrency(&self) -> usize {
        self.state.max_in_flight.load(Ordering::SeqCst)
    }

    pub fn set_default_delay(&self, d: Duration) {
        self.state
            .default_delay_ms
            .store(d.as_millis() as u64, Ordering::SeqCst);
    }

    /// Status for requests whose query has no `status` (200 until set).
    pub fn set_default_status(&self, code: u16) {
        self.state
            .default_status
            .store(u64::from(code), Ordering::SeqCst);
    }

    /// Body of successful answers to requests whose query has no `body`.
    pub fn set_default_body(&self, body: &str) {
        *self.state.default_body.lock().unwrap() = Some(body.to_owned());
    }

    /// Wait until at least `n` requests arrived.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while self.count() < n {
            assert!(
                Instant::now() < deadline,
                "receiver saw {} of {n} requests within {timeout:?}",
                self.count()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

async fn handle(
    s: Arc<State>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> impl IntoResponse {
    let query: HashMap<String, String> =
        url::form_urlencoded::parse(uri.query().unwrap_or("").as_bytes())
            .into_owned()
            .collect();
    let now = s.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    s.max_in_flight.fetch_max(now, Ordering::SeqCst);
    s.seen.lock().unwrap().push(Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        query: uri.query().unwrap_or("").to_owned(),
        raw: body.to_vec(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
            .collect(),
        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
        at: Instant::now(),
    });
    let delay = query
        .get("delay_ms")
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| s.default_delay_ms.load(Ordering::SeqCst));
    tokio::time::sleep(Duration::from_millis(delay)).await;
    s.in_flight.fetch_sub(1, Ordering::SeqCst);
    // `fail_first=N&fail_status=503[&retry_after=S]`: the first N requests of each run
    // (by Idempotency-Key) to this URI fail, then the request succeeds.
    if let Some(n) = query.get("fail_first").and_then(|n| n.parse::<u32>().ok()) {
        let run = headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let tries = {
            let mut t = s.tries.lock().unwrap();
            let c = t.entry((uri.to_string(), run)).or_insert(0);
            *c += 1;
            *c
        };
        if tries <= n {
            let code = query
                .get("fail_status")
                .and_then(|c| c.parse().ok())
                .and_then(|c| StatusCode::from_u16(c).ok())
                .unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
            let mut h = HeaderMap::new();
            if let Some(ra) = query.get("retry_after") {
                h.insert("retry-after", ra.parse().unwrap());
            }
            return (code, h, format!("scripted failure {tries}/{n}"));
        }
    }
    let default = match s.default_status.load(Ordering::SeqCst) {
        0 => 200,
        code => code as u16,
    };
    let status = query
        .get("status")
        .and_then(|c| c.parse().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
        .unwrap_or(StatusCode::from_u16(default).unwrap());
    let default_body = s.default_body.lock().unwrap().clone();
    let text = match query.get("body") {
        Some(b) => b.clone(),
        // `?echo=1`: answer with the request body, as an echo service would.
        None if query.contains_key("echo") => String::from_utf8_lossy(&body).into_owned(),
        None if status.is_success() => {
            default_body.unwrap_or_else(|| json!({"ok": true, "path": uri.path()}).to_string())
        }
        None => "scripted failure".to_owned(),
    };
    // `?location=/runs/7`: a `Location` header on the answer.
    let mut headers = HeaderMap::new();
    if let Some(l) = query.get("location") {
        headers.insert(
            axum::http::header::LOCATION,
            axum::http::HeaderValue::from_str(l).unwrap(),
        );
    }
    (status, headers, text)
}
