//! Producing to the broker: dead-letter copies and partials, each retried
//! with tally's retry policy until the broker acknowledges it or refuses it
//! for good.

use std::future::Future;

use kafka::error::is_too_large;
use kafka::FutureProducer;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use schemas::{Invalid, Partial};

use crate::decode::Message;
use crate::metrics;

/// Header names on dead-letter records.
pub mod header {
    /// The rule that was broken, as a sentence.
    pub const REASON: &str = "tally.reason";
    /// The field that broke it.
    pub const FIELD: &str = "tally.field";
    /// Source topic.
    pub const TOPIC: &str = "tally.source.topic";
    /// Source partition (decimal text).
    pub const PARTITION: &str = "tally.source.partition";
    /// Source offset (decimal text).
    pub const OFFSET: &str = "tally.source.offset";
    /// Present when the broker refused the whole payload: its original length.
    pub const TRUNCATED: &str = "tally.payload.truncated";
}

/// Runs `op` until it succeeds or fails permanently, with tally's one retry
/// policy ([`retry::retry`]), counting each retry under `operation`.
///
/// Fails with the first permanent error.
pub async fn retry<T, E, F, Fut>(operation: &'static str, op: F) -> Result<T, E>
where
    E: retry::Classify + std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    retry::retry(operation, op, counted(operation)).await
}

/// Counts a retry of `operation` in `tally_worker_retries_total`.
pub fn counted<E>(operation: &'static str) -> impl FnMut(&E) {
    move |_| metrics::RETRIES.with_label_values(&[operation]).inc()
}

/// Largest payload kept whole in a dead-letter copy; a bigger one that the
/// broker refuses is cut to this and marked with `tally.payload.truncated`.
const DLQ_KEPT_BYTES: usize = 256 * 1024;

/// Writes the rejected messages of a batch to the dead-letter topic and
/// waits until the broker has acknowledged every one.
///
/// Every copy is enqueued first, so they share produce requests; a copy whose
/// delivery failed is then retried on its own until it lands. A retry after an
/// ambiguous failure may write a second copy: readers key dead letters by
/// their source partition and offset headers. A copy the broker refuses for
/// its size is written again with its payload cut to 256 KiB and the
/// original length in `tally.payload.truncated`.
///
/// Fails when a copy cannot be written at all (a permanent broker error even
/// for the cut copy): the caller parks the partition rather than lose it.
pub async fn dead_letters(
    producer: &FutureProducer,
    dlq_topic: &str,
    source_topic: &str,
    partition: i32,
    messages: &[Message],
    invalid: &[(usize, Invalid)],
) -> Result<(), KafkaError> {
    let record = |index: usize, reason: &Invalid, cut: bool| {
        dead_letter(
            dlq_topic,
            source_topic,
            partition,
            &messages[index],
            reason,
            cut,
        )
    };
    let deliveries: Vec<_> = invalid
        .iter()
        .map(|(index, reason)| producer.send_result(record(*index, reason, false)).ok())
        .collect();
    for ((index, reason), delivery) in invalid.iter().zip(deliveries) {
        let landed = match delivery {
            Some(delivery) => matches!(delivery.await, Ok(Ok(_))),
            None => false,
        };
        if landed {
            continue;
        }
        let send = |cut: bool| {
            kafka::producer::send_retried(
                producer,
                "dlq_write",
                move || record(*index, reason, cut),
                counted("dlq_write"),
            )
        };
        match send(false).await {
            Ok(()) => {}
            Err(error) if is_too_large(&error) => send(true).await?,
            Err(error) => return Err(error),
        }
    }
    metrics::DLQ_WRITES.inc_by(invalid.len() as u64);
    Ok(())
}

/// The dead-letter copy of `message`: original key, payload and headers, plus
/// the `tally.*` headers naming the reason and the source.
fn dead_letter<'a>(
    dlq_topic: &'a str,
    source_topic: &str,
    partition: i32,
    message: &'a Message,
    reason: &Invalid,
    cut: bool,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    for (key, value) in &message.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let (partition_text, offset_text) = (partition.to_string(), message.offset.to_string());
    let reason_text = reason.to_string();
    for (key, value) in [
        (header::REASON, reason_text.as_str()),
        (header::FIELD, reason.field),
        (header::TOPIC, source_topic),
        (header::PARTITION, partition_text.as_str()),
        (header::OFFSET, offset_text.as_str()),
    ] {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    let payload: &[u8] = if cut {
        let length = message.payload.len().to_string();
        headers = headers.insert(Header {
            key: header::TRUNCATED,
            value: Some(length.as_str()),
        });
        &message.payload[..message.payload.len().min(DLQ_KEPT_BYTES)]
    } else {
        &message.payload
    };
    let mut record = FutureRecord::<[u8], [u8]>::to(dlq_topic)
        .payload(payload)
        .headers(headers);
    if let Some(key) = &message.key {
        record = record.key(key.as_slice());
    }
    record
}

/// Publishes a partial to the partials partition equal to its source
/// partition and waits for the acknowledgement.
///
/// Fails with a permanent broker error (a partial too large for the broker,
/// an authorization failure); transient ones are retried.
pub async fn partial(
    producer: &FutureProducer,
    partials_topic: &str,
    partial: &Partial,
) -> Result<(), KafkaError> {
    let payload = serde_json::to_vec(partial).expect("partials always serialise");
    publish_payload(producer, partials_topic, partial, &payload).await
}

/// [`partial`] with the partial's JSON already made.
///
/// Fails as [`partial`] does.
pub async fn publish_payload(
    producer: &FutureProducer,
    partials_topic: &str,
    partial: &Partial,
    payload: &[u8],
) -> Result<(), KafkaError> {
    let key = partial.message_key();
    let record = || {
        FutureRecord::to(partials_topic)
            .partition(partial.partition)
            .key(&key)
            .payload(payload)
    };
    kafka::producer::send_retried(
        producer,
        "partial_publish",
        record,
        counted("partial_publish"),
    )
    .await?;
    metrics::PARTIALS.inc();
    Ok(())
}
