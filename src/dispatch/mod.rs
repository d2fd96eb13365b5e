//! From a consumed record to acknowledged run updates: decode → render → route → pool →
//! publish. Implements the consumer's [`Sink`].
//!
//! Records of `port`-format topics (Port's agent envelopes) take their own path through
//! the same stages: [`port`] (the mapping instead of templates, Port's reports).
//!
//! Every path ends in one of two ways: the run's updates (and, for failures, its DLQ
//! record) are acknowledged and the ticket is completed; or switchyard is stopping, the
//! ticket is dropped and the event will be redelivered. Nothing is skipped silently.

mod checks;
pub mod port;
mod reject;
mod render;
mod report;

use reject::run_id_of;

use std::collections::HashMap;
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::backends::{Outcome, Registry, Report, Request};
use crate::codec::{decode_json, BadInput};
use crate::config::{Format, Ordering};
use crate::dlq;
use crate::kafka::consumer::{Sink, Ticket};
use crate::kafka::publisher::{Publisher, Stopped};
use crate::lanes::{lane_key, Lanes};
use crate::model::TriggerRecord;
use crate::model::{LogLevel, RunStatus, RunUpdate, TriggerEvent};
use crate::status::dedup::Ledger;
use crate::status::writer::{RunWriter, Sequencer};
use crate::template::sandbox::{RenderError, Sandbox};
use crate::template::Context;
use crate::watch::{Watch, Watcher};

/// One decoded event on its way through a lane.
pub struct Job {
    record: TriggerRecord,
    ticket: Ticket,
    event: Arc<TriggerEvent>,
    /// Set for records of `port`-format topics.
    port: Option<Arc<crate::port::envelope::PortRun>>,
}

struct Inner {
    /// The format of each consumed topic.
    formats: HashMap<String, Format>,
    port: Option<Arc<crate::dispatch::port::Settings>>,
    watcher: Arc<Watcher>,
    ledger: Option<Arc<Ledger>>,
    max_event_age: Option<std::time::Duration>,
    in_progress_after: std::time::Duration,
    sandbox: Arc<Sandbox>,
    /// The key of replay markers' MACs (`dlq.replay_key`).
    replay_key: Option<Vec<u8>>,
    /// Largest input record dispatched (see [`Guards::max_input`]).
    max_input: Arc<std::sync::atomic::AtomicUsize>,
    registered: Option<crate::actions::Registered>,
    /// The secret store; each run's templates see the secrets scoped to its destination.
    secrets: Arc<crate::secrets::Store>,
    publisher: Arc<Publisher>,
    seqs: Arc<Sequencer>,
    registry: crate::pool::Pools,
    ordering: Ordering,
}

/// The dispatcher between the two topics. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    inner: Arc<Inner>,
    lanes: Arc<Lanes<Job>>,
}

/// What keeps events in their bounds: the template sandbox, the scoped secrets and the
/// key of replay markers.
pub struct Guards {
    pub sandbox: Arc<Sandbox>,
    pub secrets: Arc<crate::secrets::Store>,
    pub replay_key: Option<Vec<u8>>,
    /// Largest input record (key, value and headers) dispatched; larger ones go to the
    /// DLQ as `too_large`, truncated. Set once the broker reports the DLQ's limit.
    pub max_input: Arc<std::sync::atomic::AtomicUsize>,
    /// `actions.mode = "registered"`: the operator's actions.
    pub registered: Option<crate::actions::Registered>,
}

/// Where run updates go: the publisher, the process's sequencer that numbers them, and
/// the dedup ledger of runs already dispatched (when enabled).
pub struct Outputs {
    pub publisher: Arc<Publisher>,
    pub seqs: Arc<Sequencer>,
    pub ledger: Option<Arc<Ledger>>,
}

/// What the pipeline reads: each topic's format, and the Port settings when a topic is
/// in the `port` format.
pub struct Inputs {
    pub formats: HashMap<String, Format>,
    pub port: Option<crate::dispatch::port::Settings>,
}

