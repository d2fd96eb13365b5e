//! The run view: every run's current state, folded from the status topic.
//!
//! Any instance answers for any run, whoever dispatched it: each instance tails the whole
//! status topic (see [`crate::status::dedup::tail`]) into this view. Memory is bounded:
//! `api.max_runs` runs and `api.max_view_bytes` bytes of run state (oldest forgotten
//! first), and `api.max_logs` log lines per run.
//! A run's first terminal status is final; later status changes on the topic (a race
//! between two writers) do not change what the view reports.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use crate::model::{LogLevel, RunStatus, RunUpdate, UpdateKind};

/// One log line of a run.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    pub at: String,
    pub level: Option<LogLevel>,
    pub message: String,
}

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
}

impl RunState {
    fn new(u: &RunUpdate) -> Self {
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
            created_at: u.at.clone(),
            updated_at: u.at.clone(),
            ended_at: None,
            last_seq: 0,
            source: None,
            log_bytes: 0,
            response_bytes: 0,
        }
    }

    /// About how many bytes this state holds.
    fn weight(&self) -> usize {
        let opt = |s: &Option<String>| s.as_ref().map_or(0, String::len);
        256 + self.id.len()
            + opt(&self.status_label)
            + opt(&self.summary)
            + opt(&self.external_run_id)
            + self.link.iter().map(|l| l.len() + 24).sum::<usize>()
            + self.log_bytes
            + self.response_bytes
    }

    pub fn is_terminal(&self) -> bool {
        self.status.is_terminal()
    }

    fn apply(&mut self, u: &RunUpdate, max_logs: usize) {
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
                        at: u.at.clone(),
                        level: u.level,
                        message: u.message.clone().unwrap_or_default(),
                    });
                } else {
                    self.logs_dropped += 1;
                }
            }
            UpdateKind::Response => {
                self.response.clone_from(&u.response);
                self.response_bytes = u
                    .response
                    .as_ref()
                    .map_or(0, |r| serde_json::to_vec(r).map_or(0, |b| b.len()));
            }
        }
    }
}

#[derive(Default)]
struct Inner {
    runs: HashMap<String, RunState>,
    order: VecDeque<String>,
    /// Sum of the runs' weights.
    bytes: usize,
    /// Updates applied locally before the tail reads them back (`run_id`, `seq`, `at`).
    echoes: HashSet<(String, u64, String)>,
}

pub struct RunView {
    inner: Mutex<Inner>,
    max_runs: usize,
    max_logs: usize,
    max_bytes: usize,
}

impl RunView {
    pub fn new(max_runs: usize, max_logs: usize) -> Self {
        Self::bounded(max_runs, max_logs, usize::MAX)
    }

    /// A view that also forgets its oldest runs past `max_bytes` of state.
    pub fn bounded(max_runs: usize, max_logs: usize, max_bytes: usize) -> Self {
        RunView {
            inner: Mutex::new(Inner::default()),
            max_runs: max_runs.max(1),
            max_logs,
            max_bytes,
        }
    }

