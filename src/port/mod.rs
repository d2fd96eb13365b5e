//! Port compatibility: switchyard as a drop-in replacement for Port's execution agent.
//!
//! - [`json`]: JSON text as JavaScript writes it (what Port signs);
//! - [`signature`]: verifying Port's message signatures and signing outgoing requests;
//! - [`decrypt`]: `fieldsToDecryptPaths` (AES-256-GCM secret inputs);
//! - [`mapping`]: the agent's payload mapping file and its built-in default;
//! - [`envelope`]: reading records of `port`-format topics;
//! - [`report`]: what a Port run reports once its request is answered;
//! - [`client`] and [`reporter`]: reporting Port runs to Port's API from the status topic.
//!
//! The dispatch itself is [`crate::pipeline`]'s (`pipeline/port.rs`).

pub mod client;
pub mod decrypt;
pub mod envelope;
pub mod json;
pub mod mapping;
pub mod report;
pub mod reporter;
pub mod signature;

use std::time::Duration;

use crate::config::{Config, ConfigErrors, Format};
use mapping::Mapping;

/// What the dispatcher needs to handle `port`-format topics.
pub struct Settings {
    pub mapping: Mapping,
    /// The client secret: verifies signatures and decrypts `fieldsToDecryptPaths`.
    pub secret: String,
    /// Oldest signature accepted (`None`: any).
    pub max_age: Option<Duration>,
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
            Some(path) => Mapping::load(std::path::Path::new(path)).map_err(ConfigErrors)?,
            None => Mapping::builtin(),
        };
        let age = cfg.port.signature_max_age;
        Ok(Some(Settings {
            mapping,
            secret,
            max_age: (!age.is_zero()).then_some(age),
        }))
    }
}
