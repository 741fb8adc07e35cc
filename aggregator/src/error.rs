//! Aggregator errors.

use schemas::config::ConfigError;

/// Why an aggregator could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// A configuration value is invalid (found before connecting).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Kafka client could not be created or subscribed.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
    /// The database refused to connect or migrate, for a reason a retry cannot fix.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// The partials topic could not be created.
    #[error("cannot set up the partials topic: {0}")]
    Topic(String),
}

/// Transient when the broker or database may come back; permanent for
/// configuration and refused topics.
impl retry::Classify for AggregatorError {
    fn class(&self) -> retry::Class {
        match self {
            AggregatorError::Kafka(e) => e.class(),
            AggregatorError::Store(e) => e.class(),
            AggregatorError::Config(_) | AggregatorError::Topic(_) => retry::Class::Permanent,
        }
    }
}
