//! `bench backfill`: a backfill from Parquet files to a finished table,
//! against DuckDB running two queries on the same files (`bare`, the same
//! GROUP BY without validation or dedupe, and `rules`, tally's rules and
//! dedupe written in SQL); and the
//! import of the same files into a table that already holds streamed totals.
//!
//! The files are generated once per size into `--dir` (one file per 10
//! million events, text columns as exported from the event stream, with
//! the generator's duplicates and invalid rows). Each tally run creates a
//! job in a fresh SQLite file and runs it with the aggregator's own runner
//! (2 tasks at once) until the job has replaced its range; each DuckDB run
//! (`bench/duckdb_backfill.py`) creates a table from each query, tally and
//! the two queries taking turns.
//!
//! Each import run starts from a fresh SQLite file holding the totals of
//! a million streamed events (committed through the fence, as the
//! aggregator does), runs the elected scheduler's watch (no settle time)
//! and the runner, and times from the files' arrival in the watched folder
//! (a hard link: a writer renaming into place) to the last file's commit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use backfill::{now_ms, plan, Format, RunnerConfig, WatchConfig};
use datafusion::arrow::array::{ArrayRef, RecordBatch, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::parquet::arrow::ArrowWriter;
use datafusion::parquet::basic::Compression;
use datafusion::parquet::file::properties::WriterProperties;
use ingest::load::generate::{Generator, GeneratorConfig};
use schemas::scan::object_fields;
use schemas::Day;
use store::jobs::{Kind, Scope, State};
use store::Store;
use tokio_util::sync::CancellationToken;

const FIELDS: [&str; 7] = [
    "event_id",
    "order_id",
    "merchant_id",
    "kind",
    "amount",
    "currency",
    "occurred_at",
];
const PER_FILE: u64 = 10_000_000;
const ROW_GROUP: usize = 1_000_000;

/// Writes `events` generated events as Parquet files under `dir`, unless
/// they are there already.
fn write_files(dir: &Path, events: u64) -> Result<()> {
    let done = dir.join("COMPLETE");
    if done.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)?;
    let schema = Arc::new(Schema::new(
        FIELDS.map(|f| Field::new(f, DataType::Utf8, true)).to_vec(),
    ));
    let properties = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(ROW_GROUP))
        .build();
    let config = GeneratorConfig {
        seed: 11,
        events,
        keyless: true,
        late_share: 0.1,
        ..GeneratorConfig::default()
    };
    let mut generator = Generator::new(config).peekable();
    let mut file_no = 0;
    while generator.peek().is_some() {
        let path = dir.join(format!("orders-{file_no:04}.parquet"));
        let mut writer = ArrowWriter::try_new(
            std::fs::File::create(&path)?,
            schema.clone(),
            Some(properties.clone()),
        )?;
        let mut in_file = 0u64;
        while in_file < PER_FILE && generator.peek().is_some() {
            let mut builders: Vec<StringBuilder> =
                (0..FIELDS.len()).map(|_| StringBuilder::new()).collect();
            for message in generator
                .by_ref()
                .take(ROW_GROUP.min((PER_FILE - in_file) as usize))
            {
                let text = std::str::from_utf8(&message.payload)?;
                let fields = object_fields(text, &FIELDS).unwrap_or([None; 7]);
                for (builder, raw) in builders.iter_mut().zip(fields) {
                    builder.append_option(raw.map(|r| r.raw.trim_matches('"')));
                }
                in_file += 1;
            }
            let arrays: Vec<ArrayRef> = builders
                .iter_mut()
                .map(|b| Arc::new(b.finish()) as ArrayRef)
                .collect();
            writer.write(&RecordBatch::try_new(schema.clone(), arrays)?)?;
        }
        writer.close()?;
        eprintln!("  wrote {} ({in_file} events)", path.display());
        file_no += 1;
    }
    std::fs::write(done, events.to_string())?;
    Ok(())
}

