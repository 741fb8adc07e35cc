//! The consumer thread: claims partitions as they are assigned, reads
//! messages, cuts them into batches by count and time, and hands each batch
//! to its partition's task.
//!
//! A batch also closes when it reaches the end of its partition's log
//! (librdkafka's partition EOF, which comes after the last message
//! fetched): the tail of a burst, or a quiet stream's each fetch, goes on
//! at once instead of waiting out `batch_max_ms`. Under a backlog the end
//! is not reached, and batches fill to `batch_max_events`.
//!
//! Claims happen inside the rebalance callback, before `assign`, so the
//! consumer starts every partition exactly at the database's
//! `dedupe_from_offset` and never at Kafka's committed offset. The callback
//! runs on the poll thread, so it never waits on the database for long: the
//! claims of one rebalance share [`CLAIM_WAIT`]. A partition whose claim does
//! not finish in time is left unread and parked (`claim_timed_out`), and the
//! worker leaves and rejoins the group [`REJOIN_AFTER`] later, so that a new
//! rebalance claims it again. A lane fenced by a newer claim while its
//! partition is still assigned here rejoins the same way: a claim abandoned
//! at its deadline may still commit once the database answers, and a
//! partition must not stay unread behind it.
//!
//! Each claimed partition gets its own librdkafka queue, split off before
//! `assign`. The loop reads a partition's queue only while its task has
//! room, so a partition that falls behind simply stops being read: its
//! queue fills up to `queued.min.messages` or `queued.max.messages.kbytes`
//! and librdkafka stops fetching it, keeping what it prefetched. Nothing
//! pauses and nothing re-fetches (pausing drops the prefetch, and the
//! resume fetches again from inside a record batch).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use rdkafka::consumer::base_consumer::PartitionQueue;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Headers, Message as _};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use store::Claim;
use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::sync::mpsc::error::TrySendError;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::decode::Message;
use crate::health::{self, ParkReason, Parked};
use crate::lag::Offsets;
use crate::partition::{Ended, PartitionTask, Resume, Shared};
use crate::{metrics, publish};

/// A change of assignment, recorded by the rebalance callback and acted on by
/// the consumer loop right after the poll that triggered it.
enum Control {
    /// A partition claimed.
    Assigned(Assigned),
    /// Partitions that went to other members.
    Revoked(Vec<i32>),
}

/// A partition claimed in the rebalance callback, for the loop to start a
/// lane for.
struct Assigned {
    partition: i32,
    claim: Claim,
    /// `None` only when it could not be split off; the partition's messages
    /// then arrive on the consumer's own queue.
    queue: Option<PartitionQueue<ClaimContext>>,
    /// `Some` when the broker's log end looked behind the fence.
    suspect: Option<Parked>,
    /// `Some` when the claim follows this process's own last one.
    resume: Option<Box<Resume>>,
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
    /// The consumer itself, to split partition queues in the callback.
    consumer: OnceLock<Weak<BaseConsumer<ClaimContext>>>,
    /// Tasks of revoked partitions, stopping; a new claim of the same
    /// partition in this process takes over their window ([`Resume`]).
    leaving: Mutex<HashMap<i32, Leaving>>,
    /// When the loop should leave and rejoin the group, to claim again
    /// partitions whose claim timed out.
    rejoin: Mutex<Option<Instant>>,
}

/// The most the claims of one rebalance (or one re-claim after a gap) wait
/// on the database, in all. The poll thread runs them, and librdkafka drops
/// a member that does not poll within `max.poll.interval.ms` (300 s by
/// default); the other partitions wait too.
pub const CLAIM_WAIT: Duration = Duration::from_secs(15);

/// How long after a claim timed out (or a lane was fenced) the worker leaves
/// and rejoins the group to claim again.
pub const REJOIN_AFTER: Duration = Duration::from_secs(10);

/// How a claim ended.
enum Claimed {
    Held(Claim),
    /// The database refused it for good.
    Refused(store::StoreError),
    /// It did not finish by its deadline (the database is down or slow).
    TimedOut,
    /// The worker is shutting down.
    Shutdown,
}

type Leaving = JoinHandle<(Ended, Option<Resume>)>;

/// How long one assignment waits, in all, for this process's revoked tasks
/// to finish their batches and for the aggregator to apply their last
/// partials; a partition not ready by then is rebuilt from the log.
const RESUME_WAIT: Duration = Duration::from_secs(3);

