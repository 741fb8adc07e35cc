//! `tally aggregator` configuration: declared, documented and validated here.

use std::collections::BTreeMap;

use schemas::config::{self as check, ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// `[aggregator]`: the settings of `tally aggregator`, and of its backfill
/// runner, scheduler and import watch. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct AggregatorConfig {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Database to upsert into: `postgres://…` or `sqlite://PATH`.
    pub database_url: String,
    /// Topic the workers publish partials to.
    pub partials_topic: String,
    /// Consumer group shared by all aggregators.
    pub group_id: String,
    /// Partitions of the partials topic when the aggregator creates it (it
    /// does when it starts before any worker). Must be at least the orders
    /// topic's partition count; workers refuse to start otherwise.
    pub partials_partitions: i32,
    /// Replication factor of the partials topic when the aggregator creates it.
    pub replication_factor: i32,
    /// Its `min.insync.replicas`; 0: the replication factor less one, at least 1.
    pub min_insync_replicas: i32,
    /// Its `retention.ms`: a partial must outlive any park or outage an
    /// operator notices.
    pub partials_retention_ms: u64,
    /// At most one flush transaction starts per this interval; under load
    /// each starts as soon as the one before commits.
    pub flush_interval_ms: u64,
    /// Reading pauses while this many partials wait behind a flush.
    pub flush_max_partials: usize,
    /// Kafka consumer session timeout.
    pub session_timeout_ms: u64,
    /// Kafka static membership (`group.instance.id`). A process restarted
    /// with the same id takes its partitions back without a rebalance. Empty
    /// means dynamic membership, where a clean shutdown leaves the group at once.
    pub group_instance_id: String,
    /// Backfill tasks this process runs at once (0: run no backfills).
    pub backfill_parallelism: usize,
    /// Attempts per backfill task before it fails its job (1 + retries).
    pub backfill_max_attempts: i32,
    /// Wait before a task's first retry; it doubles per retry, plus jitter.
    pub backfill_retry_base_ms: u64,
    /// A running task's lease: another process retries it this long after
    /// its runner stops renewing.
    pub backfill_lease_ms: u64,
    /// How often to look for backfill work.
    pub backfill_poll_ms: u64,
    /// How long each statement of a job's large writes may take: staging a
    /// task's rows, the completion swap, an import's totals (the live
    /// flushes keep the connection's `statement_timeout`).
    pub backfill_statement_timeout_ms: u64,
    /// A folder, `*` pattern or `s3://bucket/prefix/` whose new files are
    /// imported (added to the live totals, once per file). Empty: no watch.
    /// Only the elected scheduler watches.
    pub import_watch: String,
    /// How often the watch lists its source.
    pub import_poll_ms: u64,
    /// A new file is imported once it has stayed unchanged (size and
    /// modification time or ETag) for this long; a file still being
    /// written is left alone. 0 imports a file when first seen: for
    /// writers that rename into place.
    pub import_settle_ms: u64,
    /// Format of watched files: parquet, csv or ndjson. Empty: from each file's extension.
    pub import_format: String,
    /// Backfills and imports also recompute `merchant_sales_local`; set as
    /// the workers' `local_days`.
    pub local_days: bool,
    /// The IANA zone of merchants without one; the workers' setting.
    pub default_time_zone: String,
    /// Close days: once the pipeline's completeness time passes a day's end
    /// (in its zone) plus the grace period, its totals are recorded as
    /// closed and every later change to it as an adjustment. Only the
    /// elected aggregator closes.
    pub close_days: bool,
    /// The grace period, in seconds: how long after a day ends, by the
    /// completeness time, before it closes.
    pub close_grace_secs: u64,
    /// How often to measure completeness and close the days that are due.
    pub close_poll_ms: u64,
    /// Extra librdkafka properties (e.g. security settings).
    pub kafka: BTreeMap<String, String>,
}

impl Default for AggregatorConfig {
    fn default() -> AggregatorConfig {
        AggregatorConfig {
            brokers: "127.0.0.1:9092".into(),
            database_url: "sqlite://tally.sqlite".into(),
            partials_topic: "tally.partials".into(),
            group_id: "tally-aggregators".into(),
            partials_partitions: 8,
            replication_factor: 1,
            min_insync_replicas: 0,
            partials_retention_ms: kafka::topics::PARTIALS_RETENTION_MS,
            flush_interval_ms: 200,
            flush_max_partials: 5_000,
            session_timeout_ms: 10_000,
            group_instance_id: String::new(),
            backfill_parallelism: 2,
            backfill_max_attempts: 4,
            backfill_retry_base_ms: 1_000,
            backfill_lease_ms: 30_000,
            backfill_poll_ms: 500,
            backfill_statement_timeout_ms: store::DEFAULT_JOB_TIMEOUT_MS,
            import_watch: String::new(),
            import_poll_ms: 2_000,
            import_settle_ms: 10_000,
            import_format: String::new(),
            local_days: true,
            default_time_zone: "UTC".into(),
            close_days: true,
            close_grace_secs: 4 * 3_600,
            close_poll_ms: 10_000,
            kafka: BTreeMap::new(),
        }
    }
}

