//! A Confluent-compatible schema registry on loopback: `POST /subjects/{subject}/versions`
//! registers (the same schema text gets the same id) and `GET /schemas/ids/{id}` returns
//! it. Counts the requests so tests can check caching.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Default)]
pub struct Inner {
    /// id → schema text
    pub schemas: HashMap<u32, String>,
    /// (subject, id) registrations
    pub registrations: Vec<(String, u32)>,
    pub fetches: Vec<u32>,
}

#[derive(Clone)]
pub struct Registry {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<Inner>>,
}

impl Registry {
    pub async fn start() -> Registry {
        let state = Arc::new(Mutex::new(Inner::default()));
        let app = Router::new()
            .route("/subjects/{subject}/versions", post(register))
            .route("/schemas/ids/{id}", get(fetch))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Registry { addr, state }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Register `schema` under `subject` directly; returns its id.
    pub fn add(&self, subject: &str, schema: &str) -> u32 {
        add(&mut self.state.lock().unwrap(), subject, schema)
    }
}

fn add(s: &mut Inner, subject: &str, schema: &str) -> u32 {
    let id = match s.schemas.iter().find(|(_, t)| t.as_str() == schema) {
        Some((id, _)) => *id,
        None => {
            let id = 100 + s.schemas.len() as u32;
            s.schemas.insert(id, schema.to_owned());
            id
        }
    };
    s.registrations.push((subject.to_owned(), id));
    id
}

async fn register(
    State(s): State<Arc<Mutex<Inner>>>,
    Path(subject): Path<String>,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    let Some(schema) = body["schema"].as_str() else {
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(json!({"error_code": 42201})),
        );
    };
    let id = add(&mut s.lock().unwrap(), &subject, schema);
    (StatusCode::OK, Json(json!({ "id": id })))
}

async fn fetch(
    State(s): State<Arc<Mutex<Inner>>>,
    Path(id): Path<u32>,
) -> (StatusCode, Json<Value>) {
    let mut s = s.lock().unwrap();
    s.fetches.push(id);
    match s.schemas.get(&id) {
        Some(text) => (StatusCode::OK, Json(json!({ "schema": text }))),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({"error_code": 40403, "message": "Schema not found"})),
        ),
    }
}
