//! The buffer of partials read since the last flush began, and the flush
//! that applies them in one fenced transaction (in its own task, so that
//! the next buffer fills meanwhile).
//!
//! A flush is retried while the database fails transiently. When it fails
//! permanently, the flush is redone partition by partition, and within the
//! failing partition partial by partial, so that the one partial at fault is
//! found: its partition is parked ([`crate::health`]) and every other
//! partition's partials are committed.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Instant;

use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Partial;
use store::{Plan, SourcePartition, Store, StoreError};
use tokio_util::sync::CancellationToken;

use crate::health::{self, ParkReason, Parked, PartialsContext};
use crate::metrics;

/// A partial with where it was read from.
struct Read {
    partials_partition: i32,
    partials_offset: i64,
    partial: Partial,
}

/// Partials read since the last flush, and the partials-topic offsets to
/// commit (as a restart hint) once they are durable.
#[derive(Default)]
pub struct Buffer {
    read: Vec<Read>,
    next_offsets: HashMap<i32, i64>,
}

/// The source partition a partial's message key names (`"<topic>/<partition>"`).
fn source_of_key(key: &[u8]) -> Option<SourcePartition> {
    let (topic, partition) = std::str::from_utf8(key).ok()?.rsplit_once('/')?;
    Some((topic.to_owned(), partition.parse().ok()?))
}

impl Buffer {
    /// Partials waiting.
    pub fn len(&self) -> usize {
        self.read.len()
    }

    /// True when there is nothing to flush or commit.
    pub fn is_empty(&self) -> bool {
        self.next_offsets.is_empty()
    }

    /// Takes in one message of the partials topic. A partial of a parked
    /// partition is dropped (it is read again after the restart that
    /// unparks it); an unreadable one parks its partition.
    pub fn add(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        let (partition, offset) = (message.partition(), message.offset());
        self.next_offsets.insert(partition, offset + 1);
        match serde_json::from_slice::<Partial>(message.payload().unwrap_or_default()) {
            Ok(partial)
                if health::parked(&(partial.topic.clone(), partial.partition)).is_some() => {}
            Ok(partial) => self.read.push(Read {
                partials_partition: partition,
                partials_offset: offset,
                partial,
            }),
            Err(error) => {
                metrics::PARTIALS.with_label_values(&["violation"]).inc();
                // The key names the source even when the payload is garbage;
                // without one, the partials partition stands in for it.
                let source = message
                    .key()
                    .and_then(source_of_key)
                    .unwrap_or_else(|| ("?".to_owned(), partition));
                let detail = format!(
                    "the partial at partials offset {partition}/{offset} is unreadable: {error}"
                );
                let parked = Parked {
                    reason: ParkReason::UnreadablePartial,
                    partials_partition: partition,
                    partials_offset: offset,
                    range: None,
                    detail,
                };
                health::park(&source, parked);
            }
        }
        metrics::BUFFERED.set(self.read.len() as i64);
    }

    /// Takes the partials read so far, leaving an empty buffer.
    pub fn take(&mut self) -> Buffer {
        metrics::BUFFERED.set(0);
        std::mem::take(self)
    }
}

/// Applies `buffer`, retrying transient failures until it commits or `stop`
/// is cancelled, isolating permanent ones. Then commits the partials
/// offsets as restart hints, never past a parked partial.
///
/// Returns the buffer unapplied when `stop` came first, else an empty one.
/// The flush owns its buffer, so the next one fills while it runs.
pub async fn flush(
    store: Arc<Store>,
    consumer: Arc<StreamConsumer<PartialsContext>>,
    topic: Arc<str>,
    mut buffer: Buffer,
    stop: CancellationToken,
) -> Buffer {
    if buffer.is_empty() {
        return buffer;
    }
    // A partition parked by the flush before this one has nothing more applied.
    buffer
        .read
        .retain(|r| health::parked(&(r.partial.topic.clone(), r.partial.partition)).is_none());
    let partials: Vec<Partial> = buffer.read.iter().map(|r| r.partial.clone()).collect();
    match apply(&store, &partials, &stop).await {
        Some(Ok(plan)) => record(&plan),
        Some(Err(error)) => {
            tracing::warn!(%error, partials = partials.len(), "Flush refused by the database; finding the partial at fault.");
            if !isolate(&store, &buffer.read, &stop).await {
                return buffer;
            }
        }
        None => return buffer,
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in buffer.next_offsets.drain() {
        let next = health::commit_limit(partition).map_or(next, |limit| next.min(limit));
        let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(next));
    }
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%error, "Partials offset commit failed; partials will be re-read and dropped as applied.");
    }
    Buffer::default()
}

