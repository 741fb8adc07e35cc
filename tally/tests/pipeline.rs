//! The streaming core end to end: real `tally worker` and `tally aggregator`
//! processes, the real broker, and PostgreSQL or SQLite. Every scenario
//! compares `merchant_sales` row by row with totals the test computes itself.

#[macro_use]
mod common;

use std::time::Duration;

use common::{assert_totals_equal, eventually, local, produce, traffic, Backend, World};
use ingest::load::generate::Truth;
use schemas::Partial;

/// Messages per scenario: `TALLY_TEST_EVENTS`, default 200,000.
fn events() -> u64 {
    std::env::var("TALLY_TEST_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000)
}
const PATIENCE: Duration = Duration::from_secs(600);

/// Kafka static membership for a worker that the test kills and restarts,
/// as a supervisor would: the restarted process takes the dead one's place
/// in the group at once, so each kill hits a worker that has claimed and is
/// working. (A member killed for good, its partitions moving at session
/// expiry, is `kafka.rs`'s own scenario.)
const STATIC_A: &[(&str, &str)] = &[("worker.group_instance_id", "worker-a")];

/// Exact totals through duplicates, refunds, late and invalid events;
/// every invalid event is in the dead-letter topic.
async fn exact_totals(backend: Backend) {
    let mut world = World::new("exact", backend).await;
    let store = world.store().await;
    let mut traffic = traffic(11, events());
    let zones = local::with_zones(&store, &mut traffic).await;
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    world.start_worker("worker-b", &[]);
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    let produced = traffic.messages.len() as u64;
    world.wait_committed(&store, produced, PATIENCE).await;

    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    local::assert_equal(
        &local::expected(&traffic.messages, &zones),
        &store.local_totals(None).await.unwrap(),
    );
    let count =
        |f: fn(&Truth) -> bool| traffic.messages.iter().filter(|m| f(&m.truth)).count() as i64;
    let progress = store.progress().await.unwrap();
    let sum = |f: fn(&store::PartitionProgress) -> i64| progress.iter().map(f).sum::<i64>();
    assert_eq!(
        sum(|p| p.counted_events),
        count(|t| matches!(t, Truth::Counted { .. }))
    );
    assert_eq!(
        sum(|p| p.duplicate_events),
        count(|t| matches!(t, Truth::Duplicate))
    );
    assert_eq!(
        sum(|p| p.invalid_events),
        count(|t| matches!(t, Truth::Invalid(_)))
    );
    assert!(count(|t| matches!(t, Truth::Duplicate)) > 100 && traffic.invalid_payloads.len() > 50);

    let dead = world.dead_letters(traffic.invalid_payloads.len(), Duration::from_secs(60));
    let mut got: Vec<&Vec<u8>> = dead.values().collect();
    let mut want: Vec<&Vec<u8>> = traffic.invalid_payloads.iter().collect();
    got.sort();
    want.sort();
    assert_eq!(
        got.len(),
        want.len(),
        "every invalid event is dead-lettered once per source offset"
    );
    assert!(
        got == want,
        "dead-letter payloads are the original bytes of the invalid events"
    );
}

/// SIGKILL a worker three times mid-stream (restarting it as a
/// supervisor would) and the aggregator once; totals stay exact.
async fn crash_safety(backend: Backend) {
    let mut world = World::new("crash", backend).await;
    let store = world.store().await;
    let mut traffic = traffic(22, events());
    let zones = local::with_zones(&store, &mut traffic).await;
    let mut aggregator = world.start_aggregator("aggregator");
    // Restarted as a supervisor would, with the same static member id.
    let mut victim = world.start_worker("worker-a", STATIC_A);
    world.start_worker("worker-b", &[("worker.group_instance_id", "worker-b")]);
    // Every partition is claimed before the stream starts, so the first kill
    // hits a worker that is in the group.
    eventually("every partition claimed", PATIENCE, || async {
        store.progress().await.unwrap().len() == common::PARTITIONS as usize
    })
    .await;
    let produced = traffic.messages.len() as u64;
    let chunks: Vec<_> = traffic
        .messages
        .chunks((produced / 20).max(1) as usize)
        .collect();
    for (i, chunk) in chunks.iter().enumerate() {
        produce(&world.brokers, &world.orders, chunk).await;
        match i {
            4 | 11 | 16 => {
                let before = claims(&store).await;
                world.kill(victim);
                victim = world.start_worker("worker-a", STATIC_A);
                // The next kill must hit a worker that has claimed and is working.
                eventually("the restarted worker claims again", PATIENCE, || async {
                    claims(&store).await > before
                })
                .await;
            }
            8 => {
                world.kill(aggregator);
                aggregator = world.start_aggregator("aggregator");
            }
            _ => {}
        }
    }
    world.wait_committed(&store, produced, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    local::assert_equal(
        &local::expected(&traffic.messages, &zones),
        &store.local_totals(None).await.unwrap(),
    );
    let claimed = claims(&store).await;
    assert!(
        claimed >= common::PARTITIONS as i64 + 3,
        "each restarted victim re-claimed its partitions: {claimed} claims"
    );
}

/// Rebalancing 1 → 2 → 1 workers keeps totals exact; a zombie partial
/// from an older epoch and a replayed partial change nothing.
async fn rebalance_and_zombies(backend: Backend) {
    let mut world = World::new("rebalance", backend).await;
    let store = world.store().await;
    let traffic = traffic(33, 90_000);
    let thirds: Vec<_> = traffic.messages.chunks(30_000).collect();
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, thirds[0]).await;
    world.wait_committed(&store, 30_000, PATIENCE).await;
    let second = world.start_worker("worker-b", &[]);
    // The join has happened only once worker-b holds a claim; without this
    // wait a slow start can leave worker-a with everything and nothing moves.
    eventually("worker-b holds a partition", PATIENCE, || async {
        !common::held_by(&store, "worker-b").await.is_empty()
    })
    .await;
    produce(&world.brokers, &world.orders, thirds[1]).await;
    world.wait_committed(&store, 60_000, PATIENCE).await;
    assert_eq!(world.terminate(second), 0, "SIGTERM drains and exits 0");
    eventually("worker-a holds every partition", PATIENCE, || async {
        common::held_by(&store, "worker-a").await.len() == common::PARTITIONS as usize
    })
    .await;
    produce(&world.brokers, &world.orders, thirds[2]).await;
    world.wait_committed(&store, 90_000, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    let progress = store.progress().await.unwrap();
    // The second worker's partitions were claimed by it and then re-claimed
    // when it left: the rebalances really happened.
    let epochs: Vec<i64> = progress.iter().map(|p| p.fence.epoch).collect();
    assert!(
        epochs.iter().any(|&e| e >= 3),
        "1 → 2 → 1 moved partitions there and back: {epochs:?}"
    );

    // Zombies: an older epoch continuing where the fence stands, and a replay
    // of an applied range, both carrying a huge amount that would show.
    let fence = progress[0].fence;
    let poison = |epoch, first, last| {
        common::partial(
            &world.orders,
            progress[0].partition,
            epoch,
            first,
            last,
            "zombie",
            1_000_000_000,
        )
    };
    let zombies = [
        poison(fence.epoch - 1, fence.next_offset, fence.next_offset + 5),
        poison(fence.epoch, 0, fence.next_offset - 1),
    ];
    publish_partials(&world, &zombies).await;
    // More real traffic on every partition, so the aggregator must read past the zombies.
    let more = common::traffic(34, 8_000);
    produce(&world.brokers, &world.orders, &more.messages).await;
    world.wait_committed(&store, 98_000, PATIENCE).await;
    let mut expected = traffic.expected.clone();
    schemas::totals::merge_into(&mut expected, more.expected.clone());
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
}

/// Claims made so far: every claim raises its partition's epoch by one.
async fn claims(store: &store::Store) -> i64 {
    store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| p.fence.epoch)
        .sum()
}

async fn publish_partials(world: &World, partials: &[Partial]) {
    let producer = kafka::producer::idempotent(&world.brokers, &Default::default()).unwrap();
    for partial in partials {
        shard_worker::publish::partial(&producer, &world.partials, partial)
            .await
            .expect("partial published");
    }
}

/// An event id repeated after a worker restart, inside the window, is counted once.
async fn dedupe_across_restart(backend: Backend) {
    let mut world = World::new("dedupe", backend).await;
    let store = world.store().await;
    let first = traffic(44, 20_000);
    world.start_aggregator("aggregator");
    let worker = world.start_worker("worker-a", STATIC_A);
    produce(&world.brokers, &world.orders, &first.messages).await;
    world.wait_committed(&store, 20_000, PATIENCE).await;
    world.kill(worker);
    world.start_worker("worker-a", STATIC_A);

    let repeats: Vec<_> = first
        .messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Counted { .. }))
        .step_by(7)
        .cloned()
        .collect();
    let second = traffic(45, 10_000);
    produce(&world.brokers, &world.orders, &repeats).await;
    produce(&world.brokers, &world.orders, &second.messages).await;
    let total = 20_000 + repeats.len() as u64 + 10_000;
    world.wait_committed(&store, total, PATIENCE).await;

    let mut expected = first.expected.clone();
    schemas::totals::merge_into(&mut expected, second.expected.clone());
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    let duplicates: i64 = store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| p.duplicate_events)
        .sum();
    let first_dups = first
        .messages
        .iter()
        .filter(|m| m.truth == Truth::Duplicate)
        .count();
    let second_dups = second
        .messages
        .iter()
        .filter(|m| m.truth == Truth::Duplicate)
        .count();
    assert_eq!(
        duplicates as usize,
        first_dups + repeats.len() + second_dups
    );
}

