//! One backfill task: read its files, keep the rows of its merchant-hash
//! shard, validate each by the event rules, count each `event_id` once, and
//! sum the rows inside the job's scope.
//!
//! Parquet and CSV are read by DataFusion (CSV with every column as text,
//! so amounts are never read through a float). NDJSON is read line by line
//! with the workers' own decoder: DataFusion's JSON reader would turn a
//! number amount into a float, and money must stay exact.

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, Read};
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, AsArray, LargeStringArray, RecordBatch, StringArray, StringViewArray,
    TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::{execute_stream, ExecutionPlan, StatisticsArgs, StatisticsContext};
use datafusion::prelude::{CsvReadOptions, ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use schemas::event::{decode, from_columns, Columns, Invalid, Occurred, ValidEvent};
use schemas::fx::FxMap;
use schemas::zone::{HourCache, Zone, Zones};
use schemas::{LocalSums, LocalTotals, Sums, Totals, TotalsKey};
use store::jobs::{RejectedRow, Rejections, Scope, TaskResult};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use xxhash_rust::xxh3::{xxh3_128, xxh3_64};

use crate::error::TaskError;
use crate::ids::IdSet;
use crate::source::{Format, Remote};

/// Rejected rows kept as examples per backfill task.
const EXAMPLES: usize = 20;

/// Rejected rows listed (with row number and reason) per imported file;
/// beyond this the file's counts by field still cover every one.
pub const IMPORT_EXAMPLES: usize = 10_000;

/// The shard a merchant belongs to, out of `shards`.
pub fn shard_of(merchant_id: &str, shards: i32) -> i32 {
    (xxh3_64(merchant_id.as_bytes()) % shards.max(1) as u64) as i32
}

/// What summing a valid row takes from it: a batch's valid rows are kept
/// in this form until their ids have been looked up all at once.
struct Counted {
    merchant: u32,
    currency: [u8; 3],
    kind: schemas::Kind,
    amount: schemas::Amount,
    day: schemas::Day,
    occurred_at: i64,
}

impl Counted {
    fn of(event: &ValidEvent<'_>, merchant: u32) -> Counted {
        Counted {
            merchant,
            currency: (event.currency.as_bytes().try_into()).expect("validated: three letters"),
            kind: event.kind,
            amount: event.amount,
            day: event.day,
            occurred_at: event.occurred_at,
        }
    }
}

/// A (merchant, currency, day) key, the merchant by its number in the
/// task, packed into one number: hashed as two words, not as a tuple whose
/// currency is hashed byte by byte.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct Key(u128);

impl Key {
    fn new(merchant: u32, [a, b, c]: [u8; 3], day: i32) -> Key {
        let currency = u32::from_le_bytes([a, b, c, 0]);
        Key(u128::from(merchant) << 64 | u128::from(currency) << 32 | u128::from(day as u32))
    }

    fn merchant(self) -> u32 {
        (self.0 >> 64) as u32
    }

    fn currency(self) -> [u8; 3] {
        let [a, b, c, _] = ((self.0 >> 32) as u32).to_le_bytes();
        [a, b, c]
    }

    fn day(self) -> i32 {
        self.0 as u32 as i32
    }
}

/// What a task knows of a merchant id, looked up once per row.
#[derive(Clone, Copy)]
struct Merchant {
    /// Its rows belong to this task's shard.
    mine: bool,
    /// The job's scope names it (or names no merchant).
    scoped: bool,
    /// Its zone, when local days are kept.
    zone: Option<Zone>,
}

/// Slots of [`Tally::by_view`]: a power of two, several times the
/// merchants a batch usually holds.
const VIEW_SLOTS: usize = 4_096;

/// Longest merchant id a task remembers; a longer one (never valid) is
/// judged afresh on each row.
const REMEMBERED: usize = 256;

/// Sums one task's rows.
struct Tally {
    scope: Arc<Scope>,
    shard: i32,
    shards: i32,
    seen: IdSet,
    /// Every merchant id the task has read (of any shard), numbered.
    merchants: FxMap<Box<str>, u32>,
    known: Vec<Merchant>,
    names: Vec<Box<str>>,
    /// Merchant numbers by the 16-byte view of a text column (direct
    /// mapped, valid for one batch): equal views hold equal text, inline
    /// for a short id and pointing at the same bytes for a long one (a
    /// Parquet reader gives every row of one dictionary value the same
    /// view), so most rows find their merchant without hashing its id.
    by_view: Vec<(u128, u32)>,
    sums: FxMap<Key, Sums>,
    /// Local days under these zones, when kept, and their sums. A merchant
    /// in UTC has its local sums in `sums` (the same days).
    zones: Option<Arc<Zones>>,
    hours: HourCache,
    local: FxMap<Key, Sums>,
    rows_read: i64,
    rows_rejected: i64,
    rows_duplicate: i64,
    by_field: BTreeMap<&'static str, i64>,
    examples: Vec<RejectedRow>,
    max_examples: usize,
}

impl Tally {
    fn new(
        scope: Arc<Scope>,
        zones: Option<Arc<Zones>>,
        shard: i32,
        shards: i32,
        max_examples: usize,
    ) -> Tally {
        Tally {
            scope,
            shard,
            shards,
            seen: IdSet::default(),
            merchants: FxMap::default(),
            known: Vec::new(),
            names: Vec::new(),
            by_view: Vec::new(),
            sums: FxMap::default(),
            zones,
            hours: HourCache::default(),
            local: FxMap::default(),
            rows_read: 0,
            rows_rejected: 0,
            rows_duplicate: 0,
            by_field: BTreeMap::new(),
            examples: Vec::new(),
            max_examples,
        }
    }

    /// The number of the raw `merchant_id` `merchant`, and what the task
    /// knows of it; `None` for an id too long to remember.
    fn merchant(&mut self, merchant: &str) -> Option<(u32, Merchant)> {
        if let Some(&index) = self.merchants.get(merchant) {
            return Some((index, self.known[index as usize]));
        }
        if merchant.len() > REMEMBERED {
            return None;
        }
        let index = self.names.len() as u32;
        let known = Merchant {
            mine: self.shards <= 1 || shard_of(merchant, self.shards) == self.shard,
            scoped: self.scope.has_merchant(merchant),
            zone: self.zones.as_ref().map(|zones| zones.of(merchant)),
        };
        self.names.push(merchant.into());
        self.merchants.insert(merchant.into(), index);
        self.known.push(known);
        Some((index, known))
    }

    /// Whether a row whose raw `merchant_id` is `merchant` is this task's,
    /// with the merchant's number when it is remembered. Rows without one
    /// belong to shard 0, so each is judged exactly once.
    fn mine(&mut self, merchant: Option<&str>) -> (bool, Option<u32>) {
        match merchant {
            None => (self.shards <= 1 || self.shard == 0, None),
            Some(m) => match self.merchant(m) {
                Some((index, known)) => (known.mine, Some(index)),
                None => (
                    self.shards <= 1 || shard_of(m, self.shards) == self.shard,
                    None,
                ),
            },
        }
    }

    /// [`Tally::mine`] of a row whose `merchant_id` is `merchant`, with
    /// `view` its view in the batch's text column.
    fn mine_by_view(&mut self, view: u128, merchant: &str) -> (bool, Option<u32>) {
        let mixed = (view as u64 ^ (view >> 64) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let slot = (mixed >> 52) as usize & (VIEW_SLOTS - 1);
        let (held, index) = self.by_view[slot];
        if held == view && index != u32::MAX {
            return (self.known[index as usize].mine, Some(index));
        }
        let found = self.mine(Some(merchant));
        if let (_, Some(index)) = found {
            self.by_view[slot] = (view, index);
        }
        found
    }

    /// Forgets the views of the last batch.
    fn new_batch(&mut self) {
        self.by_view.clear();
        self.by_view.resize(VIEW_SLOTS, (0, u32::MAX));
    }

    fn reject(&mut self, file: &str, row: u64, invalid: Invalid) {
        self.rows_read += 1;
        self.rows_rejected += 1;
        *self.by_field.entry(invalid.field).or_default() += 1;
        if self.examples.len() < self.max_examples {
            self.examples.push(RejectedRow {
                file: file.to_owned(),
                row,
                field: invalid.field.to_owned(),
                value: invalid.value,
                reason: invalid.reason,
            });
        }
    }

    /// Refuses an event whose local day lies outside the era (only one on
    /// its first or last day can), when local days are kept.
    fn check(&self, event: &ValidEvent<'_>) -> Result<(), Invalid> {
        match &self.zones {
            Some(zones) => zones.check_local_era(&event.merchant_id, event.occurred_at, event.day),
            None => Ok(()),
        }
    }

    fn add(&mut self, event: &ValidEvent<'_>) {
        let fresh = self.seen.insert(xxh3_128(event.event_id.as_bytes()));
        let merchant = self
            .merchant(&event.merchant_id)
            .expect("a valid id is at most 128 bytes")
            .0;
        self.count(&Counted::of(event, merchant), fresh);
    }

    /// Sums a valid row; `fresh` is false when its `event_id` was seen before.
    fn count(&mut self, event: &Counted, fresh: bool) {
        let merchant = event.merchant;
        self.rows_read += 1;
        if !fresh {
            self.rows_duplicate += 1;
            return;
        }
        let known = self.known[merchant as usize];
        if !known.scoped {
            return;
        }
        let in_days = |day: i32| day >= self.scope.from.0 && day < self.scope.to.0;
        let currency = event.currency;
        if in_days(event.day.0) {
            self.sums
                .entry(Key::new(merchant, currency, event.day.0))
                .or_default()
                .add_event(event.kind, event.amount);
        }
        // A local day is in scope by its own date: an event near midnight
        // may count in one table's scope and not the other's. A merchant
        // in UTC has its local sums in `sums`.
        if let Some(zone) = known.zone.filter(|&zone| zone != Zone::UTC) {
            let day = self.hours.local_day(zone, event.occurred_at).0;
            if in_days(day) {
                self.local
                    .entry(Key::new(merchant, currency, day))
                    .or_default()
                    .add_event(event.kind, event.amount);
            }
        }
    }

    fn finish(self) -> TaskResult {
        let (names, known) = (self.names, self.known);
        let key = |k: Key| TotalsKey {
            merchant_id: names[k.merchant() as usize].to_string(),
            currency: String::from_utf8_lossy(&k.currency()).into_owned(),
            day: schemas::Day(k.day()),
        };
        let in_utc = |merchant: u32| known[merchant as usize].zone == Some(Zone::UTC);
        let utc_local: Vec<(Key, Sums)> = (self.sums.iter())
            .filter(|(k, _)| in_utc(k.merchant()))
            .map(|(&k, &sums)| (k, sums))
            .collect();
        let local: LocalTotals = (self.local.into_iter().chain(utc_local))
            .map(|(k, sums)| {
                let zone = known[k.merchant() as usize].zone.expect("local days kept");
                let time_zone = zone.name().into();
                (key(k), LocalSums { time_zone, sums })
            })
            .collect();
        let totals: Totals = self
            .sums
            .into_iter()
            .map(|(k, sums)| (key(k), sums))
            .collect();
        TaskResult {
            totals,
            local,
            rows_read: self.rows_read,
            rows_rejected: self.rows_rejected,
            rows_duplicate: self.rows_duplicate,
            rejections: Rejections {
                by_field: (self.by_field.into_iter())
                    .map(|(field, n)| (field.to_owned(), n))
                    .collect(),
                examples: self.examples,
                file: None,
            },
        }
    }
}

/// Reads `files` and sums each of `shards` (shard numbers out of `of`)
/// within `scope`, returning one result per shard, in order.
///
/// Shards share one reading of Parquet and CSV: each file is decoded once
/// and every batch goes to each shard's tally, which runs as a task of its
/// own. (NDJSON is decoded and validated in one step, so each
/// shard reads it.) Fails (so the tasks are retried) when a file cannot be
/// read, or holds a column whose type cannot carry the event exactly (such
/// as a float amount).
pub async fn compute(
    files: &[String],
    format: Format,
    scope: &Scope,
    zones: Option<Arc<Zones>>,
    shards: &[i32],
    of: i32,
) -> Result<Vec<TaskResult>, TaskError> {
    compute_with(files, format, scope, zones, shards, of, EXAMPLES).await
}

/// [`compute`], keeping up to `max_examples` rejected rows per shard. With
/// `zones`, each result also sums its events by local day
/// ([`TaskResult::local`]), a local day in scope by its own date.
pub async fn compute_with(
    files: &[String],
    format: Format,
    scope: &Scope,
    zones: Option<Arc<Zones>>,
    shards: &[i32],
    of: i32,
    max_examples: usize,
) -> Result<Vec<TaskResult>, TaskError> {
    let scope = Arc::new(scope.clone());
    // Every file is planned first: Parquet footers give the rows to come,
    // so each shard's id set is made large enough at once (growing it
    // rehashes every id held, and a large set grew several times).
    let mut planned = Vec::new();
    if format != Format::Ndjson {
        for file in files {
            planned.push(plan_file(file, format).await?);
        }
    }
    let held: usize = planned.iter().filter_map(Planned::rows).sum();
    // A shard's share, and a little more: merchants' rows are not spread evenly.
    let share = held / of.max(1) as usize;
    let expected = share + share / 32;
    // Dropping the set (on an error, or when the caller gives up) stops every tally.
    let mut tallies = JoinSet::new();
    let mut senders = Vec::new();
    for &shard in shards {
        let (sender, mut batches) = mpsc::channel::<(Arc<str>, RecordBatch, u64)>(4);
        senders.push(sender);
        let (scope, files, zones) = (Arc::clone(&scope), files.to_vec(), zones.clone());
        tallies.spawn(async move {
            let mut tally = Tally::new(scope, zones, shard, of, max_examples);
            tally.seen.reserve(expected);
            if format == Format::Ndjson {
                for file in &files {
                    ndjson(file, &mut tally).await?;
                }
            }
            while let Some((file, batch, row)) = batches.recv().await {
                rows(&file, &batch, row, &mut tally)?;
            }
            Ok::<_, TaskError>((shard, tally.finish()))
        });
    }
    'files: for planned in planned {
        let name = Arc::clone(&planned.file);
        let mut batches = planned.execute()?;
        let mut row = 0u64;
        while let Some(batch) = batches.next().await {
            let batch = batch.map_err(|e| TaskError::datafusion(&name, e))?;
            for sender in &senders {
                if sender
                    .send((Arc::clone(&name), batch.clone(), row))
                    .await
                    .is_err()
                {
                    break 'files; // That tally failed; its error is collected below.
                }
            }
            row += batch.num_rows() as u64;
        }
    }
    drop(senders);
    let mut results = HashMap::new();
    while let Some(joined) = tallies.join_next().await {
        let (shard, result) = joined.map_err(|e| TaskError::Stopped {
            reason: format!("a shard's tally stopped: {e}"),
            permanent: false,
        })??;
        results.insert(shard, result);
    }
    Ok(shards
        .iter()
        .map(|shard| results.remove(shard).expect("one result per shard"))
        .collect())
}

async fn ndjson(file: &str, tally: &mut Tally) -> Result<(), TaskError> {
    let mut lines = Lines::default();
    let mut each = |number: u64, line: &[u8]| {
        if line.iter().all(u8::is_ascii_whitespace) {
            return;
        }
        match decode(line, None) {
            Ok(event) if tally.mine(Some(&event.merchant_id)).0 => match tally.check(&event) {
                Ok(()) => tally.add(&event),
                Err(invalid) => tally.reject(file, number, invalid),
            },
            Ok(_) => {}
            Err(invalid) if tally.mine(None).0 => tally.reject(file, number, invalid),
            Err(_) => {}
        }
    };
    match Remote::parse(file).map_err(TaskError::Job)? {
        Some(remote) => {
            let mut blocks = remote
                .blocks()
                .await
                .map_err(|e| TaskError::remote(file, e))?;
            while let Some(block) = blocks.next().await {
                lines.feed(&block.map_err(|e| TaskError::remote(file, e))?, &mut each);
            }
        }
        None => {
            let mut reader = std::fs::File::open(file).map_err(|e| TaskError::io(file, &e))?;
            let mut block = vec![0; 1 << 20];
            loop {
                let read = reader
                    .read(&mut block)
                    .map_err(|e| TaskError::io(file, &e))?;
                if read == 0 {
                    break;
                }
                lines.feed(&block[..read], &mut each);
            }
        }
    }
    lines.finish(&mut each);
    Ok(())
}

/// Splits blocks of bytes into lines numbered from 1, carrying a line that
/// a block cuts over to the next block.
#[derive(Default)]
struct Lines {
    carry: Vec<u8>,
    number: u64,
}

impl Lines {
    fn feed(&mut self, block: &[u8], each: &mut impl FnMut(u64, &[u8])) {
        let mut rest = block;
        while let Some(end) = rest.iter().position(|&b| b == b'\n') {
            self.number += 1;
            if self.carry.is_empty() {
                each(self.number, &rest[..end]);
            } else {
                self.carry.extend_from_slice(&rest[..end]);
                each(self.number, &self.carry);
                self.carry.clear();
            }
            rest = &rest[end + 1..];
        }
        self.carry.extend_from_slice(rest);
    }

    /// The last line, when the input does not end with a newline.
    fn finish(&mut self, each: &mut impl FnMut(u64, &[u8])) {
        if !self.carry.is_empty() {
            self.number += 1;
            each(self.number, &self.carry);
            self.carry.clear();
        }
    }
}

/// A column of text, whatever string layout the reader chose.
enum Text {
    Utf8(StringArray),
    Large(LargeStringArray),
    View(StringViewArray),
}

impl Text {
    fn of(name: &str, array: &ArrayRef) -> Result<Text, String> {
        let as_text = |array: &ArrayRef| -> Result<Text, String> {
            Ok(match array.data_type() {
                DataType::Utf8 => Text::Utf8(array.as_string::<i32>().clone()),
                DataType::LargeUtf8 => Text::Large(array.as_string::<i64>().clone()),
                DataType::Utf8View => Text::View(array.as_string_view().clone()),
                _ => unreachable!("cast to Utf8 first"),
            })
        };
        match array.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => as_text(array),
            DataType::Float16 | DataType::Float32 | DataType::Float64 => {
                Err(format!("column `{name}` is {}: floats cannot hold money exactly; store it as text or decimal", array.data_type()))
            }
            DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
                // A decimal's text carries its full scale ("19.990000"); the
                // value is what counts, so trailing fractional zeros go.
                let text = cast(array, &DataType::Utf8).map_err(|e| format!("column `{name}`: {e}"))?;
                let trimmed: StringArray = text
                    .as_string::<i32>()
                    .iter()
                    .map(|v| v.map(|v| if v.contains('.') { v.trim_end_matches('0').trim_end_matches('.') } else { v }))
                    .collect();
                Ok(Text::Utf8(trimmed))
            }
            DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => {
                as_text(&cast(array, &DataType::Utf8).map_err(|e| format!("column `{name}`: {e}"))?)
            }
            other => Err(format!("column `{name}` is {other}; it must hold text")),
        }
    }

    #[inline]
    fn get(&self, i: usize) -> Option<&str> {
        match self {
            Text::Utf8(a) => a.is_valid(i).then(|| a.value(i)),
            Text::Large(a) => a.is_valid(i).then(|| a.value(i)),
            Text::View(a) => a.is_valid(i).then(|| a.value(i)),
        }
    }
}

