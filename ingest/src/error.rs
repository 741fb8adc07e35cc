//! Why ingest could not start, or did not stop cleanly.

use schemas::config::ConfigError;

use crate::http::serve::TlsError;

/// Why ingest could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    /// A configuration value is invalid (found before anything started).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The certificate or key for HTTPS cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The listen address cannot be bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// `ingest.listen`.
        addr: String,
        /// The operating system's reason.
        #[source]
        source: std::io::Error,
    },
    /// A Kafka client operation failed.
    #[error(transparent)]
    Kafka(#[from] kafka::Error),
}

impl IngestError {
    /// Whether the configuration is at fault (exit code 2) rather than the
    /// world at run time (exit code 1).
    pub fn is_config(&self) -> bool {
        matches!(self, IngestError::Config(_) | IngestError::Tls(_))
    }
}
