//! `run`: consume partials, merge them, and commit each flush in one
//! fenced transaction.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::{Offset, TopicPartitionList};
use schemas::Partial;
use store::{Plan, Store};
use tokio_util::sync::CancellationToken;

use crate::backfill::{self, runner::RunnerConfig};
use crate::config::AggregatorConfig;
use crate::error::AggregatorError;
use crate::metrics;

/// Partials read since the last flush, and the partials-topic offsets to
/// commit (as a restart hint) once they are durable.
#[derive(Default)]
struct Buffer {
    partials: Vec<Partial>,
    next_offsets: HashMap<i32, i64>,
}

/// Runs one aggregator until `shutdown` is cancelled, committing what it
/// has buffered before returning.
///
/// Fails before connecting when the configuration is invalid, and when the
/// Kafka consumer cannot be created. Database outages are retried with capped
/// backoff while the buffered partials are kept.
pub async fn run(config: AggregatorConfig, shutdown: CancellationToken) -> Result<(), AggregatorError> {
    config.validate()?;
    metrics::init();
    tokio::spawn(metrics::refresh_freshness(shutdown.clone()));
    let store = tokio::select! {
        store = connect(&config.database_url) => store,
        () = shutdown.cancelled() => return Ok(()),
    };
    if config.backfill_parallelism > 0 {
        // Backfills and schedules get their own connection, so a long replace never holds
        // up the flushes of the live stream.
        let runner_store = tokio::select! {
            store = connect(&config.database_url) => Arc::new(store),
            () = shutdown.cancelled() => return Ok(()),
        };
        let runner = RunnerConfig {
            owner: format!("{}-{}", hostname(), std::process::id()),
            parallelism: config.backfill_parallelism,
            max_attempts: config.backfill_max_attempts,
            retry_base_ms: config.backfill_retry_base_ms,
            lease_ms: config.backfill_lease_ms,
            poll_ms: config.backfill_poll_ms,
        };
        tokio::spawn(backfill::scheduler::run(runner_store.clone(), Duration::from_millis(config.backfill_poll_ms), shutdown.clone()));
        tokio::spawn(backfill::runner::run(runner_store, runner, shutdown.clone()));
    }
    let brokers = config.brokers.clone();
    let kafka = |op: &'static str| {
        let brokers = brokers.clone();
        move |source| AggregatorError::Kafka { op, brokers, source }
    };
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        .set("heartbeat.interval.ms", (config.session_timeout_ms / 4).max(250).to_string());
    if !config.group_instance_id.is_empty() {
        client.set("group.instance.id", &config.group_instance_id);
    }
    for (key, value) in &config.kafka {
        client.set(key, value);
    }
    let consumer: StreamConsumer = client.create().map_err(kafka("consumer"))?;
    consumer.subscribe(&[&config.partials_topic]).map_err(kafka("subscribe"))?;
    tracing::info!(topic = config.partials_topic, group = config.group_id, "Aggregator consuming.");
    metrics::READY.set(1);
    let mut buffer = Buffer::default();
    let mut tick = tokio::time::interval(Duration::from_millis(config.flush_interval_ms));
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = tick.tick() => flush(&store, &consumer, &config.partials_topic, &mut buffer, &shutdown).await,
            received = consumer.recv(), if buffer.partials.len() < config.flush_max_partials => match received {
                Ok(message) => buffer.add(&message),
                Err(error) => tracing::warn!(%error, "Partials consumer error."),
            },
        }
    }
    metrics::READY.set(0);
    // A last flush on the way out; if the database is down it is abandoned and
    // the partials are read again on the next start (the fence dedupes them).
    let last = CancellationToken::new();
    let deadline = last.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_secs(10)).await;
        deadline.cancel();
    });
    flush(&store, &consumer, &config.partials_topic, &mut buffer, &last).await;
    tracing::info!("Aggregator stopped.");
    Ok(())
}

