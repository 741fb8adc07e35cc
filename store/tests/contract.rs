//! The store's contract, the same for both databases: every test runs on a
//! fresh PostgreSQL database (`TALLY_TEST_PG_URL`, which `scripts/test`
//! provides) and on a fresh SQLite file.
//!
//! - fences: a zombie's partial, a replay and a gap change nothing; one
//!   partial given twice in a flush is applied once;
//! - claims: each claim raises the epoch and hands over the fence;
//! - jobs: a task is leased to one runner; an expired lease is taken over,
//!   and the old runner can then neither renew nor finish it; attempts are
//!   counted; a retry waits for its time; a final failure fails the job;
//! - the completion swap replaces exactly the job's scope of the totals.

use schemas::partial::EventCounts;
use schemas::{
    Amount, Day, LocalRow, LocalSums, LocalTotals, Partial, PartialRow, Sums, Totals, TotalsKey,
};
use store::jobs::{Kind, NewJob, NewTask, Scope, State, TaskResult};
use store::Store;
use testkit::Backend;

async fn fresh(backend: Backend, test: &str) -> Fresh {
    let url = fresh_url(backend, test).await;
    Fresh {
        store: Some(Store::connect(&url).await.unwrap()),
        file: url.strip_prefix("sqlite://").map(std::path::PathBuf::from),
    }
}

/// A test's store; its SQLite files, if it has any, go with it.
struct Fresh {
    store: Option<Store>,
    file: Option<std::path::PathBuf>,
}

impl std::ops::Deref for Fresh {
    type Target = Store;

    fn deref(&self) -> &Store {
        self.store.as_ref().expect("open until dropped")
    }
}

impl Drop for Fresh {
    fn drop(&mut self) {
        drop(self.store.take());
        if let Some(file) = &self.file {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
            }
        }
    }
}

async fn fresh_url(backend: Backend, test: &str) -> String {
    testkit::fresh_database(backend, &testkit::unique(&format!("contract_{test}"))).await
}

const DAY: Day = Day(20_777); // 2026-11-20

fn key(merchant: &str, day: Day) -> TotalsKey {
    TotalsKey {
        merchant_id: merchant.into(),
        currency: "EUR".into(),
        day,
    }
}

fn sale(units: i128, count: i64) -> Sums {
    Sums {
        sales_amount: Amount(units),
        sales_count: count,
        ..Sums::default()
    }
}

/// A partial of offsets `[first, last]` of partition 0: one sale of `units`.
fn partial(topic: &str, epoch: i64, first: i64, last: i64, merchant: &str, units: i128) -> Partial {
    Partial {
        topic: topic.to_owned(),
        partition: 0,
        epoch,
        first_offset: first,
        last_offset: last,
        dedupe_from_offset: first,
        dedupe_clock_ms: None,
        events: EventCounts {
            counted: 1,
            ..EventCounts::default()
        },
        max_append_ms: None,
        local_rows: Vec::new(),
        rows: vec![PartialRow {
            key: key(merchant, DAY),
            sums: sale(units, 1),
        }],
    }
}

/// Runs `$test` once per backend.
macro_rules! on_both {
    ($test:ident) => {
        mod $test {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$test(super::Backend::Postgres).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$test(super::Backend::Sqlite).await
            }
        }
    };
}

on_both!(fences_keep_zombies_replays_and_gaps_out);
async fn fences_keep_zombies_replays_and_gaps_out(backend: Backend) {
    let store = fresh(backend, "fences").await;
    let first = store.claim("orders", 0, "worker-a").await.unwrap();
    let plan = store
        .apply(&[partial("orders", first.epoch, 0, 9, "m-1", 10_000)])
        .await
        .unwrap();
    assert_eq!(plan.applied, 1);

    // worker-b takes the partition; worker-a is a zombie from now on.
    let second = store.claim("orders", 0, "worker-b").await.unwrap();
    assert_eq!((second.epoch, second.next_offset), (first.epoch + 1, 10));
    let zombie = partial("orders", first.epoch, 10, 19, "m-1", 1_000_000);
    let replay = partial("orders", second.epoch, 0, 9, "m-1", 1_000_000);
    let gap = partial("orders", second.epoch, 15, 19, "m-1", 1_000_000);
    let plan = store.apply(&[zombie, replay, gap]).await.unwrap();
    assert_eq!(
        (
            plan.applied,
            plan.older_epoch,
            plan.already_applied,
            plan.violations.len()
        ),
        (0, 1, 1, 1)
    );
    // The gap is at the current epoch: marked, for its worker to claim again.
    let standing = store.epoch("orders", 0).await.unwrap().unwrap();
    assert!(standing.gap(), "{standing:?}");
    assert_eq!(plan.gaps, vec![(("orders".to_owned(), 0), second.epoch)]);

    // The same partial twice in one flush (a re-delivery) counts once.
    let next = partial("orders", second.epoch, 10, 19, "m-1", 5_000);
    assert_eq!(store.apply(&[next.clone(), next]).await.unwrap().applied, 1);

    let totals = store.totals(None).await.unwrap();
    assert_eq!(totals, Totals::from([(key("m-1", DAY), sale(15_000, 2))]));
    let progress = store.progress().await.unwrap();
    assert_eq!(progress.len(), 1);
    assert_eq!(progress[0].fence.next_offset, 20);
    // A new claim leaves the gap behind with its epoch.
    let third = store.claim("orders", 0, "worker-b").await.unwrap();
    let standing = store.epoch("orders", 0).await.unwrap().unwrap();
    assert_eq!(standing.epoch, third.epoch);
    assert!(!standing.gap());
}

