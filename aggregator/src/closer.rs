//! Closing days: the pipeline's completeness time, measured on every
//! aggregator, and close runs on the elected one.
//!
//! A source partition is complete up to the message time at its fence (the
//! dedupe window's clock, `tally_partitions.dedupe_clock_ms`, which never
//! runs past the wall clock), or up to now when its fence has reached its
//! log end: an idle partition never holds a day open. A partition the
//! broker has that was never claimed is complete up to now only while its
//! log is empty. The pipeline's completeness time is the lowest of them.
//!
//! Day D closes once the completeness time passes D's end in its zone plus
//! `aggregator.close_grace_secs` ([`store::closes`] holds the rules of the
//! close itself).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use schemas::day::now_ms;
use store::jobs::Leadership;
use store::{PartitionProgress, Store};
use tokio_util::sync::CancellationToken;

use crate::config::AggregatorConfig;
use crate::metrics;

/// Adjustments read for the metrics per poll, at most.
const ADJUSTMENTS_PER_POLL: i64 = 10_000;

/// One source partition's completeness.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTime {
    /// Source topic.
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// Complete up to this instant (ms); `None` while unknown (events wait
    /// to be counted and no message time is recorded yet).
    pub time_ms: Option<i64>,
    /// Whether its fence is at its log end.
    pub at_end: bool,
}

/// The completeness of every partition in `progress` or `highs` (each
/// partition's log end offset, as the broker has it), and the pipeline's:
/// the lowest, `None` when any is unknown or there is none.
pub fn completeness(
    progress: &[PartitionProgress],
    highs: &BTreeMap<(String, i32), i64>,
    now: i64,
) -> (Option<i64>, Vec<PartitionTime>) {
    let fences: BTreeMap<(String, i32), &PartitionProgress> = progress
        .iter()
        .map(|p| ((p.topic.clone(), p.partition), p))
        .collect();
    let mut keys: Vec<&(String, i32)> = fences.keys().chain(highs.keys()).collect();
    keys.sort();
    keys.dedup();
    let times: Vec<PartitionTime> = keys
        .into_iter()
        .map(|key| {
            let next = fences.get(key).map_or(0, |p| p.fence.next_offset);
            let at_end = highs.get(key).is_some_and(|&high| next >= high);
            let time_ms = if at_end {
                Some(now)
            } else {
                fences.get(key).and_then(|p| p.fence.dedupe_clock_ms)
            };
            PartitionTime {
                topic: key.0.clone(),
                partition: key.1,
                time_ms,
                at_end,
            }
        })
        .collect();
    let lowest = times
        .iter()
        .map(|t| t.time_ms)
        .try_fold(None, |low: Option<i64>, t| {
            t.map(|t| Some(low.map_or(t, |l| l.min(t))))
        })
        .flatten();
    (lowest, times)
}

/// What `/readyz` says of completeness.
static SEEN: Mutex<Option<String>> = Mutex::new(None);

/// The line `/readyz` shows: the completeness time and the partition
/// holding it, or why it is unknown.
pub fn readiness_detail() -> Option<String> {
    SEEN.lock().expect("completeness lock").clone()
}

fn describe(lowest: Option<i64>, times: &[PartitionTime], now: i64) -> String {
    let holder = times
        .iter()
        .filter(|t| !t.at_end)
        .min_by_key(|t| t.time_ms.unwrap_or(i64::MIN));
    match (lowest, holder) {
        (Some(at), Some(h)) => format!(
            "completeness {} ({} s behind), held by partition {}/{}",
            schemas::day::format_rfc3339_millis(at * 1_000),
            (now - at) / 1_000,
            h.topic,
            h.partition
        ),
        (Some(at), None) => format!(
            "completeness {} (every partition at its log end)",
            schemas::day::format_rfc3339_millis(at * 1_000)
        ),
        (None, Some(h)) => format!(
            "completeness unknown: partition {}/{} has events not yet counted and no message time",
            h.topic, h.partition
        ),
        (None, None) => "completeness unknown: no source partition is known yet".to_owned(),
    }
}

