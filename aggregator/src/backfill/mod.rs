//! Backfills, which recompute closed periods from files and swap them into
//! `merchant_sales` atomically, and imports, which add a file's events to
//! the live totals exactly once per file.
//!
//! - [`source`]: formats and the files a source names.
//! - [`compute`]: one task's read, validation, dedupe and sums.
//! - [`ids`]: the task's set of counted `event_id` digests.
//! - [`runner`]: claims tasks from the database, retries, completes jobs.
//! - [`plan`]: splits a new job into tasks.
//! - [`schedule`]: cron expressions and relative day ranges.
//! - [`scheduler`]: the elected scheduler that turns due ticks into jobs
//!   and runs the import watch.
//! - [`watch`]: the import watch over a folder or `s3://` prefix, and the
//!   queueing of pushed objects.

pub mod compute;
pub mod ids;
pub mod plan;
pub mod runner;
pub mod schedule;
pub mod scheduler;
pub mod source;
pub mod watch;
