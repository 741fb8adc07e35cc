-- tally schema v3 (SQLite): the dedupe window's clock at the fence, so a
-- new owner's rebuild evicts no more than the old owner had (NULL: unknown).
ALTER TABLE tally_partitions ADD COLUMN dedupe_clock_ms INTEGER;