    /// About how many bytes the view holds.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, run_id: &str) -> Option<RunState> {
        self.lock().runs.get(run_id).cloned()
    }

    /// Fold an update read from the status topic.
    pub fn observe(&self, u: &RunUpdate) {
        let mut inner = self.lock();
        if inner
            .echoes
            .remove(&(u.run_id.clone(), u.seq, u.at.clone()))
        {
            return; // already applied when it was written through this instance
        }
        self.fold(&mut inner, u);
    }

    /// Fold an update this instance just wrote (and the broker acknowledged), before the
    /// tail reads it back; the tail then skips it.
    pub fn applied_locally(&self, u: &RunUpdate) {
        let mut inner = self.lock();
        if inner.echoes.len() > 100_000 {
            inner.echoes.clear(); // echoes never read back (a lagging tail): forget them
        }
        inner.echoes.insert((u.run_id.clone(), u.seq, u.at.clone()));
        self.fold(&mut inner, u);
    }

    fn fold(&self, inner: &mut Inner, u: &RunUpdate) {
        if !inner.runs.contains_key(&u.run_id) {
            inner.order.push_back(u.run_id.clone());
            let state = RunState::new(u);
            inner.bytes += state.weight();
            inner.runs.insert(u.run_id.clone(), state);
        }
        if let Some(state) = inner.runs.get_mut(&u.run_id) {
            let before = state.weight();
            state.apply(u, self.max_logs);
            let after = state.weight();
            inner.bytes = (inner.bytes + after).saturating_sub(before);
        }
        // Forget the oldest runs past either bound (never the one just updated).
        while inner.runs.len() > self.max_runs
            || (inner.bytes > self.max_bytes && inner.runs.len() > 1)
        {
            let Some(old) = inner.order.pop_front() else {
                break;
            };
            if old == u.run_id {
                inner.order.push_back(old);
                if inner.runs.len() <= self.max_runs {
                    break;
                }
                continue;
            }
            if let Some(gone) = inner.runs.remove(&old) {
                inner.bytes = inner.bytes.saturating_sub(gone.weight());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(u: RunUpdate, seq: u64, t: &str) -> RunUpdate {
        RunUpdate {
            seq,
            at: format!("2026-11-28T10:00:0{t}.000Z"),
            ..u
        }
    }

    #[test]
    fn folds_status_logs_and_response_and_terminal_is_final() {
        let v = RunView::new(10, 2);
        v.observe(&at(RunUpdate::status("r", RunStatus::InProgress), 1, "1"));
        let mut linked = RunUpdate::status("r", RunStatus::InProgress);
        linked.link = Some(vec!["https://ci/1".into()]);
        linked.status_label = Some("building".into());
        v.observe(&at(linked, 2, "2"));
        for n in 0..3 {
            v.observe(&at(
                RunUpdate::log("r", LogLevel::Info, format!("l{n}")),
                3 + n,
                "3",
            ));
        }
        v.observe(&at(
            RunUpdate::response("r", serde_json::json!({"a": 1})),
            6,
            "4",
        ));
        v.observe(&at(
            RunUpdate::status("r", RunStatus::Success).with_summary("done"),
            7,
            "5",
        ));
        v.observe(&at(
            RunUpdate::status("r", RunStatus::Failure).with_summary("late"),
            8,
            "6",
        ));
        let s = v.get("r").unwrap();
        assert_eq!(s.status, RunStatus::Success);
        assert_eq!(s.summary.as_deref(), Some("done"));
        assert_eq!(s.status_label.as_deref(), Some("building"));
        assert_eq!(s.link, vec!["https://ci/1"]);
        assert_eq!(s.logs.len(), 2);
        assert_eq!(s.logs_dropped, 1);
        assert_eq!(s.response, Some(serde_json::json!({"a": 1})));
        assert_eq!(s.ended_at.as_deref(), Some("2026-11-28T10:00:05.000Z"));
        assert_eq!(s.created_at, "2026-11-28T10:00:01.000Z");
        assert_eq!(s.last_seq, 8);
    }

    #[test]
    fn local_writes_are_not_folded_twice_and_memory_is_bounded() {
        let v = RunView::new(2, 10);
        let u = at(RunUpdate::log("r", LogLevel::Info, "once"), 1, "1");
        v.applied_locally(&u);
        v.observe(&u);
        assert_eq!(v.get("r").unwrap().logs.len(), 1);
        v.observe(&at(RunUpdate::log("s", LogLevel::Info, "x"), 1, "1"));
        v.observe(&at(RunUpdate::log("t", LogLevel::Info, "x"), 1, "1"));
        assert!(v.get("r").is_none(), "oldest forgotten");
        assert!(v.get("t").is_some());
    }

    #[test]
    fn the_view_is_bounded_in_bytes() {
        let v = RunView::bounded(1000, 1000, 64 * 1024);
        for n in 0..100 {
            let run = format!("r{n}");
            v.observe(&at(
                RunUpdate::log(&run, LogLevel::Info, "x".repeat(4000)),
                1,
                "1",
            ));
            v.observe(&at(
                RunUpdate::response(&run, serde_json::json!({"b": "y".repeat(4000)})),
                2,
                "1",
            ));
        }
        assert!(v.bytes() <= 64 * 1024, "{} bytes", v.bytes());
        assert!(v.get("r99").is_some(), "the newest run is kept");
        assert!(v.get("r0").is_none(), "the oldest run is forgotten");
    }
}
