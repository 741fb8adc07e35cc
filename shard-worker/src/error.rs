//! Worker errors, with the broker, topic or partition they concern.

use rdkafka::error::KafkaError;
use schemas::config::ConfigError;
use store::StoreError;

/// Why a worker could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// A configuration value is invalid (found before connecting).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Kafka client operation failed.
    #[error("Kafka {op} failed (brokers {brokers}): {source}")]
    Kafka {
        /// What the worker was doing.
        op: &'static str,
        /// The configured bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
    /// A topic could not be created.
    #[error("could not create topic {topic:?}: {reason}")]
    Topic {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
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
            WorkerError::Kafka { source, .. } => source.class(),
            WorkerError::Config(_) | WorkerError::Topic { .. } | WorkerError::Thread(_) => {
                retry::Class::Permanent
            }
        }
    }
}
