//! The pipeline's path for records of `port`-format topics (Port's agent messages).
//!
//! Stages, as Port's agent runs them (reference §7.4, §8), with switchyard's pools,
//! retries, DLQ and at-least-once offsets around them:
//! 1. read the envelope and verify its signature ([`crate::port::envelope`]); messages
//!    not for an agent are skipped;
//! 2. pick the first enabled mapping entry (none: skipped, as the agent does, so several
//!    agents can share a topic; a workflow node run fails instead);
//! 3. decrypt `fieldsToDecryptPaths`, map the message to a request, and send it through
//!    the WEBHOOK pool, signed over the exact bytes sent;
//! 4. report: the agent's progress logs, the response, the default report with the
//!    mapping's `report` block on top ([`crate::dispatch::port::report`]), then a FAILURE goes to
//!    the DLQ and the offset completes.

pub mod client;
pub mod polling;
pub mod report;
pub mod reporter;
pub mod startup;

use std::sync::Arc;

use serde_json::{json, Value};

use super::{observe_end_to_end, Inner, Job, Pipeline};
use crate::backends::Request;
use crate::codec::BadInput;
use crate::dlq;
use crate::kafka::consumer::Ticket;
use crate::kafka::publisher::Stopped;
use crate::model::TriggerRecord;
use crate::model::{LogLevel, RunStatus, RunUpdate};
use crate::port::envelope::{self, Decoded, Kind, PortRun};
use crate::status::writer::RunWriter;
use crate::template::Context;
use report::Conclusion;
use std::time::Duration;

use crate::config::{Config, ConfigErrors, Format};
use crate::port::mapping::Mapping;

const BACKEND: &str = "WEBHOOK";

impl Pipeline {
    /// Read a `port`-format record and queue it, skip it, or reject it.
    pub(super) fn accept_port(&self, record: TriggerRecord, ticket: Ticket) {
        let inner = self.inner.clone();
        let Some(settings) = &inner.port else {
            // Validation makes `[port]` settings exist for every port-format topic.
            let bad = BadInput::InvalidEvent("no Port settings for a port-format topic".into());
            tokio::spawn(async move { inner.reject(record, ticket, None, bad).await });
            return;
        };
        let raw = record.payload.as_deref().unwrap_or_default();
        // A replay from the DLQ is an operator's decision: its signature must still
        // match, but its age does not count.
        let max_age = if self.inner.replayed(&record) {
            None
        } else {
            settings.max_age
        };
        let route = settings
            .routes
            .get(&record.topic)
            .copied()
            .unwrap_or(envelope::Route::Content);
        match envelope::decode_routed(raw, &record, &settings.secret, max_age, route) {
            Decoded::Skip { reason, why } => {
                crate::telemetry::metrics::get()
                    .port_skipped
                    .with_label_values(&[reason])
                    .inc();
                tracing::info!(source = %record.source(), reason = %why,
                    "Port message is not for an agent; skipped");
                ticket.complete();
            }
            Decoded::Bad(bad, run_id) => {
                // An unauthenticated message must not cause an authenticated write: a
                // message whose signature fails goes to the DLQ only, as the agent drops
                // it. A workflow node run is still marked FAILED, as the agent does.
                let run_id = match &bad {
                    BadInput::Signature(_) => run_id.filter(|id| id.starts_with("wfnr_")),
                    _ => run_id,
                };
                // Bounded: the ticket holds a slot of the partition window.
                tokio::spawn(async move { inner.reject(record, ticket, run_id, bad).await });
            }
            Decoded::Run(run, event) => self.submit(Job {
                record,
                ticket,
                event,
                port: Some(run),
            }),
        }
    }
}

