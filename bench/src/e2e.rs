//! `bench e2e`: the pipeline as a user runs it, against what the broker
//! can deliver.
//!
//! Each run makes a fresh topic set and PostgreSQL database and then:
//!
//! 1. starts 2 `tally worker` and 1 `tally aggregator` processes with
//!    default settings and waits until the workers hold every partition
//!    between them (the group has settled, so the timing starts with the
//!    pipeline's steady state; `--backlog` measures the rebalance too);
//! 2. publishes the generator's mix (duplicates, late and invalid events)
//!    as fast as one producer can, and times from the first publish until
//!    the fences cover every message, then checks `merchant_sales` against
//!    the generator's exact totals (a run whose totals differ fails);
//! 3. drains the same topic with bare librdkafka consumers that decode
//!    nothing, once with default fetch settings and once tuned
//!    (`fetch.wait.max.ms=10`, a deep prefetch queue): the broker's speed;
//! 4. reads each process's CPU seconds and peak RSS from `/proc`, and the
//!    rows upserted and the flushes from the aggregator's metrics;
//! 5. with `--python-peer`, drains the topic with a hand-written Python
//!    exactly-once consumer (`bench/peers/python_eos.py`) into a database
//!    of its own and checks its totals too;
//! 6. publishes as many events again at half the rate just measured and
//!    reads the append-to-commit latency of those from the aggregator's
//!    histogram.
//!
//! An untimed run of steps 1 to 4 comes first, so that the broker is warm
//! as a running broker is (its JIT, its offsets topic).
//!
//! `bench/e2e.sh` starts Apache Kafka (one KRaft node, as `scripts/test`
//! runs it) and PostgreSQL (fsync off) and runs it.

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use ingest::load::generate::{Generated, Generator, GeneratorConfig, Layout};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{Offset, TopicPartitionList};
use store::Store;

/// What one run measured.
struct Run {
    bare_default: f64,
    bare_tuned: f64,
    tally_seconds: f64,
    settle_seconds: f64,
    publish_seconds: f64,
    cpu_seconds: f64,
    peak_rss_mib: Vec<(String, f64)>,
    p50: f64,
    p99: f64,
    paced_rate: f64,
    /// Rows upserted into `merchant_sales`, and flush transactions, to exact totals.
    upserts: (f64, f64),
    /// The Python peer's seconds and CPU seconds to its exact totals, when run.
    python: Option<(f64, f64)>,
}

/// How the pipeline is run: partitions, workers, extra `--set` fields.
pub struct Setup {
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// A PostgreSQL URL whose user may create databases.
    pub pg_url: String,
    /// The `tally` binary.
    pub tally: String,
    /// Events per run.
    pub events: u64,
    /// Distinct merchants.
    pub merchants: u32,
    /// Partitions of each topic.
    pub partitions: i32,
    /// `tally worker` processes.
    pub workers: usize,
    /// Publish everything first and time from process start (a backlog)
    /// instead of publishing into a settled pipeline. With more than one
    /// worker the group rebalances while reading, which re-seeks.
    pub backlog: bool,
    /// How the generator writes valid events (`Varied` by default: the
    /// shapes real producers send, not only the decoder's fast path).
    pub layout: Layout,
    /// Extra `--set section.field=value` for every process.
    pub sets: Vec<String>,
    /// A Python interpreter with confluent-kafka and psycopg: when given,
    /// each run also drains the topic with `bench/peers/python_eos.py`.
    pub python: Option<String>,
}

