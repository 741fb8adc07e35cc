//! tally's one home for Kafka plumbing. Every Kafka client tally makes is
//! configured here (the workspace's `clippy.toml` refuses
//! `ClientConfig::new` anywhere else); the roles add their own properties.
//!
//! - [`client`]: the base configuration (bootstrap servers, the operator's
//!   properties, librdkafka's log level), the consumers' fetch defaults, and
//!   librdkafka's log lines into `tracing`;
//! - [`producer`]: the producers (the worker's idempotent one, the bulk one
//!   of `tally generate` and the demo, ingest's), and a send that retries
//!   by [`retry`]'s policy;
//! - [`topics`]: topic set-up and growth;
//! - [`error`]: [`Error`], what a Kafka operation failed on, and which
//!   broker answers are worth retrying ([`error::class_of`]);
//! - [`probe`]: the start-up check that tells a broker that refuses tally
//!   (TLS, SASL, a misspelt property) from one that is away.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

pub mod client;
pub mod error;
pub mod probe;
pub mod producer;
pub mod topics;

pub use client::{client, client_with, FutureProducer, Logged};
pub use error::Error;
