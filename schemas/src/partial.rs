//! The partial-totals message: the totals of exactly one offset range of one
//! source partition, published by the worker that holds the partition's
//! current epoch.

use serde::{Deserialize, Serialize};

use crate::day::Day;
use crate::totals::{LocalSums, Sums, TotalsKey};

/// One message on `tally.partials`, keyed by `"<topic>/<partition>"` and sent
/// to the partials partition equal to the source partition.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// Source topic (normally `orders`).
    pub topic: String,
    /// Source partition.
    pub partition: i32,
    /// The worker's claim epoch for that partition.
    pub epoch: i64,
    /// First source offset covered: the previous partial's `last_offset + 1`,
    /// or the claimed `next_offset`.
    pub first_offset: i64,
    /// Last source offset covered (inclusive).
    pub last_offset: i64,
    /// Lowest offset still inside the dedupe window after this range.
    pub dedupe_from_offset: i64,
    /// The dedupe window's clock after this range (ms): a new owner's
    /// rebuild never runs its clock past it. Absent in partials written
    /// before it existed, and while the window has seen no message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dedupe_clock_ms: Option<i64>,
    /// Events in the range that were counted, by outcome.
    pub events: EventCounts,
    /// Latest broker append time in the range, ms since the epoch (for
    /// end-to-end latency).
    pub max_append_ms: Option<i64>,
    /// Sums of the counted events, one row per key.
    pub rows: Vec<PartialRow>,
    /// The same events' sums by each merchant's local day
    /// (`merchant_sales_local`). Empty when the worker keeps no local days.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub local_rows: Vec<LocalRow>,
}

/// How the messages of a range were handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Valid and first seen: included in `rows`.
    pub counted: u64,
    /// Valid but already seen inside the dedupe window.
    pub duplicate: u64,
    /// Broke a rule: sent to the dead-letter topic.
    pub invalid: u64,
}

/// The sums of one key inside a partial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartialRow {
    /// The `merchant_sales` key.
    #[serde(flatten)]
    pub key: TotalsKey,
    /// The sums.
    #[serde(flatten)]
    pub sums: Sums,
}

/// The sums of one `merchant_sales_local` key inside a partial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalRow {
    /// Merchant id: shared by the rows of one merchant and currency, which
    /// a batch has a few of (one allocation, not one per row).
    pub merchant_id: std::sync::Arc<str>,
    /// Currency code, shared likewise.
    pub currency: std::sync::Arc<str>,
    /// The calendar day in the merchant's zone.
    pub local_day: Day,
    /// The zone and the sums.
    #[serde(flatten)]
    pub local: LocalSums,
}

impl LocalRow {
    /// The row as a [`LocalTotals`](crate::totals::LocalTotals) entry.
    pub fn entry(&self) -> (TotalsKey, LocalSums) {
        let key = TotalsKey {
            merchant_id: self.merchant_id.to_string(),
            currency: self.currency.to_string(),
            day: self.local_day,
        };
        (key, self.local.clone())
    }
}

impl Partial {
    /// The message key used on the partials topic.
    pub fn message_key(&self) -> String {
        format!("{}/{}", self.topic, self.partition)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Amount;

    #[test]
    fn json_round_trip_keeps_amounts_exact() {
        let partial = Partial {
            topic: "orders".into(),
            partition: 3,
            epoch: 7,
            first_offset: 100,
            last_offset: 199,
            dedupe_from_offset: 40,
            dedupe_clock_ms: Some(1_763_600_000_000),
            events: EventCounts {
                counted: 98,
                duplicate: 1,
                invalid: 1,
            },
            max_append_ms: Some(1),
            rows: vec![PartialRow {
                key: TotalsKey {
                    merchant_id: "m".into(),
                    currency: "EUR".into(),
                    day: Day(1),
                },
                sums: Sums {
                    sales_amount: Amount(123_456_789_012_345_678_901_234_567),
                    sales_count: 2,
                    refund_amount: Amount(1),
                    refund_count: 1,
                },
            }],
            local_rows: vec![LocalRow {
                merchant_id: "m".into(),
                currency: "EUR".into(),
                local_day: Day(2),
                local: LocalSums {
                    time_zone: "Asia/Tokyo".into(),
                    sums: Sums::default(),
                },
            }],
        };
        let json = serde_json::to_string(&partial).unwrap();
        assert!(
            json.contains(r#""sales_amount":"12345678901234567890123.4567""#),
            "{json}"
        );
        assert_eq!(serde_json::from_str::<Partial>(&json).unwrap(), partial);
    }
}
