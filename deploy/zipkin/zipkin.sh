#!/usr/bin/env bash
# Run a local Zipkin server (io.zipkin:zipkin-server, the "exec" jar from
# Maven Central, in-memory storage) for development and the tracing tests.
# Idempotent: 'fetch' with the jar present does nothing, 'start' on a running
# server prints its URL, 'stop' on a stopped one does nothing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
VERSION="${ZIPKIN_VERSION:-3.4.2}"
JAVA="${JAVA:-java}"
HEAP_OPTS="${ZIPKIN_HEAP_OPTS:--Xmx256m -Xms64m}"
# In-memory storage keeps at most this many spans (oldest traces evicted):
# Zipkin's default, 500000, does not fit the 256 MiB heap (OutOfMemoryError
# under a benchmark at 100 % sampling).
MAX_SPANS="${ZIPKIN_MAX_SPANS:-100000}"
START_TIMEOUT="${ZIPKIN_START_TIMEOUT:-90}"
STOP_TIMEOUT="${ZIPKIN_STOP_TIMEOUT:-20}"
M2="${MAVEN_REPO:-$HOME/.m2/repository}"
JAR="$M2/io/zipkin/zipkin-server/$VERSION/zipkin-server-$VERSION-exec.jar"
DIR="$ROOT/.run/zipkin"
PORT=9411

usage() {
    cat <<USAGE
Usage: $(basename "$0") COMMAND [--port PORT] [--dir DIR]

Commands:
  fetch      fetch io.zipkin:zipkin-server:$VERSION:jar:exec with mvn into the local
             Maven repository (skipped when present); prints jar=PATH
  start      fetch if needed, start the server on PORT (every address) unless it runs,
             wait until /health answers UP (deadline ${START_TIMEOUT} s); prints url=...
  stop       SIGTERM the server, SIGKILL after ${STOP_TIMEOUT} s
  status     exit 0 and print url=... when it runs, exit 3 when not

Options:
  --port P   HTTP port (default 9411): the UI at /zipkin/, the API at /api/v2/
  --dir DIR  state folder: pid, port, zipkin.log (default <root>/.run/zipkin)
  --help     this text

Environment: ZIPKIN_VERSION (default 3.4.2), ZIPKIN_HEAP_OPTS (default
"-Xmx256m -Xms64m"), ZIPKIN_MAX_SPANS (spans kept in memory, default 100000), JAVA, MAVEN_REPO, ZIPKIN_START_TIMEOUT, ZIPKIN_STOP_TIMEOUT.
Spans are kept in memory only: a restart forgets them.
USAGE
}

die() { echo "zipkin.sh: $*" >&2; exit 1; }

[[ $# -ge 1 ]] || { usage >&2; exit 2; }
CMD="$1"; shift
while [[ $# -gt 0 ]]; do
    case "$1" in
        --port) PORT="${2:?--port needs a number}"; shift 2 ;;
        --dir) DIR="${2:?--dir needs a folder}"; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) echo "zipkin.sh: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done
[[ "$PORT" =~ ^[0-9]+$ ]] && (( PORT >= 1 && PORT <= 65535 )) || die "invalid --port $PORT"

# Our JVM carries -Dorders.zipkin.dir=<DIR> on its command line.
is_ours() { # pid
    local a args=()
    [[ -r "/proc/$1/cmdline" ]] || return 1
    mapfile -d '' -t args <"/proc/$1/cmdline" 2>/dev/null || return 1
    for a in "${args[@]}"; do [[ "$a" == "-Dorders.zipkin.dir=$DIR" ]] && return 0; done
    return 1
}

running_pid() {
    local pid
    pid="$(cat "$DIR/pid" 2>/dev/null || true)"
    if [[ "$pid" =~ ^[0-9]+$ ]] && is_ours "$pid"; then echo "$pid"; fi
}

healthy() { # port
    curl -fsS --max-time 2 "http://127.0.0.1:$1/health" 2>/dev/null | grep -q '"UP"'
}

fetch() {
    if [[ ! -s "$JAR" ]]; then
        command -v mvn >/dev/null || die "mvn not found (run deploy/install-deps.sh)"
        mvn -q -B dependency:get "-Dartifact=io.zipkin:zipkin-server:$VERSION:jar:exec" \
            -Dtransitive=false >&2 || die "mvn could not fetch zipkin-server $VERSION"
        [[ -s "$JAR" ]] || die "mvn ran but $JAR is missing"
    fi
    echo "jar=$JAR"
}

start() {
    local pid deadline
    pid="$(running_pid)"
    if [[ -n "$pid" ]]; then
        echo "url=http://127.0.0.1:$(cat "$DIR/port")"
        return
    fi
    command -v "$JAVA" >/dev/null || die "java not found (run deploy/install-deps.sh)"
    command -v curl >/dev/null || die "curl not found"
    fetch >/dev/null
    if curl -sS --max-time 1 -o /dev/null "http://127.0.0.1:$PORT/" 2>/dev/null; then
        die "port $PORT is in use by another process"
    fi
    mkdir -p "$DIR"
    echo "$PORT" >"$DIR/port"
    # shellcheck disable=SC2086 # HEAP_OPTS is a list of options
    setsid "$JAVA" $HEAP_OPTS "-Dorders.zipkin.dir=$DIR" -jar "$JAR" \
        --server.port="$PORT" --zipkin.storage.mem.max-spans="$MAX_SPANS" \
        </dev/null >"$DIR/zipkin.log" 2>&1 &
    echo $! >"$DIR/pid"
    deadline=$((SECONDS + START_TIMEOUT))
    until healthy "$PORT"; do
        if ! is_ours "$(cat "$DIR/pid")"; then
            tail -n 30 "$DIR/zipkin.log" >&2 || true
            die "zipkin exited during start (log: $DIR/zipkin.log)"
        fi
        if (( SECONDS >= deadline )); then
            tail -n 30 "$DIR/zipkin.log" >&2 || true
            stop >/dev/null
            die "zipkin did not answer on port $PORT within ${START_TIMEOUT} s"
        fi
        sleep 0.5
    done
    echo "url=http://127.0.0.1:$PORT"
}

stop() {
    local pid deadline
    pid="$(running_pid)"
    [[ -n "$pid" ]] || { rm -f "$DIR/pid"; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_TIMEOUT))
    while is_ours "$pid"; do
        if (( SECONDS >= deadline )); then
            kill -KILL "$pid" 2>/dev/null || true
            sleep 0.5
            break
        fi
        sleep 0.2
    done
    rm -f "$DIR/pid"
}

case "$CMD" in
    fetch) fetch ;;
    start) start ;;
    stop) stop ;;
    status)
        if [[ -n "$(running_pid)" ]]; then echo "url=http://127.0.0.1:$(cat "$DIR/port")"; else exit 3; fi ;;
    -h|--help|help) usage ;;
    *) echo "zipkin.sh: unknown command: $CMD (see --help)" >&2; exit 2 ;;
esac
