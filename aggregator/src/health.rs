//! What `/readyz` says of an aggregator, and the partitions it parked.
//!
//! A source partition is parked when one of its partials cannot be applied
//! for a reason a retry would only repeat: the partial is unreadable, or the
//! database refuses its rows (a data exception, a constraint). Its fence stays
//! where it is, its later partials wait in the partials topic (the consumer
//! offset is not committed past the parked one), and every other partition
//! keeps committing. Once the cause is fixed, a restart re-reads the parked
//! partial and goes on exactly.

use std::sync::{Arc, Mutex};

use store::health::Registry;
use store::{SourcePartition, Store};

use crate::metrics;

/// Why a partition is parked: the `reason` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ParkReason {
    /// A partial that does not parse.
    UnreadablePartial,
    /// The database refused the partial's rows permanently.
    DatabaseRefused,
}

impl ParkReason {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            ParkReason::UnreadablePartial => "unreadable_partial",
            ParkReason::DatabaseRefused => "database_refused",
        }
    }
}

/// One parked source partition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parked {
    /// Why.
    pub reason: ParkReason,
    /// The partials-topic partition and offset of the partial at fault: the
    /// consumer offset is never committed past it.
    pub partials_partition: i32,
    /// See `partials_partition`.
    pub partials_offset: i64,
    /// The source offset range of the partial at fault, when it was readable.
    pub range: Option<(i64, i64)>,
    /// The error, for logs and `/readyz`.
    pub detail: String,
}

/// This process's parked partitions and watched databases.
static REGISTRY: Registry<Parked> = Registry::new();

/// Whether this aggregator keeps `merchant_sales_local`, and the partials it
/// applied without local days since it started.
#[derive(Clone)]
struct LocalDays {
    kept: bool,
    short: u64,
    /// The last partial applied without them: its source and offsets.
    last: Option<(SourcePartition, i64, i64)>,
}

static LOCAL_DAYS: Mutex<LocalDays> = Mutex::new(LocalDays {
    kept: false,
    short: 0,
    last: None,
});

/// Says whether the aggregator keeps local days (`aggregator.local_days`):
/// only then is a partial without them a shortfall.
pub fn keep_local_days(on: bool) {
    LOCAL_DAYS.lock().expect("local days lock").kept = on;
}

/// Notes applied partials whose events reached `merchant_sales` but not
/// `merchant_sales_local`: counted, logged, and reported by `/readyz` until
/// the aggregator restarts (after a backfill has recomputed the days).
pub fn note_without_local_days(partials: &[(SourcePartition, i64, i64)]) {
    let mut state = LOCAL_DAYS.lock().expect("local days lock");
    if !state.kept || partials.is_empty() {
        return;
    }
    for ((topic, partition), first, last) in partials {
        tracing::error!(topic, partition, first_offset = first, last_offset = last,
            "A partial without local days was applied: merchant_sales_local lacks its events. \
             A worker runs with worker.local_days = false; turn it on, then recompute the days with a backfill.");
    }
    metrics::WITHOUT_LOCAL_DAYS.inc_by(partials.len() as u64);
    state.short += partials.len() as u64;
    state.last = partials.last().cloned();
}

/// Parks `source`: logs it with its range and reason, sets its metric, and
/// holds `/readyz`. A partition already parked keeps its first park.
pub fn park(source: &SourcePartition, parked: Parked) {
    let mut all = REGISTRY.parked();
    if all.contains_key(source) {
        return;
    }
    let (first_offset, last_offset) = parked
        .range
        .map_or((None, None), |(f, l)| (Some(f), Some(l)));
    tracing::error!(topic = source.0, partition = source.1, reason = parked.reason.label(), first_offset, last_offset,
        partials_partition = parked.partials_partition, partials_offset = parked.partials_offset, detail = parked.detail,
        "Partition parked: its fence stays put and the other partitions go on; fix the cause and restart the aggregator.");
    let shown = first_offset.unwrap_or(-1);
    metrics::PARKED
        .with_label_values(&[&source.0, &source.1.to_string(), parked.reason.label()])
        .set(shown);
    all.insert(source.clone(), parked);
    metrics::PARKED_PARTITIONS.set(all.len() as i64);
}

