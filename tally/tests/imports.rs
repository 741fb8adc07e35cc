//! Imports on PostgreSQL and SQLite, run by real `tally aggregator`
//! processes beside the live stream: a watched folder and a watched `s3://`
//! prefix, pushed S3 event notifications (delivered twice), an aggregator
//! killed in the middle of an import, a file copied in again, a file
//! rewritten under the same name,
//! a file still being written, and jobs that wait on other jobs. Every
//! total is compared with the test's own arithmetic over the files and the
//! streamed events.

#[macro_use]
mod common;
mod files;

use std::path::Path;
use std::time::Duration;

use common::{assert_totals_equal, expected_totals, Backend, World};
use files::{
    events, s3_env, stdout, table_bytes, tally, tally_with, wait_for_job, write_format,
    write_ndjson, write_parquet,
};
use ingest::load::generate::{Generated, Truth};
use store::jobs::{Job, Kind, State};
use store::Store;

/// The import jobs, oldest first.
async fn imports(store: &Store) -> Vec<Job> {
    let mut jobs: Vec<Job> = store
        .jobs(1_000)
        .await
        .unwrap()
        .into_iter()
        .filter(|j| j.kind == Kind::Import)
        .collect();
    jobs.reverse();
    jobs
}

/// The import jobs of the file whose location ends with `name`.
async fn imports_of(store: &Store, name: &str) -> Vec<Job> {
    imports(store)
        .await
        .into_iter()
        .filter(|j| j.tasks.iter().any(|t| t.input.files[0].ends_with(name)))
        .collect()
}

/// Settings of an aggregator that runs jobs, and watches `source` when given.
fn aggregator_settings(source: Option<&str>, settle_ms: &str) -> Vec<(String, String)> {
    let mut settings = vec![
        ("aggregator.backfill_parallelism", "2"),
        ("aggregator.backfill_poll_ms", "200"),
        ("aggregator.backfill_lease_ms", "2000"),
        ("aggregator.import_poll_ms", "200"),
        ("aggregator.import_settle_ms", settle_ms),
    ];
    if let Some(source) = source {
        settings.push(("aggregator.import_watch", source));
    }
    settings
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn start_aggregator(world: &mut World, name: &str, settings: &[(String, String)]) -> usize {
    let pairs: Vec<(&str, &str)> = settings
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    world.start_aggregator_with(name, &pairs)
}

/// Rows, invalid rows and duplicates the generator put in `messages`.
fn rows(messages: &[Generated]) -> (i64, i64, i64) {
    let invalid = messages
        .iter()
        .filter(|m| matches!(m.truth, Truth::Invalid(_)))
        .count() as i64;
    let duplicate = messages
        .iter()
        .filter(|m| m.truth == Truth::Duplicate)
        .count() as i64;
    (messages.len() as i64, invalid, duplicate)
}

/// Six files, two each of Parquet, CSV and NDJSON, 50,000 events each
/// (with duplicates and invalid rows), written under `dir`: (name, events).
fn six_files(dir: &Path, seed: u64) -> Vec<(String, Vec<Generated>)> {
    std::fs::create_dir_all(dir).unwrap();
    ["parquet", "parquet", "csv", "csv", "ndjson", "ndjson"]
        .into_iter()
        .enumerate()
        .map(|(n, format)| {
            let messages = events(seed + n as u64, 50_000);
            let name = format!("orders-{n}.{format}");
            write_format(&dir.join(&name), format, &messages);
            (name, messages)
        })
        .collect()
}

/// Waits until `count` import jobs exist and have all succeeded.
async fn all_imported(world: &World, store: &Store, count: usize) -> Vec<Job> {
    world
        .wait_for(
            &format!("{count} import jobs succeeded"),
            Duration::from_secs(300),
            || async {
                let jobs = imports(store).await;
                assert!(
                    jobs.iter()
                        .all(|j| j.state != State::Failed && j.state != State::Cancelled),
                    "an import failed: {jobs:#?}"
                );
                jobs.len() == count && jobs.iter().all(|j| j.state == State::Succeeded)
            },
        )
        .await;
    imports(store).await
}

/// Checks each import job against the file it read: one file per job, all
/// of its rows read, its invalid rows and duplicates counted as generated.
fn assert_rows_per_file(jobs: &[Job], files: &[(String, Vec<Generated>)]) {
    for job in jobs {
        assert_eq!(job.tasks.len(), 1, "one file per import job: {job:#?}");
        let location = &job.tasks[0].input.files[0];
        let (_, messages) = files
            .iter()
            .find(|(name, _)| location.ends_with(name.as_str()))
            .expect("a file of the test");
        assert_eq!(
            job.rows(),
            rows(messages),
            "{location}: rows read, invalid, duplicate"
        );
        assert_eq!(
            job.tasks[0].outcome.as_deref(),
            Some("imported"),
            "{location}"
        );
    }
}

const AGGREGATORS: [&str; 2] = ["aggregator-a", "aggregator-b"];

/// A metric summed over both aggregators.
async fn both(world: &World, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut sum = 0.0;
    for service in AGGREGATORS {
        sum += world.metric(service, name, labels).await.unwrap_or(0.0);
    }
    sum
}

/// The aggregators that run the watch, once they have settled: exactly one
/// on PostgreSQL (the advisory lock), both on SQLite.
async fn leaders(world: &World, backend: Backend) -> Vec<&'static str> {
    let want = if backend == Backend::Postgres {
        1.0
    } else {
        2.0
    };
    world
        .wait_for("the scheduler elected", Duration::from_secs(60), || async {
            both(world, "tally_scheduler_leader", &[]).await == want
        })
        .await;
    let mut leaders = Vec::new();
    for service in AGGREGATORS {
        if world.metric(service, "tally_scheduler_leader", &[]).await == Some(1.0) {
            leaders.push(service);
        }
    }
    leaders
}

