-- The totals API's top merchants of a day read one day of either totals
-- table; neither primary key starts with the day.
CREATE INDEX IF NOT EXISTS merchant_sales_by_day ON merchant_sales (day);
CREATE INDEX IF NOT EXISTS merchant_sales_local_by_day ON merchant_sales_local (local_day);
