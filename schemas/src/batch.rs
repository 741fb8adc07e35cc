//! The Arrow schema of a decoded batch of valid events, and its builder.
//!
//! A batch holds the columns the partial aggregation reads, and no more:
//! the ids and the timestamp are checked and deduped while decoding, and
//! building columns nobody reads cost the hot path a tenth of its time.
//!
//! An event's merchant and currency travel as one number, its pair's in the
//! batch's [`BatchKeys`]: the builder numbers each (merchant, currency) pair
//! as it first sees it, looks up the merchant's zone once for the pair, and
//! DataFusion groups by one integer packed from the pair and the day
//! instead of by strings. Ids of any
//! length are numbered alike: one of up to 16 bytes by its own bytes, a
//! longer one (a UUID) by its 128-bit digest, checked against its text.

use std::collections::hash_map::Entry;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Int32Builder, UInt32Builder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};
use xxhash_rust::xxh3::xxh3_128;

use crate::amount::{PRECISION, SCALE};
use crate::day::Day;
use crate::event::{Kind, ValidEvent};
use crate::fx::{short_words, FxMap};
use crate::zone::{HourCache, Zone, Zones};

/// Column names, in schema order.
pub mod col {
    /// `pair`, UInt32: the number of the event's (merchant, currency) pair
    /// in the batch's [`BatchKeys`](super::BatchKeys).
    pub const PAIR: &str = "pair";
    /// `refund`, Boolean: the event's `kind` is `refund` (else `sale`).
    pub const REFUND: &str = "refund";
    /// `amount`, Decimal128(38,4).
    pub const AMOUNT: &str = "amount";
    /// `day`, Date32: the UTC day of `occurred_at`.
    pub const DAY: &str = "day";
    /// `days`, Int32: the UTC day and the day in the merchant's zone in one
    /// number ([`days`](super::days)), in place of `day` in batches built
    /// [`with_local_days`](super::EventBatchBuilder::with_local_days). One
    /// grouping key instead of two keeps the aggregation nearly as cheap.
    pub const DAYS: &str = "days";
}

/// The UTC day and the local day as one number: `utc × 3 + (local − utc + 1)`.
/// A zone's offset is under a day, so the local day is the UTC day or one
/// either side.
pub fn days(utc: Day, local: Day) -> i32 {
    utc.0 * 3 + (local.0 - utc.0 + 1)
}

/// The UTC day and the local day of a [`days`] number.
pub fn split_days(days: i32) -> (Day, Day) {
    let utc = days.div_euclid(3);
    (Day(utc), Day(utc + days.rem_euclid(3) - 1))
}

/// The schema of a batch of valid, decoded events.
pub fn event_schema() -> SchemaRef {
    Arc::new(Schema::new(fields(false)))
}

/// The schema of a batch that also carries each event's local day.
pub fn local_event_schema() -> SchemaRef {
    Arc::new(Schema::new(fields(true)))
}

fn fields(local: bool) -> Vec<Field> {
    vec![
        Field::new(col::PAIR, DataType::UInt32, false),
        Field::new(col::REFUND, DataType::Boolean, false),
        Field::new(col::AMOUNT, DataType::Decimal128(PRECISION, SCALE), false),
        if local {
            Field::new(col::DAYS, DataType::Int32, false)
        } else {
            Field::new(col::DAY, DataType::Date32, false)
        },
    ]
}

/// The (merchant, currency) pairs of a batch, by number, each with its
/// merchant's zone (UTC when the batch keeps no local days).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct BatchKeys {
    /// The pairs' merchant ids, one after another.
    text: String,
    pairs: Vec<PairKey>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PairKey {
    /// The merchant id's place in `text`.
    start: u32,
    len: u32,
    currency: [u8; 3],
    zone: Zone,
}

impl BatchKeys {
    /// Pairs numbered.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// True when the batch has no events.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The merchant id of pair `pair`.
    pub fn merchant(&self, pair: u32) -> &str {
        let key = &self.pairs[pair as usize];
        &self.text[key.start as usize..(key.start + key.len) as usize]
    }

    /// The currency of pair `pair`.
    pub fn currency(&self, pair: u32) -> &str {
        std::str::from_utf8(&self.pairs[pair as usize].currency).expect("validated: three letters")
    }

    /// The zone of pair `pair`'s merchant.
    pub fn zone(&self, pair: u32) -> Zone {
        self.pairs[pair as usize].zone
    }

