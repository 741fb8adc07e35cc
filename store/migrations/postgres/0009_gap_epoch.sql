-- tally schema v9: the epoch at which the aggregator refused a partial that
-- started past the fence (a gap: a partial of that epoch was lost). The
-- worker holding that epoch sees it, claims the partition again and
-- rebuilds from the fence. NULL: no gap seen.
ALTER TABLE tally_partitions ADD COLUMN IF NOT EXISTS gap_epoch BIGINT;
