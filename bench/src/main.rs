//! Benchmarks of tally's worker hot path, run with
//! `cargo run --release -p bench -- hotpath`.
//!
//! - `hotpath`: raw JSON message bytes → Arrow batch → DataFusion partial
//!   totals, on one thread (a current-thread runtime), reported as the median
//!   events per second over several runs, with local days off and on
//!   (`--merchants N` merchants, each with a zone; `--long-ids` gives them
//!   UUIDs for ids).
//! - `parsers`: the hand-written amount, RFC 3339 and event parsers against
//!   rust_decimal, chrono and serde_json, ns per item.
//! - `dedupe-memory`: heap bytes held by the dedupe window per million ids
//!   (with the content digests of the conflict check), counted by a wrapping
//!   global allocator.
//! - `partials`: how the worker cuts one batch of many merchants into
//!   partials that fit the default row and byte limits.
//! - `ingest`: events per second that `tally ingest` accepts over HTTP into a
//!   real broker, with p50/p99 request latency (`bench/ingest.sh` starts the
//!   broker and runs it for batches of 100 and 1,000).
//! - `backfill`: a backfill from Parquet to a finished table, against DuckDB
//!   running its bare GROUP BY and tally's rules in SQL on the same files
//!   (`DUCKDB_PYTHON` names a Python with the duckdb package;
//!   `bench/backfill.sh` installs the pinned one and runs it).
//! - `e2e`: the whole pipeline (2 workers, 1 aggregator, PostgreSQL) from
//!   process start to exact totals, against bare consumers draining the same
//!   topic, with CPU, peak memory and latency (`bench/e2e.sh` starts the
//!   broker and the database and runs it).
//! - `closes`: what closing days costs the aggregator on PostgreSQL: the
//!   close run of a day of 100,000 merchants, and a flush's time before any
//!   close, after it, and with late rows that become adjustments
//!   (`bench/closes.sh` starts the database and runs it).
//! - `import`: the same files imported (added once per file) into a table
//!   that already holds streamed totals, from arrival in a watched folder
//!   to the last commit.

// Each dependency is used: the test command's clippy fails otherwise (tests
// and benchmarks see dev-dependencies too, so the check is off for them).
#![cfg_attr(not(test), warn(unused_crate_dependencies))]

mod backfill;
mod closes;
mod e2e;
mod http_load;
mod parsers;

use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ingest::load::generate::{self, Generator, GeneratorConfig};
use mimalloc::MiMalloc;
use shard_worker::aggregate::{partial_rows, session};
use shard_worker::decode::{decode_messages, Message};
use shard_worker::dedupe::{DedupeWindow, IdHash};

/// Counts live heap bytes so memory figures are exact, not sampled, on top
/// of the allocator the `tally` binary uses.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: delegates every call to mimalloc unchanged.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(
            new_size as isize - layout.size() as isize,
            Ordering::Relaxed,
        );
        unsafe { MiMalloc.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn messages(events: u64) -> Vec<Message> {
    messages_of(
        events,
        GeneratorConfig::default().merchants,
        generate::Layout::Producer,
    )
}

/// `events` generated messages of `merchants` merchants.
fn messages_of(events: u64, merchants: u32, layout: generate::Layout) -> Vec<Message> {
    let config = GeneratorConfig {
        seed: 7,
        events,
        merchants,
        layout,
        ..GeneratorConfig::default()
    };
    Generator::new(config)
        .enumerate()
        .map(|(i, g)| Message {
            offset: i as i64,
            key: g.key.map(String::into_bytes),
            payload: g.payload,
            timestamp_ms: Some(1_763_600_000_000 + i as i64),
            headers: Vec::new(),
        })
        .collect()
}

/// Gives every merchant a UUID for an id (36 bytes, the most common id
/// format) in place of the generator's `m-00042`, in the key and in the
/// event, the same UUID for the same merchant.
fn with_uuid_merchants(messages: &mut [Message]) {
    let uuid = |id: &[u8]| -> Option<Vec<u8>> {
        let rank: u64 = std::str::from_utf8(id.strip_prefix(b"m-")?)
            .ok()?
            .parse()
            .ok()?;
        // splitmix64 of the rank, twice: 128 well-mixed bits.
        let mix = |mut z: u64| {
            z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        let (a, b) = (mix(rank), mix(rank ^ 0x5555_5555));
        Some(
            format!(
                "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
                a >> 32,
                (a >> 16) & 0xffff,
                a & 0xfff,
                0x8000 | (b >> 48) & 0x3fff,
                b & 0xffff_ffff_ffff
            )
            .into_bytes(),
        )
    };
    const FIELD: &[u8] = b"\"merchant_id\":\"";
    for message in messages {
        if let Some(key) = message.key.as_mut() {
            if let Some(long) = uuid(key) {
                *key = long;
            }
        }
        let payload = &message.payload;
        let Some(at) = payload.windows(FIELD.len()).position(|w| w == FIELD) else {
            continue;
        };
        let start = at + FIELD.len();
        let Some(len) = payload[start..].iter().position(|&b| b == b'"') else {
            continue;
        };
        if let Some(long) = uuid(&payload[start..start + len]) {
            let mut replaced = payload[..start].to_vec();
            replaced.extend_from_slice(&long);
            replaced.extend_from_slice(&payload[start + len..]);
            message.payload = replaced;
        }
    }
}

fn arg(args: &[String], name: &str, default: u64) -> Result<u64> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .context("missing value")?
            .parse()
            .with_context(|| format!("{name} takes a number")),
        None => Ok(default),
    }
}