    fn push(&mut self, merchant: &str, currency: [u8; 3], zone: Zone) -> u32 {
        let number = self.pairs.len() as u32;
        self.pairs.push(PairKey {
            start: self.text.len() as u32,
            len: merchant.len() as u32,
            currency,
            zone,
        });
        self.text.push_str(merchant);
        number
    }
}

/// A batch of valid events, and the pairs its `pair` column numbers.
#[derive(Debug, Clone)]
pub struct EventBatch {
    /// The events' columns.
    pub rows: RecordBatch,
    /// The pairs `rows` numbers.
    pub keys: Arc<BatchKeys>,
}

impl EventBatch {
    /// Events in the batch.
    pub fn num_rows(&self) -> usize {
        self.rows.num_rows()
    }

    /// Events `offset..offset + len`, numbered by the same keys.
    pub fn slice(&self, offset: usize, len: usize) -> EventBatch {
        EventBatch {
            rows: self.rows.slice(offset, len),
            keys: Arc::clone(&self.keys),
        }
    }
}

/// The length byte that marks a key made of a long id's digest.
const DIGEST: u64 = 0xff;

/// Numbers a batch's pairs in order of first sight.
#[derive(Default)]
struct Pairs {
    /// By three words: a short id's own bytes, or a long one's digest, and
    /// the currency with the id's length (or [`DIGEST`]).
    numbers: FxMap<[u64; 3], u32>,
    /// Pairs whose long id has the digest of another pair's id (never seen
    /// in practice), by text.
    collided: FxMap<(Box<str>, [u8; 3]), u32>,
    keys: BatchKeys,
}

impl Pairs {
    /// The number of (`merchant`, `currency`), given on first sight with
    /// the zone `zone_of` gives the merchant.
    fn number(
        &mut self,
        merchant: &str,
        currency: &str,
        zone_of: impl FnOnce(&str) -> Zone,
    ) -> u32 {
        let currency: [u8; 3] = currency
            .as_bytes()
            .try_into()
            .expect("validated: three letters");
        let code = u64::from(currency[0]) << 24
            | u64::from(currency[1]) << 16
            | u64::from(currency[2]) << 8;
        let key = match short_words(merchant) {
            Some([a, b]) => [a, b, code | merchant.len() as u64],
            None => {
                let digest = xxh3_128(merchant.as_bytes());
                [digest as u64, (digest >> 64) as u64, code | DIGEST]
            }
        };
        // A lookup first: nearly every event's pair is numbered already,
        // and `entry` reserves room (an out-of-line call) before it looks.
        if let Some(&number) = self.numbers.get(&key) {
            if key[2] & DIGEST != DIGEST || self.keys.merchant(number) == merchant {
                return number;
            }
        }
        match self.numbers.entry(key) {
            Entry::Occupied(_) => {
                // Another id with the same digest: numbered by its text.
                let keys = &mut self.keys;
                *self
                    .collided
                    .entry((merchant.into(), currency))
                    .or_insert_with(|| keys.push(merchant, currency, zone_of(merchant)))
            }
            Entry::Vacant(free) => {
                *free.insert(self.keys.push(merchant, currency, zone_of(merchant)))
            }
        }
    }
}

/// Accumulates valid events column by column.
pub struct EventBatchBuilder {
    schema: SchemaRef,
    pair: UInt32Builder,
    refund: BooleanBuilder,
    amount: Decimal128Builder,
    day: Date32Builder,
    pairs: Pairs,
    /// Local days under these zones, when the batch keeps them.
    local: Option<(Arc<Zones>, HourCache, Int32Builder)>,
    rows: usize,
}

impl EventBatchBuilder {
    /// A builder sized for `capacity` events.
    pub fn with_capacity(capacity: usize) -> EventBatchBuilder {
        EventBatchBuilder {
            schema: event_schema(),
            pair: UInt32Builder::with_capacity(capacity),
            refund: BooleanBuilder::with_capacity(capacity),
            amount: Decimal128Builder::with_capacity(capacity),
            day: Date32Builder::with_capacity(capacity),
            pairs: Pairs::default(),
            local: None,
            rows: 0,
        }
    }

    /// A builder that also records each event's day in its merchant's zone
    /// under `zones`.
    pub fn with_local_days(capacity: usize, zones: Arc<Zones>) -> EventBatchBuilder {
        let mut builder = EventBatchBuilder::with_capacity(capacity);
        builder.schema = local_event_schema();
        builder.local = Some((
            zones,
            HourCache::take(),
            Int32Builder::with_capacity(capacity),
        ));
        builder
    }

