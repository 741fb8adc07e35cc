//! One claimed partition: turns each batch of its messages into a partial,
//! in offset order, until it is revoked or fenced.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use datafusion::prelude::SessionContext;
use rdkafka::producer::FutureProducer;
use schemas::Partial;
use store::{Claim, Store};
use tokio::sync::mpsc;

use crate::aggregate::partial_rows;
use crate::decode::{decode_messages, Decoded, Message};
use crate::dedupe::DedupeWindow;
use crate::{metrics, publish};

/// What every partition task of a worker shares.
pub struct Shared {
    /// Fences live here.
    pub store: Arc<Store>,
    /// Idempotent producer for partials and dead letters.
    pub producer: FutureProducer,
    /// DataFusion session for the partial aggregation.
    pub session: SessionContext,
    /// Source topic.
    pub orders_topic: String,
    /// Partials topic.
    pub partials_topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Dedupe window length in ms.
    pub dedupe_window_ms: i64,
}

/// The state of one claimed partition.
pub struct PartitionTask {
    partition: i32,
    epoch: i64,
    next_offset: i64,
    /// The offset the next message should have if the log has no gap.
    next_read: i64,
    window: DedupeWindow,
    shared: Arc<Shared>,
}

/// Why a partition task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its channel closed: revoked or shutting down.
    Closed,
    /// Another worker holds a newer epoch.
    Fenced,
}

/// What handling one batch did.
enum Outcome {
    /// A partial was acknowledged; the new `next_offset`.
    Published(i64),
    /// Every message was below `next_offset`: only the dedupe window changed.
    Rebuilt,
    /// The database holds a newer epoch: nothing was published.
    Fenced,
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl PartitionTask {
    /// A task for a partition just claimed with `claim`.
    pub fn new(partition: i32, claim: Claim, shared: Arc<Shared>) -> PartitionTask {
        PartitionTask {
            partition,
            epoch: claim.epoch,
            next_offset: claim.next_offset,
            next_read: claim.dedupe_from_offset,
            window: DedupeWindow::new(shared.dedupe_window_ms),
            shared,
        }
    }

    /// Handles batches until the channel closes or the partition is fenced.
    /// After each published partial, sends the next offset on `acks` (the
    /// Kafka commit hint).
    pub async fn run(mut self, mut batches: mpsc::Receiver<Vec<Message>>, acks: std::sync::mpsc::Sender<(i32, i64)>) -> Ended {
        while let Some(batch) = batches.recv().await {
            match self.handle(batch).await {
                Outcome::Published(next) => {
                    let _ = acks.send((self.partition, next));
                }
                Outcome::Rebuilt => {}
                Outcome::Fenced => {
                    metrics::FENCED.inc();
                    tracing::warn!(partition = self.partition, epoch = self.epoch, "Partition fenced by a newer claim; stopping it.");
                    return Ended::Fenced;
                }
            }
        }
        Ended::Closed
    }

    async fn fenced_now(&self) -> bool {
        let (store, topic, partition) = (&self.shared.store, &self.shared.orders_topic, self.partition);
        let epoch = publish::retry("epoch_read", || store.epoch(topic, partition)).await;
        epoch != Some(self.epoch)
    }

    /// Gaps are legitimate after compaction or transaction markers, but a gap
    /// at the start usually means retention deleted records before tally read
    /// them: say so loudly, since those events can no longer be counted.
    fn note_gap(&mut self, first: i64, last: i64) {
        if first > self.next_read {
            let missing = (first - self.next_read) as u64;
            metrics::SKIPPED_OFFSETS.inc_by(missing);
            tracing::warn!(partition = self.partition, from = self.next_read, to = first - 1, missing,
                "Offsets missing from the log (retention, compaction or transaction markers); events there were never seen.");
        }
        self.next_read = last + 1;
    }

    async fn handle(&mut self, batch: Vec<Message>) -> Outcome {
        let Some(last_offset) = batch.last().map(|m| m.offset) else {
            return Outcome::Rebuilt;
        };
        let started = Instant::now();
        let count_from = self.next_offset;
        self.note_gap(batch[0].offset, last_offset);
        let window = std::mem::replace(&mut self.window, DedupeWindow::new(0));
        let session = self.shared.session.clone();
        let handle = tokio::runtime::Handle::current();
        // Decoding and DataFusion are CPU-bound: keep them off the reactor.
        let (window, batch, decoded, rows) = tokio::task::spawn_blocking(move || {
            let mut window = window;
            let decoded = decode_messages(&batch, &mut window, count_from, now_ms());
            let rows = decoded.as_ref().ok().map(|d| handle.block_on(partial_rows(&session, d.batch.clone())));
            (window, batch, decoded, rows)
        })
        .await
        .expect("decode task does not panic");
        self.window = window;
        if last_offset < count_from {
            return Outcome::Rebuilt;
        }
        let decoded: Decoded = decoded.expect("decoded batches match the event schema");
        let rows = rows.expect("present when decoded").expect("aggregation of a valid batch succeeds");
        metrics::BATCH_EVENTS.observe(batch.len() as f64);
        metrics::BATCH_SECONDS.observe(started.elapsed().as_secs_f64());

        // Dead letters first: once the partial is applied, its range is never
        // read again, so its invalid events must already be durable.
        let shared = self.shared.clone();
        publish::dead_letters(&shared.producer, &shared.dlq_topic, &shared.orders_topic, self.partition, &batch, &decoded.invalid).await;
        if self.fenced_now().await {
            return Outcome::Fenced;
        }
        let partial = Partial {
            topic: shared.orders_topic.clone(),
            partition: self.partition,
            epoch: self.epoch,
            first_offset: count_from,
            last_offset,
            dedupe_from_offset: self.window.dedupe_from_offset(last_offset + 1),
            events: decoded.counts,
            max_append_ms: decoded.max_append_ms,
            rows,
        };
        publish::partial(&shared.producer, &shared.partials_topic, &partial).await;
        for (outcome, n) in [("counted", partial.events.counted), ("duplicate", partial.events.duplicate), ("invalid", partial.events.invalid)] {
            metrics::EVENTS.with_label_values(&[outcome]).inc_by(n);
        }
        self.next_offset = last_offset + 1;
        Outcome::Published(self.next_offset)
    }
}