/// Runs `runs` times and prints medians.
#[expect(
    clippy::too_many_lines,
    reason = "a benchmark reads top to bottom: set-up, runs, report"
)]
pub fn run(setup: &Setup, runs: u64) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let mode = if setup.backlog {
        "a backlog, timed from process start"
    } else {
        "published into a settled pipeline, timed from the first publish"
    };
    println!(
        "e2e: {} events ({mode}), {} merchants in the {:?} layout, {} partitions, {} workers + 1 aggregator, PostgreSQL; extra settings: {:?}",
        setup.events, setup.merchants, setup.layout, setup.partitions, setup.workers, setup.sets
    );
    // A broker that has just started compiles its hot paths as it goes
    // (the JIT took most of a core through the first runs), and creates the
    // group coordinator's offsets topic at the first group's first request,
    // which held the first run's join for seconds. A running broker has
    // done both long ago: an untimed run first, without the latency part.
    let started = Instant::now();
    runtime.block_on(once(setup, runs, false))?;
    println!(
        "  warm-up run (untimed, the broker's JIT and offsets topic): {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let mut results = Vec::new();
    for n in 0..runs {
        let run = runtime.block_on(once(setup, n, true))?;
        let rate = setup.events as f64 / run.tally_seconds;
        println!(
            "  run {n}: {}published in {:.2} s; tally {:.2} s to exact totals ({rate:.0} events/s, \
             {:.0}% of the tuned bare consumer's {:.0}/s, {:.0}% of the default one's {:.0}/s); \
             {:.1} CPU-s ({:.2} µs per event); {:.0} rows upserted in {:.0} flushes; p50 {:.3} s, p99 {:.3} s at {:.0} events/s",
            match setup.backlog {
                true => String::new(),
                false => format!("settled {:.2} s after start; ", run.settle_seconds),
            },
            run.publish_seconds,
            run.tally_seconds,
            rate / run.bare_tuned * 100.0,
            run.bare_tuned,
            rate / run.bare_default * 100.0,
            run.bare_default,
            run.cpu_seconds,
            run.cpu_seconds / setup.events as f64 * 1e6,
            run.upserts.0,
            run.upserts.1,
            run.p50,
            run.p99,
            run.paced_rate,
        );
        let rss: Vec<String> = run
            .peak_rss_mib
            .iter()
            .map(|(name, mib)| format!("{name} {mib:.0} MiB"))
            .collect();
        println!("         peak RSS: {}", rss.join(", "));
        results.push(run);
    }
    let median = |f: &dyn Fn(&Run) -> f64| {
        let mut values: Vec<f64> = results.iter().map(f).collect();
        values.sort_by(f64::total_cmp);
        values[values.len() / 2]
    };
    let events = setup.events as f64;
    println!("| measure (median of {runs}) | figure |");
    println!("| --- | --- |");
    println!(
        "| bare consumer, default fetch settings | {:.0} msgs/s |",
        median(&|r| r.bare_default)
    );
    println!(
        "| bare consumer, fetch.wait.max.ms=10 and a deep queue | {:.0} msgs/s |",
        median(&|r| r.bare_tuned)
    );
    if !setup.backlog {
        println!(
            "| processes started to group settled | {:.2} s |",
            median(&|r| r.settle_seconds)
        );
    }
    println!(
        "| one producer publishing the events | {:.2} s, {:.0} events/s |",
        median(&|r| r.publish_seconds),
        median(&|r| events / r.publish_seconds)
    );
    println!(
        "| tally, to exact totals | {:.2} s, {:.0} events/s |",
        median(&|r| r.tally_seconds),
        median(&|r| events / r.tally_seconds)
    );
    println!(
        "| tally / tuned bare consumer | {:.2} |",
        median(&|r| events / r.tally_seconds / r.bare_tuned)
    );
    println!(
        "| tally / default bare consumer | {:.2} |",
        median(&|r| events / r.tally_seconds / r.bare_default)
    );
    if setup.python.is_some() {
        let peer = |r: &Run| r.python.expect("run with the peer");
        println!(
            "| hand-written Python exactly-once consumer (bench/peers/python_eos.py), to exact totals | {:.2} s, {:.0} events/s, {:.2} µs of CPU per event |",
            median(&|r| peer(r).0),
            median(&|r| events / peer(r).0),
            median(&|r| peer(r).1 / events * 1e6)
        );
        println!(
            "| tally / Python peer | {:.1}× |",
            median(&|r| peer(r).0 / r.tally_seconds)
        );
    }
    println!(
        "| CPU, all tally processes, start to exact totals | {:.1} s, {:.2} µs per event |",
        median(&|r| r.cpu_seconds),
        median(&|r| r.cpu_seconds / events * 1e6)
    );
    println!(
        "| rows upserted into merchant_sales, per event | {:.3} ({:.0} flushes) |",
        median(&|r| r.upserts.0 / events),
        median(&|r| r.upserts.1)
    );
    println!(
        "| append-to-commit at half that rate | p50 {:.3} s, p99 {:.3} s |",
        median(&|r| r.p50),
        median(&|r| r.p99)
    );
    Ok(())
}

