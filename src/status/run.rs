//! One run's state as the run view folds it from its updates ([`RunState::apply`]).

use serde::Serialize;
use serde_json::Value;

use crate::model::{LogLevel, RunStatus, RunUpdate, UpdateKind};
use crate::status::listing::RunSummary;

/// One log line of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub seq: u64,
    pub at: String,
    pub level: Option<LogLevel>,
    pub message: String,
}

/// One status or response update of a run, for its timeline (log lines are in `logs`).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub seq: u64,
    pub at: String,
    pub kind: UpdateKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<RunStatus>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_run_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// Size of a response update's body as JSON (the body itself is the run's `response`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response_bytes: Option<usize>,
}

impl Step {
    fn of(u: &RunUpdate) -> Step {
        Step {
            seq: u.seq,
            at: u.at.clone(),
            kind: u.kind,
            status: u.status,
            status_label: u.status_label.clone(),
            summary: u.summary.clone(),
            link: u.link.clone(),
            external_run_id: u.external_run_id.clone(),
            attempt: u.attempt,
            duration_ms: u.duration_ms,
            response_bytes: None,
        }
    }

    fn weight(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        96 + opt(&self.status_label)
            + opt(&self.summary)
            + opt(&self.external_run_id)
            + self
                .link
                .as_ref()
                .map_or(0, |l| l.iter().map(|l| l.len() + 24).sum())
    }
}

/// Most timeline steps kept per run (status and response updates; a run has a handful).
pub const MAX_STEPS: usize = 100;

/// What is known about one run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunState {
    pub id: String,
    pub status: RunStatus,
    pub status_label: Option<String>,
    pub link: Vec<String>,
    pub summary: Option<String>,
    pub external_run_id: Option<String>,
    pub response: Option<Value>,
    pub backend: Option<String>,
    /// The run's action identifier (from v2 updates).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    pub logs: Vec<LogLine>,
    /// Log lines dropped beyond `max_logs` (the oldest are kept).
    pub logs_dropped: u64,
    /// Status and response updates in the order they were read (at most [`MAX_STEPS`]).
    pub timeline: Vec<Step>,
    pub created_at: String,
    pub updated_at: String,
    pub ended_at: Option<String>,
    /// `seq` of the last update folded in.
    #[serde(skip)]
    pub last_seq: u64,
    /// Where the run's trigger was read (API writes carry it on too).
    #[serde(skip)]
    pub source: Option<crate::model::SourceRef>,
    /// Bytes of the log lines kept, and of the response as JSON (for the byte bound).
    #[serde(skip)]
    log_bytes: usize,
    #[serde(skip)]
    response_bytes: usize,
    #[serde(skip)]
    step_bytes: usize,
}

impl RunState {
    pub(crate) fn new(u: &RunUpdate) -> Self {
        RunState {
            id: u.run_id.clone(),
            status: RunStatus::InProgress,
            status_label: None,
            link: Vec::new(),
            summary: None,
            external_run_id: None,
            response: None,
            backend: None,
            action: None,
            logs: Vec::new(),
            logs_dropped: 0,
            timeline: Vec::new(),
            created_at: u.at.clone(),
            updated_at: u.at.clone(),
            ended_at: None,
            last_seq: 0,
            source: None,
            log_bytes: 0,
            response_bytes: 0,
            step_bytes: 0,
        }
    }

    /// The run as a listing shows it.
    pub fn summary(&self) -> RunSummary {
        RunSummary {
            id: self.id.clone(),
            status: self.status,
            status_label: self.status_label.clone(),
            action: self.action.clone(),
            backend: self.backend.clone(),
            external_run_id: self.external_run_id.clone(),
            created_at: self.created_at.clone(),
            updated_at: self.updated_at.clone(),
            ended_at: self.ended_at.clone(),
            summary: self.summary.as_ref().map(|s| s.chars().take(200).collect()),
            last_log: self
                .logs
                .last()
                .map(|l| l.message.chars().take(200).collect()),
        }
    }

    /// About how many bytes this state holds.
    pub(crate) fn weight(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        256 + self.id.len()
            + opt(&self.status_label)
            + opt(&self.summary)
            + opt(&self.external_run_id)
            + self.link.iter().map(|l| l.len() + 24).sum::<usize>()
            + self.log_bytes
            + self.response_bytes
            + self.step_bytes
    }

    /// Keep `u`'s response as the run's; returns its size as JSON.
    fn take_response(&mut self, u: &RunUpdate) -> usize {
        self.response.clone_from(&u.response);
        self.response_bytes = u
            .response
            .as_ref()
            .map_or(0, |r| serde_json::to_vec(r).map_or(0, |b| b.len()));
        self.response_bytes
    }

    fn record_step(&mut self, step: Step) {
        if self.timeline.len() < MAX_STEPS {
            self.step_bytes += step.weight();
            self.timeline.push(step);
        }
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    pub(crate) fn apply(&mut self, u: &RunUpdate, max_logs: usize) {
        // A finished run dispatched again from another record (a DLQ replay) is open
        // again: the new dispatch's updates carry that record as their source.
        if self.is_terminal() && u.kind == UpdateKind::Status {
            if let (Some(old), Some(new)) = (&self.source, &u.source) {
                if old != new {
                    let mut step = Step::of(u);
                    step.status = Some(RunStatus::InProgress);
                    step.summary = Some(format!("dispatched again from {new} (was {old})"));
                    step.link = None;
                    self.record_step(step);
                    self.status = RunStatus::InProgress;
                    self.ended_at = None;
                    self.source = Some(new.clone());
                }
            }
        }
        self.updated_at.clone_from(&u.at);
        self.last_seq = self.last_seq.max(u.seq);
        if self.action.is_none() {
            self.action.clone_from(&u.action);
        }
        if self.backend.is_none() {
            self.backend.clone_from(&u.backend);
        }
        if self.source.is_none() {
            self.source.clone_from(&u.source);
        }
        match u.kind {
            UpdateKind::Status => {
                let mut step = Step::of(u);
                // A terminal update may carry the backend's response (one record).
                if u.response.is_some() && !self.is_terminal() {
                    step.response_bytes = Some(self.take_response(u));
                }
                self.record_step(step);
                // Once finished, a run's status, label, links and summary are final.
                if self.is_terminal() {
                    return;
                }
                if let Some(s) = u.status {
                    self.status = s;
                    if s.is_terminal() {
                        self.ended_at = Some(u.at.clone());
                    }
                }
                if u.status_label.is_some() {
                    self.status_label.clone_from(&u.status_label);
                }
                if let Some(link) = &u.link {
                    self.link.clone_from(link); // replaced, not appended (Port)
                }
                if u.summary.is_some() {
                    self.summary.clone_from(&u.summary);
                }
                if u.external_run_id.is_some() {
                    self.external_run_id.clone_from(&u.external_run_id);
                }
            }
            UpdateKind::Log => {
                if self.logs.len() < max_logs {
                    self.log_bytes += 64 + u.message.as_ref().map_or(0, String::len);
                    self.logs.push(LogLine {
                        seq: u.seq,
                        at: u.at.clone(),
                        level: u.level,
                        message: u.message.clone().unwrap_or_default(),
                    });
                } else {
                    self.logs_dropped += 1;
                }
            }
            UpdateKind::Response => {
                let mut step = Step::of(u);
                step.response_bytes = Some(self.take_response(u));
                self.record_step(step);
            }
        }
    }
}