/// Waits until each watching aggregator has listed the folder three more times.
async fn three_more_listings(world: &World, leaders: &[&str]) {
    for &service in leaders {
        let polls = || async {
            world
                .metric(
                    service,
                    "tally_import_watch_polls_total",
                    &[("outcome", "ok")],
                )
                .await
                .unwrap_or(0.0)
        };
        let start = polls().await;
        world
            .wait_for("three more listings", Duration::from_secs(60), || async {
                polls().await >= start + 3.0
            })
            .await;
    }
}

/// Waits until the streamed events are committed and the six files
/// imported, checks each file's rows, and checks `merchant_sales` against
/// the test's own sums of both; returns the import jobs and every event.
async fn stream_and_files_counted(
    world: &World,
    store: &Store,
    stream: &[Generated],
    files: &[(String, Vec<Generated>)],
) -> (Vec<Job>, Vec<Generated>) {
    world
        .wait_committed(store, stream.len() as u64, Duration::from_secs(180))
        .await;
    let jobs = all_imported(world, store, 6).await;
    assert_rows_per_file(&jobs, files);
    let mut everything = stream.to_vec();
    everything.extend(files.iter().flat_map(|(_, m)| m.iter().cloned()));
    assert!(everything.len() >= 300_000);
    assert_totals_equal(
        &expected_totals(&everything),
        &store.totals(None).await.unwrap(),
    );
    (jobs, everything)
}

/// `jobs show` lists every invalid row of a file with its row number and
/// reason, and both aggregators' metrics count the files and rows.
async fn invalid_rows_listed_and_counted(
    world: &World,
    jobs: &[Job],
    files: &[(String, Vec<Generated>)],
) {
    let csv = jobs
        .iter()
        .find(|j| j.tasks[0].input.files[0].ends_with("orders-2.csv"))
        .unwrap();
    let show = tally(&[
        "jobs",
        "show",
        &csv.id.to_string(),
        "--database-url",
        &world.database_url,
    ]);
    let text = stdout(&show);
    let listed: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("row "))
        .collect();
    assert_eq!(
        listed.len() as i64,
        rows(&files[2].1).1,
        "{}",
        stdout(&show)
    );
    assert!(listed.iter().all(|l| l.contains("field `")), "{listed:?}");
    assert_eq!(
        both(
            world,
            "tally_import_files_total",
            &[("outcome", "imported")]
        )
        .await,
        6.0
    );
    let invalid: i64 = files.iter().map(|(_, m)| rows(m).1).sum();
    assert_eq!(
        both(world, "tally_import_rows_total", &[("outcome", "invalid")]).await,
        invalid as f64
    );
}

