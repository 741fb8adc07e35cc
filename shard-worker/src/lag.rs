//! Consumer lag as an operator reads it: per partition, the broker's high
//! watermark minus the fence's `next_offset` in the database, which is the
//! count of messages whose totals are not yet in `merchant_sales`. Published
//! but unapplied partials count as lag, so a stopped aggregator shows.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use store::Store;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// What the consumer thread knows and the lag reporter needs.
#[derive(Default)]
pub struct Offsets {
    /// Each partition's high watermark, from the client's statistics, and
    /// when it was reported.
    high: Mutex<HashMap<i32, (i64, Instant)>>,
    /// Partitions this process holds now.
    assigned: Mutex<BTreeSet<i32>>,
}

impl Offsets {
    /// Records a partition's high watermark.
    pub fn set_high(&self, partition: i32, high: i64) {
        self.high
            .lock()
            .expect("offsets lock")
            .insert(partition, (high, Instant::now()));
    }

    /// A partition's high watermark as reported after `since`.
    pub fn high_since(&self, partition: i32, since: Instant) -> Option<i64> {
        let high = self.high.lock().expect("offsets lock");
        high.get(&partition)
            .filter(|(_, at)| *at > since)
            .map(|(high, _)| *high)
    }

    /// Replaces the set of partitions held.
    pub fn set_assigned(&self, partitions: impl IntoIterator<Item = i32>) {
        *self.assigned.lock().expect("offsets lock") = partitions.into_iter().collect();
    }
}

/// Sets the lag and committed-offset gauges of the held partitions every
/// `every`, from one read of the fences, until `shutdown`.
pub async fn report(
    offsets: Arc<Offsets>,
    store: Arc<Store>,
    topic: String,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut reported: BTreeSet<i32> = BTreeSet::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let progress = match store.progress().await {
            Ok(progress) => progress,
            Err(error) => {
                tracing::debug!(%error, "Cannot read fences for the lag gauges; will retry.");
                continue;
            }
        };
        let assigned = offsets.assigned.lock().expect("offsets lock").clone();
        let high = offsets.high.lock().expect("offsets lock").clone();
        for gone in reported.difference(&assigned) {
            let label = gone.to_string();
            let _ = metrics::LAG.remove_label_values(&[&label]);
            let _ = metrics::COMMITTED.remove_label_values(&[&label]);
        }
        reported.clear();
        for row in progress
            .iter()
            .filter(|p| p.topic == topic && assigned.contains(&p.partition))
        {
            let label = row.partition.to_string();
            metrics::COMMITTED
                .with_label_values(&[&label])
                .set(row.fence.next_offset);
            if let Some(&(high, _)) = high.get(&row.partition) {
                metrics::LAG
                    .with_label_values(&[&label])
                    .set((high - row.fence.next_offset).max(0));
            }
            reported.insert(row.partition);
        }
    }
}
