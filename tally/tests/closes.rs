//! Closed days over the real pipeline (worker, aggregator, broker), on
//! PostgreSQL and on SQLite. A stream across two midnights for merchants in
//! UTC, Asia/Tokyo, America/St_Johns and Pacific/Kiritimati, with message
//! times in the past and a grace period of one hour:
//!
//! 1. every (merchant, currency, day) closes, on both bases, in the close
//!    run whose closed-through instant first reaches its end (computed
//!    here with GNU `date`, not tally's zone database), and only once
//!    completeness passed that end plus grace; its closed totals are the
//!    test's own sums of the events below the fences the run recorded;
//! 2. late events published after their day closed leave the current
//!    totals exact and appear as adjustments with their source offsets;
//!    closed + adjustments = current for every row;
//! 3. a partition idle for the whole test holds no day open; a parked one
//!    holds every day after its fence open, `/readyz` and the metrics the
//!    stall alert reads name it, and once it resumes the days close;
//! 4. an aggregator killed while it applies late partials leaves no
//!    adjustment missing or doubled;
//! 5. a backfill over a closed day records its change with its job id,
//!    and so does an import; `tally verify` names exactly the closed keys
//!    whose closed totals differ from the files;
//! 6. `GET /v1/merchants/{id}/days` and `tally days --json` give the same
//!    days as the tables, digit for digit, and the ETag changes when an
//!    adjustment lands.

#[macro_use]
mod common;
mod files;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::{local, Backend, World};
use files::{stdout, tally_with, wait_for_job};
use ingest::load::generate::{Generated, Truth};
use schemas::{Amount, Day, Kind, Sums, TotalsKey};
use store::closes::{CloseRun, Source};
use store::reads::Basis;
use store::Store;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;
const GRACE_MS: i64 = HOUR_MS;
/// The partition the database refuses a row of, until the test lets it.
const PARKED: i32 = 0;
/// The partition no event is ever published to.
const IDLE: i32 = 3;
const PATIENCE: Duration = Duration::from_secs(600);
const WRITE: &str = "write-token-1";
const READ: &str = "read-token-1";

/// Two merchants per zone, each on a fixed partition (none on [`IDLE`]).
const MERCHANTS: [(&str, &str); 8] = [
    ("utc-1", "UTC"),
    ("tokyo-1", "Asia/Tokyo"),
    ("stjohns-1", "America/St_Johns"),
    ("kiritimati-1", "Pacific/Kiritimati"),
    ("utc-2", "UTC"),
    ("tokyo-2", "Asia/Tokyo"),
    ("stjohns-2", "America/St_Johns"),
    ("kiritimati-2", "Pacific/Kiritimati"),
];

fn partition_of(merchant: usize) -> i32 {
    (merchant % 3) as i32
}

fn zone_of(merchant: &str) -> &'static str {
    MERCHANTS
        .iter()
        .find(|(m, _)| *m == merchant)
        .map_or("UTC", |(_, z)| *z)
}

on_both_databases!(days_close_once_complete_and_every_later_change_is_an_adjustment);

/// Every message the test published, and where it landed.
#[derive(Default)]
struct Log {
    messages: Vec<Generated>,
    placed: Vec<(i32, i64)>,
}

impl Log {
    /// The counted messages below `frontier` (`topic/partition` → next offset).
    fn below(&self, topic: &str, frontier: &BTreeMap<String, i64>) -> Vec<Generated> {
        self.messages
            .iter()
            .zip(&self.placed)
            .filter(|(_, (p, offset))| {
                frontier
                    .get(&format!("{topic}/{p}"))
                    .is_some_and(|next| offset < next)
            })
            .map(|(m, _)| m.clone())
            .collect()
    }
}

