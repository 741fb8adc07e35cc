-- tally schema v8 (SQLite): the epoch at which the aggregator refused a
-- partial that started past the fence (a gap). NULL: no gap seen.
ALTER TABLE tally_partitions ADD COLUMN gap_epoch INTEGER;
