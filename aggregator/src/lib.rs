//! `tally aggregator`: consumes `tally.partials`, and commits what it read
//! while the last flush ran (at most one flush per interval) in one fenced
//! transaction.
//!
//! - [`config`]: settings, defaults and validation.
//! - [`run()`]: connect (database, partials topic, subscription, the
//!   background tasks), the consume–merge–commit loop, and the drain that
//!   awaits the last flushes and every background task.
//! - `flush`: the buffer and the fenced flush: retried when transient,
//!   isolated to the partial at fault when permanent.
//! - [`closer`]: the pipeline's completeness time, and the close runs of
//!   the elected aggregator (`aggregator.close_days`).
//! - [`health`]: parked partitions (in `store::health::Registry`) and what
//!   `/readyz` says.
//! - [`metrics`]: the aggregator's Prometheus metrics.
//! - [`error`]: what can stop an aggregator.
//!
//! It also runs backfill and import tasks and fires schedules, through the
//! `backfill` crate, on the same pool of database connections.
//!
//! The merge and fence rules themselves live in `store::fence`, shared by the
//! PostgreSQL and SQLite sinks.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod closer;
pub mod config;
pub mod error;
mod flush;
pub mod health;
pub mod metrics;
mod run;

pub use config::AggregatorConfig;
pub use error::AggregatorError;
pub use run::run;
