//! The fence rules, as pure functions shared by both databases.
//!
//! A partial is applied only if its epoch is the partition's current epoch and
//! it starts exactly at `next_offset`. Older epochs and ranges already applied
//! are stale: dropped and counted. Anything else (a gap, an overlap, an epoch
//! the database never issued) is an invariant violation: never applied.

use std::collections::BTreeMap;

use schemas::partial::EventCounts;
use schemas::totals::{merge_into, merge_local_into};
use schemas::{LocalTotals, Partial, Totals};

/// A source partition: `(topic, partition)`.
pub type SourcePartition = (String, i32);

/// A partition's row in `tally_partitions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fence {
    /// Current claim epoch.
    pub epoch: i64,
    /// Next source offset to apply.
    pub next_offset: i64,
    /// Lowest offset inside the dedupe window at `next_offset`.
    pub dedupe_from_offset: i64,
    /// The dedupe window's clock at `next_offset` (ms), when known.
    pub dedupe_clock_ms: Option<i64>,
}

/// What to do with one partial.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Current epoch, starts at `next_offset`.
    Apply,
    /// From an epoch older than the partition's current one.
    OlderEpoch,
    /// Its whole range is below `next_offset`: applied before.
    AlreadyApplied,
    /// Breaks the protocol; the text says how.
    Violation(String),
}

/// Judges one partial against the partition's fence.
pub fn judge(fence: Option<&Fence>, partial: &Partial) -> Verdict {
    let Some(fence) = fence else {
        return Verdict::Violation("no claim is recorded for this partition".into());
    };
    if partial.epoch < fence.epoch {
        return Verdict::OlderEpoch;
    }
    if partial.epoch > fence.epoch {
        return Verdict::Violation(format!(
            "epoch {} is ahead of the database's epoch {}",
            partial.epoch, fence.epoch
        ));
    }
    if partial.last_offset < partial.first_offset {
        return Verdict::Violation(format!(
            "empty range {}..={}",
            partial.first_offset, partial.last_offset
        ));
    }
    if partial.last_offset < fence.next_offset {
        return Verdict::AlreadyApplied;
    }
    if partial.first_offset == fence.next_offset {
        return Verdict::Apply;
    }
    Verdict::Violation(format!(
        "range {}..={} does not start at next_offset {}",
        partial.first_offset, partial.last_offset, fence.next_offset
    ))
}

/// A partial of the fence's own epoch that starts past `next_offset`: the
/// partials between were lost (the partials topic's retention, an offset
/// reset), and the worker will not publish them again on its own.
pub fn is_gap(fence: &Fence, partial: &Partial) -> bool {
    partial.epoch == fence.epoch
        && partial.first_offset > fence.next_offset
        && partial.last_offset >= partial.first_offset
}

/// One violation, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    /// The source partition.
    pub source: SourcePartition,
    /// The partial's epoch and range.
    pub epoch: i64,
    /// First offset of the partial.
    pub first_offset: i64,
    /// What was wrong.
    pub reason: String,
}

/// The outcome of judging a flush's partials in arrival order.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Merged sums of every applied partial.
    pub deltas: Totals,
    /// The same partials' merged sums by local day.
    pub local_deltas: LocalTotals,
    /// New fences of the partitions that advanced.
    pub advanced: BTreeMap<SourcePartition, Fence>,
    /// Event counts of the applied partials, per partition.
    pub events: BTreeMap<SourcePartition, EventCounts>,
    /// Partials applied.
    pub applied: u64,
    /// The index in the flush's partials of each applied one, in order.
    pub applied_partials: Vec<usize>,
    /// The applied rows that changed closed days, recorded in
    /// `tally_adjustments` in the same transaction ([`crate::closes`]).
    pub adjustments: Vec<crate::closes::Adjustment>,
    /// Source partition and latest append time (ms) of each applied partial,
    /// for end-to-end latency and freshness.
    pub applied_append_ms: Vec<(i32, i64)>,
    /// Partials dropped for an older epoch.
    pub older_epoch: u64,
    /// Partials dropped as already applied.
    pub already_applied: u64,
    /// Partials refused as invariant violations.
    pub violations: Vec<Violation>,
    /// Partitions with a gap at their current epoch: a partial of that
    /// epoch started past the fence, so one before it was lost. The epoch
    /// is recorded (`gap_epoch`) for the worker holding it to claim the
    /// partition again and rebuild from the fence.
    pub gaps: Vec<(SourcePartition, i64)>,
    /// Applied partials that counted events but carried no local-day rows
    /// (a worker with `local_days = false`, or one from before local days):
    /// their events are in `merchant_sales` and not in
    /// `merchant_sales_local`. The source and offset range of each.
    pub without_local_days: Vec<(SourcePartition, i64, i64)>,
}

