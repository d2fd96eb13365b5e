//! Prometheus metrics, served at `/metrics` ([`crate::api::server`]).
//!
//! Every name starts with `switchyard_`. Label values come from closed sets only: backend
//! types, outcomes, error classes, breaker states, topics, partitions and the identifiers
//! of the operator's automations — never run ids, URLs or hosts, so that cardinality stays
//! bounded whatever the events contain.

use std::sync::LazyLock;

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// Records handed to the pipeline, by topic.
    pub events_consumed: IntCounterVec,
    /// Finished dispatches, by backend and outcome (`succeeded`, `accepted`, `retryable`,
    /// `permanent`, `credentials_rejected`, and `rejected` for bad input).
    pub dispatches: IntCounterVec,
    /// One attempt's duration, by backend.
    pub dispatch_seconds: HistogramVec,
    /// Record timestamp → terminal run update acknowledged, by backend.
    pub end_to_end_seconds: HistogramVec,
    /// Runs inside a backend pool (attempting or waiting to retry), by backend.
    pub in_flight: IntGaugeVec,
    /// Retries scheduled, by backend.
    pub retries: IntCounterVec,
    /// 1 while the backend is paused after a credential failure.
    pub backend_paused: IntGaugeVec,
    /// Destinations whose circuit breaker is open (or half-open), by backend.
    pub breakers_open: IntGaugeVec,
    /// Breaker transitions, by backend and new state (`open`, `half_open`, `closed`).
    pub breaker_transitions: IntCounterVec,
    /// Attempts refused without a request because the breaker was open, by backend.
    pub breaker_rejections: IntCounterVec,
    /// Attempts that waited for a rate-limit token, by backend.
    pub rate_limited: IntCounterVec,
    /// Run updates acknowledged by the broker.
    pub run_updates: IntCounter,
    /// DLQ records acknowledged, by error class.
    pub dlq_records: IntCounterVec,
    /// Failed DLQ writes (each is retried; the partition does not commit past it).
    pub dlq_failures: IntCounter,
    /// DLQ writes currently failing and retrying: partitions held back by the DLQ.
    pub dlq_blocked: IntGauge,
    /// Failed status-topic writes (each is retried).
    pub publish_failures: IntCounter,
    /// Redelivered runs not dispatched again because the ledger knew them.
    pub duplicates_suppressed: IntCounter,
    /// Consumer lag per partition (high watermark − committed offset), from librdkafka.
    pub consumer_lag: IntGaugeVec,
    /// The stored watermark (next offset to commit) per partition.
    pub committed_watermark: IntGaugeVec,
    /// Age of the oldest event still in flight per partition, in seconds.
    pub oldest_in_flight_seconds: IntGaugeVec,
    /// Events in flight per partition.
    pub partition_in_flight: IntGaugeVec,
    /// Partitions whose window is full (not read until a slot frees).
    pub paused_partitions: IntGauge,
    /// Partitions assigned to this member.
    pub assigned_partitions: IntGauge,
    /// Port messages skipped, by reason (`not_for_agent`, `no_mapping`).
    pub port_skipped: IntCounterVec,
    /// Calls to Port's API, by call and outcome (`ok`, `retried`, `rejected`).
    pub port_api_calls: IntCounterVec,
    /// Runs failed by `[run_timeout]`, by backend.
    pub run_timeouts: IntCounterVec,
    /// Refusals by the sandbox and the policies, by reason (a closed set:
    /// [`REFUSAL_REASONS`]).
    pub refusals: IntCounterVec,
    /// Template worker processes started (the first ones, and each replacement).
    pub template_workers_started: IntCounter,
    /// Changes the automations engine evaluated, by source (`entity`, `run`, `changes`,
    /// `timer`).
    pub automation_changes: IntCounterVec,
    /// Fires (trigger events emitted), by automation.
    pub automation_fires: IntCounterVec,
    /// Conditions in error (not a boolean, a jq error, a budget), by automation.
    pub automation_condition_errors: IntCounterVec,
    /// Emissions refused past `automations.max_hops`, by automation.
    pub automation_hops_refused: IntCounterVec,
    /// Source records that are not a change (bad JSON, bad key), by source.
    pub automation_bad_records: IntCounterVec,
    /// Pending timers on this member.
    pub automation_timers_pending: IntGauge,
    /// Seconds the oldest pending timer is past its due time (0: none overdue).
    pub automation_timer_overdue_seconds: IntGauge,
    /// Aborted automations transactions.
    pub automation_transaction_aborts: IntCounter,
    /// Bytes of entity, run and timer state on this member.
    pub automation_state_bytes: IntGauge,
    /// Partitions the engine owns.
    pub automation_partitions: IntGauge,
    /// Partitions stopped by `automations.max_state_bytes`.
    pub automation_stopped_partitions: IntGauge,
    /// Automations loaded.
    pub automations_loaded: IntGauge,
}