#[expect(
    clippy::too_many_lines,
    reason = "one run top to bottom: topics, processes, load, the exact check, figures"
)]
async fn once(setup: &Setup, n: u64, timed: bool) -> Result<Run> {
    let id = format!("{}-{n}", std::process::id());
    let (orders, partials, dlq) = (
        format!("e2e-orders-{id}"),
        format!("e2e-partials-{id}"),
        format!("e2e-dlq-{id}"),
    );
    let spec = kafka::topics::TopicSpec {
        partitions: setup.partitions,
        replication: 1,
        min_insync_replicas: 0,
        partials: Some((&partials, shard_worker::config::PARTIALS_RETENTION_MS)),
    };
    kafka::topics::ensure_topics(
        &setup.brokers,
        &Default::default(),
        &[&orders, &partials, &dlq],
        spec,
    )
    .await?;
    let database_url =
        fresh_database(&setup.pg_url, &format!("e2e_{}", id.replace('-', "_"))).await?;
    let store = Store::connect(&database_url).await?;

    let config = GeneratorConfig {
        seed: 500 + n,
        events: setup.events,
        merchants: setup.merchants,
        layout: setup.layout,
        ..GeneratorConfig::default()
    };
    let mut generator = Generator::new(config.clone());
    let messages: Vec<Generated> = generator.by_ref().collect();
    let expected = generator.totals().clone();
    let producer = kafka::producer::bulk(&setup.brokers, &Default::default())?;

    let topics = [
        format!("worker.orders_topic={orders}"),
        format!("worker.partials_topic={partials}"),
        format!("worker.dlq_topic={dlq}"),
        format!("worker.group_id=e2e-workers-{id}"),
        format!("worker.topic_partitions={}", setup.partitions),
        format!("aggregator.partials_topic={partials}"),
        format!("aggregator.group_id=e2e-aggregators-{id}"),
        format!("aggregator.partials_partitions={}", setup.partitions),
        "aggregator.backfill_parallelism=0".to_owned(),
    ];
    let logs = std::env::temp_dir().join(format!("tally-e2e-{id}"));
    std::fs::create_dir_all(&logs)?;
    let mut publish_seconds = 0.0;
    if setup.backlog {
        let started = Instant::now();
        ingest::load::produce::produce_all(&producer, &orders, messages.clone(), |_| {}).await?;
        publish_seconds = started.elapsed().as_secs_f64();
    }
    let launched = Instant::now();
    let mut processes = Vec::new();
    let names: Vec<String> = (1..=setup.workers).map(|n| format!("worker-{n}")).collect();
    let roles = names
        .iter()
        .map(|name| ("worker", name.as_str()))
        .chain([("aggregator", "aggregator")]);
    for (role, name) in roles {
        let metrics = free_addr()?;
        // `setpriv --pdeathsig` (util-linux) execs the service in its place and
        // kills it if the bench dies first.
        let mut command = Command::new("setpriv");
        command.args(["--pdeathsig", "KILL", "--", &setup.tally]);
        command.args([
            role,
            "--brokers",
            &setup.brokers,
            "--database-url",
            &database_url,
            "--metrics-addr",
            &metrics,
        ]);
        for set in topics.iter().chain(&setup.sets) {
            command.args(["--set", set]);
        }
        let log = std::fs::File::create(logs.join(format!("{name}.log")))?;
        let child = command
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", setup.tally))?;
        processes.push(Process {
            name: name.to_owned(),
            child,
            metrics,
        });
    }
    let result = async {
        let (started, settle_seconds) = if setup.backlog {
            (launched, f64::NAN)
        } else {
            settled(&processes, setup.partitions, Duration::from_secs(120)).await?;
            let settle_seconds = launched.elapsed().as_secs_f64();
            let started = Instant::now();
            ingest::load::produce::produce_all(&producer, &orders, messages, |_| {}).await?;
            publish_seconds = started.elapsed().as_secs_f64();
            (started, settle_seconds)
        };
        wait_committed(&store, &orders, setup.events, &mut processes, Duration::from_secs(600)).await?;
        let tally_seconds = started.elapsed().as_secs_f64();
        let cpu_seconds: f64 = processes.iter().map(|p| p.cpu_seconds()).sum();
        for process in &processes {
            // Each process's metrics at exact totals, beside its log.
            let reply = ingest::load::client::request(&process.metrics, "GET", "/metrics", &[], b"").await?;
            std::fs::write(logs.join(format!("{}.metrics", process.name)), &reply.body)?;
        }
        let aggregator = processes.iter().find(|p| p.name == "aggregator").expect("started").metrics.clone();
        let upserts = (
            metric(&aggregator, "tally_aggregator_upsert_rows_total").await?,
            metric(&aggregator, "tally_aggregator_flush_duration_seconds_count").await?,
        );
        let table = store.totals(None).await?;
        if table != expected {
            bail!("merchant_sales differs from the generator's totals ({} rows against {}); logs in {}", table.len(), expected.len(), logs.display());
        }
        let bare_default = drain(&setup.brokers, &orders, setup.partitions, setup.events, &[]).await?;
        let bare_tuned = drain(&setup.brokers, &orders, setup.partitions, setup.events, &[("fetch.wait.max.ms", "10"), ("queued.min.messages", "1000000")]).await?;

        if !timed {
            return Ok(Run { bare_default, bare_tuned, tally_seconds, settle_seconds, publish_seconds, cpu_seconds, peak_rss_mib: Vec::new(), p50: f64::NAN, p99: f64::NAN, paced_rate: f64::NAN, upserts, python: None });
        }
        // Before the paced events join them: the topic holds the run's events only.
        let python = match &setup.python {
            Some(python) => Some(python_peer(setup, python, &orders, &expected, &logs, n).await?),
            None => None,
        };
        // Latency at half the rate just reached: as many events again, paced.
        let before = histogram(&aggregator).await?;
        let rate = setup.events as f64 / tally_seconds / 2.0;
        let more = GeneratorConfig { seed: 900 + n, ..config };
        let paced: Vec<Generated> = Generator::new(more).collect();
        let start = Instant::now();
        let mut deliveries = Vec::with_capacity(paced.len());
        for (i, chunk) in paced.chunks(1_000).enumerate() {
            tokio::time::sleep_until((start + Duration::from_secs_f64((i * 1_000) as f64 / rate)).into()).await;
            for message in chunk {
                let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(&orders).payload(&message.payload);
                if let Some(key) = &message.key {
                    record = record.key(key.as_str());
                }
                // A full queue (the broker busy with the pipeline) waits
                // for room rather than failing the run.
                deliveries.push(kafka::producer::enqueue(&producer, record).await?);
            }
        }
        let paced_rate = paced.len() as f64 / start.elapsed().as_secs_f64();
        for delivery in deliveries {
            delivery.await?.map_err(|(e, _)| e)?;
        }
        wait_committed(&store, &orders, setup.events * 2, &mut processes, Duration::from_secs(600)).await?;
        let after = histogram(&aggregator).await?;
        let (p50, p99) = (quantile(&before, &after, 0.5), quantile(&before, &after, 0.99));
        let peak_rss_mib = processes.iter().map(|p| (p.name.clone(), p.peak_rss_mib())).collect();
        Ok(Run { bare_default, bare_tuned, tally_seconds, settle_seconds, publish_seconds, cpu_seconds, peak_rss_mib, p50, p99, paced_rate, upserts, python })
    }
    .await;
    for process in &mut processes {
        let _ = Command::new("kill")
            .args(["-TERM", &process.child.id().to_string()])
            .status();
    }
    for process in &mut processes {
        let _ = process.child.wait();
    }
    result
}

