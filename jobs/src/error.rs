/// Failures of the queue and the stores, split by what the caller can do about them.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backing service cannot be reached or refused the operation; worth retrying later
    /// (the API answers 503).
    #[error("{service} unavailable: {message}")]
    Unavailable {
        service: &'static str,
        message: String,
    },
    /// Stored data that does not decode; retrying will not help.
    #[error("corrupt {what}: {message}")]
    Corrupt { what: &'static str, message: String },
    /// The service refuses this deployment's settings (a queue that exists with another type
    /// or other arguments); retrying will not help, the operator must act as the message says.
    #[error("{service} refuses the configuration: {message}")]
    Misconfigured {
        service: &'static str,
        message: String,
    },
}

impl StoreError {
    pub fn unavailable(service: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Unavailable {
            service,
            message: err.to_string(),
        }
    }

    /// Whether trying again later may succeed. A corrupt record stays corrupt: whoever meets
    /// one must settle the job (fail it, dead-letter its message), never retry it as if a
    /// service were down.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable { .. })
    }

    pub fn misconfigured(service: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Misconfigured {
            service,
            message: err.to_string(),
        }
    }

    pub fn corrupt(what: &'static str, err: impl std::fmt::Display) -> Self {
        StoreError::Corrupt {
            what,
            message: err.to_string(),
        }
    }
}
