"""The reference for `bench backfill`: DuckDB reads the same Parquet files
(text columns) into a table of totals per (merchant_id, currency, UTC day),
and prints the seconds of that one statement (3 decimals) and nothing else.
Usage: python3 duckdb_backfill.py DIR [bare|rules] (needs the duckdb
package; `bare` when the mode is left out).

bare: one GROUP BY of every row of DIR/*.parquet. It neither validates nor
deduplicates, a lower bound for the work tally does. Amounts are cast with
TRY_CAST to DECIMAL(18, 4), DuckDB's 64-bit decimal, which holds every
generated amount (the event rule's 18 integer digits would need
DECIMAL(38, 4); an earlier measurement on this machine found that cast
about 13 times slower, while DuckDB 2.0.1 cast both in the same time on
500k rows). A row whose `occurred_at` DuckDB cannot cast to TIMESTAMPTZ is
left out; any other row counts, however invalid, and each copy of a
duplicate counts.

rules: what tally's backfill does to the same files, in the same order.
1. Validation (schemas/src/event.rs `from_columns`); a NULL anywhere fails:
   - event_id, order_id, merchant_id: 1 to 128 bytes (strlen, not
     characters), no control character (Unicode Cc: U+0000-U+001F,
     U+007F-U+009F; U+00A0 and U+2028 are allowed);
   - kind: exactly `sale` or `refund` (case-sensitive);
   - amount (amount.rs `parse_event_amount`): ASCII digits with an optional
     `.` and 1 to 4 fractional digits; no sign, exponent, space, or bare
     `.5`/`5.`; at most 18 integer digits after leading zeros (which are
     unlimited); greater than 0;
   - currency: exactly three bytes A-Z;
   - occurred_at (day.rs `parse_rfc3339`): YYYY-MM-DD, then `T`, `t` or a
     space, then HH:MM:SS, an optional `.` with one or more digits (only
     the first 6 count, which cannot move the day), then `Z`, `z` or
     +HH:MM/-HH:MM and nothing after; year 0000 refused; month 1-12, the
     day within its month (Gregorian leap years, by DuckDB's DATE cast of
     the first 10 characters, the regular expression having fixed the
     layout); hour <= 23, minute <= 59, second <= 60 (60, a leap second, is
     read as 59.999999); offset hours <= 23, minutes <= 59; the UTC day
     within 0001-01-01..9999-12-31.
2. Dedupe among the valid rows by event_id (exact bytes): the first valid
   row in file order counts (files in sorted name order, as tally lists
   them; then the row number in the file), later ones do not, wherever
   their day lies. The file list is passed to read_parquet sorted, so
   file_index follows that order; arg_min over (file_index, file_row_number)
   picks the first row: a hash aggregate, which measured a little faster on
   500k rows than `QUALIFY row_number() OVER (PARTITION BY event_id ORDER
   BY ...)` and clearly faster than DISTINCT ON or ordering by filename.
3. Scope: the bench's, UTC days from 1970-01-01 (Day(0)) up to but not
   including Day(100000) (2243-10-17), every merchant.
Amounts are summed exactly as DECIMAL(38, 4) per (merchant_id, currency,
UTC day); sums of a kind without events are 0, not NULL.

What the rules query does not do:
- Shards: tally dedupes within each task, one per merchant-hash shard
  (xxh3_64, which DuckDB lacks). With more than one shard an event_id that
  recurs under merchants of different shards counts once per shard; here
  it counts once. The same wherever the copies share their merchant_id, as
  the generator's duplicates do.
- tally keys its dedupe set by the id's xxh3_128 digest; here the id
  itself (the same unless two ids collide).
- Only text columns: tally also reads a decimal `amount` column (its text
  without trailing zeros) and a timestamp `occurred_at` column (only the
  era rule), and rejects the rows of a file that lacks a column; this
  query is written for text columns only, and a missing column fails it.
- Local days (time zones) are not kept, so their era check does not apply.
- Rejected and duplicate rows are not counted, only left out.
"""
import glob
import os
import sys
import time

import duckdb

# `occurred_at` is in UTC (no offset to apply).
Z = "right(occurred_at, 1) IN ('Z', 'z')"
REGEX_CONTROL = r"[\x{00}-\x{1F}\x{7F}-\x{9F}]"
REGEX_AMOUNT = r"0*[0-9]{1,18}(?:\.[0-9]{1,4})?"
REGEX_OCCURRED_AT = (
    r"(?:[0-9]{3}[1-9]|[0-9]{2}[1-9]0|[0-9][1-9]00|[1-9]000)"  # year, not 0000
    r"-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])"
    r"[Tt ](?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)"
    r"(?:\.[0-9]+)?"
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
)


def id_ok(column):
    return (f"strlen({column}) BETWEEN 1 AND 128 "
            f"AND NOT regexp_matches({column}, '{REGEX_CONTROL}')")


