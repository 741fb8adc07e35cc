//! tally's producer side.
//!
//! - [`generate`]: the deterministic load generator and its exact expected totals.
//! - [`produce`]: publishing generated traffic straight to Kafka.
//!
//! The HTTP ingest service (`tally ingest`) is the next piece to land here.

pub mod generate;
pub mod produce;
