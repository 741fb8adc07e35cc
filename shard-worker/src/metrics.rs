//! The worker's Prometheus metrics, defined once and registered in the
//! default registry (shared by every worker in a process, as in the demo).

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge,
    register_int_gauge_vec, Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Events by outcome: `counted`, `duplicate`, `invalid`.
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_worker_events_total",
        "Order events handled by workers, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Messages per batch.
pub static BATCH_EVENTS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tally_worker_batch_events",
        "Messages per worker batch.",
        vec![1.0, 10.0, 100.0, 1_000.0, 5_000.0, 10_000.0, 20_000.0, 50_000.0, 100_000.0]
    )
    .expect("metric registers once")
});

/// Decode, dedupe and aggregation time of one batch.
pub static BATCH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tally_worker_batch_duration_seconds",
        "Time to decode, dedupe and aggregate one batch.",
        prometheus::exponential_buckets(0.0005, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Partials acknowledged by the broker.
pub static PARTIALS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_partials_published_total",
        "Partials acknowledged by the broker."
    )
    .expect("metric registers once")
});

/// Dead-letter records acknowledged by the broker.
pub static DLQ_WRITES: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_dlq_writes_total",
        "Invalid events written to the dead-letter topic."
    )
    .expect("metric registers once")
});

/// Partitions this worker stopped because another claimed them.
pub static FENCED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_fenced_total",
        "Partitions stopped because a newer claim fenced this worker."
    )
    .expect("metric registers once")
});

/// Partitions claimed again because a partial of their epoch was lost.
pub static GAP_RECLAIMS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_gap_reclaims_total",
        "Partitions claimed again and rebuilt from the fence because the aggregator refused a partial of \
         their epoch for a gap (one before it was lost)."
    )
    .expect("metric registers once")
});

/// Claims the database did not answer within `CLAIM_WAIT`.
pub static CLAIM_TIMEOUTS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_claim_timeouts_total",
        "Partition claims the database did not answer in time; the partition was left unread and the worker \
         rejoined the group to claim it again."
    )
    .expect("metric registers once")
});

/// Times the worker left and rejoined its group to claim partitions again.
pub static REJOINS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_rejoins_total",
        "Times the worker left and rejoined its consumer group to claim again partitions whose claim timed \
         out or that a newer claim fenced while still assigned here."
    )
    .expect("metric registers once")
});

/// Successful partition claims.
pub static CLAIMS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_claims_total",
        "Partition claims made in the database."
    )
    .expect("metric registers once")
});

/// Publish and database errors that were retried.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_worker_retries_total",
        "Operations retried after an error.",
        &["operation"]
    )
    .expect("metric registers once")
});

/// Partitions currently assigned.
pub static ASSIGNED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_worker_assigned_partitions",
        "Partitions currently assigned to this process."
    )
    .expect("metric registers once")
});

/// High watermark minus the fence's `next_offset`: messages whose totals are
/// not in the database yet.
pub static LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_worker_consumer_lag_messages",
        "Messages in the partition not yet committed to the database: high watermark minus the fence's next_offset.",
        &["partition"]
    )
    .expect("metric registers once")
});

/// The fence's `next_offset` of each held partition.
pub static COMMITTED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_worker_committed_offset",
        "The fence's next_offset: the first message of the partition not yet committed to the database.",
        &["partition"]
    )
    .expect("metric registers once")
});

/// 1 once the worker has connected to the database and joined its group.
pub static READY: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_worker_ready",
        "1 when the worker is connected and consuming."
    )
    .expect("metric registers once")
});

/// Offsets of a window's rebuild that the log no longer held.
pub static WINDOW_NOT_REBUILT: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_window_offsets_not_rebuilt_total",
        "Offsets of a dedupe window's rebuild (below the fence: counted before) that the log no longer held, \
         so a retry of an event there is not caught."
    )
    .expect("metric registers once")
});

/// Offsets the log skipped between consecutive messages read.
pub static SKIPPED_OFFSETS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_skipped_offsets_total",
        "Offsets absent from the log where tally expected records (retention, compaction, transaction markers)."
    )
    .expect("metric registers once")
});

/// Reads that started past the offset asked for, read again from it.
pub static REREADS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_rereads_total",
        "Reads that started past the offset asked for with the log start before it (so not retention), \
         read again from that offset before anything of them was counted."
    )
    .expect("metric registers once")
});

/// Partitions parked by this process (see `health`).
pub static PARKED_PARTITIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_worker_parked_partitions",
        "Partitions this worker parked: nothing past their fence is counted."
    )
    .expect("metric registers once")
});

/// 1 for each parked partition, by reason.
pub static PARKED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_worker_partition_parked",
        "1 while a partition is parked, by reason (log_behind_fence, log_went_backwards, broker_refused).",
        &["partition", "reason"]
    )
    .expect("metric registers once")
});

/// Ids held by each partition's dedupe window.
pub static DEDUPE_IDS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_worker_dedupe_ids",
        "Event ids held in the partition's dedupe window.",
        &["partition"]
    )
    .expect("metric registers once")
});

/// Ids that left a dedupe window before their time because it was full.
pub static DEDUPE_EVICTED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_worker_dedupe_evicted_total",
        "Event ids evicted early because a dedupe window reached worker.dedupe_max_ids."
    )
    .expect("metric registers once")
});

/// Partials per batch after cutting by rows and bytes.
pub static PARTIALS_PER_BATCH: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tally_worker_partials_per_batch",
        "Partials one batch was cut into to fit worker.partial_max_rows and partial_max_bytes.",
        vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0]
    )
    .expect("metric registers once")
});

/// Registers every worker metric, with a zero series for each known label
/// value, so dashboards and alerts see them before the first event.
pub fn init() {
    let labelled: [(&IntCounterVec, &[&str]); 2] = [
        (&EVENTS, &["counted", "duplicate", "invalid"]),
        (
            &RETRIES,
            &[
                "claim",
                "epoch_read",
                "partial_publish",
                "dlq_write",
                "database_connect",
                "topic_setup",
            ],
        ),
    ];
    for (metric, values) in labelled {
        for value in values {
            metric.with_label_values(&[*value]);
        }
    }
    let _ = collectors();
}

/// Every worker metric (dereferencing registers it).
pub fn collectors() -> Vec<&'static dyn prometheus::core::Collector> {
    vec![
        &*EVENTS,
        &*BATCH_EVENTS,
        &*BATCH_SECONDS,
        &*PARTIALS,
        &*DLQ_WRITES,
        &*FENCED,
        &*GAP_RECLAIMS,
        &*CLAIM_TIMEOUTS,
        &*REJOINS,
        &*REREADS,
        &*CLAIMS,
        &*RETRIES,
        &*ASSIGNED,
        &*LAG,
        &*COMMITTED,
        &*READY,
        &*SKIPPED_OFFSETS,
        &*WINDOW_NOT_REBUILT,
        &*PARKED_PARTITIONS,
        &*PARKED,
        &*DEDUPE_IDS,
        &*DEDUPE_EVICTED,
        &*PARTIALS_PER_BATCH,
    ]
}
