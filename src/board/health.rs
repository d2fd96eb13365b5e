//! The board's health strip, read from this process's own metrics once a second.
//!
//! Every figure is this instance's: its events, the lag of the partitions assigned to it,
//! its in-flight runs, its paused backends and open breakers. The group's figures are the
//! sum over its members' `/metrics` (or the alert rules in `deploy/prometheus/`).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// One reading of the strip.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// Whose figures these are: always `"instance"` (this process).
    pub scope: &'static str,
    /// Trigger records consumed per second, over the last few seconds.
    pub events_per_second: f64,
    /// Sum of the assigned partitions' lag (high watermark minus committed offset).
    pub consumer_lag: i64,
    pub assigned_partitions: i64,
    /// Runs inside a backend pool.
    pub in_flight: i64,
    /// Backends paused after a credential failure.
    pub paused_backends: Vec<String>,
    /// Open or half-open breakers per backend.
    pub open_breakers: BTreeMap<String, i64>,
    /// Dead-letter writes currently failing (their partitions are held back).
    pub dlq_blocked: i64,
    pub refusals: i64,
}

/// Sum of a family's values, and the values per `label`.
fn read(
    families: &[prometheus::proto::MetricFamily],
    name: &str,
    label: &str,
) -> (f64, BTreeMap<String, f64>) {
    let mut total = 0.0;
    let mut by = BTreeMap::new();
    for f in families.iter().filter(|f| f.name() == name) {
        for m in f.get_metric() {
            // A series is a counter or a gauge; the other reads 0.
            let v = m.get_counter().get_value() + m.get_gauge().get_value();
            total += v;
            if let Some(l) = m.get_label().iter().find(|l| l.name() == label) {
                *by.entry(l.value().to_owned()).or_default() += v;
            }
        }
    }
    (total, by)
}

/// Sample the metrics every second until `stop`; the receiver holds the latest reading.
pub fn sample(stop: CancellationToken) -> watch::Receiver<Health> {
    let (tx, rx) = watch::channel(Health {
        scope: "instance",
        ..Health::default()
    });
    tokio::spawn(async move {
        // (when, events consumed so far): the rate is over the last five seconds.
        let mut window: VecDeque<(Instant, f64)> = VecDeque::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.cancelled() => return,
            }
            let fams = crate::telemetry::metrics::get().gather();
            let now = Instant::now();
            let (events, _) = read(&fams, "switchyard_events_consumed_total", "topic");
            window.push_back((now, events));
            while window.len() > 6 {
                window.pop_front();
            }
            let rate = match (window.front(), window.back()) {
                (Some((t0, e0)), Some((t1, e1))) if t1 > t0 => {
                    (e1 - e0) / t1.duration_since(*t0).as_secs_f64()
                }
                _ => 0.0,
            };
            let (lag, _) = read(&fams, "switchyard_consumer_lag", "partition");
            let (assigned, _) = read(&fams, "switchyard_assigned_partitions", "");
            let (in_flight, _) = read(&fams, "switchyard_in_flight", "backend");
            let (_, paused) = read(&fams, "switchyard_backend_paused", "backend");
            let (_, breakers) = read(&fams, "switchyard_breakers_open", "backend");
            let (blocked, _) = read(&fams, "switchyard_dlq_blocked", "");
            let (refusals, _) = read(&fams, "switchyard_refusals_total", "reason");
            let health = Health {
                scope: "instance",
                events_per_second: (rate * 10.0).round() / 10.0,
                consumer_lag: lag as i64,
                assigned_partitions: assigned as i64,
                in_flight: in_flight as i64,
                paused_backends: paused
                    .into_iter()
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(b, _)| b)
                    .collect(),
                open_breakers: breakers
                    .into_iter()
                    .filter(|(_, v)| *v > 0.0)
                    .map(|(b, v)| (b, v as i64))
                    .collect(),
                dlq_blocked: blocked as i64,
                refusals: refusals as i64,
            };
            tx.send_if_modified(|h| {
                let changed = *h != health;
                *h = health;
                changed
            });
        }
    });
    rx
}
