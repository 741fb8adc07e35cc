#!/usr/bin/env bash
# A backfill from Parquet against DuckDB on the same files: installs the
# pinned DuckDB (Python package) into the cache once, then runs
# `bench backfill` (tally, DuckDB's bare GROUP BY and DuckDB with tally's
# rules in SQL, taking turns; medians and both ratios).
#   bench/backfill.sh [events, default 10000000] [runs, default 3]
# The files are generated once per size under $BENCH_DIR (default: the
# system's temporary directory); 100 million events take 2.4 GB.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/provision.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TALLY_CACHE/target}
DUCKDB_VERSION=2.0.1
venv=$TALLY_CACHE/duckdb-$DUCKDB_VERSION
if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import duckdb' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet "duckdb==$DUCKDB_VERSION"
fi
cargo build --release --locked -p bench
DUCKDB_PYTHON=$venv/bin/python "$CARGO_TARGET_DIR/release/bench" backfill \
  --events "${1:-10000000}" --runs "${2:-3}" --dir "${BENCH_DIR:-${TMPDIR:-/tmp}}"
