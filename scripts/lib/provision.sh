# Test-environment provisioning shared by scripts/test and the benchmarks.
# Sourced, not executed. Everything it starts is stopped by `stop_services`.
#
# Caches (outside the clone, reused across runs):
#   $TALLY_CACHE/kafka-4.4.0/libs        Apache Kafka's runtime jars, from Maven Central
#   $TALLY_CACHE/m2                      Maven's local repository for them
#   $TALLY_CACHE/moto-5.2.5              an S3-compatible server (a Python virtualenv)
#   $TALLY_CACHE/python-tools-<hash>     scripts/python-tools.txt (a Python virtualenv)
#   $TALLY_CACHE/mdbook-0.5.4            mdBook, which builds the documentation book
#   $TALLY_CACHE/target                  cargo's build directory

TALLY_CACHE=${TALLY_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/tally}
# The same version as docker-compose.yml's apache/kafka image.
KAFKA_VERSION=4.4.0
KAFKA_HOME="$TALLY_CACHE/kafka-$KAFKA_VERSION"
MOTO_VERSION=5.2.5
MOTO_VENV="$TALLY_CACHE/moto-$MOTO_VERSION"
MDBOOK_VERSION=0.5.4
MDBOOK_ROOT="$TALLY_CACHE/mdbook-$MDBOOK_VERSION"
RUN_DIR=""
PG_BIN=""
PG_DATA=""

log() { printf '[provision] %s\n' "$*" >&2; }
die() { printf '[provision] error: %s\n' "$*" >&2; exit 1; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else die "need root to run: $*"; fi
}