impl ClaimContext {
    /// A context claiming partitions of `shared.orders_topic` as `owner`.
    pub fn new(
        shared: Arc<Shared>,
        handle: Handle,
        owner: String,
        offsets: Arc<Offsets>,
        shutdown: CancellationToken,
    ) -> ClaimContext {
        ClaimContext {
            shared,
            handle,
            owner,
            controls: Mutex::new(Vec::new()),
            offsets,
            shutdown,
            consumer: OnceLock::new(),
            leaving: Mutex::new(HashMap::new()),
            rejoin: Mutex::new(None),
        }
    }

    /// The window of this process's own last task for `partition`, once
    /// that task has stopped and the fence stands where it left it; `None`
    /// when there was none, or the fence moved on or never got there.
    fn resume_of(&self, partition: i32, deadline: tokio::time::Instant) -> Option<Resume> {
        let task = self
            .leaving
            .lock()
            .expect("leaving lock")
            .remove(&partition)?;
        let (store, topic) = (&self.shared.store, &self.shared.orders_topic);
        self.handle.block_on(async {
            let abort = task.abort_handle();
            let Ok(Ok((Ended::Closed, Some(resume)))) =
                tokio::time::timeout_at(deadline, task).await
            else {
                abort.abort();
                return None;
            };
            // Bounded as a whole: the database may not answer at all.
            let settled = tokio::time::timeout_at(deadline, async {
                loop {
                    let fence = store
                        .progress()
                        .await
                        .ok()?
                        .into_iter()
                        .find(|p| p.topic == *topic && p.partition == partition)?
                        .fence;
                    if fence.epoch != resume.epoch || fence.next_offset > resume.next_offset {
                        return None;
                    }
                    if fence.next_offset == resume.next_offset {
                        return Some(());
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            });
            settled.await.ok().flatten().map(|()| resume)
        })
    }

    /// Lets the rebalance callback split partition queues off `consumer`
    /// (which owns this context). Call before subscribing.
    pub fn attach(consumer: &Arc<BaseConsumer<ClaimContext>>) {
        let _ = consumer.context().consumer.set(Arc::downgrade(consumer));
    }

    /// The partition's own queue, split off the consumer's before `assign`
    /// (librdkafka keeps a queue the application split off across `assign`).
    fn split(&self, topic: &str, partition: i32) -> Option<PartitionQueue<ClaimContext>> {
        let queue = self
            .consumer
            .get()
            .and_then(Weak::upgrade)
            .and_then(|c| c.split_partition_queue(topic, partition));
        if queue.is_none() {
            tracing::warn!(
                partition,
                "Could not give the partition its own queue; reading it from the shared one."
            );
        }
        queue
    }

    fn push(&self, control: Control) {
        self.controls.lock().expect("controls lock").push(control);
    }

    /// Claims `partition`, retrying transient errors until `deadline`.
    fn claim(&self, partition: i32, deadline: tokio::time::Instant) -> Claimed {
        let (store, topic, owner) = (&self.shared.store, &self.shared.orders_topic, &self.owner);
        let shutdown = self.shutdown.clone();
        self.handle.block_on(async {
            let claim = publish::retry("claim", || store.claim(topic, partition, owner));
            tokio::select! {
                claim = tokio::time::timeout_at(deadline, claim) => match claim {
                    Ok(Ok(claim)) => Claimed::Held(claim),
                    Ok(Err(error)) => Claimed::Refused(error),
                    Err(_) => Claimed::TimedOut,
                },
                () = shutdown.cancelled() => Claimed::Shutdown,
            }
        })
    }

    /// Asks the loop to leave and rejoin the group [`REJOIN_AFTER`] from now
    /// (unless it is already due sooner).
    fn rejoin_later(&self) {
        let at = Instant::now() + REJOIN_AFTER;
        let mut rejoin = self.rejoin.lock().expect("rejoin lock");
        if rejoin.is_none_or(|due| due > at) {
            *rejoin = Some(at);
        }
    }

    /// After a claim of `partition` timed out: counts and logs it, asks for
    /// the rejoin that will claim it again, and gives the park to show.
    fn claim_timed_out(&self, partition: i32) -> Parked {
        metrics::CLAIM_TIMEOUTS.inc();
        tracing::warn!(
            partition,
            wait_s = CLAIM_WAIT.as_secs(),
            rejoin_in_s = REJOIN_AFTER.as_secs(),
            "The database did not answer the claim in time; leaving the partition unread \
             and rejoining the group to claim it again."
        );
        self.rejoin_later();
        let detail = format!(
            "the database did not answer the claim within {} s; the worker rejoins the group \
             to claim it again",
            CLAIM_WAIT.as_secs()
        );
        unclaimed(ParkReason::ClaimTimedOut, detail)
    }

    /// Takes the rejoin, if it is due.
    fn rejoin_due(&self) -> bool {
        let mut rejoin = self.rejoin.lock().expect("rejoin lock");
        let due = rejoin.is_some_and(|at| at <= Instant::now());
        if due {
            *rejoin = None;
        }
        due
    }
}

impl ClientContext for ClaimContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        kafka::client::forward_log(level, facility, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        // librdkafka also reports the end of a partition's log here (as a
        // global error, on the consumer's own queue): news, not a fault. The
        // lanes learn of it from their own queues.
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::PartitionEOF) {
            tracing::debug!(target: "librdkafka", reason, "End of a partition's log.");
            return;
        }
        tracing::warn!(target: "librdkafka", %error, reason, "Kafka client error.");
    }