/// `occurred_at` as text (RFC 3339) or as a timestamp column (UTC; a
/// timestamp without a zone is read as UTC).
enum When {
    Text(Text),
    Micros(TimestampMicrosecondArray),
}

impl When {
    fn of(array: &ArrayRef) -> Result<When, String> {
        match array.data_type() {
            DataType::Timestamp(_, zone) => {
                let micros = cast(
                    array,
                    &DataType::Timestamp(TimeUnit::Microsecond, zone.clone()),
                )
                .map_err(|e| format!("column `occurred_at`: {e}"))?;
                Ok(When::Micros(micros.as_primitive().clone()))
            }
            _ => Text::of("occurred_at", array).map(When::Text),
        }
    }

    fn get(&self, i: usize) -> Option<Occurred<'_>> {
        match self {
            When::Text(t) => t.get(i).map(Occurred::Text),
            When::Micros(a) => a.is_valid(i).then(|| Occurred::Micros(a.value(i))),
        }
    }
}

const TEXT_COLUMNS: [&str; 6] = [
    "event_id",
    "order_id",
    "merchant_id",
    "kind",
    "amount",
    "currency",
];

/// A file's reading, planned but not started.
struct Planned {
    file: Arc<str>,
    plan: Arc<dyn ExecutionPlan>,
    context: Arc<TaskContext>,
}

