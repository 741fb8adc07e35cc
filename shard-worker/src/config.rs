//! `tally worker` configuration: declared, documented and validated here.

use std::collections::BTreeMap;

use schemas::config::{self as check, ConfigError, Validate};
use serde::{Deserialize, Serialize};

/// librdkafka's default `message.max.bytes` (and Kafka's default broker limit is close: 1 MiB).
pub const LIBRDKAFKA_MESSAGE_MAX_BYTES: usize = 1_000_000;
/// What a partial's record adds to its JSON: key, headers, record framing.
pub const PARTIAL_ENVELOPE_BYTES: usize = 1_024;

pub use kafka::topics::PARTIALS_RETENTION_MS;

/// `[worker]`: the settings of `tally worker`, a shard worker. Every field
/// has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields, default)]
pub struct WorkerConfig {
    /// Kafka bootstrap servers, `host:port[,host:port…]`.
    pub brokers: String,
    /// Database holding fences and totals: `postgres://…` or `sqlite://PATH`.
    pub database_url: String,
    /// Topic of order events.
    pub orders_topic: String,
    /// Topic the worker publishes partial totals to.
    pub partials_topic: String,
    /// Dead-letter topic for invalid events.
    pub dlq_topic: String,
    /// Consumer group shared by all workers.
    pub group_id: String,
    /// Partitions given to each of the three topics when the worker creates them.
    pub topic_partitions: i32,
    /// Replication factor of created topics (3 in production).
    pub replication_factor: i32,
    /// `min.insync.replicas` of created topics; 0: the replication factor
    /// less one, at least 1 (so 2 of 3).
    pub min_insync_replicas: i32,
    /// `retention.ms` of the partials topic when the worker creates it: a
    /// partial must outlive any park or outage an operator notices.
    pub partials_retention_ms: u64,
    /// A batch (and so a partial) closes at this many messages…
    pub batch_max_events: usize,
    /// …or this long after its first message, whichever comes first. A
    /// batch that reaches the end of the partition's log closes at once.
    pub batch_max_ms: u64,
    /// Event ids are deduplicated within this much message time.
    pub dedupe_window_secs: u64,
    /// Most event ids one partition's dedupe window holds. Past this the
    /// oldest id leaves early (counted in `tally_worker_dedupe_evicted_total`),
    /// so a retry of it would count again: size it above a partition's ids
    /// per window. About 60 bytes per id.
    pub dedupe_max_ids: usize,
    /// A partial holds at most this many rows; a batch with more keys is
    /// cut into several partials of consecutive offset ranges.
    pub partial_max_rows: usize,
    /// A partial's JSON is at most this many bytes (before compression);
    /// must fit the producer's `message.max.bytes` and the broker's limit.
    pub partial_max_bytes: usize,
    /// Kafka consumer session timeout.
    pub session_timeout_ms: u64,
    /// On shutdown, how long in-flight batches may take to publish.
    pub drain_timeout_ms: u64,
    /// Name recorded with each claim (defaults to host and process id).
    pub instance_id: String,
    /// Kafka static membership (`group.instance.id`). A process restarted
    /// with the same id takes its partitions back without a rebalance. Empty
    /// means dynamic membership, where a clean shutdown leaves the group at once.
    pub group_instance_id: String,
    /// Keep `merchant_sales_local`: sum each event also by the calendar day
    /// in its merchant's time zone (`tally merchants set-zone`).
    pub local_days: bool,
    /// The IANA time zone of merchants that have none of their own.
    pub default_time_zone: String,
    /// Extra librdkafka properties for every client (e.g. security settings).
    pub kafka: BTreeMap<String, String>,
}

impl Default for WorkerConfig {
    fn default() -> WorkerConfig {
        WorkerConfig {
            brokers: "127.0.0.1:9092".into(),
            database_url: "sqlite://tally.sqlite".into(),
            orders_topic: "orders".into(),
            partials_topic: "tally.partials".into(),
            dlq_topic: "orders.dlq".into(),
            group_id: "tally-workers".into(),
            topic_partitions: 8,
            replication_factor: 1,
            min_insync_replicas: 0,
            partials_retention_ms: PARTIALS_RETENTION_MS,
            batch_max_events: 20_000,
            batch_max_ms: 250,
            dedupe_window_secs: 900,
            dedupe_max_ids: 2_000_000,
            partial_max_rows: 5_000,
            partial_max_bytes: 512 * 1024,
            session_timeout_ms: 10_000,
            drain_timeout_ms: 15_000,
            instance_id: String::new(),
            group_instance_id: String::new(),
            local_days: true,
            default_time_zone: "UTC".into(),
            kafka: BTreeMap::new(),
        }
    }
}

impl WorkerConfig {
    /// The zone of merchants that have none of their own.
    ///
    /// Fails when `default_time_zone` is not an IANA name.
    pub fn default_zone(&self) -> Result<schemas::zone::Zone, ConfigError> {
        check::time_zone("worker.default_time_zone", &self.default_time_zone)
    }

