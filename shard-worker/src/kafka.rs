//! Kafka client settings and topic creation.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::KafkaError;
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;

use crate::error::WorkerError;

/// A client config for `brokers` with the operator's extra properties applied last.
pub fn client_config(brokers: &str, extra: &BTreeMap<String, String>) -> ClientConfig {
    let mut config = ClientConfig::new();
    config.set("bootstrap.servers", brokers);
    // librdkafka only logs what this level lets through; `debug` contexts need it all.
    let level = if extra.contains_key("debug") {
        RDKafkaLogLevel::Debug
    } else {
        RDKafkaLogLevel::Warning
    };
    config.set_log_level(level);
    for (key, value) in extra {
        config.set(key, value);
    }
    config
}

/// Consumer fetch settings that suit Kafka and tansu alike, each applied
/// only when the operator's `extra` does not set it.
///
/// - `fetch.wait.max.ms=10`: a broker answers a fetch as soon as it has
///   data anyway (`fetch.min.bytes=1`), so the wait only bounds how long an
///   idle fetch is held. tansu holds every fetch for the whole wait, which
///   at librdkafka's 500 ms capped a consumer at a seventh of its speed.
/// - `queued.max.messages.kbytes=16384`: each partition has its own queue
///   (see [`crate::consumer`]), so this bounds the prefetch per partition
///   at 16 MiB instead of librdkafka's 64 MiB.
/// - `fetch.queue.backoff.ms=10`: a partition whose queue reached that bound
///   (its task was busy) is fetched again 10 ms after it has room, not a
///   second later: at librdkafka's 1,000 ms, a backlog read stalled for
///   whole tenths of a second each time a queue filled.
pub const FETCH_DEFAULTS: [(&str, &str); 3] = [
    ("fetch.wait.max.ms", "10"),
    ("queued.max.messages.kbytes", "16384"),
    ("fetch.queue.backoff.ms", "10"),
];

/// Applies [`FETCH_DEFAULTS`] that `extra` leaves unset.
pub fn fetch_defaults(config: &mut ClientConfig, extra: &BTreeMap<String, String>) {
    for (key, value) in FETCH_DEFAULTS {
        if !extra.contains_key(key) {
            config.set(key, value);
        }
    }
}

/// An idempotent producer with `acks=all`: a retried send never duplicates or
/// reorders within a partition. Partials are compressed with LZ4 (a partial
/// of many merchants is mostly repeated field names), unless `extra` says
/// otherwise.
///
/// Fails when librdkafka rejects the configuration.
pub fn idempotent_producer(
    brokers: &str,
    extra: &BTreeMap<String, String>,
) -> Result<FutureProducer, KafkaError> {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("compression.type", "lz4")
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("message.timeout.ms", "60000");
    for (key, value) in extra {
        config.set(key, value);
    }
    config.create()
}

/// Creates each topic in `topics` that the cluster does not have yet, with
/// `partitions` partitions. Topics that exist are left as they are.
///
/// Fails when the cluster is unreachable or refuses a creation.
pub async fn ensure_topics(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    topics: &[&str],
    partitions: i32,
    replication: i32,
) -> Result<(), WorkerError> {
    let kafka = |op| {
        move |source| WorkerError::Kafka {
            op,
            brokers: brokers.to_owned(),
            source,
        }
    };
    let admin: AdminClient<DefaultClientContext> = client_config(brokers, extra)
        .create()
        .map_err(kafka("admin client"))?;
    // Ask about our topics only: a broker with thousands of topics answers a
    // full metadata request slowly.
    let mut missing = Vec::new();
    for topic in topics {
        let metadata = admin
            .inner()
            .fetch_metadata(Some(topic), Duration::from_secs(10))
            .map_err(kafka("metadata"))?;
        let exists = metadata
            .topics()
            .iter()
            .any(|m| m.name() == *topic && m.error().is_none() && !m.partitions().is_empty());
        if !exists {
            missing.push(NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(replication),
            ));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let results = admin
        .create_topics(&missing, &options)
        .await
        .map_err(kafka("create topics"))?;
    for result in results {
        match result {
            Ok(topic) => tracing::info!(topic, partitions, "Created topic."),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(WorkerError::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// Sends a librdkafka log line to `tracing` (target `librdkafka`), so that
/// broker problems show up in tally's own logs.
pub fn forward_log(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as L;
    match level {
        L::Emerg | L::Alert | L::Critical | L::Error => {
            tracing::error!(target: "librdkafka", facility, "{message}")
        }
        L::Warning => tracing::warn!(target: "librdkafka", facility, "{message}"),
        L::Notice | L::Info => tracing::info!(target: "librdkafka", facility, "{message}"),
        L::Debug => tracing::debug!(target: "librdkafka", facility, "{message}"),
    }
}
