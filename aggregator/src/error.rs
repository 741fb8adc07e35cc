//! Aggregator errors.

use rdkafka::error::KafkaError;
use schemas::config::ConfigError;

/// Why an aggregator could not start.
#[derive(Debug, thiserror::Error)]
pub enum AggregatorError {
    /// A configuration value is invalid (found before connecting).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A Kafka client could not be created or subscribed.
    #[error("Kafka {op} failed (brokers {brokers}): {source}")]
    Kafka {
        /// What the aggregator was doing.
        op: &'static str,
        /// The configured bootstrap servers.
        brokers: String,
        /// librdkafka's error.
        #[source]
        source: KafkaError,
    },
}

impl AggregatorError {
    /// True when starting again later can succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, AggregatorError::Kafka { .. })
    }
}