impl Pipeline {
    pub fn new(
        inputs: Inputs,
        registry: Registry,
        watcher: Arc<Watcher>,
        outputs: Outputs,
        guards: Guards,
        dispatch: &crate::config::DispatchConfig,
    ) -> Self {
        let Guards {
            sandbox,
            secrets,
            replay_key,
            max_input,
            registered,
        } = guards;
        let Outputs {
            publisher,
            seqs,
            ledger,
        } = outputs;
        let ordering = dispatch.ordering;
        let inner = Arc::new(Inner {
            formats: inputs.formats,
            port: inputs.port.map(Arc::new),
            watcher,
            ledger,
            max_event_age: dispatch.max_event_age,
            in_progress_after: dispatch.in_progress_after,
            sandbox,
            replay_key,
            max_input,
            registered,
            secrets,
            publisher,
            seqs,
            registry: crate::pool::Pools::new(&registry),
            ordering,
        });
        let for_lanes = inner.clone();
        let lanes = Lanes::new(move |job: Job| {
            let inner = for_lanes.clone();
            async move { inner.run(job).await }
        });
        Pipeline { inner, lanes }
    }
}

impl Sink for Pipeline {
    fn assigned(&self, partitions: &[(String, i32)]) {
        if let Some(ledger) = &self.inner.ledger {
            ledger.catch_up(partitions);
        }
        self.inner.watcher.assigned(partitions);
    }

    fn revoked(&self, partitions: &[(String, i32)]) {
        self.inner.watcher.revoked(partitions);
    }

    async fn accept(&self, record: TriggerRecord, ticket: Ticket) {
        if ticket.intake_stopped() {
            return; // not started: the next owner gets it
        }
        let size = record.size();
        let max_input = self
            .inner
            .max_input
            .load(std::sync::atomic::Ordering::Relaxed);
        if size > max_input {
            crate::telemetry::metrics::get()
                .refusals
                .with_label_values(&["too_large"])
                .inc();
            let inner = self.inner.clone();
            let run_id = run_id_of(record.payload.as_deref().unwrap_or_default());
            let bad = BadInput::TooLarge(format!(
                "{size} bytes; the limit is {} (the DLQ topic's max.message.bytes less room for \
                 headers). The DLQ holds a truncated copy; switchyard-source points at the original",
                max_input
            ));
            tokio::spawn(async move { inner.reject(record, ticket, run_id, bad).await });
            return;
        }
        let format = self
            .inner
            .formats
            .get(&record.topic)
            .copied()
            .unwrap_or_default();
        if format == Format::Port {
            return self.accept_port(record, ticket);
        }
        let raw = record.payload.as_deref().unwrap_or_default();
        let json = match self.inner.publisher.codec().trigger_json(format, raw).await {
            Ok(json) => json,
            Err(e) => {
                let inner = self.inner.clone();
                let bad = BadInput::Avro(e.to_string());
                tokio::spawn(async move { inner.reject(record, ticket, None, bad).await });
                return;
            }
        };
        match decode_json(&json) {
            Err((bad, run_id)) => {
                let inner = self.inner.clone();
                // Bounded: the ticket holds a slot of the partition window.
                tokio::spawn(async move { inner.reject(record, ticket, run_id, bad).await });
            }
            Ok(event) => {
                let event = Arc::new(event);
                self.submit(Job {
                    record,
                    ticket,
                    event,
                    port: None,
                });
            }
        }
    }
}

impl Pipeline {
    /// Queue a decoded job in its ordering lane (or start it, unordered).
    fn submit(&self, job: Job) {
        match lane_key(self.inner.ordering, &job.event, &job.record) {
            Some(key) => self.lanes.submit(key, job),
            None => {
                let inner = self.inner.clone();
                tokio::spawn(async move { inner.run(job).await });
            }
        }
    }
}

