//! switchyard: a Kafka-native dispatcher for self-service actions and automations.
//!
//! Trigger events flow from the triggers topic through [`pipeline`] (decode → render →
//! route → backend pool) to run updates on the status topic. See `README.md` and
//! `DESIGN.md` for the contracts and delivery rules.

pub mod actions;
pub mod api;
pub mod app;
pub mod avro;
pub mod backends;
pub mod bench;
pub mod config;
pub mod decode;
pub mod demo;
pub mod display;
pub mod dlq;
pub mod kafka;
pub mod ledger;
pub mod metrics;
pub mod model;
pub mod pipeline;
pub mod policy;
pub mod pool;
pub mod port;
pub mod protect;
pub mod replay;
pub mod router;
pub mod runs;
pub mod runview;
pub mod sandbox;
pub mod secrets;
pub mod server;
pub mod telemetry;
pub mod template;
pub mod trace;
pub mod trigger;
pub mod util;
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
