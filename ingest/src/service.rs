//! `tally ingest`: the HTTP front door. `POST /v1/orders` takes a JSON array
//! or NDJSON of order events, validates each one, produces the valid ones to
//! `orders` (keyed by merchant, idempotent, `acks=all`) and answers only when
//! the broker has acknowledged every one of them.
//!
//! Status codes:
//!
//! | status | when |
//! | --- | --- |
//! | 200 | every event accepted and durable |
//! | 207 | some accepted (durable), some rejected: the body lists each rejection |
//! | 422 | every event rejected: nothing was produced |
//! | 400 | the body is empty, not UTF-8, or not a JSON array / NDJSON |
//! | 401 | no bearer token, or an unknown one |
//! | 403 | a read token (`ingest.read_tokens`): writing takes a write token |
//! | 413 | the body is larger than `max_body_bytes` |
//! | 408 | the body did not arrive within `body_timeout_ms` |
//! | 503 | the broker is unreachable, the producer queue is full, or more than `max_concurrent_requests` requests are in progress (`Retry-After`) |
//!
//! A 503 can follow after part of a request was written. Retrying the whole
//! request is safe: workers drop repeated `event_id`s within their window.
//!
//! An answer lists at most [`LISTED_REJECTIONS`] rejections, the first ones,
//! and counts every rejection by field and rule in `reasons`, so it is never
//! much larger than the request. An event larger than the broker takes is
//! rejected by name (its position), not answered with a retryable 503.
//!
//! Events are keyed by `merchant_id` and partitioned by murmur2 of the key
//! (librdkafka's `murmur2_random`), as Java's default partitioner does, so a
//! merchant's events land in one partition whichever client produced them.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

use axum::body::{to_bytes, Body};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http_body_util::LengthLimitError;
use kafka::error::{is_queue_full, refuses_the_record};
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use schemas::event::decode;
use schemas::scan::body_items;
use serde::{Deserialize, Serialize};

use crate::config::IngestConfig;
use crate::database::Database;
use crate::imports::{ImportQueue, Started};
use crate::metrics::{DURATION, EVENTS, IN_PROGRESS, PRODUCE_ERRORS};

/// Rejections an answer lists one by one; the rest are only counted.
pub const LISTED_REJECTIONS: usize = 100;

/// Distinct `field rule` keys counted in an answer's `reasons`; others count
/// under `other`.
const COUNTED_REASONS: usize = 100;

/// Shared state of the service.
pub struct Ingest {
    /// Replaced by a fresh idempotent session after a delivery failure.
    producer: RwLock<FutureProducer>,
    client: rdkafka::ClientConfig,
    /// A delivery failed: start a new producer session once the broker answers.
    stale: AtomicBool,
    topic: String,
    /// Write tokens (`ingest.tokens`): orders and imports.
    tokens: Vec<Vec<u8>>,
    /// Read tokens (`ingest.read_tokens`): the totals API.
    read_tokens: Vec<Vec<u8>>,
    max_body_bytes: usize,
    max_message_bytes: usize,
    body_timeout: Duration,
    ack_timeout: Duration,
    /// One permit per request in progress.
    slots: Arc<Semaphore>,
    max_concurrent_requests: usize,
    broker_up: AtomicBool,
    imports: Option<Arc<dyn ImportQueue>>,
    /// The aggregators' database, which the totals API reads.
    database: Option<Database>,
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
            producer: RwLock::new(client.create()?),
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

    fn producer(&self) -> FutureProducer {
        self.producer.read().expect("producer lock").clone()
    }

