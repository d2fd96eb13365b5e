//! switchyard: a Kafka-native dispatcher for self-service actions and automations.
//!
//! The flow, in module order: a trigger record arrives through [`kafka::consumer`], is
//! decoded by [`codec`] into a [`model::TriggerEvent`], rendered by [`template`], ordered
//! by [`lanes`] and dispatched by [`dispatch`] to a [`backends`] backend through the
//! reliability layers of [`pool`]. Every result becomes a run update written by
//! [`status::writer`]; remote runs are followed by [`watch`]; rejects go to [`dlq`].
//! [`app`] wires it together; [`api`] and [`telemetry`] serve the status API, metrics and
//! health. See `CONTRIBUTING.md` for the layout and `DESIGN.md` for the contracts.

pub mod actions;
pub mod api;
pub mod app;
pub mod automations;
pub mod backends;
pub mod backoff;
pub mod board;
pub mod codec;
pub mod config;
pub mod dispatch;
pub mod dlq;
pub mod kafka;
pub mod lanes;
pub mod model;
pub mod net;
pub mod policy;
pub mod pool;
pub mod port;
pub mod secrets;
pub mod status;
pub mod telemetry;
pub mod template;
pub mod watch;

/// Unit tests that change the process environment hold this lock for their whole body,
/// so that no two of them change it at the same time and none reads a variable another
/// is setting (the test harness runs tests on parallel threads of one process).
#[cfg(test)]
pub(crate) fn env_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    // A test that failed while holding it leaves it poisoned; the environment is fine.
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}
