#!/usr/bin/env bash
# Fetch the Apache Kafka jars of one version (broker, tools, the slf4j binding
# of its logging backend and all runtime dependencies) from Maven Central into
# <root>/.run/kafka-libs/<version>. KAFKA_VERSION picks the version: 3.9.x
# (default 3.9.1, logging via reload4j) or 4.1.x (log4j 2); versions.sh lists
# them. Idempotent: a marker file records the hash of pom.xml and the version;
# when it matches, the script does nothing. Safe to run concurrently (flock).
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(cd "$HERE/../.." && pwd)"
# shellcheck source=versions.sh
. "$HERE/versions.sh"
POM="$HERE/pom.xml"
VERSION="${KAFKA_VERSION:-$KAFKA_DEFAULT_VERSION}"
DEST="${KAFKA_LIBS_DIR:-}"
QUIET=0

usage() {
    cat <<USAGE
Usage: [KAFKA_VERSION=V] $(basename "$0") [--dest DIR] [--quiet] [--help]

Copies the jars of Kafka V listed in deploy/kafka/pom.xml (and their runtime
dependencies) into DIR with 'mvn dependency:copy-dependencies'.
Skips the download when DIR already holds a complete copy for the same
pom.xml and version.

  KAFKA_VERSION  3.9.x (default $KAFKA_DEFAULT_VERSION) or 4.1.x (tested: $KAFKA4_TEST_VERSION)
  --dest DIR     target folder (default: \$KAFKA_LIBS_DIR or <root>/.run/kafka-libs/V)
  --quiet        print nothing on success
  --help         this text

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

kafka_check_version "$VERSION"
PROFILE="$(kafka_log_profile "$VERSION")"
LIBS_ROOT="$ROOT/.run/kafka-libs"
DEST="${DEST:-$LIBS_ROOT/$VERSION}"

DEST="${DEST%/}"
MARKER="$DEST/.complete"
want="$( { cat "$POM"; echo "kafka.version=$VERSION profile=$PROFILE"; } | sha256sum | cut -d' ' -f1)"

is_complete() {
    [[ -f "$MARKER" ]] && [[ "$(cat "$MARKER")" == "$want" ]] \
        && [[ -f "$DEST/kafka_2.13-$VERSION.jar" && -f "$DEST/kafka-tools-$VERSION.jar" ]]
}

done_msg() {
    [[ $QUIET == 1 ]] || echo "libs=$DEST"
}

# Before versions had folders the jars of 3.9.1 lay in .run/kafka-libs itself.
if [[ "$(dirname "$DEST")" == "$LIBS_ROOT" && -f "$LIBS_ROOT/.complete" ]]; then
    rm -f "$LIBS_ROOT"/*.jar "$LIBS_ROOT/.complete"
fi
if is_complete; then done_msg; exit 0; fi

command -v mvn >/dev/null || { echo "fetch-jars: mvn not found (run deploy/install-deps.sh)" >&2; exit 1; }
mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"
flock 9
# Another process may have finished while we waited for the lock.
if is_complete; then done_msg; exit 0; fi

tmp="$(mktemp -d "$DEST.tmp.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
log="$tmp/mvn.log"
start=$SECONDS
if ! mvn -q -B -f "$POM" dependency:copy-dependencies "-Dkafka.version=$VERSION" "-P$PROFILE" \
        -DincludeScope=runtime -DoutputDirectory="$tmp/libs" >"$log" 2>&1; then
    echo "fetch-jars: mvn failed:" >&2
    tail -n 40 "$log" >&2
    exit 1
fi
echo "$want" >"$tmp/libs/.complete"
rm -rf "$DEST"
mv "$tmp/libs" "$DEST"
[[ $QUIET == 1 ]] || echo "fetch-jars: Kafka $VERSION: $(find "$DEST" -name '*.jar' | wc -l) jars in $((SECONDS - start)) s" >&2
done_msg
