//! The hot path's first half: raw messages to an Arrow batch of valid,
//! first-seen events, with every rejected message kept for the dead-letter
//! topic.

use datafusion::arrow::error::ArrowError;
use schemas::batch::{EventBatch, EventBatchBuilder};
use schemas::event::decode;
use schemas::partial::EventCounts;
use schemas::Invalid;

use schemas::zone::Zones;
use schemas::ValidEvent;
use std::sync::Arc;
use xxhash_rust::xxh3::xxh3_64_with_seed;

use crate::dedupe::{DedupeWindow, IdHash, Sighting};

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

/// What happened to one message of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Below `count_from`: only rebuilt the dedupe window.
    Rebuilt,
    /// Valid and first seen: a row of the batch.
    Counted,
    /// Valid, seen before inside the window.
    Duplicate,
    /// Broke a rule (or repeated an id with other content): dead-lettered.
    Invalid,
}

/// The window's state right after one message, so that a batch can be cut
/// into several partials at any message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkpoint {
    /// `dedupe_from_offset` if a partial ended at this message.
    pub dedupe_from_offset: i64,
    /// The window's clock at this message.
    pub dedupe_clock_ms: Option<i64>,
}

/// The result of decoding one batch.
pub struct Decoded {
    /// Valid events seen for the first time, at or after `count_from`, in
    /// offset order (with their local days, and their pairs' zones, when
    /// decoded with zones).
    pub batch: EventBatch,
    /// The input index of each row of `batch`.
    pub row_message: Vec<u32>,
    /// Rejected messages at or after `count_from`: index into the input, reason.
    pub invalid: Vec<(usize, Invalid)>,
    /// What happened to each input message.
    pub outcomes: Vec<Outcome>,
    /// The window's state after each input message.
    pub checkpoints: Vec<Checkpoint>,
    /// Outcome counts of the messages at or after `count_from`.
    pub counts: EventCounts,
    /// Latest timestamp among counted messages.
    pub max_append_ms: Option<i64>,
}

/// A digest of everything an event says besides its id: a retry repeats it,
/// a different event under a reused id does not. Three one-shot hashes,
/// each seeded by the last: a streaming hasher's set-up cost more than the
/// hashing of these short fields.
fn content_digest(event: &ValidEvent<'_>) -> u64 {
    let amount = event.amount.0 as u64 ^ (event.amount.0 >> 64) as u64;
    let h = xxh3_64_with_seed(event.order_id.as_bytes(), amount);
    let h = xxh3_64_with_seed(event.merchant_id.as_bytes(), h ^ event.occurred_at as u64);
    xxh3_64_with_seed(event.currency.as_bytes(), h ^ event.kind as u64)
}

/// Messages decoded ahead of their sightings, a chunk at a time: small
/// enough to stay in the cache between the two passes.
const CHUNK: usize = 256;

/// How many sightings ahead an id's table slot is touched
/// ([`DedupeWindow::touch`]).
const AHEAD: usize = 8;

/// A message decoded, with what its sighting needs.
type Parsed<'a> = Result<(ValidEvent<'a>, IdHash, u64), Invalid>;