impl Planned {
    /// The rows the file holds, when it says (a Parquet footer does).
    fn rows(&self) -> Option<usize> {
        let statistics = StatisticsContext::new()
            .compute(self.plan.as_ref(), &StatisticsArgs::new())
            .ok()?;
        statistics.num_rows.get_value().copied()
    }

    fn execute(self) -> Result<SendableRecordBatchStream, TaskError> {
        let file = self.file;
        execute_stream(self.plan, self.context).map_err(|e| TaskError::datafusion(&file, e))
    }
}

/// Plans the reading of a Parquet or CSV file's rows by DataFusion, in file order.
async fn plan_file(file: &str, format: Format) -> Result<Planned, TaskError> {
    // One partition keeps the file's row order, so that the first of two
    // rows sharing an `event_id` is the one counted, on every run.
    let ctx = SessionContext::new_with_config(
        SessionConfig::new()
            .with_target_partitions(1)
            .with_batch_size(64 * 1024),
    );
    let remote = Remote::parse(file).map_err(TaskError::Job)?;
    if let Some(remote) = &remote {
        ctx.register_object_store(&remote.bucket, Arc::clone(&remote.store));
    }
    let frame = match format {
        Format::Parquet => ctx.read_parquet(file, ParquetReadOptions::default()).await,
        _ => {
            let schema = csv_schema(file, &header(file, remote.as_ref()).await?)?;
            ctx.read_csv(
                file,
                CsvReadOptions::new()
                    .has_header(true)
                    .schema(&schema)
                    .file_extension(""),
            )
            .await
        }
    }
    .map_err(|e| TaskError::datafusion(file, e))?;
    let context = Arc::new(frame.task_ctx());
    let plan = frame
        .create_physical_plan()
        .await
        .map_err(|e| TaskError::datafusion(file, e))?;
    Ok(Planned {
        file: file.into(),
        plan,
        context,
    })
}

