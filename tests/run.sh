#!/usr/bin/env bash
# The test command: installs what is missing, builds, and runs every test
# through CTest: unit tests (cmocka, schema checks), then the system tests
# (pytest; they start their own Kafka broker and the three daemons and stop
# them again). Extra arguments go to ctest, e.g. tests/run.sh -L unit.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PRESET=${PRESET:-dev}

case "${1:-}" in
    -h|--help)
        echo "Usage: tests/run.sh [ctest arguments]   (PRESET=dev|asan|ci, default dev;"
        echo "       KAFKA_VERSION=4.1.1 runs the system tests on Kafka 4.1.1; -L kafka4 always does;"
        echo "       -L fresh runs each flow test alone on a fresh broker)"
        exit 0 ;;
esac

"$ROOT/deploy/install-deps.sh"
# The broker of the system tests ($KAFKA_VERSION, default 3.9.1) and the 4.x
# one of the kafka4-labelled tests.
"$ROOT/deploy/kafka/fetch-jars.sh" --quiet
# shellcheck source=../deploy/kafka/versions.sh
. "$ROOT/deploy/kafka/versions.sh"
env -u KAFKA_LIBS_DIR KAFKA_VERSION="$KAFKA4_TEST_VERSION" "$ROOT/deploy/kafka/fetch-jars.sh" --quiet
# The Zipkin server of the tracing test (system_tracing).
"$ROOT/deploy/zipkin/zipkin.sh" fetch >/dev/null
cmake --preset "$PRESET" -S "$ROOT" >/dev/null
cmake --build --preset "$PRESET" -j"$(nproc)"
cd "$ROOT"
exec ctest --preset "$PRESET" "$@"
