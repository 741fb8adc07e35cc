"""The reference for `bench backfill`: DuckDB runs the same GROUP BY on the
same Parquet files into a table, and prints its seconds. Usage:
python3 duckdb_backfill.py DIR (needs the duckdb package).

Amounts are cast to DECIMAL(18, 4), DuckDB's fast 64-bit decimal, which
holds every generated amount; DECIMAL(38, 4), which the event rule's 18
integer digits would need, makes DuckDB's string cast about 13 times slower
on this machine, and the comparison should give DuckDB its best case. It
neither validates nor deduplicates: a lower bound for the work tally does."""
import sys
import time

import duckdb

files = sys.argv[1] + "/*.parquet"
con = duckdb.connect()
started = time.perf_counter()
con.execute(f"""
CREATE TABLE merchant_sales AS
SELECT merchant_id, currency, CAST(CAST(occurred_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) AS day,
       SUM(TRY_CAST(amount AS DECIMAL(18, 4))) FILTER (WHERE kind = 'sale')   AS sales_amount,
       COUNT(*) FILTER (WHERE kind = 'sale')                                 AS sales_count,
       SUM(TRY_CAST(amount AS DECIMAL(18, 4))) FILTER (WHERE kind = 'refund') AS refund_amount,
       COUNT(*) FILTER (WHERE kind = 'refund')                               AS refund_count
FROM read_parquet('{files}')
WHERE TRY_CAST(occurred_at AS TIMESTAMPTZ) IS NOT NULL
GROUP BY ALL
""")
print(f"{time.perf_counter() - started:.3f}")
