//! Cutting a batch into partials that fit any broker.
//!
//! A batch of many keys (a backlog of 40,000 merchants, say) would make one
//! partial far larger than a broker takes. [`cut`] makes one partial when it
//! fits `max_rows` and `max_bytes`, or else halves the batch by messages,
//! and halves again, until every piece fits. The pieces cover consecutive
//! offset ranges, the first starting where the partition's last partial
//! ended, so the fence applies them one after another; each carries the
//! dedupe window's state at its own last message, so a crash between two of
//! them loses and doubles nothing. A single message always fits: its partial
//! has at most one row of each kind (UTC day, local day).

use schemas::partial::EventCounts;
use schemas::Partial;

use crate::aggregate::{partial_rows, Rows, Session};
use crate::decode::{Decoded, Message, Outcome};

/// A run of messages of one batch, by index: `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First message.
    pub start: usize,
    /// One past the last message.
    pub end: usize,
}

/// How large one partial may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Rows (keys), UTC and local together.
    pub max_rows: usize,
    /// Bytes of JSON.
    pub max_bytes: usize,
}

/// What every partial of a partition says about its source.
#[derive(Debug, Clone, Copy)]
pub struct Head<'a> {
    /// Source topic.
    pub topic: &'a str,
    /// Source partition.
    pub partition: i32,
    /// The claim's epoch.
    pub epoch: i64,
}

/// One partial, its JSON, and the messages it covers.
#[derive(Debug, Clone)]
pub struct Piece {
    /// The partial.
    pub partial: Partial,
    /// Its JSON, as published.
    pub payload: Vec<u8>,
    /// The messages it covers.
    pub span: Span,
}

/// The partials of `whole`, in offset order, each within `limits` unless it
/// covers a single message. The first starts at `first_offset`; `whole_rows`,
/// when given, are the already computed rows of all of `whole`.
///
/// # Panics
///
/// When DataFusion fails on a batch that matches the event schema (a bug).
#[allow(clippy::too_many_arguments)]
pub async fn cut(
    session: &Session,
    head: &Head<'_>,
    batch: &[Message],
    decoded: &Decoded,
    first_offset: i64,
    whole: Span,
    whole_rows: Option<Rows>,
    limits: Limits,
) -> Vec<Piece> {
    let mut pending = vec![(whole, whole_rows)];
    let mut pieces: Vec<Piece> = Vec::new();
    let mut next_first = first_offset;
    while let Some((span, rows)) = pending.pop() {
        let rows = match rows {
            Some(rows) => rows,
            None => aggregate(session, decoded, span).await,
        };
        let partial = partial_of(head, batch, decoded, next_first, span, rows);
        let payload = serde_json::to_vec(&partial).expect("partials always serialise");
        let keys = partial.rows.len() + partial.local_rows.len();
        let fits = keys <= limits.max_rows && payload.len() <= limits.max_bytes;
        if !fits && span.end - span.start > 1 {
            let middle = span.start + (span.end - span.start) / 2;
            pending.push((
                Span {
                    start: middle,
                    end: span.end,
                },
                None,
            ));
            pending.push((
                Span {
                    start: span.start,
                    end: middle,
                },
                None,
            ));
            continue;
        }
        next_first = partial.last_offset + 1;
        pieces.push(Piece {
            partial,
            payload,
            span,
        });
    }
    pieces
}

/// The partial totals of the counted events of `span`, computed off the reactor.
async fn aggregate(session: &Session, decoded: &Decoded, span: Span) -> Rows {
    let from = decoded
        .row_message
        .partition_point(|&m| (m as usize) < span.start);
    let to = decoded
        .row_message
        .partition_point(|&m| (m as usize) < span.end);
    let slice = decoded.batch.slice(from, to - from);
    let (session, handle) = (session.clone(), tokio::runtime::Handle::current());
    tokio::task::spawn_blocking(move || handle.block_on(partial_rows(&session, slice)))
        .await
        .expect("aggregation task does not panic")
        .expect("aggregation of a valid batch succeeds")
}

