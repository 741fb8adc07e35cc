//! A startup check that tells a broker that is away (transient: retried) from
//! one that refuses tally's connection (permanent: a TLS certificate its CAs
//! do not trust, a wrong SASL password), so that a misconfigured service
//! stops at once with librdkafka's own explanation instead of retrying
//! forever behind a generic timeout.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::types::RDKafkaErrorCode;

/// Records the first TLS or authentication failure librdkafka reports.
#[derive(Default)]
struct Watch {
    refused: Mutex<Option<String>>,
}

impl Watch {
    fn record(&self, reason: &str) {
        self.refused.lock().expect("watch lock").get_or_insert_with(|| reason.to_owned());
    }
}

/// What librdkafka logs when a broker refuses the TLS handshake or the SASL
/// credentials.
const REFUSALS: [&str; 3] = ["SSL handshake failed", "SASL authentication error", "Authentication failed"];

impl ClientContext for Watch {
    fn log(&self, _level: RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(target: "librdkafka", facility, message, "Kafka connection check.");
        if REFUSALS.iter().any(|refusal| message.contains(refusal)) {
            self.record(message);
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if matches!(error.rdkafka_error_code(), Some(RDKafkaErrorCode::SSL | RDKafkaErrorCode::Authentication)) {
            self.record(reason);
        }
    }
}

impl ConsumerContext for Watch {}

/// Asks the brokers of `config` for metadata for up to `wait`. Returns
/// librdkafka's reason when they refused the connection itself (TLS or SASL);
/// `None` when they answered, or could not be reached at all (a broker that
/// is away is the caller's retry loop's business).
///
/// Blocks: call it from a blocking thread.
pub fn kafka_refuses(config: &ClientConfig, wait: Duration) -> Option<String> {
    let mut config = config.clone();
    config.set_log_level(RDKafkaLogLevel::Error);
    let client: BaseConsumer<Watch> = match config.create_with_context(Watch::default()) {
        Ok(client) => client,
        // A configuration librdkafka refuses is reported where the role creates its clients.
        Err(_) => return None,
    };
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if client.client().fetch_metadata(None, Duration::from_millis(500)).is_ok() {
            return None;
        }
        // rdkafka queues librdkafka's logs and errors: polling delivers them.
        let _ = client.poll(Duration::from_millis(100));
        if let Some(reason) = client.context().refused.lock().expect("watch lock").take() {
            return Some(reason);
        }
    }
    None
}
