//! The count never stops and never doubles: events, backlogs, start orders,
//! database freezes, poisoned partitions and recreated topics that once
//! stalled or doubled a partition. Real `tally worker` and `tally aggregator`
//! processes, the real broker and PostgreSQL; every scenario compares
//! `merchant_sales` with totals the test computes itself.

#[macro_use]
mod common;

use std::time::{Duration, Instant};

use common::{assert_totals_equal, now_ms, produce, produce_raw, traffic, Backend, World};
use ingest::load::generate::{Generated, Truth};
use schemas::{Amount, Day, Kind, Totals, TotalsKey};

const PATIENCE: Duration = Duration::from_secs(300);

fn raw(message: &Generated) -> (Vec<u8>, Vec<u8>, Option<i64>) {
    (
        message.key.clone().unwrap_or_default().into_bytes(),
        message.payload.clone(),
        None,
    )
}

fn event(event_id: &str, merchant: &str, amount: &str, occurred_at: &str) -> Vec<u8> {
    serde_json::json!({
        "event_id": event_id, "order_id": format!("o-{event_id}"), "merchant_id": merchant, "kind": "sale",
        "amount": amount, "currency": "EUR", "occurred_at": occurred_at,
    })
    .to_string()
    .into_bytes()
}

fn add(totals: &mut Totals, merchant: &str, day: &str, units: i128) {
    let key = TotalsKey {
        merchant_id: merchant.into(),
        currency: "EUR".into(),
        day: Day::parse(day).unwrap(),
    };
    let sums = totals.entry(key).or_default();
    sums.add_event(Kind::Sale, Amount(units));
}

/// Situations 1–3: a UTC day in year 10000, a year-0 date and a NUL in a
/// merchant id are dead-lettered by field; a producer an hour ahead does not
/// empty the dedupe window, so a retry after it counts once; an id reused with
/// other content counts once and is dead-lettered. The 520 ordinary events
/// after them are counted.
async fn odd_events(backend: Backend) {
    let mut world = World::new("odd", backend).await;
    let store = world.store().await;
    let before = traffic(61, 2_000);
    let after = traffic(62, 520);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    let retried = before
        .messages
        .iter()
        .find(|m| matches!(m.truth, Truth::Counted { .. }))
        .unwrap();
    let reused = before
        .messages
        .iter()
        .rev()
        .find(|m| matches!(m.truth, Truth::Counted { .. }))
        .unwrap();
    let merchant = retried.key.clone().unwrap();
    let other = reused.key.clone().unwrap();
    let mut changed: serde_json::Value = serde_json::from_slice(&reused.payload).unwrap();
    changed["amount"] = "987.65".into();

    let mut records: Vec<_> = before.messages.iter().map(raw).collect();
    let odd = [
        (
            merchant.clone(),
            event("odd-10000", &merchant, "1.00", "9999-12-31T23:30:00-01:00"),
            "occurred_at",
        ),
        (
            merchant.clone(),
            event("odd-0000", &merchant, "1.00", "0000-01-01T00:00:00Z"),
            "occurred_at",
        ),
        (
            "m\u{0}x".to_owned(),
            event("odd-nul", "m\u{0}x", "1.00", "2026-11-20T10:00:00Z"),
            "merchant_id",
        ),
    ];
    for (key, payload, _) in &odd {
        records.push((key.clone().into_bytes(), payload.clone(), None));
    }
    // An hour ahead of the wall clock, then a retry of an earlier event of the same partition.
    let ahead = event("ahead-1", &merchant, "5.00", "2026-11-20T10:00:00Z");
    records.push((
        merchant.clone().into_bytes(),
        ahead,
        Some(now_ms() + 3_600_000),
    ));
    records.push(raw(retried));
    records.push((
        other.into_bytes(),
        serde_json::to_vec(&changed).unwrap(),
        None,
    ));
    records.extend(after.messages.iter().map(raw));
    produce_raw(&world.brokers, &world.orders, &records).await;
    world
        .wait_committed(&store, records.len() as u64, PATIENCE)
        .await;

    let mut expected = before.expected.clone();
    schemas::totals::merge_into(&mut expected, after.expected.clone());
    add(&mut expected, &merchant, "2026-11-20", 50_000);
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());

    let invalid = before.invalid_payloads.len() + after.invalid_payloads.len();
    let dead = world.dead_letters(invalid + odd.len() + 1, Duration::from_secs(60));
    for (_, payload, field) in &odd {
        assert!(
            dead.values().any(|p| p == payload),
            "the {field} event is dead-lettered"
        );
    }
    let conflict = serde_json::to_vec(&changed).unwrap();
    assert!(
        dead.values().any(|p| *p == conflict),
        "the conflicting duplicate is dead-lettered"
    );
    assert_eq!(
        dead.len(),
        invalid + odd.len() + 1,
        "every bad event once, nothing else"
    );
}

