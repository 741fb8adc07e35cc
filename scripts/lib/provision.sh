# Test-environment provisioning shared by scripts/test and the benchmarks.
# Sourced, not executed. Everything it starts is stopped by `stop_services`.
#
# Caches (outside the clone, reused across runs):
#   $TALLY_CACHE/tansu-0.6.0/bin/tansu   the broker, built once
#   $TALLY_CACHE/moto-5.2.5              an S3-compatible server (a Python virtualenv)
#   $TALLY_CACHE/target                  cargo's build directory

TALLY_CACHE=${TALLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tally}
TANSU_VERSION=0.6.0
TANSU_BIN="$TALLY_CACHE/tansu-$TANSU_VERSION/bin/tansu"
MOTO_VERSION=5.2.5
MOTO_VENV="$TALLY_CACHE/moto-$MOTO_VERSION"
RUN_DIR=""
PG_BIN=""
PG_DATA=""

log() { printf '[provision] %s\n' "$*" >&2; }
die() { printf '[provision] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi
}

# A TCP port on 127.0.0.1 that nothing listens on (bash only: no python needed).
free_port() {
    local port
    for _ in $(seq 1 200); do
        port=$(( 20000 + RANDOM % 40000 ))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return 0
        fi
    done
    die "no free loopback port found"
}

wait_for_port() { # port, name, log file
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.2
    done
    [ -f "$3" ] && tail -n 40 "$3" >&2
    die "$2 did not start listening on 127.0.0.1:$1 within 60 s"
}

ensure_postgres() {
    PG_BIN=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -z "$PG_BIN" ] || [ ! -x "$PG_BIN/initdb" ]; then
        log "PostgreSQL not found; installing Debian's postgresql package."
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq postgresql >/dev/null
        PG_BIN=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    fi
    [ -x "$PG_BIN/initdb" ] || die "initdb not found after installing postgresql"
}

ensure_sqlite3() {
    command -v sqlite3 >/dev/null && return 0
    log "sqlite3 not found; installing Debian's sqlite3 package."
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq sqlite3 >/dev/null
}

# Prometheus and promtool, and docker-compose (only to validate the compose
# file: no container engine is needed), from Debian's packages.
ensure_monitoring_tools() {
    local missing=()
    command -v prometheus >/dev/null && command -v promtool >/dev/null || missing+=(prometheus)
    command -v docker-compose >/dev/null || missing+=(docker-compose)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "Installing Debian's ${missing[*]} package(s)."
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "installing ${missing[*]} failed"
}

# tansu 0.6.0's SQLite schema has no index on header (topition, offset_id),
# yet it looks up the headers of every record it fetches by those columns: a
# full scan of all headers per record. The dead-letter topic carries headers,
# so fetches slow down quadratically as a run goes on, until group requests
# time out. One index makes each lookup a seek; tansu's own queries are unchanged.
index_tansu_headers() { # sqlite database file
    for _ in $(seq 1 100); do
        if sqlite3 -cmd ".timeout 10000" "$1" \
            "CREATE INDEX IF NOT EXISTS tally_header_by_record ON header (topition, offset_id);" 2>/dev/null; then
            return 0
        fi
        sleep 0.2
    done
    die "could not index tansu's header table in $1"
}

ensure_tansu() {
    if [ -x "$TANSU_BIN" ]; then return 0; fi
    log "Building tansu $TANSU_VERSION into $TALLY_CACHE (once; about 10 minutes)."
    mkdir -p "$TALLY_CACHE"
    cargo install tansu --version "$TANSU_VERSION" --locked --no-default-features \
        --features dynostore,libsql --root "$TALLY_CACHE/tansu-$TANSU_VERSION" \
        || die "building tansu failed"
}

# An S3-compatible server for backfills from s3:// sources: moto in server
# mode, from PyPI, in a virtualenv in the cache. `.complete` marks a
# finished install, so an interrupted one is redone.
ensure_s3_server() {
    [ -f "$MOTO_VENV/.complete" ] && return 0
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        log "python3 with venv not found; installing Debian's python3-venv package."
        as_root apt-get update -qq
        DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null
    fi
    log "Installing moto $MOTO_VERSION (an S3-compatible server) into $MOTO_VENV."
    rm -rf "$MOTO_VENV"
    python3 -m venv "$MOTO_VENV" || die "creating a Python virtualenv in $MOTO_VENV failed"
    "$MOTO_VENV/bin/pip" install -q --disable-pip-version-check "moto[s3,server]==$MOTO_VERSION" \
        || die "installing moto $MOTO_VERSION failed"
    touch "$MOTO_VENV/.complete"
}