/// A file copied in again with the same bytes (a new modification time)
/// is judged unchanged: no conflict, nothing added.
async fn a_copy_with_the_same_bytes_adds_nothing(
    world: &World,
    store: &Store,
    staged: &Path,
    inbox: &Path,
) {
    std::fs::copy(
        staged.join("orders-0.parquet"),
        inbox.join("orders-0.parquet"),
    )
    .unwrap();
    world
        .wait_for("the copy judged", Duration::from_secs(120), || async {
            imports_of(store, "orders-0.parquet")
                .await
                .iter()
                .filter(|j| j.state == State::Succeeded)
                .count()
                == 2
        })
        .await;
    let copy = imports_of(store, "orders-0.parquet").await.pop().unwrap();
    assert!(
        copy.tasks[0]
            .outcome
            .as_deref()
            .unwrap_or("")
            .starts_with("unchanged"),
        "{copy:#?}"
    );
    assert_eq!(
        both(
            world,
            "tally_import_files_total",
            &[("outcome", "unchanged")]
        )
        .await,
        1.0
    );
}

/// A file rewritten under the same name is a conflict, reported once with
/// what to do instead.
async fn a_rewritten_file_is_a_conflict(world: &World, store: &Store, staged: &Path, inbox: &Path) {
    write_format(&staged.join("changed.csv"), "csv", &events(190, 20_000));
    std::fs::copy(staged.join("changed.csv"), inbox.join("orders-2.csv")).unwrap();
    world
        .wait_for(
            "the conflicting version reported",
            Duration::from_secs(120),
            || async {
                imports_of(store, "orders-2.csv")
                    .await
                    .iter()
                    .any(|j| j.state == State::Failed)
            },
        )
        .await;
    let failed: Vec<Job> = imports_of(store, "orders-2.csv")
        .await
        .into_iter()
        .filter(|j| j.state == State::Failed)
        .collect();
    let error = failed[0].last_error.as_deref().unwrap_or("");
    assert!(
        error.contains("conflict")
            && error.contains("new name")
            && error.contains("tally backfill"),
        "{error}"
    );
    assert_eq!(failed[0].tasks[0].outcome.as_deref(), Some("conflict"));
    assert_eq!(
        both(
            world,
            "tally_import_files_total",
            &[("outcome", "conflict")]
        )
        .await,
        1.0
    );
}

/// A file still being written is not queued while it grows; once complete
/// it is imported whole, once. Returns its events.
async fn a_half_written_file_waits(
    world: &World,
    store: &Store,
    staged: &Path,
    inbox: &Path,
    leaders: &[&str],
) -> Vec<Generated> {
    let late = events(195, 40_000);
    write_ndjson(&staged.join("late.ndjson"), &late);
    let bytes = std::fs::read(staged.join("late.ndjson")).unwrap();
    let (head, tail) = bytes.split_at(bytes.len() / 2 + 7); // mid-line
    std::fs::write(inbox.join("late.ndjson"), head).unwrap();
    let unsettled =
        || async { both(world, "tally_import_watch_unsettled_files", &[]).await >= 1.0 };
    world
        .wait_for(
            "the watch sees the half-written file",
            Duration::from_secs(60),
            unsettled,
        )
        .await;
    three_more_listings(world, leaders).await;
    assert!(
        imports_of(store, "late.ndjson").await.is_empty(),
        "a half-written file was queued"
    );
    let mut writer = std::fs::OpenOptions::new()
        .append(true)
        .open(inbox.join("late.ndjson"))
        .unwrap();
    std::io::Write::write_all(&mut writer, tail).unwrap();
    drop(writer);
    world
        .wait_for(
            "the completed file imported",
            Duration::from_secs(120),
            || async {
                imports_of(store, "late.ndjson")
                    .await
                    .iter()
                    .any(|j| j.state == State::Succeeded)
            },
        )
        .await;
    let late_jobs = imports_of(store, "late.ndjson").await;
    assert_eq!(late_jobs.len(), 1, "{late_jobs:#?}");
    assert_eq!(late_jobs[0].rows(), rows(&late), "read whole, once");
    late
}

