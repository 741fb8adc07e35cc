-- tally schema v1 (SQLite). Amounts are decimal text with four fractional
-- digits ("19.9900"), written and summed by tally in exact integer units.
CREATE TABLE IF NOT EXISTS merchant_sales (
    merchant_id   TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    sales_amount  TEXT    NOT NULL,
    sales_count   INTEGER NOT NULL,
    refund_amount TEXT    NOT NULL,
    refund_count  INTEGER NOT NULL,
    net_amount    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, currency, day)
);

CREATE TABLE IF NOT EXISTS tally_partitions (
    topic              TEXT    NOT NULL,
    partition          INTEGER NOT NULL,
    epoch              INTEGER NOT NULL,
    next_offset        INTEGER NOT NULL,
    dedupe_from_offset INTEGER NOT NULL,
    counted_events     INTEGER NOT NULL DEFAULT 0,
    duplicate_events   INTEGER NOT NULL DEFAULT 0,
    invalid_events     INTEGER NOT NULL DEFAULT 0,
    claimed_by         TEXT,
    claimed_at         TEXT,
    updated_at         TEXT    NOT NULL,
    PRIMARY KEY (topic, partition)
);
