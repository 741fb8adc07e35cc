//! The producers tally makes, and a send that retries by [`retry`]'s policy.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use rdkafka::util::Timeout;

use crate::client::{apply, client, FutureProducer, Logged};
use crate::error::Classified;

/// What every producer of tally is: idempotent with `acks=all`, so that a
/// retried send never duplicates or reorders within a partition.
fn idempotent_base(brokers: &str) -> ClientConfig {
    let mut config = client(brokers);
    config.set("enable.idempotence", "true").set("acks", "all");
    config
}

/// The worker's producer of partials and dead letters: idempotent with
/// `acks=all`, so a retried send never duplicates or reorders within a
/// partition. Partials are compressed with LZ4 (a partial of many merchants
/// is mostly repeated field names), unless `extra` says otherwise.
///
/// Fails when librdkafka rejects the configuration.
pub fn idempotent(
    brokers: &str,
    extra: &BTreeMap<String, String>,
) -> Result<FutureProducer, KafkaError> {
    let mut config = idempotent_base(brokers);
    config
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("message.timeout.ms", "60000");
    apply(&mut config, extra);
    config.create_with_context(Logged)
}

/// A producer suited to bulk loads (`tally generate`, the demo, the
/// benchmarks): idempotent, `acks=all`, batched; with `properties` (TLS,
/// SASL, …) set over those.
///
/// Fails when librdkafka rejects the configuration.
pub fn bulk(
    brokers: &str,
    properties: &BTreeMap<String, String>,
) -> Result<FutureProducer, KafkaError> {
    let mut config = idempotent_base(brokers);
    config
        .set("partitioner", MURMUR2)
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "200000")
        .set("message.timeout.ms", "120000");
    apply(&mut config, properties);
    config.create_with_context(Logged)
}

/// Java's default partitioner: a merchant's events land in one partition
/// whichever client produced them (ingest, `tally generate`, a Java
/// producer).
pub const MURMUR2: &str = "murmur2_random";

/// The configuration of ingest's producer: idempotent, `acks=all`, murmur2,
/// a short linger, at most `queued` messages waiting, each given
/// `timeout_ms` to be acknowledged; with `extra` set over those.
pub fn ingest_config(
    brokers: &str,
    queued: u32,
    timeout_ms: u64,
    extra: &BTreeMap<String, String>,
) -> ClientConfig {
    let mut config = idempotent_base(brokers);
    config
        .set("linger.ms", "2")
        .set("partitioner", MURMUR2)
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("queue.buffering.max.messages", queued.to_string())
        .set("message.timeout.ms", timeout_ms.to_string());
    apply(&mut config, extra);
    config
}

/// Enqueues `record` on `producer`, waiting for room while its local queue
/// is full (the broker slower than the sender for a while), and returns its
/// delivery. Fails at once with any other refusal.
pub async fn enqueue<'a, K, P>(
    producer: &FutureProducer,
    mut record: FutureRecord<'a, K, P>,
) -> Result<DeliveryFuture, KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized + 'a,
    P: rdkafka::message::ToBytes + ?Sized + 'a,
{
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((error, back)) if crate::error::is_queue_full(&error) => {
                record = back;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Sends the record `record` makes until the broker acknowledges it,
/// waiting up to 30 s for each acknowledgement and retrying transient
/// failures by [`retry`]'s policy (counted as `operation`); a permanent
/// failure is returned.
pub async fn send_retried<'a, K, P>(
    producer: &FutureProducer,
    operation: &'static str,
    record: impl Fn() -> FutureRecord<'a, K, P>,
    on_retry: impl FnMut(&Classified),
) -> Result<(), KafkaError>
where
    K: rdkafka::message::ToBytes + ?Sized + 'a,
    P: rdkafka::message::ToBytes + ?Sized + 'a,
{
    retry::retry(
        operation,
        || async {
            producer
                .send(record(), Timeout::After(Duration::from_secs(30)))
                .await
                .map(drop)
                .map_err(|(error, _)| Classified(error))
        },
        on_retry,
    )
    .await
    .map_err(|Classified(error)| error)
}
