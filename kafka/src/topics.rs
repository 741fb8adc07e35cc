//! Topic set-up: the topics tally needs, created as the operator's
//! settings say, and the partials topic grown when the orders topic grew.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::client::FutureProducer;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::types::RDKafkaErrorCode;

use crate::client::client_with;
use crate::error::Error;

/// `retention.ms` of a partials topic tally creates: 14 days, longer than
/// any park or outage an operator can be expected to notice (a parked
/// partition pages within a minute), whatever the broker's default.
pub const PARTIALS_RETENTION_MS: u64 = 14 * 24 * 3_600_000;

/// How tally creates the topics it needs.
#[derive(Debug, Clone, Copy)]
pub struct TopicSpec<'a> {
    /// Partitions of each created topic.
    pub partitions: i32,
    /// Replication factor.
    pub replication: i32,
    /// `min.insync.replicas`: how many replicas must have a write before
    /// `acks=all` acknowledges it. 0 means the replication factor less one,
    /// at least 1 (2 of 3).
    pub min_insync_replicas: i32,
    /// The partials topic, whose partials must outlive any park or outage
    /// an operator can be expected to notice, and its `retention.ms`.
    pub partials: Option<(&'a str, u64)>,
}

impl TopicSpec<'_> {
    /// The `min.insync.replicas` created topics get.
    pub fn min_insync(&self) -> i32 {
        match self.min_insync_replicas {
            0 => (self.replication - 1).max(1),
            n => n,
        }
    }
}

/// Creates each topic in `topics` that the cluster does not have yet, as
/// `spec` says. Topics that exist are left as they are.
///
/// Fails when the cluster is unreachable or refuses a creation.
pub async fn ensure_topics(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    topics: &[&str],
    spec: TopicSpec<'_>,
) -> Result<(), Error> {
    let TopicSpec {
        partitions,
        replication,
        ..
    } = spec;
    let min_insync = spec.min_insync().to_string();
    let retention = spec.partials.map(|(_, ms)| ms.to_string());
    let kafka = |op| Error::client(op, brokers);
    let admin: AdminClient<DefaultClientContext> = client_with(brokers, extra)
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
            let mut new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replication))
                .set("min.insync.replicas", &min_insync);
            if let (Some((partials, _)), Some(retention)) = (spec.partials, &retention) {
                if partials == *topic {
                    new = new.set("retention.ms", retention);
                }
            }
            missing.push(new);
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
            Ok(topic) => {
                tracing::info!(topic, partitions, replication, min_insync, "Created topic.")
            }
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(Error::Topic {
                    topic,
                    reason: code.to_string(),
                })
            }
        }
    }
    Ok(())
}

/// How many partitions `topic` has, as the broker lists them to `producer`
/// (the lookup also refreshes the producer's view of it); `None` when it
/// cannot say.
pub async fn topic_partitions(producer: &FutureProducer, topic: &str) -> Option<usize> {
    use rdkafka::producer::Producer;
    let (producer, topic) = (producer.clone(), topic.to_owned());
    tokio::task::spawn_blocking(move || {
        producer
            .client()
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .ok()?
            .topics()
            .iter()
            .find(|t| t.name() == topic && t.error().is_none())
            .map(|t| t.partitions().len())
    })
    .await
    .ok()
    .flatten()
}

/// Makes sure the partials topic has partition `partition` (partials go to
/// the partition equal to their source partition): when the orders topic
/// grew, the partials topic grows to `partition + 1` partitions (or more, if
/// another worker grew it first). The lookup goes through `producer`, whose
/// view of the topic it also refreshes.
///
/// Fails naming both counts when the broker refuses the growth (no right to
/// alter the topic, or a broker without CreatePartitions).
pub async fn ensure_partials_partition(
    brokers: &str,
    extra: &BTreeMap<String, String>,
    producer: &FutureProducer,
    topic: &str,
    partition: i32,
) -> Result<(), String> {
    let needed = partition as usize + 1;
    let count = topic_partitions(producer, topic).await;
    match count {
        Some(have) if have >= needed => return Ok(()),
        // The broker cannot say now: publishing retries as usual.
        None => return Ok(()),
        Some(have) => tracing::warn!(
            topic,
            have,
            needed,
            "The partials topic has fewer partitions than the orders topic now has; growing it."
        ),
    }
    let refused = |reason: String| {
        format!(
            "the partials topic {topic} has {} partition(s) but orders partition {partition} needs {needed}: {reason}; \
             grow it (kafka-topics --alter --topic {topic} --partitions {needed}) or give the worker the right to",
            count.unwrap_or(0)
        )
    };
    let admin: AdminClient<DefaultClientContext> = client_with(brokers, extra)
        .create()
        .map_err(|e| refused(format!("no admin client: {e}")))?;
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let grow = NewPartitions::new(topic, needed);
    let results = admin
        .create_partitions(&[grow], &options)
        .await
        .map_err(|e| refused(e.to_string()))?;
    for result in results {
        match result {
            Ok(_) => tracing::info!(topic, partitions = needed, "Partials topic grown."),
            // Another worker grew it first.
            Err((_, RDKafkaErrorCode::InvalidPartitions)) => {}
            Err((_, code)) => return Err(refused(code.to_string())),
        }
    }
    match topic_partitions(producer, topic).await {
        Some(have) if have < needed => Err(refused(format!("it still has {have} after growing"))),
        _ => Ok(()),
    }
}