on_both!(claims_raise_the_epoch_and_hand_over_the_fence);
async fn claims_raise_the_epoch_and_hand_over_the_fence(backend: Backend) {
    let store = fresh(backend, "claims").await;
    assert_eq!(
        store.epoch("orders", 3).await.unwrap().map(|s| s.epoch),
        None
    );
    let first = store.claim("orders", 3, "worker-a").await.unwrap();
    assert_eq!((first.epoch, first.next_offset), (1, 0));
    let mut p = partial("orders", first.epoch, 0, 41, "m-1", 1);
    p.partition = 3;
    store.apply(&[p]).await.unwrap();

    let second = store.claim("orders", 3, "worker-b").await.unwrap();
    assert_eq!((second.epoch, second.next_offset), (2, 42));
    // A claim by the same owner again (a restart) is a new epoch too.
    let third = store.claim("orders", 3, "worker-b").await.unwrap();
    assert_eq!((third.epoch, third.next_offset), (3, 42));
    assert_eq!(
        store.epoch("orders", 3).await.unwrap().map(|s| s.epoch),
        Some(3)
    );
    // Other partitions and topics are their own.
    assert_eq!(store.claim("orders", 4, "worker-a").await.unwrap().epoch, 1);
    assert_eq!(store.claim("other", 3, "worker-a").await.unwrap().epoch, 1);
    let progress = store.progress().await.unwrap();
    let three = progress
        .iter()
        .find(|p| p.topic == "orders" && p.partition == 3)
        .unwrap();
    assert_eq!(three.claimed_by.as_deref(), Some("worker-b"));
}

fn backfill(scope: Scope, tasks: usize) -> NewJob {
    NewJob {
        kind: Kind::Backfill,
        source: "file:///data/orders/".into(),
        format: Some(schemas::job::Format::Ndjson),
        scope,
        schedule: None,
        tasks: (0..tasks)
            .map(|shard| NewTask {
                shard: shard as i32,
                shards: tasks as i32,
                files: vec![format!("part-{shard}.ndjson")],
                size: 100,
                version: None,
            })
            .collect(),
        after: Vec::new(),
    }
}

fn one_day(merchants: &[&str]) -> Scope {
    Scope {
        from: DAY,
        to: Day(DAY.0 + 1),
        merchants: merchants.iter().map(|m| (*m).to_owned()).collect(),
    }
}

/// The same sums as local-day rows in `zone` (the keys' days as local days).
fn local(totals: &Totals, zone: &'static str) -> LocalTotals {
    totals
        .iter()
        .map(|(key, sums)| {
            let row = LocalSums {
                time_zone: zone.into(),
                sums: *sums,
            };
            (key.clone(), row)
        })
        .collect()
}

/// The same, as a partial's local rows.
fn local_rows(totals: &Totals, zone: &'static str) -> Vec<LocalRow> {
    local(totals, zone)
        .into_iter()
        .map(|(key, local)| LocalRow {
            merchant_id: key.merchant_id.into(),
            currency: key.currency.into(),
            local_day: key.day,
            local,
        })
        .collect()
}

fn result(totals: Totals) -> TaskResult {
    TaskResult {
        local: local(&totals, "Asia/Tokyo"),
        totals,
        rows_read: 1,
        rows_rejected: 0,
        rows_duplicate: 0,
        rejections: Default::default(),
    }
}

