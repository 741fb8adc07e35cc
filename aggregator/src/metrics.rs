//! The aggregator's Prometheus metrics, defined once.

use std::sync::LazyLock;

use prometheus::{
    register_histogram, register_int_counter, register_int_counter_vec, register_int_gauge, Histogram,
    IntCounter, IntCounterVec, IntGauge,
};

/// Partials by outcome: `applied`, `older_epoch`, `already_applied`, `violation`.
pub static PARTIALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("tally_aggregator_partials_total", "Partials judged by the fence, by outcome.", &["outcome"])
        .expect("metric registers once")
});

/// Events committed to the database, by outcome.
pub static EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_aggregator_events_total",
        "Events whose outcome was committed with their partial, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Rows upserted into merchant_sales.
pub static UPSERT_ROWS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tally_aggregator_upsert_rows_total", "Rows upserted into merchant_sales.")
        .expect("metric registers once")
});

/// Duration of one flush transaction.
pub static FLUSH_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tally_aggregator_flush_duration_seconds",
        "Duration of one flush transaction (fence checks, upsert, fence advance).",
        prometheus::exponential_buckets(0.001, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Failed flush attempts (retried).
pub static FLUSH_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!("tally_aggregator_sink_errors_total", "Flush transactions that failed and were retried.")
        .expect("metric registers once")
});

/// Append-to-commit latency.
pub static END_TO_END: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tally_aggregator_end_to_end_latency_seconds",
        "From the newest event's broker append time to the commit of its partial.",
        prometheus::exponential_buckets(0.01, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Partials waiting for the next flush.
pub static BUFFERED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("tally_aggregator_buffered_partials", "Partials waiting for the next flush.")
        .expect("metric registers once")
});

/// 1 once connected and consuming.
pub static READY: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("tally_aggregator_ready", "1 when the aggregator is connected and consuming.")
        .expect("metric registers once")
});

/// Backfill jobs that ended in this process, by state.
pub static BACKFILL_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("tally_backfill_jobs_total", "Backfill jobs ended by this process, by final state.", &["state"])
        .expect("metric registers once")
});

/// Backfill task attempts, by outcome: `succeeded`, `retried`, `failed`, `abandoned`.
pub static BACKFILL_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("tally_backfill_task_attempts_total", "Backfill task attempts, by outcome.", &["outcome"])
        .expect("metric registers once")
});

/// Backfill rows read, by outcome: `read`, `rejected`, `duplicate`.
pub static BACKFILL_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("tally_backfill_rows_total", "Rows read by successful backfill task attempts, by outcome.", &["outcome"])
        .expect("metric registers once")
});

/// 1 while this process leads the scheduler.
pub static SCHEDULER_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!("tally_scheduler_leader", "1 while this aggregator runs due schedules (holds the scheduler lock).")
        .expect("metric registers once")
});

/// Due schedule ticks, by outcome: `created` (a job) or `error` (no job; retried in a minute).
pub static SCHEDULE_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!("tally_schedule_runs_total", "Due schedule ticks handled by this process, by outcome.", &["outcome"])
        .expect("metric registers once")
});