/// Situation 4: 40,000 events for 40,000 merchants waiting in one partition
/// are cut into partials that fit, and all counted.
async fn wide_backlog(backend: Backend) {
    let mut world = World::new("backlog", backend).await;
    let store = world.store().await;
    let mut expected = Totals::new();
    let mut records = Vec::new();
    for i in 0..40_000 {
        let merchant = format!("merchant-with-a-long-identifier-{i:06}");
        let units = 10_000 + i as i128;
        records.push((
            merchant.clone().into_bytes(),
            event(
                &format!("wide-{i}"),
                &merchant,
                &format!("{}.{:04}", units / 10_000, units % 10_000),
                "2026-11-20T12:00:00Z",
            ),
            None::<i64>,
        ));
        add(&mut expected, &merchant, "2026-11-20", units);
    }
    // One partition for all of them, as a single busy merchant group would.
    let producer: rdkafka::producer::FutureProducer = kafka::client(&world.brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for (key, payload, _) in &records {
        let record = rdkafka::producer::FutureRecord::to(&world.orders)
            .partition(0)
            .key(key.as_slice())
            .payload(payload.as_slice());
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for delivery in deliveries {
        delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
    }
    world.start_aggregator("aggregator");
    world.start_worker(
        "worker-a",
        &[
            ("worker.batch_max_events", "50000"),
            ("worker.batch_max_ms", "3000"),
        ],
    );
    world.wait_committed(&store, 40_000, PATIENCE).await;
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    // 40,000 rows of about 190 bytes cannot fit one 512 KiB partial.
    let partials = world
        .metric("worker-a", "tally_worker_partials_published_total", &[])
        .await
        .unwrap();
    assert!(
        partials >= 15.0,
        "the backlog was cut into many partials: {partials}"
    );
}

/// Situation 5: an aggregator started before the partials topic exists
/// creates it and is counting within seconds of the first worker.
async fn aggregator_first(backend: Backend) {
    let mut world = World::with_topics("first", backend, false).await;
    let store = world.store().await;
    let traffic = traffic(63, 4_000);
    world.start_aggregator("aggregator");
    world
        .wait_for(
            "the aggregator is ready",
            Duration::from_secs(60),
            || async { world.readyz("aggregator").await.0 == 200 },
        )
        .await;
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, &traffic.messages).await;
    // librdkafka's default metadata refresh alone would take five minutes.
    world
        .wait_committed(&store, 4_000, Duration::from_secs(60))
        .await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
}

/// Events at the four corners of the era, for a merchant east of UTC
/// (Asia/Tokyo) and one west of it (America/New_York): where the local day
/// leaves 0001-01-01..9999-12-31 the event is dead-lettered naming the zone,
/// where it stays inside it is counted in both tables; the ordinary events
/// after them are all counted, so no partition stalls. Local days are the
/// test's own, from GNU `date`.
async fn era_corners(backend: Backend) {
    use common::local;

    let mut world = World::new("era", backend).await;
    let store = world.store().await;
    let zones = local::set(
        &store,
        &[("m-east", "Asia/Tokyo"), ("m-west", "America/New_York")],
    )
    .await;
    let before = traffic(63, 500);
    let after = traffic(64, 500);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);

    let corner = |id: &str, merchant: &str, at: &str| Generated {
        key: Some(merchant.to_owned()),
        payload: event(id, merchant, "3.00", at),
        truth: Truth::Counted {
            key: TotalsKey {
                merchant_id: merchant.into(),
                currency: "EUR".into(),
                day: Day::of_micros(schemas::day::parse_rfc3339(at).unwrap()),
            },
            kind: Kind::Sale,
            amount: Amount(30_000),
        },
    };
    let counted = [
        corner("west-last", "m-west", "9999-12-31T20:00:00Z"),
        corner("east-first", "m-east", "0001-01-01T01:00:00Z"),
    ];
    let refused = [
        corner("east-last", "m-east", "9999-12-31T20:00:00Z"),
        corner("west-first", "m-west", "0001-01-01T01:00:00Z"),
    ];
    let mut messages = before.messages.clone();
    messages.extend(counted.iter().cloned());
    messages.extend(refused.iter().cloned());
    messages.extend(after.messages.iter().cloned());
    let records: Vec<_> = messages.iter().map(raw).collect();
    produce_raw(&world.brokers, &world.orders, &records).await;
    world
        .wait_committed(&store, records.len() as u64, PATIENCE)
        .await;

    let mut valid = before.messages.clone();
    valid.extend(counted.iter().cloned());
    valid.extend(after.messages.iter().cloned());
    assert_totals_equal(
        &common::expected_totals(&valid),
        &store.totals(None).await.unwrap(),
    );
    local::assert_equal(
        &local::expected(&valid, &zones),
        &store.local_totals(None).await.unwrap(),
    );
    let invalid = before.invalid_payloads.len() + after.invalid_payloads.len();
    let dead = world.dead_letters(invalid + refused.len(), Duration::from_secs(60));
    for message in &refused {
        assert!(
            dead.values().any(|p| *p == message.payload),
            "{} is dead-lettered",
            String::from_utf8_lossy(&message.payload)
        );
    }
    assert_eq!(
        dead.len(),
        invalid + refused.len(),
        "every bad event once, nothing else"
    );
}