    /// High watermarks arrive with every fetch response, so lag costs the
    /// broker no extra requests (tansu answers ListOffsets slowly, and its
    /// group coordinator stalls behind them).
    fn stats(&self, statistics: Statistics) {
        let Some(topic) = statistics.topics.get(&self.shared.orders_topic) else {
            return;
        };
        for (&partition, stats) in &topic.partitions {
            if partition >= 0 && stats.hi_offset >= 0 {
                self.offsets.set_high(partition, stats.hi_offset);
            }
        }
    }
}

impl ConsumerContext for ClaimContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                let topic = self.shared.orders_topic.clone();
                let partitions: Vec<i32> = tpl
                    .elements_for_topic(&topic)
                    .iter()
                    .map(|e| e.partition())
                    .collect();
                let mut accepted = TopicPartitionList::new();
                let now = tokio::time::Instant::now();
                let (deadline, claims_due) = (now + RESUME_WAIT, now + CLAIM_WAIT);
                for partition in partitions {
                    health::unpark(&topic, partition);
                    let resume = self.resume_of(partition, deadline);
                    let claim = match self.claim(partition, claims_due) {
                        Claimed::Shutdown => return,
                        Claimed::Held(claim) => claim,
                        Claimed::Refused(error) => {
                            let detail = format!("the database refused the claim: {error}");
                            health::park(
                                &topic,
                                partition,
                                unclaimed(ParkReason::ClaimRefused, detail),
                            );
                            continue;
                        }
                        Claimed::TimedOut => {
                            health::park(&topic, partition, self.claim_timed_out(partition));
                            continue;
                        }
                    };
                    metrics::CLAIMS.inc();
                    // Only a claim right after this process's own, at the
                    // fence its task left, may keep that task's window.
                    let resume = resume.filter(|r| {
                        claim.epoch == r.epoch + 1 && claim.next_offset == r.next_offset
                    });
                    let start = resume
                        .as_ref()
                        .map_or(claim.dedupe_from_offset, |r| r.read_from);
                    tracing::info!(
                        partition,
                        epoch = claim.epoch,
                        next_offset = claim.next_offset,
                        dedupe_from_offset = claim.dedupe_from_offset,
                        reading_from = start,
                        kept_window = resume.is_some(),
                        "Partition claimed."
                    );
                    let suspect = log_behind_fence(consumer, &topic, partition, &claim);
                    if let Err(error) =
                        accepted.add_partition_offset(&topic, partition, Offset::Offset(start))
                    {
                        tracing::error!(partition, %error, "Could not set the start offset.");
                    }
                    let queue = self.split(&topic, partition);
                    self.push(Control::Assigned(Assigned {
                        partition,
                        claim,
                        queue,
                        suspect,
                        resume: resume.map(Box::new),
                    }));
                }
                // Revoked tasks of partitions that went elsewhere finish on their own.
                self.leaving.lock().expect("leaving lock").clear();
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
                self.push(Control::Revoked(
                    tpl.elements().iter().map(|e| e.partition()).collect(),
                ));
                let _ = consumer.unassign();
            }
        }
    }
}