/// Passes of each mode per `hotpath` run; a run keeps each mode's fastest.
const PASSES: usize = 5;

#[expect(
    clippy::too_many_lines,
    reason = "a benchmark reads top to bottom: arguments, set-up, timed passes, report"
)]
fn hotpath(args: &[String]) -> Result<()> {
    let events = arg(args, "--events", 1_000_000)?;
    let batch = arg(args, "--batch", 20_000)? as usize;
    let runs = arg(args, "--runs", 5)?;
    // Every merchant gets a zone: the table of zones is as large as this.
    let merchants = arg(
        args,
        "--merchants",
        u64::from(GeneratorConfig::default().merchants),
    )?;
    let layout = layout_arg(args, "producer")?;
    let mut input = messages_of(events, u32::try_from(merchants)?, layout);
    let long_ids = args.iter().any(|a| a == "--long-ids");
    if long_ids {
        with_uuid_merchants(&mut input);
    }
    let bytes: usize = input.iter().map(|m| m.payload.len()).sum();
    println!(
        "hotpath: {events} events of {merchants} merchants{} in the {layout:?} layout, mean {} bytes, batches of {batch}, {runs} runs, 1 thread",
        if long_ids { " (UUID ids)" } else { "" },
        bytes / input.len()
    );
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let (utc_only, local) = (session(false), session(true));
    // Local days on: the generator's merchants spread over five zones, DST
    // and half-hour offsets included.
    let names = [
        "UTC",
        "Asia/Tokyo",
        "America/St_Johns",
        "Europe/Berlin",
        "Australia/Lord_Howe",
    ];
    let merchants: std::collections::BTreeSet<String> = input
        .iter()
        .filter_map(|m| schemas::event::decode(&m.payload, None).ok())
        .map(|e| e.merchant_id.into_owned())
        .collect();
    let zones = std::sync::Arc::new(schemas::zone::Zones::new(
        merchants
            .into_iter()
            .enumerate()
            .map(|(i, m)| {
                (
                    m,
                    schemas::zone::Zone::parse(names[i % names.len()]).expect("IANA"),
                )
            })
            .collect(),
        schemas::zone::Zone::UTC,
    ));
    let pass = |zones: Option<std::sync::Arc<schemas::zone::Zones>>| -> Result<(Duration, Duration, usize)> {
        let ctx = if zones.is_some() { &local } else { &utc_only };
        let mut window = DedupeWindow::new(900_000, 2_000_000);
        let (mut keys, mut decoding) = (0usize, Duration::ZERO);
        let started = Instant::now();
        for chunk in input.chunks(batch) {
            let decode_started = Instant::now();
            let decoded = decode_messages(chunk, &mut window, 0, 0, zones.clone())?;
            decoding += decode_started.elapsed();
            keys += runtime.block_on(partial_rows(ctx, decoded.batch))?.len();
        }
        Ok((started.elapsed(), decoding, keys))
    };
    let mut local_rates = Vec::new();
    let mut costs = Vec::new();
    let ids: Vec<String> = input
        .iter()
        .filter_map(|m| {
            schemas::event::decode(&m.payload, None)
                .ok()
                .map(|e| e.event_id.into_owned())
        })
        .collect();
    let hashes: Vec<IdHash> = ids.iter().map(|id| IdHash::of(id)).collect();
    let mut rates = Vec::new();
    let mut stages: [Vec<f64>; 4] = Default::default();
    for run in 0..runs {
        // Each mode's fastest of five passes, taken in turn: the machine's
        // noise only ever adds time, and it comes and goes within seconds.
        let (mut utc_passes, mut local_passes) = (Vec::new(), Vec::new());
        for _ in 0..PASSES {
            utc_passes.push(pass(None)?);
            local_passes.push(pass(Some(zones.clone()))?);
        }
        let fastest = |passes: Vec<(Duration, Duration, usize)>| {
            passes.into_iter().min_by_key(|p| p.0).expect("passes ran")
        };
        let (elapsed, decoding, keys) = fastest(utc_passes);
        let rate = events as f64 / elapsed.as_secs_f64();
        let (local_elapsed, _, local_keys) = fastest(local_passes);
        let local_rate = events as f64 / local_elapsed.as_secs_f64();
        let cost = local_elapsed.as_secs_f64() / elapsed.as_secs_f64() - 1.0;
        println!(
            "  run {run}: {rate:>12.0} events/s ({keys} partial rows); local days on: \
             {local_rate:>12.0} events/s ({local_keys} rows), {:+.1} %",
            cost * 100.0
        );
        rates.push(rate);
        local_rates.push(local_rate);
        costs.push(cost);
        // The same work again, one stage at a time, in ns per event.
        let per_event = |took: Duration| took.as_secs_f64() * 1e9 / events as f64;
        let started = Instant::now();
        let valid = input
            .iter()
            .filter(|m| schemas::event::decode(&m.payload, m.key.as_deref()).is_ok())
            .count();
        let parsing = per_event(started.elapsed());
        let mut window = DedupeWindow::new(900_000, 2_000_000);
        let started = Instant::now();
        // As `decode_messages` sights them: each id's slot touched a few ids ahead.
        for (i, &id) in hashes.iter().enumerate() {
            if let Some(&ahead) = hashes.get(i + 8) {
                window.touch(ahead);
            }
            std::hint::black_box(window.sight_hashed(
                id,
                0,
                i as i64,
                1_763_600_000_000 + i as i64,
            ));
        }
        let deduping = started.elapsed().as_secs_f64() * 1e9 / ids.len() as f64;
        let total = per_event(elapsed);
        let aggregating = per_event(elapsed - decoding);
        stages[0].push(parsing);
        stages[1].push(deduping);
        stages[2].push(total - aggregating - parsing - deduping * valid as f64 / events as f64);
        stages[3].push(aggregating);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    println!("median: {:.0} events/s per core", median(&mut rates));
    println!(
        "median with local days on: {:.0} events/s per core; their cost, median of the runs' ratios: {:+.1} %",
        median(&mut local_rates),
        median(&mut costs) * 100.0
    );
    let [parsing, deduping, building, aggregating] = &mut stages;
    println!("  where an event's time goes (medians, ns):");
    println!(
        "    parse and validate the JSON          {:>5.0}",
        median(parsing)
    );
    println!(
        "    dedupe window, per new id (hashed)   {:>5.0}",
        median(deduping)
    );
    println!(
        "    digest, Arrow columns, bookkeeping   {:>5.0}",
        median(building)
    );
    println!(
        "    DataFusion partial aggregation       {:>5.0}",
        median(aggregating)
    );
    Ok(())
}

fn dedupe_memory(args: &[String]) -> Result<()> {
    let ids = arg(args, "--ids", 1_000_000)?;
    let names: Vec<String> = (0..ids).map(|i| format!("e-2a-{i}")).collect();
    let before = LIVE.load(Ordering::Relaxed);
    let mut window = DedupeWindow::new(i64::MAX / 4, usize::MAX);
    for (i, name) in names.iter().enumerate() {
        // Each id with its content digest, as the worker keeps it for the conflict check.
        window.sight(name, i as u64, i as i64, i as i64);
    }
    let held = LIVE.load(Ordering::Relaxed) - before;
    println!("dedupe window (with content digests): {} ids hold {:.1} MiB ({:.0} bytes per id; {:.1} MiB per million ids)",
        window.len(), held as f64 / 1_048_576.0, held as f64 / ids as f64, held as f64 / ids as f64 * 1e6 / 1_048_576.0);
    Ok(())
}

/// The partials the worker's cut makes of one batch of `--merchants` events,
/// one per merchant (a backlog of a busy partition), with the default limits.
fn partials(args: &[String]) -> Result<()> {
    use shard_worker::cut::{cut, Head, Limits, Span};
    let merchants = arg(args, "--merchants", 40_000)? as usize;
    let defaults = shard_worker::WorkerConfig::default();
    let limits = Limits {
        max_rows: defaults.partial_max_rows,
        max_bytes: defaults.partial_max_bytes,
    };
    let batch: Vec<Message> = (0..merchants)
        .map(|i| Message {
            offset: i as i64,
            key: None,
            payload: format!(
                r#"{{"event_id":"e-{i}","order_id":"o-{i}","merchant_id":"merchant-{i:08}","kind":"sale","amount":"12.34","currency":"EUR","occurred_at":"2026-11-20T10:00:00Z"}}"#
            )
            .into_bytes(),
            timestamp_ms: Some(1_763_600_000_000),
            headers: Vec::new(),
        })
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let mut window = DedupeWindow::new(900_000, 2_000_000);
    let decoded = decode_messages(&batch, &mut window, 0, 0, None)?;
    let head = Head {
        topic: "orders",
        partition: 0,
        epoch: 1,
    };
    let whole = Span {
        start: 0,
        end: batch.len(),
    };
    let pieces = runtime.block_on(cut(
        &session(false),
        &head,
        &batch,
        &decoded,
        0,
        whole,
        None,
        limits,
    ));
    let mut rows: Vec<usize> = pieces.iter().map(|p| p.partial.rows.len()).collect();
    let mut bytes: Vec<usize> = pieces.iter().map(|p| p.payload.len()).collect();
    rows.sort_unstable();
    bytes.sort_unstable();
    let total: usize = bytes.iter().sum();
    println!(
        "partials: one batch of {merchants} events for {merchants} merchants, limits {} rows / {} bytes -> {} partials; \
         rows min {} median {} max {}; bytes min {} median {} max {} ({:.0} bytes per row)",
        limits.max_rows, limits.max_bytes, pieces.len(), rows[0], rows[rows.len() / 2], rows[rows.len() - 1],
        bytes[0], bytes[bytes.len() / 2], bytes[bytes.len() - 1], total as f64 / merchants as f64
    );
    Ok(())
}

/// The generator's `--layout` (`producer` or `varied`), `default` when absent.
fn layout_arg(args: &[String], default: &str) -> Result<generate::Layout> {
    let name = args
        .iter()
        .position(|a| a == "--layout")
        .and_then(|i| args.get(i + 1))
        .map_or(default, String::as_str);
    generate::Layout::parse(name)
        .with_context(|| format!("--layout {name:?}: must be `producer` or `varied`"))
}

fn text_arg(args: &[String], name: &str) -> Result<String> {
    let i = args
        .iter()
        .position(|a| a == name)
        .with_context(|| format!("{name} is required"))?;
    args.get(i + 1)
        .cloned()
        .with_context(|| format!("{name} needs a value"))
}

/// Starts `tally ingest` against `--brokers`, loads it, and stops it.
fn ingest(args: &[String]) -> Result<()> {
    let brokers = text_arg(args, "--brokers")?;
    let tally = text_arg(args, "--tally-bin")?;
    let events = arg(args, "--events", 200_000)?;
    let batch = arg(args, "--batch", 1_000)? as usize;
    let clients = arg(args, "--clients", 8)? as usize;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let topic = format!("bench-orders-{}", std::process::id());
        let spec = kafka::topics::TopicSpec {
            partitions: 8,
            replication: 1,
            min_insync_replicas: 0,
            partials: None,
        };
        kafka::topics::ensure_topics(&brokers, &Default::default(), &[&topic], spec).await?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let addr = format!("127.0.0.1:{port}");
        let mut service = std::process::Command::new(&tally)
            .args([
                "ingest",
                "--brokers",
                &brokers,
                "--set",
                &format!("ingest.listen={addr}"),
            ])
            .args([
                "--set",
                &format!("ingest.orders_topic={topic}"),
                "--set",
                "ingest.tokens=bench",
            ])
            .stderr(std::process::Stdio::null())
            .spawn()
            .with_context(|| format!("starting {tally}"))?;
        let deadline = Instant::now() + Duration::from_secs(60);
        while tokio::net::TcpStream::connect(&addr).await.is_err() {
            if Instant::now() > deadline {
                bail!("tally ingest did not listen on {addr}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let result = http_load::run(&addr, "bench", events, batch, clients).await;
        let _ = service.kill();
        let _ = service.wait();
        result
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("hotpath") => hotpath(&args),
        Some("dedupe-memory") => dedupe_memory(&args),
        Some("parsers") => parsers::run(&args),
        Some("partials") => partials(&args),
        Some("ingest") => ingest(&args),
        Some("backfill") => {
            let root = args.iter().position(|a| a == "--dir").and_then(|i| args.get(i + 1)).map_or_else(std::env::temp_dir, Into::into);
            let python = std::env::var("DUCKDB_PYTHON").unwrap_or_else(|_| "python3".into());
            let shards = match arg(&args, "--shards", 0)? {
                0 => None,
                n => Some(n as i32),
            };
            backfill::run(arg(&args, "--events", 10_000_000)?, arg(&args, "--runs", 3)?, shards, &root, &python)
        }
        Some("e2e") => {
            let sets = args.iter().enumerate().filter(|(_, a)| *a == "--set").filter_map(|(i, _)| args.get(i + 1).cloned()).collect();
            let setup = e2e::Setup {
                brokers: text_arg(&args, "--brokers")?,
                pg_url: text_arg(&args, "--pg-url")?,
                tally: text_arg(&args, "--tally-bin")?,
                events: arg(&args, "--events", 1_000_000)?,
                merchants: arg(&args, "--merchants", 10_000)? as u32,
                partitions: arg(&args, "--partitions", 8)? as i32,
                workers: arg(&args, "--workers", 2)? as usize,
                backlog: args.iter().any(|a| a == "--backlog"),
                layout: layout_arg(&args, "varied")?,
                sets,
                python: args.iter().position(|a| a == "--python-peer").and_then(|i| args.get(i + 1)).cloned(),
            };
            e2e::run(&setup, arg(&args, "--runs", 3)?)
        }
        Some("closes") => closes::run(
            &text_arg(&args, "--pg-url")?,
            arg(&args, "--merchants", 100_000)? as u32,
            arg(&args, "--runs", 5)? as usize,
        ),
        Some("import") => {
            let root = args.iter().position(|a| a == "--dir").and_then(|i| args.get(i + 1)).map_or_else(std::env::temp_dir, Into::into);
            backfill::import(arg(&args, "--events", 10_000_000)?, arg(&args, "--runs", 3)?, &root)
        }
        _ => bail!(
            "usage: bench hotpath [--events N] [--batch N] [--runs N] [--merchants N] [--long-ids] [--layout producer|varied] | bench parsers [--events N] [--runs N] | bench dedupe-memory [--ids N] | \
             bench partials [--merchants N] | \
             bench ingest --brokers B --tally-bin PATH [--events N] [--batch N] [--clients N] | \
             bench backfill [--events N] [--runs N] [--shards N] [--dir D] | bench closes --pg-url URL [--merchants N] [--runs N] | bench import [--events N] [--runs N] [--dir D] | \
             bench e2e --brokers B --pg-url URL --tally-bin PATH [--events N] [--merchants N] [--partitions N] [--runs N] [--backlog] [--workers N] [--layout varied|producer] [--set S]… [--python-peer PYTHON]"
        ),
    }
}