    /// Appends one event.
    pub fn push(&mut self, event: &ValidEvent<'_>) {
        let zones = self.local.as_ref().map(|(zones, _, _)| zones);
        let pair = self
            .pairs
            .number(&event.merchant_id, &event.currency, |merchant| {
                zones.map_or(Zone::UTC, |zones| zones.of(merchant))
            });
        self.pair.append_value(pair);
        self.refund.append_value(event.kind == Kind::Refund);
        self.amount.append_value(event.amount.0);
        match &mut self.local {
            Some((_, cache, both)) => {
                let local = cache.local_day(self.pairs.keys.zone(pair), event.occurred_at);
                both.append_value(days(event.day, local));
            }
            None => self.day.append_value(event.day.0),
        }
        self.rows += 1;
    }

    /// Events appended so far.
    pub fn len(&self) -> usize {
        self.rows
    }

    /// True when nothing was appended.
    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// Finishes the batch and resets the builder.
    ///
    /// Fails only if the columns disagree with the schema, which would be a bug.
    pub fn finish(&mut self) -> Result<EventBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.pair.finish()),
            Arc::new(self.refund.finish()),
            Arc::new(
                self.amount
                    .finish()
                    .with_precision_and_scale(PRECISION, SCALE)?,
            ),
            match &mut self.local {
                Some((_, _, both)) => Arc::new(both.finish()),
                None => Arc::new(self.day.finish()),
            },
        ];
        self.rows = 0;
        let keys = std::mem::take(&mut self.pairs).keys;
        Ok(EventBatch {
            rows: RecordBatch::try_new(self.schema.clone(), columns)?,
            keys: Arc::new(keys),
        })
    }
}

impl Drop for EventBatchBuilder {
    /// Leaves the hour cache, warm, to the thread's next batch.
    fn drop(&mut self) {
        if let Some((_, cache, _)) = &mut self.local {
            std::mem::take(cache).keep();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    #[test]
    fn both_days_survive_the_one_number() {
        for utc in [-800_000, -1, 0, 1, 20_777, 800_000] {
            for shift in [-1, 0, 1] {
                let local = Day(utc + shift);
                assert_eq!(split_days(days(Day(utc), local)), (Day(utc), local));
            }
        }
    }

    #[test]
    fn pairs_are_numbered_by_their_text_whatever_the_ids_length() {
        // Ids around the 16-byte edge, UUIDs, and ids differing only in their
        // last byte, each in two currencies.
        let mut ids: Vec<String> = ["m", "m-1", "m-2", "merchant-0000001", "merchant-00000001"]
            .map(str::to_owned)
            .to_vec();
        ids.extend((0..300).map(|i| format!("3f2a9c4e-8b1d-4e7a-9c2f-{i:012}")));
        let mut pairs = Pairs::default();
        let mut expected: std::collections::HashMap<(String, &str), u32> = Default::default();
        for round in 0..2 {
            for (i, id) in ids.iter().enumerate() {
                for currency in ["EUR", "USD"] {
                    let zone = if i % 2 == 0 {
                        Zone::UTC
                    } else {
                        Zone::parse("Asia/Tokyo").unwrap()
                    };
                    let number = pairs.number(id, currency, |_| zone);
                    let first = *expected.entry((id.clone(), currency)).or_insert(number);
                    assert_eq!(number, first, "{id} {currency} in round {round}");
                    assert_eq!(
                        (
                            pairs.keys.merchant(number),
                            pairs.keys.currency(number),
                            pairs.keys.zone(number)
                        ),
                        (id.as_str(), currency, zone)
                    );
                }
            }
        }
        assert_eq!(pairs.keys.len(), ids.len() * 2);
        assert!(pairs.collided.is_empty());
    }

    #[test]
    fn builds_a_batch_matching_the_schema() {
        let payload = br#"{"event_id":"e","order_id":"o","merchant_id":"m","kind":"refund","amount":"2.5","currency":"USD","occurred_at":"2026-01-01T00:00:00Z"}"#;
        let mut builder = EventBatchBuilder::with_capacity(4);
        builder.push(&decode(payload, None).unwrap());
        builder.push(&decode(payload, None).unwrap());
        let batch = builder.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.rows.schema(), event_schema());
        assert_eq!(batch.keys.len(), 1);
        assert!(builder.is_empty());
    }
}