on_both_databases!(
    exact_totals,
    crash_safety,
    rebalance_and_zombies,
    dedupe_across_restart
);

/// A worker with `worker.local_days = false` beside one with it on: every
/// event still reaches merchant_sales exactly, and the partials of the first
/// (whose events merchant_sales_local lacks) are counted by the aggregator's
/// metric and named by its `/readyz`, never applied short in silence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_without_local_days_is_reported() {
    let mut world = World::new("no-local", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(17, 20_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    world.start_worker("worker-b", &[("worker.local_days", "false")]);
    world
        .wait_for("worker-b to own a partition", PATIENCE, || async {
            world
                .metric("worker-b", "tally_worker_assigned_partitions", &[])
                .await
                .is_some_and(|n| n >= 1.0)
        })
        .await;
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    world
        .wait_committed(&store, traffic.messages.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());

    // How many events the local table lacks, from the two tables' counts.
    let counted = |rows: Vec<schemas::Sums>| {
        rows.iter()
            .map(|s| s.sales_count + s.refund_count)
            .sum::<i64>()
    };
    let utc = counted(store.totals(None).await.unwrap().into_values().collect());
    let local = counted(
        store
            .local_totals(None)
            .await
            .unwrap()
            .into_values()
            .map(|l| l.sums)
            .collect(),
    );
    assert!(
        local < utc,
        "worker-b's events are not in merchant_sales_local"
    );
    {
        let short = world
            .metric(
                "aggregator",
                "tally_aggregator_partials_without_local_days_total",
                &[],
            )
            .await
            .unwrap_or(0.0);
        assert!(
            short >= 1.0,
            "{} events short, and the metric says {short}",
            utc - local
        );
        let (status, body) = world.readyz("aggregator").await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("merchant_sales_local is short"), "{body}");
        assert!(body.contains("worker.local_days = false"), "{body}");
    }
}

