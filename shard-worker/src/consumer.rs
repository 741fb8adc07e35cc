//! The consumer thread: claims partitions as they are assigned, reads
//! messages, cuts them into batches by count and time, and hands each batch
//! to its partition's task.
//!
//! Claims happen inside the rebalance callback, before `assign`, so the
//! consumer starts every partition exactly at the database's
//! `dedupe_from_offset` and never at Kafka's committed offset.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc::error::TrySendError;
use store::Claim;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::decode::Message;
use crate::health::{self, ParkReason, Parked};
use crate::lag::Offsets;
use crate::partition::{Ended, PartitionTask, Shared};
use crate::{metrics, publish};

/// A change of assignment, recorded by the rebalance callback and acted on by
/// the consumer loop right after the poll that triggered it.
enum Control {
    Assigned(i32, Claim),
    Revoked(Vec<i32>),
}

/// Consumer context that claims each assigned partition in the database.
pub struct ClaimContext {
    shared: Arc<Shared>,
    handle: Handle,
    owner: String,
    controls: Mutex<Vec<Control>>,
    /// High watermarks and held partitions, for the lag reporter.
    offsets: Arc<Offsets>,
    shutdown: CancellationToken,
}

impl ClaimContext {
    /// A context claiming partitions of `shared.orders_topic` as `owner`.
    pub fn new(shared: Arc<Shared>, handle: Handle, owner: String, offsets: Arc<Offsets>, shutdown: CancellationToken) -> ClaimContext {
        ClaimContext {
            shared,
            handle,
            owner,
            controls: Mutex::new(Vec::new()),
            offsets,
            shutdown,
        }
    }

    fn push(&self, control: Control) {
        self.controls.lock().expect("controls lock").push(control);
    }

    /// `None` on shutdown; an error when the database refuses the claim for good.
    fn claim(&self, partition: i32) -> Option<Result<Claim, store::StoreError>> {
        let (store, topic, owner) = (&self.shared.store, &self.shared.orders_topic, &self.owner);
        let shutdown = self.shutdown.clone();
        self.handle.block_on(async {
            tokio::select! {
                claim = publish::retry("claim", || store.claim(topic, partition, owner)) => Some(claim),
                () = shutdown.cancelled() => None,
            }
        })
    }
}

impl ClientContext for ClaimContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        crate::kafka::forward_log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error.");
    }

    /// High watermarks arrive with every fetch response, so lag costs the
    /// broker no extra requests (tansu answers ListOffsets slowly, and its
    /// group coordinator stalls behind them).
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.orders_topic) else { return };
        for (&partition, stats) in &topic.partitions {
            if partition >= 0 && stats.hi_offset >= 0 {
                self.offsets.set_high(partition, stats.hi_offset);
            }
        }
    }
}

impl ConsumerContext for ClaimContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let topic = self.shared.orders_topic.clone();
                let partitions: Vec<i32> = tpl.elements_for_topic(&topic).iter().map(|e| e.partition()).collect();
                let mut accepted = TopicPartitionList::new();
                for partition in partitions {
                    health::unpark(&topic, partition);
                    let claim = match self.claim(partition) {
                        None => return,
                        Some(Ok(claim)) => claim,
                        Some(Err(error)) => {
                            let detail = format!("the database refused the claim: {error}");
                            health::park(&topic, partition, Parked { reason: ParkReason::ClaimRefused, first_offset: -1, last_offset: None, detail });
                            continue;
                        }
                    };
                    metrics::CLAIMS.inc();
                    tracing::info!(partition, epoch = claim.epoch, next_offset = claim.next_offset,
                        dedupe_from_offset = claim.dedupe_from_offset, "Partition claimed.");
                    if let Some(parked) = log_behind_fence(consumer, &topic, partition, &claim) {
                        // Not assigned: nothing is read, so nothing past the fence is counted.
                        health::park(&topic, partition, parked);
                        continue;
                    }
                    if let Err(error) = accepted.add_partition_offset(&topic, partition, Offset::Offset(claim.dedupe_from_offset)) {
                        tracing::error!(partition, %error, "Could not set the start offset.");
                    }
                    self.push(Control::Assigned(partition, claim));
                }
                if let Err(error) = consumer.assign(&accepted) {
                    tracing::error!(%error, "Assigning partitions failed.");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                let revoked: Vec<i32> = tpl.elements().iter().map(|e| e.partition()).collect();
                for &partition in &revoked {
                    // Its next owner reports it, if the cause is still there.
                    health::unpark(&self.shared.orders_topic, partition);
                }
                self.push(Control::Revoked(revoked));
                if let Err(error) = consumer.unassign() {
                    tracing::error!(%error, "Unassigning partitions failed.");
                }
            }
            other => {
                tracing::error!(error = ?other, "Rebalance failed; dropping the assignment.");
                self.push(Control::Revoked(tpl.elements().iter().map(|e| e.partition()).collect()));
                let _ = consumer.unassign();
            }
        }
    }
}