/// Decodes `messages` in offset order. Messages below `count_from` only
/// rebuild the dedupe window (they were counted by an earlier owner); the
/// rest are validated, deduped and appended to the batch.
///
/// Each chunk of messages is decoded and hashed first, then sighted in
/// order, touching the window's table a few ids ahead so that its cache
/// misses overlap instead of coming one per event.
///
/// `now_ms` stands in for a missing message timestamp. With `zones`, the
/// batch also records each event's day in its merchant's zone.
///
/// Fails only if the batch's columns disagree with its schema, which would be a bug.
pub fn decode_messages(
    messages: &[Message],
    window: &mut DedupeWindow,
    count_from: i64,
    now_ms: i64,
    zones: Option<Arc<Zones>>,
) -> Result<Decoded, ArrowError> {
    let mut builder = match &zones {
        Some(zones) => EventBatchBuilder::with_local_days(messages.len(), zones.clone()),
        None => EventBatchBuilder::with_capacity(messages.len()),
    };
    let mut row_message = Vec::with_capacity(messages.len());
    let mut invalid = Vec::new();
    let mut outcomes = Vec::with_capacity(messages.len());
    let mut checkpoints = Vec::with_capacity(messages.len());
    let mut counts = EventCounts::default();
    let mut max_append_ms = None;
    let mut parsed: Vec<Parsed<'_>> = Vec::with_capacity(CHUNK.min(messages.len()));
    let touch = |window: &DedupeWindow, parsed: Option<&Parsed<'_>>| {
        if let Some(Ok((_, id, _))) = parsed {
            window.touch(*id);
        }
    };
    for (chunk_at, chunk) in messages.chunks(CHUNK).enumerate() {
        parsed.clear();
        parsed.extend(chunk.iter().map(|message| {
            let event = decode(&message.payload, message.key.as_deref())?;
            if let Some(zones) = &zones {
                zones.check_local_era(&event.merchant_id, event.occurred_at, event.day)?;
                // The batch builder looks the zone up in the second pass.
                zones.touch(&event.merchant_id);
            }
            let (id, digest) = (IdHash::of(&event.event_id), content_digest(&event));
            Ok((event, id, digest))
        }));
        parsed
            .iter()
            .take(AHEAD)
            .for_each(|ahead| touch(window, Some(ahead)));
        for (at, (message, parsed_now)) in chunk.iter().zip(&parsed).enumerate() {
            touch(window, parsed.get(at + AHEAD));
            let index = chunk_at * CHUNK + at;
            let time_ms = message.timestamp_ms.unwrap_or(now_ms);
            let counting = message.offset >= count_from;
            let outcome = match parsed_now {
                Ok((event, id, digest)) => {
                    match window.sight_hashed(*id, *digest, message.offset, time_ms) {
                        _ if !counting => Outcome::Rebuilt,
                        Sighting::First => {
                            builder.push(event);
                            row_message.push(index as u32);
                            Outcome::Counted
                        }
                        Sighting::Repeat => Outcome::Duplicate,
                        Sighting::Conflict => {
                            let reason = "is a conflicting duplicate: this id was seen inside the dedupe window with \
                                      different content; the first is counted, this one is not";
                            invalid
                                .push((index, Invalid::new("event_id", &event.event_id, reason)));
                            Outcome::Duplicate
                        }
                    }
                }
                Err(reason) if counting => {
                    invalid.push((index, reason.clone()));
                    Outcome::Invalid
                }
                Err(_) => Outcome::Rebuilt,
            };
            match outcome {
                Outcome::Counted => counts.counted += 1,
                Outcome::Duplicate => counts.duplicate += 1,
                Outcome::Invalid => counts.invalid += 1,
                Outcome::Rebuilt => {}
            }
            if outcome != Outcome::Rebuilt {
                max_append_ms = max_append_ms.max(Some(time_ms));
            }
            outcomes.push(outcome);
            checkpoints.push(Checkpoint {
                dedupe_from_offset: window.dedupe_from_offset(message.offset + 1),
                dedupe_clock_ms: window.clock_ms(),
            });
        }
    }
    Ok(Decoded {
        batch: builder.finish()?,
        row_message,
        invalid,
        outcomes,
        checkpoints,
        counts,
        max_append_ms,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(offset: i64, event_id: &str, amount: &str) -> Message {
        let payload = format!(
            r#"{{"event_id":"{event_id}","order_id":"o","merchant_id":"m","kind":"sale","amount":"{amount}","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}"#
        );
        Message {
            offset,
            key: Some(b"m".to_vec()),
            payload: payload.into_bytes(),
            timestamp_ms: Some(offset),
            headers: vec![],
        }
    }

    #[test]
    fn rebuild_then_count_once() {
        let messages = [
            message(0, "a", "1"),
            message(1, "b", "2"),
            message(2, "a", "1"),
            message(3, "c", "-1"),
            message(4, "d", "4"),
        ];
        let mut window = DedupeWindow::new(60_000, 1_000);
        let decoded = decode_messages(&messages, &mut window, 2, 0, None).unwrap();
        assert_eq!(
            decoded.counts,
            EventCounts {
                counted: 1,
                duplicate: 1,
                invalid: 1
            }
        );
        assert_eq!(decoded.batch.num_rows(), 1);
        assert_eq!(decoded.row_message, [4]);
        assert_eq!(decoded.invalid[0].0, 3);
        assert_eq!(decoded.invalid[0].1.field, "amount");
        use Outcome::*;
        assert_eq!(
            decoded.outcomes,
            [Rebuilt, Rebuilt, Duplicate, Invalid, Counted]
        );
        assert_eq!(decoded.checkpoints[4].dedupe_from_offset, 0);
    }

    #[test]
    fn chunks_keep_the_order_and_the_index_of_every_message() {
        // Over three chunks: below offset 100 only rebuilds; every seventh
        // message from 300 on repeats an id from 300 messages before, in an
        // earlier chunk; every 50th is invalid.
        let messages: Vec<Message> = (0..700)
            .map(|i| match i {
                _ if i % 50 == 49 => message(i, &format!("e{i}"), "-1"),
                _ if i >= 300 && i % 7 == 0 => message(i, &format!("e{}", i - 300), "1"),
                _ => message(i, &format!("e{i}"), "1"),
            })
            .collect();
        let mut seen = std::collections::HashSet::new();
        let mut expected = Vec::new();
        for m in &messages {
            let event = schemas::event::decode(&m.payload, None).ok();
            let first = event
                .as_ref()
                .is_some_and(|e| seen.insert(e.event_id.to_string()));
            expected.push(match (m.offset < 100, event.is_some(), first) {
                (true, _, _) => Outcome::Rebuilt,
                (false, false, _) => Outcome::Invalid,
                (false, true, true) => Outcome::Counted,
                (false, true, false) => Outcome::Duplicate,
            });
        }
        let mut window = DedupeWindow::new(60_000, 10_000);
        let decoded = decode_messages(&messages, &mut window, 100, 0, None).unwrap();
        assert_eq!(decoded.outcomes, expected);
        let counted: Vec<u32> = (0..700)
            .filter(|&i| expected[i as usize] == Outcome::Counted)
            .collect();
        assert_eq!(decoded.row_message, counted);
        assert_eq!(decoded.batch.num_rows(), counted.len());
        let invalid: Vec<usize> = decoded.invalid.iter().map(|(index, _)| *index).collect();
        assert_eq!(
            invalid,
            (0..700)
                .filter(|&i| expected[i] == Outcome::Invalid)
                .collect::<Vec<_>>()
        );
        assert_eq!(decoded.checkpoints.len(), 700);
    }

    #[test]
    fn a_reused_id_with_other_content_is_counted_once_and_dead_lettered() {
        let messages = [
            message(0, "a", "1"),
            message(1, "a", "2"),
            message(2, "a", "1"),
        ];
        let mut window = DedupeWindow::new(60_000, 1_000);
        let decoded = decode_messages(&messages, &mut window, 0, 0, None).unwrap();
        assert_eq!(
            decoded.counts,
            EventCounts {
                counted: 1,
                duplicate: 2,
                invalid: 0
            }
        );
        assert_eq!(decoded.invalid.len(), 1);
        let (index, reason) = &decoded.invalid[0];
        assert_eq!((*index, reason.field), (1, "event_id"));
        assert!(reason.reason.contains("conflicting duplicate"), "{reason}");
    }
}