/// Measures completeness every `aggregator.close_poll_ms` and, while this
/// aggregator leads the closers, closes the days that are due, until `stop`.
pub async fn run(config: AggregatorConfig, store: Arc<Store>, stop: CancellationToken) {
    let consumer: Option<BaseConsumer<kafka::Logged>> = {
        let mut client = kafka::client(&config.brokers);
        kafka::client::apply(&mut client, &config.kafka);
        match client.create_with_context(kafka::Logged) {
            Ok(consumer) => Some(consumer),
            Err(error) => {
                tracing::error!(%error, "Cannot make the Kafka client that reads log ends: days are not closed.");
                *SEEN.lock().expect("completeness lock") = Some(format!(
                    "completeness unknown: no Kafka client to read the log ends ({error}); days are not closed"
                ));
                None
            }
        }
    };
    let Some(consumer) = consumer.map(Arc::new) else {
        return;
    };
    let grace_ms = (config.close_grace_secs * 1_000) as i64;
    let poll = Duration::from_millis(config.close_poll_ms);
    let mut leadership: Option<Leadership> = None;
    let mut seen_adjustment = None;
    loop {
        let lowest = tokio::select! {
            () = stop.cancelled() => return,
            lowest = measure(&store, &consumer) => lowest,
        };
        if lead(&store, &mut leadership).await {
            if let Some(lowest) = lowest {
                close_due(&store, lowest, grace_ms, &stop).await;
            }
            seen_adjustment = count_adjustments(&store, seen_adjustment).await;
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(poll) => {}
        }
    }
}

/// Whether this aggregator leads the closers, trying for the lead when not.
async fn lead(store: &Store, leadership: &mut Option<Leadership>) -> bool {
    if leadership.as_ref().is_some_and(|l| !l.is_held()) {
        tracing::warn!("Lost the closer lock; another aggregator may take over closing days.");
        *leadership = None;
    }
    if leadership.is_none() {
        match store.try_lead_closer().await {
            Ok(Some(lead)) => {
                tracing::info!("Closing days: this aggregator closes each day once completeness passes its end plus the grace period.");
                *leadership = Some(lead);
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "Cannot try for the closer lock; will retry."),
        }
    }
    leadership.is_some()
}

/// Reads the fences and log ends, sets the metrics and `/readyz`'s line,
/// and returns the completeness time when it is known.
async fn measure(store: &Store, consumer: &Arc<BaseConsumer<kafka::Logged>>) -> Option<i64> {
    let progress = match store.progress().await {
        Ok(progress) => progress,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the fences to measure completeness; will retry.");
            return None;
        }
    };
    let topics: Vec<String> = {
        let mut t: Vec<String> = progress.iter().map(|p| p.topic.clone()).collect();
        t.dedup();
        t
    };
    // Taken before the log ends are read: a partition at its end then is
    // complete up to this instant, not a later one.
    let now = now_ms();
    let reader = consumer.clone();
    let highs = tokio::task::spawn_blocking(move || log_ends(&reader, &topics))
        .await
        .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
    let highs = match highs {
        Ok(highs) => highs,
        Err(error) => {
            tracing::warn!(%error, "Cannot read the source partitions' log ends to measure completeness; will retry.");
            return None;
        }
    };
    let (lowest, times) = completeness(&progress, &highs, now);
    // An unknown time shows as the epoch: as far behind as can be, so
    // that the stall alert names a partition that holds every day open
    // without a time of its own.
    for t in &times {
        let labels = [t.topic.as_str(), &t.partition.to_string()];
        let at = t.time_ms.unwrap_or(0);
        metrics::PARTITION_COMPLETENESS
            .with_label_values(&labels)
            .set(at / 1_000);
        metrics::PARTITION_COMPLETENESS_LAG
            .with_label_values(&labels)
            .set((now - at) / 1_000);
    }
    let at = lowest.unwrap_or(0);
    metrics::COMPLETENESS.set(at / 1_000);
    metrics::COMPLETENESS_LAG.set((now - at) / 1_000);
    *SEEN.lock().expect("completeness lock") = Some(describe(lowest, &times, now));
    lowest
}

