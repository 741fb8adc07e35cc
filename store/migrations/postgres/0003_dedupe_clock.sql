-- tally schema v3 (PostgreSQL): the dedupe window's clock at the fence, so a
-- new owner's rebuild evicts no more than the old owner had (NULL: unknown).
ALTER TABLE tally_partitions ADD COLUMN IF NOT EXISTS dedupe_clock_ms BIGINT;
