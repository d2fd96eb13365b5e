//! Port compatibility: switchyard as a drop-in replacement for Port's execution agent.
//!
//! - [`json`]: JSON text as JavaScript writes it (what Port signs);
//! - [`signature`]: verifying Port's message signatures and signing outgoing requests;
//! - [`decrypt`]: `fieldsToDecryptPaths` (AES-256-GCM secret inputs);
//! - [`mapping`]: the agent's payload mapping file and its built-in default;
//! - [`envelope`]: reading records of `port`-format topics;
//!
//! These are Port's formats only. The Port path of the dispatch, what a Port run reports
//! and the reporter to Port's API are in `dispatch/port/`.

pub mod decrypt;
pub mod envelope;
pub mod json;
pub mod mapping;
pub mod signature;
