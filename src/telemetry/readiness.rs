//! Readiness facts that the parts of the process report and `/readyz` reads.

use std::sync::atomic::{AtomicBool, Ordering};

static JOINED: AtomicBool = AtomicBool::new(false);

/// The consumer has joined its group (called on every assignment, even an empty one).
pub fn mark_joined() {
    JOINED.store(true, Ordering::Relaxed);
}

/// Whether the consumer has joined its group since the process started.
pub fn joined() -> bool {
    JOINED.load(Ordering::Relaxed)
}