async fn connect(url: &str) -> Store {
    let mut delay = Duration::from_millis(100);
    loop {
        match Store::connect(url).await {
            Ok(store) => return store,
            Err(error) => {
                tracing::warn!(%error, retry_in_ms = delay.as_millis() as u64, "Database unreachable; retrying.");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

impl Buffer {
    fn add(&mut self, message: &rdkafka::message::BorrowedMessage<'_>) {
        self.next_offsets.insert(message.partition(), message.offset() + 1);
        match serde_json::from_slice::<Partial>(message.payload().unwrap_or_default()) {
            Ok(partial) => self.partials.push(partial),
            Err(error) => {
                metrics::PARTIALS.with_label_values(&["violation"]).inc();
                tracing::error!(partition = message.partition(), offset = message.offset(), %error,
                    "Unreadable partial; not applied.");
            }
        }
        metrics::BUFFERED.set(self.partials.len() as i64);
    }
}

/// Applies the buffer in one transaction, retrying with capped backoff until
/// it commits or `stop` is cancelled (then the buffer is kept).
async fn flush(store: &Store, consumer: &StreamConsumer, topic: &str, buffer: &mut Buffer, stop: &CancellationToken) {
    if buffer.next_offsets.is_empty() {
        return;
    }
    let mut delay = Duration::from_millis(100);
    let plan = loop {
        let started = Instant::now();
        match store.apply(&buffer.partials).await {
            Ok(plan) => {
                metrics::FLUSH_SECONDS.observe(started.elapsed().as_secs_f64());
                break plan;
            }
            Err(error) => {
                metrics::FLUSH_ERRORS.inc();
                tracing::warn!(%error, partials = buffer.partials.len(), retry_in_ms = delay.as_millis() as u64,
                    "Flush failed; keeping the partials and retrying.");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return,
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    };
    record(&plan);
    let mut tpl = TopicPartitionList::new();
    for (partition, next) in buffer.next_offsets.drain() {
        let _ = tpl.add_partition_offset(topic, partition, Offset::Offset(next));
    }
    buffer.partials.clear();
    metrics::BUFFERED.set(0);
    if let Err(error) = consumer.commit(&tpl, CommitMode::Async) {
        tracing::debug!(%error, "Partials offset commit failed; partials will be re-read and dropped as applied.");
    }
}

fn record(plan: &Plan) {
    metrics::PARTIALS.with_label_values(&["applied"]).inc_by(plan.applied);
    metrics::PARTIALS.with_label_values(&["older_epoch"]).inc_by(plan.older_epoch);
    metrics::PARTIALS.with_label_values(&["already_applied"]).inc_by(plan.already_applied);
    metrics::PARTIALS.with_label_values(&["violation"]).inc_by(plan.violations.len() as u64);
    metrics::UPSERT_ROWS.inc_by(plan.deltas.len() as u64);
    for counts in plan.events.values() {
        metrics::EVENTS.with_label_values(&["counted"]).inc_by(counts.counted);
        metrics::EVENTS.with_label_values(&["duplicate"]).inc_by(counts.duplicate);
        metrics::EVENTS.with_label_values(&["invalid"]).inc_by(counts.invalid);
    }
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64);
    for &(partition, append_ms) in &plan.applied_append_ms {
        metrics::END_TO_END.observe((now_ms - append_ms).max(0) as f64 / 1000.0);
        metrics::note_committed(partition, append_ms);
    }
    for violation in &plan.violations {
        tracing::error!(topic = violation.source.0, partition = violation.source.1, epoch = violation.epoch,
            first_offset = violation.first_offset, reason = violation.reason,
            "Fence invariant violated; partial not applied.");
    }
    if plan.older_epoch + plan.already_applied > 0 {
        tracing::debug!(older_epoch = plan.older_epoch, already_applied = plan.already_applied, "Dropped stale partials.");
    }
}

/// This machine's name, for task owners (`tally_tasks.owner`).
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_else(|_| "aggregator".to_owned())
}
