//! Backfills, which recompute closed periods from files and swap them into
//! `merchant_sales` atomically, and imports, which add a file's events to
//! the live totals exactly once per file. The aggregator runs the task
//! runner and the scheduler; the CLI plans jobs and verifies totals.
//!
//! - `source`: formats and the files a source names, local or `s3://`.
//! - `compute`: one task's read (Parquet and CSV through DataFusion, JSON
//!   lines through the workers' decoder), validation, dedupe and sums.
//! - `error`: why an attempt failed, and whether another can help.
//! - `ids`: the task's set of counted `event_id` digests.
//! - `plan`: splits a new job into tasks.
//! - `runner`: claims tasks from the database, retries, completes jobs.
//! - `schedule`: what `tally schedule add` asks for, checked.
//! - `scheduler`: the elected scheduler that turns due ticks into jobs
//!   and runs the import watch.
//! - `watch`: the import watch over a folder or `s3://` prefix, and the
//!   queueing of pushed objects.
//! - [`metrics`]: the Prometheus metrics of all of the above.
//!
//! The job state machine itself (claims, leases, attempts, the completion
//! swap) is the database's: `store::jobs`.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod compute;
mod error;
mod ids;
pub mod metrics;
mod plan;
mod runner;
mod schedule;
mod scheduler;
mod source;
mod watch;

pub use compute::compute;
pub use error::TaskError;
pub use plan::{check_days_over, plan, plan_import};
pub use runner::{run as run_tasks, RunnerConfig};
pub use schedule::ScheduleRequest;
pub use scheduler::run as run_scheduler;
pub use schemas::day::now_ms;
pub use schemas::job::{Cron, Format, Range};
pub use source::{list_files, Remote};
pub use watch::{queue_object, WatchConfig};
