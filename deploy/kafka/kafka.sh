#!/usr/bin/env bash
# Run a local Apache Kafka cluster in KRaft mode (each node is a combined
# broker+controller JVM) from the jars fetched by fetch-jars.sh, for
# development and tests: Kafka 3.9.1 by default, another supported version
# (4.1.x) with KAFKA_VERSION. Listens on 127.0.0.1 only. Idempotent: 'start'
# on a running cluster does nothing, 'stop' on a stopped one does nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.sh
. "$HERE/versions.sh"
WANT_VERSION="${KAFKA_VERSION:-}"
JAVA="${JAVA:-java}"
HEAP_OPTS="${KAFKA_HEAP_OPTS:--Xmx512m -Xms256m}"
START_TIMEOUT="${KAFKA_START_TIMEOUT:-90}"
STOP_TIMEOUT="${KAFKA_STOP_TIMEOUT:-30}"
# Secure mode: the principals that get a SCRAM user and a client certificate
# (one per daemon, the operator tool, the admin super user), and the brokers'.
PRINCIPALS="order-service payment-service inventory-service orderctl admin"
BROKER_PRINCIPAL="kafka-broker"

usage() {
    cat <<USAGE
Usage: $(basename "$0") COMMAND [--nodes 1|3] [--dir DIR] [--port BASEPORT] [--secure]

Commands:
  start          format storage if needed, start every node that is not running,
                 wait until all answer (deadline ${START_TIMEOUT} s), print bootstrap=...
  stop           SIGTERM every node, SIGKILL after ${STOP_TIMEOUT} s; leaves no JVM behind
  status         one line per node; exit 0 all running, 1 some, 3 none
  bootstrap      print bootstrap=HOST:PORT,... (no checks)
  start-node N   start node N (1-based) and wait until it answers
  stop-node N    SIGTERM node N (SIGKILL after ${STOP_TIMEOUT} s)
  kill-node N    SIGKILL node N at once (fault tests)
  clean          stop, then delete DIR (data, logs, configuration)

Options:
  --nodes N      number of nodes, 1..9 (default 1; recorded in DIR at first start)
  --dir DIR      state folder (default <root>/.run/kafka)
  --port P       client port of node 1 (default 9092); node i uses P+i-1 for clients
                 and P+100+i-1 for its controller listener
  --secure       secure mode (recorded in DIR at first start, like --nodes): no
                 unauthenticated listener; see "Secure mode" below
  --help         this text

Environment: KAFKA_VERSION (3.9.x, default $KAFKA_DEFAULT_VERSION, or 4.1.x; recorded in
DIR at first start, later commands reuse it), KAFKA_HEAP_OPTS (default
"-Xmx512m -Xms256m" per node), KAFKA_OPTS (extra JVM options),
KAFKA_EXTRA_PROPERTIES (lines appended to server.properties), JAVA,
KAFKA_LIBS_DIR (default <root>/.run/kafka-libs/VERSION), KAFKA_START_TIMEOUT,
KAFKA_STOP_TIMEOUT.
Layout: DIR/cluster.env, DIR/node-i/{server.properties,log4j.properties (3.x) or
log4j2.properties (4.x),pid,server.log,console.log,data/}.

Secure mode (--secure): a throw-away CA and PEM certificates made with openssl
in DIR/tls (broker: SAN IP:127.0.0.1,DNS:localhost; one client certificate per
principal: $PRINCIPALS), random SCRAM-SHA-512 passwords in
DIR/secrets/<principal>.password (0600), created as SCRAM users at format time.
Listeners of node i: SASL_SSL (SCRAM-SHA-512) on P+i-1, SSL with client
certificates required (mTLS, also the inter-broker listener) on P+200+i-1, the
controller listener on P+100+i-1 is mTLS too. Certificate subjects CN=<name> map
to User:<name>. StandardAuthorizer, allow.everyone.if.no.acl.found=false,
super.users=User:admin;User:$BROKER_PRINCIPAL: every other principal needs
ACLs (orderctl acls ensure). Ready-to-source client settings (KAFKA_* variables
of the daemons and orderctl): DIR/clients/<principal>-scram.env (password as
KAFKA_SASL_PASSWORD_FILE) and DIR/clients/<principal>-mtls.env; DIR/clients/
admin.properties for Kafka's Java tools (mTLS).

Examples:
  $(basename "$0") start                                  # 1 node on 127.0.0.1:9092
  KAFKA_VERSION=4.1.1 $(basename "$0") start --port 39092 --dir /tmp/k4
  $(basename "$0") start --nodes 3 --port 29092 --dir /tmp/k3
  $(basename "$0") start --secure --port 19092 --dir /tmp/ks  # SASL_SSL 19092, mTLS 19292
  $(basename "$0") kill-node 2 --dir /tmp/k3
  $(basename "$0") stop --dir /tmp/k3
USAGE
}

