"""
Helpers for the failure and operations tests: reading dead-letter topics,
the KAFKA_* variables of Kafka's launcher,
decoding Spring's kafka_dlt-* headers, producing records onto an exact
partition, scraping a daemon's /metrics, stopping/starting the PostgreSQL the
stack uses, and reconciling money and stock once the system is quiet. Kept
out of conftest.py so that file stays about the stack itself.
"""

import json
import re
import shutil
import struct
import subprocess
import time
import uuid

import requests
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

SPRING_CAUSE_POISON = "org.springframework.kafka.support.serializer.DeserializationException"
SPRING_CAUSE_PROCESSING = "com.devcraftly.orders.RecordProcessingException"
SPRING_LISTENER = "org.springframework.kafka.listener.ListenerExecutionFailedException"

# KAFKA_* variables that a shell or unit has set where Kafka's own tools run
# (bin/kafka-run-class.sh reads them) or our dev stack does (deploy/kafka):
# none is a librdkafka property, and the daemons and orderctl pass over them.
LAUNCHER_ENV = {
    "KAFKA_HEAP_OPTS": "-Xmx1G -Xms1G",
    "KAFKA_OPTS": "-Djava.security.auth.login.config=/etc/kafka/jaas.conf",
    "KAFKA_JVM_PERFORMANCE_OPTS": "-server -XX:+UseG1GC -XX:MaxGCPauseMillis=20",
    "KAFKA_LOG4J_OPTS": "-Dlog4j2.configurationFile=/etc/kafka/log4j2.yaml",
    "KAFKA_JMX_OPTS": "-Dcom.sun.management.jmxremote=true",
    "KAFKA_GC_LOG_OPTS": "-Xlog:gc*:file=/var/log/kafka/gc.log",
    "KAFKA_DEBUG": "y",
    "KAFKA_MODE": "jvm",
    "KAFKA_VERSION": "4.1.1",
    "KAFKA_LIBS_DIR": "/opt/kafka/libs",
    "KAFKA_EXTRA_PROPERTIES": "log.retention.hours=1",
    "KAFKA_START_TIMEOUT": "90",
    "KAFKA_STOP_TIMEOUT": "30",
}

# Which consumer groups read each topic: each of them dead-letters a poison
# record on its own, as Spring's per-listener error handlers do.
CONSUMERS = {
    "orders.created": {"payment-service", "inventory-service"},
    "payments.completed": {"order-service", "inventory-service"},
    "inventory.reserved": {"order-service", "payment-service"},
}


def produce_raw(bootstrap, topic, partition, key, value, headers):
    """Produces one record onto an exact partition; returns its offset."""
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    out = {}
    p.produce(topic, key=key, value=value, headers=headers, partition=partition,
              on_delivery=lambda err, msg: out.update(err=err, msg=msg))
    assert p.flush(15) == 0 and "msg" in out, f"record to {topic} not delivered"
    assert out["err"] is None, f"delivery to {topic} failed: {out['err']}"
    return out["msg"].offset()


