//! What `/readyz` says of a worker: consuming, its database answering, and
//! no partition parked.
//!
//! A partition is parked when it cannot advance without an operator: its log
//! went behind the fence (a recreated or truncated topic), or the broker
//! refuses its partials or dead letters for good. Its fence stays where it
//! is, nothing past it is counted, and every other partition goes on. The
//! park is reported in `tally_worker_partition_parked`, the logs and
//! `/readyz`; a restart after the cause is fixed tries it again.

use std::sync::Arc;

use store::health::Registry;
use store::Store;

use crate::metrics;

/// Why a partition is parked: the label value of `tally_worker_partition_parked`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ParkReason {
    /// The fence's `next_offset` is beyond the log's end at the claim.
    LogBehindFence,
    /// The log handed out an offset below one already read.
    LogWentBackwards,
    /// The broker refused a partial or a dead letter permanently.
    BrokerRefused,
    /// The database refused the claim permanently.
    ClaimRefused,
    /// The database did not answer the claim in time; the worker rejoins
    /// the group to claim it again.
    ClaimTimedOut,
}

impl ParkReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ParkReason::LogBehindFence => "log_behind_fence",
            ParkReason::LogWentBackwards => "log_went_backwards",
            ParkReason::BrokerRefused => "broker_refused",
            ParkReason::ClaimRefused => "claim_refused",
            ParkReason::ClaimTimedOut => "claim_timed_out",
        }
    }
}

/// One parked partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Why.
    pub reason: ParkReason,
    /// The first offset not counted (the fence's `next_offset`).
    pub first_offset: i64,
    /// The last offset of the range that could not advance, when known.
    pub last_offset: Option<i64>,
    /// The whole story, for logs and `/readyz`.
    pub detail: String,
}

/// This process's parked partitions and watched databases.
static REGISTRY: Registry<Parked> = Registry::new();

/// Parks `partition` of `topic`: logs it, sets its gauge, and holds `/readyz`.
pub fn park(topic: &str, partition: i32, parked: Parked) {
    if parked.reason == ParkReason::ClaimTimedOut {
        tracing::warn!(
            topic,
            partition,
            reason = parked.reason.label(),
            detail = parked.detail,
            "Partition parked until the worker has rejoined its group and claimed it."
        );
    } else {
        tracing::error!(topic, partition, reason = parked.reason.label(), first_offset = parked.first_offset,
            last_offset = parked.last_offset, detail = parked.detail, "Partition parked: nothing past its fence is counted until this is fixed and the worker restarted.");
    }
    let label = partition.to_string();
    metrics::PARKED
        .with_label_values(&[&label, parked.reason.label()])
        .set(1);
    let mut all = REGISTRY.parked();
    all.insert((topic.to_owned(), partition), parked);
    metrics::PARKED_PARTITIONS.set(all.len() as i64);
}

/// Forgets a park (the partition was claimed afresh, or moved to another worker).
pub fn unpark(topic: &str, partition: i32) {
    let mut all = REGISTRY.parked();
    if let Some(parked) = all.remove(&(topic.to_owned(), partition)) {
        let _ =
            metrics::PARKED.remove_label_values(&[&partition.to_string(), parked.reason.label()]);
    }
    metrics::PARKED_PARTITIONS.set(all.len() as i64);
}

/// Forgets every park of `topic` for `reason` (the worker rejoins its group,
/// and each partition's next owner reports it again if the cause is still there).
pub fn unpark_all(topic: &str, reason: ParkReason) {
    let partitions: Vec<i32> = REGISTRY
        .parked()
        .iter()
        .filter(|((t, _), parked)| t == topic && parked.reason == reason)
        .map(|((_, partition), _)| *partition)
        .collect();
    for partition in partitions {
        unpark(topic, partition);
    }
}

/// Whether `partition` of `topic` is parked.
pub fn is_parked(topic: &str, partition: i32) -> bool {
    REGISTRY
        .parked()
        .contains_key(&(topic.to_owned(), partition))
}

/// Adds a database to those `/readyz` checks.
pub fn watch(store: Arc<Store>) {
    REGISTRY.watch(store);
}

/// `Ok` when every worker in this process is consuming, its database is
/// answering and no partition is parked; otherwise each reason, one per line.
pub fn readiness() -> Result<(), String> {
    let describe = |(topic, partition): &store::SourcePartition, parked: &Parked| {
        let last = parked
            .last_offset
            .map_or(String::new(), |l| format!("..={l}"));
        format!(
            "partition {topic}/{partition} parked at offsets {}{last} ({}): {}",
            parked.first_offset,
            parked.reason.label(),
            parked.detail
        )
    };
    REGISTRY.readiness("worker", metrics::READY.get() >= 1, describe, [])
}
