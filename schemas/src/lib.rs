//! tally's shared vocabulary: the types every other crate speaks, and nothing
//! that talks to a broker or a database (this crate stays a leaf).
//!
//! - [`amount`]: exact money amounts, `Decimal128(38,4)` units, parsed from text.
//! - [`day`]: RFC 3339 timestamps and the UTC calendar days they fall on.
//! - [`event`]: the order event, its validation rules and the borrowed decoder.
//! - [`scan`]: the one-pass JSON object scanner under the decoder.
//! - [`fx`]: fast hashing for the hot path's small maps.
//! - [`cache`]: prefetching the slots of large tables.
//! - [`batch`]: the Arrow schema of a decoded batch and its builder.
//! - [`job`]: the vocabulary of backfill jobs: file formats, cron
//!   expressions and relative day ranges.
//! - [`config`]: validation helpers shared by every role's configuration.
//! - [`partial`]: the partial-totals message a worker publishes per offset range.
//! - [`zone`]: merchants' IANA time zones and the local day of an instant.
//! - [`totals`]: per-key sums with an exact, associative merge.
//!
//! The JSON Schema of the event lives beside this crate in
//! `schemas/order-event.schema.json`.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod amount;
#[cfg(feature = "arrow")]
pub mod batch;
pub mod cache;
pub mod config;
pub mod day;
pub mod event;
pub mod fx;
pub mod job;
pub mod partial;
pub mod scan;
pub mod totals;
pub mod zone;

pub use amount::Amount;
pub use day::Day;
pub use event::{Invalid, Kind, OrderEvent, ValidEvent};
pub use partial::{LocalRow, Partial, PartialRow};
pub use totals::{LocalSums, LocalTotals, Sums, Totals, TotalsKey};
