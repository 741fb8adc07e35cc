//! Command-line flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// tally: exact per-merchant sales totals from order events.
#[derive(Debug, Parser)]
#[command(name = "tally", version = crate::build::LONG_VERSION)]
pub struct Cli {
    /// Log filter, e.g. `info` or `shard_worker=debug` (also RUST_LOG).
    #[arg(long, global = true, env = "TALLY_LOG")]
    pub log: Option<String>,
    /// Log lines as `text` (for people) or `json` (one object per line, for
    /// log collectors).
    #[arg(
        long,
        global = true,
        env = "TALLY_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Text
    )]
    pub log_format: LogFormat,
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One readable line per event.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message`
    /// and the event's fields.
    Json,
}

/// Whether log lines are JSON, set once at start: what the binary itself
/// writes to standard error (progress, the final error) follows it.
static JSON_LOGS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl LogFormat {
    /// Records this as the process's log format.
    pub fn install(self) {
        JSON_LOGS.store(
            self == LogFormat::Json,
            std::sync::atomic::Ordering::Relaxed,
        );
    }

    /// Whether the process logs JSON.
    pub fn is_json() -> bool {
        JSON_LOGS.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Writes `message` to standard error as a line of this process's log
    /// format: as it is, or as one JSON object with `level` and `target`.
    pub fn line(level: &str, message: &str) {
        if LogFormat::is_json() {
            let line = serde_json::json!({"level": level, "target": "tally", "message": message});
            eprintln!("{line}");
        } else {
            eprintln!("{message}");
        }
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole pipeline in one process on an in-process Kafka cluster
    /// and a SQLite file, then check the totals against the generator's.
    Demo(DemoArgs),
    /// Run a shard worker: orders → partials.
    Worker(ServiceArgs),
    /// Run an aggregator: partials → database.
    Aggregator(ServiceArgs),
    /// Run the HTTP ingest service: POST /v1/orders → orders topic.
    Ingest(ServiceArgs),
    /// Print a merchant's totals from the database.
    Query(QueryArgs),
    /// Print a merchant's days: each one open or closed, its closed totals,
    /// the adjustments since it closed and its current totals.
    Days(DaysArgs),
    /// Publish deterministic, realistic order traffic to Kafka and write the
    /// exact `merchant_sales` rows it must produce.
    Generate(GenerateArgs),
    /// Compare an expected-totals file with the database, key by key; exit 1
    /// on any difference.
    VerifyTotals(VerifyArgs),
    /// Recompute a closed day range from files and replace it in
    /// `merchant_sales` atomically (run by the aggregators).
    Backfill(BackfillArgs),
    /// Add the events of files to the live totals, exactly once per file
    /// (run by the aggregators).
    Import(ImportArgs),
    /// List, show and cancel backfill and import jobs.
    Jobs(JobsArgs),
    /// Recompute totals from files without touching the table, and print the
    /// keys where `merchant_sales` differs; exit 1 on any difference.
    Verify(ReconcileArgs),
    /// Add, list and remove backfill schedules (run by the aggregators).
    Schedule(ScheduleArgs),
    /// Set and list merchants' IANA time zones.
    Merchants(MerchantsArgs),
    /// Apply the database migrations this build knows (the aggregators also
    /// do, at start); every other command only checks for them.
    Migrate(DatabaseArgs),
    /// Check the configuration of every role, or show it with secrets
    /// redacted.
    Config(ConfigArgs),
    /// Write the generated reference pages (CLI, configuration, metrics,
    /// alerts) of the documentation book.
    #[command(hide = true)]
    Reference(ReferenceArgs),
}

/// `tally config`.
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    pub command: ConfigCommand,
}

/// `tally config …`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Validate the file, environment and flags for every role: exit 0 when
    /// every role could start with them, 2 naming each bad field.
    Check {
        #[command(flatten)]
        layers: Layers,
        /// Also reach each role's brokers and database, and say what answered.
        #[arg(long)]
        connect: bool,
        /// Only this role (the one a container runs): the others' settings,
        /// such as ingest's tokens, may be unset there.
        #[arg(long, value_enum)]
        role: Option<Role>,
    },
    /// Print the effective configuration (defaults, file, environment and
    /// flags), with tokens, passwords, `_FILE` contents and the user
    /// information of URLs redacted.
    Show {
        #[command(flatten)]
        layers: Layers,
        /// Only this role's settings.
        #[arg(long, value_enum)]
        role: Option<Role>,
        /// Print JSON instead of TOML.
        #[arg(long)]
        json: bool,
    },
}

/// A role's section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Role {
    /// `[worker]`: `tally worker`.
    Worker,
    /// `[aggregator]`: `tally aggregator` (and the commands that open its database).
    Aggregator,
    /// `[ingest]`: `tally ingest`.
    Ingest,
}

impl Role {
    /// Every role, in the file's order.
    pub const ALL: [Role; 3] = [Role::Worker, Role::Aggregator, Role::Ingest];

    /// The role's table name in the file.
    pub fn name(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Aggregator => "aggregator",
            Role::Ingest => "ingest",
        }
    }
}

/// Flags of the hidden `tally reference`.
#[derive(Debug, Args)]
pub struct ReferenceArgs {
    /// Directory the pages are written to.
    #[arg(long, default_value = "docs/book/src/reference")]
    pub out: PathBuf,
    /// The Prometheus rule file the alerts page describes.
    #[arg(long, default_value = "deploy/prometheus/rules/tally.yml")]
    pub rules: PathBuf,
}

/// Flags shared by the long-running services.
#[derive(Debug, Args)]
pub struct ServiceArgs {
    #[command(flatten)]
    pub layers: Layers,
    /// Address for /metrics, /healthz and /readyz (port 0 picks a free
    /// port). Not for `tally ingest`, which serves them on its API address.
    #[arg(long, env = "TALLY_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// Where the configuration comes from, over the defaults: a file, the
/// `TALLY_*` environment, then these flags.
#[derive(Debug, Args)]
pub struct Layers {
    /// TOML configuration file with `[worker]`, `[aggregator]` and `[ingest]` tables.
    #[arg(long, env = "TALLY_CONFIG")]
    pub config: Option<PathBuf>,
    /// Kafka bootstrap servers (overrides file and environment).
    #[arg(long)]
    pub brokers: Option<String>,
    /// Database URL: postgres://… or sqlite://PATH (overrides file and environment).
    #[arg(long)]
    pub database_url: Option<String>,
    /// Any field, as `section.field=value` (repeatable), e.g. `worker.batch_max_events=5000`.
    #[arg(long = "set", value_parser = parse_key_value)]
    pub set: Vec<(String, String)>,
}

/// Flags of `tally demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Messages to generate (including duplicates and invalid ones).
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Generator seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct merchants.
    #[arg(long, default_value_t = 1_000)]
    pub merchants: u32,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 8)]
    pub partitions: i32,
    /// SQLite file to (re)create.
    #[arg(long, default_value = "tally-demo.sqlite")]
    pub database: PathBuf,
    /// Address for /metrics while the demo runs.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub metrics_addr: SocketAddr,
    /// Print the outcome as JSON (progress still goes to standard error).
    #[arg(long)]
    pub json: bool,
}

