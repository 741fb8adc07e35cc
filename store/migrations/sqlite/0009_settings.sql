-- tally schema v9 (SQLite): settings every role must agree on, held once in
-- the database (`default_time_zone`).
CREATE TABLE IF NOT EXISTS tally_settings (
    key        TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
);