die() { echo "kafka.sh: $*" >&2; exit 1; }
info() { echo "kafka.sh: $*" >&2; }

# ---------------------------------------------------------------- arguments
CMD="${1:-}"
[[ -n "$CMD" ]] || { usage >&2; exit 2; }
shift
case "$CMD" in -h|--help|help) usage; exit 0 ;; esac

NODE=""
case "$CMD" in
    start-node|stop-node|kill-node)
        NODE="${1:-}"
        [[ "$NODE" =~ ^[1-9]$ ]] || die "$CMD needs a node number (1-based)"
        shift ;;
    start|stop|status|bootstrap|clean) ;;
    *) die "unknown command: $CMD (see --help)" ;;
esac

OPT_NODES="" OPT_PORT="" OPT_SECURE=""
DIR="$ROOT/.run/kafka"
while [[ $# -gt 0 ]]; do
    case "$1" in
        --nodes) OPT_NODES="${2:?--nodes needs a number}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
        --port) OPT_PORT="${2:?--port needs a number}"; shift 2 ;;
        --secure) OPT_SECURE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
done
[[ -z "$OPT_NODES" || "$OPT_NODES" =~ ^[1-9]$ ]] || die "--nodes must be 1..9"
[[ -z "$OPT_PORT" || "$OPT_PORT" =~ ^[0-9]+$ ]] || die "--port must be a number"
DIR="$(realpath -m "$DIR")"
CLUSTER_ENV="$DIR/cluster.env"

# The cluster's shape and Kafka version are recorded at first start; later
# commands reuse them.
NODES="" BASEPORT="" CLUSTER_ID="" VERSION="" SECURE=""
if [[ -f "$CLUSTER_ENV" ]]; then
    # shellcheck source=/dev/null
    . "$CLUSTER_ENV"
    VERSION="${VERSION:-3.9.1}" # recorded before versions were selectable
    SECURE="${SECURE:-0}"
    if [[ -n "$OPT_SECURE" && "$SECURE" != 1 && "$CMD" != clean ]]; then
        die "$DIR holds a plaintext cluster; use another --dir or '$(basename "$0") clean --dir $DIR' first"
    fi
    if [[ -n "$WANT_VERSION" && "$WANT_VERSION" != "$VERSION" ]] && [[ "$CMD" == start || "$CMD" == start-node ]]; then
        die "$DIR holds a Kafka $VERSION cluster, not $WANT_VERSION; unset KAFKA_VERSION, use another --dir, or '$(basename "$0") clean --dir $DIR' first"
    fi
    if [[ -n "$OPT_NODES" && "$OPT_NODES" != "$NODES" ]] || [[ -n "$OPT_PORT" && "$OPT_PORT" != "$BASEPORT" ]]; then
        [[ "$CMD" == clean ]] || die "$DIR holds a cluster of $NODES node(s) on port $BASEPORT; use the same options, another --dir, or '$(basename "$0") clean --dir $DIR' first"
    fi