impl Inner {
    /// Dispatch one decoded event inside its log span (every line about the run carries
    /// `run_id`, `backend` and `action`) and its trace context.
    /// Run one job with its panics caught at this boundary: a panic fails the run (class
    /// `internal`), writes its DLQ record and completes the offset, so the lane and the
    /// partition's watermark move on.
    async fn run(&self, job: Job) {
        let record = job.record.clone();
        let run_id = job.event.run.id.clone();
        let Err(panicked) = crate::kafka::consumer::isolate(self.run_job(job)).await else {
            return;
        };
        crate::telemetry::metrics::get()
            .refusals
            .with_label_values(&["panic"])
            .inc();
        tracing::error!(run_id = %run_id, source = %record.source(), panic = %panicked.message,
            "a run's task panicked; the run fails and the partition moves on");
        let mut tickets = panicked.tickets.into_iter();
        let Some(ticket) = tickets.next() else {
            tracing::error!(run_id = %run_id, "the panicked run held no ticket to complete");
            return;
        };
        let bad = BadInput::Internal(format!(
            "switchyard failed while dispatching this run ({}); it was not retried",
            panicked.message
        ));
        Box::pin(self.reject(record, ticket, Some(run_id), bad)).await;
    }

    async fn run_job(&self, job: Job) {
        use tracing::Instrument as _;
        let span = tracing::info_span!(
            "run",
            run_id = %job.event.run.id,
            backend = job.event.backend_type().unwrap_or_default(),
            action = %job.event.action.identifier,
        );
        let traceparent = crate::telemetry::trace::from_headers(&job.record.headers);
        match job.port.clone() {
            // Boxed: the Port path's future is large, and would size every lane's.
            Some(run) => {
                let port = Box::pin(self.dispatch_port(job, run));
                crate::telemetry::trace::scope(traceparent, port.instrument(span)).await
            }
            None => {
                crate::telemetry::trace::scope(traceparent, self.dispatch(job).instrument(span))
                    .await
            }
        }
    }

