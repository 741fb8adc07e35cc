-- tally schema v2 (SQLite): backfill jobs, their tasks, and the rows a
-- job has computed but not yet swapped into merchant_sales (amounts as
-- decimal text, as in merchant_sales). Times are
-- milliseconds since the Unix epoch (UTC).
CREATE TABLE IF NOT EXISTS tally_jobs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    state          TEXT    NOT NULL,   -- pending, running, succeeded, failed, cancelled
    source         TEXT    NOT NULL,
    format         TEXT    NOT NULL,
    day_from       TEXT    NOT NULL,   -- first day, inclusive
    day_to         TEXT    NOT NULL,   -- last day, exclusive
    merchants      TEXT    NOT NULL,   -- JSON array; empty means every merchant
    schedule       TEXT,
    created_at     BIGINT  NOT NULL,
    started_at     BIGINT,
    finished_at    BIGINT,
    keys_written   BIGINT,
    last_error     TEXT
);

CREATE TABLE IF NOT EXISTS tally_tasks (
    job_id         BIGINT  NOT NULL REFERENCES tally_jobs (id),
    task_no        INTEGER NOT NULL,
    shard          INTEGER NOT NULL,
    shards         INTEGER NOT NULL,
    files          TEXT    NOT NULL,   -- JSON array of paths
    state          TEXT    NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    not_before     BIGINT  NOT NULL DEFAULT 0,
    lease_until    BIGINT  NOT NULL DEFAULT 0,
    owner          TEXT,
    started_at     BIGINT,
    finished_at    BIGINT,
    rows_read      BIGINT  NOT NULL DEFAULT 0,
    rows_rejected  BIGINT  NOT NULL DEFAULT 0,
    rows_duplicate BIGINT  NOT NULL DEFAULT 0,
    rejections     TEXT    NOT NULL DEFAULT '[]',
    last_error     TEXT,
    PRIMARY KEY (job_id, task_no)
);

CREATE TABLE IF NOT EXISTS tally_backfill_rows (
    job_id        BIGINT        NOT NULL,
    task_no       INTEGER       NOT NULL,
    merchant_id   TEXT          NOT NULL,
    currency      TEXT          NOT NULL,
    day           TEXT          NOT NULL,
    sales_amount  TEXT          NOT NULL,
    sales_count   BIGINT        NOT NULL,
    refund_amount TEXT          NOT NULL,
    refund_count  BIGINT        NOT NULL,
    PRIMARY KEY (job_id, merchant_id, currency, day)
);

CREATE TABLE IF NOT EXISTS tally_schedules (
    name        TEXT   PRIMARY KEY,
    cron        TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    format      TEXT   NOT NULL,
    day_range   TEXT   NOT NULL,
    merchants   TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    last_due    BIGINT NOT NULL     -- the last tick a job was created for
);