/// A watched folder beside the live stream: six files copied in are each
/// imported once, their invalid rows listed and counted; a copy with the
/// same bytes adds nothing; a file rewritten under its name is a conflict
/// that counts nothing; a half-written file waits until it is complete.
async fn watched_folder(backend: Backend) {
    let mut world = World::new("import-watch", backend).await;
    let store = world.store().await;
    let inbox = world.dir.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    world.start_worker("worker", &[]);
    // Two aggregators watch: one leads (on PostgreSQL; on SQLite both list,
    // and queueing is still once per file).
    let settings = aggregator_settings(Some(inbox.to_str().unwrap()), "3000");
    start_aggregator(&mut world, "aggregator-a", &settings);
    start_aggregator(&mut world, "aggregator-b", &settings);
    let leaders = leaders(&world, backend).await;

    // Streamed events and six files copied in while the pipeline runs.
    let stream = common::traffic(91, 30_000);
    let staged = world.dir.join("staged");
    let files = six_files(&staged, 100);
    let produce = common::produce(&world.brokers, &world.orders, &stream.messages);
    for (name, _) in &files {
        std::fs::copy(staged.join(name), inbox.join(name)).unwrap();
    }
    produce.await;
    let (jobs, mut everything) =
        stream_and_files_counted(&world, &store, &stream.messages, &files).await;

    invalid_rows_listed_and_counted(&world, &jobs, &files).await;
    let before = store.totals(None).await.unwrap();
    a_copy_with_the_same_bytes_adds_nothing(&world, &store, &staged, &inbox).await;
    assert_eq!(store.totals(None).await.unwrap(), before);
    a_rewritten_file_is_a_conflict(&world, &store, &staged, &inbox).await;
    assert_eq!(store.totals(None).await.unwrap(), before);
    let late = a_half_written_file_waits(&world, &store, &staged, &inbox, &leaders).await;
    everything.extend(late.iter().cloned());
    assert_totals_equal(
        &expected_totals(&everything),
        &store.totals(None).await.unwrap(),
    );
    // Several more listings: nothing is queued again.
    three_more_listings(&world, &leaders).await;
    assert_eq!(
        imports(&store).await.len(),
        9,
        "6 files, a copy, a conflict, a late file"
    );
}

/// An S3 event notification naming `objects` (key, size, ETag) in `bucket`.
fn notification(bucket: &str, objects: &[(String, usize, String)]) -> Vec<u8> {
    let records: Vec<serde_json::Value> = objects
        .iter()
        .map(|(key, size, etag)| {
            serde_json::json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-12-01T02:00:00.000Z", "eventName": "ObjectCreated:Put",
                "s3": {"s3SchemaVersion": "1.0", "configurationId": "tally",
                       "bucket": {"name": bucket, "arn": format!("arn:aws:s3:::{bucket}")},
                       "object": {"key": key, "size": size, "eTag": etag, "sequencer": "0055AED6DCD90281E5"}}
            })
        })
        .collect();
    serde_json::to_vec(&serde_json::json!({ "Records": records })).unwrap()
}

