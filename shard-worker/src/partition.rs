//! One claimed partition: turns each batch of its messages into partials,
//! in offset order, until it is revoked, fenced or parked.
//!
//! A batch becomes one partial when that fits `partial_max_rows` and
//! `partial_max_bytes`, or else several of consecutive offset ranges
//! ([`crate::cut`]).

use std::sync::Arc;
use std::time::Instant;

use kafka::FutureProducer;
use rdkafka::producer::Producer;
use schemas::day::now_ms;
use store::{Claim, Store};
use tokio::sync::mpsc;

use crate::aggregate::{partial_rows, Rows, Session};
use crate::cut::{cut, Head, Limits, Span};
use crate::decode::{decode_messages, Decoded, Message, Outcome as Handled};
use crate::dedupe::DedupeWindow;
use crate::health::{self, ParkReason, Parked};
use crate::{metrics, publish};

/// What a read that starts at `first`, where `next_read` was asked for,
/// means. A read may start later when the log has no records there:
/// retention deleted them (the log now starts past `next_read`), or
/// compaction, transaction markers or aborted transactions left no record
/// at those offsets. A broker can also answer a seek from the wrong record
/// batch. So a start past `next_read` with the log starting at or before it is read
/// again once from `next_read` (`ReadAgain`, then `reread` holds `first`);
/// batches read before that seek start after `first` and are dropped
/// (`Stale`); the read again either has the offsets (`Healed`) or starts at
/// `first` again, a gap the log itself holds (`Explained`). Nothing is ever
/// counted past in silence.
pub fn gap_verdict(next_read: i64, first: i64, reread: Option<i64>, log_start: Option<i64>) -> Gap {
    match reread {
        Some(gap_first) if first > gap_first => Gap::Stale,
        Some(_) if first <= next_read => Gap::Healed,
        Some(_) => Gap::Explained("the log has no records there (compaction, transaction markers or aborted transactions): a read again started at the same offset"),
        None if first <= next_read => Gap::None,
        None if log_start.is_some_and(|low| low > next_read) => {
            Gap::Explained("retention deleted them before tally read them (the log starts past them)")
        }
        None => Gap::ReadAgain,
    }
}

/// See [`gap_verdict`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gap {
    /// The read starts where asked.
    None,
    /// Read before the seek back: drop it.
    Stale,
    /// The read again has the offsets.
    Healed,
    /// The log holds no records there, for this reason.
    Explained(&'static str),
    /// Read again from `next_read`.
    ReadAgain,
}

/// What every partition task of a worker shares.
pub struct Shared {
    /// Fences live here.
    pub store: Arc<Store>,
    /// Idempotent producer for partials and dead letters.
    pub producer: FutureProducer,
    /// DataFusion session for the partial aggregation.
    pub session: Session,
    /// Merchants' zones, for local days (none when the worker keeps none).
    pub zones: crate::zones::Watched,
    /// Source topic.
    pub orders_topic: String,
    /// Partials topic.
    pub partials_topic: String,
    /// Dead-letter topic.
    pub dlq_topic: String,
    /// Dedupe window length in ms.
    pub dedupe_window_ms: i64,
    /// Most ids one partition's window holds.
    pub dedupe_max_ids: usize,
    /// Most rows in one partial.
    pub partial_max_rows: usize,
    /// Most bytes of JSON in one partial.
    pub partial_max_bytes: usize,
    /// The brokers and client settings, to grow the partials topic when the
    /// orders topic grew.
    pub admin: (String, std::collections::BTreeMap<String, String>),
}

/// The state of one claimed partition.
pub struct PartitionTask {
    partition: i32,
    epoch: i64,
    next_offset: i64,
    /// The offset the next message should have if the log has no gap.
    next_read: i64,
    /// Whether the partials topic was seen to hold this partition.
    output_checked: bool,
    /// While a read that started past `next_read` is read again: its first
    /// offset. Batches that start after it were read before the seek.
    reread: Option<i64>,
    window: DedupeWindow,
    shared: Arc<Shared>,
}