/// One event of `merchant` at `at_ms`: a sale, or a refund when `refund`.
fn event(
    id: &str,
    merchant: &str,
    currency: &str,
    cents: i128,
    refund: bool,
    at_ms: i64,
) -> Generated {
    let kind = if refund { Kind::Refund } else { Kind::Sale };
    let amount = Amount(cents * 100);
    let payload = serde_json::json!({
        "event_id": id, "order_id": format!("o-{id}"), "merchant_id": merchant,
        "kind": kind.as_str(), "amount": amount.to_string(), "currency": currency,
        "occurred_at": schemas::day::format_rfc3339_millis(at_ms * 1_000),
    });
    Generated {
        key: Some(merchant.to_owned()),
        payload: payload.to_string().into_bytes(),
        truth: Truth::Counted {
            key: TotalsKey {
                merchant_id: merchant.to_owned(),
                currency: currency.to_owned(),
                day: Day(at_ms.div_euclid(DAY_MS) as i32),
            },
            kind,
            amount,
        },
    }
}

/// Produces each `(partition, message, message time)` and records where it landed.
async fn publish(world: &World, log: &mut Log, records: Vec<(i32, Generated, Option<i64>)>) {
    let producer: rdkafka::producer::FutureProducer = common::kafka_client(&world.brokers)
        .set("enable.idempotence", "true")
        .create()
        .unwrap();
    let mut deliveries = Vec::new();
    for (partition, message, at) in &records {
        let mut record = rdkafka::producer::FutureRecord::to(&world.orders)
            .partition(*partition)
            .key(message.key.as_deref().unwrap_or_default())
            .payload(message.payload.as_slice());
        if let Some(ms) = at {
            record = record.timestamp(*ms);
        }
        deliveries.push(producer.send_result(record).map_err(|(e, _)| e).unwrap());
    }
    for (delivery, (_, message, _)) in deliveries.into_iter().zip(records) {
        let delivered = delivery.await.unwrap().map_err(|(e, _)| e).unwrap();
        log.placed.push((delivered.partition, delivered.offset));
        log.messages.push(message);
    }
}

/// When `day` ends in `zone` (ms), asked of GNU `date`: the next day's local midnight.
fn day_end(zone: &str, day: Day, cache: &mut HashMap<(String, Day), i64>) -> i64 {
    *cache.entry((zone.to_owned(), day)).or_insert_with(|| {
        let out = std::process::Command::new("date")
            .env("TZ", format!(":{zone}"))
            .args(["-d", &format!("{} 00:00:00", Day(day.0 + 1)), "+%s"])
            .output()
            .expect("date runs");
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().parse::<i64>().expect("seconds") * 1_000
    })
}

/// The test's own sums of `messages` on `basis`: each key with its zone.
fn sums(messages: &[Generated], basis: Basis) -> BTreeMap<TotalsKey, (String, Sums)> {
    match basis {
        Basis::Utc => common::expected_totals(messages)
            .into_iter()
            .map(|(k, s)| (k, ("UTC".to_owned(), s)))
            .collect(),
        Basis::Local => {
            let zones: HashMap<String, &'static str> = MERCHANTS
                .iter()
                .map(|(m, z)| ((*m).to_owned(), *z))
                .collect();
            local::expected(messages, &zones)
                .into_iter()
                .map(|(k, l)| (k, (l.time_zone.into_owned(), l.sums)))
                .collect()
        }
    }
}

/// What the tables hold of one basis.
struct Tables {
    runs: Vec<CloseRun>,
    closes: BTreeMap<TotalsKey, (Sums, i64)>,
    adjustments: Vec<store::closes::Adjustment>,
    current: BTreeMap<TotalsKey, Sums>,
}

const RANGE: [Day; 2] = [Day(0), Day(2_932_896)];

async fn tables(store: &Store, basis: Basis) -> Tables {
    let mut runs = store.close_runs(1_000).await.unwrap();
    runs.reverse();
    let closes = store
        .closes(None, basis, RANGE)
        .await
        .unwrap()
        .into_iter()
        .map(|c| (c.key, (c.sums, c.run_id)))
        .collect();
    let current = match basis {
        Basis::Utc => store.totals(None).await.unwrap(),
        Basis::Local => store
            .local_totals(None)
            .await
            .unwrap()
            .into_iter()
            .map(|(k, l)| (k, l.sums))
            .collect(),
    };
    Tables {
        runs,
        closes,
        adjustments: store.adjustments(None, basis, RANGE).await.unwrap(),
        current,
    }
}

