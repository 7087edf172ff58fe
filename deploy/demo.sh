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
KAFKA_PORT=${DEMO_KAFKA_PORT:-9092}
WAIT=1

usage() {
    cat <<USAGE
Usage: deploy/demo.sh [--no-wait] [--help]

Builds and starts the whole system locally and shows orders settling:
  Kafka 3.9.1 (KRaft, one node) on 127.0.0.1:$KAFKA_PORT, data in .run/kafka
  PostgreSQL: 127.0.0.1:5432 if it answers, else a private cluster in .run/pg
  order-service :8080, payment-service :8081, inventory-service :8082
  logs in .run/logs/<daemon>.log

  --no-wait   stop everything right after the demo orders settled
Environment: PRESET (CMake preset, default release), DEMO_KAFKA_PORT.
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
"$ROOT/deploy/postgres/pg.sh" create-dbs orders payments inventory

say "starting Kafka"
"$ROOT/deploy/kafka/kafka.sh" start --dir "$RUN/kafka" --port "$KAFKA_PORT"
BOOTSTRAP="127.0.0.1:$KAFKA_PORT"
"$ROOT/deploy/kafka/topics.sh" --bootstrap "$BOOTSTRAP"

say "starting the daemons"
mkdir -p "$RUN/logs"
start_daemon() { # name port database
    local url="postgresql://$PGUSER@$PGHOST:$PGPORT/$3"
    env HTTP_PORT="$2" DATABASE_URL="$url" KAFKA_BOOTSTRAP_SERVERS="$BOOTSTRAP" \
        "$BIN/$1/$1" >"$RUN/logs/$1.log" 2>&1 &
    PIDS+=($!)
}
start_daemon order-service 8080 orders
start_daemon payment-service 8081 payments
start_daemon inventory-service 8082 inventory
for port in 8080 8081 8082; do
    for _ in $(seq 1 300); do
        curl -sf "http://127.0.0.1:$port/readyz" >/dev/null && break
        sleep 0.1
    done
    curl -sf "http://127.0.0.1:$port/readyz" >/dev/null ||
        { echo "demo: daemon on :$port is not ready; see $RUN/logs" >&2; exit 1; }
done

json() { curl -sf -X "$1" "$2" -H 'Content-Type: application/json' ${3:+-d "$3"}; }

say "funding accounts and setting stock"
json PUT http://127.0.0.1:8081/accounts/alice '{"balanceCents": 100000}' >/dev/null
json PUT http://127.0.0.1:8081/accounts/bob '{"balanceCents": 500}' >/dev/null
json PUT http://127.0.0.1:8082/stock/BOOK-1 '{"available": 10}' >/dev/null
json PUT http://127.0.0.1:8082/stock/LAMP-2 '{"available": 1}' >/dev/null

say "placing demo orders"
ORDERS=()
place() { # label body
    local out id
    out=$(json POST http://127.0.0.1:8080/orders "$2")
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
        body=$(curl -sf "http://127.0.0.1:8080/orders/$id" || true)
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
    pay=$(curl -sf "http://127.0.0.1:8081/payments/$id" | sed -n 's/.*"status":"\([A-Z]*\)".*/\1/p')
    res=$(curl -sf "http://127.0.0.1:8082/reservations/$id" | sed -n 's/.*"status":"\([A-Z]*\)".*/\1/p')
    printf '  %-34s payment %-9s stock %s\n' "$label" "${pay:--}" "${res:--}"
done
printf '  balances: alice %s, bob %s; stock: BOOK-1 %s, LAMP-2 %s\n' \
    "$(curl -sf http://127.0.0.1:8081/accounts/alice | sed -n 's/.*"balanceCents":\([0-9]*\).*/\1/p')" \
    "$(curl -sf http://127.0.0.1:8081/accounts/bob | sed -n 's/.*"balanceCents":\([0-9]*\).*/\1/p')" \
    "$(curl -sf http://127.0.0.1:8082/stock/BOOK-1 | sed -n 's/.*"available":\([0-9]*\).*/\1/p')" \
    "$(curl -sf http://127.0.0.1:8082/stock/LAMP-2 | sed -n 's/.*"available":\([0-9]*\).*/\1/p')"

if [[ $WAIT == 1 ]]; then
    say "running: POST http://127.0.0.1:8080/orders; logs in $RUN/logs; Ctrl-C stops everything"
    wait -n "${PIDS[@]}" || true
    echo "demo: a daemon exited; see $RUN/logs" >&2
fi