else
    NODES="${OPT_NODES:-1}"
    BASEPORT="${OPT_PORT:-9092}"
    VERSION="${WANT_VERSION:-$KAFKA_DEFAULT_VERSION}"
    SECURE="${OPT_SECURE:-0}"
fi
[[ -z "$WANT_VERSION" ]] || kafka_check_version "$WANT_VERSION"
[[ "$CMD" != start && "$CMD" != start-node ]] || kafka_check_version "$VERSION"
LIBS="${KAFKA_LIBS_DIR:-$ROOT/.run/kafka-libs/$VERSION}"
MAJOR="$(kafka_major "$VERSION")"
(( BASEPORT + 200 + NODES <= 65535 )) || die "port $BASEPORT out of range"
[[ -z "$NODE" ]] || (( NODE <= NODES )) || die "node $NODE does not exist (cluster has $NODES node(s))"

client_port() { echo $((BASEPORT + $1 - 1)); }
controller_port() { echo $((BASEPORT + 100 + $1 - 1)); }
mtls_port() { echo $((BASEPORT + 200 + $1 - 1)); }
node_dir() { echo "$DIR/node-$1"; }
bootstrap() {
    local i out=""
    for ((i = 1; i <= NODES; i++)); do out+="${out:+,}127.0.0.1:$(client_port "$i")"; done
    echo "$out"
}
bootstrap_mtls() {
    local i out=""
    for ((i = 1; i <= NODES; i++)); do out+="${out:+,}127.0.0.1:$(mtls_port "$i")"; done
    echo "$out"
}
print_bootstrap() {
    echo "bootstrap=$(bootstrap)"
    [[ "$SECURE" != 1 ]] || echo "bootstrap_mtls=$(bootstrap_mtls)"
}

# ---------------------------------------------------------------- processes
# Our JVMs carry -Dorders.kafka.node=<node dir> on their command line; a pid
# counts as ours only when its command line holds exactly that argument.
node_marker() { echo "-Dorders.kafka.node=$(node_dir "$1")"; } # is_ours inlines it

is_ours() { # pid node (bash builtins only: this runs for every process on the machine)
    local pid="$1" marker="-Dorders.kafka.node=$DIR/node-$2" a args=()
    [[ -r "/proc/$pid/cmdline" ]] || return 1
    mapfile -d '' -t args <"/proc/$pid/cmdline" 2>/dev/null || return 1
    for a in "${args[@]}"; do [[ "$a" == "$marker" ]] && return 0; done
    return 1
}

node_pids() { # node -> pids of our JVM(s) for that node (pid file, then /proc scan)
    local n="$1" pidfile pid p found=""
    pidfile="$(node_dir "$n")/pid"
    [[ -d "$(node_dir "$n")" ]] || return 0
    if [[ -f "$pidfile" ]]; then
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid" "$n"; then found="$pid"; fi
    fi
    for p in /proc/[0-9]*; do
        pid="${p#/proc/}"
        [[ " $found " == *" $pid "* ]] && continue
        if is_ours "$pid" "$n"; then found+="${found:+ }$pid"; fi
    done
    echo "$found"
}

node_running() { # node (quick when the pid file is right; else scans /proc)
    local pid
    pid="$(cat "$(node_dir "$1")/pid" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid" "$1"; then return 0; fi
    [[ -n "$(node_pids "$1")" ]]
}

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- configuration
write_env() {
    local id
    # Kafka cluster ids are 16 random bytes in URL-safe base64 without padding;
    # Kafka itself avoids ids that start with '-' (they look like CLI options).
    while :; do
        id="$(head -c 16 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=')"
        [[ "$id" != -* ]] && break
    done
    CLUSTER_ID="$id"
    printf 'NODES=%s\nBASEPORT=%s\nCLUSTER_ID=%s\nVERSION=%s\nSECURE=%s\n' "$NODES" "$BASEPORT" "$CLUSTER_ID" "$VERSION" "$SECURE" >"$CLUSTER_ENV.tmp"
    mv "$CLUSTER_ENV.tmp" "$CLUSTER_ENV"
}

