//! What the process tells its operators: [`metrics`], [`trace`] context and
//! [`readiness`]. Logging is set up by [`crate::app::init_logging`].

pub mod guard;
pub mod metrics;
pub mod readiness;
pub mod trace;

pub use guard::scopeguard;
