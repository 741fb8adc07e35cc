#!/usr/bin/env bash
# Measures `tally ingest` over HTTP into a real Apache Kafka broker (single
# KRaft node), for batches of 100 and 1,000 events, three runs each, after
# an untimed one.
#   bench/ingest.sh [events per run, default 200000]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/provision.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TALLY_CACHE/target}
ensure_kafka
make_run_dir
trap stop_services EXIT
start_kafka
cargo build --release --locked --workspace --bins
# One untimed run first: a broker just started compiles its produce path as
# it goes (the first runs were a third slower), as a running broker has not.
"$CARGO_TARGET_DIR/release/bench" ingest --brokers "$TALLY_TEST_BROKERS" \
    --tally-bin "$CARGO_TARGET_DIR/release/tally" --events "${1:-200000}" --batch 1000 --clients 8 >/dev/null
for batch in 100 1000; do
    for run in 1 2 3; do
        "$CARGO_TARGET_DIR/release/bench" ingest --brokers "$TALLY_TEST_BROKERS" \
            --tally-bin "$CARGO_TARGET_DIR/release/tally" --events "${1:-200000}" --batch "$batch" --clients 8
    done
done