on_both!(a_task_is_leased_to_one_runner_and_taken_over_when_the_lease_ends);
async fn a_task_is_leased_to_one_runner_and_taken_over_when_the_lease_ends(backend: Backend) {
    let store = fresh(backend, "leases").await;
    let id = store
        .create_job(&backfill(one_day(&[]), 2), 0)
        .await
        .unwrap();
    let a = store
        .claim_task("runner-a", 0, 100)
        .await
        .unwrap()
        .expect("a task for a");
    let b = store
        .claim_task("runner-b", 10, 110)
        .await
        .unwrap()
        .expect("the other task for b");
    assert_eq!((a.job_id, b.job_id), (id, id));
    assert_ne!(a.task_no, b.task_no);
    assert_eq!((a.attempts, b.attempts), (1, 1));
    // Both leased: nothing for a third runner.
    assert!(store
        .claim_task("runner-c", 50, 150)
        .await
        .unwrap()
        .is_none());
    assert_eq!(store.job(id).await.unwrap().unwrap().state, State::Running);
    // a renews in time; b does not, and c takes b's task over after its lease.
    assert!(store
        .renew_task(id, a.task_no, "runner-a", 300)
        .await
        .unwrap());
    let c = store
        .claim_task("runner-c", 120, 400)
        .await
        .unwrap()
        .expect("b's lease ran out");
    assert_eq!((c.task_no, c.attempts), (b.task_no, 2));
    // The old runner can neither renew nor finish what is no longer its own.
    assert!(!store
        .renew_task(id, b.task_no, "runner-b", 500)
        .await
        .unwrap());
    let totals = Totals::from([(key("m-1", DAY), sale(7, 1))]);
    assert!(!store
        .finish_task(id, b.task_no, "runner-b", &result(totals.clone()), 130)
        .await
        .unwrap());
    assert!(store
        .finish_task(id, c.task_no, "runner-c", &result(totals.clone()), 130)
        .await
        .unwrap());
    assert!(store
        .finish_task(id, a.task_no, "runner-a", &result(Totals::new()), 140)
        .await
        .unwrap());
    assert_eq!(store.complete_jobs(150).await.unwrap(), vec![id]);
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, State::Succeeded);
    // b's result was refused, so the sale is counted once.
    assert_eq!(store.totals(None).await.unwrap(), totals);
}

on_both!(a_retry_waits_for_its_time_and_a_final_failure_fails_the_job);
async fn a_retry_waits_for_its_time_and_a_final_failure_fails_the_job(backend: Backend) {
    let store = fresh(backend, "retries").await;
    let id = store
        .create_job(&backfill(one_day(&[]), 2), 0)
        .await
        .unwrap();
    let first = store.claim_task("runner-a", 0, 100).await.unwrap().unwrap();
    store
        .fail_task(
            id,
            first.task_no,
            "runner-a",
            "the bucket is away",
            10,
            Some(500),
        )
        .await
        .unwrap();
    // Only the other task is runnable before the retry time.
    let other = store
        .claim_task("runner-a", 20, 1_000)
        .await
        .unwrap()
        .unwrap();
    assert_ne!(other.task_no, first.task_no);
    assert!(store
        .claim_task("runner-b", 400, 1_000)
        .await
        .unwrap()
        .is_none());
    let again = store
        .claim_task("runner-b", 500, 1_000)
        .await
        .unwrap()
        .expect("due at 500");
    assert_eq!((again.task_no, again.attempts), (first.task_no, 2));
    assert_eq!(again.last_error.as_deref(), Some("the bucket is away"));
    // A failure without a retry fails the job and cancels its other task.
    store
        .fail_task(id, again.task_no, "runner-b", "unreadable file", 600, None)
        .await
        .unwrap();
    let job = store.job(id).await.unwrap().unwrap();
    assert_eq!(job.state, State::Failed);
    let states: Vec<State> = job.tasks.iter().map(|t| t.state).collect();
    assert!(
        states.contains(&State::Failed) && states.contains(&State::Cancelled),
        "{states:?}"
    );
    assert!(store
        .claim_task("runner-c", 700, 1_000)
        .await
        .unwrap()
        .is_none());
    assert!(store.complete_jobs(800).await.unwrap().is_empty());
}

on_both!(the_completion_swap_replaces_exactly_the_job_scope);
async fn the_completion_swap_replaces_exactly_the_job_scope(backend: Backend) {
    let store = fresh(backend, "swap").await;
    // The live table: m-1 and m-2 on DAY, m-1 the day after.
    let claim = store.claim("orders", 0, "worker-a").await.unwrap();
    let mut live = partial("orders", claim.epoch, 0, 9, "m-1", 100);
    live.rows.push(PartialRow {
        key: key("m-2", DAY),
        sums: sale(200, 1),
    });
    live.rows.push(PartialRow {
        key: key("m-1", Day(DAY.0 + 1)),
        sums: sale(300, 1),
    });
    // The same events by local day, in a zone a stream counted them in.
    let streamed: Totals = live.rows.iter().map(|r| (r.key.clone(), r.sums)).collect();
    live.local_rows = local_rows(&streamed, "Europe/Berlin");
    store.apply(&[live]).await.unwrap();
    assert_eq!(
        store.local_totals(None).await.unwrap(),
        local(&streamed, "Europe/Berlin")
    );

    // A backfill of DAY for m-1 only, whose files say m-1 sold 1,000 in two
    // sales and also name m-2 (outside the scope: must not be written).
    let id = store
        .create_job(&backfill(one_day(&["m-1"]), 1), 0)
        .await
        .unwrap();
    let task = store.claim_task("runner", 0, 100).await.unwrap().unwrap();
    let recomputed = Totals::from([
        (key("m-1", DAY), sale(1_000, 2)),
        (key("m-2", DAY), sale(9_999, 9)),
    ]);
    assert!(store
        .finish_task(id, task.task_no, "runner", &result(recomputed), 10)
        .await
        .unwrap());
    assert_eq!(store.complete_jobs(20).await.unwrap(), vec![id]);
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        State::Succeeded
    );

    let want = Totals::from([
        (key("m-1", DAY), sale(1_000, 2)),
        (key("m-2", DAY), sale(200, 1)),
        (key("m-1", Day(DAY.0 + 1)), sale(300, 1)),
    ]);
    assert_eq!(store.totals(None).await.unwrap(), want);
    // The local table keeps every streamed row: neither Berlin's day nor
    // Tokyo's lies wholly inside one UTC day, so the files cannot hold all
    // of either, and a replace would erase streamed events.
    let want_local = local(&streamed, "Europe/Berlin");
    assert_eq!(store.local_totals(None).await.unwrap(), want_local);
    // Completing again changes nothing.
    assert!(store.complete_jobs(30).await.unwrap().is_empty());
    assert_eq!(store.totals(None).await.unwrap(), want);
    assert_eq!(store.local_totals(None).await.unwrap(), want_local);
}