/// Files in S3, found by watching a prefix and pushed by
/// notifications posted to ingest, twice.
async fn s3_prefix_and_notifications(backend: Backend) {
    use object_store::ObjectStoreExt;
    let mut world = World::new("import-s3", backend).await;
    world.env = s3_env();
    let store = world.store().await;
    let bucket = world.dir.file_name().unwrap().to_str().unwrap().to_owned();
    let s3 = files::bucket(&bucket).await;
    world.start_worker("worker", &[]);
    start_aggregator(
        &mut world,
        "aggregator",
        &aggregator_settings(Some(&format!("s3://{bucket}/watched/")), "1000"),
    );
    let token = "import-token";
    let database = ("ingest.database_url", world.database_url.clone());
    let (_, addr) = world
        .start_ingest("ingest", token, &[(database.0, database.1.as_str())])
        .await;

    let stream = common::traffic(92, 30_000);
    let produce = common::produce(&world.brokers, &world.orders, &stream.messages);
    let files = six_files(&world.dir.join("staged"), 110);
    let mut pushed = Vec::new();
    for (n, (name, _)) in files.iter().enumerate() {
        let key = if n % 2 == 0 {
            format!("watched/{name}")
        } else {
            format!("pushed/{name}")
        };
        let body = std::fs::read(world.dir.join("staged").join(name)).unwrap();
        let size = body.len();
        let put = s3.put(&key.as_str().into(), body.into()).await.unwrap();
        if n % 2 == 1 {
            pushed.push((key, size, put.e_tag.unwrap().trim_matches('"').to_owned()));
        }
    }
    let body = notification(&bucket, &pushed);
    let auth = format!("Bearer {token}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", "application/json"),
    ];
    let (status, reply) = common::http(&addr, "POST", "/v1/imports", &headers, &body)
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!(
        (status, reply["queued"].as_u64()),
        (200, Some(3)),
        "{reply}"
    );
    // The same notification again: nothing new.
    let (status, again) = common::http(&addr, "POST", "/v1/imports", &headers, &body)
        .await
        .unwrap();
    let again: serde_json::Value = serde_json::from_slice(&again).unwrap();
    assert_eq!(
        (status, again["queued"].as_u64()),
        (200, Some(0)),
        "{again}"
    );
    assert!(
        again["records"]
            .as_array()
            .unwrap()
            .iter()
            .all(|r| r["outcome"] == "skipped"),
        "{again}"
    );
    // Without the token, nothing.
    let (status, _) = common::http(&addr, "POST", "/v1/imports", &[], &body)
        .await
        .unwrap();
    assert_eq!(status, 401);

    produce.await;
    let (_, everything) = stream_and_files_counted(&world, &store, &stream.messages, &files).await;
    let expected = expected_totals(&everything);
    // Delivered a third time after the imports: still nothing.
    let (status, late) = common::http(&addr, "POST", "/v1/imports", &headers, &body)
        .await
        .unwrap();
    let late: serde_json::Value = serde_json::from_slice(&late).unwrap();
    assert_eq!((status, late["queued"].as_u64()), (200, Some(0)), "{late}");
    assert!(
        late["records"][0]["reason"]
            .as_str()
            .unwrap()
            .contains("already imported by job"),
        "{late}"
    );
    assert_eq!(imports(&store).await.len(), 6);
    assert_eq!(store.totals(None).await.unwrap(), expected);
}

/// An aggregator killed in the middle of an import, and a file
/// that arrives while none runs.
async fn killed_mid_import(backend: Backend) {
    let mut world = World::new("import-kill", backend).await;
    let store = world.store().await;
    let inbox = world.dir.join("inbox");
    let staged = world.dir.join("staged");
    std::fs::create_dir_all(&inbox).unwrap();
    std::fs::create_dir_all(&staged).unwrap();
    let settings = aggregator_settings(Some(inbox.to_str().unwrap()), "500");
    let first = start_aggregator(&mut world, "aggregator", &settings);

    let small = events(120, 20_000);
    write_ndjson(&staged.join("small.ndjson"), &small);
    std::fs::copy(staged.join("small.ndjson"), inbox.join("small.ndjson")).unwrap();
    all_imported(&world, &store, 1).await;

    let big = events(121, 1_000_000);
    write_parquet(&staged.join("big.parquet"), &big);
    std::fs::copy(staged.join("big.parquet"), inbox.join("big.parquet")).unwrap();
    world
        .wait_for(
            "the big import running",
            Duration::from_secs(120),
            || async {
                imports_of(&store, "big.parquet")
                    .await
                    .iter()
                    .any(|j| j.tasks[0].state == State::Running)
            },
        )
        .await;
    world.kill(first);
    let job = imports_of(&store, "big.parquet").await.remove(0);
    assert!(
        !job.state.is_final(),
        "killed before the import committed: {job:#?}"
    );

    // Arrives while no aggregator runs.
    let later = events(122, 30_000);
    write_format(&staged.join("later.csv"), "csv", &later);
    std::fs::copy(staged.join("later.csv"), inbox.join("later.csv")).unwrap();
    start_aggregator(&mut world, "aggregator", &settings);
    let jobs = all_imported(&world, &store, 3).await;
    let big_job = jobs.iter().find(|j| j.id == job.id).unwrap();
    assert_eq!(
        big_job.tasks[0].attempts, 2,
        "the killed attempt, then the one after its lease lapsed: {big_job:#?}"
    );
    let files = vec![
        ("small.ndjson".to_owned(), small),
        ("big.parquet".to_owned(), big),
        ("later.csv".to_owned(), later),
    ];
    assert_rows_per_file(&jobs, &files);
    let everything: Vec<Generated> = files.iter().flat_map(|(_, m)| m.iter().cloned()).collect();
    assert_totals_equal(
        &expected_totals(&everything),
        &store.totals(None).await.unwrap(),
    );
}

