-- Every flush updates rows of merchant_sales in place. Space left free on
-- each page lets PostgreSQL write the new row version beside the old one
-- (a HOT update) without touching the primary key's index. It applies to
-- pages written from now on; `VACUUM FULL merchant_sales` repacks old ones.
ALTER TABLE merchant_sales SET (fillfactor = 70);
