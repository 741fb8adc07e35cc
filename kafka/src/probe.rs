//! A startup check that tells a broker that is away (transient: retried) from
//! one that refuses tally's connection (permanent: a TLS certificate its CAs
//! do not trust, a wrong SASL password), so that a misconfigured service
//! stops at once with librdkafka's own explanation instead of retrying
//! forever behind a generic timeout. Before that, each configured property
//! is checked on its own, so a misspelt one is named without its value.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// Records the first TLS or authentication failure librdkafka reports.
#[derive(Default)]
struct Watch {
    refused: Mutex<Option<String>>,
}

impl Watch {
    fn record(&self, reason: &str) {
        self.refused
            .lock()
            .expect("watch lock")
            .get_or_insert_with(|| reason.to_owned());
    }
}

/// What librdkafka logs when a broker refuses the TLS handshake or the SASL
/// credentials. With TLS 1.3 a broker that requires a client certificate
/// (mTLS) refuses it only after the handshake, with a TLS alert that
/// librdkafka logs as a failed receive (`ssl/tls alert bad certificate`,
/// or `tlsv13 alert certificate required` from other OpenSSL versions).
const REFUSALS: [&str; 6] = [
    "SSL handshake failed",
    "SASL authentication error",
    "Authentication failed",
    "ssl/tls alert",
    "tlsv13 alert",
    "sslv3 alert",
];

impl ClientContext for Watch {
    fn log(&self, _level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", facility, message, "Kafka connection check.");
        if REFUSALS.iter().any(|refusal| message.contains(refusal)) {
            self.record(message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(
            error.rdkafka_error_code(),
            Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)
        ) {
            self.record(reason);
        }
    }
}

impl ConsumerContext for Watch {}

/// The first of `properties` that librdkafka refuses: its key and
/// librdkafka's reason, with the value taken out of the reason.
///
/// rdkafka's own error for a refused property repeats the value, and the
/// value may be a password (`sasl.pasword=…`, misspelt), so roles check
/// their properties here before they create any client.
pub fn property_refused(properties: &BTreeMap<String, String>) -> Option<(String, String)> {
    properties.iter().find_map(|(key, value)| {
        let mut one = crate::client::empty();
        one.set(key, value);
        match one.create_native_config() {
            Err(KafkaError::ClientConfig(_, reason, _, _)) if value.is_empty() => {
                Some((key.clone(), reason))
            }
            Err(KafkaError::ClientConfig(_, reason, _, _)) => Some((
                key.clone(),
                reason.replace(value.as_str(), "<value not shown>"),
            )),
            _ => None,
        }
    })
}

/// Asks the brokers of `config` for metadata for up to `wait`. Returns
/// librdkafka's reason when they refused the connection itself (TLS or SASL);
/// `None` when they answered, or could not be reached at all (a broker that
/// is away is the caller's retry loop's business).
///
/// Blocks: call it from a blocking thread.
pub fn refuses(config: &ClientConfig, wait: Duration) -> Option<String> {
    match reach(config, wait) {
        Reach::Refused(reason) => Some(reason),
        Reach::Answered { .. } | Reach::Unusable(_) | Reach::Unreachable => None,
    }
}

/// What the brokers of a configuration did when asked for metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reach {
    /// They answered: the cluster's broker and topic counts.
    Answered {
        /// Brokers in the cluster's metadata.
        brokers: usize,
        /// Topics the cluster has.
        topics: usize,
    },
    /// They refused the connection (TLS or SASL): librdkafka's reason.
    Refused(String),
    /// No client can be made of the configuration (a certificate file that
    /// cannot be read, properties that conflict): librdkafka's reason.
    Unusable(String),
    /// Nothing answered in time, or the configuration cannot make a client.
    Unreachable,
}

/// Asks the brokers of `config` for metadata for up to `wait`, and says
/// whether they answered, refused or were not reached.
///
/// Blocks: call it from a blocking thread.
pub fn reach(config: &ClientConfig, wait: Duration) -> Reach {
    let mut config = config.clone();
    config.set_log_level(RDKafkaLogLevel::Error);
    let client: BaseConsumer<Watch> = match config.create_with_context(Watch::default()) {
        Ok(client) => client,
        Err(error) => return Reach::Unusable(error.to_string()),
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Ok(metadata) = client
            .client()
            .fetch_metadata(None, Duration::from_millis(500))
        {
            return Reach::Answered {
                brokers: metadata.brokers().len(),
                topics: metadata.topics().len(),
            };
        }
        // rdkafka queues librdkafka's logs and errors: polling delivers them.
        let _ = client.poll(Duration::from_millis(100));
        if let Some(reason) = client.context().refused.lock().expect("watch lock").take() {
            return Reach::Refused(reason);
        }
    }
    Reach::Unreachable
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_property_is_named_without_its_value() {
        let properties =
            |key: &str, value: &str| BTreeMap::from([(key.to_owned(), value.to_owned())]);
        let (key, reason) =
            property_refused(&properties("sasl.pasword", "hunter2-secret")).unwrap();
        assert_eq!(key, "sasl.pasword");
        assert!(
            reason.contains("No such configuration property") && !reason.contains("hunter2"),
            "{reason}"
        );
        let (_, reason) = property_refused(&properties("security.protocol", "TLS-please")).unwrap();
        assert!(!reason.contains("TLS-please"), "{reason}");
        assert_eq!(
            property_refused(&properties("sasl.password", "hunter2-secret")),
            None
        );
    }
}
