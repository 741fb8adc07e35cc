//! `tally ingest`, the HTTP front door (orders, import notifications, the
//! totals API), and the load generator.
//!
//! The service, top down:
//!
//! - [`run()`]: `tally ingest`'s entry point: serves until shutdown, then
//!   drains and flushes ([`bind`] binds its address first).
//! - [`routes`]: the router, gathering every route.
//! - [`orders`]: `POST /v1/orders`, events validated and produced to Kafka.
//! - [`imports`]: `POST /v1/imports`, S3 event notifications that start imports
//!   ([`notifications`]: what they announce, and the queue that imports it).
//! - [`totals`]: the totals API, `GET /v1/merchants/…`, with read tokens.
//! - [`http`]: what the routes share: the state (producer, tokens, admission,
//!   body limits), the one shape of a JSON answer and a refusal, and the
//!   server loop ([`http::serve`]: HTTPS, connection bounds, deadlines).
//! - [`config`]: `[ingest]` settings, defaults and validation.
//! - [`database`]: the aggregators' database, which imports and the totals API use.
//! - [`metrics`]: its Prometheus metrics.
//! - [`error`]: why it could not start or stop cleanly.
//!
//! Beside it, [`load`]: the deterministic load generator, its exact expected
//! totals, and its two ways of sending (to Kafka, or over HTTP to the service).
//!
//! Every arrow points down: `run` → `routes` → the routes → `http` →
//! `notifications`.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod config;
pub mod database;
pub mod error;
pub mod http;
pub mod imports;
pub mod load;
pub mod metrics;
pub mod notifications;
pub mod orders;
pub mod routes;
mod run;
pub mod totals;

pub use config::IngestConfig;
pub use error::IngestError;
pub use run::{bind, run};
