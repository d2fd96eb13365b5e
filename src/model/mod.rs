//! Wire records: the trigger event switchyard consumes and the run update it produces.
//!
//! Pure data. The JSON shapes are the contract of `DESIGN.md`; field names are camelCase
//! on the wire.

mod bad_input;
pub mod dead_letter;
mod record;

pub use bad_input::BadInput;
pub use dead_letter::DlqRecord;
pub use record::TriggerRecord;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A trigger event as published on the triggers topic.
///
/// `run`, `action`, `trigger`, `inputs`, `entity` and `event` form the template context;
/// unknown top-level fields are kept in `extra` so `{{ . }}` shows the whole event.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TriggerEvent {
    pub run: RunRef,
    pub action: Action,
    #[serde(default)]
    pub trigger: Value,
    #[serde(default)]
    pub inputs: Value,
    #[serde(default)]
    pub entity: Value,
    #[serde(default)]
    pub event: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ordering_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// `{"id": "r_8f2c"}`; the run id is the identity of a run everywhere.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRef {
    pub id: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// The action definition carried by the event, including its backend.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Action {
    pub identifier: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blueprint: Option<String>,
    /// Kept as raw JSON: it is rendered as a template before a backend reads it. Absent
    /// in `registered` mode (see `crate::actions`).
    #[serde(default)]
    pub invocation_method: Map<String, Value>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

impl TriggerEvent {
    /// The backend type named by `action.invocationMethod.type`, if it is a string.
    pub fn backend_type(&self) -> Option<&str> {
        self.action.invocation_method.get("type")?.as_str()
    }
}

/// Run status vocabulary (Port's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RunStatus {
    InProgress,
    Success,
    Failure,
}

impl RunStatus {
    pub fn is_terminal(self) -> bool {
        !matches!(self, RunStatus::InProgress)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::InProgress => "IN_PROGRESS",
            RunStatus::Success => "SUCCESS",
            RunStatus::Failure => "FAILURE",
        }
    }
}

/// What a run update carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UpdateKind {
    Status,
    Log,
    Response,
}

/// Log level of a `log` run update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Where the trigger event of a run update was read from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourceRef {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

impl std::fmt::Display for SourceRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.topic, self.partition, self.offset)
    }
}

/// One record on the status topic: a status change, a log line or a backend response.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RunUpdate {
    pub run_id: String,
    pub seq: u64,
    pub at: String,
    pub kind: UpdateKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_label: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The run's action identifier (run update v2; absent in v1 updates).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceRef>,
}

impl RunUpdate {
    /// An empty update of `kind`; `seq` and `at` are filled in by the run's writer.
    pub fn new(run_id: impl Into<String>, kind: UpdateKind) -> Self {
        RunUpdate {
            run_id: run_id.into(),
            seq: 0,
            at: String::new(),
            kind,
            status: None,
            status_label: None,
            summary: None,
            link: None,
            external_run_id: None,
            message: None,
            level: None,
            response: None,
            backend: None,
            action: None,
            attempt: None,
            duration_ms: None,
            source: None,
        }
    }

    pub fn status(run_id: impl Into<String>, status: RunStatus) -> Self {
        RunUpdate {
            status: Some(status),
            ..RunUpdate::new(run_id, UpdateKind::Status)
        }
    }

    pub fn log(run_id: impl Into<String>, level: LogLevel, message: impl Into<String>) -> Self {
        RunUpdate {
            level: Some(level),
            message: Some(message.into()),
            ..RunUpdate::new(run_id, UpdateKind::Log)
        }
    }

    pub fn response(run_id: impl Into<String>, response: Value) -> Self {
        RunUpdate {
            response: Some(response),
            ..RunUpdate::new(run_id, UpdateKind::Response)
        }
    }

    /// The dispatcher's IN_PROGRESS mark as a run is handed to its backend:
    /// "dispatching to WEBHOOK".
    pub fn dispatching(run_id: impl Into<String>, backend: &str) -> Self {
        Self::status(run_id, RunStatus::InProgress).with_summary(format!("{DISPATCHING}{backend}"))
    }

    /// Whether this is the [`dispatching`](Self::dispatching) mark (Port shows the run as
    /// running already, so the Port reporter does not send it).
    pub fn is_dispatching_mark(&self) -> bool {
        self.kind == UpdateKind::Status
            && self.status == Some(RunStatus::InProgress)
            && self.link.is_none()
            && self.external_run_id.is_none()
            && self.status_label.is_none()
            && self
                .summary
                .as_deref()
                .is_some_and(|s| s.starts_with(DISPATCHING))
    }

    pub fn with_summary(mut self, summary: impl Into<String>) -> Self {
        self.summary = Some(summary.into());
        self
    }

    /// True when this update closes the run.
    pub fn is_terminal(&self) -> bool {
        self.kind == UpdateKind::Status && self.status.is_some_and(RunStatus::is_terminal)
    }
}

/// Current UTC time as RFC 3339 with milliseconds, the format of `at`.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .expect("formatting a UTC timestamp with a static description cannot fail")
}

/// `s` cut to at most `max` bytes (at a character boundary) with a marker saying so.
pub fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let marker = format!(" … [truncated: {} bytes]", s.len());
    let mut end = max.saturating_sub(marker.len());
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{marker}", &s[..end])
}

/// The summary prefix of [`RunUpdate::dispatching`].
const DISPATCHING: &str = "dispatching to ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn design_example_event_round_trips() {
        let raw = r#"{
          "run": {"id": "r_8f2c"},
          "action": {"identifier": "deploy_service", "blueprint": "service",
                     "invocationMethod": {"type": "WEBHOOK", "url": "https://deployer/run"}},
          "trigger": {"origin": "UI"}, "inputs": {"version": "1.4.2"},
          "entity": {"identifier": "checkout"}, "event": null,
          "orderingKey": "service/checkout", "deadline": "2026-11-28T10:05:00Z"}"#;
        let ev: TriggerEvent = serde_json::from_str(raw).unwrap();
        assert_eq!(ev.run.id, "r_8f2c");
        assert_eq!(ev.backend_type(), Some("WEBHOOK"));
        assert_eq!(ev.ordering_key.as_deref(), Some("service/checkout"));
        let back = serde_json::to_value(&ev).unwrap();
        assert_eq!(back["inputs"]["version"], "1.4.2");
        assert_eq!(back["orderingKey"], "service/checkout");
    }

    #[test]
    fn run_update_serialises_camel_case_and_skips_empty_fields() {
        let mut u = RunUpdate::status("r_1", RunStatus::Success).with_summary("HTTP 200 in 5 ms");
        u.seq = 3;
        u.at = "2026-11-28T10:00:01.250Z".into();
        u.external_run_id = Some("77".into());
        let v = serde_json::to_value(&u).unwrap();
        assert_eq!(v["runId"], "r_1");
        assert_eq!(v["status"], "SUCCESS");
        assert_eq!(v["externalRunId"], "77");
        assert!(v.get("link").is_none());
        assert!(u.is_terminal());
    }

    #[test]
    fn timestamps_have_millisecond_precision() {
        let at = now_rfc3339();
        assert_eq!(at.len(), "2026-11-28T10:00:01.250Z".len(), "{at}");
    }
}
