# Sourced by fetch-jars.sh, kafka.sh and tests/run.sh: the Kafka versions the
# dev/test stack runs, and what each needs. Not executable on its own.
#
# 3.9.x is the default (Debian 12's librdkafka 2.0.2 can do SASL/SCRAM only
# against 3.x brokers); 4.1.x is selectable with KAFKA_VERSION=4.1.1.

KAFKA_DEFAULT_VERSION=3.9.1
# The 4.x version that the kafka4-labelled tests run against.
KAFKA4_TEST_VERSION=4.1.1

# kafka_check_version V: exits 2 with a message unless V is a version we run.
kafka_check_version() {
    case "$1" in
        3.9.[0-9] | 3.9.[0-9][0-9] | 4.1.[0-9] | 4.1.[0-9][0-9]) return 0 ;;
    esac
    echo "$(basename "$0"): unsupported KAFKA_VERSION=\"$1\": use 3.9.x (default $KAFKA_DEFAULT_VERSION) or 4.1.x (tested: $KAFKA4_TEST_VERSION)" >&2
    exit 2
}

# kafka_major V: 3 or 4.
kafka_major() { echo "${1%%.*}"; }

# kafka_log_profile V: the pom.xml profile with the logging backend of V's broker.
kafka_log_profile() {
    if [[ "$(kafka_major "$1")" == 3 ]]; then echo log4j1; else echo log4j2; fi
}