# A TCP port on 127.0.0.1 that nothing listens on (bash only: no python
# needed), below the kernel's ephemeral range, so that no outgoing
# connection can take it between this check and the server's bind.
free_port() {
    local port low=10000 high
    high=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
    for _ in $(seq 1 200); do
        port=$(( low + RANDOM % (high - low) ))
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

# Apache Kafka's broker, from Maven Central: the jars of the pinned version
# and their dependencies (checksums checked, -C), resolved by Maven with the
# checked-in POM and copied into the cache once. `.complete` marks a finished
# copy, so an interrupted one is redone. Java 17 or newer runs it.
# Installs Debian's packages given (the caller names the missing ones), for
# `why`; nothing when none is given.
install_packages() { # why, packages…
    local why=$1
    shift
    [ $# -gt 0 ] || return 0
    log "Installing Debian's $* package(s) for $why."
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "$@" >/dev/null \
        || die "installing $* failed"
}

ensure_kafka() {
    [ -f "$KAFKA_HOME/.complete" ] && return 0
    local missing=()
    command -v java >/dev/null || missing+=(openjdk-17-jre-headless)
    command -v mvn >/dev/null || missing+=(maven)
    install_packages "the Kafka broker" "${missing[@]}"
    log "Fetching Apache Kafka $KAFKA_VERSION's jars from Maven Central into $KAFKA_HOME (once)."
    rm -rf "$KAFKA_HOME"
    mvn -B -q -C -f scripts/kafka/pom.xml -Dkafka.version="$KAFKA_VERSION" \
        -Dmaven.repo.local="$TALLY_CACHE/m2" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$KAFKA_HOME/libs" >"$TALLY_CACHE/kafka-fetch.log" 2>&1 \
        || { tail -n 40 "$TALLY_CACHE/kafka-fetch.log" >&2; die "resolving Apache Kafka $KAFKA_VERSION from Maven Central failed"; }
    ls "$KAFKA_HOME/libs/kafka_2.13-$KAFKA_VERSION.jar" >/dev/null || die "kafka_2.13-$KAFKA_VERSION.jar missing after the copy"
    touch "$KAFKA_HOME/.complete"
}

# Runs one of Kafka's command-line classes (kafka.tools.StorageTool, …).
kafka_java() { java -cp "$KAFKA_HOME/libs/*" -Dlog4j2.configurationFile="$KAFKA_LOG4J" "$@"; }

# Writes a single-node KRaft broker's directory (`$1`): its properties, a
# log4j2 configuration that keeps its logs there, and its storage formatted
# with the SCRAM users. Listeners, each on a free loopback port and
# advertising 127.0.0.1:
#   PLAINTEXT  (TALLY_TEST_BROKERS)       most tests
#   SSL        (TALLY_TEST_SSL_BROKERS)   the test CA's server certificate
#   MTLS       (TALLY_TEST_MTLS_BROKERS)  SSL that requires a client certificate
#   SASL_SSL   (TALLY_TEST_TLS_BROKERS)   SCRAM-SHA-512 user `tally` and
#                                         SCRAM-SHA-256 user `tally256`
# The TLS listeners open when the third argument is `tls` (after
# make_test_certs); otherwise (the benchmarks, a test's private broker) only
# PLAINTEXT does.
write_kafka_config() { # dir, plaintext port, [tls]
    local dir=$1 plain=$2 controller listeners advertised map tls="" password cluster
    controller=$(free_port)
    mkdir -p "$dir/data"
    listeners="PLAINTEXT://127.0.0.1:$plain,CONTROLLER://127.0.0.1:$controller"
    advertised="PLAINTEXT://127.0.0.1:$plain"
    map="PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT"
    if [ "${3:-}" = tls ]; then
        local ssl mtls sasl
        ssl=$(free_port) mtls=$(free_port) sasl=$(free_port)
        listeners+=",SSL://127.0.0.1:$ssl,MTLS://127.0.0.1:$mtls,SASL_SSL://127.0.0.1:$sasl"
        advertised+=",SSL://127.0.0.1:$ssl,MTLS://127.0.0.1:$mtls,SASL_SSL://127.0.0.1:$sasl"
        map+=",SSL:SSL,MTLS:SSL,SASL_SSL:SASL_SSL"
        cat "$TALLY_TEST_TLS_KEY" "$TALLY_TEST_TLS_CERT" >"$dir/server-keystore.pem"
        tls=$(printf '%s\n' \
            "ssl.keystore.type=PEM" "ssl.keystore.location=$dir/server-keystore.pem" \
            "ssl.truststore.type=PEM" "ssl.truststore.location=$TALLY_TEST_TLS_CA" \
            "listener.name.mtls.ssl.client.auth=required" \
            "sasl.enabled.mechanisms=SCRAM-SHA-512,SCRAM-SHA-256" \
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;" \
            "listener.name.sasl_ssl.scram-sha-256.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;")
        password="kafka-secret-$RANDOM$RANDOM"
        KAFKA_SCRAM=(--add-scram "SCRAM-SHA-512=[name=tally,password=$password]"
            --add-scram "SCRAM-SHA-256=[name=tally256,password=$password]")
        export TALLY_TEST_SSL_BROKERS="127.0.0.1:$ssl" TALLY_TEST_MTLS_BROKERS="127.0.0.1:$mtls"
        export TALLY_TEST_TLS_BROKERS="127.0.0.1:$sasl" TALLY_TEST_KAFKA_SASL_PASSWORD="$password"
    else
        KAFKA_SCRAM=()
    fi
    # Production-like where it matters to tally: topics are never created by
    # a client's request, only by tally or the test; one replica, so the
    # internal topics ask for one.
    cat >"$dir/server.properties" <<PROPERTIES
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:$controller
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listeners=$listeners
advertised.listeners=$advertised
listener.security.protocol.map=$map
log.dirs=$dir/data
auto.create.topics.enable=false
num.partitions=1
offsets.topic.replication.factor=1
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
$tls
PROPERTIES
    cat >"$dir/log4j2.properties" <<LOG4J
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $dir/broker.log
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
logger.request.name = kafka.request.logger
logger.request.level = WARN
LOG4J
    KAFKA_LOG4J="$dir/log4j2.properties"
    cluster=$(kafka_java kafka.tools.StorageTool random-uuid 2>"$dir/format.log") \
        && kafka_java kafka.tools.StorageTool format -t "$cluster" -c "$dir/server.properties" \
            "${KAFKA_SCRAM[@]}" >>"$dir/format.log" 2>&1 \
        || { cat "$dir/format.log" >&2; die "formatting the Kafka broker's storage failed"; }
}

# Waits up to 60 s for the broker (KAFKA_PID) to listen on `$1`; fails at
# once if it exits first.
wait_for_kafka() { # plaintext port
    for _ in $(seq 1 300); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        kill -0 "$KAFKA_PID" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}

# Runs the broker of `$1` (written by write_kafka_config) in the foreground.
exec_kafka() { # dir
    exec java -Xms256m -Xmx1g -XX:+UseG1GC -cp "$KAFKA_HOME/libs/*" \
        -Dlog4j2.configurationFile="$1/log4j2.properties" kafka.Kafka "$1/server.properties" \
        >"$1/stdout.log" 2>&1
}

# Starts the run's broker. A broker that exits while starting (a port taken
# after free_port looked, say) is started again on other ports, twice at most.
start_kafka() {
    local port dir="$RUN_DIR/kafka" attempt
    for attempt in 1 2 3; do
        port=$(free_port)
        rm -rf "$dir"
        # TLS listeners when make_test_certs ran (scripts/test); plaintext
        # only for the benchmarks.
        write_kafka_config "$dir" "$port" ${TALLY_TEST_TLS_CERT:+tls}
        (exec_kafka "$dir") &
        KAFKA_PID=$!
        if wait_for_kafka "$port"; then break; fi
        kill "$KAFKA_PID" 2>/dev/null || true
        wait "$KAFKA_PID" 2>/dev/null || true
        log "Apache Kafka did not start (attempt $attempt of 3); its last words:"
        tail -n 15 "$dir/broker.log" "$dir/stdout.log" >&2 2>/dev/null || true
        [ "$attempt" -lt 3 ] || die "Apache Kafka did not start three times; see the lines above"
    done
    export TALLY_TEST_BROKERS="127.0.0.1:$port" TALLY_TEST_KAFKA_DIR="$dir"
    # For tests that start a private broker (to stop it without disturbing others).
    export TALLY_TEST_KAFKA_BROKER_SCRIPT="$PWD/scripts/kafka/broker" TALLY_CACHE
    log "Apache Kafka $KAFKA_VERSION on 127.0.0.1:$port (pid $KAFKA_PID, $dir)${TALLY_TEST_TLS_BROKERS:+; SSL ${TALLY_TEST_SSL_BROKERS}, mTLS ${TALLY_TEST_MTLS_BROKERS}, SASL_SSL ${TALLY_TEST_TLS_BROKERS}}."
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

# The Python tools of scripts/python-tools.txt, in a virtualenv named by the
# file's hash (a changed pin installs afresh); exported for the tests.
ensure_python_tools() {
    local hash venv
    hash=$(sha256sum scripts/python-tools.txt | cut -c1-12)
    venv="$TALLY_CACHE/python-tools-$hash"
    if [ ! -f "$venv/.complete" ]; then
        if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
            log "python3 with venv not found; installing Debian's python3-venv package."
            as_root apt-get update -qq
            DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq python3-venv >/dev/null \
                || die "installing python3-venv failed"
        fi
        log "Installing the tests' Python tools (scripts/python-tools.txt) into $venv."
        rm -rf "$venv"
        python3 -m venv "$venv" || die "creating a Python virtualenv in $venv failed"
        "$venv/bin/pip" install -q --disable-pip-version-check -r scripts/python-tools.txt \
            || die "installing scripts/python-tools.txt failed"
        touch "$venv/.complete"
    fi
    export TALLY_TEST_PYTHON="$venv/bin/python"
    export TALLY_TEST_SCHEMATHESIS="$venv/bin/schemathesis"
    export TALLY_TEST_OPENAPI_VALIDATOR="$venv/bin/openapi-spec-validator"
}

# The Java producer example, built with Maven (its jars in the cache's
# Maven repository); its class path exported for the tests.
ensure_java_example() {
    local missing=()
    command -v javac >/dev/null || missing+=(openjdk-17-jdk-headless)
    command -v mvn >/dev/null || missing+=(maven)
    install_packages "the Java example" "${missing[@]}"
    log "Building the Java producer example (examples/java)."
    mvn -B -q -f examples/java/pom.xml -Dmaven.repo.local="$TALLY_CACHE/m2" package \
        >"$TALLY_CACHE/java-example.log" 2>&1 \
        || { tail -n 40 "$TALLY_CACHE/java-example.log" >&2; die "building examples/java failed"; }
    export TALLY_TEST_JAVA_EXAMPLE_CP="$PWD/examples/java/target/classes:$(cat examples/java/target/classpath.txt)"
}

# mdBook, from crates.io into the cache, once.
ensure_mdbook() {
    [ -x "$MDBOOK_ROOT/bin/mdbook" ] && return 0
    log "Installing mdBook $MDBOOK_VERSION into $MDBOOK_ROOT (once)."
    cargo install mdbook --version "$MDBOOK_VERSION" --locked --no-default-features \
        --features search --root "$MDBOOK_ROOT" >"$TALLY_CACHE/mdbook-install.log" 2>&1 \
        || { tail -n 40 "$TALLY_CACHE/mdbook-install.log" >&2; die "installing mdBook $MDBOOK_VERSION failed"; }
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

# openssl (test certificates) and curl (an HTTPS client), from Debian's packages.
ensure_tls_tools() {
    local missing=()
    command -v openssl >/dev/null || missing+=(openssl)
    command -v curl >/dev/null || missing+=(curl)
    [ ${#missing[@]} -eq 0 ] && return 0
    log "Installing Debian's ${missing[*]} package(s)."
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
        || die "installing ${missing[*]} failed"
}

# A test CA, a server certificate it signed for 127.0.0.1 and localhost, a
# client certificate it signed (for the broker's mTLS listener), and a second
# CA that signed nothing of ours (for the wrong-CA tests).
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
            -days 2 -extfile "$dir/server.ext" -out "$dir/server.pem" \
        && openssl req "${ec[@]}" -subj "/CN=tally-client" -keyout "$dir/client.key" -out "$dir/client.csr" \
        && printf '%s\n' "basicConstraints=CA:FALSE" "keyUsage=digitalSignature" \
            "extendedKeyUsage=clientAuth" >"$dir/client.ext" \
        && openssl x509 -req -in "$dir/client.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial \
            -days 2 -extfile "$dir/client.ext" -out "$dir/client.pem"
    } >"$dir/openssl.log" 2>&1 || { cat "$dir/openssl.log" >&2; die "generating the test certificates failed"; }
    chmod 644 "$dir"/*.pem "$dir"/*.key
    export TALLY_TEST_TLS_CA="$dir/ca.pem" TALLY_TEST_TLS_WRONG_CA="$dir/wrong-ca.pem"
    export TALLY_TEST_TLS_CERT="$dir/server.pem" TALLY_TEST_TLS_KEY="$dir/server.key"
    export TALLY_TEST_TLS_CLIENT_CERT="$dir/client.pem" TALLY_TEST_TLS_CLIENT_KEY="$dir/client.key"
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

stop_services() {
    local status=$? pid log
    if [ "$status" -ne 0 ] && [ -n "$RUN_DIR" ]; then
        # A failed run shows the broker's last words before its directory goes.
        for log in "$RUN_DIR"/kafka/broker.log "$RUN_DIR"/kafka/stdout.log; do
            [ -s "$log" ] || continue
            echo "--- last lines of ${log#"$RUN_DIR"/}" >&2
            tail -n 20 "$log" >&2
        done
    fi
    if [ -n "${PG_TLS_DATA:-}" ] && [ -d "$PG_TLS_DATA" ]; then
        as_pg_user "$PG_BIN/pg_ctl" -D "$PG_TLS_DATA" -m immediate stop >/dev/null 2>&1 || true
    fi
    if [ -n "${S3_PID:-}" ]; then kill "$S3_PID" 2>/dev/null || true; wait "$S3_PID" 2>/dev/null || true; fi
    if [ -n "${KAFKA_PID:-}" ]; then kill "$KAFKA_PID" 2>/dev/null || true; wait "$KAFKA_PID" 2>/dev/null || true; fi
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