/// The park of a partition that has no claim.
fn unclaimed(reason: ParkReason, detail: String) -> Parked {
    Parked {
        reason,
        first_offset: -1,
        last_offset: None,
        detail,
    }
}

/// A claim whose `next_offset` lies beyond the partition's log end: the topic
/// was recreated or truncated under tally. Counting from there would silently
/// skip the new log's first events, so the partition is refused instead.
/// `None` when the log reaches the fence, or when the broker cannot say (the
/// running check in [`poll_loop`] still catches a log that went backwards).
///
/// The log end comes from ListOffsets, which some brokers answer wrongly
/// (tansu's memory store names the start of a recent record batch). So a
/// `Some` only makes the lane a suspect: it hands nothing over until a
/// fetch response's high watermark ([`Lane::settle`]) confirms or clears it.
fn log_behind_fence(
    consumer: &BaseConsumer<ClaimContext>,
    topic: &str,
    partition: i32,
    claim: &Claim,
) -> Option<Parked> {
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
             recreated or truncated; see the runbook (\"A log that went backwards\") before resetting the fence",
            claim.next_offset
        ),
    })
}

/// One assigned partition as seen from the consumer thread.
struct Lane {
    /// The lowest offset the next message may have: a lower one means the
    /// log went backwards under the consumer.
    expected: i64,
    /// Its own librdkafka queue, read only while the task has room.
    queue: Option<PartitionQueue<ClaimContext>>,
    batches: mpsc::Sender<Vec<Message>>,
    pending: Vec<Message>,
    opened: Option<Instant>,
    /// The last message read was the log's last: the pending batch is
    /// handed over without waiting for `batch_max_ms`.
    at_end: bool,
    task: Leaving,
    /// Stops the task between batches, keeping its window.
    stop: CancellationToken,
    /// Set while the log's end looked behind the fence and no fetch
    /// response has said otherwise: the park, the fence, and since when.
    suspect: Option<(Parked, i64, Instant)>,
}

/// How long a suspect lane waits for a fetch response's high watermark
/// (statistics come every 2 s) before the park stands.
const SUSPECT_FOR: Duration = Duration::from_secs(30);

/// What every lane's task sends back to the loop: acknowledged offsets
/// (the commit hints), partitions to claim again for a gap, and partitions
/// to read again from an offset.
type LaneChannels = (
    std::sync::mpsc::Sender<(i32, i64)>,
    std::sync::mpsc::Sender<i32>,
    std::sync::mpsc::Sender<(i32, i64)>,
);

impl Lane {
    /// A lane for a partition just claimed, and its task, started at the
    /// claim's `dedupe_from_offset` (or where `resume` left off).
    fn start(
        assigned: Assigned,
        (shared, handle): (&Arc<Shared>, &Handle),
        (acks, gaps, rereads): &LaneChannels,
    ) -> Lane {
        let Assigned {
            partition,
            claim,
            queue,
            suspect,
            resume,
        } = assigned;
        let (tx, rx) = mpsc::channel(2);
        let fence = claim.next_offset;
        let (start, task) = match resume {
            Some(resume) => (
                resume.read_from,
                PartitionTask::resume(partition, claim, *resume, shared.clone()),
            ),
            None => (
                claim.dedupe_from_offset,
                PartitionTask::new(partition, claim, shared.clone()),
            ),
        };
        let stop = CancellationToken::new();
        let back = (gaps.clone(), rereads.clone());
        let task = handle.spawn(task.run(rx, acks.clone(), back, stop.clone()));
        Lane {
            expected: start,
            queue,
            batches: tx,
            pending: Vec::new(),
            opened: None,
            at_end: false,
            task,
            stop,
            suspect: suspect.map(|parked| (parked, fence, Instant::now())),
        }
    }

    /// Settles a suspect lane from the high watermark of fetch responses:
    /// `Some(park)` when the log is confirmed behind the fence.
    fn settle(&mut self, partition: i32, offsets: &Offsets) -> Option<Parked> {
        let (parked, fence, since) = self.suspect.take()?;
        match offsets.high_since(partition, since) {
            Some(high) if high >= fence => {
                tracing::info!(partition, high, fence, "The log end from ListOffsets was behind the fence, but fetches reach past it; reading on.");
                None
            }
            Some(_) => Some(parked),
            None if since.elapsed() >= SUSPECT_FOR => Some(parked),
            None => {
                self.suspect = Some((parked, fence, since));
                None
            }
        }
    }

