//! Per-key sums with an exact, associative merge.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::amount::Amount;
use crate::day::Day;
use crate::event::Kind;

/// The primary key of `merchant_sales`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct TotalsKey {
    /// Merchant id.
    pub merchant_id: String,
    /// Currency code.
    pub currency: String,
    /// UTC day of the events.
    pub day: Day,
}

/// The sums kept for one key. Net is derived: `sales_amount - refund_amount`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sums {
    /// Sum of sale amounts.
    pub sales_amount: Amount,
    /// Number of sales.
    pub sales_count: i64,
    /// Sum of refund amounts.
    pub refund_amount: Amount,
    /// Number of refunds.
    pub refund_count: i64,
}

impl Sums {
    /// `sales_amount - refund_amount`.
    pub fn net_amount(&self) -> Amount {
        self.sales_amount - self.refund_amount
    }

    /// Adds one event.
    pub fn add_event(&mut self, kind: Kind, amount: Amount) {
        match kind {
            Kind::Sale => {
                self.sales_amount += amount;
                self.sales_count += 1;
            }
            Kind::Refund => {
                self.refund_amount += amount;
                self.refund_count += 1;
            }
        }
    }

    /// Adds another set of sums (associative and commutative).
    pub fn merge(&mut self, other: &Sums) {
        self.sales_amount += other.sales_amount;
        self.sales_count += other.sales_count;
        self.refund_amount += other.refund_amount;
        self.refund_count += other.refund_count;
    }
}

impl Sums {
    /// What takes `before` to `self`: each amount and count less `before`'s.
    pub fn less(&self, before: &Sums) -> Sums {
        Sums {
            sales_amount: self.sales_amount - before.sales_amount,
            sales_count: self.sales_count - before.sales_count,
            refund_amount: self.refund_amount - before.refund_amount,
            refund_count: self.refund_count - before.refund_count,
        }
    }

    /// Whether every amount and count is zero.
    pub fn is_zero(&self) -> bool {
        *self == Sums::default()
    }
}

/// Sums by key, ordered for stable output.
pub type Totals = BTreeMap<TotalsKey, Sums>;

/// Merges `from` into `into`.
pub fn merge_into(into: &mut Totals, from: impl IntoIterator<Item = (TotalsKey, Sums)>) {
    for (key, sums) in from {
        into.entry(key).or_default().merge(&sums);
    }
}

/// The sums of one `merchant_sales_local` row, with the zone its day is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LocalSums {
    /// The IANA zone whose calendar the row's day is (borrowed from the
    /// compiled-in database when tally names it: no allocation per row).
    pub time_zone: std::borrow::Cow<'static, str>,
    /// The sums.
    #[serde(flatten)]
    pub sums: Sums,
}

/// Sums by merchant, currency and *local* day (the key's `day`), each with
/// its zone: the rows of `merchant_sales_local`.
pub type LocalTotals = BTreeMap<TotalsKey, LocalSums>;

/// Merges `from` into `into`. A row keeps the zone it was first counted in.
pub fn merge_local_into(
    into: &mut LocalTotals,
    from: impl IntoIterator<Item = (TotalsKey, LocalSums)>,
) {
    for (key, local) in from {
        match into.entry(key) {
            std::collections::btree_map::Entry::Occupied(mut row) => {
                row.get_mut().sums.merge(&local.sums)
            }
            std::collections::btree_map::Entry::Vacant(row) => {
                row.insert(local);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(m: &str) -> TotalsKey {
        TotalsKey {
            merchant_id: m.into(),
            currency: "EUR".into(),
            day: Day(20_000),
        }
    }

    #[test]
    fn merge_is_associative() {
        let mut a = Sums::default();
        a.add_event(Kind::Sale, Amount(10));
        let mut b = Sums::default();
        b.add_event(Kind::Refund, Amount(3));
        let (mut left, mut right) = (Totals::new(), Totals::new());
        merge_into(&mut left, [(key("m"), a), (key("m"), b)]);
        merge_into(&mut right, [(key("m"), b)]);
        merge_into(&mut right, [(key("m"), a)]);
        assert_eq!(left, right);
        assert_eq!(left[&key("m")].net_amount(), Amount(7));
    }
}
