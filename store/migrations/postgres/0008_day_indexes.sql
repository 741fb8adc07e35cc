-- The totals API's top merchants of a day read one day of either totals
-- table. Neither primary key starts with the day, so each gets an index on
-- it. Updates never change a row's day, so flushes stay HOT updates.
--
-- On a large table the build blocks flushes while it runs. To avoid that,
-- build the indexes beforehand with CREATE INDEX CONCURRENTLY and these
-- names; this migration then finds them and does nothing.
CREATE INDEX IF NOT EXISTS merchant_sales_by_day ON merchant_sales (day);
CREATE INDEX IF NOT EXISTS merchant_sales_local_by_day ON merchant_sales_local (local_day);
