//! Worker errors, with the broker, topic or partition they concern.

use schemas::config::ConfigError;
use store::StoreError;

/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration value is invalid (found before connecting).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Kafka operation failed, or a topic could not be created or grown.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// The database failed in a way a retry cannot fix.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The consumer thread panicked.
    #[error("consumer thread failed: {0}")]
    Thread(String),
}

/// Transient when the broker or database may come back; permanent for
/// configuration errors, refused topics and a failed consumer thread.
impl retry::Classify for WorkerError {
    fn class(&self) -> retry::Class {
        match self {
            WorkerError::Store(e) => e.class(),
            WorkerError::Kafka(e) => e.class(),
            WorkerError::Config(_) | WorkerError::Thread(_) => retry::Class::Permanent,
        }
    }
}
