#!/usr/bin/env bash
# Fetch the Apache Kafka 3.9.1 jars (broker, tools, slf4j/reload4j binding and
# all runtime dependencies) from Maven Central into <root>/.run/kafka-libs.
# Idempotent: a marker file records the hash of pom.xml; when it matches, the
# script does nothing. Safe to run concurrently (flock).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
POM="$HERE/pom.xml"
DEST="${KAFKA_LIBS_DIR:-$ROOT/.run/kafka-libs}"
QUIET=0

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--dest DIR] [--quiet] [--help]

Copies the Kafka jars listed in deploy/kafka/pom.xml (and their runtime
dependencies) into DIR with 'mvn dependency:copy-dependencies'.
Skips the download when DIR already holds a complete copy for the same pom.xml.

  --dest DIR   target folder (default: \$KAFKA_LIBS_DIR or <root>/.run/kafka-libs)
  --quiet      print nothing on success
  --help       this text

Prints the folder on success: libs=DIR
USAGE
}

while [[ $# -gt 0 ]]; do
    case "$1" in
        --dest) DEST="${2:?--dest needs a folder}"; shift 2 ;;
        --quiet) QUIET=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "fetch-jars: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

command -v mvn >/dev/null || { echo "fetch-jars: mvn not found (run deploy/install-deps.sh)" >&2; exit 1; }

DEST="${DEST%/}"
MARKER="$DEST/.complete"
want="$(sha256sum "$POM" | cut -d' ' -f1)"

is_complete() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$want" ]] \
        && compgen -G "$DEST/kafka_2.13-*.jar" >/dev/null \
        && compgen -G "$DEST/kafka-tools-*.jar" >/dev/null
}

done_msg() {
    [[ $QUIET == 1 ]] || echo "libs=$DEST"
}

if is_complete; then done_msg; exit 0; fi

mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"
flock 9
# Another process may have finished while we waited for the lock.
if is_complete; then done_msg; exit 0; fi

tmp="$(mktemp -d "$DEST.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/mvn.log"
start=$SECONDS
if ! mvn -q -B -f "$POM" dependency:copy-dependencies \
        -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$log" 2>&1; then
    echo "fetch-jars: mvn failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "$want" >"$tmp/libs/.complete"
rm -rf "$DEST"
mv "$tmp/libs" "$DEST"
[[ $QUIET == 1 ]] || echo "fetch-jars: $(find "$DEST" -name '*.jar' | wc -l) jars in $((SECONDS - start)) s" >&2
done_msg