    async fn dispatch(&self, job: Job) {
        let Job {
            record,
            ticket,
            event,
            ..
        } = job;
        if ticket.intake_stopped() {
            return;
        }
        let run_id = event.run.id.clone();
        if self.is_duplicate(&run_id, &record).await {
            ticket.complete();
            return;
        }
        panic_hook_for_tests(&run_id);
        if let Err(bad) = self.check_expiry(&event, &record) {
            return Box::pin(self.reject(record, ticket, Some(run_id), bad)).await;
        }
        let event = match &self.registered {
            // An automation's trigger carries its operator-defined invocationMethod,
            // proven by the engine's MAC.
            Some(actions) if !self.emitted_by_automation(&record) => {
                match actions.resolve(&event) {
                    Ok(e) => e,
                    Err(bad) => {
                        return Box::pin(self.reject(record, ticket, Some(run_id), bad)).await
                    }
                }
            }
            _ => event,
        };
        let kind = event.backend_type().unwrap_or_default().to_owned();
        let Some(reg) = self.registry.get(&kind) else {
            let shown = if kind.is_empty() {
                "(missing)".to_owned()
            } else {
                format!("{kind:?}")
            };
            let bad = BadInput::UnknownBackend(shown, self.registry.known());
            return Box::pin(self.reject(record, ticket, Some(run_id), bad)).await;
        };
        let invocation = match self.render(reg, &event).await {
            Ok(inv) => inv,
            Err(bad) => return Box::pin(self.reject(record, ticket, Some(run_id), bad)).await,
        };
        let mut w = RunWriter::new(
            self.publisher.clone(),
            &self.seqs,
            &run_id,
            Some(reg.backend.kind()),
            record.source(),
        )
        .for_action(Some(event.action.identifier.clone()))
        .traced(crate::telemetry::trace::current());
        let started = RunUpdate::dispatching(&run_id, reg.backend.kind());
        let hold = self.in_progress_after(reg.backend.kind());
        let req = Request {
            run_id: run_id.clone(),
            invocation,
            event: event.clone(),
        };
        let mark = if hold.is_zero() {
            // Not awaited here: it is acknowledged (settled) before the event completes.
            if w.emit_nowait(started).await.is_err() {
                return;
            }
            None
        } else {
            // Held back: a run that finishes within `hold` is written as one record.
            Some(w.hold_mark(started))
        };
        let done = {
            let attempt = self.attempt(reg, &req, &ticket, &mut w);
            tokio::pin!(attempt);
            match mark {
                None => attempt.await,
                Some(mark) => tokio::select! {
                    biased;
                    done = &mut attempt => done,
                    _ = tokio::time::sleep(hold) => {
                        // Boxed: the rare path (a slow run) would size every run's future.
                        if Box::pin(mark.write(&self.publisher, &self.seqs)).await.is_err() {
                            return; // stopping: the event is redelivered
                        }
                        attempt.await
                    }
                },
            }
        };
        let Some(done) = done else {
            return;
        };
        let report = done.report;
        let kind = reg.backend.kind();
        if self
            .publish_report(&mut w, &report, done.attempt, done.duration)
            .await
            .is_err()
        {
            return;
        }
        if report.outcome != Outcome::Accepted {
            observe_end_to_end(kind, &record);
        }
        if report.outcome.is_failure() {
            let class = report.error_class.unwrap_or(report.outcome.as_str());
            let rec = dlq::record(&record, &report.summary, class, done.attempt);
            if Box::pin(self.publisher.send_dlq(&rec)).await.is_err() {
                return;
            }
        }
        if let Some(state) = report.follow {
            match Box::pin(self.watcher.follow(Watch::follow(w, state))).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(run_id = %run_id, followed = self.watcher.active(),
                    "watch.max_watches reached; the run is not followed and stays IN_PROGRESS"),
                Err(_) => return, // stopping: the event is redelivered
            }
        } else if report.outcome == Outcome::Accepted {
            // Async: the run stays IN_PROGRESS until its service reports, or its
            // run_timeout passes.
            if Box::pin(self.watcher.time_limit(w)).await.is_err() {
                return;
            }
        }
        ticket.complete();
    }

    /// How long a run of `backend` holds its IN_PROGRESS mark back. Non-idempotent
    /// backends write it at dispatch: the duplicate ledger reads their updates after the
    /// first as "dispatched" (see `status::dedup`).
    fn in_progress_after(&self, backend: &str) -> std::time::Duration {
        if crate::status::dedup::NON_IDEMPOTENT.contains(&backend) {
            std::time::Duration::ZERO
        } else {
            self.in_progress_after
        }
    }

    /// Run `req` through its backend's pool, counted and logged. `None`: abandoned at
    /// shutdown (the event is redelivered).
    async fn attempt(
        &self,
        reg: &crate::pool::Pooled,
        req: &Request,
        ticket: &Ticket,
        w: &mut RunWriter,
    ) -> Option<crate::pool::Attempted> {
        let run_id = &req.run_id;
        let Some(done) = reg
            .pool
            .run(reg.backend.as_ref(), req, ticket.abandoned(), w)
            .await
        else {
            tracing::warn!(run_id = %run_id, "run abandoned at shutdown; it will be redelivered");
            return None;
        };
        let (kind, outcome) = (reg.backend.kind(), done.report.outcome.as_str());
        crate::telemetry::metrics::get()
            .dispatches
            .with_label_values(&[kind, outcome])
            .inc();
        tracing::info!(run_id = %run_id, backend = kind, outcome,
            duration_ms = done.duration.as_millis() as u64, summary = %done.report.summary, "attempt finished");
        Some(done)
    }
}

/// Test hook: `SWITCHYARD_TEST_PANIC_RUN_ID` (set by the operator, never by an event)
/// names a run whose dispatch panics, to show that a panic wedges nothing.
fn panic_hook_for_tests(run_id: &str) {
    static ID: std::sync::LazyLock<Option<String>> =
        std::sync::LazyLock::new(|| std::env::var("SWITCHYARD_TEST_PANIC_RUN_ID").ok());
    if ID.as_deref() == Some(run_id) {
        panic!("test hook: SWITCHYARD_TEST_PANIC_RUN_ID={run_id}");
    }
}

/// Record timestamp → now (the terminal update was just acknowledged).
fn observe_end_to_end(backend: &'static str, record: &TriggerRecord) {
    if let Some(ts) = record.timestamp_ms {
        let now_ms = (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64;
        crate::telemetry::metrics::get()
            .end_to_end_seconds
            .with_label_values(&[backend])
            .observe((now_ms - ts).max(0) as f64 / 1000.0);
    }
}
