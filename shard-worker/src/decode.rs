//! The hot path's first half: raw messages to an Arrow batch of valid,
//! first-seen events, with every rejected message kept for the dead-letter
//! topic.

use datafusion::arrow::error::ArrowError;
use datafusion::arrow::record_batch::RecordBatch;
use schemas::batch::EventBatchBuilder;
use schemas::event::decode;
use schemas::partial::EventCounts;
use schemas::Invalid;

use crate::dedupe::DedupeWindow;

/// One consumed message, owned so that it can cross threads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Source offset.
    pub offset: i64,
    /// Message key, normally the merchant id.
    pub key: Option<Vec<u8>>,
    /// Message value: the event JSON.
    pub payload: Vec<u8>,
    /// Broker or producer timestamp, ms since the epoch.
    pub timestamp_ms: Option<i64>,
    /// Original headers, kept for the dead-letter copy.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// The result of decoding one batch.
pub struct Decoded {
    /// Valid events seen for the first time, at or after `count_from`.
    pub batch: RecordBatch,
    /// Rejected messages at or after `count_from`: index into the input, reason.
    pub invalid: Vec<(usize, Invalid)>,
    /// Outcome counts of the messages at or after `count_from`.
    pub counts: EventCounts,
    /// Latest timestamp among counted messages.
    pub max_append_ms: Option<i64>,
}

/// Decodes `messages` in offset order. Messages below `count_from` only
/// rebuild the dedupe window (they were counted by an earlier owner); the
/// rest are validated, deduped and appended to the batch.
///
/// `now_ms` stands in for a missing message timestamp.
pub fn decode_messages(
    messages: &[Message],
    window: &mut DedupeWindow,
    count_from: i64,
    now_ms: i64,
) -> Result<Decoded, ArrowError> {
    let mut builder = EventBatchBuilder::with_capacity(messages.len());
    let mut invalid = Vec::new();
    let mut counts = EventCounts::default();
    let mut max_append_ms = None;
    for (index, message) in messages.iter().enumerate() {
        let time_ms = message.timestamp_ms.unwrap_or(now_ms);
        let counting = message.offset >= count_from;
        match decode(&message.payload, message.key.as_deref()) {
            Ok(event) => {
                let first = window.first_sighting(&event.event_id, message.offset, time_ms);
                if !counting {
                    continue;
                }
                if first {
                    builder.push(&event);
                    counts.counted += 1;
                } else {
                    counts.duplicate += 1;
                }
            }
            Err(reason) if counting => {
                invalid.push((index, reason));
                counts.invalid += 1;
            }
            Err(_) => continue,
        }
        max_append_ms = max_append_ms.max(Some(time_ms));
    }
    Ok(Decoded { batch: builder.finish()?, invalid, counts, max_append_ms })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64, event_id: &str, amount: &str) -> Message {
        let payload = format!(
            r#"{{"event_id":"{event_id}","order_id":"o","merchant_id":"m","kind":"sale","amount":"{amount}","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}"#
        );
        Message { offset, key: Some(b"m".to_vec()), payload: payload.into_bytes(), timestamp_ms: Some(offset), headers: vec![] }
    }

    #[test]
    fn rebuild_then_count_once() {
        let messages =
            [message(0, "a", "1"), message(1, "b", "2"), message(2, "a", "1"), message(3, "c", "-1"), message(4, "d", "4")];
        let mut window = DedupeWindow::new(60_000);
        let decoded = decode_messages(&messages, &mut window, 2, 0).unwrap();
        assert_eq!(decoded.counts, EventCounts { counted: 1, duplicate: 1, invalid: 1 });
        assert_eq!(decoded.batch.num_rows(), 1);
        assert_eq!(decoded.invalid[0].0, 3);
        assert_eq!(decoded.invalid[0].1.field, "amount");
    }
}