impl Inner {
    pub(super) async fn dispatch_port(&self, job: Job, run: Arc<PortRun>) {
        let Job {
            record,
            ticket,
            event,
            ..
        } = job;
        if ticket.intake_stopped() {
            return;
        }
        let run_id = run.run_id.clone();
        if self.is_duplicate(&run_id, &record).await {
            ticket.complete();
            return;
        }
        if let Err(bad) = self.check_expiry(&event, &record) {
            return self.reject(record, ticket, Some(run_id), bad).await;
        }
        let (Some(settings), Some(reg)) = (&self.port, self.registry.get(BACKEND)) else {
            let bad = BadInput::InvalidEvent("no Port settings or WEBHOOK backend".into());
            return self.reject(record, ticket, Some(run_id), bad).await;
        };
        let mapping = &settings.mapping;
        let mut warnings = Vec::new();
        let Some(entry) = mapping.select(&Context::plain(&run.message), &mut warnings) else {
            log_warnings(&run_id, &warnings);
            if run.kind == Kind::Node {
                let bad = BadInput::NoMapping(mapping.origin.clone());
                return self.reject(record, ticket, Some(run_id), bad).await;
            }
            crate::telemetry::metrics::get()
                .port_skipped
                .with_label_values(&["no_mapping"])
                .inc();
            tracing::info!(run_id = %run_id, mapping = %mapping.origin,
                "no mapping entry is enabled for this Port message; skipped");
            ticket.complete();
            return;
        };
        let mut message = run.message.clone();
        warnings.extend(crate::port::decrypt::decrypt_paths(
            &mut message,
            &entry.fields_to_decrypt_paths,
            &settings.secret,
        ));
        let mut w = RunWriter::new(
            self.publisher.clone(),
            &self.seqs,
            &run_id,
            Some(BACKEND),
            record.source(),
        )
        .for_action(port_action(&run.message))
        .traced(crate::telemetry::trace::current());
        let prepared = mapping.request(entry, &message, &run.invocation, &mut warnings);
        let started = RunUpdate::dispatching(&run_id, BACKEND);
        // The agent's opening lines; a node run has no "Preparing" line.
        let opening = match run.kind {
            Kind::Node => vec![started, info(&run_id, report::RECEIVED_NODE)],
            _ => vec![
                started,
                info(&run_id, report::RECEIVED),
                info(&run_id, report::PREPARING),
            ],
        };
        let opening = opening.into_iter().chain(warning_updates(
            &run_id,
            &warnings,
            settings.warnings_in_run_log,
        ));
        if emit_all(&mut w, opening).await.is_err() {
            return;
        }
        if prepared.url.is_empty() {
            let c = Conclusion {
                result_log: "The request was not sent: the mapping gave no URL".into(),
                status: Some(report::Status {
                    status: Some(RunStatus::Failure),
                    summary: Some(format!(
                        "mapping ({}): url is empty and the message has no url",
                        mapping.origin
                    )),
                    link: Vec::new(),
                    external_run_id: None,
                    node_response: None,
                }),
                ..Conclusion::default()
            };
            return self
                .finish_port(record, ticket, w, c, "invalid_invocation", (0, 0))
                .await;
        }
        if w.emit_nowait(info(&run_id, report::SENDING)).await.is_err() {
            return;
        }
        let mut invocation = serde_json::Map::new();
        invocation.insert("type".into(), json!(BACKEND));
        invocation.insert("url".into(), json!(prepared.url));
        invocation.insert("method".into(), json!(prepared.method));
        invocation.insert("headers".into(), Value::Object(prepared.headers.clone()));
        invocation.insert("query".into(), Value::Object(prepared.query.clone()));
        invocation.insert("body".into(), prepared.body.clone());
        invocation.insert("synchronized".into(), json!(run.synchronized));
        let req = Request {
            run_id: run_id.clone(),
            invocation,
            event: event.clone(),
        };
        let Some(done) = self.attempt(reg, &req, &ticket, &mut w).await else {
            return;
        };
        let c = report::conclude_with(
            mapping,
            entry,
            (&run, &message),
            &prepared,
            &done.report,
            settings.detailed,
        );
        let class = done.report.error_class.unwrap_or("port_report");
        let took = (done.attempt, done.duration.as_millis() as u64);
        self.finish_port(record, ticket, w, c, class, took).await
    }

    /// Write a Port run's concluding updates, dead-letter a FAILURE, complete the offset.
    async fn finish_port(
        &self,
        record: TriggerRecord,
        ticket: Ticket,
        mut w: RunWriter,
        c: Conclusion,
        class: &str,
        (attempt, duration_ms): (u32, u64),
    ) {
        let run_id = w.run_id.clone();
        let level = if c
            .status
            .as_ref()
            .is_some_and(|s| s.status == Some(RunStatus::Failure))
        {
            LogLevel::Error
        } else {
            LogLevel::Info
        };
        let mut updates = vec![RunUpdate::log(&run_id, level, c.result_log.clone())];
        let to_port = self.port.as_ref().is_some_and(|s| s.warnings_in_run_log);
        updates.extend(warning_updates(&run_id, &c.warnings, to_port));
        if let Some(r) = &c.response {
            updates.push(info(&run_id, report::REPORTING_RESPONSE));
            updates.push(RunUpdate::response(&run_id, r.clone()));
            updates.push(info(&run_id, report::RESPONSE_REPORTED));
        }
        if let Some(s) = &c.status {
            let mut u = RunUpdate::status(&run_id, s.status.unwrap_or(RunStatus::InProgress));
            u.summary.clone_from(&s.summary);
            u.link = (!s.link.is_empty()).then(|| s.link.clone());
            u.external_run_id.clone_from(&s.external_run_id);
            u.response.clone_from(&s.node_response);
            if attempt > 0 {
                u.attempt = Some(attempt);
                u.duration_ms = Some(duration_ms);
            }
            updates.push(u);
        }
        if c.finished {
            let last = if run_id.starts_with("wfnr_") {
                report::FINISHED_NODE
            } else {
                report::FINISHED
            };
            updates.push(info(&run_id, last));
        }
        if emit_all(&mut w, updates).await.is_err() || w.settle().await.is_err() {
            return;
        }
        if c.status.as_ref().is_some_and(|s| s.status.is_some()) {
            observe_end_to_end(BACKEND, &record);
        }
        let still_running =
            !c.failed() && attempt > 0 && c.status.as_ref().is_none_or(|s| s.status.is_none());
        if still_running && Box::pin(self.watcher.time_limit(w)).await.is_err() {
            return; // stopping: the event is redelivered
        }
        if c.failed() {
            let summary = c
                .status
                .as_ref()
                .and_then(|s| s.summary.clone())
                .unwrap_or_else(|| c.result_log.clone());
            let rec = dlq::record(&record, &summary, class, attempt);
            if self.publisher.send_dlq(&rec).await.is_err() {
                return;
            }
        }
        ticket.complete();
    }
}

