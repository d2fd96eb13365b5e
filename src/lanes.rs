//! Ordering lanes: which events must run one after another.
//!
//! Events that share a lane key run strictly in arrival order; different keys run in
//! parallel, also inside one partition. A lane exists only while it has work: the first
//! job of a key spawns the lane's runner, later jobs queue behind it, and the runner
//! ends when the queue is empty. The number of queued jobs is bounded by the consumer's
//! partition windows, so the lanes need no bound of their own.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use crate::config::Ordering;
use crate::model::TriggerEvent;
use crate::model::TriggerRecord;

/// The lane of an event, or `None` when it may run at once (unordered mode).
///
/// Key mode uses `orderingKey`, else the record key, else the run id.
pub fn lane_key(mode: Ordering, event: &TriggerEvent, record: &TriggerRecord) -> Option<String> {
    match mode {
        Ordering::Key => Some(
            event
                .ordering_key
                .clone()
                .filter(|k| !k.is_empty())
                .or_else(|| {
                    record
                        .key_str()
                        .filter(|k| !k.is_empty())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| event.run.id.clone()),
        ),
        Ordering::Partition => Some(format!("{}/{}", record.topic, record.partition)),
        Ordering::Unordered => None,
    }
}

type Runner<J> = dyn Fn(J) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send + Sync;

/// Per-key FIFO queues, each drained by one task.
pub struct Lanes<J> {
    queues: Mutex<HashMap<String, VecDeque<J>>>,
    run: Box<Runner<J>>,
}

impl<J: Send + 'static> Lanes<J> {
    pub fn new<F, Fut>(run: F) -> Arc<Self>
    where
        F: Fn(J) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        Arc::new(Lanes {
            queues: Mutex::new(HashMap::new()),
            run: Box::new(move |j| Box::pin(run(j))),
        })
    }

    /// Queue `job` behind the other jobs of `key`, or start it when the lane is idle.
    pub fn submit(self: &Arc<Self>, key: String, job: J) {
        {
            let mut q = self.lock();
            if let Some(queue) = q.get_mut(&key) {
                queue.push_back(job);
                return;
            }
            q.insert(key.clone(), VecDeque::new());
        }
        let lanes = self.clone();
        tokio::spawn(async move {
            let mut job = job;
            loop {
                (lanes.run)(job).await;
                let mut q = lanes.lock();
                let queue = q
                    .get_mut(&key)
                    .expect("a lane is removed only by its runner");
                match queue.pop_front() {
                    Some(next) => job = next,
                    None => {
                        q.remove(&key);
                        return;
                    }
                }
            }
        });
    }

    /// Number of lanes with work (for tests and metrics).
    pub fn active(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, VecDeque<J>>> {
        // The critical sections only move jobs between containers and cannot panic.
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::mpsc;

    fn event(ordering_key: Option<&str>) -> TriggerEvent {
        let mut v = serde_json::json!({"run": {"id": "r_1"},
            "action": {"identifier": "a", "invocationMethod": {"type": "WEBHOOK"}}});
        if let Some(k) = ordering_key {
            v["orderingKey"] = k.into();
        }
        serde_json::from_value(v).unwrap()
    }

    fn rec(key: Option<&str>) -> TriggerRecord {
        TriggerRecord {
            topic: "t".into(),
            partition: 2,
            offset: 9,
            key: key.map(|k| k.as_bytes().to_vec()),
            payload: None,
            headers: vec![],
            timestamp_ms: None,
        }
    }

    #[test]
    fn lane_key_prefers_ordering_key_then_record_key_then_run_id() {
        let k = |ok, rk| lane_key(Ordering::Key, &event(ok), &rec(rk));
        assert_eq!(k(Some("svc/a"), Some("rk")).as_deref(), Some("svc/a"));
        assert_eq!(k(None, Some("rk")).as_deref(), Some("rk"));
        assert_eq!(k(None, None).as_deref(), Some("r_1"));
        assert_eq!(k(Some(""), Some("")).as_deref(), Some("r_1"));
        assert_eq!(
            lane_key(Ordering::Partition, &event(Some("x")), &rec(None)).as_deref(),
            Some("t/2")
        );
        assert_eq!(
            lane_key(Ordering::Unordered, &event(Some("x")), &rec(None)),
            None
        );
    }

    // Paused time: the jobs' sleeps advance a virtual clock, so "slow" and "fast" are
    // decided by their delays, not by the machine's load.
    #[tokio::test(start_paused = true)]
    async fn same_key_runs_in_order_and_keys_run_in_parallel() {
        let (tx, mut rx) = mpsc::unbounded_channel::<(String, u32)>();
        let lanes = Lanes::new(move |(key, n, delay): (String, u32, u64)| {
            let tx = tx.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let _ = tx.send((key, n));
            }
        });
        // "slow" jobs take 30 ms each; "fast" ones finish first although queued later.
        for n in 0..3 {
            lanes.submit("slow".into(), ("slow".into(), n, 30));
        }
        for n in 0..3 {
            lanes.submit("fast".into(), ("fast".into(), n, 1));
        }
        let mut got = Vec::new();
        for _ in 0..6 {
            got.push(rx.recv().await.unwrap());
        }
        let order = |k: &str| {
            got.iter()
                .filter(|(g, _)| g == k)
                .map(|(_, n)| *n)
                .collect::<Vec<_>>()
        };
        assert_eq!(order("slow"), vec![0, 1, 2]);
        assert_eq!(order("fast"), vec![0, 1, 2]);
        assert_eq!(
            got[0].0, "fast",
            "different keys must not wait for each other"
        );
        // A runner removes its lane right after its last job returns: let the runners
        // run (single-threaded runtime, so a few yields are enough), then check.
        for _ in 0..10 {
            if lanes.active() == 0 {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert_eq!(lanes.active(), 0, "every lane ended with its queue");
    }
}
