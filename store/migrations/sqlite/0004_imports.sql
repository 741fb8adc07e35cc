-- tally schema v4 (SQLite): imports (files whose events are added to
-- merchant_sales exactly once per file) and jobs that wait on other jobs.
ALTER TABLE tally_jobs ADD COLUMN kind TEXT NOT NULL DEFAULT 'backfill';   -- backfill, import
ALTER TABLE tally_tasks ADD COLUMN size BIGINT NOT NULL DEFAULT 0;         -- bytes of its files
ALTER TABLE tally_tasks ADD COLUMN version TEXT;                           -- import: the file version it reads
ALTER TABLE tally_tasks ADD COLUMN outcome TEXT;                           -- import: what became of the file

-- A job runs only after every job it waits on has succeeded.
CREATE TABLE IF NOT EXISTS tally_job_deps (
    job_id   BIGINT NOT NULL REFERENCES tally_jobs (id),
    after_id BIGINT NOT NULL REFERENCES tally_jobs (id),
    PRIMARY KEY (job_id, after_id)
);
CREATE INDEX IF NOT EXISTS tally_job_deps_after ON tally_job_deps (after_id);

-- Every version of every file an import was asked to read. A version is
-- the file's identity: its location plus size and ETag (objects) or
-- modification time (local files). At most one version of a location is
-- ever imported; it commits in the transaction that adds its totals.
CREATE TABLE IF NOT EXISTS tally_imports (
    location       TEXT    NOT NULL,   -- path, or s3://bucket/key
    size           BIGINT  NOT NULL,
    version        TEXT    NOT NULL,   -- ETag, or mtime in nanoseconds
    digest         TEXT,               -- local files: xxh3-128 of the content read
    state          TEXT    NOT NULL,   -- queued, imported, unchanged, superseded, conflict
    job_id         BIGINT  NOT NULL,   -- the job that queued (or imported) it
    task_no        INTEGER NOT NULL,
    queued_at      BIGINT  NOT NULL,
    imported_at    BIGINT,
    rows_read      BIGINT  NOT NULL DEFAULT 0,
    rows_rejected  BIGINT  NOT NULL DEFAULT 0,
    rows_duplicate BIGINT  NOT NULL DEFAULT 0,
    keys_written   BIGINT  NOT NULL DEFAULT 0,
    PRIMARY KEY (location, size, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS tally_imports_once ON tally_imports (location) WHERE state = 'imported';
CREATE INDEX IF NOT EXISTS tally_imports_job ON tally_imports (job_id, task_no);
