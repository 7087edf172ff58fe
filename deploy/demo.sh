#!/usr/bin/env bash
# The run command: sets up everything on a fresh Debian 12 host (packages,
# build, Kafka jars), starts a single-node Kafka (KRaft), PostgreSQL (the local
# one if it runs, else a private one), creates topics and databases, starts the
# three daemons, places demo orders and prints how each settles. Then it keeps
# running until Ctrl-C (or --no-wait) and stops everything it started.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUN="$ROOT/.run"
PRESET=${PRESET:-release}
OFFSET=${DEMO_PORT_OFFSET:-0}
[[ "$OFFSET" =~ ^[0-9]+$ ]] || { echo "demo: DEMO_PORT_OFFSET must be a number" >&2; exit 2; }
KAFKA_PORT=${DEMO_KAFKA_PORT:-$((9092 + OFFSET))}
ORDERS_PORT=$((8080 + OFFSET)) PAYMENTS_PORT=$((8081 + OFFSET)) INVENTORY_PORT=$((8082 + OFFSET))
DB_PREFIX=${DEMO_DB_PREFIX:-}
WAIT=1

usage() {
    cat <<USAGE
Usage: deploy/demo.sh [--no-wait] [--help]

Builds and starts the whole system locally and shows orders settling:
  Kafka 3.9.1 (KRaft, one node) on 127.0.0.1:$KAFKA_PORT, data in .run/kafka
  PostgreSQL: 127.0.0.1:5432 if it answers, else a private cluster in .run/pg
  order-service :$ORDERS_PORT, payment-service :$PAYMENTS_PORT, inventory-service :$INVENTORY_PORT
  databases ${DB_PREFIX}orders, ${DB_PREFIX}payments, ${DB_PREFIX}inventory
  logs in .run/logs/<daemon>.log

  --no-wait   stop everything right after the demo orders settled
Environment: PRESET (CMake preset, default release); DEMO_PORT_OFFSET (added to
every port, default 0) and DEMO_DB_PREFIX (prefix of the database names), so a
second stack can run beside the first; DEMO_KAFKA_PORT (overrides Kafka's port).
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
    "$ROOT/deploy/kafka/kafka.sh" stop --dir "$RUN/kafka" >/dev/null 2>&1 || true
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

say "starting Kafka"
"$ROOT/deploy/kafka/kafka.sh" start --dir "$RUN/kafka" --port "$KAFKA_PORT"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
"$ROOT/deploy/kafka/topics.sh" --bootstrap "$BOOTSTRAP"

say "starting the daemons"
mkdir -p "$RUN/logs"
start_daemon() { # name port database
    local url="postgresql://$PGUSER@$PGHOST:$PGPORT/$DB_PREFIX$3"
    env HTTP_PORT="$2" DATABASE_URL="$url" KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" \
        "$BIN/$1/$1" >"$RUN/logs/$1.log" 2>&1 &
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
        { echo "demo: daemon on :$port is not ready; see $RUN/logs" >&2; exit 1; }
done

json() { curl -sf -X "$1" "$2" -H 'Content-Type: application/json' ${3:+-d "$3"}; }

say "funding accounts and setting stock"
json PUT http://127.0.0.1:$PAYMENTS_PORT/accounts/alice '{"balanceCents": 100000}' >/dev/null
json PUT http://127.0.0.1:$PAYMENTS_PORT/accounts/bob '{"balanceCents": 500}' >/dev/null
json PUT http://127.0.0.1:$INVENTORY_PORT/stock/BOOK-1 '{"available": 10}' >/dev/null
json PUT http://127.0.0.1:$INVENTORY_PORT/stock/LAMP-2 '{"available": 1}' >/dev/null

say "placing demo orders"
ORDERS=()
place() { # label body
    local out id
    out=$(json POST http://127.0.0.1:$ORDERS_PORT/orders "$2")
    id=$(printf '%s' "$out" | sed -n 's/.*"orderId":"\([^"]*\)".*/\1/p')
    printf '  %-34s -> %s\n' "$1" "$id"
    ORDERS+=("$id|$1")
}
place "alice buys 2 books (confirms)" '{"customerId":"alice","sku":"BOOK-1","quantity":2,"amountCents":3000}'
place "alice buys 1 lamp (confirms)" '{"customerId":"alice","sku":"LAMP-2","quantity":1,"amountCents":4500}'
place "bob buys 1 book (no funds)" '{"customerId":"bob","sku":"BOOK-1","quantity":1,"amountCents":1500}'
place "alice buys another lamp (no stock)" '{"customerId":"alice","sku":"LAMP-2","quantity":1,"amountCents":4500}'
place "carol buys 1 book (unknown)" '{"customerId":"carol","sku":"BOOK-1","quantity":1,"amountCents":1500}'

say "waiting for every order to settle"
for entry in "${ORDERS[@]}"; do
    id=${entry%%|*} label=${entry#*|} body=""
    for _ in $(seq 1 300); do
        body=$(curl -sf "http://127.0.0.1:$ORDERS_PORT/orders/$id" || true)
        [[ "$body" == *'"status":"PENDING"'* || -z "$body" ]] || break
        sleep 0.1
    done
    status=$(printf '%s' "$body" | sed -n 's/.*"status":"\([A-Z]*\)".*/\1/p')
    reasons=$(printf '%s' "$body" | grep -o '"reason":"[A-Z_]*"' | cut -d'"' -f4 | paste -sd/ -)
    printf '  %-34s %-9s payment/inventory: %s\n' "$label" "$status" "$reasons"
done

say "compensation: a rejected order keeps no charge and no stock"
sleep 1
for entry in "${ORDERS[@]}"; do
    id=${entry%%|*} label=${entry#*|}
    pay=$(curl -sf "http://127.0.0.1:$PAYMENTS_PORT/payments/$id" | sed -n 's/.*"status":"\([A-Z]*\)".*/\1/p')
    res=$(curl -sf "http://127.0.0.1:$INVENTORY_PORT/reservations/$id" | sed -n 's/.*"status":"\([A-Z]*\)".*/\1/p')
    printf '  %-34s payment %-9s stock %s\n' "$label" "${pay:--}" "${res:--}"
done
printf '  balances: alice %s, bob %s; stock: BOOK-1 %s, LAMP-2 %s\n' \
    "$(curl -sf http://127.0.0.1:$PAYMENTS_PORT/accounts/alice | sed -n 's/.*"balanceCents":\([0-9]*\).*/\1/p')" \
    "$(curl -sf http://127.0.0.1:$PAYMENTS_PORT/accounts/bob | sed -n 's/.*"balanceCents":\([0-9]*\).*/\1/p')" \
    "$(curl -sf http://127.0.0.1:$INVENTORY_PORT/stock/BOOK-1 | sed -n 's/.*"available":\([0-9]*\).*/\1/p')" \
    "$(curl -sf http://127.0.0.1:$INVENTORY_PORT/stock/LAMP-2 | sed -n 's/.*"available":\([0-9]*\).*/\1/p')"

if [[ $WAIT == 1 ]]; then
    say "running: POST http://127.0.0.1:$ORDERS_PORT/orders; logs in $RUN/logs; Ctrl-C stops everything"
    wait -n "${PIDS[@]}" || true
    echo "demo: a daemon exited; see $RUN/logs" >&2
fi