def bare(directory):
    files = directory + "/*.parquet"
    return f"""
CREATE TABLE merchant_sales AS
SELECT merchant_id, currency, CAST(CAST(occurred_at AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS DATE) AS day,
       SUM(TRY_CAST(amount AS DECIMAL(18, 4))) FILTER (WHERE kind = 'sale')   AS sales_amount,
       COUNT(*) FILTER (WHERE kind = 'sale')                                 AS sales_count,
       SUM(TRY_CAST(amount AS DECIMAL(18, 4))) FILTER (WHERE kind = 'refund') AS refund_amount,
       COUNT(*) FILTER (WHERE kind = 'refund')                               AS refund_count
FROM read_parquet('{files}')
WHERE TRY_CAST(occurred_at AS TIMESTAMPTZ) IS NOT NULL
GROUP BY ALL
"""


def rules(directory):
    files = sorted(glob.glob(os.path.join(directory, "*.parquet")))
    if not files:
        sys.exit(f"no Parquet files in {directory}")
    listed = ", ".join("'" + f.replace("'", "''") + "'" for f in files)
    # Nothing below can raise on any text: casts are TRY_CASTs, and a row
    # failing a rule (or holding a NULL) is dropped by a WHERE. `secs` is
    # the local time of day less the offset: below 0 the UTC day is the day
    # before, from 86400 the day after. A refund's amount is kept negated
    # (every valid amount is > 0), so one arg_min carries kind and amount.
    return f"""
CREATE TABLE merchant_sales AS
SELECT merchant_id, currency, day,
       COALESCE(SUM(signed) FILTER (WHERE signed > 0), 0)  AS sales_amount,
       COUNT(*) FILTER (WHERE signed > 0)                  AS sales_count,
       COALESCE(-SUM(signed) FILTER (WHERE signed < 0), 0) AS refund_amount,
       COUNT(*) FILTER (WHERE signed < 0)                  AS refund_count
FROM (
  SELECT arg_min(merchant_id, file_order) AS merchant_id, arg_min(currency, file_order) AS currency,
         arg_min(day, file_order) AS day, arg_min(signed, file_order) AS signed
  FROM (
    SELECT event_id, merchant_id, currency,
           CASE WHEN kind = 'sale' THEN amount ELSE -amount END AS signed,
           local_date + CASE WHEN secs < 0 THEN -1 WHEN secs >= 86400 THEN 1 ELSE 0 END AS day,
           (file_index::BIGINT << 40) + file_row_number AS file_order
    FROM (
      SELECT event_id, merchant_id, currency, kind, file_index, file_row_number,
             TRY_CAST(amount AS DECIMAL(38, 4)) AS amount,
             TRY_CAST(left(occurred_at, 10) AS DATE) AS local_date,
             CASE WHEN {Z} THEN 0 ELSE
                 TRY_CAST(substr(occurred_at, 12, 2) AS INTEGER) * 3600
               + TRY_CAST(substr(occurred_at, 15, 2) AS INTEGER) * 60
               + least(TRY_CAST(substr(occurred_at, 18, 2) AS INTEGER), 59)
               - CASE WHEN substr(occurred_at, -6, 1) = '-' THEN -1 ELSE 1 END
                 * (TRY_CAST(substr(occurred_at, -5, 2) AS INTEGER) * 3600
                    + TRY_CAST(right(occurred_at, 2) AS INTEGER) * 60)
             END AS secs
      FROM read_parquet([{listed}], file_row_number = true)
      WHERE {id_ok('event_id')}
        AND {id_ok('order_id')}
        AND {id_ok('merchant_id')}
        AND kind IN ('sale', 'refund')
        AND regexp_full_match(amount, '{REGEX_AMOUNT}')
        AND regexp_full_match(currency, '[A-Z]{{3}}')
        AND regexp_full_match(occurred_at, '{REGEX_OCCURRED_AT}')
    )
    WHERE amount > 0
      AND local_date IS NOT NULL
      AND day BETWEEN DATE '0001-01-01' AND DATE '9999-12-31'
  )
  GROUP BY event_id
)
WHERE day >= DATE '1970-01-01' AND day < DATE '1970-01-01' + 100000
GROUP BY ALL
"""


MODES = {"bare": bare, "rules": rules}


def main(argv):
    if len(argv) not in (2, 3) or (len(argv) == 3 and argv[2] not in MODES):
        sys.exit("usage: python3 duckdb_backfill.py DIR [bare|rules]")
    mode = argv[2] if len(argv) == 3 else "bare"
    sql = MODES[mode](argv[1])
    con = duckdb.connect()
    started = time.perf_counter()
    con.execute(sql)
    print(f"{time.perf_counter() - started:.3f}")


if __name__ == "__main__":
    main(sys.argv)
