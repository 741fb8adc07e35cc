//! `run`: connect (database, topics, zones, subscription), consume until
//! shutdown, and drain; in that order, one method each.

use std::sync::Arc;
use std::time::Duration;

use kafka::FutureProducer;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::Producer;
use rdkafka::util::Timeout;
use schemas::config::Checked;
use store::Store;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::WorkerConfig;
use crate::consumer::{poll_loop, ClaimContext, LoopSettings};
use crate::error::WorkerError;
use crate::lag::{self, Offsets};
use crate::partition::Shared;
use crate::publish::retry;
use kafka::client::{client_with, fetch_defaults};
use kafka::topics::{ensure_partials_partition, ensure_topics, topic_partitions};

/// Partials go to the partials partition equal to their source partition, so
/// the partials topic needs at least as many partitions as the orders topic:
/// it is grown to match when it has fewer (see
/// [`kafka::topics::ensure_partials_partition`]).
///
/// Fails with both counts when the broker refuses the growth. A broker that
/// cannot say is not an error here (publishing then retries).
async fn check_partials_partitions(
    config: &WorkerConfig,
    producer: &FutureProducer,
) -> Result<(), WorkerError> {
    let orders = topic_partitions(producer, &config.orders_topic).await;
    let Some(orders) = orders.filter(|n| *n > 0) else {
        return Ok(());
    };
    ensure_partials_partition(
        &config.brokers,
        &config.kafka,
        producer,
        &config.partials_topic,
        orders as i32 - 1,
    )
    .await
    .map_err(|reason| {
        WorkerError::Kafka(kafka::Error::Topic {
            topic: config.partials_topic.clone(),
            reason,
        })
    })
}

/// How long [`warm_up`] waits for the broker.
const WARM_UP: Duration = Duration::from_secs(5);

/// Has the producer learn the partials topic's metadata before the worker
/// joins its group. Without it, the first partials waited for the lookup
/// and the retries behind it while every partition's task stood still: in
/// a backlog on tansu, most runs lost most of a second there. A failure is
/// only logged; publishing retries as it always does.
async fn warm_up(producer: &FutureProducer, partials_topic: &str) {
    let (producer, topic) = (producer.clone(), partials_topic.to_owned());
    let fetched = tokio::task::spawn_blocking(move || {
        producer.client().fetch_metadata(Some(&topic), WARM_UP)
    })
    .await;
    if let Ok(Err(error)) = fetched {
        tracing::debug!(%error, "Partials topic metadata not fetched ahead; the first partial will wait for it.");
    }
}

/// How often the lag gauges are refreshed from the database's fences.
const LAG_EVERY: Duration = Duration::from_secs(1);

/// How long the background tasks (lag, zones) may take to stop.
const TASKS_STOP: Duration = Duration::from_secs(10);

/// Runs one shard worker until `shutdown` is cancelled, then drains and
/// returns.
///
/// Fails when a Kafka client cannot be created; an unreachable database or
/// broker is retried with capped backoff instead. The settings were checked
/// by [`Validate::checked`](schemas::config::Validate::checked).
pub async fn run(
    config: Checked<WorkerConfig>,
    shutdown: CancellationToken,
) -> Result<(), WorkerError> {
    let config = config.into_inner();
    crate::metrics::init();
    // The background tasks stop with the worker, also when it fails.
    let (tasks, stop) = (TaskTracker::new(), shutdown.child_token());
    let outcome = match Worker::connect(config, &tasks, &stop).await {
        Ok(Some(worker)) => worker.run(stop.clone()).await,
        Ok(None) => Ok(()),
        Err(error) => Err(error),
    };
    stop.cancel();
    tasks.close();
    if tokio::time::timeout(TASKS_STOP, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            tasks = tasks.len(),
            "Background tasks still running at shutdown are abandoned."
        );
    }
    outcome
}

/// A connected worker: its consumer subscribed to the orders topic (its
/// context holds the database and the producer), and the producer to flush
/// at the end.
struct Worker {
    owner: String,
    consumer: Arc<BaseConsumer<ClaimContext>>,
    producer: FutureProducer,
    brokers: String,
    settings: LoopSettings,
}

