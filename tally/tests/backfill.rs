//! Backfills on PostgreSQL and SQLite, run by a real `tally aggregator`:
//! exact totals from Parquet, CSV and NDJSON with invalid rows and
//! duplicates; retries that recover and retries that give up without
//! touching the table; cancellation; `tally verify` naming exactly the
//! keys changed by hand; and the same from an S3-compatible server.

mod common;
mod files;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::{assert_totals_equal, expected_totals, Backend, World};
use files::{
    events, execute, s3_env, stdout, table_bytes, tally, tally_with, upload, wait_for_job,
    write_files, write_ndjson, write_parquet,
};
use ingest::load::generate::{Generated, Generator, GeneratorConfig, Truth};
use schemas::{Day, Totals};

const FROM: &str = "2026-11-01";
const TO: &str = "2026-11-20";

/// The test's own expectation: counted events inside `[FROM, TO)`.
fn in_scope(messages: &[Generated]) -> Totals {
    let (from, to) = (Day::parse(FROM).unwrap(), Day::parse(TO).unwrap());
    expected_totals(messages)
        .into_iter()
        .filter(|(key, _)| key.day >= from && key.day < to)
        .collect()
}

fn start_backfill(world: &World, source: &str, extra: &[&str]) -> i64 {
    let mut args = vec![
        "backfill",
        "--source",
        source,
        "--from",
        FROM,
        "--to",
        TO,
        "--database-url",
        &world.database_url,
    ];
    args.extend(extra);
    let out = tally_with(&args, &world.env);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(&out)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .expect("the job id on the first line")
}