fn info(run_id: &str, message: &str) -> RunUpdate {
    RunUpdate::log(run_id, LogLevel::Info, message)
}

async fn emit_all(
    w: &mut RunWriter,
    updates: impl IntoIterator<Item = RunUpdate>,
) -> Result<(), Stopped> {
    for u in updates {
        w.emit_nowait(u).await?;
    }
    Ok(())
}

/// Mapping warnings: logged in full (as the agent logs them), and as WARN run updates
/// that name the field only, since a jq error can quote the (decrypted) values it ran on.
fn warning_updates(run_id: &str, warnings: &[String], as_updates: bool) -> Vec<RunUpdate> {
    log_warnings(run_id, warnings);
    if !as_updates {
        return Vec::new();
    }
    warnings
        .iter()
        .map(|warning| {
            let field = warning.split(": ").next().unwrap_or(warning);
            let line = if warning.starts_with("fieldsToDecryptPaths") {
                format!("mapping: {warning}")
            } else {
                format!("mapping: {field}: evaluated to null (see switchyard's log)")
            };
            RunUpdate::log(run_id, LogLevel::Warn, line)
        })
        .collect()
}

fn log_warnings(run_id: &str, warnings: &[String]) {
    for warning in warnings {
        tracing::warn!(run_id, warning = %warning, "Port mapping");
    }
}

/// The action identifier of a Port run message: `payload.action.identifier`, else the
/// message's `action` when it is a string.
fn port_action(message: &Value) -> Option<String> {
    message
        .pointer("/payload/action/identifier")
        .or_else(|| message.get("action"))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

/// What the dispatcher needs to handle `port`-format topics.
pub struct Settings {
    pub mapping: Mapping,
    /// The client secret: verifies signatures and decrypts `fieldsToDecryptPaths`.
    pub secret: String,
    /// Oldest signature accepted (`None`: any).
    pub max_age: Option<Duration>,
    /// Response texts in run logs and summaries (`DETAILED_LOGGING`).
    pub detailed: bool,
    /// Mapping warnings become WARN run logs too (else stdout only, as the agent).
    pub warnings_in_run_log: bool,
    /// Port mode routes by topic, as the agent: the runs topic and the change log.
    /// Other topics (and every topic outside Port mode) route by content.
    pub routes: std::collections::HashMap<String, envelope::Route>,
}

impl Settings {
    /// The settings of a configuration that consumes a `port`-format topic, else `None`.
    pub fn from_config(cfg: &Config) -> Result<Option<Settings>, ConfigErrors> {
        if !cfg.input_topics().iter().any(|(_, f)| *f == Format::Port) {
            return Ok(None);
        }
        let secret = cfg.port_secret().ok_or_else(|| {
            ConfigErrors(vec![
                "port.client_secret: the port input format needs it".into()
            ])
        })?;
        let mapping = match &cfg.port.mapping_file {
            Some(path) => {
                tracing::info!(mapping = %path, "Port payload mapping read from the file");
                Mapping::load(std::path::Path::new(path), cfg.port.strict_mapping)
                    .map_err(ConfigErrors)?
            }
            None => {
                tracing::info!(
                    "Port payload mapping: the agent's built-in default (no \
                     CONTROL_THE_PAYLOAD_CONFIG_PATH, no ./control_the_payload_config.json)"
                );
                Mapping::builtin()
            }
        };
        let age = cfg.port.signature_max_age;
        Ok(Some(Settings {
            mapping,
            secret,
            max_age: (!age.is_zero()).then_some(age),
            detailed: cfg.port.detailed_logging,
            warnings_in_run_log: cfg.port.mapping_warnings_in_run_log,
            routes: routes(cfg),
        }))
    }
}

/// Port mode's routes: `kafka.triggers_topic` is the runs topic, every other `port`-format
/// input a change log (the agent consumes exactly these two).
fn routes(cfg: &Config) -> std::collections::HashMap<String, envelope::Route> {
    if !cfg.agent_mode() {
        return Default::default();
    }
    cfg.input_topics()
        .into_iter()
        .filter(|(_, f)| *f == Format::Port)
        .map(|(t, _)| {
            let route = if t == cfg.kafka.triggers_topic {
                envelope::Route::Runs
            } else {
                envelope::Route::ChangeLog
            };
            (t, route)
        })
        .collect()
}