on_both!(reads_rank_exactly_and_keep_to_the_range);
#[expect(
    clippy::too_many_lines,
    reason = "each read compared with sums the test computes, over one data set"
)]
async fn reads_rank_exactly_and_keep_to_the_range(backend: Backend) {
    use store::reads::Basis;
    let store = fresh(backend, "reads").await;
    let claim = store.claim("orders", 0, "worker-a").await.unwrap();
    // Nets that text order gets wrong: negative ones, different lengths,
    // the same length, a tie (broken by merchant id, bytewise), and amounts
    // beyond a float's 15 exact digits that differ only in the last one.
    let nets: [(&str, &str, i128, i128); 9] = [
        ("m-a", "EUR", 5_0000, 0),
        ("m-b", "EUR", 10_0000, 0),
        ("m-c", "EUR", 9_0000, 0),
        ("m-d", "EUR", 1_0000, 6_0000),                // -5
        ("m-e", "EUR", 1_0000, 11_0000),               // -10
        ("M-f", "EUR", 9_0000, 0),                     // ties m-c; 'M' < 'm' bytewise
        ("m-g", "EUR", 12_345_678_901_234_567_891, 0), // 1234567890123456.7891
        ("m-h", "EUR", 12_345_678_901_234_567_892, 0), // …6.7892
        ("m-a", "USD", 7_0000, 0),
    ];
    let mut live = partial("orders", claim.epoch, 0, 9, "m-a", 1);
    live.rows.clear();
    for (merchant, currency, sales, refunds) in nets {
        let sums = Sums {
            sales_amount: Amount(sales),
            sales_count: 1,
            refund_amount: Amount(refunds),
            refund_count: i64::from(refunds > 0),
        };
        let key = TotalsKey {
            merchant_id: merchant.into(),
            currency: currency.into(),
            day: DAY,
        };
        live.rows.push(PartialRow { key, sums });
    }
    // m-a also sold on the days either side, and in Tokyo's calendar.
    for day in [Day(DAY.0 - 1), Day(DAY.0 + 1)] {
        live.rows.push(PartialRow {
            key: key("m-a", day),
            sums: sale(1_0000, 1),
        });
    }
    let streamed: Totals = live.rows.iter().map(|r| (r.key.clone(), r.sums)).collect();
    live.local_rows = local_rows(&streamed, "Asia/Tokyo");
    store.apply(&[live]).await.unwrap();

    // The ranking, computed here: net descending, exact; ties by id bytes.
    let mut euro: Vec<(Amount, &str)> = streamed
        .iter()
        .filter(|(k, _)| k.day == DAY && k.currency == "EUR")
        .map(|(k, s)| (s.net_amount(), k.merchant_id.as_str()))
        .collect();
    euro.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.as_bytes().cmp(b.1.as_bytes())));
    for basis in [Basis::Utc, Basis::Local] {
        let top = store
            .top_merchants(DAY, Some("EUR"), basis, 100)
            .await
            .unwrap();
        let got: Vec<(Amount, &str)> = top
            .iter()
            .map(|r| (r.sums.net_amount(), r.merchant_id.as_str()))
            .collect();
        assert_eq!(got, euro, "{basis:?}");
        let zone = if basis == Basis::Utc {
            "UTC"
        } else {
            "Asia/Tokyo"
        };
        assert!(top.iter().all(|r| r.time_zone == zone && r.day == DAY));
        // Without a currency: the top 3 of each currency, by currency.
        let top = store.top_merchants(DAY, None, basis, 3).await.unwrap();
        let got: Vec<(&str, &str)> = top
            .iter()
            .map(|r| (r.currency.as_str(), r.merchant_id.as_str()))
            .collect();
        let mut want: Vec<(&str, &str)> = euro[..3].iter().map(|(_, m)| ("EUR", *m)).collect();
        want.push(("USD", "m-a"));
        assert_eq!(got, want, "{basis:?}");

        // A range includes both ends and nothing outside them.
        let days = |from: i32, to: i32, currency: Option<&'static str>| {
            let store = &store;
            async move {
                store
                    .merchant_days("m-a", [Day(DAY.0 + from), Day(DAY.0 + to)], currency, basis)
                    .await
                    .unwrap()
                    .into_iter()
                    .map(|r| (r.day.0 - DAY.0, r.currency, r.sums))
                    .collect::<Vec<_>>()
            }
        };
        let row =
            |day: i32, currency: &str, units: i128| (day, currency.to_owned(), sale(units, 1));
        assert_eq!(
            days(-1, 1, None).await,
            vec![
                row(-1, "EUR", 1_0000),
                row(0, "EUR", 5_0000),
                row(0, "USD", 7_0000),
                row(1, "EUR", 1_0000)
            ]
        );
        assert_eq!(days(0, 0, Some("USD")).await, vec![row(0, "USD", 7_0000)]);
        assert_eq!(days(2, 30, None).await, vec![]);
        assert!(store
            .merchant_days("nobody", [DAY, DAY], None, basis)
            .await
            .unwrap()
            .is_empty());
    }
    // Each row says when it changed, as RFC 3339 in UTC.
    let row = &store
        .merchant_days("m-a", [DAY, DAY], Some("EUR"), Basis::Utc)
        .await
        .unwrap()[0];
    assert!(
        row.updated_at.len() >= 24
            && row.updated_at.ends_with('Z')
            && &row.updated_at[10..11] == "T",
        "{}",
        row.updated_at
    );
}

