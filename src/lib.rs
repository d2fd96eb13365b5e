//! switchyard: a Kafka-native dispatcher for self-service actions and automations.
//!
//! Trigger events flow from the triggers topic through [`pipeline`] (decode → render →
//! route → backend pool) to run updates on the status topic. See `README.md` and
//! `DESIGN.md` for the contracts and delivery rules.

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
pub mod pool;
pub mod port;
pub mod protect;
pub mod replay;
pub mod router;
pub mod runs;
pub mod runview;
pub mod server;
pub mod telemetry;
pub mod template;
pub mod trace;
pub mod trigger;
pub mod util;
pub mod watch;