/// A claim whose `next_offset` lies beyond the partition's log end: the topic
/// was recreated or truncated under tally. Counting from there would silently
/// skip the new log's first events, so the partition is refused instead.
/// `None` when the log reaches the fence, or when the broker cannot say (the
/// running check in [`poll_loop`] still catches a log that went backwards).
fn log_behind_fence(consumer: &BaseConsumer<ClaimContext>, topic: &str, partition: i32, claim: &Claim) -> Option<Parked> {
    let (low, high) = match consumer.fetch_watermarks(topic, partition, Duration::from_secs(5)) {
        Ok(marks) => marks,
        Err(error) => {
            tracing::warn!(partition, %error, "Cannot read the partition's log end to check it against the fence.");
            return None;
        }
    };
    (claim.next_offset > high).then(|| Parked {
        reason: ParkReason::LogBehindFence,
        first_offset: claim.next_offset,
        last_offset: None,
        detail: format!(
            "the database has counted up to offset {} but the log holds only offsets {low}..{high}: the topic was \
             recreated or truncated; see the README (\"A log that went backwards\") before resetting the fence",
            claim.next_offset
        ),
    })
}

/// One assigned partition as seen from the consumer thread.
struct Lane {
    /// The lowest offset the next message may have: a lower one means the
    /// log went backwards under the consumer.
    expected: i64,
    batches: mpsc::Sender<Vec<Message>>,
    pending: Vec<Message>,
    opened: Option<Instant>,
    task: JoinHandle<Ended>,
    /// Fetching is paused while the partition's task is two batches behind.
    paused: bool,
}

/// Batch limits and drain time for the loop.
pub struct LoopSettings {
    /// Close a batch at this many messages.
    pub batch_max_events: usize,
    /// Close a batch this long after its first message.
    pub batch_max: Duration,
    /// How long in-flight batches may take on shutdown.
    pub drain: Duration,
}

fn owned(message: &BorrowedMessage<'_>) -> Message {
    Message {
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().unwrap_or_default().to_vec(),
        timestamp_ms: message.timestamp().to_millis(),
        headers: message
            .headers()
            .map(|h| h.iter().map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec())).collect())
            .unwrap_or_default(),
    }
}

