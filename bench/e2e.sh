#!/usr/bin/env bash
# The whole pipeline against the broker's own speed: starts Apache Kafka
# (a single-node KRaft broker) and PostgreSQL (fsync off) on loopback,
# then runs `bench e2e` (fresh topics and database per run, 2 workers and
# 1 aggregator with default settings, bare consumers in the same run).
#   bench/e2e.sh [events, default 1000000] [runs, default 3] [bench e2e flags…]
# `--python-peer` also times the hand-written Python exactly-once consumer
# (bench/peers/python_eos.py), from a virtualenv made in the cache.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/provision.sh
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$TALLY_CACHE/target}
ensure_postgres
ensure_kafka
make_run_dir
trap stop_services EXIT
start_postgres
start_kafka
cargo build --release --locked --workspace --bins
events=${1:-1000000}
runs=${2:-3}
shift $(( $# > 2 ? 2 : $# ))
PEER_CONFLUENT_KAFKA=2.12.2 PEER_PSYCOPG=3.3.6
PEER_VENV="$TALLY_CACHE/peers-venv-$PEER_CONFLUENT_KAFKA-$PEER_PSYCOPG"
flags=()
for flag in "$@"; do
    if [ "$flag" = --python-peer ]; then
        if [ ! -f "$PEER_VENV/.complete" ]; then
            log "Installing confluent-kafka and psycopg (the Python peer) into $PEER_VENV."
            rm -rf "$PEER_VENV"
            python3 -m venv "$PEER_VENV"
            "$PEER_VENV/bin/pip" install -q --disable-pip-version-check \
                "confluent-kafka==$PEER_CONFLUENT_KAFKA" "psycopg[binary]==$PEER_PSYCOPG"
            touch "$PEER_VENV/.complete"
        fi
        flags+=(--python-peer "$PEER_VENV/bin/python")
    else
        flags+=("$flag")
    fi
done
"$CARGO_TARGET_DIR/release/bench" e2e --brokers "$TALLY_TEST_BROKERS" --pg-url "$TALLY_TEST_PG_URL" \
    --tally-bin "$CARGO_TARGET_DIR/release/tally" --events "$events" --runs "$runs" "${flags[@]}"