/// Judges `partials` in order against `fences`, advancing each fence as its
/// partials apply, and merges the applied sums.
pub fn plan(fences: &BTreeMap<SourcePartition, Fence>, partials: &[Partial]) -> Plan {
    let mut out = Plan::default();
    let mut current = fences.clone();
    for (index, partial) in partials.iter().enumerate() {
        let source = (partial.topic.clone(), partial.partition);
        match judge(current.get(&source), partial) {
            Verdict::Apply => {
                let fence = current
                    .get_mut(&source)
                    .expect("judged against an existing fence");
                fence.next_offset = partial.last_offset + 1;
                fence.dedupe_from_offset = partial.dedupe_from_offset;
                fence.dedupe_clock_ms = partial.dedupe_clock_ms.or(fence.dedupe_clock_ms);
                out.advanced.insert(source.clone(), *fence);
                let counts = out.events.entry(source).or_default();
                counts.counted += partial.events.counted;
                counts.duplicate += partial.events.duplicate;
                counts.invalid += partial.events.invalid;
                merge_into(
                    &mut out.deltas,
                    partial.rows.iter().map(|r| (r.key.clone(), r.sums)),
                );
                merge_local_into(
                    &mut out.local_deltas,
                    partial.local_rows.iter().map(|r| r.entry()),
                );
                if partial.local_rows.is_empty() && !partial.rows.is_empty() {
                    out.without_local_days.push((
                        (partial.topic.clone(), partial.partition),
                        partial.first_offset,
                        partial.last_offset,
                    ));
                }
                out.applied += 1;
                out.applied_partials.push(index);
                out.applied_append_ms
                    .extend(partial.max_append_ms.map(|ms| (partial.partition, ms)));
            }
            Verdict::OlderEpoch => out.older_epoch += 1,
            Verdict::AlreadyApplied => out.already_applied += 1,
            Verdict::Violation(reason) => {
                if current.get(&source).is_some_and(|f| is_gap(f, partial))
                    && !out.gaps.iter().any(|(s, _)| *s == source)
                {
                    out.gaps.push((source.clone(), partial.epoch));
                }
                out.violations.push(Violation {
                    source,
                    epoch: partial.epoch,
                    first_offset: partial.first_offset,
                    reason,
                })
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use schemas::{Amount, Day, PartialRow, Sums, TotalsKey};

    fn partial(epoch: i64, first: i64, last: i64, amount: i128) -> Partial {
        Partial {
            topic: "orders".into(),
            partition: 0,
            epoch,
            first_offset: first,
            last_offset: last,
            dedupe_from_offset: first,
            dedupe_clock_ms: None,
            events: EventCounts {
                counted: 1,
                ..Default::default()
            },
            max_append_ms: None,
            local_rows: Vec::new(),
            rows: vec![PartialRow {
                key: TotalsKey {
                    merchant_id: "m".into(),
                    currency: "EUR".into(),
                    day: Day(0),
                },
                sums: Sums {
                    sales_amount: Amount(amount),
                    sales_count: 1,
                    ..Default::default()
                },
            }],
        }
    }

    fn fences(epoch: i64, next: i64) -> BTreeMap<SourcePartition, Fence> {
        BTreeMap::from([(
            ("orders".into(), 0),
            Fence {
                epoch,
                next_offset: next,
                dedupe_from_offset: 0,
                dedupe_clock_ms: None,
            },
        )])
    }

    fn total(plan: &Plan) -> i128 {
        plan.deltas.values().map(|s| s.sales_amount.0).sum()
    }

    #[test]
    fn contiguous_partials_apply_in_order() {
        let plan = plan(&fences(2, 0), &[partial(2, 0, 9, 5), partial(2, 10, 19, 7)]);
        assert_eq!((plan.applied, total(&plan)), (2, 12));
        assert_eq!(plan.advanced[&("orders".into(), 0)].next_offset, 20);
    }

    #[test]
    fn replay_and_zombies_change_nothing() {
        let plan = plan(
            &fences(3, 10),
            &[
                partial(3, 0, 9, 5),
                partial(2, 10, 19, 7),
                partial(3, 10, 19, 11),
                partial(3, 10, 19, 11),
            ],
        );
        assert_eq!(total(&plan), 11);
        assert_eq!(
            (plan.applied, plan.older_epoch, plan.already_applied),
            (1, 1, 2)
        );
        assert!(plan.violations.is_empty());
    }

    #[test]
    fn gaps_overlaps_and_unknown_epochs_are_violations() {
        let plan = plan(
            &fences(1, 10),
            &[
                partial(1, 11, 19, 1),
                partial(1, 5, 15, 1),
                partial(9, 10, 19, 1),
            ],
        );
        assert_eq!(plan.violations.len(), 3);
        assert_eq!((plan.applied, total(&plan)), (0, 0));
        let unclaimed = super::plan(&BTreeMap::new(), &[partial(1, 0, 1, 1)]);
        assert_eq!(unclaimed.violations.len(), 1);
    }
}
