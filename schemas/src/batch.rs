//! The Arrow schema of a decoded batch of valid events, and its builder.
//!
//! A batch holds the columns the partial aggregation reads, and no more:
//! the ids and the timestamp are checked and deduped while decoding, and
//! building columns nobody reads cost the hot path a tenth of its time.

use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Date32Builder, Decimal128Builder, Int32Builder, StringBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef};

use crate::amount::{PRECISION, SCALE};
use crate::day::Day;
use crate::event::{Kind, ValidEvent};
use crate::zone::{HourCache, Zones};

/// Column names, in schema order.
pub mod col {
    /// `merchant_id`, Utf8.
    pub const MERCHANT_ID: &str = "merchant_id";
    /// `refund`, Boolean: the event's `kind` is `refund` (else `sale`).
    pub const REFUND: &str = "refund";
    /// `amount`, Decimal128(38,4).
    pub const AMOUNT: &str = "amount";
    /// `currency`, Utf8.
    pub const CURRENCY: &str = "currency";
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
        Field::new(col::MERCHANT_ID, DataType::Utf8, false),
        Field::new(col::REFUND, DataType::Boolean, false),
        Field::new(col::AMOUNT, DataType::Decimal128(PRECISION, SCALE), false),
        Field::new(col::CURRENCY, DataType::Utf8, false),
        if local {
            Field::new(col::DAYS, DataType::Int32, false)
        } else {
            Field::new(col::DAY, DataType::Date32, false)
        },
    ]
}

/// Accumulates valid events column by column.
pub struct EventBatchBuilder {
    schema: SchemaRef,
    merchant_id: StringBuilder,
    refund: BooleanBuilder,
    amount: Decimal128Builder,
    currency: StringBuilder,
    day: Date32Builder,
    /// Local days under these zones, when the batch keeps them.
    local: Option<(Arc<Zones>, HourCache, Int32Builder)>,
    rows: usize,
}

impl EventBatchBuilder {
    /// A builder sized for `capacity` events of typical length.
    pub fn with_capacity(capacity: usize) -> EventBatchBuilder {
        EventBatchBuilder {
            schema: event_schema(),
            merchant_id: StringBuilder::with_capacity(capacity, capacity * 16),
            refund: BooleanBuilder::with_capacity(capacity),
            amount: Decimal128Builder::with_capacity(capacity),
            currency: StringBuilder::with_capacity(capacity, capacity * 3),
            day: Date32Builder::with_capacity(capacity),
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

    /// The zones local days are taken in, when the batch keeps them.
    pub fn zones(&self) -> Option<&Arc<Zones>> {
        self.local.as_ref().map(|(zones, _, _)| zones)
    }

    /// Appends one event.
    pub fn push(&mut self, event: &ValidEvent<'_>) {
        self.merchant_id.append_value(&event.merchant_id);
        self.refund.append_value(event.kind == Kind::Refund);
        self.amount.append_value(event.amount.0);
        self.currency.append_value(&event.currency);
        match &mut self.local {
            Some((zones, cache, both)) => {
                let local = zones.local_day_cached(cache, &event.merchant_id, event.occurred_at);
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
    pub fn finish(&mut self) -> Result<RecordBatch, ArrowError> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(self.merchant_id.finish()),
            Arc::new(self.refund.finish()),
            Arc::new(
                self.amount
                    .finish()
                    .with_precision_and_scale(PRECISION, SCALE)?,
            ),
            Arc::new(self.currency.finish()),
            match &mut self.local {
                Some((_, _, both)) => Arc::new(both.finish()),
                None => Arc::new(self.day.finish()),
            },
        ];
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
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
    fn builds_a_batch_matching_the_schema() {
        let payload = br#"{"event_id":"e","order_id":"o","merchant_id":"m","kind":"refund","amount":"2.5","currency":"USD","occurred_at":"2026-01-01T00:00:00Z"}"#;
        let mut builder = EventBatchBuilder::with_capacity(4);
        builder.push(&decode(payload, None).unwrap());
        builder.push(&decode(payload, None).unwrap());
        let batch = builder.finish().unwrap();
        assert_eq!(batch.num_rows(), 2);
        assert_eq!(batch.schema(), event_schema());
        assert!(builder.is_empty());
    }
}
