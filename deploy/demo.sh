#!/usr/bin/env bash
# The run command: sets up everything on a fresh Debian 12 host (packages,
# build, Kafka jars), starts a single-node Kafka (KRaft), PostgreSQL (the local
# one if it runs, else a private one), creates topics and databases, starts the
# three daemons, places demo orders and prints how each settles. Then it keeps
# running until Ctrl-C (or --no-wait) and stops everything it started.
# The HTTP API runs with bearer tokens: each run makes two new ones with
# orderctl token new, ORDERS_TOKEN (orders:write, orders:read) and ADMIN_TOKEN
# (every scope), writes them to $STATE/tokens.env and their hashes to
# $STATE/tokens (the daemons' HTTP_TOKENS_FILE), both mode 0600.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN="$ROOT/.run"
PRESET=${PRESET:-release}
OFFSET=${DEMO_PORT_OFFSET:-0}
[[ "$OFFSET" =~ ^[0-9]+$ ]] || { echo "demo: DEMO_PORT_OFFSET must be a number" >&2; exit 2; }
KAFKA_PORT=${DEMO_KAFKA_PORT:-$((9092 + OFFSET))}
ORDERS_PORT=$((8080 + OFFSET)) PAYMENTS_PORT=$((8081 + OFFSET)) INVENTORY_PORT=$((8082 + OFFSET))
DB_PREFIX=${DEMO_DB_PREFIX:-}
[[ "$DB_PREFIX" =~ ^[a-z0-9_]*$ ]] || { echo "demo: DEMO_DB_PREFIX may hold only a-z, 0-9 and _" >&2; exit 2; }
STATE=${DEMO_STATE_DIR:-$RUN}
# shellcheck source=kafka/versions.sh
. "$ROOT/deploy/kafka/versions.sh"
KAFKA_VERSION=${KAFKA_VERSION:-$KAFKA_DEFAULT_VERSION}
kafka_check_version "$KAFKA_VERSION"
export KAFKA_VERSION
# The demo's broker is a throw-away of its own: one data folder per Kafka
# version, so that a run with another KAFKA_VERSION than the last one finds
# its own cluster (kafka.sh refuses to start a folder of another version).
KAFKA_DIR="$STATE/kafka-$KAFKA_VERSION"
SETTLE_TIMEOUT=30 # seconds an order may take to settle, and its compensation
WAIT=1

