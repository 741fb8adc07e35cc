-- tally schema v1 (PostgreSQL).
CREATE TABLE IF NOT EXISTS merchant_sales (
    merchant_id   TEXT          NOT NULL,
    currency      CHAR(3)       NOT NULL,
    day           DATE          NOT NULL,
    sales_amount  NUMERIC(38,4) NOT NULL,
    sales_count   BIGINT        NOT NULL,
    refund_amount NUMERIC(38,4) NOT NULL,
    refund_count  BIGINT        NOT NULL,
    net_amount    NUMERIC(38,4) NOT NULL,
    updated_at    TIMESTAMPTZ   NOT NULL,
    PRIMARY KEY (merchant_id, currency, day)
);

-- One row per source partition: the fence. `epoch` is raised by every claim;
-- `next_offset` is the next source offset the database expects.
CREATE TABLE IF NOT EXISTS tally_partitions (
    topic              TEXT        NOT NULL,
    partition          INTEGER     NOT NULL,
    epoch              BIGINT      NOT NULL,
    next_offset        BIGINT      NOT NULL,
    dedupe_from_offset BIGINT      NOT NULL,
    counted_events     BIGINT      NOT NULL DEFAULT 0,
    duplicate_events   BIGINT      NOT NULL DEFAULT 0,
    invalid_events     BIGINT      NOT NULL DEFAULT 0,
    claimed_by         TEXT,
    claimed_at         TIMESTAMPTZ,
    updated_at         TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (topic, partition)
);