/// Two aggregators complete two overlapping backfills at the same moment on
/// PostgreSQL: the first replace is held open (the test holds a lock its
/// local-day delete must wait for) while the second starts. The table ends
/// as either job alone makes it, never with the overlap counted twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_replaces_completing_together_count_the_overlap_once() {
    let url = fresh_url(Backend::Postgres, "overlap").await;
    let (a, b) = (
        Store::connect(&url).await.unwrap(),
        Store::connect(&url).await.unwrap(),
    );
    let claim = a.claim("orders", 0, "worker-a").await.unwrap();
    let mut live = partial("orders", claim.epoch, 0, 9, "m-1", 100);
    live.rows.push(PartialRow {
        key: key("m-2", DAY),
        sums: sale(200, 1),
    });
    a.apply(&[live]).await.unwrap();
    // Both jobs recompute DAY for every merchant, from the same files.
    let recomputed = Totals::from([
        (key("m-1", DAY), sale(1_000, 2)),
        (key("m-2", DAY), sale(50, 1)),
    ]);
    let first = a.create_job(&backfill(one_day(&[]), 1), 0).await.unwrap();
    let second = a.create_job(&backfill(one_day(&[]), 1), 0).await.unwrap();
    // The second job's task first: it is complete alone.
    let task_of_first = a.claim_task("runner", 0, 100).await.unwrap().unwrap();
    finish(&a, second, &recomputed).await;

    let (admin, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    admin
        .batch_execute("BEGIN; LOCK TABLE merchant_sales_local IN SHARE MODE")
        .await
        .unwrap();
    // Another session watches: one inside a transaction sees a frozen pg_stat_activity.
    let (watch, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(connection);
    // Aggregator A completes the second job and stops inside its replace,
    // with its new merchant_sales rows written and not committed.
    let completing = tokio::spawn(async move { a.complete_jobs(20).await.map(|done| (a, done)) });
    wait_for_lock_waits(&watch, 1).await;
    // Meanwhile the first job's task finishes, and aggregator B completes it.
    assert!(b
        .finish_task(
            first,
            task_of_first.task_no,
            "runner",
            &result(recomputed.clone()),
            10
        )
        .await
        .unwrap());
    let b = std::sync::Arc::new(b);
    let also = {
        let b = b.clone();
        tokio::spawn(async move { b.complete_jobs(30).await })
    };
    wait_for_lock_waits(&watch, 2).await;
    admin.batch_execute("ROLLBACK").await.unwrap();
    let (a, done_a) = completing.await.unwrap().unwrap();
    let done_b = also.await.unwrap().unwrap();
    let mut done = [done_a, done_b].concat();
    done.sort_unstable();
    assert_eq!(done, vec![first, second]);
    assert_eq!(a.totals(None).await.unwrap(), recomputed);

    // The same job again gives the same table.
    let again = a.create_job(&backfill(one_day(&[]), 1), 0).await.unwrap();
    finish(&a, again, &recomputed).await;
    assert_eq!(a.complete_jobs(40).await.unwrap(), vec![again]);
    assert_eq!(b.totals(None).await.unwrap(), recomputed);
}

/// Streams a sale of 100 units for each of `merchants` on each of `days`,
/// with its local rows in `zone`; returns the streamed totals.
async fn stream(store: &Store, merchants: &[&str], days: &[Day], zone: &'static str) -> Totals {
    let claim = store.claim("orders", 0, "worker-a").await.unwrap();
    let mut live = partial("orders", claim.epoch, 0, 9, "m-1", 100);
    live.rows = (days.iter())
        .flat_map(|&d| {
            merchants.iter().map(move |m| PartialRow {
                key: key(m, d),
                sums: sale(100, 1),
            })
        })
        .collect();
    let streamed: Totals = live.rows.iter().map(|r| (r.key.clone(), r.sums)).collect();
    live.local_rows = local_rows(&streamed, zone);
    store.apply(&[live]).await.unwrap();
    streamed
}

/// Backfills UTC days `[from, to)` of every merchant with one task whose
/// files hold 7,000 units in 7 sales for `m-1` on each of `days` (its local
/// rows in Tokyo), and checks the UTC table then holds just those.
async fn backfill_m1(store: &Store, (from, to): (Day, Day), days: &[Day]) {
    let scope = Scope {
        from,
        to,
        merchants: Vec::new(),
    };
    let id = store.create_job(&backfill(scope, 1), 0).await.unwrap();
    let recomputed: Totals = (days.iter())
        .map(|&d| (key("m-1", d), sale(7_000, 7)))
        .collect();
    finish(store, id, &recomputed).await;
    assert_eq!(store.complete_jobs(20).await.unwrap(), vec![id]);
    assert_eq!(store.totals(None).await.unwrap(), recomputed);
}

/// Claims the next task, which must be `job`'s, and finishes it with `totals`.
async fn finish(store: &Store, job: i64, totals: &Totals) {
    let task = store.claim_task("runner", 0, 100).await.unwrap().unwrap();
    assert_eq!(task.job_id, job);
    assert!(store
        .finish_task(job, task.task_no, "runner", &result(totals.clone()), 10)
        .await
        .unwrap());
}

/// Waits until `n` sessions of the test's database wait for a lock.
async fn wait_for_lock_waits(watch: &tokio_postgres::Client, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let waiting: i64 = watch
            .query_one(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting >= n {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{waiting} of {n} completions waiting for a lock"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

on_both!(the_default_zone_lives_in_the_database);
/// Once the database holds a default zone, every role's zone map uses it,
/// whatever default the role was configured with.
async fn the_default_zone_lives_in_the_database(backend: Backend) {
    use schemas::zone::Zone;
    let store = fresh(backend, "default_zone").await;
    let (tokyo, berlin) = (
        Zone::parse("Asia/Tokyo").unwrap(),
        Zone::parse("Europe/Berlin").unwrap(),
    );
    store
        .set_zones(&[("m-1".to_owned(), berlin)], 0)
        .await
        .unwrap();
    assert_eq!(store.default_zone().await.unwrap(), None);
    assert_eq!(
        store.zone_map(tokyo).await.unwrap().of("m-2"),
        tokyo,
        "configured default"
    );
    store.set_default_zone(Zone::UTC, 1).await.unwrap();
    store.set_default_zone(berlin, 2).await.unwrap();
    assert_eq!(store.default_zone().await.unwrap(), Some(berlin));
    for configured in [tokyo, Zone::UTC] {
        let zones = store.zone_map(configured).await.unwrap();
        assert_eq!((zones.of("m-1"), zones.of("m-2")), (berlin, berlin));
    }
}

on_both!(a_swap_replaces_the_local_days_wholly_inside_its_scope);
/// A backfill of three UTC days swaps in, for each zone, only the local days
/// wholly inside them: Berlin's and Tokyo's first local day of the range
/// began the UTC day before, so it keeps its streamed row.
async fn a_swap_replaces_the_local_days_wholly_inside_its_scope(backend: Backend) {
    let store = fresh(backend, "local_swap").await;
    let days = [Day(DAY.0 - 1), DAY, Day(DAY.0 + 1)];
    stream(&store, &["m-1"], &days, "Europe/Berlin").await;

    backfill_m1(&store, (days[0], Day(DAY.0 + 2)), &days).await;
    let tokyo = |d: Day| {
        (
            key("m-1", d),
            LocalSums {
                time_zone: "Asia/Tokyo".into(),
                sums: sale(7_000, 7),
            },
        )
    };
    let berlin = (
        key("m-1", days[0]),
        LocalSums {
            time_zone: "Europe/Berlin".into(),
            sums: sale(100, 1),
        },
    );
    let want: LocalTotals = [berlin, tokyo(days[1]), tokyo(days[2])]
        .into_iter()
        .collect();
    assert_eq!(store.local_totals(None).await.unwrap(), want);
}

on_both!(a_local_row_another_zone_left_is_added_to_and_keeps_its_zone);
/// A merchant that moved from New York to Tokyo: the swap deletes New
/// York's whole local days inside the scope and adds Tokyo's, and where a
/// New York day the scope does not hold wholly meets a Tokyo day it does,
/// the row left standing takes the staged sums and keeps its zone.
async fn a_local_row_another_zone_left_is_added_to_and_keeps_its_zone(backend: Backend) {
    let store = fresh(backend, "zone_moved").await;
    let days = [DAY, Day(DAY.0 + 1), Day(DAY.0 + 2)];
    stream(&store, &["m-1"], &days, "America/New_York").await;

    // UTC days DAY..DAY+2: New York's whole local days are DAY and DAY+1,
    // Tokyo's DAY+1 and DAY+2 (the task's local rows are Tokyo's).
    backfill_m1(&store, (DAY, Day(DAY.0 + 3)), &days).await;
    let row = |d: Day, zone: &'static str, sums: Sums| {
        let local = LocalSums {
            time_zone: zone.into(),
            sums,
        };
        (key("m-1", d), local)
    };
    let mut both = sale(100, 1);
    both.merge(&sale(7_000, 7));
    let want: LocalTotals = [
        row(days[1], "Asia/Tokyo", sale(7_000, 7)),
        row(days[2], "America/New_York", both),
    ]
    .into_iter()
    .collect();
    assert_eq!(store.local_totals(None).await.unwrap(), want);
}

on_both!(a_job_finished_whole_swaps_in_what_its_tasks_finished_one_by_one_would);
/// The runner that ran every task of a job finishes them and completes the
/// job at once, without staging the rows: the tables, the job and its
/// tasks end as if each task had finished on its own and the job completed
/// after. A job with a task another runner holds is left untouched.
async fn a_job_finished_whole_swaps_in_what_its_tasks_finished_one_by_one_would(backend: Backend) {
    let scope = Scope {
        from: DAY,
        to: Day(DAY.0 + 3),
        merchants: vec!["m-1".into(), "m-2".into()],
    };
    let days = [Day(DAY.0 - 1), DAY, Day(DAY.0 + 1), Day(DAY.0 + 2)];
    // Each shard's rows: m-1's and m-2's, on days in and out of the scope
    // (compute keeps to the scope; the swap must too), and in the first,
    // m-3's, whom the scope does not name.
    let shard = |merchants: &[&str], units: i128| -> Totals {
        (days.iter())
            .flat_map(|&d| merchants.iter().map(move |m| (key(m, d), sale(units, 1))))
            .collect()
    };
    let results = [
        (0, result(shard(&["m-1", "m-3"], 7_000))),
        (1, result(shard(&["m-2"], 3_000))),
    ];
    let mut ends = Vec::new();
    for whole in [false, true] {
        let store = fresh(backend, if whole { "whole" } else { "by_task" }).await;
        // Streamed totals, with local days in New York.
        let streamed = stream(&store, &["m-1", "m-2", "m-3"], &days, "America/New_York").await;
        let id = store
            .create_job(&backfill(scope.clone(), 2), 0)
            .await
            .unwrap();
        let mut claimed = Vec::new();
        for _ in 0..2 {
            claimed.push(
                store
                    .claim_task("runner", 0, 100)
                    .await
                    .unwrap()
                    .unwrap()
                    .task_no,
            );
        }
        claimed.sort_unstable();
        assert_eq!(claimed, [0, 1]);
        if whole {
            // Not every task: refused, and nothing written.
            let one: std::sync::Arc<[(i32, TaskResult)]> = results[..1].to_vec().into();
            assert!(!store.finish_job(id, "runner", one, 10).await.unwrap());
            // Another runner's: refused too.
            let all: std::sync::Arc<[(i32, TaskResult)]> = results.to_vec().into();
            assert!(!store
                .finish_job(id, "other", all.clone(), 10)
                .await
                .unwrap());
            assert_eq!(store.job(id).await.unwrap().unwrap().state, State::Running);
            assert_eq!(store.totals(None).await.unwrap(), streamed);
            assert!(store.finish_job(id, "runner", all, 10).await.unwrap());
            assert!(store.complete_jobs(20).await.unwrap().is_empty());
        } else {
            for (task_no, result) in &results {
                assert!(store
                    .finish_task(id, *task_no, "runner", result, 10)
                    .await
                    .unwrap());
            }
            assert_eq!(store.complete_jobs(20).await.unwrap(), vec![id]);
        }
        let job = store.job(id).await.unwrap().unwrap();
        assert_eq!(job.state, State::Succeeded);
        let tasks: Vec<(i32, State, i64)> = job
            .tasks
            .iter()
            .map(|t| (t.task_no, t.state, t.rows_read))
            .collect();
        ends.push((
            store.totals(None).await.unwrap(),
            store.local_totals(None).await.unwrap(),
            job.keys_written,
            tasks,
        ));
    }
    assert_eq!(ends[0], ends[1]);
    // And what both wrote: the scope's UTC days replaced for m-1 and m-2.
    let (totals, _, written, _) = &ends[0];
    for (key, sums) in totals {
        let replaced = scope.contains(&key.merchant_id, key.day);
        let want = match (replaced, key.merchant_id.as_str()) {
            (true, "m-1") => sale(7_000, 1),
            (true, _) => sale(3_000, 1),
            (false, _) => sale(100, 1),
        };
        assert_eq!(*sums, want, "{key:?}");
    }
    assert_eq!(*written, Some(6));
}

on_both!(closed_days_keep_their_totals_and_every_change_after_is_an_adjustment);
/// A close run copies the days that ended before completeness less grace,
/// with the fences it read; a later partial, a backfill and an import that
/// change a closed day each record the change, so closed + adjustments =
/// current on both bases.
#[expect(
    clippy::too_many_lines,
    reason = "one story: close, then each kind of change to a closed day"
)]
async fn closed_days_keep_their_totals_and_every_change_after_is_an_adjustment(backend: Backend) {
    use store::closes::Source;
    use store::reads::Basis;
    let store = fresh(backend, "closes").await;
    let claim = store.claim("orders", 0, "worker-a").await.unwrap();
    let next = Day(DAY.0 + 1);
    let mut live = partial("orders", claim.epoch, 0, 9, "m-1", 100);
    live.rows.push(PartialRow {
        key: key("m-1", next),
        sums: sale(300, 1),
    });
    let streamed: Totals = live.rows.iter().map(|r| (r.key.clone(), r.sums)).collect();
    live.local_rows = local_rows(&streamed, "Asia/Tokyo");
    store.apply(&[live]).await.unwrap();

    // Completeness at the end of DAY plus an hour, grace one hour: DAY
    // closes (UTC, and Tokyo's DAY, which ended nine hours earlier); the
    // day after does not.
    let day_end = (i64::from(DAY.0) + 1) * 86_400_000;
    let hour = 3_600_000;
    let run = store
        .close_days(day_end + hour, hour, 7)
        .await
        .unwrap()
        .expect("a day is due");
    assert_eq!(run.closed_through_ms, day_end);
    assert_eq!(run.frontier, [("orders/0".to_owned(), 10)].into());
    assert_eq!(run.rows_closed, 2, "{run:?}");
    // Nothing more is due at the same completeness.
    assert_eq!(
        store.close_days(day_end + hour, hour, 8).await.unwrap(),
        None
    );
    let range = [Day(DAY.0 - 3), Day(DAY.0 + 3)];
    for basis in [Basis::Utc, Basis::Local] {
        let closes = store.closes(None, basis, range).await.unwrap();
        assert_eq!(closes.len(), 1, "{basis:?}: {closes:?}");
        assert_eq!(
            (closes[0].key.clone(), closes[0].sums),
            (key("m-1", DAY), sale(100, 1))
        );
    }

    // A late sale for DAY: applied, and an adjustment with its offsets.
    // Its local row names another zone, as after the merchant's zone
    // changed: the stored row keeps Tokyo's day, closed, so it is an
    // adjustment too (Los Angeles's day has not ended yet).
    let mut late = partial("orders", claim.epoch, 10, 14, "m-1", 40);
    late.local_rows = local_rows(
        &Totals::from([(key("m-1", DAY), sale(40, 1))]),
        "America/Los_Angeles",
    );
    let plan = store.apply(&[late]).await.unwrap();
    assert_eq!(plan.adjustments.len(), 2, "{plan:?}");
    let local = store.adjustments(None, Basis::Local, range).await.unwrap();
    assert_eq!(
        (local.len(), local[0].time_zone.as_str()),
        (1, "Asia/Tokyo")
    );
    let adjustments = store.adjustments(None, Basis::Utc, range).await.unwrap();
    assert_eq!(adjustments.len(), 1);
    assert_eq!(adjustments[0].sums, sale(40, 1));
    assert_eq!(
        adjustments[0].source,
        Source::Stream {
            topic: "orders".into(),
            partition: 0,
            first_offset: 10,
            last_offset: 14
        }
    );

    // A backfill of DAY whose files say 1,000 in two sales (and Tokyo's
    // local rows the same): the swap records the difference with its job.
    let id = store
        .create_job(&backfill(one_day(&[]), 1), 0)
        .await
        .unwrap();
    finish(
        &store,
        id,
        &Totals::from([(key("m-1", DAY), sale(1_000, 2))]),
    )
    .await;
    assert_eq!(store.complete_jobs(20).await.unwrap(), vec![id]);
    let adjustments = store.adjustments(None, Basis::Utc, range).await.unwrap();
    assert_eq!(adjustments.len(), 2, "{adjustments:?}");
    assert_eq!(adjustments[1].source, Source::Job { job_id: id });
    assert_eq!(adjustments[1].sums, sale(1_000 - 140, 0));

    // The invariant, on both bases, read through the merchant's days.
    for basis in [Basis::Utc, Basis::Local] {
        let days = store
            .merchant_days_closed("m-1", range, basis)
            .await
            .unwrap();
        assert_eq!(days.closed_through_ms, Some(day_end));
        for record in &days.days {
            let closed = record.day == DAY;
            if closed {
                let mut sum = record.closed;
                sum.merge(&record.adjusted);
                assert_eq!(sum, record.current, "{basis:?}: {record:?}");
            }
            assert_eq!(
                record.state,
                if closed {
                    store::closes::DayState::Closed
                } else {
                    store::closes::DayState::Open
                },
                "{record:?}"
            );
            if !closed {
                assert!(record.adjustments.is_empty() && record.close_run.is_none());
            }
        }
    }
    let utc = store
        .merchant_days_closed("m-1", range, Basis::Utc)
        .await
        .unwrap();
    assert_eq!(utc.days[0].current, sale(1_000, 2));
}
