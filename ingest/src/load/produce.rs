//! Publishing generated traffic straight to the `orders` topic.

use kafka::FutureProducer;
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureRecord;

use super::generate::Generated;

/// Messages in flight before waiting for acknowledgements.
const WINDOW: usize = 20_000;

/// Produces every message of `messages` to `topic`, keyed by merchant, and
/// waits until the broker acknowledged each one. Calls `progress` with the
/// number acknowledged so far after each window.
///
/// Fails on the first message the broker refuses (after librdkafka's own retries).
pub async fn produce_all(
    producer: &FutureProducer,
    topic: &str,
    messages: impl IntoIterator<Item = Generated>,
    mut progress: impl FnMut(u64),
) -> Result<u64, KafkaError> {
    let mut in_flight = Vec::with_capacity(WINDOW);
    let mut acknowledged = 0u64;
    for message in messages {
        let mut record = FutureRecord::<str, [u8]>::to(topic).payload(&message.payload);
        if let Some(key) = &message.key {
            record = record.key(key.as_str());
        }
        in_flight.push(kafka::producer::enqueue(producer, record).await?);
        if in_flight.len() >= WINDOW {
            acknowledged += settle(&mut in_flight).await?;
            progress(acknowledged);
        }
    }
    acknowledged += settle(&mut in_flight).await?;
    progress(acknowledged);
    Ok(acknowledged)
}

async fn settle(in_flight: &mut Vec<rdkafka::producer::DeliveryFuture>) -> Result<u64, KafkaError> {
    let n = in_flight.len() as u64;
    for delivery in in_flight.drain(..) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error),
            Err(_) => return Err(KafkaError::Canceled),
        }
    }
    Ok(n)
}