/// What a task that stopped cleanly hands to its partition's next claim in
/// this process: the window exactly as it stood after the last message it
/// read. A claim that finds the fence where this task left it (nobody else
/// claimed or published since) resumes from here instead of re-reading the
/// whole dedupe window from the log.
pub struct Resume {
    /// The epoch the task published under.
    pub epoch: i64,
    /// The task's `next_offset`: the fence once its partials are applied.
    pub next_offset: i64,
    /// The first offset the task had not read.
    pub read_from: i64,
    window: DedupeWindow,
}

/// Why a partition task ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    /// Its channel closed: revoked or shutting down.
    Closed,
    /// Another worker holds a newer epoch.
    Fenced,
    /// It cannot advance without an operator (see [`health`]).
    Parked,
    /// The aggregator saw a gap at its epoch: a partial of it was lost. The
    /// consumer loop claims the partition again and rebuilds from the fence.
    Gap,
}

/// What handling one batch did.
enum Outcome {
    /// Partials were acknowledged; the new `next_offset`.
    Published(i64),
    /// Every message was below `next_offset`: only the dedupe window changed.
    Rebuilt,
    /// The database holds a newer epoch: nothing was published.
    Fenced,
    /// The broker refused this partition's output for good.
    Parked,
    /// A partial of this epoch was lost: nothing was published.
    Gap,
}

impl PartitionTask {
    /// A task for a partition just claimed with `claim`.
    pub fn new(partition: i32, claim: Claim, shared: Arc<Shared>) -> PartitionTask {
        let mut window = DedupeWindow::new(shared.dedupe_window_ms, shared.dedupe_max_ids);
        // The rebuild may not run the clock past where the last owner's was,
        // and the ids it reads sit beside the cap.
        window.rebuild_until(claim.next_offset, claim.dedupe_clock_ms.unwrap_or(i64::MAX));
        PartitionTask {
            partition,
            epoch: claim.epoch,
            next_offset: claim.next_offset,
            next_read: claim.dedupe_from_offset,
            output_checked: false,
            reread: None,
            window,
            shared,
        }
    }

    /// A task for a partition this process just claimed again, resuming
    /// from `resume` (see [`Resume`]). The caller checked that `claim`
    /// follows `resume.epoch` directly and starts at `resume.next_offset`.
    pub fn resume(
        partition: i32,
        claim: Claim,
        resume: Resume,
        shared: Arc<Shared>,
    ) -> PartitionTask {
        debug_assert!(claim.epoch == resume.epoch + 1 && claim.next_offset == resume.next_offset);
        PartitionTask {
            partition,
            epoch: claim.epoch,
            next_offset: claim.next_offset,
            next_read: resume.read_from,
            output_checked: false,
            reread: None,
            window: resume.window,
            shared,
        }
    }

    /// Handles batches until the channel closes, `stop` is cancelled, the
    /// partition is fenced, or it is parked. After each batch's partials are
    /// acknowledged, sends the next offset on `acks` (the Kafka commit hint).
    /// A task stopped by `stop` between batches returns its [`Resume`].
    ///
    /// When the aggregator has seen a gap at this task's epoch, the task
    /// sends its partition on `gaps` and ends ([`Ended::Gap`]).
    pub async fn run(
        mut self,
        mut batches: mpsc::Receiver<Vec<Message>>,
        acks: std::sync::mpsc::Sender<(i32, i64)>,
        (gaps, rereads): (
            std::sync::mpsc::Sender<i32>,
            std::sync::mpsc::Sender<(i32, i64)>,
        ),
        stop: tokio_util::sync::CancellationToken,
    ) -> (Ended, Option<Resume>) {
        let label = self.partition.to_string();
        let mut stopped = false;
        let ended = loop {
            let batch = tokio::select! {
                biased;
                () = stop.cancelled() => {
                    stopped = true;
                    break Ended::Closed;
                }
                batch = batches.recv() => batch,
            };
            let Some(batch) = batch else {
                break Ended::Closed;
            };
            match self.handle(batch, &rereads).await {
                Outcome::Published(next) => {
                    let _ = acks.send((self.partition, next));
                }
                Outcome::Rebuilt => {}
                Outcome::Fenced => {
                    metrics::FENCED.inc();
                    tracing::warn!(
                        partition = self.partition,
                        epoch = self.epoch,
                        "Partition fenced by a newer claim; stopping it."
                    );
                    break Ended::Fenced;
                }
                Outcome::Parked => break Ended::Parked,
                Outcome::Gap => {
                    metrics::GAP_RECLAIMS.inc();
                    tracing::warn!(
                        partition = self.partition,
                        epoch = self.epoch,
                        "The aggregator refused a partial of this epoch for a gap: one before it was lost. \
                         Claiming the partition again to publish again from the fence."
                    );
                    let _ = gaps.send(self.partition);
                    break Ended::Gap;
                }
            }
            metrics::DEDUPE_IDS
                .with_label_values(&[&label])
                .set(self.window.len() as i64);
            metrics::DEDUPE_EVICTED.inc_by(self.window.take_evicted_by_cap());
        };
        let _ = metrics::DEDUPE_IDS.remove_label_values(&[&label]);
        let resume = stopped.then_some(Resume {
            epoch: self.epoch,
            next_offset: self.next_offset,
            read_from: self.next_read,
            window: self.window,
        });
        (ended, resume)
    }