start_s3_server() {
    local port dir="$RUN_DIR/s3"
    port=$(free_port)
    mkdir -p "$dir"
    (cd "$dir" && exec "$MOTO_VENV/bin/moto_server" -H 127.0.0.1 -p "$port" >"$dir/server.log" 2>&1) &
    S3_PID=$!
    wait_for_port "$port" "the S3 server" "$dir/server.log"
    export TALLY_TEST_S3_ENDPOINT="http://127.0.0.1:$port"
    log "S3 (moto) on 127.0.0.1:$port (pid $S3_PID)."
}

# Runs a command as an unprivileged user when we are root (initdb refuses root).
as_pg_user() {
    if [ "$(id -u)" -eq 0 ]; then
        id postgres >/dev/null 2>&1 || useradd --system --no-create-home postgres
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

start_postgres() {
    local port
    port=$(free_port)
    PG_DATA="$RUN_DIR/pg"
    mkdir -p "$PG_DATA"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$RUN_DIR/pg"
    as_pg_user "$PG_BIN/initdb" -D "$PG_DATA/data" -U postgres --auth=trust --no-sync >"$RUN_DIR/initdb.log" 2>&1 \
        || { cat "$RUN_DIR/initdb.log" >&2; die "initdb failed"; }
    # A throwaway cluster: durability settings off for speed; tests kill tally, never PostgreSQL.
    as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -l "$PG_DATA/server.log" -w start \
        -o "-p $port -k $PG_DATA -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c max_connections=300" \
        >/dev/null || { tail -n 40 "$PG_DATA/server.log" >&2; die "PostgreSQL did not start"; }
    export TALLY_TEST_PG_URL="postgres://postgres@127.0.0.1:$port/postgres"
    # For tests that freeze the server (SIGSTOP) to show that nothing hangs.
    export TALLY_TEST_PG_DATA="$PG_DATA/data"
    log "PostgreSQL on 127.0.0.1:$port ($PG_DATA)."
}

start_tansu() { # storage engine URL (relative paths resolve in the broker's directory)
    local port dir engine=${1:-sqlite://tansu.db}
    port=$(free_port)
    dir="$RUN_DIR/tansu"
    mkdir -p "$dir"
    (cd "$dir" && exec "$TANSU_BIN" broker \
        --kafka-cluster-id tally-test \
        --kafka-listener-url "tcp://127.0.0.1:$port" \
        --kafka-advertised-listener-url "tcp://127.0.0.1:$port" \
        --storage-engine "$engine" >"$dir/broker.log" 2>&1) &
    TANSU_PID=$!
    wait_for_port "$port" tansu "$dir/broker.log"
    case "$engine" in
        sqlite://*) index_tansu_headers "$dir/${engine#sqlite://}" ;;
    esac
    export TALLY_TEST_BROKERS="127.0.0.1:$port"
    export TALLY_TEST_TANSU_BIN="$TANSU_BIN" TALLY_TEST_TANSU_DIR="$dir"
    log "tansu on 127.0.0.1:$port (pid $TANSU_PID, $dir)."
}

# openssl (test certificates), stunnel (TLS in front of tansu, which serves
# plain TCP only) and curl (an HTTPS client), from Debian's packages.
ensure_tls_tools() {
    local missing=()
    command -v openssl >/dev/null || missing+=(openssl)
    command -v stunnel4 >/dev/null || command -v stunnel >/dev/null || missing+=(stunnel4)
    command -v curl >/dev/null || missing+=(curl)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "Installing Debian's ${missing[*]} package(s)."
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "installing ${missing[*]} failed"
}

# A test CA, a server certificate it signed for 127.0.0.1 and localhost, and
# a second CA that signed nothing of ours (for the wrong-CA tests).
make_test_certs() {
    local dir="$RUN_DIR/tls" ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
    mkdir -p "$dir"
    {
        openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=tally test CA" -keyout "$dir/ca.key" -out "$dir/ca.pem" \
        && openssl req -x509 "${ec[@]}" -days 2 -subj "/CN=tally wrong CA" -keyout "$dir/wrong-ca.key" -out "$dir/wrong-ca.pem" \
        && openssl req "${ec[@]}" -subj "/CN=127.0.0.1" -keyout "$dir/server.key" -out "$dir/server.csr" \
        && printf '%s\n' "subjectAltName=IP:127.0.0.1,DNS:localhost" "basicConstraints=CA:FALSE" \
            "keyUsage=digitalSignature,keyEncipherment" "extendedKeyUsage=serverAuth" >"$dir/server.ext" \
        && openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
            -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem"
    } >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "generating the test certificates failed"; }
    chmod 644 "$dir"/*.pem "$dir"/*.key
    export TALLY_TEST_TLS_CA="$dir/ca.pem" TALLY_TEST_TLS_WRONG_CA="$dir/wrong-ca.pem"
    export TALLY_TEST_TLS_CERT="$dir/server.pem" TALLY_TEST_TLS_KEY="$dir/server.key"
}

# A second PostgreSQL that takes only TLS connections (hostssl), with the
# test certificate; `tally` logs in with a password (scram-sha-256).
start_postgres_tls() {
    local port dir="$RUN_DIR/pg-tls" password
    port=$(free_port)
    password="pg-secret-$RANDOM$RANDOM"
    mkdir -p "$dir"
    cp "$TALLY_TEST_TLS_CERT" "$dir/server.pem"
    cp "$TALLY_TEST_TLS_KEY" "$dir/server.key"
    chmod 600 "$dir/server.key"
    [ "$(id -u)" -eq 0 ] && chown -R postgres "$dir"
    as_pg_user "$PG_BIN/initdb" -D "$dir/data" -U postgres --auth=trust --no-sync >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; die "initdb (TLS cluster) failed"; }
    printf '%s\n' "local all all trust" "hostssl all postgres 127.0.0.1/32 trust" \
        "hostssl all all 127.0.0.1/32 scram-sha-256" >"$dir/data/pg_hba.conf"
    as_pg_user "$PG_BIN/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w start \
        -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c ssl=on -c ssl_cert_file=$dir/server.pem -c ssl_key_file=$dir/server.key" \
        >/dev/null || { tail -n 40 "$dir/server.log" >&2; die "PostgreSQL (TLS) did not start"; }
    as_pg_user "$PG_BIN/psql" -h "$dir" -p "$port" -U postgres -d postgres -q \
        -c "CREATE ROLE tally LOGIN SUPERUSER PASSWORD '$password'" >/dev/null || die "creating the tally role failed"
    PG_TLS_DATA="$dir/data"
    export TALLY_TEST_PG_TLS_URL="postgres://postgres@127.0.0.1:$port/postgres"
    export TALLY_TEST_PG_TLS_PASSWORD="$password"
    # For the tests to make databases: the Unix socket, where the postgres role needs no TLS.
    export TALLY_TEST_PG_TLS_ADMIN="host=$dir port=$port user=postgres dbname=postgres"
    log "PostgreSQL with TLS only on 127.0.0.1:$port ($dir)."
}

# A second tansu that clients reach only through stunnel's TLS listener, with
# SASL (SCRAM-SHA-512 user `tally`, SCRAM-SHA-256 user `tally256`, one random
# password): the broker advertises the TLS address, so every connection goes
# through it. tansu 0.6.0 serves its user API only to authenticated clients,
# so the users are created before authentication is turned on.
start_tansu_tls() {
    local plain tls dir="$RUN_DIR/tansu-tls" stunnel password
    plain=$(free_port)
    tls=$(free_port)
    password="kafka-secret-$RANDOM$RANDOM"
    mkdir -p "$dir"
    run_tansu_tls() {
        (cd "$dir" && exec "$TANSU_BIN" broker \
            --kafka-cluster-id tally-test-tls \
            --kafka-listener-url "tcp://127.0.0.1:$plain" \
            --kafka-advertised-listener-url "tcp://127.0.0.1:$tls" \
            --storage-engine "sqlite://tansu.db" "$@" >>"$dir/broker.log" 2>&1) &
        TANSU_TLS_PID=$!
        wait_for_port "$plain" "tansu (TLS)" "$dir/broker.log"
    }
    run_tansu_tls
    "$TANSU_BIN" user create --broker "tcp://127.0.0.1:$plain" --mechanism scram512 tally "$password" >>"$dir/users.log" 2>&1 \
        && "$TANSU_BIN" user create --broker "tcp://127.0.0.1:$plain" --mechanism scram256 tally256 "$password" >>"$dir/users.log" 2>&1 \
        || { cat "$dir/users.log" >&2; die "creating the SASL users in tansu failed"; }
    kill "$TANSU_TLS_PID"
    wait "$TANSU_TLS_PID" 2>/dev/null || true
    run_tansu_tls --authentication
    index_tansu_headers "$dir/tansu.db"
    stunnel=$(command -v stunnel4 || command -v stunnel)
    printf '%s\n' "foreground = yes" "pid =" "[kafka]" "accept = 127.0.0.1:$tls" "connect = 127.0.0.1:$plain" \
        "cert = $TALLY_TEST_TLS_CERT" "key = $TALLY_TEST_TLS_KEY" >"$dir/stunnel.conf"
    "$stunnel" "$dir/stunnel.conf" >"$dir/stunnel.log" 2>&1 &
    STUNNEL_PID=$!
    wait_for_port "$tls" stunnel "$dir/stunnel.log"
    export TALLY_TEST_TLS_BROKERS="127.0.0.1:$tls" TALLY_TEST_KAFKA_SASL_PASSWORD="$password"
    log "tansu with SASL behind stunnel: TLS on 127.0.0.1:$tls, plain on $plain (pids $TANSU_TLS_PID, $STUNNEL_PID)."
}

stop_services() {
    local status=$? pid log
    if [ "$status" -ne 0 ] && [ -n "$RUN_DIR" ]; then
        # A failed run shows the brokers' last words before their directory goes.
        for log in "$RUN_DIR"/tansu/broker.log "$RUN_DIR"/tansu-tls/broker.log; do
            [ -s "$log" ] || continue
            echo "--- last lines of ${log#"$RUN_DIR"/}" >&2
            tail -n 20 "$log" >&2
        done
    fi
    for pid in "${STUNNEL_PID:-}" "${TANSU_TLS_PID:-}"; do
        if [ -n "$pid" ]; then kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; fi
    done
    if [ -n "${PG_TLS_DATA:-}" ] && [ -d "$PG_TLS_DATA" ]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_TLS_DATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ -n "${S3_PID:-}" ]; then kill "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; fi
    if [ -n "${TANSU_PID:-}" ]; then kill "$TANSU_PID" 2>/dev/null || true; wait "$TANSU_PID" 2>/dev/null || true; fi
    if [ -n "$PG_DATA" ] && [ -d "$PG_DATA/data" ]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_DATA/data" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ -n "$RUN_DIR" ] && [ -z "${TALLY_KEEP_RUN_DIR:-}" ]; then rm -rf "$RUN_DIR"; fi
}

# Test executables carry line tables over DataFusion (about 0.5 GB each), and
# cargo never deletes the ones an older tree built, so a build directory that
# CI reuses run after run grows without end. Keep what this tree builds (and
# its hard links) and delete every other executable in deps/.
prune_stale_executables() { # cargo test arguments
    local deps="$CARGO_TARGET_DIR/release/deps" keep file freed=0
    [ -d "$deps" ] || return 0
    keep=$(cargo test --release --workspace --locked --no-run --message-format=json "$@" 2>/dev/null \
        | sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' \
        | while read -r file; do stat -c %i "$file"; done | sort -u)
    [ -n "$keep" ] || return 0
    for file in "$deps"/*; do
        # Executables only: no extension (rlibs, rmeta and .d files stay).
        [ -f "$file" ] && [ -x "$file" ] && [[ "${file##*/}" != *.* ]] || continue
        if ! grep -qx "$(stat -c %i "$file")" <<<"$keep"; then
            freed=$((freed + $(stat -c %s "$file")))
            rm -f "$file"
        fi
    done
    [ "$freed" -eq 0 ] || log "Deleted stale test executables: $((freed / 1048576)) MiB freed."
}

# The brokers and databases write to disk as the tests run; with the disk full
# they fail in ways that look like tally's bugs, so say it plainly first.
check_free_space() { # directories
    local dir free
    for dir in "$@"; do
        free=$(df -Pk "$dir" | awk 'NR == 2 {print $4}')
        [ "$free" -ge $((3 * 1048576)) ] \
            || die "only $((free / 1024)) MiB free on the disk holding $dir; the tests need 3 GiB"
    done
}

make_run_dir() {
    RUN_DIR=$(mktemp -d "${TMPDIR:-/tmp}/tally-test.XXXXXX")
    chmod 755 "$RUN_DIR"
}
