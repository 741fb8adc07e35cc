-- Merchants' IANA time zones (`tally merchants set-zone`, `tally merchants import`).
-- A merchant without a row is in the default zone (UTC unless configured).
CREATE TABLE IF NOT EXISTS tally_merchants (
    merchant_id TEXT   PRIMARY KEY,
    time_zone   TEXT   NOT NULL,   -- an IANA name, checked by tally before it is written
    updated_at  BIGINT NOT NULL    -- ms since the Unix epoch
);
