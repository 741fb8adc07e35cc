//! `tally worker`: consumes `orders`, claims each assigned partition in the
//! database, and publishes one partial per offset range to `tally.partials`.
//!
//! - [`config`]: settings, defaults and validation.
//! - [`run()`]: the entry point: connect (database, topics, zones,
//!   subscription), run the consumer loop, drain; background tasks tracked
//!   and awaited.
//! - [`consumer`]: claims in the rebalance callback, and the consumer loop
//!   (`Poller`: one method per step of a turn), batching.
//! - [`partition`]: one claimed partition: decode, dedupe, aggregate, publish.
//! - [`decode`]: raw messages to an Arrow batch (the hot path's first half).
//! - [`cut`]: one batch into partials that fit any broker.
//! - [`aggregate`]: DataFusion partial totals (the hot path's second half).
//! - [`dedupe`]: the per-partition window of seen event ids, indexed by `id_table`.
//! - [`publish`]: dead letters and partials, retried until acknowledged.
//! - [`health`]: parked partitions (in `store::health::Registry`) and what
//!   `/readyz` says.
//! - [`lag`]: consumer lag against the database's fences.
//! - [`zones`]: merchants' time zones for local days, refreshed.
//! - [`metrics`]: the worker's Prometheus metrics.
//! - [`error`]: what can stop a worker.
//!
//! Its Kafka clients and topic set-up come from the `kafka` crate.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod aggregate;
pub mod config;
pub mod consumer;
pub mod cut;
pub mod decode;
pub mod dedupe;
pub mod error;
pub mod health;
mod id_table;
pub mod lag;
pub mod metrics;
pub mod partition;
pub mod publish;
mod run;
pub mod zones;

pub use config::WorkerConfig;
pub use error::WorkerError;
pub use run::run;
