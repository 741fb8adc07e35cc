#!/usr/bin/env bash
# What closing days costs the aggregator: starts PostgreSQL on loopback and
# runs `bench closes` (a fresh database: a day of 100,000 merchants, the
# close run that closes it, and flushes before and after).
#   bench/closes.sh [merchants, default 100000] [runs, default 5]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/provision.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TALLY_CACHE/target}
ensure_postgres
make_run_dir
trap stop_services EXIT
start_postgres
cargo build --release --locked -p bench
"$CARGO_TARGET_DIR/release/bench" closes --pg-url "$TALLY_TEST_PG_URL" --merchants "${1:-100000}" --runs "${2:-5}"
