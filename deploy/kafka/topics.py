#!/usr/bin/python3
"""Create the system's Kafka topics (and their .DLT dead-letter topics) if missing,
then wait until every partition has a leader. Idempotent. Run by topics.sh with
Debian's /usr/bin/python3 (python3-confluent-kafka)."""

import argparse
import os
import sys
import time

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import AdminClient, NewTopic

DEFAULT_TOPICS = ["orders.created", "payments.completed", "inventory.reserved"]


def parse_args():
    p = argparse.ArgumentParser(
        prog="topics.sh",
        description="Create the topics orders.created, payments.completed, inventory.reserved "
        "and each <topic>.DLT (same partition count) if they are missing, then wait until "
        "all partitions have leaders. Existing topics are left as they are.",
        epilog="Example: topics.sh --bootstrap 127.0.0.1:29092 --replication-factor 3 --min-insync 2",
    )
    p.add_argument("--bootstrap", default=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"),
                   help="bootstrap servers (default: $KAFKA_BOOTSTRAP_SERVERS or 127.0.0.1:9092)")
    p.add_argument("--partitions", type=int, default=6, help="partitions per topic (default 6)")
    p.add_argument("--replication-factor", type=int, default=1, help="replication factor (default 1)")
    p.add_argument("--min-insync", type=int, default=1, help="min.insync.replicas (default 1)")
    p.add_argument("--timeout", type=float, default=60, help="overall deadline in seconds (default 60)")
    p.add_argument("topics", nargs="*", metavar="TOPIC",
                   help="base topic names (default: %s); each gets a TOPIC.DLT too" % " ".join(DEFAULT_TOPICS))
    a = p.parse_args()
    if a.partitions < 1 or a.replication_factor < 1 or a.min_insync < 1:
        p.error("--partitions, --replication-factor and --min-insync must be >= 1")
    if a.min_insync > a.replication_factor:
        p.error("--min-insync must not exceed --replication-factor")
    return a


def main():
    a = parse_args()
    deadline = time.monotonic() + a.timeout
    base = a.topics or DEFAULT_TOPICS
    wanted = []
    for t in base:
        wanted += [t, t + ".DLT"]

    admin = AdminClient({"bootstrap.servers": a.bootstrap})

    def metadata():
        left = max(1.0, deadline - time.monotonic())
        return admin.list_topics(timeout=min(10.0, left))

    try:
        md = metadata()
    except KafkaException as e:
        print("topics: cannot reach Kafka at %s: %s" % (a.bootstrap, e), file=sys.stderr)
        return 1
    missing = [t for t in wanted if t not in md.topics]
    created, failed = [], []
    if missing and len(md.brokers) < a.replication_factor:
        print("topics: only %d broker(s) alive at %s, replication factor %d is impossible"
              % (len(md.brokers), a.bootstrap, a.replication_factor), file=sys.stderr)
        return 1
    if missing:
        new = [NewTopic(t, num_partitions=a.partitions, replication_factor=a.replication_factor,
                        config={"min.insync.replicas": str(a.min_insync)}) for t in missing]
        futures = admin.create_topics(new, operation_timeout=30, request_timeout=30)
        for t, f in futures.items():
            try:
                f.result()
                created.append(t)
            except KafkaException as e:
                err = e.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:  # lost a race: fine
                    continue
                failed.append("%s: %s" % (t, err.str()))
    if failed:
        print("topics: creation failed: " + "; ".join(failed), file=sys.stderr)
        return 1

    # Wait until every wanted topic has a leader for each partition, as seen by
    # every alive broker (a broker's metadata cache lags the controller a little).
    def not_ready(client):
        try:
            m = client.list_topics(timeout=min(5.0, max(1.0, deadline - time.monotonic())))
        except KafkaException:
            return None, wanted
        bad = []
        for t in wanted:
            tm = m.topics.get(t)
            if tm is None or tm.error is not None or not tm.partitions or \
                    any(p.leader < 0 or p.error is not None for p in tm.partitions.values()):
                bad.append(t)
        return m, bad

    per_broker = {}
    while True:
        md, bad = not_ready(admin)
        if md is not None and not bad:
            for b in md.brokers.values():
                addr = "%s:%d" % (b.host, b.port)
                if addr not in per_broker:
                    per_broker[addr] = AdminClient({"bootstrap.servers": addr})
                _, bad_b = not_ready(per_broker[addr])
                bad += ["%s@%s" % (t, addr) for t in bad_b]
        if md is not None and not bad:
            break
        if time.monotonic() >= deadline:
            print("topics: no leaders after %.0f s for: %s" % (a.timeout, " ".join(bad)), file=sys.stderr)
            return 1
        time.sleep(0.2)

    mismatched = ["%s(%d)" % (t, len(md.topics[t].partitions)) for t in wanted
                  if t not in created and len(md.topics[t].partitions) != a.partitions]
    if mismatched:
        print("topics: warning: existing topics with another partition count: " + " ".join(mismatched),
              file=sys.stderr)
    print("topics: %d created, %d already present, all %d have leaders (%s)"
          % (len(created), len(wanted) - len(created), len(wanted), a.bootstrap))
    return 0


if __name__ == "__main__":
    sys.exit(main())