/// One transaction for `partials`, retried while the error is transient.
/// `None` when `stop` came first; `Some(Err)` for a permanent error.
async fn apply(
    store: &Store,
    partials: &[Partial],
    stop: &CancellationToken,
) -> Option<Result<Plan, StoreError>> {
    let attempt = || async {
        let started = Instant::now();
        let plan = store.apply(partials).await?;
        metrics::FLUSH_SECONDS.observe(started.elapsed().as_secs_f64());
        Ok::<Plan, StoreError>(plan)
    };
    let on_retry = |_: &StoreError| {
        metrics::FLUSH_ERRORS.inc();
        metrics::RETRIES.with_label_values(&["flush"]).inc();
    };
    tokio::select! {
        result = retry::retry("flush", attempt, on_retry) => Some(result),
        () = stop.cancelled() => None,
    }
}

/// After a permanent failure: applies each source partition's partials on
/// their own, and in a partition that fails, one partial at a time up to the
/// one at fault, which parks the partition. False when `stop` came first.
async fn isolate(store: &Store, read: &[Read], stop: &CancellationToken) -> bool {
    let mut by_source: BTreeMap<SourcePartition, Vec<&Read>> = BTreeMap::new();
    for r in read {
        by_source
            .entry((r.partial.topic.clone(), r.partial.partition))
            .or_default()
            .push(r);
    }
    for (source, reads) in by_source {
        let partials: Vec<Partial> = reads.iter().map(|r| r.partial.clone()).collect();
        match apply(store, &partials, stop).await {
            Some(Ok(plan)) => {
                record(&plan);
                continue;
            }
            Some(Err(_)) => {}
            None => return false,
        }
        for r in reads {
            match apply(store, std::slice::from_ref(&r.partial), stop).await {
                Some(Ok(plan)) => record(&plan),
                Some(Err(error)) => {
                    debug_assert!(!error.is_retryable());
                    let p = &r.partial;
                    let detail = format!("the database refused the partial's rows: {error}");
                    let parked = Parked {
                        reason: ParkReason::DatabaseRefused,
                        partials_partition: r.partials_partition,
                        partials_offset: r.partials_offset,
                        range: Some((p.first_offset, p.last_offset)),
                        detail,
                    };
                    health::park(&source, parked);
                    break;
                }
                None => return false,
            }
        }
    }
    true
}

fn record(plan: &Plan) {
    health::note_without_local_days(&plan.without_local_days);
    metrics::PARTIALS
        .with_label_values(&["applied"])
        .inc_by(plan.applied);
    metrics::PARTIALS
        .with_label_values(&["older_epoch"])
        .inc_by(plan.older_epoch);
    metrics::PARTIALS
        .with_label_values(&["already_applied"])
        .inc_by(plan.already_applied);
    metrics::PARTIALS
        .with_label_values(&["violation"])
        .inc_by(plan.violations.len() as u64);
    metrics::UPSERT_ROWS.inc_by(plan.deltas.len() as u64);
    for adjustment in &plan.adjustments {
        let sums = &adjustment.sums;
        let moved = schemas::Amount(sums.sales_amount.0.abs() + sums.refund_amount.0.abs());
        metrics::count_adjustment(&adjustment.currency, "stream", moved);
    }
    for counts in plan.events.values() {
        metrics::EVENTS
            .with_label_values(&["counted"])
            .inc_by(counts.counted);
        metrics::EVENTS
            .with_label_values(&["duplicate"])
            .inc_by(counts.duplicate);
        metrics::EVENTS
            .with_label_values(&["invalid"])
            .inc_by(counts.invalid);
    }
    let now_ms = schemas::day::now_ms();
    for &(partition, append_ms) in &plan.applied_append_ms {
        metrics::END_TO_END.observe((now_ms - append_ms).max(0) as f64 / 1000.0);
        metrics::note_committed(partition, append_ms);
    }
    for violation in &plan.violations {
        tracing::error!(
            topic = violation.source.0,
            partition = violation.source.1,
            epoch = violation.epoch,
            first_offset = violation.first_offset,
            reason = violation.reason,
            "Fence invariant violated; partial not applied."
        );
    }
    if plan.older_epoch + plan.already_applied > 0 {
        tracing::debug!(
            older_epoch = plan.older_epoch,
            already_applied = plan.already_applied,
            "Dropped stale partials."
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_source() {
        assert_eq!(source_of_key(b"orders/3"), Some(("orders".to_owned(), 3)));
        assert_eq!(source_of_key(b"a/b/12"), Some(("a/b".to_owned(), 12)));
        assert_eq!(source_of_key(b"garbage"), None);
        assert_eq!(source_of_key(b"orders/x"), None);
    }
}