    /// Asks the broker for the topic's metadata every `every`, recording
    /// whether it answered, until the process ends. Once the broker answers
    /// again after a failed delivery, requests move to a fresh producer:
    /// the old idempotent session's sequence numbers may no longer match
    /// what the broker kept (tansu 0.6.0 even stops serving on them).
    pub async fn watch_broker(self: Arc<Self>, every: Duration) {
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
                match self.client.create::<FutureProducer>() {
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
            tokio::time::sleep(every).await;
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
    fn may_write(&self, headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
        match self.access(headers) {
            Access::Write => Ok(()),
            Access::Read => Err((
                StatusCode::FORBIDDEN,
                "this is a read token (ingest.read_tokens); writing takes a write token (ingest.tokens)",
            )),
            Access::Denied => Err((
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

/// The API routes: `POST /v1/orders`, `POST /v1/imports`, the totals API
/// (`GET /v1/merchants/{merchant_id}/totals`, `GET /v1/merchants`),
/// `GET /healthz`, `GET /readyz` and `GET /openapi.json`. The caller adds
/// `/metrics`.
pub fn router(state: Arc<Ingest>) -> Router {
    Router::new()
        .route("/v1/orders", post(orders))
        .route("/v1/imports", post(imports))
        .route(
            "/v1/merchants/{merchant_id}/totals",
            get(crate::totals::merchant_totals),
        )
        .route("/v1/merchants", get(crate::totals::top_merchants))
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(|State(state): State<Arc<Ingest>>| async move {
                if state.ready() {
                    (StatusCode::OK, "ready\n")
                } else {
                    (StatusCode::SERVICE_UNAVAILABLE, "broker unreachable\n")
                }
            }),
        )
        .route(
            "/openapi.json",
            get(|| async { ([(header::CONTENT_TYPE, "application/json")], OPENAPI) }),
        )
        .with_state(state)
}

/// The OpenAPI document, also checked in at `ingest/openapi.json`.
pub const OPENAPI: &str = include_str!("../openapi.json");

/// One rejected event in a response.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Rejection {
    /// 0-based position in the array, or 1-based line number for NDJSON.
    pub at: usize,
    /// The field that broke a rule, or `payload`.
    pub field: String,
    /// The rule, with the offending value.
    pub reason: String,
}

/// The response body of `POST /v1/orders`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Events durable in the broker.
    pub accepted: usize,
    /// Events refused.
    pub rejected: usize,
    /// Why each refused event was refused: the first
    /// [`LISTED_REJECTIONS`] of them.
    pub errors: Vec<Rejection>,
    /// Every rejection counted by `field rule` (e.g. `amount must be a
    /// decimal`); at most 100 keys, then `other`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, usize>,
    /// Set on 4xx/5xx answers about the request as a whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Outcome {
    /// Counts a rejection, and lists it while fewer than
    /// [`LISTED_REJECTIONS`] are listed.
    pub fn reject(&mut self, at: usize, field: &str, rule: &str, reason: String) {
        self.rejected += 1;
        let key = format!("{field} {rule}");
        let key = if self.reasons.len() < COUNTED_REASONS || self.reasons.contains_key(&key) {
            key
        } else {
            "other".to_owned()
        };
        *self.reasons.entry(key).or_default() += 1;
        if self.errors.len() < LISTED_REJECTIONS {
            self.errors.push(Rejection {
                at,
                field: field.to_owned(),
                reason,
            });
        }
    }
}

fn answer(status: StatusCode, outcome: &Outcome) -> Response {
    let body = serde_json::to_vec(outcome).expect("outcomes serialise");
    crate::respond::json("/v1/orders", status, body, "1")
}

fn whole(status: StatusCode, message: impl Into<String>) -> Response {
    answer(
        status,
        &Outcome {
            error: Some(message.into()),
            ..Outcome::default()
        },
    )
}

async fn orders(State(state): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let started = Instant::now();
    let response = handle(&state, &headers, body).await;
    DURATION.observe(started.elapsed().as_secs_f64());
    response
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
    /// A slot for one request, or the 503 message that sheds it.
    pub(crate) fn admit(&self) -> Result<Slot, String> {
        match self.slots.clone().try_acquire_owned() {
            Ok(permit) => {
                IN_PROGRESS.inc();
                Ok(Slot(permit))
            }
            Err(_) => Err(format!(
                "{} requests are in progress, the most ingest.max_concurrent_requests allows; retry shortly",
                self.max_concurrent_requests
            )),
        }
    }

    /// The whole body, within the size and time limits; or the status and
    /// message that refuse it.
    async fn read_body(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<axum::body::Bytes, (StatusCode, String)> {
        let too_large = || {
            (
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
            Ok(Err(error)) => Err((
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {error}"),
            )),
            Err(_) => Err((
                StatusCode::REQUEST_TIMEOUT,
                format!(
                    "the body did not arrive within {} ms (ingest.body_timeout_ms)",
                    self.body_timeout.as_millis()
                ),
            )),
        }
    }
}

async fn handle(state: &Ingest, headers: &HeaderMap, body: Body) -> Response {
    if let Err((status, message)) = state.may_write(headers) {
        return whole(status, message);
    }
    let _slot = match state.admit() {
        Ok(slot) => slot,
        Err(message) => return whole(StatusCode::SERVICE_UNAVAILABLE, message),
    };
    let bytes = match state.read_body(headers, body).await {
        Ok(bytes) => bytes,
        Err((status, message)) => return whole(status, message),
    };
    let text = match std::str::from_utf8(&bytes) {
        Ok(text) => text,
        Err(e) => {
            return whole(
                StatusCode::BAD_REQUEST,
                format!("the body is not valid UTF-8 (byte {})", e.valid_up_to()),
            )
        }
    };
    if text.trim().is_empty() {
        return whole(StatusCode::BAD_REQUEST, "the body is empty");
    }
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    // (position, text) of every event in the request.
    let items = match body_items(text, ndjson) {
        Ok(items) => items,
        Err(e) => {
            let message = format!(
                "the body is not a JSON array of events: {} at byte {}",
                e.reason, e.at
            );
            return whole(
                StatusCode::BAD_REQUEST,
                message + " (send NDJSON with Content-Type: application/x-ndjson)",
            );
        }
    };
    let mut outcome = Outcome::default();
    let mut deliveries = Vec::new();
    let producer = state.producer();
    for (at, item) in items {
        match decode(item.as_bytes(), None) {
            Ok(_) if item.len() + 512 > state.max_message_bytes => {
                let reason = format!(
                    "event {at} is {} bytes; the broker takes messages up to {} bytes (message.max.bytes)",
                    item.len(),
                    state.max_message_bytes
                );
                outcome.reject(at, "payload", "is larger than the broker takes", reason);
            }
            Ok(event) => {
                let record = FutureRecord::to(&state.topic)
                    .key(event.merchant_id.as_bytes())
                    .payload(item.as_bytes());
                match producer.send_result(record) {
                    Ok(delivery) => deliveries.push((at, delivery)),
                    Err((error, _)) if refuses_the_record(&error) => {
                        outcome.reject(
                            at,
                            "payload",
                            "cannot be published",
                            format!("event {at} cannot be published: {error}"),
                        );
                    }
                    Err((error, _)) => {
                        let busy = is_queue_full(&error);
                        PRODUCE_ERRORS.inc();
                        if !busy {
                            state.stale.store(true, Ordering::Relaxed);
                        }
                        let reason = if busy {
                            "the producer queue is full; retry shortly".to_owned()
                        } else {
                            error.to_string()
                        };
                        return whole(StatusCode::SERVICE_UNAVAILABLE, reason);
                    }
                }
            }
            Err(invalid) => outcome.reject(at, invalid.field, &invalid.reason, invalid.to_string()),
        }
    }
    let sent = deliveries.len();
    let waited = tokio::time::timeout(state.ack_timeout, async {
        let mut refused = Vec::new();
        for (at, delivery) in deliveries.iter_mut() {
            match delivery.await {
                Ok(Ok(_)) => {}
                Ok(Err((error, _))) if refuses_the_record(&error) => refused.push((*at, error)),
                Ok(Err((error, _))) => return Err(error.to_string()),
                Err(_) => return Err("the producer was shut down".to_owned()),
            }
        }
        Ok(refused)
    })
    .await;
    let refused =
        match waited.unwrap_or_else(|_| Err("the broker did not acknowledge in time".to_owned())) {
            Ok(refused) => refused,
            Err(reason) => {
                PRODUCE_ERRORS.inc_by(sent as u64);
                state.stale.store(true, Ordering::Relaxed);
                return whole(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("the broker did not take the events: {reason}"),
                );
            }
        };
    for (at, error) in &refused {
        outcome.reject(
            *at,
            "payload",
            "was refused by the broker",
            format!("event {at} was refused by the broker: {error}"),
        );
    }
    outcome.accepted = sent - refused.len();
    EVENTS
        .with_label_values(&["accepted"])
        .inc_by(outcome.accepted as u64);
    EVENTS
        .with_label_values(&["rejected"])
        .inc_by(outcome.rejected as u64);
    let status = match (outcome.accepted, outcome.rejected) {
        (_, 0) => StatusCode::OK,
        (0, _) => StatusCode::UNPROCESSABLE_ENTITY,
        _ => StatusCode::MULTI_STATUS,
    };
    answer(status, &outcome)
}

/// The answer of `POST /v1/imports`.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct ImportsOutcome {
    /// Import jobs queued.
    pub queued: usize,
    /// One entry per record of the notification, in order.
    pub records: Vec<Started>,
    /// Set when the request as a whole was refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

fn imports_answer(status: StatusCode, outcome: &ImportsOutcome) -> Response {
    let body = serde_json::to_vec(outcome).expect("outcomes serialise");
    crate::respond::json("/v1/imports", status, body, "5")
}

/// `POST /v1/imports`: an S3 event notification; one import per created
/// object. 200 when every record was queued, skipped as already imported or
/// queued, or ignored; 207 when some failed (the sender may deliver the
/// notification again: what was queued is not queued twice); 503 when
/// every one failed or imports are not configured.
async fn imports(State(state): State<Arc<Ingest>>, headers: HeaderMap, body: Body) -> Response {
    let refuse = |status, message: String| {
        imports_answer(
            status,
            &ImportsOutcome {
                error: Some(message),
                ..ImportsOutcome::default()
            },
        )
    };
    if let Err((status, message)) = state.may_write(&headers) {
        return refuse(status, message.into());
    }
    let (Some(queue), Some(database)) = (state.imports.clone(), state.database()) else {
        return refuse(
            StatusCode::SERVICE_UNAVAILABLE,
            "imports are not configured: set ingest.database_url to the aggregators' database"
                .into(),
        );
    };
    let _slot = match state.admit() {
        Ok(slot) => slot,
        Err(message) => return refuse(StatusCode::SERVICE_UNAVAILABLE, message),
    };
    let bytes = match state.read_body(&headers, body).await {
        Ok(bytes) => bytes,
        Err((status, message)) => return refuse(status, message),
    };
    let records = match crate::imports::parse(&bytes) {
        Ok(records) => records,
        Err(reason) => return refuse(StatusCode::BAD_REQUEST, reason),
    };
    let mut outcome = ImportsOutcome::default();
    for record in records {
        let started = match record {
            Ok(object) => match database.store().await {
                Ok(store) => queue.queue(store, &object).await,
                Err(reason) => Started {
                    object: object.url.clone(),
                    job: None,
                    outcome: "error".into(),
                    reason: Some(reason),
                },
            },
            Err(reason) => Started {
                object: String::new(),
                job: None,
                outcome: "ignored".into(),
                reason: Some(reason),
            },
        };
        outcome.queued += usize::from(started.job.is_some());
        outcome.records.push(started);
    }
    let failed = outcome
        .records
        .iter()
        .filter(|r| r.outcome == "error")
        .count();
    let status = match failed {
        0 => StatusCode::OK,
        n if n == outcome.records.len() => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::MULTI_STATUS,
    };
    imports_answer(status, &outcome)
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
