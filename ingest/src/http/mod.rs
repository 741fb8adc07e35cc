//! What every HTTP route shares: the service's state (the producer, the
//! tokens and who may do what, admission and body limits), the one shape of
//! a JSON answer and a refusal ([`respond`]), and the server loop with its
//! TLS, connection bounds and deadlines ([`serve`]). The routes live beside
//! it ([`crate::orders`], [`crate::imports`], [`crate::totals`]) and depend
//! on it, never the other way round.

pub(crate) mod respond;
pub mod serve;

pub use respond::ApiError;
use respond::Refusal;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::http::{header, HeaderMap, StatusCode};
use http_body_util::LengthLimitError;
use kafka::FutureProducer;
use rdkafka::error::KafkaError;
use rdkafka::producer::Producer;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::IngestConfig;
use crate::database::Database;
use crate::metrics::IN_PROGRESS;
use crate::notifications::ImportQueue;

/// Shared state of the service.
pub struct Ingest {
    /// Replaced by a fresh idempotent session after a delivery failure.
    pub(crate) producer: RwLock<FutureProducer>,
    pub(crate) client: rdkafka::ClientConfig,
    /// A delivery failed: start a new producer session once the broker answers.
    pub(crate) stale: AtomicBool,
    pub(crate) topic: String,
    /// Write tokens (`ingest.tokens`): orders and imports.
    pub(crate) tokens: Vec<Vec<u8>>,
    /// Read tokens (`ingest.read_tokens`): the totals API.
    pub(crate) read_tokens: Vec<Vec<u8>>,
    pub(crate) max_body_bytes: usize,
    pub(crate) max_message_bytes: usize,
    pub(crate) body_timeout: Duration,
    pub(crate) ack_timeout: Duration,
    /// One permit per request in progress.
    pub(crate) slots: Arc<Semaphore>,
    pub(crate) max_concurrent_requests: usize,
    pub(crate) broker_up: AtomicBool,
    pub(crate) imports: Option<Arc<dyn ImportQueue>>,
    /// The aggregators' database, which the totals API reads.
    pub(crate) database: Option<Database>,
}

/// What a request's bearer token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// No token, or an unknown one.
    Denied,
    /// A write token: orders and imports.
    Write,
    /// A read token: the totals API.
    Read,
}

impl Ingest {
    /// The service state, with its idempotent producer.
    ///
    /// Fails when librdkafka rejects the producer configuration.
    ///
    /// `imports` queues the imports `POST /v1/imports` asks for; without
    /// it that route answers 503. The totals API reads `ingest.database_url`.
    pub fn new(
        config: &IngestConfig,
        imports: Option<Arc<dyn ImportQueue>>,
    ) -> Result<Arc<Ingest>, KafkaError> {
        crate::metrics::init();
        let client = kafka::producer::ingest_config(
            &config.brokers,
            config.queue_max_messages,
            config.ack_timeout_ms,
            &config.kafka,
        );
        Ok(Arc::new(Ingest {
            producer: RwLock::new(client.create_with_context(kafka::Logged)?),
            client,
            stale: AtomicBool::new(false),
            topic: config.orders_topic.clone(),
            tokens: IngestConfig::list(&config.tokens)
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            read_tokens: IngestConfig::list(&config.read_tokens)
                .into_iter()
                .map(String::into_bytes)
                .collect(),
            max_body_bytes: config.max_body_bytes,
            max_message_bytes: config.max_message_bytes(),
            body_timeout: Duration::from_millis(config.body_timeout_ms),
            ack_timeout: Duration::from_millis(config.ack_timeout_ms),
            slots: Arc::new(Semaphore::new(config.max_concurrent_requests)),
            max_concurrent_requests: config.max_concurrent_requests,
            broker_up: AtomicBool::new(false),
            imports,
            database: (!config.database_url.is_empty())
                .then(|| Database::new(config.database_url.clone())),
        }))
    }

    /// True while the last metadata request to the broker succeeded.
    pub fn ready(&self) -> bool {
        self.broker_up.load(Ordering::Relaxed)
    }

    pub(crate) fn producer(&self) -> FutureProducer {
        self.producer.read().expect("producer lock").clone()
    }