    /// The producer's `message.max.bytes`: `worker.kafka` or librdkafka's default.
    ///
    /// Fails when the configured value is not a number.
    pub fn message_max_bytes(&self) -> Result<usize, ConfigError> {
        match self.kafka.get("message.max.bytes") {
            None => Ok(LIBRDKAFKA_MESSAGE_MAX_BYTES),
            Some(text) => text.parse().map_err(|_| {
                ConfigError::new(
                    "worker.kafka.message.max.bytes",
                    text,
                    "must be a whole number of bytes",
                )
            }),
        }
    }

    /// How the worker creates the topics it needs.
    pub fn topic_spec(&self) -> kafka::topics::TopicSpec<'_> {
        kafka::topics::TopicSpec {
            partitions: self.topic_partitions,
            replication: self.replication_factor,
            min_insync_replicas: self.min_insync_replicas,
            partials: Some((&self.partials_topic, self.partials_retention_ms)),
        }
    }

    /// The instance id, or `host-pid` when none was configured.
    pub fn instance(&self) -> String {
        if self.instance_id.is_empty() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into());
            format!("{host}-{}", std::process::id())
        } else {
            self.instance_id.clone()
        }
    }
}

impl Validate for WorkerConfig {
    /// Checks every field; the error names the first bad one as `worker.<field>`.
    fn validate(&self) -> Result<(), ConfigError> {
        check::brokers("worker.brokers", &self.brokers)?;
        check::database_url("worker.database_url", &self.database_url)?;
        check::kafka_name("worker.orders_topic", &self.orders_topic)?;
        check::kafka_name("worker.partials_topic", &self.partials_topic)?;
        check::kafka_name("worker.dlq_topic", &self.dlq_topic)?;
        check::kafka_name("worker.group_id", &self.group_id)?;
        check::in_range("worker.topic_partitions", self.topic_partitions, 1, 10_000)?;
        check::in_range("worker.replication_factor", self.replication_factor, 1, 32)?;
        check::in_range(
            "worker.min_insync_replicas",
            self.min_insync_replicas,
            0,
            self.replication_factor,
        )?;
        check::in_range(
            "worker.partials_retention_ms",
            self.partials_retention_ms,
            3_600_000,
            i64::MAX as u64,
        )?;
        check::in_range(
            "worker.batch_max_events",
            self.batch_max_events,
            1,
            1_000_000,
        )?;
        check::in_range("worker.batch_max_ms", self.batch_max_ms, 1, 60_000)?;
        check::in_range(
            "worker.dedupe_window_secs",
            self.dedupe_window_secs,
            0,
            7 * 86_400,
        )?;
        check::in_range(
            "worker.dedupe_max_ids",
            self.dedupe_max_ids,
            1_000,
            1_000_000_000,
        )?;
        check::in_range(
            "worker.partial_max_rows",
            self.partial_max_rows,
            1,
            1_000_000,
        )?;
        let message_max = self.message_max_bytes()?;
        // One row of the largest ids with every header field is under 1 KiB.
        let room = message_max.saturating_sub(PARTIAL_ENVELOPE_BYTES);
        if self.partial_max_bytes < 4_096 || self.partial_max_bytes > room {
            return Err(ConfigError::new(
                "worker.partial_max_bytes",
                self.partial_max_bytes,
                format!("must be between 4096 and {room} (the producer's message.max.bytes {message_max} minus {PARTIAL_ENVELOPE_BYTES} for the record's key and framing)"),
            ));
        }
        check::in_range(
            "worker.session_timeout_ms",
            self.session_timeout_ms,
            1_000,
            300_000,
        )?;
        check::in_range("worker.drain_timeout_ms", self.drain_timeout_ms, 0, 600_000)?;
        if !self.group_instance_id.is_empty() {
            check::kafka_name("worker.group_instance_id", &self.group_instance_id)?;
        }
        self.default_zone()?;
        if self.orders_topic == self.partials_topic || self.orders_topic == self.dlq_topic {
            return Err(ConfigError::new(
                "worker.orders_topic",
                &self.orders_topic,
                "must differ from partials_topic and dlq_topic",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert_eq!(WorkerConfig::default().validate(), Ok(()));
        let bad = WorkerConfig {
            batch_max_events: 0,
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "worker.batch_max_events");
        let bad = WorkerConfig {
            partials_topic: "orders".into(),
            ..Default::default()
        };
        assert_eq!(bad.validate().unwrap_err().field, "worker.orders_topic");
    }

    #[test]
    fn partials_must_fit_the_producers_message_limit() {
        let mut small = WorkerConfig::default();
        small
            .kafka
            .insert("message.max.bytes".into(), "200000".into());
        let error = small.validate().unwrap_err();
        assert_eq!(error.field, "worker.partial_max_bytes");
        assert!(error.reason.contains("message.max.bytes 200000"), "{error}");
        small.partial_max_bytes = 100_000;
        assert_eq!(small.validate(), Ok(()));
        small
            .kafka
            .insert("message.max.bytes".into(), "lots".into());
        assert_eq!(
            small.validate().unwrap_err().field,
            "worker.kafka.message.max.bytes"
        );
    }
}
