//! Producing to the broker: dead-letter copies and partials, each retried
//! with capped backoff until the broker acknowledges it.

use std::future::Future;
use std::time::Duration;

use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
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
}

/// Runs `op` until it succeeds, sleeping 100 ms, 200 ms, … up to 10 s
/// between attempts and logging each failure.
pub async fn retry<T, E: std::fmt::Display, F: Future<Output = Result<T, E>>>(
    operation: &'static str,
    mut op: impl FnMut() -> F,
) -> T {
    let mut delay = Duration::from_millis(100);
    loop {
        match op().await {
            Ok(value) => return value,
            Err(error) => {
                metrics::RETRIES.with_label_values(&[operation]).inc();
                tracing::warn!(operation, %error, retry_in_ms = delay.as_millis() as u64, "Operation failed; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// Writes the rejected messages of a batch to the dead-letter topic and
/// waits until the broker has acknowledged every one.
///
/// Every copy is enqueued first, so they share produce requests; a copy whose
/// delivery failed is then retried on its own until it lands. A retry after an
/// ambiguous failure may write a second copy: readers key dead letters by
/// their source partition and offset headers.
pub async fn dead_letters(
    producer: &FutureProducer,
    dlq_topic: &str,
    source_topic: &str,
    partition: i32,
    messages: &[Message],
    invalid: &[(usize, Invalid)],
) {
    let record = |index: usize, reason: &Invalid| dead_letter(dlq_topic, source_topic, partition, &messages[index], reason);
    let deliveries: Vec<_> =
        invalid.iter().map(|(index, reason)| producer.send_result(record(*index, reason)).ok()).collect();
    for ((index, reason), delivery) in invalid.iter().zip(deliveries) {
        let landed = match delivery {
            Some(delivery) => matches!(delivery.await, Ok(Ok(_))),
            None => false,
        };
        if !landed {
            retry("dlq_write", || async {
                let sent = producer.send(record(*index, reason), Timeout::After(Duration::from_secs(30))).await;
                sent.map(drop).map_err(|(e, _)| e)
            })
            .await;
        }
    }
    metrics::DLQ_WRITES.inc_by(invalid.len() as u64);
}

/// The dead-letter copy of `message`: original key, payload and headers, plus
/// the `tally.*` headers naming the reason and the source.
fn dead_letter<'a>(
    dlq_topic: &'a str,
    source_topic: &str,
    partition: i32,
    message: &'a Message,
    reason: &Invalid,
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new();
    for (key, value) in &message.headers {
        headers = headers.insert(Header { key, value: Some(value) });
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
        headers = headers.insert(Header { key, value: Some(value) });
    }
    let mut record = FutureRecord::<[u8], [u8]>::to(dlq_topic).payload(&message.payload).headers(headers);
    if let Some(key) = &message.key {
        record = record.key(key.as_slice());
    }
    record
}

/// Publishes a partial to the partials partition equal to its source
/// partition and waits for the acknowledgement.
pub async fn partial(producer: &FutureProducer, partials_topic: &str, partial: &Partial) {
    let payload = serde_json::to_vec(partial).expect("partials always serialise");
    let key = partial.message_key();
    retry("partial_publish", || async {
        let record = FutureRecord::to(partials_topic).partition(partial.partition).key(&key).payload(&payload);
        producer.send(record, Timeout::After(Duration::from_secs(30))).await.map(drop).map_err(|(e, _)| e)
    })
    .await;
    metrics::PARTIALS.inc();
}
