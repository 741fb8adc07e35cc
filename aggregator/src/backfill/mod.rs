//! Backfills: recompute closed periods from files and swap them into
//! `merchant_sales` atomically.
//!
//! - [`source`]: formats and the files a source names.
//! - [`compute`]: one task's read, validation, dedupe and sums.
//! - [`ids`]: the task's set of counted `event_id` digests.
//! - [`runner`]: claims tasks from the database, retries, completes jobs.
//! - [`plan`]: splits a new job into tasks.
//! - [`schedule`]: cron expressions and relative day ranges.
//! - [`scheduler`]: the elected scheduler that turns due ticks into jobs.

pub mod compute;
pub mod ids;
pub mod plan;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod source;