fn job_id(out: &std::process::Output) -> i64 {
    assert!(
        out.status.success(),
        "{}{}",
        stdout(out),
        String::from_utf8_lossy(&out.stderr)
    );
    stdout(out)
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .expect("the job id on the first line")
}

/// `--after`: a job runs only after the one it waits on succeeded; a file
/// imported already is not queued again.
async fn a_job_waits_for_the_one_it_is_after(backend: Backend) {
    let mut world = World::new("import-after", backend).await;
    let store = world.store().await;
    let mut settings = aggregator_settings(None, "0");
    settings.push(("aggregator.backfill_max_attempts".into(), "1".into()));
    let url = world.database_url.clone();

    // A backfill of November, then an import that must wait for it: were
    // the import first, the backfill's replace would erase its November rows.
    let range = events(130, 100_000);
    let file = events(131, 60_000);
    write_parquet(&world.dir.join("range.parquet"), &range);
    write_format(&world.dir.join("drop.csv"), "csv", &file);
    let backfill = job_id(&tally(&[
        "backfill",
        "--source",
        world.dir.join("range.parquet").to_str().unwrap(),
        "--from",
        "2026-11-01",
        "--to",
        "2026-12-01",
        "--database-url",
        &url,
    ]));
    let import = job_id(&tally(&[
        "import",
        "--source",
        world.dir.join("drop.csv").to_str().unwrap(),
        "--after",
        &backfill.to_string(),
        "--database-url",
        &url,
    ]));
    // Both exist before any runner does, so the order is the runner's choice.
    start_aggregator(&mut world, "aggregator", &settings);
    let done = wait_for_job(&store, import, |j| j.state.is_final()).await;
    let first = store.job(backfill).await.unwrap().unwrap();
    assert_eq!(
        (first.state, done.state),
        (State::Succeeded, State::Succeeded),
        "{first:#?}\n{done:#?}"
    );
    assert!(
        done.tasks[0].started_at.unwrap() >= first.finished_at.unwrap(),
        "the import started after the backfill ended"
    );
    assert_eq!(done.after.len(), 1);
    assert_eq!(first.before, vec![import]);
    let (from, to) = (
        schemas::Day::parse("2026-11-01").unwrap(),
        schemas::Day::parse("2026-12-01").unwrap(),
    );
    let mut expected = expected_totals(&range);
    expected.retain(|k, _| k.day >= from && k.day < to);
    schemas::totals::merge_into(&mut expected, expected_totals(&file));
    assert_totals_equal(&expected, &store.totals(None).await.unwrap());
    let show = tally(&["jobs", "show", &import.to_string(), "--database-url", &url]);
    assert!(
        stdout(&show).contains(&format!("after     job {backfill} (succeeded)")),
        "{}",
        stdout(&show)
    );

    let env = world.env.clone();
    let again = tally_with(
        &[
            "import",
            "--source",
            world.dir.join("drop.csv").to_str().unwrap(),
            "--database-url",
            &url,
        ],
        &env,
    );
    assert!(
        again.status.success() && stdout(&again).is_empty(),
        "importing a file again queues nothing"
    );
    assert!(String::from_utf8_lossy(&again.stderr).contains("already imported by job"));
}