/// Runs the consumer until `shutdown`, then drains: pending batches are
/// handed over and their partials published (within `settings.drain`), and
/// the last offsets are committed as hints.
pub fn poll_loop(consumer: BaseConsumer<ClaimContext>, settings: LoopSettings, shutdown: CancellationToken) {
    let ctx = consumer.context();
    let (shared, handle) = (ctx.shared.clone(), ctx.handle.clone());
    let (acks_tx, acks) = std::sync::mpsc::channel();
    let mut lanes: HashMap<i32, Lane> = HashMap::new();
    let mut held = 0;
    metrics::READY.set(1);
    while !shutdown.is_cancelled() {
        let polled = consumer.poll(Duration::from_millis(50));
        let controls = std::mem::take(&mut *ctx.controls.lock().expect("controls lock"));
        let controls_empty = controls.is_empty();
        for control in controls {
            match control {
                Control::Assigned(partition, claim) => {
                    let (tx, rx) = mpsc::channel(2);
                    let start = claim.dedupe_from_offset;
                    let task = handle.spawn(PartitionTask::new(partition, claim, shared.clone()).run(rx, acks_tx.clone()));
                    let lane = Lane {
                        expected: start,
                        batches: tx,
                        pending: Vec::new(),
                        opened: None,
                        task,
                        paused: false,
                    };
                    if let Some(old) = lanes.insert(partition, lane) {
                        old.task.abort();
                    }
                    // librdkafka keeps a pause across assignments; a new lane starts fetching.
                    set_paused(&consumer, &shared.orders_topic, partition, false);
                }
                Control::Revoked(partitions) => {
                    tracing::debug!(?partitions, "Partitions revoked.");
                    for partition in partitions {
                        if let Some(lane) = lanes.remove(&partition) {
                            // The next owner re-reads whatever this lane had not published.
                            lane.task.abort();
                        }
                    }
                }
            }
        }
        match polled {
            Some(Ok(message)) => {
                let partition = message.partition();
                if let Some(lane) = lanes.get_mut(&partition) {
                    if message.offset() < lane.expected {
                        went_backwards(&shared.orders_topic, partition, lane.expected, message.offset());
                        if let Some(lane) = lanes.remove(&partition) {
                            lane.task.abort();
                        }
                        set_paused(&consumer, &shared.orders_topic, partition, true);
                        continue;
                    }
                    lane.expected = message.offset() + 1;
                    lane.opened.get_or_insert_with(Instant::now);
                    lane.pending.push(owned(&message));
                } else {
                    tracing::debug!(partition = message.partition(), offset = message.offset(), "Message for an unclaimed partition dropped.");
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "Consumer error."),
            None => {}
        }
        hand_over_due(&mut lanes, &settings, &consumer, &shared.orders_topic, false);
        // A fenced lane leaves without a control, hence the count check.
        if !controls_empty || lanes.len() != held {
            held = lanes.len();
            metrics::ASSIGNED.set(held as i64);
            ctx.offsets.set_assigned(lanes.keys().copied());
        }
        commit_hints(&consumer, &shared.orders_topic, &acks, CommitMode::Async);
    }
    metrics::READY.set(0);
    tracing::info!(partitions = lanes.len(), "Draining in-flight batches.");
    hand_over_due(&mut lanes, &settings, &consumer, &shared.orders_topic, true);
    let deadline = tokio::time::Instant::now() + settings.drain;
    handle.block_on(async {
        for (partition, lane) in lanes.drain() {
            drop(lane.batches);
            if tokio::time::timeout_at(deadline, lane.task).await.is_err() {
                tracing::warn!(partition, "Drain timed out; the next owner will redo this partition's last batch.");
            }
        }
    });
    commit_hints(&consumer, &shared.orders_topic, &acks, CommitMode::Sync);
    consumer.unsubscribe();
}

/// Parks a partition whose log handed out `offset` after `expected`: the
/// topic was recreated or truncated while this worker read it.
fn went_backwards(topic: &str, partition: i32, expected: i64, offset: i64) {
    let detail = format!(
        "the log handed out offset {offset} after offset {}: the topic was recreated or truncated under the \
         worker; see the README (\"A log that went backwards\")",
        expected - 1
    );
    health::park(topic, partition, Parked { reason: ParkReason::LogWentBackwards, first_offset: expected, last_offset: None, detail });
}

fn hand_over_due(
    lanes: &mut HashMap<i32, Lane>,
    settings: &LoopSettings,
    consumer: &BaseConsumer<ClaimContext>,
    topic: &str,
    everything: bool,
) {
    let mut stopped = Vec::new();
    for (&partition, lane) in lanes.iter_mut() {
        let due = lane.pending.len() >= settings.batch_max_events
            || lane.opened.is_some_and(|t| t.elapsed() >= settings.batch_max);
        if lane.pending.is_empty() || !(due || everything) {
            continue;
        }
        let batch = std::mem::take(&mut lane.pending);
        if everything {
            // Shutdown: the loop no longer polls, so waiting here is harmless.
            if lane.batches.blocking_send(batch).is_err() {
                stopped.push(partition);
            }
            continue;
        }
        // Never block the poll loop: a blocked loop misses rebalances. A busy
        // partition is paused instead, and resumed once its task catches up.
        match lane.batches.try_send(batch) {
            Ok(()) => {
                lane.opened = None;
                if lane.paused {
                    lane.paused = !set_paused(consumer, topic, partition, false);
                }
            }
            Err(TrySendError::Full(batch)) => {
                lane.pending = batch;
                if !lane.paused {
                    lane.paused = set_paused(consumer, topic, partition, true);
                }
            }
            Err(TrySendError::Closed(_)) => stopped.push(partition),
        }
    }
    for partition in stopped {
        lanes.remove(&partition);
        set_paused(consumer, topic, partition, true);
    }
}

/// Pauses or resumes fetching one partition; true when it worked.
fn set_paused(consumer: &BaseConsumer<ClaimContext>, topic: &str, partition: i32, pause: bool) -> bool {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause { consumer.pause(&tpl) } else { consumer.resume(&tpl) };
    if let Err(error) = &result {
        tracing::warn!(partition, pause, %error, "Could not pause or resume a partition.");
    }
    result.is_ok()
}

fn commit_hints(
    consumer: &BaseConsumer<ClaimContext>,
    topic: &str,
    acks: &std::sync::mpsc::Receiver<(i32, i64)>,
    mode: CommitMode,
) {
    let mut latest: HashMap<i32, i64> = HashMap::new();
    while let Ok((partition, next)) = acks.try_recv() {
        latest.insert(partition, next);
    }
    if latest.is_empty() {
        return;
    }
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in latest {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    // Only a hint for lag dashboards: the database fence is the truth.
    if let Err(error) = consumer.commit(&tpl, mode) {
        tracing::debug!(%error, "Offset commit hint failed.");
    }
}