/// Every `reason` label of `switchyard_refusals_total`.
pub const REFUSAL_REASONS: &[&str] = &[
    "template_budget",
    "secret_scope",
    "destination",
    "too_large",
    "kafka_topic",
    "avro",
    "panic",
    "credentials_wait",
    "replay_mac",
    "api_scope",
    "action_not_registered",
];

/// The process-wide metrics.
pub fn get() -> &'static Metrics {
    static M: LazyLock<Metrics> = LazyLock::new(Metrics::new);
    &M
}

fn name(n: &str) -> String {
    format!("switchyard_{n}")
}

impl Metrics {
    fn new() -> Metrics {
        let registry = Registry::new();
        let r = &registry;
        let counter = |n: &str, help: &str| {
            let c = IntCounter::new(name(n), help).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let counters = |n: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name(n), help), labels).expect("valid metric");
            r.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let gauge = |n: &str, help: &str| {
            let g = IntGauge::new(name(n), help).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let gauges = |n: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name(n), help), labels).expect("valid metric");
            r.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let histogram = |n: &str, help: &str| {
            // 1 ms … ~65 s.
            let buckets = exponential_buckets(0.001, 2.0, 17).expect("valid buckets");
            let h = HistogramVec::new(
                HistogramOpts::new(name(n), help).buckets(buckets),
                &["backend"],
            )
            .expect("valid metric");
            r.register(Box::new(h.clone())).expect("unique metric");
            h
        };
        let refusals = counters(
            "refusals_total",
            "Refusals by the template sandbox, the size caps and the policies, by reason.",
            &["reason"],
        );
        for reason in REFUSAL_REASONS {
            refusals.with_label_values(&[reason]);
        }
        Metrics {
            refusals,
            template_workers_started: counter(
                "template_workers_started_total",
                "Template worker processes started (first ones and replacements).",
            ),
            events_consumed: counters(
                "events_consumed_total",
                "Trigger records handed to the pipeline.",
                &["topic"],
            ),
            dispatches: counters(
                "dispatches_total",
                "Finished dispatches by backend and outcome.",
                &["backend", "outcome"],
            ),
            dispatch_seconds: histogram(
                "dispatch_duration_seconds",
                "Duration of one backend attempt.",
            ),
            end_to_end_seconds: histogram(
                "end_to_end_seconds",
                "Trigger record timestamp to acknowledged terminal run update.",
            ),
            in_flight: gauges(
                "in_flight",
                "Runs inside a backend pool (attempting or waiting to retry).",
                &["backend"],
            ),
            retries: counters("retries_total", "Retries scheduled.", &["backend"]),
            backend_paused: gauges(
                "backend_paused",
                "1 while the backend is paused after a credential failure (401/403).",
                &["backend"],
            ),
            breakers_open: gauges(
                "breakers_open",
                "Destinations whose circuit breaker is open or half-open.",
                &["backend"],
            ),
            breaker_transitions: counters(
                "breaker_transitions_total",
                "Circuit-breaker state changes.",
                &["backend", "state"],
            ),
            breaker_rejections: counters(
                "breaker_rejections_total",
                "Attempts refused without a request because the destination's breaker was open.",
                &["backend"],
            ),
            rate_limited: counters(
                "rate_limited_total",
                "Attempts that waited for a rate-limit token.",
                &["backend"],
            ),
            run_updates: counter(
                "run_updates_total",
                "Run updates acknowledged by the broker.",
            ),
            dlq_records: counters(
                "dlq_records_total",
                "Dead-letter records acknowledged by the broker.",
                &["class"],
            ),
            dlq_failures: counter(
                "dlq_write_failures_total",
                "Failed dead-letter writes (retried; the partition does not commit past them).",
            ),
            dlq_blocked: gauge(
                "dlq_blocked",
                "Dead-letter writes currently failing: events whose partition is held back.",
            ),
            publish_failures: counter(
                "status_write_failures_total",
                "Failed status-topic writes (retried until acknowledged).",
            ),
            duplicates_suppressed: counter(
                "duplicates_suppressed_total",
                "Redelivered runs not dispatched again because they had finished or started.",
            ),
            consumer_lag: gauges(
                "consumer_lag",
                "High watermark minus committed offset, per partition (librdkafka statistics).",
                &["topic", "partition"],
            ),
            committed_watermark: gauges(
                "committed_watermark",
                "Next offset to commit (every earlier event has its run update acknowledged).",
                &["topic", "partition"],
            ),
            oldest_in_flight_seconds: gauges(
                "oldest_in_flight_seconds",
                "Age of the oldest event still in flight.",
                &["topic", "partition"],
            ),
            partition_in_flight: gauges(
                "partition_in_flight",
                "Events in flight per partition.",
                &["topic", "partition"],
            ),
            paused_partitions: gauge(
                "paused_partitions",
                "Partitions whose window of in-flight events is full (not read until a slot frees).",
            ),
            assigned_partitions: gauge(
                "assigned_partitions",
                "Partitions assigned to this group member.",
            ),
            port_skipped: counters(
                "port_skipped_total",
                "Port messages skipped: not for an agent, or no mapping entry enabled.",
                &["reason"],
            ),
            run_timeouts: counters(
                "run_timeouts_total",
                "Runs that stayed IN_PROGRESS past their run_timeout and were failed.",
                &["backend"],
            ),
            port_api_calls: counters(
                "port_api_calls_total",
                "Calls to Port's API by call and outcome (ok, retried, rejected).",
                &["call", "outcome"],
            ),
            automation_changes: counters(
                "automation_changes_total",
                "Changes the automations engine evaluated, by source.",
                &["source"],
            ),
            automation_fires: counters(
                "automation_fires_total",
                "Trigger events emitted by automations.",
                &["automation"],
            ),
            automation_condition_errors: counters(
                "automation_condition_errors_total",
                "Automation conditions in error (no fire).",
                &["automation"],
            ),
            automation_hops_refused: counters(
                "automation_hops_refused_total",
                "Emissions refused because the chain of automations passed automations.max_hops.",
                &["automation"],
            ),
            automation_bad_records: counters(
                "automation_bad_records_total",
                "Source records the automations engine could not read as a change.",
                &["source"],
            ),
            automation_timers_pending: gauge(
                "automation_timers_pending",
                "Timers armed and not yet fired on this member.",
            ),
            automation_timer_overdue_seconds: gauge(
                "automation_timer_overdue_seconds",
                "How far the oldest pending timer is past its due time.",
            ),
            automation_transaction_aborts: counter(
                "automation_transaction_aborts_total",
                "Automations transactions that failed and were aborted.",
            ),
            automation_state_bytes: gauge(
                "automation_state_bytes",
                "Bytes of entity, run and timer state the engine keeps on this member.",
            ),
            automation_partitions: gauge(
                "automation_partitions",
                "Partitions the automations engine owns on this member.",
            ),
            automation_stopped_partitions: gauge(
                "automation_stopped_partitions",
                "Partitions stopped by automations.max_state_bytes.",
            ),
            automations_loaded: gauge("automations_loaded", "Automations loaded."),
            registry,
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding into a Vec cannot fail");
        String::from_utf8(out).expect("the text format is UTF-8")
    }

    /// Every series now, as Prometheus gathers them (the board's health strip reads these).
    pub fn gather(&self) -> Vec<prometheus::proto::MetricFamily> {
        self.registry.gather()
    }

    /// Forget a partition's series when it is revoked, so stale values do not linger.
    pub fn forget_partition(&self, topic: &str, partition: i32) {
        let p = partition.to_string();
        for g in [
            &self.consumer_lag,
            &self.committed_watermark,
            &self.oldest_in_flight_seconds,
            &self.partition_in_flight,
        ] {
            let _ = g.remove_label_values(&[topic, &p]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_is_prefixed_and_rendered() {
        let m = get();
        m.dispatches
            .with_label_values(&["WEBHOOK", "succeeded"])
            .inc();
        m.run_updates.inc();
        let text = m.render();
        assert!(
            text.contains("switchyard_dispatches_total{backend=\"WEBHOOK\",outcome=\"succeeded\"}")
        );
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            assert!(line.starts_with("switchyard_"), "{line}");
        }
    }
}