/// A CSV file's first line.
async fn header(file: &str, remote: Option<&Remote>) -> Result<String, TaskError> {
    let mut line = Vec::new();
    match remote {
        Some(remote) => {
            let mut blocks = remote
                .blocks()
                .await
                .map_err(|e| TaskError::remote(file, e))?;
            while !line.contains(&b'\n') && line.len() < HEADER_LIMIT {
                match blocks.next().await {
                    Some(block) => line.extend(block.map_err(|e| TaskError::remote(file, e))?),
                    None => break,
                }
            }
        }
        None => {
            let opened = std::fs::File::open(file).map_err(|e| TaskError::io(file, &e))?;
            std::io::BufReader::new(opened)
                .take(HEADER_LIMIT as u64)
                .read_until(b'\n', &mut line)
                .map_err(|e| TaskError::io(file, &e))?;
        }
    }
    let end = line.iter().position(|&b| b == b'\n').unwrap_or(line.len());
    String::from_utf8(line[..end].to_vec())
        .map_err(|_| TaskError::content(file, "the header row is not UTF-8"))
}

/// The longest CSV header row read.
const HEADER_LIMIT: usize = 1 << 20;

/// Every column of the CSV's header row, as nullable text.
fn csv_schema(file: &str, header: &str) -> Result<Schema, TaskError> {
    let header = header.trim_end_matches(['\r', '\n']);
    if header.is_empty() {
        return Err(TaskError::content(
            file,
            "the file is empty; a CSV needs a header row",
        ));
    }
    Ok(Schema::new(
        header
            .split(',')
            .map(|name| Field::new(name.trim_matches('"'), DataType::Utf8, true))
            .collect::<Vec<_>>(),
    ))
}

