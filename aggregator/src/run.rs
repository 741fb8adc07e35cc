//! `run`: connect, consume partials, merge them, commit each flush in one
//! fenced transaction, and drain at shutdown; in that order, one method each.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::consumer::{Consumer, StreamConsumer};
use schemas::config::Checked;
use store::Store;
use tokio::task::JoinHandle;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::AggregatorConfig;
use crate::error::AggregatorError;
use crate::flush::{flush, Buffer};
use crate::health::PartialsContext;
use crate::metrics;
use backfill::RunnerConfig;

/// How long the last flushes may take at shutdown before they are
/// abandoned (their partials are read again on the next start).
const LAST_FLUSH: Duration = Duration::from_secs(10);

/// How long the background tasks (backfills, probes) may take to stop.
const TASKS_STOP: Duration = Duration::from_secs(10);

/// Runs one aggregator until `shutdown` is cancelled, committing what it
/// has buffered before returning.
///
/// Fails when the Kafka consumer cannot be created; database outages are
/// retried with capped backoff while the buffered partials are kept. The
/// settings were checked by
/// [`Validate::checked`](schemas::config::Validate::checked).
pub async fn run(
    config: Checked<AggregatorConfig>,
    shutdown: CancellationToken,
) -> Result<(), AggregatorError> {
    let config = config.into_inner();
    metrics::init();
    // The background tasks stop with the service, also when it fails.
    let (tasks, stop) = (TaskTracker::new(), shutdown.child_token());
    let outcome = match Aggregator::connect(config, &tasks, &stop).await {
        Ok(Some(aggregator)) => {
            aggregator.run(&stop).await;
            Ok(())
        }
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
            "Background tasks still running at shutdown are abandoned (a backfill's lease lapses and another runner retries it)."
        );
    }
    tracing::info!("Aggregator stopped.");
    outcome
}

/// A connected aggregator: its database, and its consumer subscribed to the
/// partials topic.
struct Aggregator {
    config: AggregatorConfig,
    store: Arc<Store>,
    consumer: Arc<StreamConsumer<PartialsContext>>,
    topic: Arc<str>,
}

impl Aggregator {
    /// Connects to the database (retrying while it is unreachable), starts
    /// the background tasks in `tasks`, makes sure the partials topic exists
    /// and subscribes to it. `None` when `stop` came first.
    async fn connect(
        config: AggregatorConfig,
        tasks: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Option<Self>, AggregatorError> {
        tasks.spawn(metrics::refresh_freshness(stop.clone()));
        let store = tokio::select! {
            store = connect(&config.database_url) => Arc::new(store?),
            () = stop.cancelled() => return Ok(None),
        };
        crate::health::watch(store.clone());
        crate::health::keep_local_days(config.local_days);
        store.set_job_timeout(Duration::from_millis(config.backfill_statement_timeout_ms));
        tasks.spawn(crate::health::probe(store.clone(), stop.clone()));
        start_backfills(&config, &store, tasks, stop)?;
        if config.close_days {
            tasks.spawn(crate::closer::run(
                config.clone(),
                store.clone(),
                stop.clone(),
            ));
        }
        tokio::select! {
            made = ensure_partials_topic(&config) => made?,
            () = stop.cancelled() => return Ok(None),
        }
        let consumer = Arc::new(partials_consumer(&config)?);
        consumer
            .subscribe(&[&config.partials_topic])
            .map_err(kafka::Error::client("subscribe", &config.brokers))?;
        tracing::info!(
            topic = config.partials_topic,
            group = config.group_id,
            "Aggregator consuming."
        );
        Ok(Some(Self {
            topic: config.partials_topic.as_str().into(),
            config,
            store,
            consumer,
        }))
    }

    /// Reads partials into the buffer and flushes it until `stop`, then
    /// drains: the flush in flight, then a last one of what was read since.
    ///
    /// Flushes run one at a time, in order, while the next buffer fills.
    /// Under load they follow each other at once and grow, so each upsert
    /// carries more events per row; idle, one starts every
    /// `flush_interval_ms`.
    async fn run(self, stop: &CancellationToken) {
        metrics::READY.set(1);
        let mut flushes = Flushes::default();
        let mut tick = tokio::time::interval(Duration::from_millis(self.config.flush_interval_ms));
        tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let room = self.config.flush_max_partials;
        loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break,
                done = Flushes::next_done(&mut flushes.in_flight), if flushes.in_flight.is_some() => {
                    flushes.done(done);
                }
                _ = tick.tick(), if flushes.in_flight.is_none() && !flushes.buffer.is_empty() => {
                    flushes.start(&self);
                }
                received = self.consumer.recv(), if flushes.buffer.len() < room => match received {
                    Ok(message) => flushes.buffer.add(&message),
                    Err(error) => tracing::warn!(%error, "Partials consumer error."),
                },
            }
        }
        metrics::READY.set(0);
        flushes.drain(&self).await;
    }
}

