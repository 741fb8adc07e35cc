//! `tally generate`: deterministic traffic to Kafka or to `tally ingest`,
//! with its exact expected totals.

use std::io::BufWriter;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ingest::load::client::Endpoint;
use ingest::load::expected;
use ingest::load::generate::{Generator, GeneratorConfig, Layout, Truth};
use ingest::load::produce::produce_all;
use kafka::FutureProducer;
use schemas::config::{self as check, ConfigError};
use schemas::Day;

use crate::cli::GenerateArgs;
use crate::error::{CliError, CliResult};
use crate::progress::Progress;
use crate::settings::{self, Settings};

/// Where `tally generate` sends its messages.
enum Sink {
    Kafka(FutureProducer),
    Http { endpoint: Endpoint, token: String },
}

fn generator_config(args: &GenerateArgs) -> Result<GeneratorConfig, ConfigError> {
    if args.url.is_none() {
        check::brokers("--brokers", &args.brokers)?;
        check::kafka_name("--topic", &args.topic)?;
    }
    check::in_range("--events", args.events, 1, 10_000_000_000)?;
    check::in_range("--merchants", args.merchants, 1, 100_000_000)?;
    check::in_range("--batch", args.batch, 1, 100_000)?;
    check::in_range("--clients", args.clients, 1, 1_000)?;
    for (field, share) in [
        ("--refund-share", args.refund_share),
        ("--duplicate-share", args.duplicate_share),
        ("--invalid-share", args.invalid_share),
        ("--late-share", args.late_share),
    ] {
        if !(0.0..=1.0).contains(&share) {
            return Err(ConfigError::new(field, share, "must be between 0 and 1"));
        }
    }
    for currency in &args.currencies {
        if currency.len() != 3 || !currency.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(ConfigError::new(
                "--currencies",
                currency,
                "must be three upper-case letters",
            ));
        }
    }
    if args.currencies.is_empty() {
        return Err(ConfigError::new(
            "--currencies",
            "",
            "needs at least one currency",
        ));
    }
    let layout = Layout::parse(&args.layout).ok_or_else(|| {
        ConfigError::new("--layout", &args.layout, "must be `producer` or `varied`")
    })?;
    let day =
        Day::parse(&args.day).map_err(|e| ConfigError::new("--day", &args.day, e.to_string()))?;
    Ok(GeneratorConfig {
        seed: args.seed,
        events: args.events,
        merchants: args.merchants,
        currencies: args.currencies.clone(),
        refund_share: args.refund_share,
        duplicate_share: args.duplicate_share,
        invalid_share: args.invalid_share,
        late_share: args.late_share,
        day,
        keyless: args.url.is_some(),
        layout,
    })
}

fn sink(args: &GenerateArgs) -> Result<Sink, CliError> {
    let Some(url) = &args.url else {
        // The same Kafka properties as ingest, the other producer: `[ingest.kafka]`
        // of TALLY_CONFIG, TALLY_KAFKA__* and TALLY_INGEST_KAFKA__* (TLS, SASL).
        let file = std::env::var_os("TALLY_CONFIG").map(std::path::PathBuf::from);
        let properties = Settings::load(file.as_deref(), std::env::vars(), &[])?
            .ingest
            .kafka;
        settings::check_kafka("ingest", &properties)?;
        let producer = kafka::producer::bulk(&args.brokers, &properties).map_err(|error| {
            CliError::run(format!(
                "cannot create a Kafka producer for {}: {error}",
                args.brokers
            ))
        })?;
        return Ok(Sink::Kafka(producer));
    };
    let endpoint = Endpoint::parse("--url", url)?;
    // The container convention, as for the roles' variables.
    let token = match &args.token {
        Some(token) => Some(token.clone()),
        None => settings::from_file("TALLY_TOKEN")?,
    };
    let Some(token) = token.filter(|t| !t.is_empty()) else {
        return Err(CliError::config(
            "--url needs a bearer token: pass --token, or set TALLY_TOKEN or TALLY_TOKEN_FILE",
        ));
    };
    Ok(Sink::Http { endpoint, token })
}

/// Publishes the generated messages, then writes the expected totals.
pub async fn run(args: GenerateArgs) -> CliResult {
    let config = generator_config(&args)?;
    let sink = sink(&args)?;
    let mut generator = Generator::new(config);
    let started = Instant::now();
    let mut progress = Progress::counting("published", args.events);
    let sent = match &sink {
        Sink::Kafka(producer) => {
            to_kafka(&args, producer, &mut generator, started, &mut progress).await
        }
        Sink::Http { endpoint, token } => {
            to_ingest(
                &args,
                (endpoint, token),
                &mut generator,
                started,
                &mut progress,
            )
            .await
        }
    };
    progress.finish();
    let (published, target) = sent.map_err(CliError::run)?;
    std::fs::File::create(&args.expected)
        .and_then(|file| expected::write(generator.totals(), BufWriter::new(file)))
        .map_err(|error| {
            CliError::run(format!("cannot write {}: {error}", args.expected.display()))
        })?;
    let seconds = started.elapsed().as_secs_f64();
    if args.json {
        return crate::render::print_json(&serde_json::json!({
            "published": published,
            "target": target,
            "seconds": seconds,
            "events_per_second": published as f64 / seconds,
            "counted_events": generator.counted(),
            "expected_keys": generator.totals().len(),
            "expected_file": args.expected.display().to_string(),
        }));
    }
    println!(
        "Published {published} messages to {target} in {seconds:.1} s ({:.0} events/s); {} counted events over {} keys expected, written to {}.",
        published as f64 / seconds,
        generator.counted(),
        generator.totals().len(),
        args.expected.display()
    );
    Ok(())
}