write_node_config() { # node
    local n="$1" nd voters="" i rf min_isr
    nd="$(node_dir "$n")"
    mkdir -p "$nd/data"
    for ((i = 1; i <= NODES; i++)); do voters+="${voters:+,}$i@127.0.0.1:$(controller_port "$i")"; done
    rf=$((NODES < 3 ? NODES : 3))
    min_isr=$((rf < 2 ? 1 : 2))
    cat >"$nd/server.properties.tmp" <<PROPS
# Generated by deploy/kafka/kafka.sh; rewritten at every start.
process.roles=broker,controller
node.id=$n
controller.quorum.voters=$voters
$(listener_props "$n")
controller.listener.names=CONTROLLER
log.dirs=$nd/data
num.partitions=6
default.replication.factor=$rf
auto.create.topics.enable=false
offsets.topic.replication.factor=$rf
transaction.state.log.replication.factor=$rf
transaction.state.log.min.isr=$min_isr
group.initial.rebalance.delay.ms=0
num.network.threads=2
num.io.threads=4
num.recovery.threads.per.data.dir=1
log.retention.hours=24
# Fence a dead broker after 6 s instead of 9 s (quicker fault tests).
broker.session.timeout.ms=6000
broker.heartbeat.interval.ms=1000
PROPS
    if [[ -n "${KAFKA_EXTRA_PROPERTIES:-}" ]]; then
        printf '# from KAFKA_EXTRA_PROPERTIES\n%s\n' "$KAFKA_EXTRA_PROPERTIES" >>"$nd/server.properties.tmp"
    fi
    mv "$nd/server.properties.tmp" "$nd/server.properties"
    if [[ "$MAJOR" == 3 ]]; then write_log4j1 "$nd"; else write_log4j2 "$nd"; fi
}

listener_props() { # node
    local n="$1" t="$DIR/tls"
    if [[ "$SECURE" != 1 ]]; then
        cat <<PROPS
listeners=PLAINTEXT://127.0.0.1:$(client_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=PLAINTEXT://127.0.0.1:$(client_port "$n")
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
PROPS
        return 0
    fi
    cat <<PROPS
# Secure mode: no unauthenticated listener. Clients: SASL_SSL (SCRAM-SHA-512)
# or MTLS (TLS client certificate required); brokers and controllers talk
# over mTLS with the broker certificate (User:$BROKER_PRINCIPAL, a super user).
listeners=SASL_SSL://127.0.0.1:$(client_port "$n"),MTLS://127.0.0.1:$(mtls_port "$n"),CONTROLLER://127.0.0.1:$(controller_port "$n")
advertised.listeners=SASL_SSL://127.0.0.1:$(client_port "$n"),MTLS://127.0.0.1:$(mtls_port "$n")
listener.security.protocol.map=SASL_SSL:SASL_SSL,MTLS:SSL,CONTROLLER:SSL
inter.broker.listener.name=MTLS
ssl.keystore.type=PEM
ssl.keystore.location=$t/broker-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$t/ca.pem
ssl.endpoint.identification.algorithm=https
ssl.enabled.protocols=TLSv1.2,TLSv1.3
listener.name.mtls.ssl.client.auth=required
listener.name.controller.ssl.client.auth=required
listener.name.sasl_ssl.ssl.client.auth=none
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
ssl.principal.mapping.rules=RULE:^CN=([A-Za-z0-9._-]+)\$/\$1/,DEFAULT
authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer
allow.everyone.if.no.acl.found=false
super.users=User:admin;User:$BROKER_PRINCIPAL
PROPS
}

