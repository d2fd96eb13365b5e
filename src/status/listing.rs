//! Listings of the run view: which runs a filter selects, and what a list shows of each.

use std::collections::HashSet;

use serde::Serialize;

use crate::model::RunStatus;
use crate::status::run::RunState;

/// One run in a listing: what the board's list shows, without logs and response.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub id: String,
    pub status: RunStatus,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_label: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub external_run_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<String>,
    /// The run's summary (cut to 200 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    /// The last log line kept (cut to 200 characters).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_log: Option<String>,
}

/// Which runs a listing returns. Empty sets and `None` select everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub statuses: HashSet<RunStatus>,
    pub actions: HashSet<String>,
    pub backends: HashSet<String>,
    /// Bounds on `createdAt` (RFC 3339 UTC text compares in time order).
    pub since: Option<String>,
    pub until: Option<String>,
    /// Part of the run id or of the external run id (case-insensitive).
    pub search: Option<String>,
}

impl Filter {
    pub fn matches(&self, r: &RunState) -> bool {
        let has = |set: &HashSet<String>, v: &Option<String>| {
            set.is_empty() || v.as_ref().is_some_and(|v| set.contains(v))
        };
        (self.statuses.is_empty() || self.statuses.contains(&r.status))
            && has(&self.actions, &r.action)
            && has(&self.backends, &r.backend)
            && self
                .since
                .as_ref()
                .is_none_or(|t| r.created_at.as_str() >= t.as_str())
            && self
                .until
                .as_ref()
                .is_none_or(|t| r.created_at.as_str() <= t.as_str())
            && self.search.as_ref().is_none_or(|q| {
                let q = q.to_lowercase();
                r.id.to_lowercase().contains(&q)
                    || r.external_run_id
                        .as_ref()
                        .is_some_and(|e| e.to_lowercase().contains(&q))
            })
    }
}

/// A listing: the newest matching runs, and counts over every matching run.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Listing {
    pub runs: Vec<RunSummary>,
    /// Matching runs per status (`IN_PROGRESS`, `SUCCESS`, `FAILURE`).
    pub counts: std::collections::BTreeMap<&'static str, usize>,
    /// Runs matching the filter (`runs` holds at most the limit of them).
    pub matched: usize,
    /// Runs in the view.
    pub total: usize,
}
