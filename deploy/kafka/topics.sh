#!/usr/bin/env bash
# Create the system's Kafka topics (orders.created, payments.completed,
# inventory.reserved and each <topic>.DLT) if they are missing, and wait until
# they all have leaders. Idempotent. Thin wrapper around topics.py, which needs
# Debian's /usr/bin/python3 with python3-confluent-kafka (not a pyenv/venv python).
#
# Usage: topics.sh [--bootstrap HOST:PORT[,...]] [--partitions 6] [--replication-factor 1]
#                  [--min-insync 1] [--timeout 60] [TOPIC...]   (--help for details)
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${TOPICS_PYTHON:-/usr/bin/python3}"

if ! "$PY" -c 'import confluent_kafka' 2>/dev/null; then
    echo "topics.sh: $PY cannot import confluent_kafka (run deploy/install-deps.sh)" >&2
    exit 1
fi
exec "$PY" "$HERE/topics.py" "$@"