    /// Adds `message` to the pending batch; false when the log went
    /// backwards (the caller then parks the partition).
    fn accept(&mut self, message: &BorrowedMessage<'_>) -> bool {
        if message.offset() < self.expected {
            return false;
        }
        self.expected = message.offset() + 1;
        self.at_end = false;
        self.opened.get_or_insert_with(Instant::now);
        self.pending.push(owned(message));
        true
    }

    /// Reads the partition's queue until the pending batch is full, the
    /// queue is empty, or `most` messages were read. `Err` carries the
    /// offset at which the log went backwards.
    fn read(&mut self, batch_max_events: usize, most: usize) -> Result<usize, i64> {
        let Some(queue) = self.queue.take() else {
            return Ok(0);
        };
        let mut read = 0;
        let mut result = Ok(0);
        while self.pending.len() < batch_max_events && read < most {
            match queue.poll(Duration::ZERO) {
                Some(Ok(message)) => {
                    if !self.accept(&message) {
                        result = Err(message.offset());
                        break;
                    }
                    read += 1;
                    result = Ok(read);
                }
                Some(Err(KafkaError::PartitionEOF(_))) => self.at_end = true,
                Some(Err(error)) => tracing::warn!(%error, "Consumer error."),
                None => break,
            }
        }
        self.queue = Some(queue);
        result
    }
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
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
    }
}

/// How long the loop waits on the consumer's own queue when no partition
/// had anything to read: the most a message waits in its partition's queue.
const IDLE_POLL: Duration = Duration::from_millis(5);

/// Most messages read from one partition's queue per turn, so one busy
/// partition cannot hold up the others' batch timers or the rebalance.
const READ_PER_TURN: usize = 5_000;

/// Runs the consumer until `shutdown`, then drains: pending batches are
/// handed over and their partials published (within `settings.drain`), and
/// the last offsets are committed as hints.
pub fn poll_loop(
    consumer: Arc<BaseConsumer<ClaimContext>>,
    settings: LoopSettings,
    shutdown: CancellationToken,
) {
    let mut poller = Poller::new(&consumer, settings);
    metrics::READY.set(1);
    let mut busy = false;
    while !shutdown.is_cancelled() {
        busy = poller.turn(busy);
    }
    metrics::READY.set(0);
    poller.drain();
}

/// The consumer loop's state: a lane per claimed partition, and the
/// channels on which the partitions' tasks report back.
struct Poller<'a> {
    consumer: &'a BaseConsumer<ClaimContext>,
    ctx: &'a ClaimContext,
    topic: &'a str,
    settings: LoopSettings,
    lanes: HashMap<i32, Lane>,
    /// The senders each new lane's task gets.
    channels: LaneChannels,
    /// Offsets durable in the database, to commit as hints.
    acks: std::sync::mpsc::Receiver<(i32, i64)>,
    /// Partitions whose task saw a gap at its epoch: claim them again.
    gaps: std::sync::mpsc::Receiver<i32>,
    /// Partitions (and offsets) whose task wants them read again.
    rereads: std::sync::mpsc::Receiver<(i32, i64)>,
    /// Lanes held at the last report.
    held: usize,
}

impl<'a> Poller<'a> {
    fn new(consumer: &'a BaseConsumer<ClaimContext>, settings: LoopSettings) -> Self {
        let ctx = consumer.context();
        let (acks_tx, acks) = std::sync::mpsc::channel();
        let (gaps_tx, gaps) = std::sync::mpsc::channel();
        let (rereads_tx, rereads) = std::sync::mpsc::channel();
        Poller {
            consumer,
            ctx,
            topic: ctx.shared.orders_topic.as_str(),
            settings,
            lanes: HashMap::new(),
            channels: (acks_tx, gaps_tx, rereads_tx),
            acks,
            gaps,
            rereads,
            held: 0,
        }
    }