usage() {
    cat <<USAGE
Usage: deploy/demo.sh [--no-wait] [--help]

Builds and starts the whole system locally and shows orders settling:
  Kafka $KAFKA_VERSION (KRaft, one node) on 127.0.0.1:$KAFKA_PORT, data in $KAFKA_DIR
  PostgreSQL: 127.0.0.1:5432 if it answers, else a private cluster in .run/pg
  order-service :$ORDERS_PORT, payment-service :$PAYMENTS_PORT, inventory-service :$INVENTORY_PORT
  databases ${DB_PREFIX}orders, ${DB_PREFIX}payments, ${DB_PREFIX}inventory
  logs in $STATE/logs/<daemon>.log
  bearer tokens in $STATE/tokens.env (ORDERS_TOKEN, ADMIN_TOKEN; new every run),
  their hashes in $STATE/tokens (the daemons' HTTP_TOKENS_FILE)

  --no-wait   stop everything right after the demo orders settled
Environment: PRESET (CMake preset, default release); DEMO_PORT_OFFSET (added to
every port, default 0) and DEMO_DB_PREFIX (prefix of the database names), so a
second stack can run beside the first; DEMO_KAFKA_PORT (overrides Kafka's port);
DEMO_STATE_DIR (Kafka's data and the logs, default .run); KAFKA_VERSION (the
broker: $KAFKA_DEFAULT_VERSION by default, or 4.1.x, see deploy/kafka/kafka.sh --help;
each version keeps its data in a folder of its own, DEMO_STATE_DIR/kafka-VERSION,
so runs may switch versions either way).
USAGE
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --no-wait) WAIT=0; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "demo: unknown argument $1 (see --help)" >&2; exit 2 ;;
    esac
done

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }

PIDS=()
cleanup() {
    trap - EXIT INT TERM
    say "stopping daemons, Kafka and (if private) PostgreSQL"
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    "$ROOT/deploy/kafka/kafka.sh" stop --dir "$KAFKA_DIR" >/dev/null 2>&1 || true
    "$ROOT/deploy/postgres/pg.sh" stop >/dev/null 2>&1 || true
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "installing missing packages"
"$ROOT/deploy/install-deps.sh"

say "building (preset $PRESET)"
cmake --preset "$PRESET" -S "$ROOT" >/dev/null
cmake --build --preset "$PRESET" -j"$(nproc)" >/dev/null
BIN="$ROOT/build/$PRESET"

say "starting PostgreSQL and creating databases"
set -a
eval "$("$ROOT/deploy/postgres/pg.sh" ensure)"
set +a
"$ROOT/deploy/postgres/pg.sh" create-dbs ${DB_PREFIX:+--prefix "$DB_PREFIX"} orders payments inventory

say "starting Kafka $KAFKA_VERSION (data in $KAFKA_DIR)"
"$ROOT/deploy/kafka/kafka.sh" start --dir "$KAFKA_DIR" --port "$KAFKA_PORT"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
"$ROOT/deploy/kafka/topics.sh" --bootstrap "$BOOTSTRAP"

say "making bearer tokens"
mkdir -p "$STATE"
new_token() { # name scopes -> two lines: the token, its token-file line
    "$BIN/tools/orderctl" token new --name "$1" --scope "$2" 2>/dev/null
}
{ read -r ORDERS_TOKEN; read -r orders_line; } < <(new_token demo-orders orders:write,orders:read)
{ read -r ADMIN_TOKEN; read -r admin_line; } < <(new_token demo-admin \
    orders:write,orders:read,payments:read,payments:admin,inventory:read,inventory:admin,metrics:read)
[[ "$ORDERS_TOKEN" == ot_* && "$ADMIN_TOKEN" == ot_* ]] ||
    { echo "demo: orderctl token new failed" >&2; exit 1; }
(
    umask 077
    rm -f "$STATE/tokens" "$STATE/tokens.env"
    printf '# <sha256 of the token> <name> <scopes>; made by deploy/demo.sh\n%s\n%s\n' \
        "$orders_line" "$admin_line" >"$STATE/tokens"
    printf 'ORDERS_TOKEN=%s\nADMIN_TOKEN=%s\n' "$ORDERS_TOKEN" "$ADMIN_TOKEN" >"$STATE/tokens.env"
)
printf '  %s: ORDERS_TOKEN (orders:write,orders:read), ADMIN_TOKEN (every scope)\n' \
    "$STATE/tokens.env"

say "starting the daemons"
mkdir -p "$STATE/logs"
start_daemon() { # name port database
    # The database's own role (pg.sh create-dbs): owner of that database only.
    local url="postgresql://$DB_PREFIX$3@$PGHOST:$PGPORT/$DB_PREFIX$3"
    env HTTP_PORT="$2" DATABASE_URL="$url" KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" \
        HTTP_TOKENS_FILE="$STATE/tokens" \
        "$BIN/$1/$1" >"$STATE/logs/$1.log" 2>&1 &
    PIDS+=($!)
}
start_daemon order-service "$ORDERS_PORT" orders
start_daemon payment-service "$PAYMENTS_PORT" payments
start_daemon inventory-service "$INVENTORY_PORT" inventory
for port in "$ORDERS_PORT" "$PAYMENTS_PORT" "$INVENTORY_PORT"; do
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null ||
        { echo "demo: daemon on :$port is not ready; see $STATE/logs" >&2; exit 1; }
done

# The token goes in a header read from a pipe, not on curl's command line
# (which every local user can read in /proc).
auth() { printf 'Authorization: Bearer %s' "$1"; }
get() { curl -sf -H @<(auth "$ADMIN_TOKEN") "$1"; } # url
json() { # method url [body]; POST /orders and GET /orders with ORDERS_TOKEN, the rest ADMIN_TOKEN
    local tok=$ADMIN_TOKEN
    [[ "$2" == "http://127.0.0.1:$ORDERS_PORT/"* ]] && tok=$ORDERS_TOKEN
    curl -sf -X "$1" "$2" -H 'Content-Type: application/json' -H @<(auth "$tok") ${3:+-d "$3"}
}

field() { # name json -> the value (string or number) of "name" in json (of the last, if several)
    printf '%s' "$2" | sed -n "s/.*\"$1\":\"\{0,1\}\([A-Za-z0-9_.-]*\).*/\1/p"
}

say "funding accounts and setting stock"
accounts="" stock=""
for a in alice:100000 bob:500; do
    json PUT "http://127.0.0.1:$PAYMENTS_PORT/accounts/${a%%:*}" "{\"balanceCents\": ${a#*:}}" >/dev/null
    accounts+="${accounts:+, }${a%%:*} ${a#*:}"
done
for a in BOOK-1:10 LAMP-2:1; do
    json PUT "http://127.0.0.1:$INVENTORY_PORT/stock/${a%%:*}" "{\"available\": ${a#*:}}" >/dev/null
    stock+="${stock:+, }${a%%:*} ${a#*:}"
done
printf '  accounts: %s; stock: %s\n' "$accounts" "$stock"

ORDERS=()
place() { # label customer sku quantity amountCents
    local out id
    out=$(json POST "http://127.0.0.1:$ORDERS_PORT/orders" \
        "{\"customerId\":\"$2\",\"sku\":\"$3\",\"quantity\":$4,\"amountCents\":$5}")
    id=$(field orderId "$out")
    [[ -n "$id" ]] || { echo "demo: POST /orders answered: $out" >&2; exit 1; }
    printf '  %-34s -> %s  (%s, %s x %s, %s cents)\n' "$1" "$id" "$2" "$4" "$3" "$5"
    ORDERS+=("$id|$1")
}

# wait_settled id: waits until the order is CONFIRMED or REJECTED and both
# payment and inventory outcomes are in; prints the order's JSON.
wait_settled() {
    local body="" deadline=$((SECONDS + SETTLE_TIMEOUT))
    while ((SECONDS < deadline)); do
        body=$(curl -sf -H @<(auth "$ORDERS_TOKEN") "http://127.0.0.1:$ORDERS_PORT/orders/$1" || true)
        if [[ "$body" == *'"status":"CONFIRMED"'* || "$body" == *'"status":"REJECTED"'* ]] &&
            [[ "$body" == *'"payment":{'* && "$body" == *'"inventory":{'* ]]; then
            printf '%s' "$body"
            return 0
        fi
        sleep 0.1
    done
    echo "demo: order $1 did not settle within $SETTLE_TIMEOUT s (last: ${body:-no answer}); see $STATE/logs" >&2
    exit 1
}

# compensated id status: waits until a settled order's payment and stock are
# final (confirmed: charged and reserved; rejected: neither charged nor
# reserved, i.e. declined, refunded, released or cancelled); prints "PAY RES".
compensated() {
    local pay res deadline=$((SECONDS + SETTLE_TIMEOUT))
    while ((SECONDS < deadline)); do
        pay=$(field status "$(get "http://127.0.0.1:$PAYMENTS_PORT/payments/$1" || true)")
        res=$(field status "$(get "http://127.0.0.1:$INVENTORY_PORT/reservations/$1" || true)")
        if [[ "$2" == CONFIRMED ]]; then
            [[ "$pay" == CHARGED && "$res" == RESERVED ]] && { echo "$pay $res"; return 0; }
        elif [[ -n "$pay" && -n "$res" && "$pay" != CHARGED && "$res" != RESERVED ]]; then
            echo "$pay $res"
            return 0
        fi
        sleep 0.1
    done
    echo "demo: order $1 ($2) not compensated within $SETTLE_TIMEOUT s (payment ${pay:--}, stock ${res:--})" >&2
    exit 1
}

say "placing demo orders"
place "alice buys 2 books (confirms)" alice BOOK-1 2 3000
place "alice buys 1 lamp (confirms)" alice LAMP-2 1 4500
place "bob buys 1 book (no funds)" bob BOOK-1 1 1500
# There is one lamp. Orders of different ids go to different partitions and
# race for it, so the second lamp order is placed once the first has settled:
# then the first has the lamp and the second finds none, on every run.
wait_settled "${ORDERS[1]%%|*}" >/dev/null
place "alice buys another lamp (no stock)" alice LAMP-2 1 4500
place "carol buys 1 book (unknown)" carol BOOK-1 1 1500

say "waiting for every order to settle"
STATUS=()
for entry in "${ORDERS[@]}"; do
    id=${entry%%|*} label=${entry#*|}
    body=$(wait_settled "$id") || exit 1
    status=$(field status "$body")
    reasons=$(printf '%s' "$body" | grep -o '"reason":"[A-Z_]*"' | cut -d'"' -f4 | paste -sd/ -)
    printf '  %-34s %-9s payment/inventory: %s\n' "$label" "$status" "$reasons"
    STATUS+=("$status")
done

say "compensation: a rejected order keeps no charge and no stock"
i=0
for entry in "${ORDERS[@]}"; do
    id=${entry%%|*} label=${entry#*|}
    read -r pay res < <(compensated "$id" "${STATUS[$i]}")
    [[ -n "$pay" ]] || exit 1
    printf '  %-34s payment %-9s stock %s\n' "$label" "$pay" "$res"
    i=$((i + 1))
done
balance() { field balanceCents "$(get "http://127.0.0.1:$PAYMENTS_PORT/accounts/$1")"; }
available() { field available "$(get "http://127.0.0.1:$INVENTORY_PORT/stock/$1")"; }
printf '  balances: alice %s, bob %s; stock: BOOK-1 %s, LAMP-2 %s\n' \
    "$(balance alice)" "$(balance bob)" "$(available BOOK-1)" "$(available LAMP-2)"

# One order's story and the stuck orders, as an operator asks for them
# (orderctl reads the daemons' HTTP APIs and the dead-letter topics).
URLS=(--orders-url "http://127.0.0.1:$ORDERS_PORT" --payments-url "http://127.0.0.1:$PAYMENTS_PORT"
      --inventory-url "http://127.0.0.1:$INVENTORY_PORT")
say "one order's story: orderctl order ${ORDERS[2]%%|*} (${ORDERS[2]#*|})"
ORDERCTL_TOKEN="$ADMIN_TOKEN" "$BIN/tools/orderctl" order "${ORDERS[2]%%|*}" \
    --bootstrap "$BOOTSTRAP" "${URLS[@]}" | sed 's/^/  /'
say "stuck orders: orderctl orders stuck --older-than 1m"
set +e
stuck=$(ORDERCTL_TOKEN="$ORDERS_TOKEN" "$BIN/tools/orderctl" orders stuck --older-than 1m "${URLS[@]}")
rc=$?
set -e
printf '%s\n' "$stuck" | sed 's/^/  /'
((rc <= 1)) || { echo "demo: orderctl orders stuck exited $rc" >&2; exit 1; }

say "using the API: every request but /healthz, /readyz and /metrics needs a bearer token"
cat <<HOWTO
  set -a; . $STATE/tokens.env; set +a
  curl -H "Authorization: Bearer \$ORDERS_TOKEN" http://127.0.0.1:$ORDERS_PORT/orders/<orderId>
  $BIN/tools/orders-bench --url http://127.0.0.1:$ORDERS_PORT \\
      --payment-url http://127.0.0.1:$PAYMENTS_PORT --inventory-url http://127.0.0.1:$INVENTORY_PORT \\
      --orders-db "host=$PGHOST port=$PGPORT dbname=${DB_PREFIX}orders"
  (no token: 401; a token without the scope, e.g. ORDERS_TOKEN on PUT /accounts: 403)
  ORDERCTL_TOKEN=\$ADMIN_TOKEN $BIN/tools/orderctl order <orderId> --bootstrap $BOOTSTRAP \\
      --orders-url http://127.0.0.1:$ORDERS_PORT --payments-url http://127.0.0.1:$PAYMENTS_PORT \\
      --inventory-url http://127.0.0.1:$INVENTORY_PORT
  ORDERCTL_TOKEN=\$ORDERS_TOKEN $BIN/tools/orderctl orders stuck --older-than 5m \\
      --orders-url http://127.0.0.1:$ORDERS_PORT
HOWTO

if [[ $WAIT == 1 ]]; then
    say "running: POST http://127.0.0.1:$ORDERS_PORT/orders; logs in $STATE/logs; Ctrl-C stops everything"
    wait -n "${PIDS[@]}" || true
    echo "demo: a daemon exited; see $STATE/logs" >&2
fi