struct Process {
    name: String,
    child: Child,
    metrics: String,
}

impl Process {
    /// User plus system CPU seconds so far (`/proc/PID/stat`, in clock ticks of 1/100 s).
    fn cpu_seconds(&self) -> f64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        (ticks(11) + ticks(12)) / 100.0
    }

    /// The most resident memory the process has held (`VmHWM`).
    fn peak_rss_mib(&self) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        let kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok());
        kib.unwrap_or(0.0) / 1024.0
    }
}

/// Drains `orders` with the hand-written Python exactly-once consumer into a
/// fresh database, and checks its totals against `expected`; returns its
/// seconds (start to last commit) and CPU seconds.
async fn python_peer(
    setup: &Setup,
    python: &str,
    orders: &str,
    expected: &schemas::Totals,
    logs: &std::path::Path,
    n: u64,
) -> Result<(f64, f64)> {
    let script = "bench/peers/python_eos.py";
    if !std::path::Path::new(script).exists() {
        bail!("{script} not found: run the bench from the repository's root (bench/e2e.sh does)");
    }
    let csv = logs.join("expected-totals.csv");
    ingest::load::expected::write(
        expected,
        std::io::BufWriter::new(std::fs::File::create(&csv)?),
    )?;
    let name = format!("e2e_peer_{}_{n}", std::process::id());
    let url = fresh_database(&setup.pg_url, &name).await?;
    let output = Command::new(python)
        .args([
            script,
            &setup.brokers,
            orders,
            &setup.partitions.to_string(),
            &url,
        ])
        .arg(setup.events.to_string())
        .arg(&csv)
        .stderr(std::fs::File::create(logs.join("python-peer.log"))?)
        .output()
        .with_context(|| format!("starting {python} {script}"))?;
    if !output.status.success() {
        bail!(
            "the Python peer failed ({}); its log is in {}",
            output.status,
            logs.display()
        );
    }
    let line = String::from_utf8_lossy(&output.stdout);
    let report: serde_json::Value = serde_json::from_str(line.trim())
        .with_context(|| format!("the Python peer printed {line:?}"))?;
    let number = |field: &str| {
        report[field]
            .as_f64()
            .with_context(|| format!("the Python peer's report has no {field}: {line}"))
    };
    if number("differences")? != 0.0 {
        bail!(
            "the Python peer's totals differ from the generator's in {} rows: {line}",
            number("differences")?
        );
    }
    println!(
        "         Python peer: {:.2} s to exact totals ({:.0} events/s), {:.1} CPU-s; {line}",
        number("seconds")?,
        setup.events as f64 / number("seconds")?,
        number("cpu_seconds")?,
        line = line.trim()
    );
    Ok((number("seconds")?, number("cpu_seconds")?))
}