    /// One turn: poll the consumer's own queue (without waiting while the
    /// last turn read something), act on assignment changes and the tasks'
    /// requests, read every lane, park what cannot go on, hand over due
    /// batches, report, and commit hints. Whether anything was read.
    fn turn(&mut self, busy: bool) -> bool {
        // The consumer's own queue serves rebalances, statistics and errors
        // (and the messages of a partition whose queue could not be split).
        let polled = self
            .consumer
            .poll(if busy { Duration::ZERO } else { IDLE_POLL });
        let changed = self.apply_controls();
        while let Ok(partition) = self.gaps.try_recv() {
            reclaim(
                self.consumer,
                self.ctx,
                &mut self.lanes,
                partition,
                &self.channels,
            );
        }
        while let Ok((partition, offset)) = self.rereads.try_recv() {
            if let Some(lane) = self.lanes.get_mut(&partition) {
                read_again(self.consumer, self.topic, partition, offset, lane);
            }
        }
        let mut backwards = Vec::new();
        self.take_polled(polled, &mut backwards);
        let mut busy = false;
        for (&partition, lane) in self.lanes.iter_mut() {
            match lane.read(self.settings.batch_max_events, READ_PER_TURN) {
                Ok(read) => busy |= read > 0,
                Err(offset) => backwards.push((partition, offset)),
            }
        }
        self.park_stuck(backwards);
        hand_over_due(&mut self.lanes, &self.settings, self.consumer, self.topic);
        // A fenced lane leaves without a control, hence the count check.
        if changed || self.lanes.len() != self.held {
            self.held = self.lanes.len();
            metrics::ASSIGNED.set(self.held as i64);
            self.ctx.offsets.set_assigned(self.lanes.keys().copied());
        }
        commit_hints(self.consumer, self.topic, &self.acks, CommitMode::Async);
        if self.ctx.rejoin_due() {
            rejoin(self.consumer, self.topic);
        }
        busy
    }

    /// Starts a lane for each partition claimed since the last turn and
    /// lets each revoked one go. Whether there was any change.
    fn apply_controls(&mut self) -> bool {
        let controls = std::mem::take(&mut *self.ctx.controls.lock().expect("controls lock"));
        let changed = !controls.is_empty();
        for control in controls {
            match control {
                Control::Assigned(assigned) => {
                    let partition = assigned.partition;
                    let shared = (&self.ctx.shared, &self.ctx.handle);
                    let lane = Lane::start(assigned, shared, &self.channels);
                    if let Some(old) = self.lanes.insert(partition, lane) {
                        old.task.abort();
                    }
                    // librdkafka keeps a pause across assignments (a parked
                    // partition is paused); a new lane starts fetching.
                    set_paused(self.consumer, self.topic, partition, false);
                }
                Control::Revoked(partitions) => {
                    tracing::debug!(?partitions, "Partitions revoked.");
                    for partition in partitions {
                        if let Some(lane) = self.lanes.remove(&partition) {
                            // The next owner re-reads whatever this lane had
                            // not published. The task stops after its batch in
                            // hand, so that a new claim here can keep its window.
                            lane.stop.cancel();
                            self.ctx
                                .leaving
                                .lock()
                                .expect("leaving lock")
                                .insert(partition, lane.task);
                        }
                    }
                }
            }
        }
        changed
    }

    /// Takes what the consumer's own queue gave: a message for its lane (one
    /// before the lane's next offset goes to `backwards`), the end of a
    /// partition's log, or an error to log.
    fn take_polled(
        &mut self,
        polled: Option<Result<BorrowedMessage<'_>, KafkaError>>,
        backwards: &mut Vec<(i32, i64)>,
    ) {
        match polled {
            Some(Ok(message)) => match self.lanes.get_mut(&message.partition()) {
                Some(lane) => {
                    if !lane.accept(&message) {
                        backwards.push((message.partition(), message.offset()));
                    }
                }
                None => tracing::debug!(
                    partition = message.partition(),
                    offset = message.offset(),
                    "Message for an unclaimed partition dropped."
                ),
            },
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                if let Some(lane) = self.lanes.get_mut(&partition) {
                    lane.at_end = true;
                }
            }
            Some(Err(error)) => tracing::warn!(%error, "Consumer error."),
            None => {}
        }
    }

    /// Parks the partitions whose log went backwards and the suspect ones
    /// confirmed behind their fence: their lanes end and they are paused.
    fn park_stuck(&mut self, backwards: Vec<(i32, i64)>) {
        let mut parks: Vec<(i32, Parked)> = Vec::new();
        for (partition, offset) in backwards {
            if let Some(lane) = self.lanes.get(&partition) {
                parks.push((partition, went_backwards(partition, lane.expected, offset)));
            }
        }
        for (&partition, lane) in self.lanes.iter_mut() {
            if let Some(parked) = lane.settle(partition, &self.ctx.offsets) {
                parks.push((partition, parked));
            }
        }
        for (partition, parked) in parks {
            if let Some(lane) = self.lanes.remove(&partition) {
                // Nothing past the fence was handed over, so nothing of it is counted.
                health::park(self.topic, partition, parked);
                lane.task.abort();
                set_paused(self.consumer, self.topic, partition, true);
            }
        }
    }

    /// Hands each lane's last batch over and waits for its task, both within
    /// `settings.drain`; commits the last hints and leaves the group.
    fn drain(mut self) {
        tracing::info!(partitions = self.lanes.len(), "Draining in-flight batches.");
        let deadline = tokio::time::Instant::now() + self.settings.drain;
        let lanes = std::mem::take(&mut self.lanes);
        self.ctx.handle.block_on(async {
            for (partition, lane) in lanes {
                drain_lane(partition, lane, deadline).await;
            }
        });
        commit_hints(self.consumer, self.topic, &self.acks, CommitMode::Sync);
        self.consumer.unsubscribe();
        // Queues split off in a last rebalance hold the consumer: let it go.
        self.ctx.controls.lock().expect("controls lock").clear();
    }
}