/// The database a read-only command opens.
#[derive(Debug, Args)]
pub struct DatabaseArgs {
    /// Database URL (default: the configured aggregator database).
    #[arg(
        long,
        env = "TALLY_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// TOML configuration file.
    #[arg(long, env = "TALLY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
}

/// Flags of `tally query`.
#[derive(Debug, Args)]
pub struct QueryArgs {
    /// The merchant to show.
    #[arg(long)]
    pub merchant: String,
    /// Print JSON (an array of rows, amounts as exact decimal strings).
    #[arg(long)]
    pub json: bool,
    /// Which database to read.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Flags of `tally days`.
#[derive(Debug, Args)]
pub struct DaysArgs {
    /// The merchant to show.
    #[arg(long)]
    pub merchant: String,
    /// First day, inclusive (YYYY-MM-DD).
    #[arg(long)]
    pub from: String,
    /// Last day, inclusive (YYYY-MM-DD), at most 366 days after `--from`
    /// counting both, as the totals API's `to`.
    #[arg(long)]
    pub to: String,
    /// `utc`: UTC days (merchant_sales); `local`: the merchant's own days
    /// (merchant_sales_local).
    #[arg(long, default_value = "utc", value_parser = ["utc", "local"])]
    pub basis: String,
    /// Print JSON: the same document as `GET /v1/merchants/{id}/days`.
    #[arg(long)]
    pub json: bool,
    /// Which database to read.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Flags of `tally generate`.
#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "TALLY_BROKERS", default_value = "127.0.0.1:9092")]
    pub brokers: String,
    /// Topic to publish to (it must exist; `tally worker` creates it).
    #[arg(long, default_value = "orders")]
    pub topic: String,
    /// Post to `tally ingest` at this URL (http://HOST:PORT[/PATH]) instead of
    /// publishing to Kafka; invalid events are then refused at the door.
    #[arg(long)]
    pub url: Option<String>,
    /// Bearer token for `--url`.
    #[arg(long, env = "TALLY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Events per request with `--url`.
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Concurrent HTTP clients with `--url`.
    #[arg(long, default_value_t = 8)]
    pub clients: usize,
    /// Messages to publish, including duplicates and invalid ones.
    #[arg(long, default_value_t = 1_000_000)]
    pub events: u64,
    /// Seed: the same seed and settings give the same messages and totals.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Distinct merchants (Zipf-like skew).
    #[arg(long, default_value_t = 1_000)]
    pub merchants: u32,
    /// Currencies, comma-separated.
    #[arg(long, default_value = "EUR,USD,GBP,JPY,CHF", value_delimiter = ',')]
    pub currencies: Vec<String>,
    /// Share of valid events that are refunds (0 to 1).
    #[arg(long, default_value_t = 0.08)]
    pub refund_share: f64,
    /// Share of messages repeating an earlier event byte for byte (0 to 1).
    #[arg(long, default_value_t = 0.02)]
    pub duplicate_share: f64,
    /// Share of messages that break a rule (0 to 1).
    #[arg(long, default_value_t = 0.002)]
    pub invalid_share: f64,
    /// Share of valid events dated 1 to 30 days back (0 to 1).
    #[arg(long, default_value_t = 0.03)]
    pub late_share: f64,
    /// The UTC day the traffic is about (YYYY-MM-DD).
    #[arg(long, default_value = "2026-11-20")]
    pub day: String,
    /// How valid events are written: `producer` (the schema's key order,
    /// compact, ASCII) or `varied` (a quarter of the merchants each from
    /// Python's json.dumps with `\u` escapes, JavaScript, Jackson's sorted
    /// keys and the producer layout, with unknown fields).
    #[arg(long, default_value = "producer")]
    pub layout: String,
    /// Target messages per second; 0 publishes as fast as the broker takes them.
    #[arg(long, default_value_t = 0)]
    pub rate: u64,
    /// Where to write the expected totals (CSV).
    #[arg(long, default_value = "expected-totals.csv")]
    pub expected: PathBuf,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `tally verify-totals`.
#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// An expected-totals file written by `tally generate`.
    pub file: PathBuf,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    /// Which database to read.
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// What a backfill or a reconciliation reads, and which rows it covers.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// A file, a directory, or a pattern such as `exports/2026-11-*.parquet`;
    /// locally or as an `s3://bucket/key` URL (credentials from `AWS_*`).
    #[arg(long)]
    pub source: String,
    /// First day, inclusive (YYYY-MM-DD).
    #[arg(long)]
    pub from: String,
    /// Last day, exclusive (YYYY-MM-DD).
    #[arg(long)]
    pub to: String,
    /// Only these merchants (repeatable); all merchants when absent.
    #[arg(long = "merchant")]
    pub merchants: Vec<String>,
    /// parquet, csv or ndjson (default: from the files' extension).
    #[arg(long)]
    pub format: Option<String>,
}

/// Flags of `tally backfill`.
#[derive(Debug, Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Merchant-hash shards, one task each (default: one per 2 GiB of input, rounded up to an even number).
    #[arg(long)]
    pub shards: Option<i32>,
    /// Replace days that are not over yet (today, or later): events streamed
    /// after the files were written are then erased. Refused without it.
    #[arg(long)]
    pub include_open_days: bool,
    #[command(flatten)]
    pub job: JobFlags,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Flags every job-creating command takes.
#[derive(Debug, Args)]
pub struct JobFlags {
    /// Start only after job JOB_ID has succeeded (repeatable); the job is
    /// cancelled if that one fails or is cancelled.
    #[arg(long = "after", value_name = "JOB_ID")]
    pub after: Vec<i64>,
    /// Show progress (for an import: files and rows done and left) until
    /// the job ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

/// Flags of `tally import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// A file, a directory, or a pattern such as `drops/*.csv`; locally or
    /// as an `s3://bucket/key` URL (credentials from `AWS_*`).
    #[arg(long)]
    pub source: String,
    /// parquet, csv or ndjson (default: each file's extension).
    #[arg(long)]
    pub format: Option<String>,
    #[command(flatten)]
    pub job: JobFlags,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `tally jobs`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    #[command(subcommand)]
    pub command: JobsCommand,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// Flags of `tally merchants`.
#[derive(Debug, Args)]
pub struct MerchantsArgs {
    #[command(subcommand)]
    pub command: MerchantsCommand,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `tally merchants …`.
#[derive(Debug, Subcommand)]
pub enum MerchantsCommand {
    /// Set one merchant's time zone (an IANA name such as Europe/Berlin).
    SetZone {
        /// The merchant id.
        merchant: String,
        /// The IANA time zone name.
        zone: String,
    },
    /// Set many merchants' time zones from a CSV file with the header
    /// `merchant_id,time_zone`: all of them, or none when a line is invalid.
    Import {
        /// The CSV file.
        file: PathBuf,
    },
    /// Set the zone of merchants without one, for every worker and
    /// aggregator (it overrides their `default_time_zone` settings).
    SetDefaultZone {
        /// The IANA time zone name.
        zone: String,
    },
    /// Every merchant with a time zone, and the default zone.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

/// `tally jobs …`.
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// The newest jobs with their state, tasks and row counts.
    List {
        /// How many.
        #[arg(long, default_value_t = 20)]
        limit: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One job with each task's attempts, timings and errors.
    Show {
        /// The job id.
        id: i64,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Cancel a pending or running job; the live table is left untouched.
    Cancel {
        /// The job id.
        id: i64,
    },
}

/// `tally schedule`.
#[derive(Debug, Args)]
pub struct ScheduleArgs {
    #[command(subcommand)]
    pub command: ScheduleCommand,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

/// `tally schedule …`.
#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a job from `--source` at every tick of `--cron` (UTC).
    Add {
        /// Unique name.
        name: String,
        /// Five-field cron expression in UTC, e.g. "30 2 * * *", or @daily.
        #[arg(long)]
        cron: String,
        /// A file, directory or pattern (local or `s3://`), listed again at every tick.
        #[arg(long)]
        source: String,
        /// Days each job covers, relative to the tick: yesterday, today or last-N-days.
        #[arg(long)]
        range: String,
        /// parquet, csv or ndjson (default: from the files' extension).
        #[arg(long)]
        format: Option<String>,
        /// Only these merchants (repeatable).
        #[arg(long = "merchant")]
        merchants: Vec<String>,
        /// Ticks after this time count (RFC 3339; default now). An earlier
        /// time makes the latest tick since then due at once.
        #[arg(long)]
        since: Option<String>,
        /// Allow `--range today`, whose jobs replace a day still going on
        /// (erasing events streamed after the files were written).
        #[arg(long)]
        include_open_days: bool,
    },
    /// Every schedule with its last tick.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete a schedule (its jobs stay).
    Remove {
        /// Its name.
        name: String,
    },
}

/// Flags of `tally verify`.
#[derive(Debug, Args)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Print the outcome as JSON.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub database: DatabaseArgs,
}

fn parse_key_value(raw: &str) -> Result<(String, String), String> {
    raw.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{raw:?} is not section.field=value"))
}

impl Layers {
    /// The flag overrides as `section.field=value` pairs for every role.
    pub fn overrides(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Some(brokers) = &self.brokers {
            out.push(("ingest.brokers".to_owned(), brokers.clone()));
        }
        if let Some(url) = &self.database_url {
            out.push(("ingest.database_url".to_owned(), url.clone()));
        }
        for section in ["worker", "aggregator"] {
            if let Some(brokers) = &self.brokers {
                out.push((format!("{section}.brokers"), brokers.clone()));
            }
            if let Some(url) = &self.database_url {
                out.push((format!("{section}.database_url"), url.clone()));
            }
        }
        out.extend(self.set.iter().cloned());
        out
    }
}