    /// Whether this task may publish: `Fenced` when another claim holds a
    /// newer epoch, `Gap` when the aggregator refused a partial of this
    /// epoch for a gap.
    async fn standing(&self) -> Option<Outcome> {
        let (store, topic, partition) = (
            &self.shared.store,
            &self.shared.orders_topic,
            self.partition,
        );
        match publish::retry("epoch_read", || store.epoch(topic, partition)).await {
            Ok(Some(standing)) if standing.epoch == self.epoch => {
                standing.gap().then_some(Outcome::Gap)
            }
            Ok(_) => Some(Outcome::Fenced),
            Err(error) => {
                // A permanent database error on a one-row read: stop this
                // partition and let a new claim try again.
                tracing::error!(partition, %error, "Cannot read the partition's epoch; stopping it.");
                Some(Outcome::Fenced)
            }
        }
    }

    /// Whether a read that starts at `first` may be counted from, as
    /// [`gap_verdict`] judges it with the log start (read from the broker
    /// only when the read starts past `next_read`, so never on the hot
    /// path). A read to do again is asked of the consumer loop on
    /// `rereads`, and the batch is dropped.
    async fn check_start(
        &mut self,
        first: i64,
        rereads: &std::sync::mpsc::Sender<(i32, i64)>,
    ) -> bool {
        if first <= self.next_read && self.reread.is_none() {
            return true;
        }
        let log_start = if first > self.next_read && self.reread.is_none() {
            self.log_start().await
        } else {
            None
        };
        match gap_verdict(self.next_read, first, self.reread, log_start) {
            Gap::None => true,
            Gap::Stale => false,
            Gap::Healed => {
                self.reread = None;
                tracing::info!(
                    partition = self.partition,
                    from = self.next_read,
                    "Read again from the offset asked for: the offsets are there."
                );
                true
            }
            Gap::Explained(why) => {
                self.reread = None;
                let missing = (first - self.next_read) as u64;
                // Below the fence the offsets were counted once already and
                // are only the dedupe window's rebuild; from the fence on,
                // they were never counted.
                let window_missing = (first.min(self.next_offset) - self.next_read).max(0) as u64;
                let never_counted = missing - window_missing;
                metrics::SKIPPED_OFFSETS.inc_by(missing);
                metrics::WINDOW_NOT_REBUILT.inc_by(window_missing);
                tracing::warn!(
                    partition = self.partition,
                    from = self.next_read,
                    to = first - 1,
                    missing,
                    window_missing,
                    never_counted,
                    why,
                    "Offsets missing from the log; events there, if any, were never seen. Of them, \
                     `window_missing` lay in the dedupe window's rebuild (counted before; a retry of \
                     one of those events is not caught), and `never_counted` lay past the fence."
                );
                true
            }
            Gap::ReadAgain => {
                self.reread = Some(first);
                metrics::REREADS.inc();
                tracing::warn!(partition = self.partition, asked = self.next_read, got = first,
                    "A read started past the offset asked for, and the log starts before it; reading it again.");
                let _ = rereads.send((self.partition, self.next_read));
                false
            }
        }
    }