/// The last batch read, handed over while the deadline allows (a task stuck
/// with a full channel must not hold the exit), then the task awaited.
async fn drain_lane(partition: i32, mut lane: Lane, deadline: tokio::time::Instant) {
    const LATE: &str = "Drain timed out; the next owner will redo this partition's last batch.";
    let batch = std::mem::take(&mut lane.pending);
    if !batch.is_empty() && lane.suspect.is_none() {
        let sent = tokio::time::timeout_at(deadline, lane.batches.send(batch)).await;
        if !matches!(sent, Ok(Ok(()))) {
            tracing::warn!(partition, "{LATE}");
            return;
        }
    }
    drop(lane.batches);
    if tokio::time::timeout_at(deadline, lane.task).await.is_err() {
        tracing::warn!(partition, "{LATE}");
    }
}

/// Leaves the group and joins it again: the rebalance that follows revokes
/// every partition here and claims each one assigned afresh.
fn rejoin(consumer: &BaseConsumer<ClaimContext>, topic: &str) {
    metrics::REJOINS.inc();
    tracing::info!("Rejoining the consumer group to claim its partitions again.");
    health::unpark_all(topic, ParkReason::ClaimTimedOut);
    consumer.unsubscribe();
    if let Err(error) = consumer.subscribe(&[topic]) {
        tracing::error!(%error, "Subscribing again failed; trying again shortly.");
        consumer.context().rejoin_later();
    }
}

/// The park of a partition whose log handed out `offset` after `expected`:
/// the topic was recreated or truncated while this worker read it.
fn went_backwards(partition: i32, expected: i64, offset: i64) -> Parked {
    let detail = format!(
        "the log handed out offset {offset} after offset {}: the topic was recreated or truncated under the \
         worker; see the runbook (\"A log that went backwards\")",
        expected - 1
    );
    tracing::debug!(partition, expected, offset, "Log went backwards.");
    Parked {
        reason: ParkReason::LogWentBackwards,
        first_offset: expected,
        last_offset: None,
        detail,
    }
}

/// Claims `partition` again after its task saw a gap at its epoch (a lost
/// partial), seeks it back to the new claim's `dedupe_from_offset`, and
/// starts a new lane there: the new epoch publishes again from the fence,
/// and the old epoch's partials still on their way are dropped as stale.
fn reclaim(
    consumer: &BaseConsumer<ClaimContext>,
    ctx: &ClaimContext,
    lanes: &mut HashMap<i32, Lane>,
    partition: i32,
    channels: &LaneChannels,
) {
    let Some(old) = lanes.remove(&partition) else {
        return;
    };
    old.task.abort();
    let topic = ctx.shared.orders_topic.clone();
    let claim = match ctx.claim(partition, tokio::time::Instant::now() + CLAIM_WAIT) {
        Claimed::Shutdown => return,
        Claimed::Held(claim) => claim,
        Claimed::Refused(error) => {
            let detail = format!("the database refused the claim: {error}");
            park_paused(
                consumer,
                &topic,
                partition,
                (ParkReason::ClaimRefused, -1),
                detail,
            );
            return;
        }
        Claimed::TimedOut => {
            let parked = ctx.claim_timed_out(partition);
            let at = (parked.reason, parked.first_offset);
            park_paused(consumer, &topic, partition, at, parked.detail);
            return;
        }
    };
    metrics::CLAIMS.inc();
    let start = claim.dedupe_from_offset;
    if let Err(error) = consumer.seek(
        &topic,
        partition,
        Offset::Offset(start),
        Duration::from_secs(10),
    ) {
        let detail = format!("cannot seek back to offset {start} after a gap: {error}");
        let at = (ParkReason::ClaimRefused, claim.next_offset);
        park_paused(consumer, &topic, partition, at, detail);
        return;
    }
    tracing::info!(
        partition,
        epoch = claim.epoch,
        next_offset = claim.next_offset,
        reading_from = start,
        "Partition claimed again after a gap; publishing again from the fence."
    );
    let shared = (&ctx.shared, &ctx.handle);
    let assigned = Assigned {
        partition,
        claim,
        queue: old.queue,
        suspect: None,
        resume: None,
    };
    let lane = Lane::start(assigned, shared, channels);
    lanes.insert(partition, lane);
}

