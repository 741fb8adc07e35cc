//! tally's producer side.
//!
//! - [`generate`]: the deterministic load generator and its exact expected totals.
//! - [`produce`]: publishing generated traffic straight to Kafka.
//! - [`expected`]: the expected-totals CSV file and the key-by-key comparison.
//!
//! - [`service`]: `tally ingest`, the HTTP front door (`POST /v1/orders`).
//! - [`serve`]: its server: HTTPS, connection bounds and deadlines.
//! - [`imports`]: `POST /v1/imports`, S3 event notifications that start imports.
//! - [`client`]: a small HTTP/1.1 client for it (the generator's `--url`).

pub mod client;
pub mod expected;
pub mod generate;
pub mod imports;
pub mod produce;
pub mod serve;
pub mod service;
