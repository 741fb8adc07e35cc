-- tally schema v10 (SQLite): closed days and the adjustments made to them,
-- as in PostgreSQL's 0011_closes.sql. Amounts are exact decimal text.
CREATE TABLE IF NOT EXISTS tally_close_runs (
    id                INTEGER PRIMARY KEY,
    closed_at         INTEGER NOT NULL,
    completeness_ms   INTEGER NOT NULL,
    grace_ms          INTEGER NOT NULL,
    closed_through_ms INTEGER NOT NULL,
    frontier          TEXT    NOT NULL,
    rows_closed       INTEGER NOT NULL
);

CREATE TABLE IF NOT EXISTS tally_closes (
    basis         TEXT    NOT NULL,
    merchant_id   TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    time_zone     TEXT    NOT NULL,
    sales_amount  TEXT    NOT NULL,
    sales_count   INTEGER NOT NULL,
    refund_amount TEXT    NOT NULL,
    refund_count  INTEGER NOT NULL,
    net_amount    TEXT    NOT NULL,
    run_id        INTEGER NOT NULL REFERENCES tally_close_runs (id),
    PRIMARY KEY (basis, merchant_id, currency, day)
);

CREATE TABLE IF NOT EXISTS tally_adjustments (
    id            INTEGER PRIMARY KEY,
    basis         TEXT    NOT NULL,
    merchant_id   TEXT    NOT NULL,
    currency      TEXT    NOT NULL,
    day           TEXT    NOT NULL,
    time_zone     TEXT    NOT NULL,
    sales_amount  TEXT    NOT NULL,
    sales_count   INTEGER NOT NULL,
    refund_amount TEXT    NOT NULL,
    refund_count  INTEGER NOT NULL,
    net_amount    TEXT    NOT NULL,
    topic         TEXT,
    partition     INTEGER,
    first_offset  INTEGER,
    last_offset   INTEGER,
    job_id        INTEGER,
    applied_at    INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tally_adjustments_by_key ON tally_adjustments (merchant_id, day);