/// Each partition's log end offset, for every partition the broker has of `topics`.
fn log_ends(
    consumer: &BaseConsumer<kafka::Logged>,
    topics: &[String],
) -> Result<BTreeMap<(String, i32), i64>, rdkafka::error::KafkaError> {
    const TIMEOUT: Duration = Duration::from_secs(10);
    let mut highs = BTreeMap::new();
    for topic in topics {
        let metadata = consumer.fetch_metadata(Some(topic), TIMEOUT)?;
        for found in metadata.topics() {
            for partition in found.partitions() {
                let (_, high) = consumer.fetch_watermarks(topic, partition.id(), TIMEOUT)?;
                highs.insert((topic.clone(), partition.id()), high);
            }
        }
    }
    Ok(highs)
}

/// Runs close runs until none is due at completeness `lowest`.
async fn close_due(store: &Store, lowest: i64, grace_ms: i64, stop: &CancellationToken) {
    while !stop.is_cancelled() {
        match store.close_days(lowest, grace_ms, now_ms()).await {
            Ok(Some(run)) => {
                tracing::info!(
                    run = run.id,
                    rows = run.rows_closed,
                    closed_through = %schemas::day::format_rfc3339_millis(run.closed_through_ms * 1_000),
                    completeness = %schemas::day::format_rfc3339_millis(run.completeness_ms * 1_000),
                    "Days closed."
                );
                metrics::CLOSED_THROUGH.set(run.closed_through_ms / 1_000);
                let closed = u64::try_from(run.rows_closed).unwrap_or(0);
                metrics::DAYS_CLOSED.inc_by(closed);
                if run.closed_through_ms >= store::closes::due_through(lowest, grace_ms) {
                    return;
                }
            }
            Ok(None) => {
                if let Ok(Some(through)) = store.closed_through().await {
                    metrics::CLOSED_THROUGH.set(through / 1_000);
                }
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot close days; will retry.");
                return;
            }
        }
    }
}

/// Counts the adjustments jobs made since `after` (all of them at the
/// first poll) into the metrics; returns the last id seen. (A flush's are
/// counted where it applies them.)
async fn count_adjustments(store: &Store, after: Option<i64>) -> Option<i64> {
    let mut last = after.unwrap_or(0);
    loop {
        match store
            .adjustments_applied_since(last, ADJUSTMENTS_PER_POLL)
            .await
        {
            Ok(applied) => {
                for a in &applied {
                    metrics::count_adjustment(&a.currency, "job", a.moved);
                    last = a.id;
                }
                if (applied.len() as i64) < ADJUSTMENTS_PER_POLL {
                    return Some(last);
                }
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot read adjustments for the metrics; will retry.");
                return Some(last);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use store::Fence;

    fn fence(partition: i32, next: i64, clock: Option<i64>) -> PartitionProgress {
        PartitionProgress {
            topic: "orders".into(),
            partition,
            fence: Fence {
                epoch: 1,
                next_offset: next,
                dedupe_from_offset: 0,
                dedupe_clock_ms: clock,
            },
            counted_events: 0,
            duplicate_events: 0,
            invalid_events: 0,
            claimed_by: None,
        }
    }

    #[test]
    fn the_slowest_partition_behind_its_log_end_holds_completeness() {
        let highs = BTreeMap::from([
            (("orders".to_owned(), 0), 10),
            (("orders".to_owned(), 1), 50),
            (("orders".to_owned(), 2), 0),
            (("orders".to_owned(), 3), 7),
        ]);
        // 0 is at its end; 1 is behind at 500; 2 was never claimed but is
        // empty; 3 was never claimed and has events.
        let progress = [fence(0, 10, Some(100)), fence(1, 40, Some(500))];
        let (lowest, times) = completeness(&progress, &highs, 9_000);
        assert_eq!(lowest, None, "partition 3 is unknown: {times:?}");
        let (lowest, times) = completeness(
            &progress,
            &highs
                .clone()
                .into_iter()
                .filter(|(k, _)| k.1 != 3)
                .collect(),
            9_000,
        );
        assert_eq!(lowest, Some(500));
        assert_eq!(
            times
                .iter()
                .map(|t| (t.partition, t.time_ms, t.at_end))
                .collect::<Vec<_>>(),
            vec![
                (0, Some(9_000), true),
                (1, Some(500), false),
                (2, Some(9_000), true)
            ]
        );
        assert!(describe(lowest, &times, 9_000).contains("held by partition orders/1"));
    }
}
