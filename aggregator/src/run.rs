//! `run`: consume partials, merge them, and commit each flush in one
//! fenced transaction.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use store::Store;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use crate::config::AggregatorConfig;
use crate::error::AggregatorError;
use crate::flush::{flush, Buffer};
use crate::health::PartialsContext;
use crate::metrics;
use backfill::RunnerConfig;

/// Runs one aggregator until `shutdown` is cancelled, committing what it
/// has buffered before returning.
///
/// Fails before connecting when the configuration is invalid, and when the
/// Kafka consumer cannot be created. Database outages are retried with capped
/// backoff while the buffered partials are kept.
pub async fn run(
    config: AggregatorConfig,
    shutdown: CancellationToken,
) -> Result<(), AggregatorError> {
    config.validate()?;
    metrics::init();
    tokio::spawn(metrics::refresh_freshness(shutdown.clone()));
    let store = tokio::select! {
        store = connect(&config.database_url) => Arc::new(store?),
        () = shutdown.cancelled() => return Ok(()),
    };
    crate::health::watch(store.clone());
    crate::health::keep_local_days(config.local_days);
    store.set_job_timeout(Duration::from_millis(config.backfill_statement_timeout_ms));
    tokio::spawn(crate::health::probe(store.clone(), shutdown.clone()));
    if config.backfill_parallelism > 0 {
        let runner = RunnerConfig {
            owner: format!("{}-{}", hostname(), std::process::id()),
            parallelism: config.backfill_parallelism,
            max_attempts: config.backfill_max_attempts,
            retry_base_ms: config.backfill_retry_base_ms,
            lease_ms: config.backfill_lease_ms,
            poll_ms: config.backfill_poll_ms,
            local_days: config
                .local_days
                .then(|| {
                    schemas::config::time_zone(
                        "aggregator.default_time_zone",
                        &config.default_time_zone,
                    )
                })
                .transpose()?,
        };
        let watch = (!config.import_watch.is_empty()).then(|| backfill::WatchConfig {
            source: config.import_watch.clone(),
            format: backfill::Format::parse("aggregator.import_format", &config.import_format).ok(),
            poll: Duration::from_millis(config.import_poll_ms),
            settle: Duration::from_millis(config.import_settle_ms),
        });
        let poll = Duration::from_millis(config.backfill_poll_ms);
        tokio::spawn(backfill::run_scheduler(
            store.clone(),
            poll,
            watch,
            shutdown.clone(),
        ));
        // Backfills and schedules take their own pooled connections, so a long
        // replace never holds up the flushes of the live stream.
        tokio::spawn(backfill::run_tasks(store.clone(), runner, shutdown.clone()));
    }
    // `?` wraps it in this role's error.
    let failed = |op| kafka::Error::client(op, &config.brokers);
    // The partials topic may not exist yet when the aggregator starts first:
    // create it, so that start order does not matter.
    let topics = [config.partials_topic.as_str()];
    let setup = || async {
        let spec = kafka::topics::TopicSpec {
            partitions: config.partials_partitions,
            replication: config.replication_factor,
            min_insync_replicas: config.min_insync_replicas,
            partials: Some((&config.partials_topic, config.partials_retention_ms)),
        };
        kafka::topics::ensure_topics(&config.brokers, &config.kafka, &topics, spec).await
    };
    tokio::select! {
        made = retry::retry("topic_setup", setup, |_| metrics::RETRIES.with_label_values(&["topic_setup"]).inc()) => {
            made.map_err(|e| AggregatorError::Topic(e.to_string()))?
        }
        () = shutdown.cancelled() => return Ok(()),
    }
    let mut client = kafka::client(&config.brokers);
    client
        .set("group.id", &config.group_id)
        // A partials topic created or recreated later is seen within seconds.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 4).max(250).to_string(),
        );
    if !config.group_instance_id.is_empty() {
        client.set("group.instance.id", &config.group_instance_id);
    }
    kafka::client::fetch_defaults(&mut client, &config.kafka);
    kafka::client::apply(&mut client, &config.kafka);
    let consumer: Arc<StreamConsumer<PartialsContext>> = Arc::new(
        client
            .create_with_context(PartialsContext)
            .map_err(failed("consumer"))?,
    );
    consumer
        .subscribe(&[&config.partials_topic])
        .map_err(failed("subscribe"))?;
    tracing::info!(
        topic = config.partials_topic,
        group = config.group_id,
        "Aggregator consuming."
    );
    metrics::READY.set(1);
    let topic: Arc<str> = config.partials_topic.as_str().into();
    // Flushes run one at a time, in order, while the next buffer fills. Under
    // load they follow each other at once and grow, so each upsert carries
    // more events per row; idle, one starts every `flush_interval_ms`.
    // They stop only at `last`, cancelled a while after shutdown.
    let last = CancellationToken::new();
    let mut buffer = Buffer::default();
    let mut in_flight: Option<JoinHandle<Buffer>> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(config.flush_interval_ms));
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            done = async { in_flight.as_mut().expect("guarded").await }, if in_flight.is_some() => {
                in_flight = None;
                // Unapplied only at `last`, which is not cancelled before the loop ends.
                finished(done);
            }
            _ = tick.tick(), if in_flight.is_none() && !buffer.is_empty() => {
                let flushing = flush(store.clone(), consumer.clone(), topic.clone(), buffer.take(), last.clone());
                in_flight = Some(tokio::spawn(flushing));
            }
            received = consumer.recv(), if buffer.len() < config.flush_max_partials => match received {
                Ok(message) => buffer.add(&message),
                Err(error) => tracing::warn!(%error, "Partials consumer error."),
            },
        }
    }
    metrics::READY.set(0);
    // The flush in flight, then a last one of what was read since; if the
    // database is down they are abandoned and the partials are read again on
    // the next start (the fence dedupes them).
    let deadline = last.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        deadline.cancel();
    });
    // A flush still unapplied at the deadline keeps what came after it from
    // going first.
    let behind = match in_flight {
        Some(flushing) => !finished(flushing.await).is_empty(),
        None => false,
    };
    if !behind {
        flush(store, consumer, topic, buffer, last).await;
    }
    tracing::info!("Aggregator stopped.");
    Ok(())
}

/// What a flush task handed back: the buffer, unapplied only if its stop
/// came first. A task that panicked is a bug: the panic goes on here, as it
/// would have in line.
fn finished(done: Result<Buffer, tokio::task::JoinError>) -> Buffer {
    match done {
        Ok(kept) => kept,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(_) => Buffer::default(),
    }
}

/// Connects, retrying while the database is unreachable.
///
/// Fails on a permanent error: a malformed URL, a failed migration.
async fn connect(url: &str) -> Result<Store, AggregatorError> {
    let on_retry = |_: &store::StoreError| {
        metrics::RETRIES
            .with_label_values(&["database_connect"])
            .inc()
    };
    Ok(retry::retry("database_connect", || Store::connect(url), on_retry).await?)
}

/// This machine's name, for task owners (`tally_tasks.owner`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "aggregator".to_owned())
}