# ---------------------------------------------------------------- secure mode material
# A throw-away CA, the broker's certificate and one client certificate per
# principal, all PEM; made once (first start), kept across restarts.
make_tls() {
    local t="$DIR/tls" p
    [[ -f "$t/done" ]] && return 0
    command -v openssl >/dev/null || die "openssl not found"
    mkdir -p "$t"
    chmod 700 "$t"
    (
        umask 077
        cd "$t"
        openssl req -x509 -newkey rsa:2048 -nodes -sha256 -days 3650 -keyout ca.key -out ca.pem \
            -subj "/CN=orders dev CA $(basename "$DIR")" \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        issue() { # name extensions
            openssl req -newkey rsa:2048 -nodes -sha256 -keyout "$1.key.tmp" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
            openssl pkcs8 -topk8 -nocrypt -in "$1.key.tmp" -out "$1.key"
            rm -f "$1.key.tmp"
            printf '%s\n' "$2" >"$1.ext"
            openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 -sha256 \
                -extfile "$1.ext" -out "$1.pem" 2>/dev/null
            rm -f "$1.csr" "$1.ext"
        }
        issue "$BROKER_PRINCIPAL" "subjectAltName=IP:127.0.0.1,DNS:localhost
extendedKeyUsage=serverAuth,clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
        cat "$BROKER_PRINCIPAL.key" "$BROKER_PRINCIPAL.pem" >broker-keystore.pem
        for p in $PRINCIPALS; do
            issue "$p" "extendedKeyUsage=clientAuth
keyUsage=critical,digitalSignature,keyEncipherment"
        done
        chmod 644 ca.pem ./*.pem
        chmod 600 ./*.key ca.key broker-keystore.pem
        touch done
    ) || die "could not make the certificates in $t"
}

make_secrets() {
    local s="$DIR/secrets" p
    mkdir -p "$s"
    chmod 700 "$s"
    for p in $PRINCIPALS; do
        [[ -s "$s/$p.password" ]] && continue
        # 24 random bytes, URL-safe base64: no ',', ']' or '=' that --add-scram would trip on
        (umask 077; head -c 24 /dev/urandom | base64 | tr '+/' '-_' | tr -d '=\n' >"$s/$p.password.tmp")
        mv "$s/$p.password.tmp" "$s/$p.password"
    done
}

write_clients() {
    local c="$DIR/clients" p t="$DIR/tls" s="$DIR/secrets"
    mkdir -p "$c"
    for p in $PRINCIPALS; do
        cat >"$c/$p-scram.env.tmp" <<ENV
# $p over SASL_SSL with SCRAM-SHA-512 (generated by kafka.sh; KEY=VALUE for
# systemd's EnvironmentFile=, orderctl --config or 'set -a; . FILE').
KAFKA_BOOTSTRAP_SERVERS=$(bootstrap)
KAFKA_SECURITY_PROTOCOL=SASL_SSL
KAFKA_SASL_MECHANISMS=SCRAM-SHA-512
KAFKA_SASL_USERNAME=$p
KAFKA_SASL_PASSWORD_FILE=$s/$p.password
KAFKA_SSL_CA_LOCATION=$t/ca.pem
ENV
        cat >"$c/$p-mtls.env.tmp" <<ENV
# $p over TLS with a client certificate (CN=$p -> User:$p; generated by kafka.sh).
KAFKA_BOOTSTRAP_SERVERS=$(bootstrap_mtls)
KAFKA_SECURITY_PROTOCOL=SSL
KAFKA_SSL_CA_LOCATION=$t/ca.pem
KAFKA_SSL_CERTIFICATE_LOCATION=$t/$p.pem
KAFKA_SSL_KEY_LOCATION=$t/$p.key
ENV
        mv "$c/$p-scram.env.tmp" "$c/$p-scram.env"
        mv "$c/$p-mtls.env.tmp" "$c/$p-mtls.env"
    done
    # Kafka's Java tools (kafka-acls, kafka-configs ...) as admin over mTLS.
    cat "$t/admin.key" "$t/admin.pem" >"$t/admin-keystore.pem"
    chmod 600 "$t/admin-keystore.pem"
    cat >"$c/admin.properties" <<PROPS
security.protocol=SSL
ssl.keystore.type=PEM
ssl.keystore.location=$t/admin-keystore.pem
ssl.truststore.type=PEM
ssl.truststore.location=$t/ca.pem
PROPS
}

scram_args() { # -> --add-scram arguments for every principal (format time)
    local p
    for p in $PRINCIPALS; do
        printf '%s\n' "--add-scram" "SCRAM-SHA-512=[name=$p,password=$(cat "$DIR/secrets/$p.password")]"
    done
}

# Kafka 3.x logs through reload4j (log4j 1.x configuration).
write_log4j1() { # node dir
    local nd="$1"
    cat >"$nd/log4j.properties" <<PROPS
# Generated by deploy/kafka/kafka.sh: everything goes to server.log, nothing to the console.
log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.FileAppender
log4j.appender.file.File=$nd/server.log
log4j.appender.file.Append=true
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka.request.logger=WARN
log4j.logger.kafka.network.RequestChannel\$=WARN
log4j.logger.kafka.authorizer.logger=WARN
log4j.logger.org.apache.kafka.clients=WARN
log4j.logger.state.change.logger=WARN
PROPS
}

# Kafka 4.x logs through log4j 2, which reads its own configuration format
# (-Dlog4j2.configurationFile; the log4j 1.x file would be ignored).
write_log4j2() { # node dir
    local nd="$1"
    cat >"$nd/log4j2.properties" <<PROPS
# Generated by deploy/kafka/kafka.sh: everything goes to server.log, nothing to the console.
status = warn
appender.file.type = File
appender.file.name = file
appender.file.fileName = $nd/server.log
appender.file.append = true
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = file
logger.request.name = kafka.request.logger
logger.request.level = WARN
logger.channel.name = kafka.network.RequestChannel\$
logger.channel.level = WARN
logger.authorizer.name = kafka.authorizer.logger
logger.authorizer.level = WARN
logger.clients.name = org.apache.kafka.clients
logger.clients.level = WARN
logger.state.name = state.change.logger
logger.state.level = WARN
PROPS
}

log_opt() { # node dir -> the JVM option that points the logging backend at its file
    if [[ "$MAJOR" == 3 ]]; then
        echo "-Dlog4j.configuration=file:$1/log4j.properties"
    else
        echo "-Dlog4j2.configurationFile=file:$1/log4j2.properties"
    fi
}

format_node() { # node (no-op when already formatted)
    local n="$1" nd
    nd="$(node_dir "$n")"
    [[ -f "$nd/data/meta.properties" ]] && return 0
    local extra=()
    # The passwords go on the JVM's command line for this one short run
    # (StorageTool has no other way); a dev/test broker only.
    [[ "$SECURE" != 1 ]] || mapfile -t extra < <(scram_args)
    # shellcheck disable=SC2086
    if ! "$JAVA" -Xmx256m -XX:TieredStopAtLevel=1 -XX:+UseSerialGC ${KAFKA_OPTS:-} "$(log_opt "$nd")" -cp "$LIBS/*" \
            kafka.tools.StorageTool format -t "$CLUSTER_ID" -c "$nd/server.properties" --ignore-formatted \
            "${extra[@]}" >"$nd/format.log" 2>&1; then
        cat "$nd/format.log" >&2
        die "formatting storage of node $n failed"
    fi
}

launch_node() { # node: start the JVM in its own session, record its pid
    local n="$1" nd
    nd="$(node_dir "$n")"
    rm -f "$nd/pid"
    # The inner shell writes its own pid and then becomes the JVM (exec), so the
    # pid file holds the JVM's pid. setsid: not killed with the caller's group.
    # shellcheck disable=SC2086,SC2016
    setsid bash -c 'echo $$ >"$0/pid"; exec "$@"' "$nd" \
        "$JAVA" $HEAP_OPTS -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -Djava.awt.headless=true \
        ${KAFKA_OPTS:-} "$(node_marker "$n")" "$(log_opt "$nd")" \
        -Dkafka.logs.dir="$nd" -cp "$LIBS/*" kafka.Kafka "$nd/server.properties" \
        </dev/null >"$nd/console.log" 2>&1 &
    disown || true
    # Until the child has written its pid file it is still a copy of this
    # script (no node marker in its command line), and wait_nodes would take
    # it for a node that exited. Wait for the file (a few ms) first.
    local i
    for ((i = 0; i < 200; i++)); do
        [[ -s "$nd/pid" ]] && return 0
        sleep 0.025
    done
    die "node $n: its launcher did not start within 5 s"
}

node_answers() { # node: its own metadata lists itself as an alive broker
    local n="$1" out port sec=()
    port="$(client_port "$n")"
    if [[ "$SECURE" == 1 ]]; then
        # as admin over mTLS (SCRAM of Debian 12's kcat fails against 4.x)
        port="$(mtls_port "$n")"
        sec=(-X security.protocol=ssl -X "ssl.ca.location=$DIR/tls/ca.pem"
            -X "ssl.certificate.location=$DIR/tls/admin.pem" -X "ssl.key.location=$DIR/tls/admin.key")
    fi
    out="$(timeout 5 kcat -L -b "127.0.0.1:$port" "${sec[@]}" -t __kafka_sh_probe -m 2 2>/dev/null || true)"
    grep -Eq "^  broker $n at 127\.0\.0\.1:$port" <<<"$out"
}

show_failure() { # node
    local nd
    nd="$(node_dir "$1")"
    {
        echo "---- tail of $nd/server.log"
        tail -n 30 "$nd/server.log" 2>/dev/null || true
        echo "---- tail of $nd/console.log"
        tail -n 15 "$nd/console.log" 2>/dev/null || true
    } >&2
}

wait_nodes() { # nodes... (deadline START_TIMEOUT)
    local deadline=$((SECONDS + START_TIMEOUT)) n pending=("$@") left
    while :; do
        left=()
        for n in "${pending[@]}"; do
            if ! node_running "$n"; then
                show_failure "$n"
                die "node $n exited during start-up"
            fi
            node_answers "$n" || left+=("$n")
        done
        [[ ${#left[@]} -eq 0 ]] && return 0
        pending=("${left[@]}")
        if (( SECONDS >= deadline )); then
            for n in "${pending[@]}"; do show_failure "$n"; done
            die "node(s) ${pending[*]} did not answer within ${START_TIMEOUT} s"
        fi
        sleep 0.5
    done
}

preflight() {
    command -v kcat >/dev/null || die "kcat not found (run deploy/install-deps.sh)"
    command -v "$JAVA" >/dev/null || die "java not found (run deploy/install-deps.sh)"
    KAFKA_VERSION="$VERSION" "$HERE/fetch-jars.sh" --quiet --dest "$LIBS"
}

start_nodes() { # nodes...
    local n to_start=() pids=() p
    for n in "$@"; do
        if node_running "$n"; then continue; fi
        if port_busy "$(client_port "$n")" || port_busy "$(controller_port "$n")" ||
            { [[ "$SECURE" == 1 ]] && port_busy "$(mtls_port "$n")"; }; then
            die "node $n: port $(client_port "$n"), $(controller_port "$n") or $(mtls_port "$n") is in use by another process"
        fi
        to_start+=("$n")
    done
    if [[ ${#to_start[@]} -eq 0 ]]; then info "already running"; return 0; fi
    if [[ "$SECURE" == 1 ]]; then make_tls; make_secrets; write_clients; fi
    for n in "${to_start[@]}"; do write_node_config "$n"; done
    # Formatting is one JVM per node: run them in parallel.
    for n in "${to_start[@]}"; do format_node "$n" & pids+=($!); done
    for p in "${pids[@]}"; do wait "$p" || exit 1; done
    for n in "${to_start[@]}"; do launch_node "$n"; done
    wait_nodes "${to_start[@]}"
}

# stop_nodes TERM|KILL nodes...: signal, wait (up to STOP_TIMEOUT for TERM), escalate to KILL.
stop_nodes() {
    local sig="$1" n pids all=() alive deadline pid
    shift
    for n in "$@"; do
        pids="$(node_pids "$n")"
        for pid in $pids; do all+=("$pid:$n"); done
    done
    if [[ ${#all[@]} -gt 0 ]]; then
        for pid in "${all[@]}"; do kill "-$sig" "${pid%%:*}" 2>/dev/null || true; done
        if [[ "$sig" == KILL ]]; then deadline=$((SECONDS + 10)); else deadline=$((SECONDS + STOP_TIMEOUT)); fi
        while :; do
            alive=()
            for pid in "${all[@]}"; do
                if is_ours "${pid%%:*}" "${pid##*:}"; then alive+=("$pid"); fi
            done
            [[ ${#alive[@]} -eq 0 ]] && break
            all=("${alive[@]}")
            if (( SECONDS >= deadline )); then
                [[ "$sig" != KILL ]] || die "pid(s) ${all[*]%%:*} survived SIGKILL"
                info "pid(s) ${all[*]%%:*} still running after ${STOP_TIMEOUT} s: SIGKILL"
                for pid in "${all[@]}"; do kill -KILL "${pid%%:*}" 2>/dev/null || true; done
                sig=KILL
                deadline=$((SECONDS + 10))
            fi
            sleep 0.1
        done
    fi
    for n in "$@"; do rm -f "$(node_dir "$n")/pid"; done
}

all_nodes() { seq 1 "$NODES"; }

# ---------------------------------------------------------------- commands
case "$CMD" in
    start)
        preflight
        mkdir -p "$DIR"
        [[ -n "$CLUSTER_ID" ]] || write_env
        t0=$SECONDS
        mapfile -t nodes < <(all_nodes)
        start_nodes "${nodes[@]}"
        mode=""
        [[ "$SECURE" != 1 ]] || mode=", secure mode: clients in $DIR/clients"
        info "$NODES node(s) of Kafka $VERSION up in $DIR ($((SECONDS - t0)) s)$mode"
        print_bootstrap
        ;;
    start-node)
        [[ -n "$CLUSTER_ID" ]] || die "no cluster in $DIR (run start first)"
        preflight
        start_nodes "$NODE"
        print_bootstrap
        ;;
    stop)
        mapfile -t nodes < <(all_nodes)
        stop_nodes TERM "${nodes[@]}"
        ;;
    stop-node) stop_nodes TERM "$NODE" ;;
    kill-node) stop_nodes KILL "$NODE" ;;
    status)
        up=0
        for n in $(all_nodes); do
            pids="$(node_pids "$n")"
            if [[ -n "$pids" ]]; then
                up=$((up + 1))
                echo "node $n: running pid $pids port $(client_port "$n")"
            else
                echo "node $n: stopped"
            fi
        done
        print_bootstrap
        echo "version=$VERSION"
        echo "secure=$SECURE"
        if (( up == NODES )); then exit 0; elif (( up == 0 )); then exit 3; else exit 1; fi
        ;;
    bootstrap) print_bootstrap ;;
    clean)
        mapfile -t nodes < <(all_nodes)
        # stop every node dir found, whatever the recorded shape says
        for nd in "$DIR"/node-*; do
            [[ -d "$nd" ]] || continue
            n="${nd##*-}"
            [[ "$n" =~ ^[0-9]+$ ]] && nodes+=("$n")
        done
        stop_nodes TERM "${nodes[@]}"
        if [[ -d "$DIR" ]]; then
            [[ -f "$CLUSTER_ENV" ]] || [[ -z "$(ls -A "$DIR")" ]] || die "$DIR was not created by kafka.sh; not deleting it"
            rm -rf "$DIR"
            info "removed $DIR"
        fi
        ;;
esac
