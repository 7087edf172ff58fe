#!/usr/bin/env bash
# Install the Debian 12 packages that building, running and testing the order
# system need, and only those that are missing (checked with dpkg-query first;
# 'apt-get update' runs only when something is missing). Idempotent; run as root.
# Prints one summary line.
set -euo pipefail

PACKAGES=(
    build-essential cmake pkg-config
    librdkafka-dev libjansson-dev libpq-dev uuid-dev libmicrohttpd-dev libssl-dev libsystemd-dev
    libcmocka-dev openssl
    postgresql postgresql-client
    maven kcat
    python3-confluent-kafka python3-psycopg python3-pytest python3-requests python3-jsonschema
    curl procps
    systemd prometheus clang-format
    chromium fonts-liberation
)
# --packaging: what deploy/package.sh needs on top (debian/control's
# Build-Depends are the C libraries above); --container: what the package
# test's systemd container needs (without recommends: libnss-mymachines would
# edit the host's /etc/nsswitch.conf).
PACKAGING=(debhelper dpkg-dev help2man lintian)
CONTAINER=(debootstrap systemd-container)

usage() {
    cat <<USAGE
Usage: $(basename "$0") [--check] [--packaging] [--container] [--help]

Installs the missing ones of: ${PACKAGES[*]}
and default-jre-headless when no 'java' is on PATH.

  --check       only report; exit 1 when something is missing
  --packaging   also ${PACKAGING[*]} (deploy/package.sh)
  --container   also ${CONTAINER[*]} (the package test's systemd container)
  --help    this text
USAGE
}

CHECK=0
EXTRA=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --check) CHECK=1; shift ;;
        --packaging) EXTRA+=("${PACKAGING[@]}"); shift ;;
        --container) EXTRA+=("${CONTAINER[@]}"); shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "install-deps: unknown argument: $1 (see --help)" >&2; exit 2 ;;
    esac
done

wanted=("${PACKAGES[@]}" "${EXTRA[@]}")
command -v java >/dev/null 2>&1 || wanted+=(default-jre-headless)

missing=()
for p in "${wanted[@]}"; do
    status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
    [[ "$status" == installed ]] || missing+=("$p")
done

if [[ ${#missing[@]} -eq 0 ]]; then
    echo "install-deps: all ${#wanted[@]} packages present"
    exit 0
fi
if [[ $CHECK == 1 ]]; then
    echo "install-deps: missing: ${missing[*]}"
    exit 1
fi
[[ $(id -u) == 0 ]] || { echo "install-deps: missing ${missing[*]}; run as root to install" >&2; exit 1; }

export DEBIAN_FRONTEND=noninteractive
log="$(mktemp /tmp/install-deps.XXXXXX.log)"
apt_opts=(-y -q -o DPkg::Lock::Timeout=300 -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold)
start=$SECONDS
# The postgresql package creates and starts a "main" cluster; when port 5432 is
# taken already, pg_createcluster picks the next free port, so this cannot clash.
if ! { apt-get update -q && apt-get install "${apt_opts[@]}" --no-install-recommends "${missing[@]}"; } >"$log" 2>&1; then
    echo "install-deps: apt-get failed; last lines of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
fi
rm -f "$log"
echo "install-deps: installed ${#missing[@]} package(s) in $((SECONDS - start)) s: ${missing[*]}"