on_both_databases!(odd_events, wide_backlog, aggregator_first, era_corners);

/// A PostgreSQL frozen (SIGSTOP) for 30 s mid-stream: both services report
/// not ready while it is, and once it answers again (SIGCONT) the totals are
/// exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_postgres_loses_and_doubles_nothing() {
    let mut world = World::new("frozen", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(64, 30_000);
    let thirds: Vec<_> = traffic.messages.chunks(10_000).collect();
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, thirds[0]).await;
    world.wait_committed(&store, 10_000, PATIENCE).await;
    for service in ["aggregator", "worker-a"] {
        assert_eq!(
            world.readyz(service).await.0,
            200,
            "{service} ready before the freeze"
        );
    }

    common::signal_postgres("STOP");
    let frozen = Instant::now();
    produce(&world.brokers, &world.orders, thirds[1]).await;
    for service in ["aggregator", "worker-a"] {
        world
            .wait_for(
                &format!("{service} reports not ready"),
                Duration::from_secs(25),
                || async {
                    let (status, body) = world.readyz(service).await;
                    status == 503 && body.contains("database")
                },
            )
            .await;
    }
    let still_frozen = Duration::from_secs(30).saturating_sub(frozen.elapsed());
    tokio::time::sleep(still_frozen).await;
    common::signal_postgres("CONT");

    produce(&world.brokers, &world.orders, thirds[2]).await;
    world.wait_committed(&store, 30_000, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
    for service in ["aggregator", "worker-a"] {
        world
            .wait_for(
                &format!("{service} ready again"),
                Duration::from_secs(30),
                || async { world.readyz(service).await.0 == 200 },
            )
            .await;
    }
}