/// Forgets the parks whose partial sits on `partials_partition`: the
/// partition moved to another aggregator (which re-reads it from the
/// committed offset, never past the parked partial, and reports it if the
/// cause is still there).
pub fn unpark_partials_partition(partials_partition: i32) {
    let mut all = REGISTRY.parked();
    all.retain(|(topic, partition), parked| {
        let keep = parked.partials_partition != partials_partition;
        if !keep {
            tracing::info!(
                topic,
                partition,
                partials_partition,
                "Parked partition moved to another aggregator; no longer reported here."
            );
            let _ = metrics::PARKED.remove_label_values(&[
                topic,
                &partition.to_string(),
                parked.reason.label(),
            ]);
        }
        keep
    });
    metrics::PARKED_PARTITIONS.set(all.len() as i64);
}

/// The consumer context of the partials consumer: a revoked partials
/// partition takes its parks with it.
pub struct PartialsContext;

impl rdkafka::ClientContext for PartialsContext {}

impl rdkafka::consumer::ConsumerContext for PartialsContext {
    fn pre_rebalance(
        &self,
        _: &rdkafka::consumer::BaseConsumer<Self>,
        rebalance: &rdkafka::consumer::Rebalance<'_>,
    ) {
        if let rdkafka::consumer::Rebalance::Revoke(revoked) = rebalance {
            for element in revoked.elements() {
                unpark_partials_partition(element.partition());
            }
        }
    }
}

/// The park of `source`, if it is parked.
pub fn parked(source: &SourcePartition) -> Option<Parked> {
    REGISTRY.parked().get(source).cloned()
}

/// The lowest parked partials offset on `partials_partition`, if any: the
/// consumer offset committed there must not pass it.
pub fn commit_limit(partials_partition: i32) -> Option<i64> {
    REGISTRY
        .parked()
        .values()
        .filter(|p| p.partials_partition == partials_partition)
        .map(|p| p.partials_offset)
        .min()
}

/// Pings the database every 2 s until `shutdown`, so that `/readyz` notices
/// a database that stopped answering even while no partials arrive.
pub async fn probe(store: Arc<Store>, shutdown: tokio_util::sync::CancellationToken) {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(error) = store.ping().await {
            tracing::debug!(%error, "Database ping failed.");
        }
    }
}

/// Adds a database to those `/readyz` checks.
pub fn watch(store: Arc<Store>) {
    REGISTRY.watch(store);
}

/// `Ok` while the aggregator consumes, its database answers and nothing is
/// parked; otherwise each reason, one per line. Either way with the
/// completeness line, once measured ([`crate::closer`]).
pub fn readiness() -> Result<String, String> {
    let describe = |(topic, partition): &SourcePartition, parked: &Parked| {
        let range = parked
            .range
            .map_or("an unknown range".to_owned(), |(f, l)| {
                format!("offsets {f}..={l}")
            });
        format!(
            "partition {topic}/{partition} parked at {range} ({}): {}",
            parked.reason.label(),
            parked.detail
        )
    };
    let local = LOCAL_DAYS.lock().expect("local days lock").clone();
    let short = match (local.short, local.last) {
        (count @ 1.., Some(((topic, partition), first, last))) => Some(format!(
            "merchant_sales_local is short: {count} partial(s) applied without local days, the latest \
             {topic}/{partition} offsets {first}..={last}; a worker runs with worker.local_days = false: \
             turn it on, recompute the affected days with a backfill, then restart this aggregator"
        )),
        _ => None,
    };
    let problems = REGISTRY.readiness("aggregator", metrics::READY.get() >= 1, describe, short);
    let detail = crate::closer::readiness_detail().unwrap_or_default();
    match problems {
        Ok(()) => Ok(detail),
        Err(problems) if detail.is_empty() => Err(problems),
        Err(problems) => Err(format!("{problems}\n{detail}")),
    }
}