impl Worker {
    /// Connects to the database and the broker (retrying while they are
    /// unreachable), creates the topics, reads the merchants' zones, starts
    /// the background tasks in `tasks` and subscribes. `None` when `stop`
    /// came first.
    async fn connect(
        config: WorkerConfig,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Option<Self>, WorkerError> {
        let owner = config.instance();
        let store = tokio::select! {
            store = retry("database_connect", || Store::connect(&config.database_url)) => Arc::new(store?),
            () = stop.cancelled() => return Ok(None),
        };
        crate::health::watch(store.clone());
        let topics = [
            config.orders_topic.as_str(),
            &config.partials_topic,
            &config.dlq_topic,
        ];
        tokio::select! {
            ready = retry("topic_setup", || ensure_topics(&config.brokers, &config.kafka, &topics, config.topic_spec())) => ready?,
            () = stop.cancelled() => return Ok(None),
        }
        let Some(zones) = zones(&config, &store, tasks, stop).await? else {
            return Ok(None);
        };
        let producer = kafka::producer::idempotent(&config.brokers, &config.kafka)
            .map_err(kafka::Error::client("producer", &config.brokers))?;
        check_partials_partitions(&config, &producer).await?;
        warm_up(&producer, &config.partials_topic).await;
        let shared = Arc::new(Shared {
            store,
            producer: producer.clone(),
            session: crate::aggregate::session(config.local_days),
            zones,
            orders_topic: config.orders_topic.clone(),
            partials_topic: config.partials_topic.clone(),
            dlq_topic: config.dlq_topic.clone(),
            dedupe_window_ms: config.dedupe_window_secs as i64 * 1000,
            dedupe_max_ids: config.dedupe_max_ids,
            partial_max_rows: config.partial_max_rows,
            partial_max_bytes: config.partial_max_bytes,
            admin: (config.brokers.clone(), config.kafka.clone()),
        });
        let offsets = Arc::new(Offsets::default());
        tasks.spawn(lag::report(
            offsets.clone(),
            shared.store.clone(),
            config.orders_topic.clone(),
            LAG_EVERY,
            stop.clone(),
        ));
        let context = ClaimContext::new(
            shared,
            tokio::runtime::Handle::current(),
            owner.clone(),
            offsets,
            stop.clone(),
        );
        let consumer = Arc::new(orders_consumer(&config, &owner, context)?);
        ClaimContext::attach(&consumer);
        consumer
            .subscribe(&[&config.orders_topic])
            .map_err(kafka::Error::client("subscribe", &config.brokers))?;
        tracing::info!(
            owner,
            topic = config.orders_topic,
            group = config.group_id,
            "Worker consuming."
        );
        let settings = LoopSettings {
            batch_max_events: config.batch_max_events,
            batch_max: Duration::from_millis(config.batch_max_ms),
            drain: Duration::from_millis(config.drain_timeout_ms),
        };
        Ok(Some(Self {
            owner,
            consumer,
            producer,
            brokers: config.brokers,
            settings,
        }))
    }

    /// Polls on a thread of its own until `stop` (the loop drains the
    /// partitions' tasks itself), then flushes the producer.
    async fn run(self, stop: CancellationToken) -> Result<(), WorkerError> {
        let (consumer, settings) = (self.consumer, self.settings);
        tokio::task::spawn_blocking(move || poll_loop(consumer, settings, stop))
            .await
            .map_err(|e| WorkerError::Thread(e.to_string()))?;
        self.producer
            .flush(Timeout::After(Duration::from_secs(10)))
            .map_err(kafka::Error::client("producer flush", &self.brokers))?;
        tracing::info!(owner = self.owner, "Worker stopped.");
        Ok(())
    }
}

/// The merchants' zones, read before the first batch is decoded and kept
/// current by a task in `tasks`, when the worker keeps local days; `None`
/// when `stop` came first.
async fn zones(
    config: &WorkerConfig,
    store: &Arc<Store>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Option<crate::zones::Watched>, WorkerError> {
    if !config.local_days {
        return Ok(Some(crate::zones::Watched::off()));
    }
    let default_zone = config.default_zone()?;
    let zones = tokio::select! {
        zones = retry("time_zones_read", || store.zone_map(default_zone)) => zones?,
        () = stop.cancelled() => return Ok(None),
    };
    let watched = crate::zones::Watched::new(zones);
    tasks.spawn(crate::zones::refresh(
        watched.clone(),
        store.clone(),
        default_zone,
        crate::zones::REFRESH_EVERY,
        stop.clone(),
    ));
    Ok(Some(watched))
}

/// The orders consumer: one eager protocol with the claim in the assign
/// callback, offsets stored by the worker, never by librdkafka.
fn orders_consumer(
    config: &WorkerConfig,
    owner: &str,
    context: ClaimContext,
) -> Result<BaseConsumer<ClaimContext>, WorkerError> {
    let mut consumer_config = client_with(&config.brokers, &config.kafka);
    consumer_config
        .set("group.id", &config.group_id)
        .set("client.id", owner)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        // One eager protocol: the claim happens in the assign callback, and a
        // single offered protocol keeps every member's choice identical.
        .set("partition.assignment.strategy", "roundrobin")
        // The end of the log closes a batch at once (see `consumer`): the
        // last events of a burst wait for no timer.
        .set("enable.partition.eof", "true")
        // High watermarks for the lag gauge come with these statistics.
        .set("statistics.interval.ms", "2000")
        // A topic created (or recreated) after the worker subscribed is seen
        // within seconds, not librdkafka's default five minutes.
        .set("topic.metadata.refresh.interval.ms", "5000")
        .set("session.timeout.ms", config.session_timeout_ms.to_string())
        // A member learns of a rebalance from its next heartbeat, so the
        // interval bounds how long a joining worker waits for partitions.
        .set(
            "heartbeat.interval.ms",
            (config.session_timeout_ms / 10)
                .clamp(250, 1000)
                .to_string(),
        );
    if !config.group_instance_id.is_empty() {
        consumer_config.set("group.instance.id", &config.group_instance_id);
    }
    fetch_defaults(&mut consumer_config, &config.kafka);
    Ok(consumer_config
        .create_with_context(context)
        .map_err(kafka::Error::client("consumer", &config.brokers))?)
}