/// A rebalance while PostgreSQL is frozen: the claims in the rebalance
/// callback give up after their bound instead of holding the poll thread
/// (the loop goes on: it counts the timeouts and rejoins the group), the
/// partitions wait parked, and once the database answers every partition is
/// claimed again and the totals are exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebalance_while_postgres_is_frozen_never_holds_the_poll_thread() {
    let mut world = World::new("frozen-claims", Backend::Postgres).await;
    let store = world.store().await;
    let traffic = traffic(68, 20_000);
    let (first, second) = traffic.messages.split_at(10_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, first).await;
    world.wait_committed(&store, 10_000, PATIENCE).await;

    let second_worker = world.start_worker("worker-b", &[]);
    world
        .wait_for("worker-b holds partitions", PATIENCE, || async {
            store
                .progress()
                .await
                .unwrap()
                .iter()
                .any(|p| p.claimed_by.as_deref() == Some("worker-b"))
        })
        .await;

    // worker-b leaves while the database is frozen: worker-a's rebalance
    // callback must claim every partition and cannot.
    let frozen = Frozen::postgres();
    world.terminate(second_worker);
    for metric in [
        "tally_worker_claim_timeouts_total",
        "tally_worker_rejoins_total",
    ] {
        world
            .wait_for(
                &format!("{metric} counted by worker-a"),
                Duration::from_secs(120),
                || async { world.metric("worker-a", metric, &[]).await.unwrap_or(0.0) >= 1.0 },
            )
            .await;
    }
    drop(frozen);

    produce(&world.brokers, &world.orders, second).await;
    world.wait_committed(&store, 20_000, PATIENCE).await;
    assert_totals_equal(&traffic.expected, &store.totals(None).await.unwrap());
}

/// PostgreSQL frozen (SIGSTOP) until dropped, even when the test fails.
struct Frozen;

impl Frozen {
    fn postgres() -> Frozen {
        common::signal_postgres("STOP");
        Frozen
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        common::signal_postgres("CONT");
    }
}