impl Validate for AggregatorConfig {
    /// Checks every field; the error names the first bad one as `aggregator.<field>`.
    #[expect(
        clippy::too_many_lines,
        reason = "one check per setting, in the order of the settings table"
    )]
    fn validate(&self) -> Result<(), ConfigError> {
        check::brokers("aggregator.brokers", &self.brokers)?;
        check::database_url("aggregator.database_url", &self.database_url)?;
        check::kafka_name("aggregator.partials_topic", &self.partials_topic)?;
        if !self.group_instance_id.is_empty() {
            check::kafka_name("aggregator.group_instance_id", &self.group_instance_id)?;
        }
        check::kafka_name("aggregator.group_id", &self.group_id)?;
        check::time_zone("aggregator.default_time_zone", &self.default_time_zone)?;
        check::in_range(
            "aggregator.partials_partitions",
            self.partials_partitions,
            1,
            10_000,
        )?;
        check::in_range(
            "aggregator.replication_factor",
            self.replication_factor,
            1,
            32,
        )?;
        check::in_range(
            "aggregator.min_insync_replicas",
            self.min_insync_replicas,
            0,
            self.replication_factor,
        )?;
        check::in_range(
            "aggregator.partials_retention_ms",
            self.partials_retention_ms,
            3_600_000,
            i64::MAX as u64,
        )?;
        check::in_range(
            "aggregator.flush_interval_ms",
            self.flush_interval_ms,
            10,
            600_000,
        )?;
        check::in_range(
            "aggregator.flush_max_partials",
            self.flush_max_partials,
            1,
            1_000_000,
        )?;
        check::in_range(
            "aggregator.session_timeout_ms",
            self.session_timeout_ms,
            1_000,
            300_000,
        )?;
        check::in_range(
            "aggregator.backfill_parallelism",
            self.backfill_parallelism,
            0,
            256,
        )?;
        check::in_range(
            "aggregator.backfill_max_attempts",
            self.backfill_max_attempts,
            1,
            100,
        )?;
        check::in_range(
            "aggregator.backfill_retry_base_ms",
            self.backfill_retry_base_ms,
            1,
            3_600_000,
        )?;
        check::in_range(
            "aggregator.backfill_lease_ms",
            self.backfill_lease_ms,
            300,
            3_600_000,
        )?;
        check::in_range(
            "aggregator.close_grace_secs",
            self.close_grace_secs,
            0,
            31 * 86_400,
        )?;
        check::in_range(
            "aggregator.close_poll_ms",
            self.close_poll_ms,
            100,
            3_600_000,
        )?;
        check::in_range(
            "aggregator.backfill_poll_ms",
            self.backfill_poll_ms,
            10,
            600_000,
        )?;
        check::in_range(
            "aggregator.backfill_statement_timeout_ms",
            self.backfill_statement_timeout_ms,
            1_000,
            86_400_000,
        )?;
        check::in_range(
            "aggregator.import_poll_ms",
            self.import_poll_ms,
            10,
            3_600_000,
        )?;
        check::in_range(
            "aggregator.import_settle_ms",
            self.import_settle_ms,
            0,
            86_400_000,
        )?;
        if !self.import_format.is_empty() {
            backfill::Format::parse("aggregator.import_format", &self.import_format).map_err(
                |reason| ConfigError::new("aggregator.import_format", &self.import_format, &reason),
            )?;
        }
        if !self.import_watch.is_empty() {
            backfill::Remote::parse(&self.import_watch).map_err(|reason| {
                ConfigError::new("aggregator.import_watch", &self.import_watch, &reason)
            })?;
            if self.backfill_parallelism == 0 {
                return Err(ConfigError::new(
                    "aggregator.import_watch",
                    &self.import_watch,
                    "needs aggregator.backfill_parallelism above 0: the watch runs beside the job runner",
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(AggregatorConfig::default().validate(), Ok(()));
        let bad = AggregatorConfig {
            flush_interval_ms: 0,
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().field,
            "aggregator.flush_interval_ms"
        );
        let bad = AggregatorConfig {
            import_watch: "gs://bucket/in/".into(),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "aggregator.import_watch");
        let bad = AggregatorConfig {
            import_watch: "/in".into(),
            backfill_parallelism: 0,
            ..Default::default()
        };
        assert!(bad
            .validate()
            .unwrap_err()
            .to_string()
            .contains("backfill_parallelism"));
        let bad = AggregatorConfig {
            import_format: "xml".into(),
            ..Default::default()
        };
        assert_eq!(
            bad.validate().unwrap_err().field,
            "aggregator.import_format"
        );
    }
}