/// Reads every message of `topic` with a bare consumer that decodes
/// nothing; returns messages per second from the first poll to the last message.
async fn drain(
    brokers: &str,
    topic: &str,
    partitions: i32,
    events: u64,
    settings: &[(&str, &str)],
) -> Result<f64> {
    let (brokers, topic) = (brokers.to_owned(), topic.to_owned());
    let settings: Vec<(String, String)> = settings
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let mut config = kafka::client(&brokers);
        config
            .set("group.id", format!("e2e-bare-{}", std::process::id()))
            .set("enable.auto.commit", "false");
        for (key, value) in &settings {
            config.set(key, value);
        }
        let consumer: BaseConsumer = config.create()?;
        let mut assignment = TopicPartitionList::new();
        for partition in 0..partitions {
            assignment.add_partition_offset(&topic, partition, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let started = Instant::now();
        let mut seen = 0u64;
        while seen < events {
            match consumer.poll(Duration::from_millis(100)) {
                Some(Ok(_)) => seen += 1,
                Some(Err(error)) => bail!("bare consumer: {error}"),
                None if started.elapsed() > Duration::from_secs(300) => {
                    bail!("bare consumer: {seen} of {events} after 300 s")
                }
                None => {}
            }
        }
        Ok(events as f64 / started.elapsed().as_secs_f64())
    })
    .await?
}

