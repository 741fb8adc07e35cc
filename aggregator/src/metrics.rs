//! The aggregator's Prometheus metrics, defined once.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use prometheus::{
    register_counter_vec, register_gauge_vec, register_histogram, register_int_counter,
    register_int_counter_vec, register_int_gauge, register_int_gauge_vec, CounterVec, GaugeVec,
    Histogram, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};
use tokio_util::sync::CancellationToken;

/// Partials by outcome: `applied`, `older_epoch`, `already_applied`, `violation`.
pub static PARTIALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_aggregator_partials_total",
        "Partials judged by the fence, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Applied partials that counted events without their local days.
pub static WITHOUT_LOCAL_DAYS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_aggregator_partials_without_local_days_total",
        "Applied partials whose events reached merchant_sales but not merchant_sales_local \
         (a worker with worker.local_days = false), while the aggregator keeps local days."
    )
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
    register_int_counter!(
        "tally_aggregator_upsert_rows_total",
        "Rows upserted into merchant_sales."
    )
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
    register_int_counter!(
        "tally_aggregator_sink_errors_total",
        "Flush transactions that failed and were retried."
    )
    .expect("metric registers once")
});

/// Append-to-commit latency.
pub static END_TO_END: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "tally_aggregator_end_to_end_latency_seconds",
        "From the newest event's broker append time to the commit of its partial.",
        // Bounds at round figures, so that "p99 under 1 s" can be read off.
        vec![
            0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0,
            30.0, 60.0
        ]
    )
    .expect("metric registers once")
});

/// Partials waiting for the next flush.
pub static BUFFERED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_aggregator_buffered_partials",
        "Partials waiting for the next flush."
    )
    .expect("metric registers once")
});

/// 1 once connected and consuming.
pub static READY: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_aggregator_ready",
        "1 when the aggregator is connected and consuming."
    )
    .expect("metric registers once")
});

/// Source partitions this aggregator parked.
pub static PARKED_PARTITIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_aggregator_parked_partitions",
        "Source partitions parked by this aggregator: their fence does not move until the cause is fixed and it restarts."
    )
    .expect("metric registers once")
});

/// The first source offset not applied of each parked partition, by reason.
pub static PARKED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_aggregator_partition_parked_offset",
        "First source offset not applied of a parked partition (its fence), by reason (unreadable_partial, database_refused).",
        &["topic", "partition", "reason"]
    )
    .expect("metric registers once")
});

/// Flush retries after transient database errors.
pub static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_aggregator_retries_total",
        "Operations retried after a transient error.",
        &["operation"]
    )
    .expect("metric registers once")
});

/// Age of the newest committed event, per source partition.
pub static FRESHNESS: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "tally_aggregator_freshness_seconds",
        "Age of the newest event (by broker append time) this aggregator has committed, per source partition.",
        &["partition"]
    )
    .expect("metric registers once")
});

/// Newest committed append time (ms) per source partition.
static NEWEST_COMMITTED_MS: LazyLock<Mutex<HashMap<i32, i64>>> = LazyLock::new(Mutex::default);

/// Records that an event appended at `append_ms` is now committed.
pub fn note_committed(partition: i32, append_ms: i64) {
    let mut newest = NEWEST_COMMITTED_MS.lock().expect("freshness lock");
    let entry = newest.entry(partition).or_insert(append_ms);
    *entry = (*entry).max(append_ms);
}

/// Keeps `tally_aggregator_freshness_seconds` current (once a second), so
/// it keeps growing while nothing commits.
pub async fn refresh_freshness(shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let now_ms = schemas::day::now_ms();
        for (partition, append_ms) in NEWEST_COMMITTED_MS.lock().expect("freshness lock").iter() {
            FRESHNESS
                .with_label_values(&[&partition.to_string()])
                .set((now_ms - append_ms).max(0) as f64 / 1000.0);
        }
    }
}

/// The pipeline's completeness time, Unix seconds (0 while unknown).
pub static COMPLETENESS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_completeness_timestamp_seconds",
        "The pipeline's completeness time (Unix seconds): every source partition has been counted \
         up to it (a partition at its log end counts as complete up to now). 0 while unknown."
    )
    .expect("metric registers once")
});

/// How far completeness is behind now.
pub static COMPLETENESS_LAG: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_completeness_lag_seconds",
        "Now less the completeness time, in seconds (how late the pipeline's counting is); \
         since the epoch while unknown."
    )
    .expect("metric registers once")
});