/// A partial lost at the current epoch (here: one of that epoch arrives
/// starting past the fence, as after the partials topic's retention took
/// one): the aggregator refuses it as a gap and marks the epoch, the worker
/// sees the mark before its next partial, claims the partition again and
/// publishes again from the fence. No restart; the totals end exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_at_the_current_epoch_heals_without_a_restart() {
    let mut world = World::new("gap", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(19, 20_000);
    let (first, second) = traffic.messages.split_at(10_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, first).await;
    world
        .wait_committed(&store, first.len() as u64, PATIENCE)
        .await;

    let progress = store.progress().await.unwrap();
    let (partition, fence) = (progress[0].partition, progress[0].fence);
    let beyond = common::partial(
        &world.orders,
        partition,
        fence.epoch,
        fence.next_offset + 1_000,
        fence.next_offset + 1_005,
        "gap",
        1_000_000_000,
    );
    publish_partials(&world, &[beyond]).await;
    eventually("the partition's epoch moves on", PATIENCE, || async {
        store
            .epoch(&world.orders, partition)
            .await
            .unwrap()
            .is_some_and(|s| s.gap())
    })
    .await;

    produce(&world.brokers, &world.orders, second).await;
    world
        .wait_committed(&store, traffic.messages.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    let standing = store
        .epoch(&world.orders, partition)
        .await
        .unwrap()
        .unwrap();
    assert!(
        standing.epoch > fence.epoch && !standing.gap(),
        "{standing:?}"
    );
    let reclaims = world
        .metric("worker-a", "tally_worker_gap_reclaims_total", &[])
        .await
        .unwrap_or(0.0);
    assert!(reclaims >= 1.0, "reclaims: {reclaims}");
}

/// A backlog of 1,000,000 events waiting before any worker starts, drained
/// by one worker, then two (the second joins once a tenth is committed:
/// partitions move mid-read, and each new owner seeks back into the window),
/// then one again (the second leaves with SIGTERM at half). Every read that
/// starts past the offset asked for is explained or read again, never
/// counted past: the totals equal the test's own sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_event_backlog_through_rebalances_is_exact() {
    let mut world = World::new("backlog", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(37, 1_000_000);
    let total = traffic.messages.len() as u64;
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    eventually("a tenth committed", PATIENCE, || async {
        world.committed(&store).await >= total / 10
    })
    .await;
    let second = world.start_worker("worker-b", &[]);
    eventually("worker-b holds a partition", PATIENCE, || async {
        !common::held_by(&store, "worker-b").await.is_empty()
    })
    .await;
    eventually("half committed", PATIENCE, || async {
        world.committed(&store).await >= total / 2
    })
    .await;
    assert_eq!(world.terminate(second), 0, "SIGTERM drains and exits 0");
    world.wait_committed(&store, total, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
}

/// `orders` grows from 4 to 6 partitions under a running pipeline: the
/// worker grows the partials topic to match, the events that now hash to
/// the new partitions are counted exactly, and a worker started after the
/// growth starts and takes its share. (Merchants move with the growth, so
/// the second traffic is produced wholly after it: a retry whose first
/// sighting lies in another partition is not caught, as the book says (Duplicates).)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_growing_from_4_to_6_partitions_is_counted_exactly() {
    use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
    use rdkafka::client::DefaultClientContext;

    let mut world = World::new("growth", Backend::Postgres).await;
    let store = world.store().await;
    let before = traffic(71, 20_000);
    let after = traffic(72, 20_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, &before.messages).await;
    world
        .wait_committed(&store, before.messages.len() as u64, PATIENCE)
        .await;

    let admin: AdminClient<DefaultClientContext> =
        common::kafka_client(&world.brokers).create().unwrap();
    for result in admin
        .create_partitions(
            &[NewPartitions::new(&world.orders, 6)],
            &AdminOptions::new(),
        )
        .await
        .unwrap()
    {
        result.expect("orders grew");
    }
    eventually("the orders topic has 6 partitions", PATIENCE, || async {
        partition_count(&world.brokers, &world.orders) == 6
    })
    .await;
    produce(&world.brokers, &world.orders, &after.messages).await;
    let on_new: i64 = [4, 5]
        .iter()
        .map(|&p| common::high_watermark(&world.brokers, &world.orders, p))
        .sum();
    assert!(on_new > 0, "some merchants hash to the new partitions");

    let total = (before.messages.len() + after.messages.len()) as u64;
    world
        .wait_committed(&store, total, Duration::from_secs(120))
        .await;
    let mut expected = before.expected.clone();
    schemas::totals::merge_into(&mut expected, after.expected.clone());
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    assert_eq!(
        partition_count(&world.brokers, &world.partials),
        6,
        "the worker grew the partials topic"
    );
    let held: Vec<i32> = store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| p.partition)
        .collect();
    assert!(held.contains(&4) && held.contains(&5), "{held:?}");

    // A worker started after the growth starts and takes a share.
    world.start_worker("worker-b", &[]);
    eventually("worker-b holds a partition", PATIENCE, || async {
        !common::held_by(&store, "worker-b").await.is_empty()
    })
    .await;
    let more = traffic(73, 5_000);
    produce(&world.brokers, &world.orders, &more.messages).await;
    world
        .wait_committed(&store, total + more.messages.len() as u64, PATIENCE)
        .await;
    schemas::totals::merge_into(&mut expected, more.expected.clone());
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
}

/// The partitions `topic` has, as the broker's metadata says.
fn partition_count(brokers: &str, topic: &str) -> usize {
    let consumer: rdkafka::consumer::BaseConsumer = common::kafka_client(brokers).create().unwrap();
    let metadata = rdkafka::consumer::Consumer::fetch_metadata(
        &consumer,
        Some(topic),
        Duration::from_secs(10),
    )
    .unwrap();
    metadata.topics()[0].partitions().len()
}