    /// The partition's log start offset, when the broker says.
    async fn log_start(&self) -> Option<i64> {
        let (producer, topic, partition) = (
            self.shared.producer.clone(),
            self.shared.orders_topic.clone(),
            self.partition,
        );
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_watermarks(&topic, partition, std::time::Duration::from_secs(10))
                .ok()
                .map(|(low, _)| low)
        })
        .await
        .ok()
        .flatten()
    }

    async fn handle(
        &mut self,
        batch: Vec<Message>,
        rereads: &std::sync::mpsc::Sender<(i32, i64)>,
    ) -> Outcome {
        let Some(last_offset) = batch.last().map(|m| m.offset) else {
            return Outcome::Rebuilt;
        };
        if !self.check_start(batch[0].offset, rereads).await {
            return Outcome::Rebuilt;
        }
        let started = Instant::now();
        let count_from = self.next_offset;
        self.next_read = last_offset + 1;
        let mut window = std::mem::replace(&mut self.window, DedupeWindow::new(0, 1));
        let session = self.shared.session.clone();
        let zones = self.shared.zones.current();
        let handle = tokio::runtime::Handle::current();
        // Decoding and DataFusion are CPU-bound: keep them off the reactor.
        let now = now_ms();
        let (window, batch, decoded, rows) = tokio::task::spawn_blocking(move || {
            window.set_ceiling(now);
            let decoded = decode_messages(&batch, &mut window, count_from, now, zones);
            let rows = decoded
                .as_ref()
                .ok()
                .map(|d| handle.block_on(partial_rows(&session, d.batch.clone())));
            (window, batch, decoded, rows)
        })
        .await
        .expect("decode task does not panic");
        self.window = window;
        if last_offset < count_from {
            return Outcome::Rebuilt;
        }
        let decoded: Decoded = decoded.expect("decoded batches match the event schema");
        let rows = rows
            .expect("present when decoded")
            .expect("aggregation of a valid batch succeeds");
        metrics::BATCH_EVENTS.observe(batch.len() as f64);
        metrics::BATCH_SECONDS.observe(started.elapsed().as_secs_f64());

        // Dead letters first: once a partial is applied, its range is never
        // read again, so its invalid events must already be durable. The
        // epoch is read meanwhile: a read, so the order does not matter.
        let shared = self.shared.clone();
        let dead_letters = publish::dead_letters(
            &shared.producer,
            &shared.dlq_topic,
            &shared.orders_topic,
            self.partition,
            &batch,
            &decoded.invalid,
        );
        let (written, standing) = tokio::join!(dead_letters, self.standing());
        if let Err(error) = written {
            return self.park(
                last_offset,
                format!("the broker refused a dead-letter record: {error}"),
            );
        }
        if let Some(stop) = standing {
            return stop;
        }
        if !self.output_checked {
            // Once per claim: the orders topic may have grown past the
            // partials topic since the worker started.
            let shared = self.shared.clone();
            let (brokers, extra) = &shared.admin;
            let ensured = kafka::topics::ensure_partials_partition(
                brokers,
                extra,
                &shared.producer,
                &shared.partials_topic,
                self.partition,
            )
            .await;
            if let Err(detail) = ensured {
                return self.park(last_offset, detail);
            }
            self.output_checked = true;
        }
        let start = decoded
            .outcomes
            .iter()
            .position(|o| *o != Handled::Rebuilt)
            .unwrap_or(batch.len());
        self.publish(
            &batch,
            &decoded,
            Span {
                start,
                end: batch.len(),
            },
            rows,
        )
        .await
    }

    /// Publishes the batch's partials, cut to fit ([`cut`]), in offset
    /// order, each acknowledged before the next. A piece the broker refuses
    /// as too large is cut again to half its size.
    async fn publish(
        &mut self,
        batch: &[Message],
        decoded: &Decoded,
        whole: Span,
        whole_rows: Rows,
    ) -> Outcome {
        let shared = self.shared.clone();
        let limits = Limits {
            max_rows: shared.partial_max_rows,
            max_bytes: shared.partial_max_bytes,
        };
        let head = Head {
            topic: &shared.orders_topic,
            partition: self.partition,
            epoch: self.epoch,
        };
        let mut pending = cut(
            &shared.session,
            &head,
            batch,
            decoded,
            self.next_offset,
            whole,
            Some(whole_rows),
            limits,
        )
        .await;
        pending.reverse();
        let mut parts = 0;
        while let Some(piece) = pending.pop() {
            match publish::publish_payload(
                &shared.producer,
                &shared.partials_topic,
                &piece.partial,
                &piece.payload,
            )
            .await
            {
                Ok(()) => {}
                Err(error)
                    if kafka::error::is_too_large(&error)
                        && piece.span.end - piece.span.start > 1 =>
                {
                    tracing::warn!(
                        partition = self.partition,
                        bytes = piece.payload.len(),
                        "The broker refused a partial as too large; cutting it smaller."
                    );
                    let smaller = Limits {
                        max_bytes: piece.payload.len() / 2,
                        ..limits
                    };
                    let again = cut(
                        &shared.session,
                        &head,
                        batch,
                        decoded,
                        self.next_offset,
                        piece.span,
                        None,
                        smaller,
                    )
                    .await;
                    pending.extend(again.into_iter().rev());
                    continue;
                }
                Err(error) => {
                    return self.park(
                        piece.partial.last_offset,
                        format!("the broker refused a partial: {error}"),
                    )
                }
            }
            let events = piece.partial.events;
            for (outcome, n) in [
                ("counted", events.counted),
                ("duplicate", events.duplicate),
                ("invalid", events.invalid),
            ] {
                metrics::EVENTS.with_label_values(&[outcome]).inc_by(n);
            }
            self.next_offset = piece.partial.last_offset + 1;
            parts += 1;
        }
        metrics::PARTIALS_PER_BATCH.observe(f64::from(parts));
        Outcome::Published(self.next_offset)
    }

    fn park(&self, last_offset: i64, detail: String) -> Outcome {
        let parked = Parked {
            reason: ParkReason::BrokerRefused,
            first_offset: self.next_offset,
            last_offset: Some(last_offset),
            detail,
        };
        health::park(&self.shared.orders_topic, self.partition, parked);
        Outcome::Parked
    }
}