/// Seeks `partition` back to `offset` for its task, which found a read
/// that started past it ([`crate::partition::gap_verdict`]): what was read
/// and not handed over is dropped, and the task drops what it was handed
/// before the seek. A seek the client refuses parks the partition.
fn read_again(
    consumer: &BaseConsumer<ClaimContext>,
    topic: &str,
    partition: i32,
    offset: i64,
    lane: &mut Lane,
) {
    lane.pending.clear();
    lane.opened = None;
    lane.at_end = false;
    lane.expected = offset;
    if let Err(error) = consumer.seek(
        topic,
        partition,
        Offset::Offset(offset),
        Duration::from_secs(10),
    ) {
        let detail = format!("cannot seek back to offset {offset} to read a gap again: {error}");
        park_paused(
            consumer,
            topic,
            partition,
            (ParkReason::BrokerRefused, offset),
            detail,
        );
        lane.task.abort();
    }
}

/// Parks `partition` for `reason` from `first_offset` on, and stops fetching it.
fn park_paused(
    consumer: &BaseConsumer<ClaimContext>,
    topic: &str,
    partition: i32,
    (reason, first_offset): (ParkReason, i64),
    detail: String,
) {
    let parked = Parked {
        reason,
        first_offset,
        last_offset: None,
        detail,
    };
    health::park(topic, partition, parked);
    set_paused(consumer, topic, partition, true);
}

fn hand_over_due(
    lanes: &mut HashMap<i32, Lane>,
    settings: &LoopSettings,
    consumer: &BaseConsumer<ClaimContext>,
    topic: &str,
) {
    let mut stopped = Vec::new();
    for (&partition, lane) in lanes.iter_mut() {
        let due = lane.pending.len() >= settings.batch_max_events
            || lane.at_end
            || lane
                .opened
                .is_some_and(|t| t.elapsed() >= settings.batch_max);
        if lane.pending.is_empty() || !due || lane.suspect.is_some() {
            continue;
        }
        let batch = std::mem::take(&mut lane.pending);
        // Never block the poll loop: a blocked loop misses rebalances. A
        // busy partition keeps its full batch, and its queue is not read
        // until the task takes it.
        match lane.batches.try_send(batch) {
            Ok(()) => lane.opened = None,
            Err(TrySendError::Full(batch)) => lane.pending = batch,
            Err(TrySendError::Closed(_)) => stopped.push(partition),
        }
    }
    for partition in stopped {
        // Fenced or parked: stop fetching what nobody will read.
        lanes.remove(&partition);
        set_paused(consumer, topic, partition, true);
        if !health::is_parked(topic, partition) {
            // Fenced while still assigned here: rejoin, so that a new
            // rebalance claims it again (see the module's notes).
            consumer.context().rejoin_later();
        }
    }
}

/// Pauses or resumes fetching one partition; a failure is logged (a
/// partition left fetching only fills its queue, which nobody reads).
fn set_paused(consumer: &BaseConsumer<ClaimContext>, topic: &str, partition: i32, pause: bool) {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(topic, partition);
    let result = if pause {
        consumer.pause(&tpl)
    } else {
        consumer.resume(&tpl)
    };
    if let Err(error) = &result {
        tracing::warn!(partition, pause, %error, "Could not pause or resume a partition.");
    }
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
