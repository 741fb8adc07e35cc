//! What only a real Apache Kafka shows: group membership ending at session
//! expiry, a restarted aggregator taking its partials back, transactions and
//! their markers, a broker killed and restarted on its storage, and static
//! membership. Real `tally` processes, PostgreSQL, and the broker
//! `scripts/test` starts (or, where the test stops it, one of its own).

#[macro_use]
mod common;

use std::time::Duration;

use common::{assert_totals_equal, produce, traffic, Backend, World};
use rdkafka::producer::{BaseRecord, DefaultProducerContext, Producer, ThreadedProducer};

const PATIENCE: Duration = Duration::from_secs(600);

/// Each partition's epoch, by partition.
async fn epochs(store: &store::Store) -> Vec<(i32, i64)> {
    store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| (p.partition, p.fence.epoch))
        .collect()
}

/// A worker killed with SIGKILL and never restarted: the broker ends its
/// membership when its session expires, the survivor claims its partitions,
/// and the totals are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_member_loses_its_partitions_at_session_expiry() {
    let mut world = World::new("session-expiry", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(91, 40_000);
    let (first, second) = traffic.messages.split_at(20_000);
    world.start_aggregator("aggregator");
    let victim = world.start_worker("worker-a", &[("worker.session_timeout_ms", "10000")]);
    world.start_worker("worker-b", &[("worker.session_timeout_ms", "10000")]);
    world
        .wait_for("both workers hold partitions", PATIENCE, || async {
            !common::held_by(&store, "worker-a").await.is_empty()
                && !common::held_by(&store, "worker-b").await.is_empty()
        })
        .await;
    produce(&world.brokers, &world.orders, first).await;
    world.kill(victim);
    produce(&world.brokers, &world.orders, second).await;
    world
        .wait_committed(&store, traffic.messages.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    assert_eq!(
        common::held_by(&store, "worker-b").await.len(),
        common::PARTITIONS as usize,
        "the survivor holds every partition"
    );
}

/// An aggregator killed with SIGKILL and restarted at once, as a supervisor
/// does: the restarted process consumes the partials again within the
/// session timeout plus a rebalance, and the totals are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_aggregator_takes_its_partials_back() {
    let mut world = World::new("aggregator-restart", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(92, 30_000);
    let (first, second) = traffic.messages.split_at(15_000);
    let aggregator = world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, first).await;
    world.wait_committed(&store, 15_000, PATIENCE).await;
    world.kill(aggregator);
    world.start_aggregator("aggregator");
    produce(&world.brokers, &world.orders, second).await;
    // The dead member's session (the aggregator's default, 10 s) ends, and
    // the group rebalances to the new one.
    world
        .wait_committed(&store, 30_000, Duration::from_secs(90))
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
}

