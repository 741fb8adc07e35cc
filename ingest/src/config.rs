//! `[ingest]` settings, their defaults and validation.

use std::collections::BTreeMap;

use schemas::config::{self as check, ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// `[ingest]`: the settings of `tally ingest`, the HTTP front door. Every
/// field has a default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct IngestConfig {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// Topic valid events go to.
    pub orders_topic: String,
    /// Address the API listens on.
    pub listen: String,
    /// Accepted bearer tokens, comma-separated. Prefer `TALLY_INGEST_TOKENS`
    /// over a file. Empty refuses every request.
    pub tokens: String,
    /// Bearer tokens of the totals API, comma-separated: they may read
    /// totals and nothing else; write tokens may not read. Prefer
    /// `TALLY_INGEST_READ_TOKENS` over a file. Needs `database_url`.
    pub read_tokens: String,
    /// Largest accepted request body.
    pub max_body_bytes: usize,
    /// Messages the producer may hold unacknowledged before requests get 503.
    pub queue_max_messages: u32,
    /// How long a request waits for the broker's acknowledgements.
    pub ack_timeout_ms: u64,
    /// The aggregators' database (`postgres://…` or `sqlite://PATH`), where
    /// `POST /v1/imports` queues import jobs and which the totals API reads.
    /// Empty: those routes answer 503.
    pub database_url: String,
    /// Extra librdkafka properties.
    pub kafka: BTreeMap<String, String>,
    /// PEM certificate chain: with `tls_key`, the API is served over HTTPS.
    pub tls_cert: String,
    /// PEM private key of `tls_cert`.
    pub tls_key: String,
    /// How long a connection may take to send a request's headers (and its
    /// TLS handshake) before it is closed.
    pub header_timeout_ms: u64,
    /// How long a request may take to send its body before it gets 408.
    pub body_timeout_ms: u64,
    /// Requests handled at once; more get 503 with `Retry-After`.
    pub max_concurrent_requests: usize,
    /// Open connections; more wait in the listen backlog.
    pub max_connections: usize,
}

impl Default for IngestConfig {
    fn default() -> IngestConfig {
        IngestConfig {
            brokers: "127.0.0.1:9092".into(),
            orders_topic: "orders".into(),
            listen: "127.0.0.1:8080".into(),
            tokens: String::new(),
            read_tokens: String::new(),
            max_body_bytes: 5 * 1024 * 1024,
            queue_max_messages: 100_000,
            ack_timeout_ms: 10_000,
            database_url: String::new(),
            kafka: BTreeMap::new(),
            tls_cert: String::new(),
            tls_key: String::new(),
            header_timeout_ms: 10_000,
            body_timeout_ms: 30_000,
            max_concurrent_requests: 256,
            max_connections: 4_096,
        }
    }
}

impl IngestConfig {
    /// The producer's `message.max.bytes`: `ingest.kafka` or librdkafka's default.
    /// An unparsable value counts as 0, which `validate` refuses.
    pub(crate) fn max_message_bytes(&self) -> usize {
        self.kafka
            .get("message.max.bytes")
            .map_or(DEFAULT_MESSAGE_MAX_BYTES, |v| v.trim().parse().unwrap_or(0))
    }

    /// The tokens of a comma-separated list.
    pub(crate) fn list(tokens: &str) -> Vec<String> {
        tokens
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

impl Validate for IngestConfig {
    /// Checks every field; the error names the first bad one as `ingest.<field>`.
    fn validate(&self) -> Result<(), ConfigError> {
        check::brokers("ingest.brokers", &self.brokers)?;
        check::kafka_name("ingest.orders_topic", &self.orders_topic)?;
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(ConfigError::new(
                "ingest.listen",
                &self.listen,
                "must be host:port, e.g. 0.0.0.0:8080",
            ));
        }
        let (write, read) = (Self::list(&self.tokens), Self::list(&self.read_tokens));
        if write.is_empty() {
            return Err(ConfigError::new(
                "ingest.tokens",
                "",
                "needs at least one bearer token (TALLY_INGEST_TOKENS)",
            ));
        }
        if read.iter().any(|token| write.contains(token)) {
            return Err(ConfigError::new(
                "ingest.read_tokens",
                "<not shown>",
                "holds a token that is also in ingest.tokens; a token either writes or reads",
            ));
        }
        if !read.is_empty() && self.database_url.is_empty() {
            return Err(ConfigError::new(
                "ingest.read_tokens",
                "<not shown>",
                "needs ingest.database_url (TALLY_DATABASE_URL): the totals API reads the aggregators' database",
            ));
        }
        check::in_range(
            "ingest.max_body_bytes",
            self.max_body_bytes,
            1_024,
            256 * 1024 * 1024,
        )?;
        check::in_range(
            "ingest.queue_max_messages",
            self.queue_max_messages,
            100,
            10_000_000,
        )?;
        check::in_range("ingest.ack_timeout_ms", self.ack_timeout_ms, 100, 600_000)?;
        if !self.database_url.is_empty() {
            check::database_url("ingest.database_url", &self.database_url)?;
        }
        check::in_range(
            "ingest.header_timeout_ms",
            self.header_timeout_ms,
            100,
            600_000,
        )?;
        check::in_range(
            "ingest.body_timeout_ms",
            self.body_timeout_ms,
            100,
            3_600_000,
        )?;
        check::in_range(
            "ingest.max_concurrent_requests",
            self.max_concurrent_requests,
            1,
            100_000,
        )?;
        check::in_range("ingest.max_connections", self.max_connections, 1, 1_000_000)?;
        match (self.tls_cert.is_empty(), self.tls_key.is_empty()) {
            (true, false) => {
                return Err(ConfigError::new(
                    "ingest.tls_cert",
                    "",
                    "must be set with ingest.tls_key",
                ))
            }
            (false, true) => {
                return Err(ConfigError::new(
                    "ingest.tls_key",
                    "",
                    "must be set with ingest.tls_cert",
                ))
            }
            _ => {}
        }
        let max_message = self.max_message_bytes();
        check::in_range(
            "ingest.kafka.message.max.bytes",
            max_message,
            1_000,
            1_000_000_000,
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_name_the_field() {
        let config = IngestConfig::default();
        assert_eq!(config.validate().unwrap_err().field, "ingest.tokens");
        let config = IngestConfig {
            tokens: "a".into(),
            listen: "nowhere".into(),
            ..IngestConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().field, "ingest.listen");
        let config = IngestConfig {
            tokens: "a, b".into(),
            read_tokens: "c,b".into(),
            database_url: "sqlite://tally.db".into(),
            ..IngestConfig::default()
        };
        let error = config.validate().unwrap_err();
        assert_eq!(error.field, "ingest.read_tokens");
        assert!(!error.to_string().contains("c,b"), "{error}");
        let config = IngestConfig {
            read_tokens: "c".into(),
            database_url: String::new(),
            ..config
        };
        assert!(config
            .validate()
            .unwrap_err()
            .to_string()
            .contains("ingest.database_url"));
    }
}