/// Waits until the workers hold all `partitions` between them, each some.
async fn settled(processes: &[Process], partitions: i32, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let mut held = Vec::new();
        for process in processes.iter().filter(|p| p.name.starts_with("worker")) {
            let reply =
                ingest::load::client::request(&process.metrics, "GET", "/metrics", &[], b"").await;
            let text = reply
                .map(|r| String::from_utf8_lossy(&r.body).into_owned())
                .unwrap_or_default();
            let value = text
                .lines()
                .find_map(|l| l.strip_prefix("tally_worker_assigned_partitions "))
                .and_then(|v| v.trim().parse::<f64>().ok());
            held.push(value.unwrap_or(0.0));
        }
        if held.iter().all(|&n| n > 0.0) && held.iter().sum::<f64>() == f64::from(partitions) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the workers hold {held:?} of {partitions} partitions after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until the fences of `topic` cover `messages`; fails if a process exits.
async fn wait_committed(
    store: &Store,
    topic: &str,
    messages: u64,
    processes: &mut [Process],
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let progress = store.progress().await?;
        let done: i64 = progress
            .iter()
            .filter(|p| p.topic == topic)
            .map(|p| p.fence.next_offset)
            .sum();
        if done as u64 >= messages {
            return Ok(());
        }
        for process in processes.iter_mut() {
            if let Some(status) = process.child.try_wait()? {
                bail!("{} exited: {status}", process.name);
            }
        }
        if Instant::now() > deadline {
            bail!("only {done} of {messages} messages committed after {limit:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of one unlabelled metric on a `/metrics` page.
async fn metric(addr: &str, name: &str) -> Result<f64> {
    let reply = ingest::load::client::request(addr, "GET", "/metrics", &[], b"").await?;
    let text = String::from_utf8_lossy(&reply.body);
    let value = text.lines().find_map(|line| {
        line.strip_prefix(name)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    });
    value.with_context(|| format!("no {name} on {addr}"))
}

/// The aggregator's end-to-end latency histogram: cumulative count per upper bound.
async fn histogram(addr: &str) -> Result<Vec<(f64, f64)>> {
    let reply = ingest::load::client::request(addr, "GET", "/metrics", &[], b"").await?;
    let text = String::from_utf8_lossy(&reply.body);
    let mut buckets: Vec<(f64, f64)> = text
        .lines()
        .filter_map(|line| {
            line.strip_prefix("tally_aggregator_end_to_end_latency_seconds_bucket{le=\"")
        })
        .filter_map(|rest| {
            let (le, value) = rest.split_once("\"} ")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, value.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    if buckets.is_empty() {
        bail!("no tally_aggregator_end_to_end_latency_seconds on {addr}");
    }
    Ok(buckets)
}

/// The upper bound of the bucket holding quantile `q` of the observations
/// made between two readings of a histogram.
fn quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let earlier: HashMap<u64, f64> = before.iter().map(|(le, n)| (le.to_bits(), *n)).collect();
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(le, n)| (*le, n - earlier.get(&le.to_bits()).copied().unwrap_or(0.0)))
        .collect();
    let total = delta.last().map_or(0.0, |b| b.1);
    delta
        .iter()
        .find(|(_, n)| *n >= total * q)
        .map_or(f64::NAN, |b| b.0)
}

pub(crate) async fn fresh_database(admin_url: &str, name: &str) -> Result<String> {
    let (client, connection) = tokio_postgres::connect(admin_url, tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await?;
    let (base, _) = admin_url
        .rsplit_once('/')
        .context("the PostgreSQL URL names a database")?;
    Ok(format!("{base}/{name}"))
}

fn free_addr() -> Result<String> {
    Ok(format!(
        "127.0.0.1:{}",
        std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port()
    ))
}
