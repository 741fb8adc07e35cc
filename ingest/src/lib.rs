//! `tally ingest` (orders over HTTP, the totals API, import notifications)
//! and the load generator.
//!
//! - [`generate`]: the deterministic load generator and its exact expected totals.
//! - [`produce`]: publishing generated traffic straight to Kafka.
//! - [`expected`]: the expected-totals CSV file and the key-by-key comparison.
//!
//! - [`run()`]: `tally ingest`'s entry point: serves until shutdown, then
//!   drains and flushes ([`bind`] binds its address first).
//! - [`config`]: `[ingest]` settings, defaults and validation.
//! - [`database`]: the aggregators' database, which imports and the totals API use.
//! - [`service`]: the HTTP front door's routes (`POST /v1/orders`).
//! - [`metrics`]: its Prometheus metrics.
//! - [`error`]: why it could not start or stop cleanly.
//! - [`serve`]: its server: HTTPS, connection bounds and deadlines.
//! - [`imports`]: `POST /v1/imports`, S3 event notifications that start imports.
//! - [`totals`]: the totals API, `GET /v1/merchants/…`, with read tokens.
//! - [`client`]: a small HTTP/1.1 client for it (the generator's `--url`).
//! - `respond`: the one shape of every JSON answer (401 and 503 headers).

pub mod client;
pub mod config;
pub mod database;
pub mod error;
pub mod expected;
pub mod generate;
pub mod imports;
pub mod metrics;
pub mod produce;
mod respond;
mod run;
pub mod serve;
pub mod service;
pub mod totals;

pub use config::IngestConfig;
pub use error::IngestError;
pub use run::{bind, run};
