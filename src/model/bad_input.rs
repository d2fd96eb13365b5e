//! Why an input could not be dispatched.

/// Why an input could not be dispatched. Every variant is a permanent failure: the run
/// (when its id is known) gets a FAILURE update and the record goes to the DLQ.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadInput {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("missing run id: {0}")]
    MissingRunId(String),
    #[error("invalid trigger event: {0}")]
    InvalidEvent(String),
    #[error("unknown invocationMethod.type {0}; known types: {1}")]
    UnknownBackend(String, String),
    #[error("template error in {0}")]
    Template(String),
    #[error("template budget exceeded in {0}")]
    TemplateBudget(String),
    #[error("{0}")]
    SecretScope(String),
    #[error("the record is too large: {0}")]
    TooLarge(String),
    #[error("internal error: {0}")]
    Internal(String),
    #[error("expired: {0}")]
    Expired(String),
    #[error("unreadable Avro record: {0}")]
    Avro(String),
    #[error("Port signature rejected: {0}")]
    Signature(String),
    #[error("no entry of the payload mapping ({0}) is enabled for this message")]
    NoMapping(String),
}

impl BadInput {
    /// Closed set of error classes, used in the `switchyard-error-class` DLQ header and
    /// as a metric label.
    pub fn class(&self) -> &'static str {
        match self {
            BadInput::MalformedJson(_) => "malformed_json",
            BadInput::MissingRunId(_) => "missing_run_id",
            BadInput::InvalidEvent(_) => "invalid_event",
            BadInput::UnknownBackend(..) => "unknown_backend",
            BadInput::Template(_) => "template_error",
            BadInput::TemplateBudget(_) => "template_budget",
            BadInput::SecretScope(_) => "secret_scope",
            BadInput::TooLarge(_) => "too_large",
            BadInput::Internal(_) => "internal",
            BadInput::Expired(_) => "expired",
            BadInput::Avro(_) => "avro",
            BadInput::Signature(_) => "signature",
            BadInput::NoMapping(_) => "port_mapping",
        }
    }
}