def headers(event_type, version=b"1"):
    return [
        ("event-id", str(uuid.uuid4()).encode()),
        ("event-type", event_type.encode()),
        ("event-version", version),
        ("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode()),
        ("__TypeId__", ("com.devcraftly.orders.events." + event_type).encode()),
    ]


def end_offsets(bootstrap, topic, timeout=20):
    """{partition: high watermark} of every partition of topic. Retries while
    a fresh broker still answers "not leader" for a new topic."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe-" + uuid.uuid4().hex})
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                md = c.list_topics(topic, timeout=10)
                return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                                   cached=False)[1]
                        for p in md.topics[topic].partitions}
            except KafkaException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
    finally:
        c.close()


def read_all(bootstrap, topic, since=None, timeout=10):
    """Every record of topic from the offsets in since (default: beginning) to
    the current end, as confluent_kafka messages."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "reader-" + uuid.uuid4().hex,
                  "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        ends = end_offsets(bootstrap, topic)
        starts = since or {}
        parts = [TopicPartition(topic, p, starts.get(p, 0)) for p, hi in ends.items()
                 if hi > starts.get(p, 0)]
        if not parts:
            return []
        c.assign(parts)
        open_parts = {tp.partition for tp in parts}
        out = []
        deadline = time.monotonic() + timeout
        while open_parts and time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                open_parts.discard(m.partition())
                continue
            if m.offset() < ends[m.partition()]:
                out.append(m)
            if m.offset() + 1 >= ends[m.partition()]:
                open_parts.discard(m.partition())
        return out
    finally:
        c.close()


def dlt_records(bootstrap, topic, key, expect, timeout=30, since=None):
    """Waits until at least `expect` records with key are on topic.DLT (after
    since), then returns all of them."""
    deadline = time.monotonic() + timeout
    key = key.encode() if isinstance(key, str) else key
    while True:
        found = [m for m in read_all(bootstrap, topic + ".DLT", since) if m.key() == key]
        if len(found) >= expect or time.monotonic() > deadline:
            return found
        time.sleep(0.3)


def header_map(msg):
    """Header name -> list of values (bytes), in record order."""
    out = {}
    for k, v in msg.headers() or []:
        out.setdefault(k, []).append(v)
    return out


def decode_dlt(msg):
    """The kafka_dlt-* headers of a DLT record, decoded as Spring writes them."""
    h = header_map(msg)

    def one(name):
        vals = h.get("kafka_dlt-" + name)
        assert vals and len(vals) == 1, f"header kafka_dlt-{name} missing or repeated: {vals}"
        return vals[0]

    part, off, ts = one("original-partition"), one("original-offset"), one("original-timestamp")
    assert len(part) == 4, f"original-partition must be 4 bytes, is {len(part)}"
    assert len(off) == 8 and len(ts) == 8, "original-offset/-timestamp must be 8 bytes"
    return {
        "topic": one("original-topic").decode(),
        "partition": struct.unpack(">i", part)[0],
        "offset": struct.unpack(">q", off)[0],
        "timestamp": struct.unpack(">q", ts)[0],
        "timestamp_type": one("original-timestamp-type").decode(),
        "group": one("original-consumer-group").decode(),
        "fqcn": one("exception-fqcn").decode(),
        "cause": one("exception-cause-fqcn").decode(),
        "message": one("exception-message").decode(),
    }


def metrics(url):
    """Scrapes url/metrics into {(name, frozenset(labels)): value}."""
    text = requests.get(url + "/metrics", timeout=5).text
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        assert m, f"unparsable metrics line: {line!r}"
        labels = frozenset(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(url, name, **labels):
    return metrics(url).get((name, frozenset(labels.items())), 0.0)


def value(obj):
    return json.dumps(obj, separators=(",", ":")).encode()


# -------------------------------------------------------------- PostgreSQL


class Postgres:
    """Stops and starts the PostgreSQL server the stack uses: the machine's
    cluster (pg_ctlcluster) when the stack uses 127.0.0.1:5432, else the
    private one that deploy/postgres/pg.sh started."""

    def __init__(self, stack):
        self.stack = stack
        self.port = stack.pg_env.get("PGPORT", "5432")

    def _cluster(self):
        out = subprocess.run(["pg_lsclusters", "--no-header"], capture_output=True, text=True,
                             check=True).stdout
        for line in out.splitlines():
            f = line.split()
            if len(f) >= 3 and f[2] == self.port:
                return f[0], f[1]
        return None

    def _ctl(self, action):
        cluster = self._cluster() if shutil.which("pg_lsclusters") else None
        if cluster:
            cmd = ["pg_ctlcluster", "--skip-systemctl-redirect", cluster[0], cluster[1], action]
            if action == "stop":
                cmd += ["-m", "fast"]
        else:
            pg_sh = str(self.stack.root / "deploy" / "postgres" / "pg.sh")
            cmd = [pg_sh, "stop"] if action == "stop" else [pg_sh, "ensure", "--port", "1"]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    def stop(self):
        self._ctl("stop")

    def start(self):
        self._ctl("start")


# -------------------------------------------------------------- reconciliation


def reconcile(stack, orders, balances, stocks):
    """The invariants of a quiet system, over the given orders, customers
    (initial balances) and SKUs (initial stock)."""
    ids = list(orders)
    rows = stack.sql("orders", "SELECT order_id, status FROM orders WHERE order_id = ANY(%s)",
                     (ids,))
    status = dict(rows)
    assert len(status) == len(ids), f"{len(ids) - len(status)} accepted orders are missing"
    pending = [o for o, s in status.items() if s == "PENDING"]
    assert not pending, f"{len(pending)} orders still PENDING"
    pay = {o: (s, c, a) for o, s, c, a in stack.sql(
        "payments", "SELECT order_id, status, customer_id, amount_cents FROM payments"
        " WHERE order_id = ANY(%s)", (ids,))}
    res = {o: (s, k, q) for o, s, k, q in stack.sql(
        "inventory", "SELECT order_id, status, sku, quantity FROM reservations"
        " WHERE order_id = ANY(%s)", (ids,))}
    for o, s in status.items():
        ps, rs = pay.get(o, ("NONE",))[0], res.get(o, ("NONE",))[0]
        if s == "CONFIRMED":
            assert (ps, rs) == ("CHARGED", "RESERVED"), f"confirmed {o}: {ps}/{rs}"
        else:
            assert ps in ("DECLINED", "REFUNDED", "CANCELLED"), f"rejected {o} payment {ps}"
            assert rs in ("REJECTED", "RELEASED", "CANCELLED"), f"rejected {o} stock {rs}"
    for cust, initial in balances.items():
        charged = sum(a for s, c, a in pay.values() if c == cust and s == "CHARGED")
        now = stack.payments.balance(cust)
        assert now >= 0 and initial == now + charged, f"{cust}: {initial} != {now} + {charged}"
    for sku, initial in stocks.items():
        reserved = sum(q for s, k, q in res.values() if k == sku and s == "RESERVED")
        now = stack.inventory.stock(sku)
        assert now >= 0 and initial == now + reserved, f"{sku}: {initial} != {now} + {reserved}"
    return status


def quiet(stack, orders):
    """True once every order is settled and no compensation is outstanding."""
    ids = list(orders)
    pending = stack.sql_one("orders", "SELECT count(*) FROM orders WHERE order_id = ANY(%s)"
                            " AND status = 'PENDING'", (ids,))
    rejected = [r[0] for r in stack.sql("orders", "SELECT order_id FROM orders WHERE"
                                        " order_id = ANY(%s) AND status = 'REJECTED'", (ids,))]
    charged = stack.sql_one("payments", "SELECT count(*) FROM payments WHERE"
                            " order_id = ANY(%s) AND status = 'CHARGED'", (rejected,))
    reserved = stack.sql_one("inventory", "SELECT count(*) FROM reservations WHERE"
                             " order_id = ANY(%s) AND status = 'RESERVED'", (rejected,))
    return pending == 0 and charged == 0 and reserved == 0, (pending, charged, reserved)
