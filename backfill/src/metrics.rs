//! The Prometheus metrics of backfills, imports and schedules, defined
//! once; registered with the aggregator's, which runs them.

use std::sync::LazyLock;

use prometheus::{
    register_int_counter, register_int_counter_vec, register_int_gauge, IntCounter, IntCounterVec,
    IntGauge,
};

/// Backfill jobs that ended in this process, by state.
pub static BACKFILL_JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_backfill_jobs_total",
        "Backfill jobs ended by this process, by final state.",
        &["state"]
    )
    .expect("metric registers once")
});

/// Backfill task attempts, by outcome: `succeeded`, `retried`, `failed`, `abandoned`.
pub static BACKFILL_ATTEMPTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_backfill_task_attempts_total",
        "Backfill task attempts, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Backfill rows read, by outcome: `read`, `rejected`, `duplicate`.
pub static BACKFILL_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_backfill_rows_total",
        "Rows read by successful backfill task attempts, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Import files by outcome.
pub static IMPORT_FILES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_import_files_total",
        "Imported files by outcome: imported, already_imported, unchanged, superseded, conflict, failed.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Rows of imported files by outcome.
pub static IMPORT_ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_import_rows_total",
        "Rows of imported files, by outcome: counted, duplicate, invalid.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Watch polls.
pub static IMPORT_WATCH_POLLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_import_watch_polls_total",
        "Listings of the watched import source, by outcome: ok, error.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Files the watch has seen but not queued yet because they are still changing.
pub static IMPORT_WATCH_UNSETTLED: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_import_watch_unsettled_files",
        "New files in the watched source that have not stayed unchanged for import_settle_ms yet."
    )
    .expect("metric registers once")
});

/// Files the watch queued.
pub static IMPORT_WATCH_QUEUED: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "tally_import_watch_queued_files_total",
        "Files the watch queued for import."
    )
    .expect("metric registers once")
});

/// 1 while this process leads the scheduler.
pub static SCHEDULER_LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_scheduler_leader",
        "1 while this aggregator runs due schedules (holds the scheduler lock)."
    )
    .expect("metric registers once")
});

/// Due schedule ticks, by outcome: `created` (a job) or `error` (no job; retried in a minute).
pub static SCHEDULE_RUNS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_schedule_runs_total",
        "Due schedule ticks handled by this process, by outcome.",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Schedules whose latest due tick has gone unrun past a grace period.
pub static SCHEDULES_OVERDUE: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "tally_schedules_overdue",
        "Schedules (seen by the scheduling aggregator) whose latest due tick has no job after 5 minutes, or that cannot run."
    )
    .expect("metric registers once")
});

/// Passes of the task runner's and the scheduler's loops, by `loop`:
/// `runner` each time it looked for tasks, `scheduler` each time the leader
/// went through the schedules. A test or an operator waits on these to know
/// that a loop has run since a moment, instead of waiting and hoping.
pub static POLLS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "tally_backfill_polls_total",
        "Passes of the backfill task runner (looking for tasks) and of the leading scheduler (through the schedules).",
        &["loop"]
    )
    .expect("metric registers once")
});

/// Registers every metric, with a zero series for each known label value,
/// so dashboards and alerts see them before the first job.
pub fn init() {
    let labelled: [(&IntCounterVec, &[&str]); 8] = [
        (&BACKFILL_JOBS, &["succeeded", "failed", "cancelled"]),
        (
            &IMPORT_FILES,
            &[
                "imported",
                "already_imported",
                "unchanged",
                "superseded",
                "conflict",
                "failed",
            ],
        ),
        (&IMPORT_ROWS, &["counted", "duplicate", "invalid"]),
        (&IMPORT_WATCH_POLLS, &["ok", "error"]),
        (
            &BACKFILL_ATTEMPTS,
            &["succeeded", "retried", "failed", "abandoned"],
        ),
        (&BACKFILL_ROWS, &["read", "rejected", "duplicate"]),
        (&SCHEDULE_RUNS, &["created", "error"]),
        (&POLLS, &["runner", "scheduler"]),
    ];
    zero_series(&labelled);
    let _ = collectors();
}

/// Creates the zero series of each metric's known label values.
pub fn zero_series(labelled: &[(&IntCounterVec, &[&str])]) {
    for (metric, values) in labelled {
        for value in *values {
            metric.with_label_values(&[*value]);
        }
    }
}

/// Every backfill metric (dereferencing registers it).
pub fn collectors() -> Vec<&'static dyn prometheus::core::Collector> {
    vec![
        &*BACKFILL_JOBS,
        &*BACKFILL_ATTEMPTS,
        &*BACKFILL_ROWS,
        &*IMPORT_FILES,
        &*IMPORT_ROWS,
        &*IMPORT_WATCH_POLLS,
        &*IMPORT_WATCH_UNSETTLED,
        &*IMPORT_WATCH_QUEUED,
        &*SCHEDULER_LEADER,
        &*SCHEDULE_RUNS,
        &*SCHEDULES_OVERDUE,
        &*POLLS,
    ]
}