/// A transactional producer: the events of an aborted transaction are never
/// counted (librdkafka reads `read_committed`), a committed one's are,
/// exactly once, and the offsets that markers and aborted records take
/// stall nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_transactions_are_not_counted() {
    let mut world = World::new("transactions", Backend::Postgres).await;
    let store = world.store().await;
    let committed = traffic(93, 6_000);
    let aborted = traffic(94, 3_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);

    let producer: ThreadedProducer<DefaultProducerContext> = common::kafka_client(&world.brokers)
        .set("transactional.id", format!("{}-tx", world.orders))
        .create()
        .unwrap();
    let timeout = Duration::from_secs(30);
    producer.init_transactions(timeout).unwrap();
    let send = |messages: &[ingest::load::generate::Generated]| {
        for message in messages {
            let mut record =
                BaseRecord::<[u8], [u8]>::to(&world.orders).payload(&message.payload[..]);
            if let Some(key) = &message.key {
                record = record.key(key.as_bytes());
            }
            let mut record = record;
            loop {
                match producer.send(record) {
                    Ok(()) => break,
                    Err((error, back)) => {
                        assert!(
                            matches!(
                                error.rdkafka_error_code(),
                                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                            ),
                            "{error}"
                        );
                        record = back;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
        }
    };
    // Committed, aborted, committed: the aborted events sit between
    // counted ones in every partition.
    let (before, after) = committed.messages.split_at(3_000);
    producer.begin_transaction().unwrap();
    send(before);
    producer.commit_transaction(timeout).unwrap();
    producer.begin_transaction().unwrap();
    send(&aborted.messages);
    producer.flush(timeout).unwrap();
    producer.abort_transaction(timeout).unwrap();
    producer.begin_transaction().unwrap();
    send(after);
    producer.commit_transaction(timeout).unwrap();

    // Later events, produced without a transaction, are counted on top.
    // (They also carry each partition's fence past the last commit marker:
    // a fence moves with counted messages, and a marker is none.)
    let more = traffic(95, 2_000);
    produce(&world.brokers, &world.orders, &more.messages).await;
    let offsets = common::topic_messages(&world.brokers, &world.orders) as u64;
    world.wait_committed(&store, offsets, PATIENCE).await;
    let mut expected = committed.expected.clone();
    schemas::totals::merge_into(&mut expected, more.expected.clone());
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
}

/// The broker killed with SIGKILL mid-stream and started again on the same
/// storage: workers and aggregator ride it out, and the totals are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_and_restarted_mid_stream_loses_nothing() {
    let mut world = World::new("broker-restart", Backend::Postgres).await;
    let mut broker = common::PrivateBroker::start(&mut world);
    common::create_topics(
        &world.brokers,
        &[&world.orders, &world.partials, &world.dlq],
    )
    .await;
    let store = world.store().await;
    let traffic = traffic(96, 30_000);
    let thirds: Vec<_> = traffic.messages.chunks(10_000).collect();
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, thirds[0]).await;
    world.wait_committed(&store, 10_000, PATIENCE).await;
    produce(&world.brokers, &world.orders, thirds[1]).await;

    broker.kill();
    broker.start_again();
    produce(&world.brokers, &world.orders, thirds[2]).await;
    world.wait_committed(&store, 30_000, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
}

/// Static membership (`worker.group_instance_id`): a worker restarted
/// within its session timeout takes its own place back without a
/// rebalance, so the other worker's partitions are not claimed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_restarted_in_time_causes_no_rebalance() {
    let mut world = World::new("static", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(97, 20_000);
    let (first, second) = traffic.messages.split_at(10_000);
    let static_a = [("worker.group_instance_id", "worker-a")];
    let static_b = [("worker.group_instance_id", "worker-b")];
    world.start_aggregator("aggregator");
    // worker-b joins first and leads the group (a returning static leader
    // may make the coordinator rebalance; a returning follower never does).
    world.start_worker("worker-b", &static_b);
    world
        .wait_for("worker-b holds every partition", PATIENCE, || async {
            common::held_by(&store, "worker-b").await.len() == common::PARTITIONS as usize
        })
        .await;
    let victim = world.start_worker("worker-a", &static_a);
    world
        .wait_for("both workers hold partitions", PATIENCE, || async {
            common::held_by(&store, "worker-a").await.len()
                + common::held_by(&store, "worker-b").await.len()
                == common::PARTITIONS as usize
                && !common::held_by(&store, "worker-a").await.is_empty()
                && !common::held_by(&store, "worker-b").await.is_empty()
        })
        .await;
    produce(&world.brokers, &world.orders, first).await;
    world.wait_committed(&store, 10_000, PATIENCE).await;
    let held_b = common::held_by(&store, "worker-b").await;
    let before = epochs(&store).await;

    world.kill(victim);
    world.start_worker("worker-a", &static_a);
    produce(&world.brokers, &world.orders, second).await;
    world.wait_committed(&store, 20_000, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    let after = epochs(&store).await;
    for (partition, epoch) in &after {
        let old = before.iter().find(|(p, _)| p == partition).unwrap().1;
        if held_b.contains(partition) {
            assert_eq!(
                *epoch, old,
                "worker-b's partition {partition} was claimed again"
            );
        } else {
            assert_eq!(
                *epoch,
                old + 1,
                "worker-a claimed partition {partition} once more"
            );
        }
    }
    assert_eq!(common::held_by(&store, "worker-b").await, held_b);
}

/// The log start moves past a partition's fence while its worker is down
/// (`DeleteRecords`, as retention would): the restarted worker neither
/// stalls nor skips in silence. It rebuilds from the log start, counts the
/// offsets it could not read (`tally_worker_skipped_offsets_total`, those of
/// the dedupe window apart), and counts exactly what the log still holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_start_past_the_fence_is_counted_from_and_reported() {
    use rdkafka::admin::{AdminClient, AdminOptions};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::{Offset, TopicPartitionList};

    let mut world = World::new("log-start", Backend::Postgres).await;
    let store = world.store().await;
    let first = traffic(98, 10_000);
    world.start_aggregator("aggregator");
    let worker = world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, &first.messages).await;
    world.wait_committed(&store, 10_000, PATIENCE).await;
    assert_eq!(world.terminate(worker), 0);

    // Events that only ever count once (no retries, no invalid ones), so
    // that whichever of them the deletion leaves can be summed on their own.
    let later: Vec<_> = traffic(99, 6_000)
        .messages
        .into_iter()
        .filter(|m| matches!(m.truth, ingest::load::generate::Truth::Counted { .. }))
        .collect();
    produce(&world.brokers, &world.orders, &later).await;
    let fences: Vec<(i32, i64)> = store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| (p.partition, p.fence.next_offset))
        .collect();
    let mut cut = TopicPartitionList::new();
    let mut deleted = 0;
    for &(partition, fence) in &fences {
        let high = common::high_watermark(&world.brokers, &world.orders, partition);
        let to = fence + (high - fence) / 2;
        deleted += to - fence;
        cut.add_partition_offset(&world.orders, partition, Offset::Offset(to))
            .unwrap();
    }
    assert!(deleted > 0);
    let admin: AdminClient<DefaultClientContext> =
        common::kafka_client(&world.brokers).create().unwrap();
    for element in admin
        .delete_records(&cut, &AdminOptions::new())
        .await
        .unwrap()
        .elements()
    {
        assert!(element.error().is_ok(), "{:?}", element.error());
    }

    // What the log still holds past the fences, summed by the test.
    let by_payload: std::collections::HashMap<&[u8], &ingest::load::generate::Generated> =
        later.iter().map(|m| (m.payload.as_slice(), m)).collect();
    let kept: Vec<ingest::load::generate::Generated> =
        common::topic_records(&world.brokers, &world.orders)
            .iter()
            .filter_map(|r| by_payload.get(r.payload.as_slice()).map(|m| (*m).clone()))
            .collect();
    assert_eq!(kept.len() as i64, later.len() as i64 - deleted);
    let mut expected = first.expected.clone();
    schemas::totals::merge_into(&mut expected, common::expected_totals(&kept));

    world.start_worker("worker-a", &[]);
    let offsets: i64 = fences
        .iter()
        .map(|&(p, _)| common::high_watermark(&world.brokers, &world.orders, p))
        .sum();
    world.wait_committed(&store, offsets as u64, PATIENCE).await;
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    let skipped = world
        .metric("worker-a", "tally_worker_skipped_offsets_total", &[])
        .await
        .unwrap_or(0.0);
    let window = world
        .metric(
            "worker-a",
            "tally_worker_window_offsets_not_rebuilt_total",
            &[],
        )
        .await
        .unwrap_or(0.0);
    assert!(window > 0.0, "the rebuild of each window lost its start");
    assert_eq!(
        skipped - window,
        deleted as f64,
        "every deleted uncounted offset is reported"
    );
}