async fn exact_backfills_and_verify(backend: Backend) {
    let mut world = World::new("backfill", backend).await;
    let store = world.store().await;
    world.start_aggregator_with("aggregator", &[("aggregator.backfill_parallelism", "2")]);
    let messages = events(71, 500_000);
    let invalid = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .count() as i64;
    let duplicate = messages
        .iter()
        .filter(|m| m.truth == Truth::Duplicate)
        .count() as i64;
    let expected = in_scope(&messages);

    // Rows the backfill must leave alone: a day after the range and a merchant it never saw.
    let keep = "INSERT INTO merchant_sales VALUES ('m-keep', 'EUR', '2026-11-20', '1.0000', 1, '0.0000', 0, '1.0000', '2026-11-21T00:00:00Z');
                INSERT INTO merchant_sales VALUES ('m-00001', 'EUR', '2026-10-31', '7.0000', 1, '0.0000', 0, '7.0000', '2026-11-21T00:00:00Z');";
    // A stale row inside the range, which the backfill must replace.
    let stale = "INSERT INTO merchant_sales VALUES ('m-stale', 'EUR', '2026-11-05', '5.0000', 1, '0.0000', 0, '5.0000', '2026-11-21T00:00:00Z');";
    execute(&world, &format!("{keep}{stale}")).await;

    for format in ["parquet", "csv", "ndjson"] {
        let source = write_files(&world.dir.join(format), format, &messages);
        let id = start_backfill(&world, &source, &["--shards", "3"]);
        let job = wait_for_job(&store, id, |j| j.state.is_final()).await;
        assert_eq!(
            job.state,
            store::jobs::State::Succeeded,
            "{format}: {job:#?}"
        );
        assert_eq!(
            job.rows(),
            (messages.len() as i64, invalid, duplicate),
            "{format}: rows read, rejected, duplicate"
        );
        let table = store.totals(None).await.unwrap();
        let (from, to) = (Day::parse(FROM).unwrap(), Day::parse(TO).unwrap());
        let inside: Totals = table
            .iter()
            .filter(|(k, _)| k.day >= from && k.day < to)
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        assert_totals_equal(&expected, &inside);
        assert_eq!(
            table.len(),
            expected.len() + 2,
            "{format}: the two rows outside the range stay"
        );
    }

    // Running the same job again gives the same table.
    let before: Totals = store.totals(None).await.unwrap();
    let id = start_backfill(
        &world,
        &format!("{}/*.parquet", world.dir.join("parquet").display()),
        &["--wait"],
    );
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        store::jobs::State::Succeeded
    );
    assert_eq!(store.totals(None).await.unwrap(), before);

    // `jobs list` and `jobs show` in both shapes.
    let list = tally(&[
        "jobs",
        "list",
        "--json",
        "--database-url",
        &world.database_url,
    ]);
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 4);
    let show = tally(&[
        "jobs",
        "show",
        &id.to_string(),
        "--database-url",
        &world.database_url,
    ]);
    assert!(
        stdout(&show).contains("succeeded") && stdout(&show).contains("rejected by field"),
        "{}",
        stdout(&show)
    );

    // Reconciliation: equal first, then exactly the keys changed by hand.
    let verify = |world: &World| {
        let source = format!("{}/*.csv", world.dir.join("csv").display());
        tally(&[
            "verify",
            "--source",
            &source,
            "--from",
            FROM,
            "--to",
            TO,
            "--database-url",
            &world.database_url,
        ])
    };
    let out = verify(&world);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let mut keys: Vec<_> = expected.keys().cloned().collect();
    keys.sort();
    let (a, b) = (&keys[3], &keys[keys.len() / 2]);
    execute(
        &world,
        &format!(
            "UPDATE merchant_sales SET sales_count = sales_count + 1 WHERE merchant_id = '{}' AND currency = '{}' AND day = '{}';
             DELETE FROM merchant_sales WHERE merchant_id = '{}' AND currency = '{}' AND day = '{}';",
            a.merchant_id, a.currency, a.day, b.merchant_id, b.currency, b.day
        ),
    )
    .await;
    let out = verify(&world);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let mut diffs: Vec<String> = stdout(&out)
        .lines()
        .filter(|l| l.starts_with("DIFF "))
        .map(|l| l[5..].split(':').next().unwrap().to_owned())
        .collect();
    diffs.sort();
    let mut want = vec![
        format!("{} {} {}", a.merchant_id, a.currency, a.day),
        format!("{} {} {}", b.merchant_id, b.currency, b.day),
    ];
    want.sort();
    assert_eq!(diffs, want, "{}", stdout(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_backfills_and_verify_postgres() {
    exact_backfills_and_verify(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_backfills_and_verify_sqlite() {
    exact_backfills_and_verify(Backend::Sqlite).await;
}

#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one running pipeline, its steps in order"
)]
async fn retries_and_cancellation(backend: Backend) {
    let mut world = World::new("backfill-retry", backend).await;
    let store = world.store().await;
    world.start_aggregator_with(
        "aggregator",
        &[
            ("aggregator.backfill_parallelism", "2"),
            ("aggregator.backfill_max_attempts", "3"),
            ("aggregator.backfill_retry_base_ms", "1500"),
        ],
    );
    let messages = events(72, 200_000);
    let good = world.dir.join("good.parquet");
    write_parquet(&good, &messages);
    // Some live rows in the range, so that "unchanged" has something to keep.
    let first = start_backfill(&world, good.to_str().unwrap(), &["--wait"]);
    assert_eq!(
        store.job(first).await.unwrap().unwrap().state,
        store::jobs::State::Succeeded
    );
    let table = table_bytes(&world).await;
    assert!(table.lines().count() > 100);

    // Fails twice, then succeeds: the file is broken until the second attempt has failed.
    let flaky: PathBuf = world.dir.join("flaky.parquet");
    std::fs::write(&flaky, b"PAR1 this is not parquet").unwrap();
    let id = start_backfill(
        &world,
        flaky.to_str().unwrap(),
        &["--format", "parquet", "--shards", "1"],
    );
    let job = wait_for_job(&store, id, |j| {
        j.tasks[0].attempts == 2 && j.tasks[0].state == store::jobs::State::Pending
    })
    .await;
    assert!(
        job.tasks[0]
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("flaky.parquet")),
        "{job:#?}"
    );
    std::fs::copy(&good, &flaky).unwrap();
    let job = wait_for_job(&store, id, |j| j.state.is_final()).await;
    assert_eq!(
        (job.state, job.tasks[0].attempts),
        (store::jobs::State::Succeeded, 3),
        "{job:#?}"
    );
    assert_eq!(
        table_bytes(&world).await.lines().count(),
        table.lines().count()
    );
    let table = table_bytes(&world).await;

    // Always fails: the job fails after 3 attempts and the table is unchanged, byte for byte.
    let broken = world.dir.join("broken.parquet");
    std::fs::write(&broken, b"not parquet at all").unwrap();
    let id = start_backfill(
        &world,
        broken.to_str().unwrap(),
        &["--format", "parquet", "--shards", "1"],
    );
    let job = wait_for_job(&store, id, |j| j.state.is_final()).await;
    assert_eq!(
        (job.state, job.tasks[0].attempts),
        (store::jobs::State::Failed, 3),
        "{job:#?}"
    );
    assert!(
        job.last_error
            .as_deref()
            .is_some_and(|e| e.contains("ran out of attempts")),
        "{job:#?}"
    );
    assert_eq!(table_bytes(&world).await, table);
    let show = tally(&[
        "jobs",
        "show",
        &id.to_string(),
        "--database-url",
        &world.database_url,
    ]);
    assert!(
        stdout(&show).contains("broken.parquet"),
        "{}",
        stdout(&show)
    );

    // A float amount can never be read exactly: the job fails at its first
    // attempt, saying it was not retried, and the table is unchanged.
    let floats = world.dir.join("floats.parquet");
    write_float_amounts(&floats, &messages[..100]);
    let id = start_backfill(&world, floats.to_str().unwrap(), &["--shards", "1"]);
    let job = wait_for_job(&store, id, |j| j.state.is_final()).await;
    assert_eq!(
        (job.state, job.tasks[0].attempts),
        (store::jobs::State::Failed, 1),
        "{job:#?}"
    );
    let error = job.tasks[0].last_error.as_deref().unwrap_or("");
    assert!(
        error.contains("floats cannot hold money exactly") && error.contains("not retried"),
        "{job:#?}"
    );
    assert_eq!(table_bytes(&world).await, table);

    // Cancelled while running: eight shards, two at a time as one group that
    // reads the file once; cancel after the first group.
    let id = start_backfill(&world, good.to_str().unwrap(), &["--shards", "8"]);
    wait_for_job(&store, id, |j| {
        j.tasks
            .iter()
            .any(|t| t.state == store::jobs::State::Succeeded)
    })
    .await;
    let out = tally(&[
        "jobs",
        "cancel",
        &id.to_string(),
        "--database-url",
        &world.database_url,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
    let job = wait_for_job(&store, id, |j| j.tasks.iter().all(|t| t.state.is_final())).await;
    assert_eq!(job.state, store::jobs::State::Cancelled);
    assert!(
        job.tasks
            .iter()
            .any(|t| t.state == store::jobs::State::Cancelled),
        "{job:#?}"
    );
    // The runner has looked for work three more times: nothing changed.
    world.wait_for_passes("aggregator", "runner", 3.0).await;
    assert_eq!(
        store.job(id).await.unwrap().unwrap().state,
        store::jobs::State::Cancelled
    );
    assert_eq!(table_bytes(&world).await, table);
    let again = tally(&[
        "jobs",
        "cancel",
        &id.to_string(),
        "--database-url",
        &world.database_url,
    ]);
    assert_eq!(again.status.code(), Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_cancellation_postgres() {
    retries_and_cancellation(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_cancellation_sqlite() {
    retries_and_cancellation(Backend::Sqlite).await;
}

#[test]
fn bad_arguments_name_the_flag() {
    let out = tally(&[
        "backfill",
        "--source",
        "/nonexistent/*.parquet",
        "--from",
        "2026-11-02",
        "--to",
        "2026-11-01",
        "--database-url",
        "sqlite:///tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`--to`"));
    let out = tally(&[
        "backfill",
        "--source",
        "/nonexistent/*.parquet",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02",
        "--database-url",
        "sqlite:///tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent"));
    let out = tally(&[
        "verify",
        "--source",
        "gs://bucket/x.parquet",
        "--from",
        "2026-11-01",
        "--to",
        "2026-11-02",
        "--database-url",
        "sqlite:///tmp/x",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("gs:// is not supported"));
}

async fn s3_sources(backend: Backend) {
    let mut world = World::new("backfill-s3", backend).await;
    world.env = s3_env();
    let store = world.store().await;
    world.start_aggregator_with("aggregator", &[("aggregator.backfill_parallelism", "2")]);
    let messages = events(73, 200_000);
    let invalid = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .count() as i64;
    let duplicate = messages
        .iter()
        .filter(|m| m.truth == Truth::Duplicate)
        .count() as i64;
    let expected = in_scope(&messages);

    // Two files per format, plus what a data lake leaves beside them: a job
    // marker, which a folder's listing skips, and a file that patterns skip.
    let local = world.dir.join("lake");
    for format in ["parquet", "csv", "ndjson"] {
        write_files(&local.join(format), format, &messages);
        std::fs::write(local.join(format).join("_SUCCESS"), b"").unwrap();
        if format != "ndjson" {
            std::fs::write(
                local.join(format).join("README.txt"),
                b"exported by the lake",
            )
            .unwrap();
        }
    }
    let bucket = world.dir.file_name().unwrap().to_str().unwrap().to_owned();
    upload(&bucket, &local).await;

    // A pattern, a pattern, and a folder.
    let sources = [
        ("parquet", format!("s3://{bucket}/parquet/*.parquet")),
        ("csv", format!("s3://{bucket}/csv/*.csv")),
        ("ndjson", format!("s3://{bucket}/ndjson/")),
    ];
    for (format, source) in &sources {
        let id = start_backfill(&world, source, &["--shards", "3"]);
        let job = wait_for_job(&store, id, |j| j.state.is_final()).await;
        assert_eq!(
            job.state,
            store::jobs::State::Succeeded,
            "{format}: {job:#?}"
        );
        let files = &job.tasks[0].input.files;
        let want = [
            format!("s3://{bucket}/{format}/part-0.{format}"),
            format!("s3://{bucket}/{format}/part-1.{format}"),
        ];
        assert_eq!(
            files, &want,
            "{format}: the data files, and nothing beside them"
        );
        assert_eq!(
            job.rows(),
            (messages.len() as i64, invalid, duplicate),
            "{format}: rows read, rejected, duplicate"
        );
        assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    }

    // Reconciliation reads S3 too.
    let args = [
        "verify",
        "--source",
        &sources[0].1,
        "--from",
        FROM,
        "--to",
        TO,
        "--database-url",
        &world.database_url,
    ];
    let out = tally_with(&args, &world.env);
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );

    // A missing object is a clear error before any job exists.
    let missing = format!("s3://{bucket}/parquet/nothing-*.parquet");
    let out = tally_with(
        &[
            "backfill",
            "--source",
            &missing,
            "--from",
            FROM,
            "--to",
            TO,
            "--database-url",
            &world.database_url,
        ],
        &world.env,
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("matches no files"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sources_postgres() {
    s3_sources(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_sources_sqlite() {
    s3_sources(Backend::Sqlite).await;
}

/// Keyless events all dated `day`.
fn one_day(seed: u64, events: u64, day: Day) -> Vec<Generated> {
    Generator::new(GeneratorConfig {
        seed,
        events,
        day,
        late_share: 0.0,
        keyless: true,
        ..GeneratorConfig::default()
    })
    .collect()
}

/// The one job `schedule` creates, once it has ended; fails on a second one.
async fn scheduled_job(store: &store::Store, schedule: &str) -> store::jobs::Job {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let jobs = scheduled_jobs(store, schedule).await;
        assert!(jobs.len() <= 1, "one tick, one job: {jobs:#?}");
        if let Some(job) = jobs.into_iter().find(|j| j.state.is_final()) {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "schedule {schedule} did not fire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn log_says(world: &World, name: &str, index: usize, text: &str) -> bool {
    std::fs::read_to_string(world.dir.join(format!("{name}.{index}.log")))
        .is_ok_and(|log| log.contains(text))
}

async fn scheduled_jobs(store: &store::Store, schedule: &str) -> Vec<store::jobs::Job> {
    store
        .jobs(100)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.schedule.as_deref() == Some(schedule))
        .collect()
}

/// Two aggregators on PostgreSQL: one leads; a schedule backdated with
/// `--since` is due at once and creates exactly one job for its latest
/// tick (three missed nights, one run); killing the leader hands over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[expect(
    clippy::too_many_lines,
    reason = "one scenario on one running pipeline, its steps in order"
)]
async fn schedules_fire_once_under_one_leader() {
    let mut world = World::new("schedule", Backend::Postgres).await;
    let store = world.store().await;
    let a = world.start_aggregator_with("agg-a", &[("aggregator.backfill_poll_ms", "200")]);
    let b = world.start_aggregator_with("agg-b", &[("aggregator.backfill_poll_ms", "200")]);
    let lead = "Leading the scheduler";
    world
        .wait_for(
            "an aggregator takes the scheduler lock",
            Duration::from_secs(60),
            || async { log_says(&world, "agg-a", a, lead) || log_says(&world, "agg-b", b, lead) },
        )
        .await;
    let (leader, follower, follower_name) = if log_says(&world, "agg-a", a, lead) {
        (a, b, "agg-b")
    } else {
        (b, a, "agg-a")
    };

    // The latest 02:30 UTC tick at or before now, by the test's own clock.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let (day_ms, tick_ms) = (86_400_000, (2 * 60 + 30) * 60_000);
    let tick_day = if now % day_ms >= tick_ms {
        now / day_ms
    } else {
        now / day_ms - 1
    };
    let yesterday = Day(tick_day as i32 - 1);
    let messages = one_day(73, 20_000, yesterday);
    let file = world.dir.join("nightly.ndjson");
    write_ndjson(&file, &messages);
    let since = schemas::day::format_rfc3339_millis((tick_day - 4) * day_ms * 1000);
    let database_url = world.database_url.clone();
    let add = |name: &str| {
        tally(&[
            "schedule",
            "add",
            name,
            "--cron",
            "30 2 * * *",
            "--source",
            file.to_str().unwrap(),
            "--range",
            "yesterday",
            "--since",
            &since,
            "--database-url",
            &database_url,
        ])
    };
    let out = add("nightly");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let job = scheduled_job(&store, "nightly").await;
    assert_eq!(job.state, store::jobs::State::Succeeded, "{job:#?}");
    assert_eq!(
        (job.scope.from, job.scope.to),
        (yesterday, Day(tick_day as i32))
    );
    assert_totals_equal(
        &expected_totals(&messages),
        &store.totals(None).await.unwrap(),
    );
    // Three more passes of the leader: still one job, and the schedule points at the tick.
    let leader_name = if follower_name == "agg-a" {
        "agg-b"
    } else {
        "agg-a"
    };
    world.wait_for_passes(leader_name, "scheduler", 3.0).await;
    assert_eq!(scheduled_jobs(&store, "nightly").await.len(), 1);
    let schedules = store.schedules().await.unwrap();
    assert_eq!(schedules[0].last_due, tick_day * day_ms + tick_ms);
    assert!(
        !log_says(&world, follower_name, follower, lead),
        "only one aggregator leads"
    );

    // The leader dies; the other takes the lock and runs the next schedule.
    world.kill(leader);
    world
        .wait_for(
            "the follower takes over",
            Duration::from_secs(60),
            || async { log_says(&world, follower_name, follower, lead) },
        )
        .await;
    assert!(add("nightly-2").status.success());
    world
        .wait_for(
            "the new leader runs the schedule",
            Duration::from_secs(120),
            || async {
                scheduled_jobs(&store, "nightly-2")
                    .await
                    .iter()
                    .any(|j| j.state == store::jobs::State::Succeeded)
            },
        )
        .await;
    let list = tally(&["schedule", "list", "--database-url", &world.database_url]);
    assert!(stdout(&list).contains("nightly-2"), "{}", stdout(&list));
}

/// On SQLite one aggregator schedules: a backdated schedule creates one job
/// for its latest tick, and nothing more on later polls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_fires_once_on_sqlite() {
    let mut world = World::new("schedule-lite", Backend::Sqlite).await;
    let store = world.store().await;
    world.start_aggregator_with("aggregator", &[("aggregator.backfill_poll_ms", "200")]);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let day_ms = 86_400_000;
    let today = Day((now / day_ms) as i32);
    let messages = one_day(74, 10_000, Day(today.0 - 1));
    let file = world.dir.join("daily.ndjson");
    write_ndjson(&file, &messages);
    // Midnight UTC every day; three missed midnights make one job, for yesterday.
    let since = schemas::day::format_rfc3339_millis((now / day_ms - 3) * day_ms * 1000 + 1000);
    let out = tally(&[
        "schedule",
        "add",
        "daily",
        "--cron",
        "@daily",
        "--source",
        file.to_str().unwrap(),
        "--range",
        "yesterday",
        "--since",
        &since,
        "--database-url",
        &world.database_url,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job = scheduled_job(&store, "daily").await;
    assert_eq!(
        (job.state, job.scope.from, job.scope.to),
        (store::jobs::State::Succeeded, Day(today.0 - 1), today)
    );
    assert_totals_equal(
        &expected_totals(&messages),
        &store.totals(None).await.unwrap(),
    );
    // Three more passes of the scheduler: still one job.
    world.wait_for_passes("aggregator", "scheduler", 3.0).await;
    assert_eq!(scheduled_jobs(&store, "daily").await.len(), 1);
}

/// A merchant's zone changes mid-stream: the local days counted before the
/// change keep the old zone (a row keeps the zone it was first counted in),
/// the events after it are bucketed by the new one, as the book says (Time zones); then
/// a backfill over the year recomputes both tables from the files, the local
/// one wholly in the new zones. Every figure is the test's own: days from
/// GNU `date`, sums in i128.
async fn zone_change_then_backfill(backend: Backend) {
    use common::local;
    use schemas::totals::merge_local_into;

    let mut world = World::new("zones", backend).await;
    let store = world.store().await;
    world.start_aggregator_with("aggregator", &[("aggregator.backfill_parallelism", "2")]);
    let mut messages = events(81, 40_000);
    let before = local::assign(&messages);
    let set = |zones: &std::collections::HashMap<String, &'static str>| {
        zones
            .iter()
            .map(|(m, z)| (m.clone(), schemas::zone::Zone::parse(z).unwrap()))
            .collect::<Vec<_>>()
    };
    store.set_zones(&set(&before), 0).await.unwrap();
    // Events around each 2026 change, in the first half.
    for (i, extra) in local::around_changes(&before).into_iter().enumerate() {
        messages.insert(i * 97, extra);
    }
    let worker = world.start_worker("worker-a", &[]);
    let half = messages.len() / 2;
    let (first, second) = messages.split_at(half);
    common::produce(&world.brokers, &world.orders, first).await;
    world
        .wait_committed(&store, first.len() as u64, Duration::from_secs(300))
        .await;

    // Every merchant with a zone moves to the next one of the list.
    let after: std::collections::HashMap<String, &'static str> = before
        .iter()
        .map(|(m, z)| {
            let at = local::ZONES.iter().position(|x| x == z).unwrap();
            (m.clone(), local::ZONES[(at + 1) % local::ZONES.len()])
        })
        .collect();
    store.set_zones(&set(&after), 1).await.unwrap();
    world
        .wait_for(
            "the worker's zone refresh",
            Duration::from_secs(60),
            || async { log_says(&world, "worker-a", worker, "time zones changed") },
        )
        .await;
    common::produce(&world.brokers, &world.orders, second).await;
    world
        .wait_committed(&store, messages.len() as u64, Duration::from_secs(300))
        .await;

    assert_totals_equal(
        &expected_totals(&messages),
        &store.totals(None).await.unwrap(),
    );
    let mut streamed = local::expected(first, &before);
    merge_local_into(&mut streamed, local::expected(second, &after));
    local::assert_equal(&streamed, &store.local_totals(None).await.unwrap());
    let kept = streamed
        .iter()
        .filter(|(key, row)| {
            after
                .get(&key.merchant_id)
                .is_some_and(|z| *z != row.time_zone)
        })
        .count();
    assert!(
        kept > 100,
        "rows counted before the change keep the old zone: {kept}"
    );

    // The backfill: the same events from files, over the whole year.
    let source = write_files(&world.dir.join("ndjson"), "ndjson", &messages);
    let year = (
        Day::parse("2026-01-01").unwrap(),
        Day::parse("2026-12-01").unwrap(),
    );
    backfill_and_wait(&world, &source, year);
    assert_totals_equal(
        &expected_totals(&messages),
        &store.totals(None).await.unwrap(),
    );
    local::assert_equal(
        &local::expected(&messages, &after),
        &store.local_totals(None).await.unwrap(),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_change_then_backfill_postgres() {
    zone_change_then_backfill(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_change_then_backfill_sqlite() {
    zone_change_then_backfill(Backend::Sqlite).await;
}

/// Runs `tally backfill --wait` of `source` over `[from, to)`; panics with
/// its error output unless it succeeded.
fn backfill_and_wait(world: &World, source: &str, (from, to): (Day, Day)) {
    let out = tally_with(
        &[
            "backfill",
            "--source",
            source,
            "--from",
            &from.to_string(),
            "--to",
            &to.to_string(),
            "--wait",
            "--database-url",
            &world.database_url,
        ],
        &world.env,
    );
    assert!(
        out.status.success(),
        "{}{}",
        stdout(&out),
        String::from_utf8_lossy(&out.stderr)
    );
}

const ZONED_MERCHANTS: [&str; 4] = ["m-hnl", "m-cxi", "m-tyo", "m-utc"];

/// Events of merchants in Honolulu (−10:00), Kiritimati (+14:00), Tokyo
/// (+09:00) and UTC every 47 minutes over five UTC days around `day`, and a
/// second either side of 10:00 and 15:00 UTC each day (the local midnights
/// of the first three zones): every local day's edges have events on both
/// sides.
fn around_local_midnights(day: Day) -> Vec<Generated> {
    let start = i64::from(day.0 - 2) * 86_400;
    let mut instants: Vec<i64> = (0..(5 * 86_400 / (47 * 60)))
        .map(|k| start + k * 47 * 60)
        .collect();
    for d in 0..5 {
        for hour in [10, 15] {
            let edge = start + d * 86_400 + hour * 3_600;
            instants.extend([edge - 1, edge]);
        }
    }
    let mut out = Vec::new();
    for (m, merchant) in ZONED_MERCHANTS.iter().enumerate() {
        for (i, &secs) in instants.iter().enumerate() {
            out.push(euro_sale(
                merchant,
                &format!("s-{m}-{i}"),
                secs,
                1_000 + (m * 1_000 + i) as i128,
            ));
        }
    }
    out
}

/// One sale of `units` whole euros by `merchant` at `secs` (Unix seconds).
fn euro_sale(merchant: &str, id: &str, secs: i64, units: i128) -> Generated {
    let payload = format!(
        r#"{{"event_id":"{id}","order_id":"o-{id}","merchant_id":"{merchant}","kind":"sale","amount":"{units}","currency":"EUR","occurred_at":"{}"}}"#,
        schemas::day::format_rfc3339_millis(secs * 1_000_000)
    );
    Generated {
        key: Some(merchant.to_owned()),
        payload: payload.into_bytes(),
        truth: Truth::Counted {
            key: schemas::TotalsKey {
                merchant_id: merchant.to_owned(),
                currency: "EUR".into(),
                day: Day(secs.div_euclid(86_400) as i32),
            },
            kind: schemas::Kind::Sale,
            amount: schemas::Amount(units * 10_000),
        },
    }
}

/// A nightly backfill of one UTC day replaces that day in merchant_sales
/// and no local day of a merchant in Honolulu, Kiritimati or Tokyo (none
/// lies wholly inside one UTC day), so merchant_sales_local keeps every
/// streamed event; a backfill of three days replaces the local days wholly
/// inside them, with an event the stream missed; a scope reaching today is
/// refused. Every figure is the test's own: days from GNU `date`, sums in i128.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nightly_backfill_keeps_local_days_it_does_not_cover_postgres() {
    use common::local;

    let mut world = World::new("nightly-zones", Backend::Postgres).await;
    let store = world.store().await;
    let zones = local::set(
        &store,
        &[
            ("m-hnl", "Pacific/Honolulu"),
            ("m-cxi", "Pacific/Kiritimati"),
            ("m-tyo", "Asia/Tokyo"),
        ],
    )
    .await;
    let day = Day::parse("2026-11-10").unwrap();
    let streamed = around_local_midnights(day);
    world.start_aggregator_with("aggregator", &[("aggregator.backfill_parallelism", "2")]);
    world.start_worker("worker-a", &[]);
    common::produce(&world.brokers, &world.orders, &streamed).await;
    world
        .wait_committed(&store, streamed.len() as u64, Duration::from_secs(300))
        .await;
    let check = |messages: Vec<Generated>| {
        let (store, zones) = (&store, &zones);
        async move {
            assert_totals_equal(
                &expected_totals(&messages),
                &store.totals(None).await.unwrap(),
            );
            local::assert_equal(
                &local::expected(&messages, zones),
                &store.local_totals(None).await.unwrap(),
            );
        }
    };
    check(streamed.clone()).await;

    // Last night's export: the events of UTC day `day`, as streamed.
    let of_days = |from: i32, to: i32| -> Vec<Generated> {
        streamed
            .iter()
            .filter(|m| match &m.truth {
                Truth::Counted { key, .. } => key.day.0 >= from && key.day.0 < to,
                _ => false,
            })
            .cloned()
            .collect()
    };
    let backfill = |name: &str, files: &[Generated], from: Day, to: Day| {
        let file = world.dir.join(name);
        write_ndjson(&file, files);
        backfill_and_wait(&world, file.to_str().unwrap(), (from, to));
    };
    backfill(
        "night.ndjson",
        &of_days(day.0, day.0 + 1),
        day,
        Day(day.0 + 1),
    );
    check(streamed.clone()).await;

    // Three days, from files that also hold an event the stream missed, at
    // noon UTC of `day`: inside a whole local day of every zone.
    let noon = i64::from(day.0) * 86_400 + 12 * 3_600;
    let missed: Vec<Generated> = ZONED_MERCHANTS
        .iter()
        .map(|m| euro_sale(m, &format!("missed-{m}"), noon, 777))
        .collect();
    let mut files = of_days(day.0 - 1, day.0 + 2);
    files.extend(missed.iter().cloned());
    backfill("three.ndjson", &files, Day(day.0 - 1), Day(day.0 + 2));
    let mut all = streamed.clone();
    all.extend(missed);
    check(all).await;

    // Today is not over: refused, naming why and the flag that allows it.
    let now_days = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 86_400) as i32;
    let out = tally_with(
        &[
            "backfill",
            "--source",
            world.dir.join("night.ndjson").to_str().unwrap(),
            "--from",
            &Day(now_days).to_string(),
            "--to",
            &Day(now_days + 1).to_string(),
            "--database-url",
            &world.database_url,
        ],
        &world.env,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("not all over") && stderr.contains("--include-open-days"),
        "{stderr}"
    );
}

/// A backfill of 1,000,000 keys (20,000 merchants × 50 days, one sale
/// each) on PostgreSQL whose connection allows each statement 2 s and each
/// call 7 s, far less than staging and swapping a million rows in each
/// table takes: the job's own limit (`backfill_statement_timeout_ms`, 30 s
/// here) governs its staging, in statements of 50,000 rows, and its swap, a
/// day or a task's rows at a time, and the job succeeds with both tables
/// equal to the test's own sums.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_row_backfill_completes_in_bounded_statements_postgres() {
    let mut world = World::new("big-backfill", Backend::Postgres).await;
    let store = world.store().await;
    let first = Day::parse("2026-09-01").unwrap();
    let mut messages = Vec::with_capacity(1_000_000);
    for m in 0..20_000i64 {
        for d in 0..50 {
            let secs = i64::from(first.0 + d) * 86_400 + (m * 37) % 86_400;
            let units = i128::from(1 + (m + i64::from(d)) % 500);
            messages.push(euro_sale(
                &format!("big-{m:05}"),
                &format!("b-{m}-{d}"),
                secs,
                units,
            ));
        }
    }
    let file = world.dir.join("big.ndjson");
    write_ndjson(&file, &messages);
    let database_url = world.database_url.clone();
    world.database_url = format!("{database_url}?options=-c%20statement_timeout%3D2000");
    world.start_aggregator_with(
        "aggregator",
        &[("aggregator.backfill_statement_timeout_ms", "30000")],
    );
    world.database_url = database_url;
    backfill_and_wait(&world, file.to_str().unwrap(), (first, Day(first.0 + 50)));
    let expected = expected_totals(&messages);
    assert_eq!(expected.len(), 1_000_000);
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    let local = store.local_totals(None).await.unwrap();
    assert_eq!(local.len(), 1_000_000);
    assert!(
        local
            .iter()
            .all(|(key, row)| row.time_zone == "UTC" && expected.get(key) == Some(&row.sums)),
        "every local row is its UTC day's, in UTC"
    );
}

/// `messages` as Parquet whose `amount` column is a float.
fn write_float_amounts(path: &std::path::Path, messages: &[Generated]) {
    use datafusion::arrow::array::{ArrayRef, Float64Array, RecordBatch, StringArray};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use std::sync::Arc;
    let names = files::FIELDS;
    let rows: Vec<[Option<String>; 7]> = messages
        .iter()
        .map(|m| files::columns(&m.payload))
        .collect();
    let fields: Vec<Field> = names
        .iter()
        .map(|&n| {
            Field::new(
                n,
                if n == "amount" {
                    DataType::Float64
                } else {
                    DataType::Utf8
                },
                true,
            )
        })
        .collect();
    let arrays: Vec<ArrayRef> = (0..names.len())
        .map(|c| {
            if names[c] == "amount" {
                let floats: Float64Array = rows
                    .iter()
                    .map(|r| r[c].as_deref().and_then(|v| v.parse().ok()))
                    .collect();
                Arc::new(floats) as ArrayRef
            } else {
                Arc::new(rows.iter().map(|r| r[c].clone()).collect::<StringArray>()) as ArrayRef
            }
        })
        .collect();
    let schema = Arc::new(Schema::new(fields));
    let batch = RecordBatch::try_new(schema.clone(), arrays).unwrap();
    let mut writer = datafusion::parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        schema,
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
}
