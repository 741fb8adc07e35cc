//! The load generator and what checks its runs: deterministic order events
//! with the exact totals they must add up to, sent to Kafka directly or to
//! `tally ingest` over HTTP.
//!
//! - [`generate`]: the generator and its exact expected totals.
//! - [`expected`]: the expected-totals CSV file and the key-by-key comparison.
//! - [`produce`]: publishing generated traffic straight to Kafka.
//! - [`client`]: posting it to `tally ingest` (the generator's `--url`).

pub mod client;
pub mod expected;
pub mod generate;
pub mod produce;
