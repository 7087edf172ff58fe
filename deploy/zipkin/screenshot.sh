#!/usr/bin/env bash
# Takes a PNG of one trace as Zipkin's UI draws it, with Debian's headless
# Chromium: the picture in the README's tracing section comes from here.
#
#   deploy/zipkin/screenshot.sh [--zipkin URL] [--size WxH] [TRACE_ID] OUT.png
#
# TRACE_ID defaults to the newest trace of order-service that holds spans of
# all three daemons (a whole saga). The trace is waited for (spans arrive in
# batches) for up to --wait seconds, default 30. Exit 0 with the PNG written;
# 1 when no such trace appears or Chromium fails; 2 for bad arguments.
set -euo pipefail

ZIPKIN=${ZIPKIN_URL:-http://127.0.0.1:9411}
SIZE=1400,760
WAIT=30
usage() { sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; }
args=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --zipkin) ZIPKIN=${2:?--zipkin needs a URL}; shift 2 ;;
        --size) SIZE=${2/x/,}; shift 2 ;;
        --wait) WAIT=${2:?--wait needs seconds}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "screenshot: unknown option $1 (see --help)" >&2; exit 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
case ${#args[@]} in
    1) TRACE=""; OUT=${args[0]} ;;
    2) TRACE=${args[0]}; OUT=${args[1]} ;;
    *) usage >&2; exit 2 ;;
esac
[[ -z "$TRACE" || "$TRACE" =~ ^[0-9a-f]{16}([0-9a-f]{16})?$ ]] ||
    { echo "screenshot: trace id must be 16 or 32 lowercase hex digits: $TRACE" >&2; exit 2; }
[[ "$SIZE" =~ ^[0-9]+,[0-9]+$ ]] || { echo "screenshot: --size WxH, e.g. 1400x760" >&2; exit 2; }
CHROMIUM=$(command -v chromium || command -v chromium-browser || true)
[[ -n "$CHROMIUM" ]] || { echo "screenshot: no chromium on PATH (apt-get install chromium)" >&2; exit 1; }
ZIPKIN=${ZIPKIN%/}

# The services of one trace, one per line.
services_of() {
    local json
    json=$(curl -sf --max-time 5 "$ZIPKIN/api/v2/trace/$1") || return 0
    /usr/bin/python3 -c 'import json,sys; print("\n".join(sorted({s["localEndpoint"]["serviceName"] for s in json.load(sys.stdin) if s.get("localEndpoint")})))' <<<"$json"
}
# The newest order-service trace that holds spans of all three daemons.
newest_saga() {
    local json
    json=$(curl -sf --max-time 5 "$ZIPKIN/api/v2/traces?serviceName=order-service&limit=50&lookback=86400000") || return 0
    /usr/bin/python3 -c '
import json, sys
need = {"order-service", "payment-service", "inventory-service"}
best = None
for t in json.load(sys.stdin):
    if need <= {s.get("localEndpoint", {}).get("serviceName") for s in t}:
        start = min(s.get("timestamp", 0) for s in t)
        if best is None or start > best[0]:
            best = (start, t[0]["traceId"])
print(best[1] if best else "")' <<<"$json"
}

deadline=$((SECONDS + WAIT))
while :; do
    if [[ -z "$TRACE" ]]; then
        id=$(newest_saga || true)
    else
        id=$TRACE
        [[ $(services_of "$TRACE" 2>/dev/null | wc -l) -ge 3 ]] || id=""
    fi
    [[ -n "$id" ]] && break
    if ((SECONDS >= deadline)); then
        echo "screenshot: no trace ${TRACE:-of all three daemons} in $ZIPKIN after ${WAIT}s" >&2
        exit 1
    fi
    sleep 1
done

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# --virtual-time-budget lets the single-page UI fetch and lay the trace out
# before the picture is taken; a private profile keeps the run clean.
if ! timeout 90 "$CHROMIUM" --headless --no-sandbox --disable-gpu --hide-scrollbars \
        --user-data-dir="$tmp/profile" --window-size="$SIZE" --virtual-time-budget=15000 \
        --screenshot="$tmp/shot.png" "$ZIPKIN/zipkin/traces/$id" >"$tmp/chromium.log" 2>&1 ||
        [[ ! -s "$tmp/shot.png" ]]; then
    echo "screenshot: chromium failed; its last lines:" >&2
    tail -n 5 "$tmp/chromium.log" >&2
    exit 1
fi
mkdir -p "$(dirname "$OUT")"
mv "$tmp/shot.png" "$OUT"
echo "screenshot: trace $id -> $OUT ($(stat -c %s "$OUT") bytes)"