/// The buffer filling and the flush in flight, if any. Flushes stop only at
/// `last`, cancelled [`LAST_FLUSH`] into the drain.
#[derive(Default)]
struct Flushes {
    buffer: Buffer,
    in_flight: Option<JoinHandle<Buffer>>,
    last: CancellationToken,
}

impl Flushes {
    /// Waits for the flush in flight (there is one: the caller checks).
    async fn next_done(
        in_flight: &mut Option<JoinHandle<Buffer>>,
    ) -> Result<Buffer, tokio::task::JoinError> {
        in_flight.as_mut().expect("a flush in flight").await
    }

    /// The flush in flight ended. Its buffer is unapplied only at `last`,
    /// which is not cancelled before the loop ends.
    fn done(&mut self, done: Result<Buffer, tokio::task::JoinError>) {
        self.in_flight = None;
        finished(done);
    }

    /// Starts flushing the buffer in a task of its own.
    fn start(&mut self, service: &Aggregator) {
        let flushing = flush(
            service.store.clone(),
            service.consumer.clone(),
            service.topic.clone(),
            self.buffer.take(),
            self.last.clone(),
        );
        self.in_flight = Some(tokio::spawn(flushing));
    }

    /// The flush in flight, then a last one of what was read since. If the
    /// database is down they are abandoned after [`LAST_FLUSH`] and the
    /// partials are read again on the next start (the fence dedupes them).
    async fn drain(self, service: &Aggregator) {
        let last = self.last.clone();
        let drain = async move {
            // A flush still unapplied at the deadline keeps what came after
            // it from going first.
            let behind = match self.in_flight {
                Some(flushing) => !finished(flushing.await).is_empty(),
                None => false,
            };
            if !behind {
                let (store, consumer) = (service.store.clone(), service.consumer.clone());
                flush(
                    store,
                    consumer,
                    service.topic.clone(),
                    self.buffer,
                    self.last,
                )
                .await;
            }
        };
        tokio::pin!(drain);
        tokio::select! {
            () = &mut drain => {}
            () = tokio::time::sleep(LAST_FLUSH) => {
                last.cancel();
                drain.await;
            }
        }
    }
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

/// Starts the backfill scheduler and task runner in `tasks` when
/// `backfill_parallelism` is above zero. Backfills and schedules take their
/// own pooled connections, so a long replace never holds up the flushes of
/// the live stream.
fn start_backfills(
    config: &AggregatorConfig,
    store: &Arc<Store>,
    tasks: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(), AggregatorError> {
    if config.backfill_parallelism == 0 {
        return Ok(());
    }
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
    let watch = if config.import_watch.is_empty() {
        None
    } else {
        Some(backfill::WatchConfig {
            source: config.import_watch.clone(),
            format: match config.import_format.as_str() {
                "" => None,
                text => Some(
                    backfill::Format::parse("aggregator.import_format", text).map_err(
                        |reason| {
                            schemas::config::ConfigError::new(
                                "aggregator.import_format",
                                text,
                                &reason,
                            )
                        },
                    )?,
                ),
            },
            poll: Duration::from_millis(config.import_poll_ms),
            settle: Duration::from_millis(config.import_settle_ms),
        })
    };
    let poll = Duration::from_millis(config.backfill_poll_ms);
    tasks.spawn(backfill::run_scheduler(
        store.clone(),
        poll,
        watch,
        stop.clone(),
    ));
    tasks.spawn(backfill::run_tasks(store.clone(), runner, stop.clone()));
    Ok(())
}

/// Creates the partials topic when it does not exist yet (the aggregator
/// may start first: start order does not matter), retrying while the broker
/// is unreachable.
async fn ensure_partials_topic(config: &AggregatorConfig) -> Result<(), AggregatorError> {
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
    let on_retry = |_: &_| metrics::RETRIES.with_label_values(&["topic_setup"]).inc();
    retry::retry("topic_setup", setup, on_retry)
        .await
        .map_err(|e| AggregatorError::Topic(e.to_string()))
}

/// The partials consumer: offsets committed by the flushes, never by
/// librdkafka.
fn partials_consumer(
    config: &AggregatorConfig,
) -> Result<StreamConsumer<PartialsContext>, AggregatorError> {
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
    Ok(client
        .create_with_context(PartialsContext)
        .map_err(kafka::Error::client("consumer", &config.brokers))?)
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