/// Requirement 1: each key closes in the run whose closed-through instant
/// first reaches its end, at a completeness at least its end plus grace,
/// with the test's sums of the events below that run's fences; no key
/// closes otherwise. Returns the keys closed.
fn assert_each_day_closed_once_in_time(
    log: &Log,
    topic: &str,
    t: &Tables,
    basis: Basis,
    ends: &mut HashMap<(String, Day), i64>,
) -> usize {
    let mut closed_through = None;
    let mut seen = 0;
    for run in &t.runs {
        assert!(
            run.closed_through_ms + run.grace_ms <= run.completeness_ms,
            "{run:?}"
        );
        for (key, (zone, want)) in sums(&log.below(topic, &run.frontier), basis) {
            let end = day_end(&zone, key.day, ends);
            let due = end <= run.closed_through_ms && closed_through.is_none_or(|p| end > p);
            let found = t.closes.get(&key);
            if due {
                assert!(end + GRACE_MS <= run.completeness_ms);
                assert_eq!(
                    found,
                    Some(&(want, run.id)),
                    "{basis:?} {key:?} ({zone}) is due in run {run:?}"
                );
                seen += 1;
            } else {
                assert!(
                    found.is_none_or(|(_, id)| *id != run.id),
                    "{basis:?} {key:?} ({zone}, ends {end}) closed early or twice by {run:?}"
                );
            }
        }
        closed_through = Some(run.closed_through_ms);
    }
    assert_eq!(
        seen,
        t.closes.len(),
        "{basis:?}: a close the test cannot account for"
    );
    seen
}

/// Requirement 2's invariant: on every day that is closed (by the test's
/// own day ends), closed + adjustments = current; no adjustment on an open day.
fn assert_closed_plus_adjustments_is_current(
    t: &Tables,
    basis: Basis,
    ends: &mut HashMap<(String, Day), i64>,
) {
    let Some(through) = t.runs.last().map(|r| r.closed_through_ms) else {
        assert!(t.adjustments.is_empty());
        return;
    };
    let mut adjusted: BTreeMap<TotalsKey, Sums> = BTreeMap::new();
    for a in &t.adjustments {
        let key = TotalsKey {
            merchant_id: a.merchant_id.clone(),
            currency: a.currency.clone(),
            day: a.day,
        };
        assert!(
            day_end(&a.time_zone, a.day, ends) <= through,
            "{basis:?}: an adjustment on an open day: {a:?}"
        );
        adjusted.entry(key).or_default().merge(&a.sums);
    }
    let mut keys: Vec<&TotalsKey> = t.closes.keys().chain(adjusted.keys()).collect();
    keys.extend(t.current.keys().filter(|k| {
        let zone = match basis {
            Basis::Utc => "UTC",
            Basis::Local => zone_of(&k.merchant_id),
        };
        day_end(zone, k.day, ends) <= through
    }));
    keys.sort();
    keys.dedup();
    for key in keys {
        let mut sum = t.closes.get(key).map(|c| c.0).unwrap_or_default();
        sum.merge(adjusted.get(key).unwrap_or(&Sums::default()));
        let current = t.current.get(key).copied().unwrap_or_default();
        assert_eq!(
            sum, current,
            "{basis:?} {key:?}: closed + adjustments ≠ current"
        );
    }
}

/// On both bases: the current totals are the test's own sums of `truth`,
/// and closed + adjustments = current; returns each basis's tables.
async fn assert_exact(
    store: &Store,
    truth: &[Generated],
    ends: &mut HashMap<(String, Day), i64>,
    what: &str,
) -> Vec<(Basis, Tables)> {
    let mut out = Vec::new();
    for basis in [Basis::Utc, Basis::Local] {
        let t = tables(store, basis).await;
        let want: BTreeMap<TotalsKey, Sums> = sums(truth, basis)
            .into_iter()
            .map(|(k, (_, s))| (k, s))
            .collect();
        assert_eq!(t.current, want, "{basis:?}: {what}");
        assert_closed_plus_adjustments_is_current(&t, basis, ends);
        out.push((basis, t));
    }
    out
}