/// The partial of `span`, starting at `first_offset` so that ranges stay
/// contiguous across log gaps.
fn partial_of(
    head: &Head<'_>,
    batch: &[Message],
    decoded: &Decoded,
    first_offset: i64,
    span: Span,
    rows: Rows,
) -> Partial {
    let last = span.end - 1;
    let mut events = EventCounts::default();
    let mut max_append_ms = None;
    for (message, outcome) in batch[span.start..span.end]
        .iter()
        .zip(&decoded.outcomes[span.start..span.end])
    {
        match outcome {
            Outcome::Counted => events.counted += 1,
            Outcome::Duplicate => events.duplicate += 1,
            Outcome::Invalid => events.invalid += 1,
            Outcome::Rebuilt => continue,
        }
        max_append_ms = max_append_ms.max(message.timestamp_ms);
    }
    let checkpoint = decoded.checkpoints[last];
    Partial {
        topic: head.topic.to_owned(),
        partition: head.partition,
        epoch: head.epoch,
        first_offset,
        last_offset: batch[last].offset,
        dedupe_from_offset: checkpoint.dedupe_from_offset,
        dedupe_clock_ms: checkpoint.dedupe_clock_ms,
        events,
        max_append_ms: max_append_ms.or(decoded.max_append_ms),
        rows: rows.utc,
        local_rows: rows.local,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::decode_messages;
    use crate::dedupe::DedupeWindow;
    use schemas::Totals;

    fn messages(merchants: usize) -> Vec<Message> {
        (0..merchants)
            .map(|i| {
                let payload = format!(
                    r#"{{"event_id":"e{i}","order_id":"o","merchant_id":"m-{i}","kind":"sale","amount":"1.5","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}"#
                );
                // Offsets with a gap, and a duplicate every tenth message.
                let payload = if i % 10 == 9 { payload.replace(&format!("e{i}"), "e0").replace(&format!("m-{i}"), "m-0") } else { payload };
                Message { offset: 100 + (i as i64) * 2, key: None, payload: payload.into_bytes(), timestamp_ms: Some(1_000), headers: vec![] }
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pieces_fit_cover_the_range_contiguously_and_add_up() {
        let batch = messages(5_000);
        let mut window = DedupeWindow::new(60_000, 100_000);
        let decoded = decode_messages(&batch, &mut window, 0, 0, None).unwrap();
        let session = crate::aggregate::session(false);
        let head = Head {
            topic: "orders",
            partition: 3,
            epoch: 2,
        };
        let whole = Span {
            start: 0,
            end: batch.len(),
        };
        let limits = Limits {
            max_rows: 700,
            max_bytes: 64 * 1024,
        };
        let pieces = cut(&session, &head, &batch, &decoded, 90, whole, None, limits).await;
        assert!(pieces.len() >= 8, "{} pieces", pieces.len());
        assert_eq!(
            pieces[0].partial.first_offset, 90,
            "the first starts at the claimed next_offset"
        );
        assert_eq!(
            pieces.last().unwrap().partial.last_offset,
            batch.last().unwrap().offset
        );
        for pair in pieces.windows(2) {
            assert_eq!(
                pair[1].partial.first_offset,
                pair[0].partial.last_offset + 1,
                "contiguous"
            );
        }
        let (mut totals, mut events) = (Totals::new(), EventCounts::default());
        for piece in &pieces {
            assert!(
                piece.partial.rows.len() <= limits.max_rows
                    && piece.payload.len() <= limits.max_bytes
            );
            schemas::totals::merge_into(
                &mut totals,
                piece.partial.rows.iter().map(|r| (r.key.clone(), r.sums)),
            );
            events.counted += piece.partial.events.counted;
            events.duplicate += piece.partial.events.duplicate;
        }
        let one = cut(
            &session,
            &head,
            &batch,
            &decoded,
            90,
            whole,
            None,
            Limits {
                max_rows: usize::MAX,
                max_bytes: usize::MAX,
            },
        )
        .await;
        assert_eq!(one.len(), 1);
        let single: Totals = one[0]
            .partial
            .rows
            .iter()
            .map(|r| (r.key.clone(), r.sums))
            .collect();
        assert_eq!(totals, single, "the pieces add up to the whole");
        assert_eq!((events.counted, events.duplicate), (4_500, 500));
    }
}