/// Each source partition's completeness time.
pub static PARTITION_COMPLETENESS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_partition_completeness_timestamp_seconds",
        "Each source partition's completeness time (Unix seconds): now when its fence is at its \
         log end, else the message time at its fence. The lowest is the pipeline's.",
        &["topic", "partition"]
    )
    .expect("metric registers once")
});

/// Each source partition's completeness lag.
pub static PARTITION_COMPLETENESS_LAG: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "tally_partition_completeness_lag_seconds",
        "Now less each source partition's completeness time, in seconds; since the epoch \
         while unknown (events wait to be counted and no message time is recorded yet).",
        &["topic", "partition"]
    )
    .expect("metric registers once")
});

/// The latest close run's closed-through instant.
pub static CLOSED_THROUGH: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_closed_through_timestamp_seconds",
        "Days ending at or before this instant (Unix seconds) are closed; the oldest day still \
         open ends after it. 0 before the first close."
    )
    .expect("metric registers once")
});

/// Rows closed, both bases.
pub static DAYS_CLOSED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_days_closed_total",
        "(merchant, currency, day) rows closed by this aggregator's close runs, UTC and local \
         days together."
    )
    .expect("metric registers once")
});

/// Adjustments to closed days, by currency and source.
pub static ADJUSTMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_adjustments_total",
        "Adjustments to closed days, by currency and source: stream (late events, counted by \
         the aggregator whose flush applied them) or job (a backfill or import, counted by \
         the closing aggregator).",
        &["currency", "source"]
    )
    .expect("metric registers once")
});

/// Money moved by adjustments, by currency.
pub static ADJUSTMENT_AMOUNT: LazyLock<CounterVec> = LazyLock::new(|| {
    register_counter_vec!(
        "tally_adjustment_amount_total",
        "Money moved by adjustments to closed days (|sales| + |refunds|, in currency units), \
         by currency.",
        &["currency"]
    )
    .expect("metric registers once")
});

/// Registers every aggregator metric, with a zero series for each known
/// label value, so dashboards and alerts see them before the first event.
pub fn init() {
    let labelled: [(&IntCounterVec, &[&str]); 3] = [
        (&RETRIES, &["flush", "database_connect", "topic_setup"]),
        (
            &PARTIALS,
            &["applied", "older_epoch", "already_applied", "violation"],
        ),
        (&EVENTS, &["counted", "duplicate", "invalid"]),
    ];
    backfill::metrics::zero_series(&labelled);
    // No currency yet: the series the alert and dashboards read exist from
    // the start (Prometheus drops the empty label).
    for source in ["stream", "job"] {
        ADJUSTMENTS.with_label_values(&["", source]);
    }
    ADJUSTMENT_AMOUNT.with_label_values(&[""]);
    backfill::metrics::init();
    let _ = collectors();
}

/// Counts one adjustment to a closed day of `source` (`stream`, `job`)
/// that moved `moved` (|sales| + |refunds|).
pub fn count_adjustment(currency: &str, source: &str, moved: schemas::Amount) {
    ADJUSTMENTS.with_label_values(&[currency, source]).inc();
    ADJUSTMENT_AMOUNT
        .with_label_values(&[currency])
        .inc_by(moved.0 as f64 / 10_000.0);
}

/// Every aggregator metric, the backfill runner's among them
/// (dereferencing registers it).
pub fn collectors() -> Vec<&'static dyn prometheus::core::Collector> {
    let mut collectors: Vec<&'static dyn prometheus::core::Collector> = vec![
        &*PARTIALS,
        &*WITHOUT_LOCAL_DAYS,
        &*EVENTS,
        &*UPSERT_ROWS,
        &*FLUSH_SECONDS,
        &*FLUSH_ERRORS,
        &*END_TO_END,
        &*BUFFERED,
        &*READY,
        &*FRESHNESS,
        &*PARKED_PARTITIONS,
        &*PARKED,
        &*RETRIES,
        &*COMPLETENESS,
        &*COMPLETENESS_LAG,
        &*PARTITION_COMPLETENESS,
        &*PARTITION_COMPLETENESS_LAG,
        &*CLOSED_THROUGH,
        &*DAYS_CLOSED,
        &*ADJUSTMENTS,
        &*ADJUSTMENT_AMOUNT,
    ];
    collectors.extend(backfill::metrics::collectors());
    collectors
}
