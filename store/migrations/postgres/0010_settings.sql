-- tally schema v10: settings every role must agree on, held once in the
-- database: `default_time_zone`, the zone of merchants without one of their
-- own, which workers and aggregators both read (it overrides their
-- `default_time_zone` settings once set).
CREATE TABLE IF NOT EXISTS tally_settings (
    key        TEXT   PRIMARY KEY,
    value      TEXT   NOT NULL,
    updated_at BIGINT NOT NULL
);