/// Requirements 2 and 4: each late event lies in exactly one adjustment of
/// its key and partition on each basis.
fn assert_each_late_event_adjusted_once(log: &Log, late: &[usize], t: &Tables, basis: Basis) {
    for &i in late {
        let (partition, offset) = log.placed[i];
        let (key, _) = sums(&log.messages[i..=i], basis)
            .into_iter()
            .next()
            .unwrap();
        let covering = t
            .adjustments
            .iter()
            .filter(|a| {
                a.merchant_id == key.merchant_id && a.currency == key.currency && a.day == key.day
            })
            .filter(|a| match &a.source {
                Source::Stream {
                    partition: p,
                    first_offset,
                    last_offset,
                    ..
                } => *p == partition && (*first_offset..=*last_offset).contains(&offset),
                Source::Job { .. } => false,
            })
            .count();
        assert_eq!(
            covering, 1,
            "{basis:?}: late event {partition}/{offset} of {key:?}"
        );
    }
}

/// Lets the database refuse rows of merchants named `blocked-…`, or not.
async fn refuse_blocked(world: &World, backend: Backend, refuse: bool) {
    let sql = match (backend, refuse) {
        (Backend::Postgres, true) => "ALTER TABLE merchant_sales ADD CONSTRAINT test_refuses CHECK (merchant_id NOT LIKE 'blocked-%')",
        (Backend::Postgres, false) => "ALTER TABLE merchant_sales DROP CONSTRAINT test_refuses",
        (Backend::Sqlite, true) => "CREATE TRIGGER test_refuses BEFORE INSERT ON merchant_sales WHEN NEW.merchant_id LIKE 'blocked-%' BEGIN SELECT RAISE(ABORT, 'test_refuses'); END",
        (Backend::Sqlite, false) => "DROP TRIGGER test_refuses",
    };
    match backend {
        Backend::Postgres => {
            let (admin, connection) =
                tokio_postgres::connect(&world.database_url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
            tokio::spawn(connection);
            admin.batch_execute(sql).await.unwrap();
        }
        Backend::Sqlite => {
            let path = world
                .database_url
                .trim_start_matches("sqlite://")
                .to_owned();
            tokio::task::spawn_blocking(move || {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.busy_timeout(Duration::from_secs(30)).unwrap();
                conn.execute_batch(sql).unwrap();
            })
            .await
            .unwrap();
        }
    }
}

fn aggregator_settings() -> [(&'static str, &'static str); 2] {
    [
        ("aggregator.close_grace_secs", "3600"),
        ("aggregator.close_poll_ms", "300"),
    ]
}

/// Waits until the latest close run has closed through `through` (or beyond).
async fn wait_closed_through(world: &World, store: &Store, through: i64, what: &str) {
    world
        .wait_for(what, PATIENCE, || async {
            store
                .closed_through()
                .await
                .unwrap()
                .is_some_and(|t| t >= through)
        })
        .await;
}

#[expect(
    clippy::too_many_lines,
    reason = "one story on one running pipeline, its phases in order"
)]
async fn days_close_once_complete_and_every_later_change_is_an_adjustment(backend: Backend) {
    let mut world = World::new("closes", backend).await;
    let store = world.store().await;
    let zoned: Vec<_> = MERCHANTS
        .iter()
        .filter(|(_, z)| *z != "UTC")
        .map(|(m, z)| ((*m).to_owned(), schemas::zone::Zone::parse(z).unwrap()))
        .collect();
    store.set_zones(&zoned, 0).await.unwrap();
    refuse_blocked(&world, backend, true).await;
    let mut ends = HashMap::new();
    let topic = world.orders.clone();

    // The stream: every 10 minutes from noon of the fourth day back to noon
    // two days later, an event per merchant, message time = event time.
    // "Today" is the UTC midnight at least six hours back, so that the
    // stream's last local day has ended everywhere (St. John's is UTC-3:30,
    // and the grace adds an hour) at whatever time of day the test runs:
    // anchored on the last midnight, a run between 00:00 and 04:45 UTC
    // waited for a day still open in St. John's.
    let today = (common::now_ms() - 6 * HOUR_MS).div_euclid(DAY_MS) * DAY_MS;
    let start = today - 4 * DAY_MS + 12 * HOUR_MS;
    let stall = start + 18 * HOUR_MS; // 06:00 the next day
    let mut stream = Vec::new();
    for step in 0..=288i64 {
        for (i, (merchant, _)) in MERCHANTS.iter().enumerate() {
            let at = start + step * 600_000 + i as i64 * 7_000;
            let currency = if i.is_multiple_of(2) { "EUR" } else { "USD" };
            let cents = i128::from((step * 37 + i as i64 * 11) % 5_000 + 100);
            let id = format!("s-{step}-{i}");
            let message = event(&id, merchant, currency, cents, step % 5 == 4, at);
            stream.push((partition_of(i), message, Some(at)));
        }
    }
    // 3, parked: the parked partition gets, at 06:00 of the second day, a
    // row the database refuses; its fence stops there.
    let blocked = event("blocked", "blocked-1", "EUR", 500, false, stall);
    let at = stream
        .iter()
        .position(|(p, _, at)| *p == PARKED && at.unwrap() >= stall)
        .unwrap();
    stream.insert(at, (PARKED, blocked, Some(stall)));
    let mut log = Log::default();
    publish(&world, &mut log, stream).await;
    // The services start once the stream is in the log: before, every
    // partition was empty, so complete up to now, and the stream's days
    // would close before its events were counted (as adjustments).
    let mut aggregator = world.start_aggregator_with("aggregator", &aggregator_settings());
    // Small partials: the parked partition's fence stops just before the
    // refused row, with the events before it applied.
    world.start_worker("worker-a", &[("worker.batch_max_events", "40")]);
    world
        .wait_for("the parked partition", PATIENCE, || async {
            world
                .metric("aggregator", "tally_aggregator_parked_partitions", &[])
                .await
                == Some(1.0)
        })
        .await;
    let published = |p: i32| log.placed.iter().filter(|(q, _)| *q == p).count() as i64;
    world
        .wait_for("the other partitions committed", PATIENCE, || async {
            let progress = store.progress().await.unwrap();
            [1, 2].iter().all(|&p| {
                progress
                    .iter()
                    .any(|f| f.partition == p && f.fence.next_offset == published(p))
            })
        })
        .await;
    let progress = store.progress().await.unwrap();
    let parked = progress.iter().find(|p| p.partition == PARKED).unwrap();
    let held_at = parked
        .fence
        .dedupe_clock_ms
        .expect("the parked partition's clock");
    assert!(held_at < stall, "the fence stands before the refused row");
    let quarter = 15 * 60_000;
    let due = (held_at - GRACE_MS).div_euclid(quarter) * quarter;
    wait_closed_through(
        &world,
        &store,
        due,
        "days closed up to the parked partition",
    )
    .await;
    for basis in [Basis::Utc, Basis::Local] {
        let t = tables(&store, basis).await;
        assert_eq!(
            t.runs.last().unwrap().closed_through_ms,
            due,
            "the parked partition holds completeness: {:?}",
            t.runs.last()
        );
        assert!(assert_each_day_closed_once_in_time(&log, &topic, &t, basis, &mut ends) > 0);
    }
    let (_, ready) = world.readyz("aggregator").await;
    assert!(
        ready.contains(&format!("held by partition {topic}/{PARKED}")),
        "{ready}"
    );
    let lag = |partition: i32| {
        let labels = [
            ("topic", topic.clone()),
            ("partition", partition.to_string()),
        ];
        let world = &world;
        async move {
            let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (*k, v.as_str())).collect();
            world
                .metric(
                    "aggregator",
                    "tally_partition_completeness_lag_seconds",
                    &labels,
                )
                .await
                .unwrap()
        }
    };
    assert!(
        lag(PARKED).await > 86_400.0,
        "the stall alert's series names the parked partition"
    );
    assert!(
        lag(IDLE).await < 60.0,
        "the idle partition is complete up to now"
    );

    // The parked partition resumes; every day of the stream closes: the
    // idle partition holds none open.
    refuse_blocked(&world, backend, false).await;
    assert_eq!(world.terminate(aggregator), 0);
    aggregator = world.start_aggregator_with("aggregator", &aggregator_settings());
    world
        .wait_committed(&store, log.messages.len() as u64, PATIENCE)
        .await;
    let last_end = MERCHANTS
        .iter()
        .map(|(_, zone)| {
            day_end(
                zone,
                Day(((start + 2 * DAY_MS) / DAY_MS + 1) as i32),
                &mut ends,
            )
        })
        .max()
        .unwrap();
    wait_closed_through(&world, &store, last_end, "every day of the stream closed").await;
    for basis in [Basis::Utc, Basis::Local] {
        let t = tables(&store, basis).await;
        let closed = assert_each_day_closed_once_in_time(&log, &topic, &t, basis, &mut ends);
        assert_eq!(
            closed,
            sums(&log.messages, basis).len(),
            "{basis:?}: every key closed"
        );
    }

    // 2: late events for closed days, published after their close.
    let late = |round: usize, n: usize| -> Vec<(i32, Generated, Option<i64>)> {
        (0..n)
            .map(|k| {
                let i = k % MERCHANTS.len();
                let at = start + (k as i64 * 5 % 40) * HOUR_MS + 1_000;
                let currency = if i.is_multiple_of(2) { "EUR" } else { "USD" };
                let message = event(
                    &format!("late-{round}-{k}"),
                    MERCHANTS[i].0,
                    currency,
                    100 + k as i128,
                    k % 4 == 3,
                    at,
                );
                (partition_of(i), message, None)
            })
            .collect()
    };
    let mut late_events: Vec<usize> = Vec::new();
    let first = log.messages.len();
    publish(&world, &mut log, late(0, 24)).await;
    late_events.extend(first..log.messages.len());
    world
        .wait_committed(&store, log.messages.len() as u64, PATIENCE)
        .await;
    let exact = assert_exact(
        &store,
        &log.messages,
        &mut ends,
        "the current totals are exact",
    )
    .await;
    for (basis, t) in &exact {
        assert_each_late_event_adjusted_once(&log, &late_events, t, *basis);
    }

    // 4: the aggregator killed while it applies late partials, three times.
    for round in 1..=3 {
        let first = log.messages.len();
        publish(&world, &mut log, late(round, 16)).await;
        late_events.extend(first..log.messages.len());
        world.kill(aggregator);
        aggregator = world.start_aggregator_with("aggregator", &aggregator_settings());
        world
            .wait_committed(&store, log.messages.len() as u64, PATIENCE)
            .await;
    }
    let exact = assert_exact(&store, &log.messages, &mut ends, "exact after the crashes").await;
    for (basis, t) in &exact {
        assert_each_late_event_adjusted_once(&log, &late_events, t, *basis);
    }

    // 5: a backfill of the first (closed) UTC day from a file that lacks
    // one of utc-2's events and has one more of utc-1's.
    let first_day = Day((start / DAY_MS) as i32);
    let removed = log
        .messages
        .iter()
        .position(|m| matches!(&m.truth, Truth::Counted { key, .. } if key.merchant_id == "utc-2" && key.day == first_day))
        .unwrap();
    let extra = event(
        "backfill-extra",
        "utc-1",
        "EUR",
        4_321,
        false,
        start + HOUR_MS,
    );
    let mut file: Vec<Generated> = log
        .messages
        .iter()
        .enumerate()
        .filter(|(i, m)| {
            *i != removed && matches!(&m.truth, Truth::Counted { key, .. } if key.day == first_day)
        })
        .map(|(_, m)| m.clone())
        .collect();
    file.push(extra.clone());
    let dir = world.dir.join("backfill");
    std::fs::create_dir_all(&dir).unwrap();
    files::write_ndjson(&dir.join("day.ndjson"), &file);
    let source = format!("{}/", dir.display());
    let (from, to) = (first_day.to_string(), Day(first_day.0 + 1).to_string());
    let job = run_job(
        &world,
        &store,
        &[
            "backfill", "--source", &source, "--from", &from, "--to", &to,
        ],
    )
    .await;
    let mut truth = log.messages.clone();
    truth.remove(removed);
    truth.push(extra);
    for (basis, t) in assert_exact(&store, &truth, &mut ends, "the backfill's totals").await {
        let by_job: Vec<_> = t
            .adjustments
            .iter()
            .filter(|a| a.source == Source::Job { job_id: job })
            .map(|a| a.merchant_id.as_str())
            .collect();
        assert_eq!(
            by_job,
            ["utc-1", "utc-2"],
            "{basis:?}: the job's adjustments"
        );
    }

    // `tally verify` of the file: the current totals match it, and it names
    // exactly the closed keys whose closed totals differ from the file (those
    // adjusted since: late events, the backfill).
    let out = tally_with(
        &[
            "verify",
            "--source",
            &source,
            "--from",
            &from,
            "--to",
            &to,
            "--json",
            "--database-url",
            &world.database_url,
        ],
        &world.env,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let t = tables(&store, Basis::Utc).await;
    let from_file = sums(&file, Basis::Utc);
    let mut differ: Vec<String> = from_file
        .iter()
        .filter(|(k, (_, s))| t.closes.get(*k).map(|c| c.0) != Some(*s))
        .map(|(k, _)| format!("{} {} {}", k.merchant_id, k.currency, k.day))
        .collect();
    let mut named: Vec<String> = report["closed"]["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            format!(
                "{} {} {}",
                d["merchant_id"].as_str().unwrap(),
                d["currency"].as_str().unwrap(),
                d["day"].as_str().unwrap()
            )
        })
        .collect();
    differ.sort();
    named.sort();
    assert!(!differ.is_empty());
    assert_eq!(
        named, differ,
        "verify names the closed keys the file differs from"
    );

    // An import of a file with one more event for the first day: its
    // adjustment names its job too.
    let imported = event(
        "import-extra",
        "stjohns-2",
        "USD",
        999,
        false,
        start + 2 * HOUR_MS,
    );
    let file = world.dir.join("import.ndjson");
    files::write_ndjson(&file, std::slice::from_ref(&imported));
    let import = run_job(
        &world,
        &store,
        &["import", "--source", file.to_str().unwrap()],
    )
    .await;
    truth.push(imported);
    for (basis, t) in assert_exact(&store, &truth, &mut ends, "the import's totals").await {
        let by_import: Vec<&str> = t
            .adjustments
            .iter()
            .filter(|a| a.source == Source::Job { job_id: import })
            .map(|a| a.merchant_id.as_str())
            .collect();
        assert_eq!(
            by_import,
            ["stjohns-2"],
            "{basis:?}: the import's adjustment"
        );
    }

    // 6: the API and the CLI give the tables' days, digit for digit.
    let (_, addr) = world
        .start_ingest(
            "ingest",
            WRITE,
            &[
                ("ingest.read_tokens", READ),
                ("ingest.database_url", &world.database_url.clone()),
            ],
        )
        .await;
    let (from, to) = (
        Day(first_day.0 - 1).to_string(),
        Day(first_day.0 + 4).to_string(),
    );
    for basis in [Basis::Utc, Basis::Local] {
        let t = tables(&store, basis).await;
        let name = if basis == Basis::Utc { "utc" } else { "local" };
        for (merchant, _) in MERCHANTS {
            let path = format!("/v1/merchants/{merchant}/days?from={from}&to={to}&basis={name}");
            let reply = get(&addr, &path, None).await;
            assert_eq!(
                reply.status,
                200,
                "{}",
                String::from_utf8_lossy(&reply.body)
            );
            let served: serde_json::Value = serde_json::from_slice(&reply.body).unwrap();
            let out = tally_with(
                &[
                    "days",
                    "--merchant",
                    merchant,
                    "--from",
                    &from,
                    "--to",
                    &to,
                    "--basis",
                    name,
                    "--json",
                    "--database-url",
                    &world.database_url,
                ],
                &world.env,
            );
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            assert_eq!(served, printed, "{merchant} {name}: API and CLI");
            assert_days_are_the_tables(&served, merchant, &t);
        }
    }

    // The ETag changes when an adjustment lands.
    let path = format!("/v1/merchants/tokyo-1/days?from={from}&to={to}");
    let before = etag(&get(&addr, &path, None).await);
    assert_eq!(get(&addr, &path, Some(&before)).await.status, 304);
    publish(
        &world,
        &mut log,
        vec![(
            partition_of(1),
            event("late-etag", "tokyo-1", "USD", 77, false, start + HOUR_MS),
            None,
        )],
    )
    .await;
    world
        .wait_committed(&store, log.messages.len() as u64, PATIENCE)
        .await;
    let changed = get(&addr, &path, Some(&before)).await;
    assert_eq!(changed.status, 200, "an adjustment changes the answer");
    assert_ne!(etag(&changed), before);
    assert_eq!(get(&addr, &path, Some(&etag(&changed))).await.status, 304);
}

