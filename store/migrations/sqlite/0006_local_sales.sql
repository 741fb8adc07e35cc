-- Totals by each merchant's own business day: the same sums as merchant_sales,
-- keyed by the calendar day in the merchant's IANA time zone. Written in the
-- same fenced transaction as merchant_sales, from the same partials. A row
-- keeps the zone its day was first counted in (see the README on zone changes).
CREATE TABLE IF NOT EXISTS merchant_sales_local (
    merchant_id   TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    local_day     TEXT    NOT NULL,
    time_zone     TEXT    NOT NULL,
    sales_amount  TEXT    NOT NULL,
    sales_count   INTEGER NOT NULL,
    refund_amount TEXT    NOT NULL,
    refund_count  INTEGER NOT NULL,
    net_amount    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    PRIMARY KEY (merchant_id, currency, local_day)
);

-- A backfill task's local-day rows, staged like tally_backfill_rows until its
-- job swaps them in.
CREATE TABLE IF NOT EXISTS tally_backfill_local_rows (
    job_id        BIGINT        NOT NULL,
    task_no       INTEGER       NOT NULL,
    merchant_id   TEXT          NOT NULL,
    currency      TEXT          NOT NULL,
    local_day     TEXT          NOT NULL,
    time_zone     TEXT          NOT NULL,
    sales_amount  TEXT NOT NULL,
    sales_count   BIGINT        NOT NULL,
    refund_amount TEXT NOT NULL,
    refund_count  BIGINT        NOT NULL,
    PRIMARY KEY (job_id, merchant_id, currency, local_day)
);