/// One backfill of every file in `dir`, timed from job creation to the
/// finished table.
async fn tally_once(dir: &Path, shards: Option<i32>) -> Result<(Duration, i64)> {
    let db = dir.join("bench.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let store = Arc::new(Store::connect(&format!("sqlite://{}", db.display())).await?);
    let scope = Scope {
        from: Day(0),
        to: Day(100_000),
        merchants: Vec::new(),
    };
    let source = format!("{}/*.parquet", dir.display());
    let started = Instant::now();
    let job = plan(
        &source,
        Some(Format::Parquet),
        scope,
        shards,
        None,
        Vec::new(),
    )
    .await
    .map_err(anyhow::Error::msg)?;
    let id = store.create_job(&job, now_ms()).await?;
    let shutdown = CancellationToken::new();
    let config = RunnerConfig {
        owner: "bench".into(),
        parallelism: 2,
        max_attempts: 1,
        retry_base_ms: 1000,
        lease_ms: 600_000,
        poll_ms: 20,
        local_days: Some(schemas::zone::Zone::UTC),
    };
    let running = tokio::spawn(backfill::run_tasks(store.clone(), config, shutdown.clone()));
    let job = loop {
        let job = store.job(id).await?.context("the job exists")?;
        if job.state.is_final() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await?;
    if job.state != State::Succeeded {
        bail!("the backfill ended {}: {:?}", job.state, job.last_error);
    }
    Ok((elapsed, job.keys_written.unwrap_or(0)))
}

/// Commits the totals of `events` streamed events to `store` through the
/// fence, as one partial of partition 0.
async fn stream_totals(store: &Store, events: u64) -> Result<usize> {
    let mut sums: std::collections::BTreeMap<schemas::TotalsKey, schemas::Sums> =
        Default::default();
    let config = GeneratorConfig {
        seed: 12,
        events,
        late_share: 0.1,
        ..GeneratorConfig::default()
    };
    for message in Generator::new(config) {
        if let ingest::load::generate::Truth::Counted { key, kind, amount } = message.truth {
            sums.entry(key).or_default().add_event(kind, amount);
        }
    }
    let claim = store.claim("orders", 0, "bench").await?;
    let rows: Vec<schemas::PartialRow> = sums
        .into_iter()
        .map(|(key, sums)| schemas::PartialRow { key, sums })
        .collect();
    let keys = rows.len();
    let partial = schemas::Partial {
        topic: "orders".into(),
        partition: 0,
        epoch: claim.epoch,
        first_offset: 0,
        last_offset: events as i64 - 1,
        dedupe_from_offset: 0,
        dedupe_clock_ms: None,
        events: schemas::partial::EventCounts {
            counted: events,
            ..Default::default()
        },
        max_append_ms: None,
        local_rows: Vec::new(),
        rows,
    };
    store.apply(&[partial]).await?;
    Ok(keys)
}

/// One import of every file in `dir` into a table of streamed totals,
/// timed from the files' arrival in the watched folder to the last commit.
async fn import_once(dir: &Path) -> Result<(Duration, i64, usize)> {
    let db = dir.join("import.sqlite");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let store = Arc::new(Store::connect(&format!("sqlite://{}", db.display())).await?);
    let streamed = stream_totals(&store, 1_000_000).await?;
    let inbox = dir.join("inbox");
    let _ = std::fs::remove_dir_all(&inbox);
    std::fs::create_dir_all(&inbox)?;
    let shutdown = CancellationToken::new();
    let watch = WatchConfig {
        source: inbox.display().to_string(),
        format: None,
        poll: Duration::from_millis(20),
        settle: Duration::ZERO,
    };
    let scheduler = tokio::spawn(backfill::run_scheduler(
        store.clone(),
        Duration::from_millis(20),
        Some(watch),
        shutdown.clone(),
    ));
    let config = RunnerConfig {
        owner: "bench".into(),
        parallelism: 2,
        max_attempts: 1,
        retry_base_ms: 1000,
        lease_ms: 600_000,
        poll_ms: 20,
        local_days: Some(schemas::zone::Zone::UTC),
    };
    let running = tokio::spawn(backfill::run_tasks(store.clone(), config, shutdown.clone()));
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "parquet"))
        .collect();
    files.sort();
    let started = Instant::now();
    for file in &files {
        std::fs::hard_link(file, inbox.join(file.file_name().expect("a file name")))?;
    }
    let jobs = loop {
        let jobs: Vec<_> = store
            .jobs(1_000)
            .await?
            .into_iter()
            .filter(|j| j.kind == Kind::Import)
            .collect();
        if jobs.len() == files.len() && jobs.iter().all(|j| j.state.is_final()) {
            break jobs;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = started.elapsed();
    shutdown.cancel();
    running.await?;
    scheduler.await?;
    if let Some(job) = jobs.iter().find(|j| j.state != State::Succeeded) {
        bail!("an import ended {}: {:?}", job.state, job.last_error);
    }
    Ok((
        elapsed,
        jobs.iter().map(|j| j.keys_written.unwrap_or(0)).sum(),
        streamed,
    ))
}

/// One DuckDB run of `query` (`bare` or `rules`, see
/// `bench/duckdb_backfill.py`) into a table; its own timing.
fn duckdb_once(python: &str, dir: &Path, query: &str) -> Result<Option<Duration>> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("duckdb_backfill.py");
    let out = match std::process::Command::new(python)
        .arg(script)
        .arg(dir)
        .arg(query)
        .output()
    {
        Ok(out) => out,
        Err(_) => return Ok(None),
    };
    if !out.status.success() {
        eprintln!(
            "  DuckDB skipped: {}",
            String::from_utf8_lossy(&out.stderr)
                .lines()
                .last()
                .unwrap_or("")
        );
        return Ok(None);
    }
    let seconds: f64 = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .context("DuckDB prints its seconds")?;
    Ok(Some(Duration::from_secs_f64(seconds)))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort();
    values[values.len() / 2]
}

/// Runs the imports and prints the median, beside the backfill's when `backfill` is given.
pub fn import(events: u64, runs: u64, root: &Path) -> Result<()> {
    let dir = root.join(format!("backfill-{events}"));
    println!(
        "import: {events} events as Parquet in {}, into a table of streamed totals",
        dir.display()
    );
    write_files(&dir, events)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mut times = Vec::new();
    for run in 0..runs {
        let (elapsed, keys, streamed) = runtime.block_on(import_once(&dir))?;
        println!("  run {run}: import {:.2} s from arrival to commit ({keys} rows upserted into a table of {streamed})", elapsed.as_secs_f64());
        times.push(elapsed);
    }
    let t = median(times);
    println!(
        "  import median {:.2} s ({:.2} M events/s)",
        t.as_secs_f64(),
        events as f64 / t.as_secs_f64() / 1e6
    );
    Ok(())
}

/// Runs the comparison and prints medians and their ratio.
pub fn run(events: u64, runs: u64, shards: Option<i32>, root: &Path, python: &str) -> Result<()> {
    let dir = root.join(format!("backfill-{events}"));
    println!("backfill: {events} events as Parquet in {}", dir.display());
    write_files(&dir, events)?;
    let bytes: u64 = std::fs::read_dir(&dir)?
        .flatten()
        .filter(|e| e.path().extension().is_some_and(|x| x == "parquet"))
        .map(|e| e.metadata().map_or(0, |m| m.len()))
        .sum();
    println!("  {:.0} MiB of Parquet", bytes as f64 / (1 << 20) as f64);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let Ok(out) = std::process::Command::new(python)
        .args(["-c", "import duckdb; print(duckdb.__version__)"])
        .output()
    {
        let version = String::from_utf8_lossy(&out.stdout);
        println!("  DuckDB {} ({python})", version.trim());
    }
    // DuckDB's two queries: its best case, and tally's rules in SQL.
    let queries = ["bare", "rules"];
    let (mut tally, mut duck) = (Vec::new(), [Vec::new(), Vec::new()]);
    for run in 0..runs {
        let (elapsed, keys) = runtime.block_on(tally_once(&dir, shards))?;
        println!(
            "  run {run}: tally {:.2} s ({keys} rows written)",
            elapsed.as_secs_f64()
        );
        tally.push(elapsed);
        for (query, times) in queries.iter().zip(&mut duck) {
            if let Some(d) = duckdb_once(python, &dir, query)? {
                println!("  run {run}: DuckDB {query} {:.2} s", d.as_secs_f64());
                times.push(d);
            }
        }
    }
    let t = median(tally);
    println!(
        "  tally median {:.2} s ({:.2} M events/s)",
        t.as_secs_f64(),
        events as f64 / t.as_secs_f64() / 1e6
    );
    for (query, times) in queries.iter().zip(duck) {
        if !times.is_empty() {
            let d = median(times);
            println!(
                "  DuckDB {query} median {:.2} s; tally / DuckDB {query} = {:.2}",
                d.as_secs_f64(),
                t.as_secs_f64() / d.as_secs_f64()
            );
        }
    }
    Ok(())
}