/// Runs `tally <args> --database-url …`, which queues a job, and waits for
/// the aggregator to finish it; returns its id.
async fn run_job(world: &World, store: &Store, args: &[&str]) -> i64 {
    let mut args = args.to_vec();
    args.extend(["--database-url", &world.database_url]);
    let out = tally_with(&args, &world.env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job: i64 = stdout(&out).lines().next().unwrap().trim().parse().unwrap();
    let done = wait_for_job(store, job, |j| j.state.is_final()).await;
    assert_eq!(done.state, store::jobs::State::Succeeded, "{done:#?}");
    job
}

async fn get(addr: &str, path: &str, if_none_match: Option<&str>) -> ingest::load::client::Reply {
    let bearer = format!("Bearer {READ}");
    let mut headers = vec![("Authorization", bearer.as_str())];
    if let Some(tag) = if_none_match {
        headers.push(("If-None-Match", tag));
    }
    ingest::load::client::request(addr, "GET", path, &headers, b"")
        .await
        .expect("ingest answers")
}

fn etag(reply: &ingest::load::client::Reply) -> String {
    reply
        .headers
        .iter()
        .find(|(name, _)| name == "etag")
        .map(|(_, v)| v.clone())
        .expect("an ETag")
}

/// Each day of an answer against the tables: its current, closed and
/// adjusted totals as exact decimal text, and its adjustments.
fn assert_days_are_the_tables(answer: &serde_json::Value, merchant: &str, t: &Tables) {
    let money = |s: &Sums| {
        serde_json::json!({
            "sales_amount": s.sales_amount.to_string(), "sales_count": s.sales_count,
            "refund_amount": s.refund_amount.to_string(), "refund_count": s.refund_count,
            "net_amount": s.net_amount().to_string(),
        })
    };
    let days = answer["days"].as_array().unwrap();
    let held: Vec<&TotalsKey> = t
        .current
        .keys()
        .filter(|k| k.merchant_id == merchant)
        .filter(|k| {
            (Day(answer["from"]
                .as_str()
                .map(|d| Day::parse(d).unwrap().0)
                .unwrap())
                ..=Day(answer["to"]
                    .as_str()
                    .map(|d| Day::parse(d).unwrap().0)
                    .unwrap()))
                .contains(&k.day)
        })
        .collect();
    assert_eq!(
        days.len(),
        held.len(),
        "{merchant}: one entry per day and currency"
    );
    for day in days {
        let key = TotalsKey {
            merchant_id: merchant.to_owned(),
            currency: day["currency"].as_str().unwrap().to_owned(),
            day: Day::parse(day["day"].as_str().unwrap()).unwrap(),
        };
        assert_eq!(day["current"], money(&t.current[&key]), "{key:?}");
        let closed = t.closes.get(&key).map(|c| c.0).unwrap_or_default();
        assert_eq!(day["closed"], money(&closed), "{key:?}");
        let mine: Vec<_> = t
            .adjustments
            .iter()
            .filter(|a| {
                a.merchant_id == key.merchant_id && a.currency == key.currency && a.day == key.day
            })
            .collect();
        let mut adjusted = Sums::default();
        for a in &mine {
            adjusted.merge(&a.sums);
        }
        assert_eq!(day["adjusted"], money(&adjusted), "{key:?}");
        let listed = day["adjustments"].as_array().unwrap();
        assert_eq!(listed.len(), mine.len(), "{key:?}");
        for (shown, a) in listed.iter().zip(&mine) {
            assert_eq!(shown["change"], money(&a.sums), "{key:?}");
        }
        assert_eq!(
            day["state"], "closed",
            "{key:?}: every day of the stream closed"
        );
    }
}
