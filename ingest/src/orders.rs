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
//! A request refused as a whole (400, 401, 403, 408, 413, 503) is answered
//! with the one refusal body of every route, `{"error": …}`
//! ([`crate::http::ApiError`]).
//!
//! Events are keyed by `merchant_id` and partitioned by murmur2 of the key
//! (librdkafka's `murmur2_random`), as Java's default partitioner does, so a
//! merchant's events land in one partition whichever client produced them.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::Response;
use kafka::error::{is_queue_full, refuses_the_record};
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use schemas::event::decode;
use schemas::scan::body_items;
use serde::{Deserialize, Serialize};

use crate::http::respond::Refusal;
use crate::http::Ingest;
use crate::metrics::{EVENTS, PRODUCE_ERRORS};

/// Rejections an answer lists one by one; the rest are only counted.
pub const LISTED_REJECTIONS: usize = 100;

/// Distinct `field rule` keys counted in an answer's `reasons`; others count
/// under `other`.
const COUNTED_REASONS: usize = 100;

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

/// The response body of `POST /v1/orders` when its events were read (200,
/// 207, 422). A client may read every answer of the route into it: a
/// refusal of the request as a whole ([`crate::http::ApiError`]) reads as
/// an outcome with nothing accepted and `error` set.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(default)]
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
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub reasons: BTreeMap<String, usize>,
    /// A refusal's message, as a client reads it; the service never sets
    /// it in an outcome.
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

/// The route, as counted in `tally_ingest_requests_total`.
const ROUTE: &str = "/v1/orders";

/// A 503 asks to retry after this many seconds.
const RETRY_AFTER: &str = "1";

pub(crate) async fn orders(
    State(state): State<Arc<Ingest>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    match handle(&state, &headers, body).await {
        Ok(response) => response,
        Err(refusal) => refusal.answer(ROUTE, RETRY_AFTER),
    }
}

/// A request, in order: its token, a slot, the body, its events, each one
/// validated and produced, the broker's acknowledgements, the answer.
async fn handle(state: &Ingest, headers: &HeaderMap, body: Body) -> Result<Response, Refusal> {
    state.may_write(headers)?;
    let _slot = state.admit()?;
    let bytes = state.read_body(headers, body).await?;
    let ndjson = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/x-ndjson"));
    let items = events(&bytes, ndjson)?;
    let mut outcome = Outcome::default();
    let deliveries = publish(state, items, &mut outcome)?;
    let sent = deliveries.len();
    let refused = acknowledged(state, deliveries).await?;
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
    let body = serde_json::to_vec(&outcome).expect("outcomes serialise");
    Ok(crate::http::respond::json(ROUTE, status, body, RETRY_AFTER))
}

/// The body's events, each with its position (0-based in an array, 1-based
/// line in NDJSON); a 400 when the body is not UTF-8, empty, or neither a
/// JSON array nor NDJSON.
fn events(bytes: &[u8], ndjson: bool) -> Result<Vec<(usize, &str)>, Refusal> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid UTF-8 (byte {})", e.valid_up_to()),
        )
    })?;
    if text.trim().is_empty() {
        return Err(Refusal::new(StatusCode::BAD_REQUEST, "the body is empty"));
    }
    body_items(text, ndjson).map_err(|e| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!(
                "the body is not a JSON array of events: {} at byte {} (send NDJSON with Content-Type: application/x-ndjson)",
                e.reason, e.at
            ),
        )
    })
}

/// Validates each event and hands the valid ones to the producer; the
/// invalid, the too large and those the producer refuses for good are
/// rejected in `outcome`. A 503 when the producer cannot take more (its
/// queue is full, or the broker is failing).
fn publish(
    state: &Ingest,
    items: Vec<(usize, &str)>,
    outcome: &mut Outcome,
) -> Result<Vec<(usize, DeliveryFuture)>, Refusal> {
    let mut deliveries = Vec::new();
    let producer = state.producer();
    for (at, item) in items {
        let event = match decode(item.as_bytes(), None) {
            Ok(event) => event,
            Err(invalid) => {
                outcome.reject(at, invalid.field, &invalid.reason, invalid.to_string());
                continue;
            }
        };
        if item.len() + 512 > state.max_message_bytes {
            let reason = format!(
                "event {at} is {} bytes; the broker takes messages up to {} bytes (message.max.bytes)",
                item.len(),
                state.max_message_bytes
            );
            outcome.reject(at, "payload", "is larger than the broker takes", reason);
            continue;
        }
        let record = FutureRecord::to(&state.topic)
            .key(event.merchant_id.as_bytes())
            .payload(item.as_bytes());
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push((at, delivery)),
            Err((error, _)) if refuses_the_record(&error) => outcome.reject(
                at,
                "payload",
                "cannot be published",
                format!("event {at} cannot be published: {error}"),
            ),
            Err((error, _)) => {
                PRODUCE_ERRORS.inc();
                let reason = if is_queue_full(&error) {
                    "the producer queue is full; retry shortly".to_owned()
                } else {
                    state.stale.store(true, Ordering::Relaxed);
                    error.to_string()
                };
                return Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, reason));
            }
        }
    }
    Ok(deliveries)
}

/// Waits up to `ack_timeout` for the broker to acknowledge every delivery;
/// returns those it refused for good (the rest are durable). A 503 when it
/// did not acknowledge them all in time, or failed.
async fn acknowledged(
    state: &Ingest,
    mut deliveries: Vec<(usize, DeliveryFuture)>,
) -> Result<Vec<(usize, KafkaError)>, Refusal> {
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
    waited
        .unwrap_or_else(|_| Err("the broker did not acknowledge in time".to_owned()))
        .map_err(|reason| {
            PRODUCE_ERRORS.inc_by(sent as u64);
            state.stale.store(true, Ordering::Relaxed);
            Refusal::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the broker did not take the events: {reason}"),
            )
        })
}