#[cfg(test)]
mod gaps {
    use super::{gap_verdict, Gap};

    #[test]
    fn a_read_past_the_offset_asked_for_is_explained_or_read_again() {
        // Where asked: nothing to say.
        assert_eq!(gap_verdict(100, 100, None, None), Gap::None);
        // Retention: the log starts past the offset asked for.
        assert!(
            matches!(gap_verdict(100, 150, None, Some(150)), Gap::Explained(why) if why.contains("retention"))
        );
        // The log starts before it (or the broker cannot say): read again.
        assert_eq!(gap_verdict(100, 150, None, Some(0)), Gap::ReadAgain);
        assert_eq!(gap_verdict(100, 150, None, None), Gap::ReadAgain);
        // Batches read before the seek back start after the gap's first offset.
        assert_eq!(gap_verdict(100, 151, Some(150), None), Gap::Stale);
        assert_eq!(gap_verdict(100, 400, Some(150), None), Gap::Stale);
        // The read again has the offsets: healed.
        assert_eq!(gap_verdict(100, 100, Some(150), None), Gap::Healed);
        // It starts at the same offset again: the log holds the gap.
        assert!(
            matches!(gap_verdict(100, 150, Some(150), None), Gap::Explained(why) if why.contains("compaction"))
        );
        // Part of it was there after all: still no silent skip.
        assert!(matches!(
            gap_verdict(100, 120, Some(150), None),
            Gap::Explained(_)
        ));
    }
}