fn rows(
    file: &str,
    batch: &RecordBatch,
    first_row: u64,
    tally: &mut Tally,
) -> Result<(), TaskError> {
    let column = |name: &str| {
        batch
            .schema()
            .index_of(name)
            .ok()
            .map(|i| Arc::clone(batch.column(i)))
    };
    let mut text: Vec<Option<Text>> = Vec::with_capacity(TEXT_COLUMNS.len());
    for name in TEXT_COLUMNS {
        text.push(
            column(name)
                .map(|a| Text::of(name, &a))
                .transpose()
                .map_err(|e| TaskError::content(file, e))?,
        );
    }
    let when = column("occurred_at")
        .map(|a| When::of(&a))
        .transpose()
        .map_err(|e| TaskError::content(file, e))?;
    let get = |c: usize, i: usize| text[c].as_ref().and_then(|t| t.get(i));
    let views = match &text[2] {
        Some(Text::View(merchants)) => Some(merchants.views()),
        _ => None,
    };
    tally.new_batch();
    let mut valid = Vec::with_capacity(batch.num_rows());
    let mut digests = Vec::with_capacity(batch.num_rows());
    for i in 0..batch.num_rows() {
        // Another shard's rows are skipped before their other columns are read.
        let merchant_id = get(2, i);
        let (mine, merchant) = match (views, merchant_id) {
            (Some(views), Some(id)) => tally.mine_by_view(views[i], id),
            _ => tally.mine(merchant_id),
        };
        if !mine {
            continue;
        }
        let columns = Columns {
            event_id: get(0, i),
            order_id: get(1, i),
            merchant_id,
            kind: get(3, i),
            amount: get(4, i),
            currency: get(5, i),
            occurred_at: when.as_ref().and_then(|w| w.get(i)),
        };
        match from_columns(columns).and_then(|event| tally.check(&event).map(|()| event)) {
            Ok(event) => {
                let merchant = merchant.expect("a valid id is at most 128 bytes, so remembered");
                digests.push(xxh3_128(event.event_id.as_bytes()));
                valid.push(Counted::of(&event, merchant));
            }
            // Row numbers count data rows from 1, after any header.
            Err(invalid) => tally.reject(file, first_row + i as u64 + 1, invalid),
        }
    }
    // The whole batch's ids at once, so the set can overlap its cache misses.
    let mut fresh = Vec::new();
    tally.seen.insert_all(&digests, &mut fresh);
    for (event, fresh) in valid.iter().zip(fresh) {
        tally.count(event, fresh);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::Day;

    #[tokio::test]
    async fn ndjson_rows_are_validated_deduped_and_scoped() {
        let dir = std::env::temp_dir().join(format!("tally-compute-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let event = |id: &str, merchant: &str, amount: &str, day: &str| {
            format!(
                r#"{{"event_id":"{id}","order_id":"o","merchant_id":"{merchant}","kind":"sale","amount":{amount},"currency":"EUR","occurred_at":"{day}T10:00:00Z"}}"#
            )
        };
        let lines = [
            event("a", "m-1", "\"1.10\"", "2026-11-20"),
            event("a", "m-1", "\"1.10\"", "2026-11-20"), // duplicate
            event("b", "m-1", "2.2", "2026-11-20"),      // a number, read from its text
            event("c", "m-1", "\"-1\"", "2026-11-20"),   // rejected
            event("d", "m-2", "\"5\"", "2026-11-21"),    // out of scope (day)
            "{not json".to_owned(),
        ];
        let file = dir.join("x.ndjson");
        std::fs::write(&file, lines.join("\n")).unwrap();
        let scope = Scope {
            from: Day::parse("2026-11-20").unwrap(),
            to: Day::parse("2026-11-21").unwrap(),
            merchants: vec![],
        };
        let files = [file.to_string_lossy().into_owned()];
        let result = compute(&files, Format::Ndjson, &scope, None, &[0], 1)
            .await
            .unwrap()
            .remove(0);
        assert_eq!(
            (
                result.rows_read,
                result.rows_rejected,
                result.rows_duplicate
            ),
            (6, 2, 1)
        );
        assert_eq!(result.totals.len(), 1);
        let sums = result.totals.values().next().unwrap();
        assert_eq!(
            (sums.sales_amount.to_string(), sums.sales_count),
            ("3.3000".to_owned(), 2)
        );
        assert_eq!(result.rejections.by_field["amount"], 1);
        assert_eq!(result.rejections.examples[0].row, 4);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shards_sharing_one_reading_sum_like_shards_read_alone() {
        use datafusion::parquet::arrow::ArrowWriter;
        let dir = std::env::temp_dir().join(format!("tally-compute-group-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let names = [
            "event_id",
            "order_id",
            "merchant_id",
            "kind",
            "amount",
            "currency",
            "occurred_at",
        ];
        let schema = Arc::new(Schema::new(
            names.map(|n| Field::new(n, DataType::Utf8, true)).to_vec(),
        ));
        // Ids repeat (every 7th row is a repeat), and every 50th amount is invalid.
        let rows = 150_000;
        let column = |f: &dyn Fn(usize) -> String| {
            Arc::new((0..rows).map(|i| Some(f(i))).collect::<StringArray>()) as ArrayRef
        };
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                column(&|i| format!("e-{}", if i % 7 == 0 { i / 2 } else { i })),
                column(&|i| format!("o-{i}")),
                column(&|i| format!("m-{}", i % 97)),
                column(&|_| "sale".into()),
                column(&|i| {
                    if i % 50 == 0 {
                        "-1".into()
                    } else {
                        format!("{}.{:02}", i % 1000, i % 100)
                    }
                }),
                column(&|_| "EUR".into()),
                column(&|i| format!("2026-11-{:02}T10:00:00Z", 1 + i % 20)),
            ],
        )
        .unwrap();
        let file = dir.join("x.parquet");
        let mut writer =
            ArrowWriter::try_new(std::fs::File::create(&file).unwrap(), schema, None).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let files = [file.to_string_lossy().into_owned()];
        let scope = Scope {
            from: Day::parse("2026-11-01").unwrap(),
            to: Day::parse("2026-11-15").unwrap(),
            merchants: vec![],
        };
        let together = compute(&files, Format::Parquet, &scope, None, &[0, 1, 2], 3)
            .await
            .unwrap();
        for (shard, shared) in together.iter().enumerate() {
            let alone = compute(&files, Format::Parquet, &scope, None, &[shard as i32], 3)
                .await
                .unwrap()
                .remove(0);
            assert_eq!(shared.totals, alone.totals, "shard {shard}");
            assert_eq!(
                (
                    shared.rows_read,
                    shared.rows_rejected,
                    shared.rows_duplicate
                ),
                (alone.rows_read, alone.rows_rejected, alone.rows_duplicate)
            );
            assert!(!shared.totals.is_empty());
        }
        let read: i64 = together.iter().map(|r| r.rows_read).sum();
        assert_eq!(read, rows as i64);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lines_cut_by_blocks_are_joined() {
        let mut lines = Lines::default();
        let mut seen = Vec::new();
        let mut each =
            |n: u64, line: &[u8]| seen.push((n, String::from_utf8(line.to_vec()).unwrap()));
        for block in ["ab\nc", "d", "e\n\nf"] {
            lines.feed(block.as_bytes(), &mut each);
        }
        lines.finish(&mut each);
        assert_eq!(
            seen,
            [
                (1, "ab".into()),
                (2, "cde".into()),
                (3, "".into()),
                (4, "f".into())
            ]
        );
    }
}