/// A dependency that fails cancels its dependants, and theirs, leaving the
/// table unchanged; a job after one that does not exist, or one that failed
/// already, is refused when created.
#[expect(
    clippy::too_many_lines,
    reason = "one chain of jobs, created, run and refused in order"
)]
async fn a_failed_dependency_cancels_its_chain(backend: Backend) {
    let mut world = World::new("import-after-failed", backend).await;
    let store = world.store().await;
    let mut settings = aggregator_settings(None, "0");
    settings.push(("aggregator.backfill_max_attempts".into(), "1".into()));
    let url = world.database_url.clone();
    write_parquet(&world.dir.join("range.parquet"), &events(130, 100_000));
    // The jobs are created while no runner runs, so none has ended before
    // its dependants exist.
    let table = table_bytes(&world).await;
    let broken = world.dir.join("broken.parquet");
    std::fs::write(&broken, b"not parquet at all").unwrap();
    let failing = job_id(&tally(&[
        "backfill",
        "--source",
        broken.to_str().unwrap(),
        "--format",
        "parquet",
        "--from",
        "2026-11-01",
        "--to",
        "2026-12-01",
        "--database-url",
        &url,
    ]));
    let other = events(132, 10_000);
    write_ndjson(&world.dir.join("other.ndjson"), &other);
    let waiting = job_id(&tally(&[
        "import",
        "--source",
        world.dir.join("other.ndjson").to_str().unwrap(),
        "--after",
        &failing.to_string(),
        "--database-url",
        &url,
    ]));
    let chained = job_id(&tally(&[
        "backfill",
        "--source",
        world.dir.join("range.parquet").to_str().unwrap(),
        "--from",
        "2026-11-01",
        "--to",
        "2026-12-01",
        "--after",
        &waiting.to_string(),
        "--database-url",
        &url,
    ]));
    start_aggregator(&mut world, "aggregator", &settings);
    let ended = wait_for_job(&store, chained, |j| j.state.is_final()).await;
    let (failed, cancelled) = (
        store.job(failing).await.unwrap().unwrap(),
        store.job(waiting).await.unwrap().unwrap(),
    );
    assert_eq!(
        (failed.state, cancelled.state, ended.state),
        (State::Failed, State::Cancelled, State::Cancelled)
    );
    assert!(
        cancelled
            .last_error
            .as_deref()
            .unwrap()
            .contains(&format!("job {failing}, which it waits on, failed")),
        "{cancelled:#?}"
    );
    assert!(
        ended
            .last_error
            .as_deref()
            .unwrap()
            .contains(&format!("job {waiting}, which it waits on, cancelled")),
        "{ended:#?}"
    );
    assert!(
        cancelled.tasks.iter().all(|t| t.attempts == 0),
        "a cancelled dependant never ran"
    );
    assert_eq!(table_bytes(&world).await, table);

    // Refused when created: a job that does not exist (the only way to name
    // a cycle, since ids come from creation) and one that already failed.
    let next = tally(&[
        "import",
        "--source",
        world.dir.join("other.ndjson").to_str().unwrap(),
        "--after",
        "999999",
        "--database-url",
        &url,
    ]);
    assert_eq!(next.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&next.stderr).contains("no job 999999"),
        "{}",
        String::from_utf8_lossy(&next.stderr)
    );
    let after_failed = tally(&[
        "import",
        "--source",
        world.dir.join("other.ndjson").to_str().unwrap(),
        "--after",
        &failing.to_string(),
        "--database-url",
        &url,
    ]);
    assert_eq!(after_failed.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&after_failed.stderr).contains("would never run"));
}

on_both_databases!(
    watched_folder,
    s3_prefix_and_notifications,
    killed_mid_import,
    a_job_waits_for_the_one_it_is_after,
    a_failed_dependency_cancels_its_chain
);