/// Waits until `published` messages are due at `--rate` (no wait at rate 0).
async fn pace(args: &GenerateArgs, started: Instant, published: u64) {
    if args.rate > 0 {
        let due = started + Duration::from_secs_f64(published as f64 / args.rate as f64);
        tokio::time::sleep_until(due.into()).await;
    }
}

/// Produces every message to the topic; returns the count and the target's name.
async fn to_kafka(
    args: &GenerateArgs,
    producer: &FutureProducer,
    generator: &mut Generator,
    started: Instant,
    progress: &mut Progress,
) -> Result<(u64, String), String> {
    // With a target rate, publish in tenth-of-a-second slices and wait for
    // each slice's due time; otherwise everything goes in one stream.
    let slice = if args.rate == 0 {
        u64::MAX
    } else {
        (args.rate / 10).max(1)
    };
    let mut published = 0u64;
    loop {
        let chunk: Vec<_> = generator
            .by_ref()
            .take(slice.min(args.events) as usize)
            .collect();
        if chunk.is_empty() {
            return Ok((published, args.topic.clone()));
        }
        let base = published;
        published += produce_all(producer, &args.topic, chunk, |done| {
            progress.set(base + done)
        })
        .await
        .map_err(|error| {
            format!("the broker refused a message after {published} were acknowledged: {error}")
        })?;
        pace(args, started, published).await;
    }
}

/// How long a batch may keep meeting 503s or a closed port before giving up.
const GIVE_UP_AFTER: Duration = Duration::from_secs(120);

/// Posts every message to `tally ingest` in NDJSON batches from
/// `--clients` concurrent clients. Every invalid message must come back
/// rejected and every other one accepted, or the expected totals would not
/// describe what was sent.
async fn to_ingest(
    args: &GenerateArgs,
    (endpoint, token): (&Endpoint, &str),
    generator: &mut Generator,
    started: Instant,
    progress: &mut Progress,
) -> Result<(u64, String), String> {
    let (batches, queue) = tokio::sync::mpsc::channel::<Vec<u8>>(args.clients * 2);
    let queue = Arc::new(tokio::sync::Mutex::new(queue));
    let answered = Arc::new(AtomicU64::new(0));
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..args.clients {
        let (queue, answered, endpoint, token) = (
            queue.clone(),
            answered.clone(),
            endpoint.clone(),
            token.to_owned(),
        );
        clients.spawn(async move {
            let (mut accepted, mut rejected) = (0u64, 0u64);
            loop {
                let Some(body) = queue.lock().await.recv().await else {
                    return Ok::<_, String>((accepted, rejected));
                };
                let outcome =
                    ingest::load::client::post_orders(&endpoint, &token, &body, GIVE_UP_AFTER)
                        .await?;
                accepted += outcome.accepted as u64;
                rejected += outcome.rejected as u64;
                answered.fetch_add(
                    (outcome.accepted + outcome.rejected) as u64,
                    Ordering::Relaxed,
                );
            }
        });
    }
    drop(queue);
    let (mut published, mut invalid) = (0u64, 0u64);
    loop {
        let batch: Vec<_> = generator.by_ref().take(args.batch).collect();
        if batch.is_empty() {
            break;
        }
        invalid += batch
            .iter()
            .filter(|m| matches!(m.truth, Truth::Invalid(_)))
            .count() as u64;
        published += batch.len() as u64;
        let body = batch
            .iter()
            .map(|m| m.payload.as_slice())
            .collect::<Vec<_>>()
            .join(&b'\n');
        if batches.send(body).await.is_err() {
            break; // every client has stopped: the join below says why
        }
        // `Progress` decides how often anything is drawn or written.
        progress.set(answered.load(Ordering::Relaxed));
        pace(args, started, published).await;
    }
    drop(batches);
    let (mut accepted, mut rejected) = (0u64, 0u64);
    while let Some(joined) = clients.join_next().await {
        let (a, r) = joined.map_err(|e| format!("a client task failed: {e}"))??;
        accepted += a;
        rejected += r;
    }
    progress.set(accepted + rejected);
    if (accepted, rejected) != (published - invalid, invalid) {
        return Err(format!(
            "{} accepted {accepted} and rejected {rejected} of {published} events, but {invalid} were generated invalid; the expected totals would not hold",
            endpoint.addr
        ));
    }
    Ok((
        published,
        format!(
            "http://{}{} ({rejected} refused as invalid)",
            endpoint.addr, endpoint.path
        ),
    ))
}