/// A partition whose rows the database refuses (a constraint stands in for
/// any permanent data error) is parked: the other partitions keep
/// committing, the metric and `/readyz` name it, and once the constraint is
/// dropped a restarted aggregator resumes it exactly. An unreadable partial
/// on the partials topic parks its partition too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one running pipeline, its steps in order"
)]
async fn poisoned_partition_is_parked_and_resumes() {
    let mut world = World::new("poison", Backend::Postgres).await;
    let store = world.store().await;
    let (admin, connection) = tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin.batch_execute("ALTER TABLE merchant_sales ADD CONSTRAINT test_refuses CHECK (merchant_id NOT LIKE 'blocked-%')").await.unwrap();

    let traffic = traffic(65, 8_000);
    let mut records: Vec<_> = traffic.messages.iter().map(raw).collect();
    records.push((
        b"blocked-1".to_vec(),
        event("blocked-e1", "blocked-1", "3.00", "2026-11-20T09:00:00Z"),
        None,
    ));
    let mut expected = traffic.expected.clone();
    add(&mut expected, "blocked-1", "2026-11-20", 30_000);
    let aggregator = world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce_raw(&world.brokers, &world.orders, &records).await;

    world
        .wait_for("one partition parked", PATIENCE, || async {
            world
                .metric("aggregator", "tally_aggregator_parked_partitions", &[])
                .await
                == Some(1.0)
        })
        .await;
    let (status, body) = world.readyz("aggregator").await;
    assert_eq!(status, 503);
    assert!(
        body.contains("parked")
            && body.contains("database_refused")
            && body.contains("test_refuses"),
        "{body}"
    );
    // Every other partition commits all it has.
    let consumer: rdkafka::consumer::BaseConsumer = kafka::client(&world.brokers).create().unwrap();
    let highs: Vec<i64> = (0..common::PARTITIONS)
        .map(|p| {
            rdkafka::consumer::Consumer::fetch_watermarks(
                &consumer,
                &world.orders,
                p,
                Duration::from_secs(10),
            )
            .unwrap()
            .1
        })
        .collect();
    world
        .wait_for(
            "the other partitions commit everything",
            PATIENCE,
            || async {
                let progress = store.progress().await.unwrap();
                let behind: Vec<i32> = progress
                    .iter()
                    .filter(|p| p.fence.next_offset < highs[p.partition as usize])
                    .map(|p| p.partition)
                    .collect();
                progress.len() == common::PARTITIONS as usize && behind.len() == 1
            },
        )
        .await;

    admin
        .batch_execute("ALTER TABLE merchant_sales DROP CONSTRAINT test_refuses")
        .await
        .unwrap();
    assert_eq!(world.terminate(aggregator), 0);
    world.start_aggregator("aggregator");
    world
        .wait_committed(&store, records.len() as u64, PATIENCE)
        .await;
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    world
        .wait_for("ready again", Duration::from_secs(30), || async {
            world.readyz("aggregator").await.0 == 200
        })
        .await;

    // A test-only unreadable partial on partials partition 2 parks source partition 2.
    produce_raw(
        &world.brokers,
        &world.partials,
        &[(
            format!("{}/2", world.orders).into_bytes(),
            b"{not a partial".to_vec(),
            None,
        )],
    )
    .await;
    world
        .wait_for(
            "the unreadable partial parks its partition",
            PATIENCE,
            || async {
                world
                    .metric(
                        "aggregator",
                        "tally_aggregator_partition_parked_offset",
                        &[("partition", "2"), ("reason", "unreadable_partial")],
                    )
                    .await
                    .is_some()
            },
        )
        .await;
}

/// A topic deleted and recreated under a running pipeline is reported (the
/// fences stand beyond the new log's end) and nothing of the new log is
/// counted past them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recreated_topic_is_reported_not_skipped() {
    let mut world = World::new("recreate", Backend::Postgres).await;
    let store = world.store().await;
    let first = traffic(66, 8_000);
    world.start_aggregator("aggregator");
    world.start_worker("worker-a", &[]);
    produce(&world.brokers, &world.orders, &first.messages).await;
    world.wait_committed(&store, 8_000, PATIENCE).await;
    let fences_before: Vec<i64> = store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| p.fence.next_offset)
        .collect();
    // The services keep running through the deletion, as they would when
    // an operator deletes a topic by mistake.
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        kafka::client(&world.brokers).create().unwrap();
    let options = rdkafka::admin::AdminOptions::new();
    for result in admin
        .delete_topics(&[&world.orders], &options)
        .await
        .unwrap()
    {
        result.expect("topic deleted");
    }
    common::create_topics(&world.brokers, &[&world.orders]).await;
    let second = traffic(67, 2_000);
    produce(&world.brokers, &world.orders, &second.messages).await;

    world
        .wait_for("every partition reported", PATIENCE, || async {
            world
                .metric("worker-a", "tally_worker_parked_partitions", &[])
                .await
                == Some(f64::from(common::PARTITIONS))
        })
        .await;
    let (status, body) = world.readyz("worker-a").await;
    assert_eq!(status, 503);
    assert!(body.contains("recreated or truncated"), "{body}");
    let fences_after: Vec<i64> = store
        .progress()
        .await
        .unwrap()
        .iter()
        .map(|p| p.fence.next_offset)
        .collect();
    assert_eq!(
        fences_after, fences_before,
        "no fence moved past the recreated log"
    );
    assert_totals_equal(&first.expected, &store.totals(None).await.unwrap());
}
