-- tally schema v11 (PostgreSQL): closed days and the adjustments made to them.
-- Times are milliseconds since the Unix epoch (UTC).
--
-- A close run closes every day (UTC, and each zone's local days) that ended
-- at or before its `closed_through_ms`: the pipeline's completeness time
-- less the grace period. Runs only move forward, so the latest run's
-- `closed_through_ms` says which days are closed.
CREATE TABLE IF NOT EXISTS tally_close_runs (
    id                BIGSERIAL PRIMARY KEY,
    closed_at         BIGINT NOT NULL,   -- when the run committed
    completeness_ms   BIGINT NOT NULL,   -- the completeness time it closed at
    grace_ms          BIGINT NOT NULL,
    closed_through_ms BIGINT NOT NULL,   -- days ending at or before this are closed
    frontier          TEXT   NOT NULL,   -- JSON: {"topic/partition": next_offset}, the fences it read
    rows_closed       BIGINT NOT NULL
);

-- A closed day's totals, as they stood when it closed (one row per key with
-- activity then). `basis` is `utc` (merchant_sales) or `local`
-- (merchant_sales_local, whose zone the row keeps).
CREATE TABLE IF NOT EXISTS tally_closes (
    basis         TEXT          NOT NULL,
    merchant_id   TEXT          NOT NULL,
    currency      TEXT          NOT NULL,
    day           DATE          NOT NULL,
    time_zone     TEXT          NOT NULL,
    sales_amount  NUMERIC(38,4) NOT NULL,
    sales_count   BIGINT        NOT NULL,
    refund_amount NUMERIC(38,4) NOT NULL,
    refund_count  BIGINT        NOT NULL,
    net_amount    NUMERIC(38,4) NOT NULL,
    run_id        BIGINT        NOT NULL REFERENCES tally_close_runs (id),
    PRIMARY KEY (basis, merchant_id, currency, day)
);

-- Every change to a closed day after it closed, written in the transaction
-- that made the change: a flush (its source partition and offsets) or a
-- job (its id). Closed totals plus adjustments equal the current totals.
CREATE TABLE IF NOT EXISTS tally_adjustments (
    id            BIGSERIAL     PRIMARY KEY,
    basis         TEXT          NOT NULL,
    merchant_id   TEXT          NOT NULL,
    currency      TEXT          NOT NULL,
    day           DATE          NOT NULL,
    time_zone     TEXT          NOT NULL,
    sales_amount  NUMERIC(38,4) NOT NULL,
    sales_count   BIGINT        NOT NULL,
    refund_amount NUMERIC(38,4) NOT NULL,
    refund_count  BIGINT        NOT NULL,
    net_amount    NUMERIC(38,4) NOT NULL,
    topic         TEXT,                  -- a flush: the source partition…
    partition     INTEGER,
    first_offset  BIGINT,                -- …and the offsets of its partials
    last_offset   BIGINT,
    job_id        BIGINT,                -- a backfill or import
    applied_at    BIGINT        NOT NULL
);
CREATE INDEX IF NOT EXISTS tally_adjustments_by_key ON tally_adjustments (merchant_id, day);
