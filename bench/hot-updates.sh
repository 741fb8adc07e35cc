#!/usr/bin/env bash
# What `merchant_sales`'s fillfactor (migration 5) buys: the aggregator's
# upsert shape run ROUNDS times over ROWS existing rows, in a table like
# merchant_sales at fillfactor 100 (PostgreSQL's default) and 70, twice
# each, with the share of HOT updates (no index write) from pg_stat.
#   bench/hot-updates.sh [rows, default 30000] [rounds, default 8]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/provision.sh
ensure_postgres
make_run_dir
trap stop_services EXIT
start_postgres
rows=${1:-30000}
rounds=${2:-8}
psql=("$PG_BIN/psql" -qtA -v ON_ERROR_STOP=1 "$TALLY_TEST_PG_URL")
"${psql[@]}" -f store/migrations/postgres/0001_init.sql
for fillfactor in 100 70 100 70; do
    "${psql[@]}" <<SQL
DROP TABLE IF EXISTS bench_sales;
CREATE TABLE bench_sales (LIKE merchant_sales INCLUDING ALL) WITH (fillfactor = $fillfactor);
SQL
    "${psql[@]}" -c "INSERT INTO bench_sales SELECT 'merchant-' || i, 'EUR', date '2026-11-01' + i % 7, 1, 1, 0, 0, 1, now()
                     FROM generate_series(1, $rows) i"
    started=$(date +%s.%N)
    for _ in $(seq "$rounds"); do
        "${psql[@]}" -c "INSERT INTO bench_sales AS s
            SELECT 'merchant-' || i, 'EUR', date '2026-11-01' + i % 7, 1.5, 1, 0.25, 1, 1.25, now() FROM generate_series(1, $rows) i
            ON CONFLICT (merchant_id, currency, day) DO UPDATE SET
                sales_amount = s.sales_amount + EXCLUDED.sales_amount, sales_count = s.sales_count + EXCLUDED.sales_count,
                refund_amount = s.refund_amount + EXCLUDED.refund_amount, refund_count = s.refund_count + EXCLUDED.refund_count,
                net_amount = s.net_amount + EXCLUDED.net_amount, updated_at = EXCLUDED.updated_at"
    done
    seconds=$(echo "$(date +%s.%N) - $started" | bc)
    hot=$("${psql[@]}" -c "SELECT round(100.0 * n_tup_hot_upd / greatest(n_tup_upd, 1)) FROM pg_stat_user_tables WHERE relname = 'bench_sales'")
    printf 'fillfactor %3d: %d upserts into %d rows in %.2f s (%.1f µs each), %s%% HOT\n' \
        "$fillfactor" $((rows * rounds)) "$rows" "$seconds" "$(echo "$seconds * 1000000 / ($rows * $rounds)" | bc -l)" "$hot"
done
