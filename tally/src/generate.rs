//! `tally generate` (deterministic traffic to Kafka, plus its expected
//! totals) and `tally verify-totals` (those totals against the database).

use std::io::{BufReader, BufWriter};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use ingest::expected;
use ingest::generate::{Generator, GeneratorConfig};
use ingest::produce::{bulk_producer, produce_all};
use schemas::config::{self as check, ConfigError};
use schemas::Day;

use crate::cli::{GenerateArgs, VerifyArgs};
use crate::query::open_store;

fn generator_config(args: &GenerateArgs) -> Result<GeneratorConfig, ConfigError> {
    check::brokers("--brokers", &args.brokers)?;
    check::kafka_name("--topic", &args.topic)?;
    check::in_range("--events", args.events, 1, 10_000_000_000)?;
    check::in_range("--merchants", args.merchants, 1, 100_000_000)?;
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
            return Err(ConfigError::new("--currencies", currency, "must be three upper-case letters"));
        }
    }
    if args.currencies.is_empty() {
        return Err(ConfigError::new("--currencies", "", "needs at least one currency"));
    }
    let day = Day::parse(&args.day).map_err(|e| ConfigError::new("--day", &args.day, e.to_string()))?;
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
    })
}

/// Publishes the generated messages, then writes the expected totals.
pub async fn run(args: GenerateArgs) -> ExitCode {
    let config = match generator_config(&args) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    let producer = match bulk_producer(&args.brokers) {
        Ok(producer) => producer,
        Err(error) => {
            eprintln!("error: cannot create a Kafka producer for {}: {error}", args.brokers);
            return ExitCode::FAILURE;
        }
    };
    let mut generator = Generator::new(config);
    let started = Instant::now();
    // With a target rate, publish in tenth-of-a-second slices and wait for
    // each slice's due time; otherwise everything goes in one stream.
    let slice = if args.rate == 0 { u64::MAX } else { (args.rate / 10).max(1) };
    let mut published = 0u64;
    loop {
        let chunk: Vec<_> = generator.by_ref().take(slice.min(args.events) as usize).collect();
        if chunk.is_empty() {
            break;
        }
        let base = published;
        let report = |done: u64| {
            let rate = (base + done) as f64 / started.elapsed().as_secs_f64().max(1e-9);
            eprint!("\r  published {:>12}/{}  ({rate:.0} events/s)   ", base + done, args.events);
        };
        match produce_all(&producer, &args.topic, chunk, report).await {
            Ok(n) => published += n,
            Err(error) => {
                eprintln!("\nerror: the broker refused a message after {published} were acknowledged: {error}");
                return ExitCode::FAILURE;
            }
        }
        if args.rate > 0 {
            let due = started + Duration::from_secs_f64(published as f64 / args.rate as f64);
            tokio::time::sleep_until(due.into()).await;
        }
    }
    eprintln!();
    let written = std::fs::File::create(&args.expected)
        .and_then(|file| expected::write(generator.totals(), BufWriter::new(file)));
    if let Err(error) = written {
        eprintln!("error: cannot write {}: {error}", args.expected.display());
        return ExitCode::FAILURE;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!(
        "Published {published} messages to {} in {seconds:.1} s ({:.0} events/s); {} counted events over {} keys expected, written to {}.",
        args.topic,
        published as f64 / seconds,
        generator.counted(),
        generator.totals().len(),
        args.expected.display()
    );
    ExitCode::SUCCESS
}

/// Compares the file's rows with `merchant_sales`: exit 0 when every key
/// matches, 1 when any differs (each one printed), 2 for a bad file or URL.
pub async fn verify(args: VerifyArgs) -> ExitCode {
    let want = match std::fs::File::open(&args.file) {
        Ok(file) => expected::read(BufReader::new(file)),
        Err(error) => {
            eprintln!("error: cannot open {}: {error}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let want = match want {
        Ok(totals) => totals,
        Err(error) => {
            eprintln!("error: {}: {error}", args.file.display());
            return ExitCode::from(2);
        }
    };
    let store = match open_store(&args.database).await {
        Ok(store) => store,
        Err(code) => return code,
    };
    let have = match store.totals(None).await {
        Ok(totals) => totals,
        Err(error) => {
            eprintln!("error: cannot read merchant_sales: {error}");
            return ExitCode::FAILURE;
        }
    };
    let differences = expected::differences(&want, &have);
    let show = |sums: &Option<schemas::Sums>| match sums {
        Some(s) => format!("sales {} ({}), refunds {} ({})", s.sales_amount, s.sales_count, s.refund_amount, s.refund_count),
        None => "no row".to_owned(),
    };
    for d in &differences {
        println!(
            "DIFF {} {} {}: expected {}; database {}",
            d.key.merchant_id, d.key.currency, d.key.day, show(&d.expected), show(&d.actual)
        );
    }
    if differences.is_empty() {
        println!("OK: all {} keys match.", want.len());
        ExitCode::SUCCESS
    } else {
        println!("{} of {} keys differ.", differences.len(), want.len().max(have.len()));
        ExitCode::FAILURE
    }
}
