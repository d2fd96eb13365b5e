//! The run view: every run's current state, folded from the status topic.
//!
//! Any instance answers for any run, whoever dispatched it: each instance tails the whole
//! status topic (see [`crate::status::dedup::tail`]) into this view. Memory is bounded:
//! `api.max_runs` runs and `api.max_view_bytes` bytes of run state (oldest forgotten
//! first), and `api.max_logs` log lines per run.
//! A run's first terminal status is final; later status changes on the topic (a race
//! between two writers) do not change what the view reports, unless they come from a
//! dispatch of another record (a DLQ replay: the updates' `source` differs), which opens
//! the run again.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Mutex;

use crate::model::{RunStatus, RunUpdate};

pub use crate::status::listing::{Filter, Listing, RunSummary};
pub use crate::status::run::{LogLine, RunState, Step, MAX_STEPS};

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
    /// The id of every run that changed, for live readers (the board's event stream).
    /// Bounded: a reader that falls behind is told it lagged and reads the list again.
    changes: tokio::sync::broadcast::Sender<std::sync::Arc<str>>,
}

/// Changed run ids a live reader may fall behind by before it is told to re-read.
const CHANGES_CAPACITY: usize = 16_384;

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
            changes: tokio::sync::broadcast::channel(CHANGES_CAPACITY).0,
        }
    }

    /// Ids of runs as they change, from now on.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<std::sync::Arc<str>> {
        self.changes.subscribe()
    }

    /// Summaries of `ids` that the view still holds.
    pub fn summaries<'a>(&self, ids: impl IntoIterator<Item = &'a str>) -> Vec<RunSummary> {
        let inner = self.lock();
        ids.into_iter()
            .filter_map(|id| inner.runs.get(id).map(RunState::summary))
            .collect()
    }

    /// The newest `limit` runs matching `filter` (newest first by `createdAt`), with
    /// counts over every match.
    pub fn list(&self, filter: &Filter, limit: usize) -> Listing {
        let inner = self.lock();
        let mut listing = Listing {
            runs: Vec::new(),
            counts: [
                RunStatus::InProgress,
                RunStatus::Success,
                RunStatus::Failure,
            ]
            .into_iter()
            .map(|s| (s.as_str(), 0))
            .collect(),
            matched: 0,
            total: inner.runs.len(),
        };
        let mut picked: Vec<&RunState> = Vec::new();
        for id in inner.order.iter().rev() {
            let Some(run) = inner.runs.get(id) else {
                continue;
            };
            if !filter.matches(run) {
                continue;
            }
            listing.matched += 1;
            *listing.counts.entry(run.status.as_str()).or_default() += 1;
            picked.push(run);
        }
        // Newest first by creation time (runs read from several partitions arrive
        // interleaved); a stable sort keeps the reading order among equal times.
        picked.sort_by(|a, b| b.created_at.cmp(&a.created_at));
        listing.runs = picked
            .into_iter()
            .take(limit)
            .map(RunState::summary)
            .collect();
        listing
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
        if self.changes.receiver_count() > 0 {
            let _ = self.changes.send(std::sync::Arc::from(u.run_id.as_str()));
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
    use crate::model::LogLevel;

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
    fn a_replayed_dispatch_opens_a_finished_run_again_and_listings_filter() {
        use crate::model::SourceRef;
        let src = |offset| SourceRef {
            topic: "triggers".into(),
            partition: 0,
            offset,
        };
        let v = RunView::new(10, 10);
        let mut first = at(RunUpdate::status("r", RunStatus::Failure), 2, "1");
        first.source = Some(src(7));
        v.observe(&first);
        // A duplicate of the first dispatch (same record) does not change it…
        let mut dup = at(RunUpdate::status("r", RunStatus::Success), 3, "2");
        dup.source = Some(src(7));
        v.observe(&dup);
        assert_eq!(v.get("r").unwrap().status, RunStatus::Failure);
        // …a dispatch of the replayed record does.
        let mut again = at(RunUpdate::status("r", RunStatus::InProgress), 4, "3");
        again.source = Some(src(9));
        v.observe(&again);
        assert_eq!(v.get("r").unwrap().ended_at, None);
        let mut done = at(RunUpdate::status("r", RunStatus::Success), 5, "4");
        done.source = Some(src(9));
        v.observe(&done);
        let r = v.get("r").unwrap();
        assert_eq!(r.status, RunStatus::Success);
        assert!(r.timeline.iter().any(|s| s
            .summary
            .as_deref()
            .is_some_and(|m| m.starts_with("dispatched again from triggers/0/9"))));
        v.observe(&at(RunUpdate::status("s", RunStatus::InProgress), 1, "5"));
        let mut f = Filter::default();
        f.statuses.insert(RunStatus::Success);
        let l = v.list(&f, 10);
        assert_eq!((l.matched, l.total, l.runs.len()), (1, 2, 1));
        assert_eq!(l.counts["SUCCESS"], 1);
        assert_eq!(l.counts["IN_PROGRESS"], 0);
        let all = v.list(&Filter::default(), 10);
        assert_eq!(all.runs[0].id, "s", "newest first");
        let f = Filter {
            search: Some("S".into()),
            ..Filter::default()
        };
        assert_eq!(v.list(&f, 10).matched, 1, "search ignores case");
        // Time bounds are on createdAt: r was created at :01, s at :05.
        let f = Filter {
            since: Some("2026-11-28T10:00:03.000Z".into()),
            ..Filter::default()
        };
        assert_eq!(v.list(&f, 10).runs[0].id, "s");
        let f = Filter {
            until: Some("2026-11-28T10:00:03.000Z".into()),
            ..Filter::default()
        };
        let only_r = v.list(&f, 10);
        assert_eq!((only_r.matched, only_r.runs[0].id.as_str()), (1, "r"));
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