    /// Asks the broker for the topic's metadata every `every`, recording
    /// whether it answered, until `stop`. Once the broker answers
    /// again after a failed delivery, requests move to a fresh producer:
    /// the old idempotent session's sequence numbers may no longer match
    /// what the broker kept (tansu 0.6.0 even stops serving on them).
    pub async fn watch_broker(self: Arc<Self>, every: Duration, stop: CancellationToken) {
        loop {
            let producer = self.producer();
            let topic = self.topic.clone();
            let up = tokio::task::spawn_blocking(move || {
                producer
                    .client()
                    .fetch_metadata(Some(&topic), Duration::from_secs(2))
                    .is_ok()
            })
            .await
            .unwrap_or(false);
            if up && self.stale.swap(false, Ordering::Relaxed) {
                match self.client.create_with_context(kafka::Logged) {
                    Ok(fresh) => {
                        *self.producer.write().expect("producer lock") = fresh;
                        tracing::info!("Started a fresh producer session after failed deliveries.");
                    }
                    Err(error) => {
                        self.stale.store(true, Ordering::Relaxed);
                        tracing::warn!(%error, "Could not create a fresh producer; keeping the old one.");
                    }
                }
            }
            if up != self.broker_up.swap(up, Ordering::Relaxed) {
                tracing::info!(broker_up = up, "Broker reachability changed.");
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }

    /// Waits up to `timeout` for every produced event to be acknowledged.
    pub fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.producer().flush(timeout)
    }

    /// The database the totals API reads, if `ingest.database_url` is set.
    pub(crate) fn database(&self) -> Option<&Database> {
        self.database.as_ref()
    }

    /// What the `Authorization: Bearer …` header may do: checked in
    /// constant time against every configured token, write and read (no
    /// early exit, no length shortcut).
    pub(crate) fn access(&self, headers: &HeaderMap) -> Access {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "))
        else {
            return Access::Denied;
        };
        let any = |tokens: &[Vec<u8>]| {
            tokens.iter().fold(0u8, |any, token| {
                any | u8::from(constant_time_eq(given, token))
            })
        };
        let (write, read) = (any(&self.tokens), any(&self.read_tokens));
        match (write, read) {
            (1, _) => Access::Write,
            (_, 1) => Access::Read,
            _ => Access::Denied,
        }
    }

    /// The refusal of a request to write (orders, imports) by its token:
    /// 401 without a valid one, 403 for a read token.
    pub(crate) fn may_write(&self, headers: &HeaderMap) -> Result<(), Refusal> {
        match self.access(headers) {
            Access::Write => Ok(()),
            Access::Read => Err(Refusal::new(
                StatusCode::FORBIDDEN,
                "this is a read token (ingest.read_tokens); writing takes a write token (ingest.tokens)",
            )),
            Access::Denied => Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "a valid `Authorization: Bearer <token>` header is required",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut difference = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        difference |= u64::from(x ^ y);
    }
    difference == 0
}

/// One of `max_concurrent_requests` slots, held while a request is handled.
pub(crate) struct Slot(
    #[allow(dead_code, reason = "held for its drop")] tokio::sync::OwnedSemaphorePermit,
);

impl Drop for Slot {
    fn drop(&mut self) {
        IN_PROGRESS.dec();
    }
}

impl Ingest {
    /// A slot for one request, or the 503 that sheds it.
    pub(crate) fn admit(&self) -> Result<Slot, Refusal> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                IN_PROGRESS.inc();
                Ok(Slot(permit))
            }
            Err(_) => Err(Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "{} requests are in progress, the most ingest.max_concurrent_requests allows; retry shortly",
                    self.max_concurrent_requests
                ),
            )),
        }
    }

    /// The whole body, within the size and time limits; or the refusal.
    pub(crate) async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<axum::body::Bytes, Refusal> {
        let too_large = || {
            Refusal::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {} bytes", self.max_body_bytes),
            )
        };
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
        if declared.is_some_and(|length| length > self.max_body_bytes) {
            return Err(too_large());
        }
        match tokio::time::timeout(self.body_timeout, to_bytes(body, self.max_body_bytes)).await {
            Ok(Ok(bytes)) => Ok(bytes),
            Ok(Err(error))
                if std::error::Error::source(&error)
                    .is_some_and(|e| e.is::<LengthLimitError>()) =>
            {
                Err(too_large())
            }
            // The connection broke or the chunked encoding was malformed.
            Ok(Err(error)) => Err(Refusal::new(
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {error}"),
            )),
            Err(_) => Err(Refusal::new(
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms (ingest.body_timeout_ms)",
                    self.body_timeout.as_millis()
                ),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare_in_constant_time_and_exactly() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret-longer"));
        assert!(!constant_time_eq(b"", b"x"));
    }
}
