"""
Helpers for the failure and operations tests: reading dead-letter topics,
the KAFKA_* variables of Kafka's launcher,
decoding Spring's kafka_dlt-* headers, producing records onto an exact
partition, scraping a daemon's /metrics, stopping/starting the PostgreSQL the
stack uses, and reconciling money and stock once the system is quiet. Kept
out of conftest.py so that file stays about the stack itself.
"""

import contextlib
import json
import re
import shutil
import struct
import subprocess
import time
import uuid

import psycopg
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

# What a settled order looks like in the three databases, by its two outcomes
# (payment approved, stock reserved). The order's status is derived from them
# as os_settle.c does (a NO anywhere is REJECTED, two YES are CONFIRMED); each
# service undoes its own YES when the other side says NO (common/cm_saga.h):
# a charge is REFUNDED, a reservation RELEASED; its own NO is DECLINED /
# REJECTED. A CANCELLED tombstone only stands in for an order that has not
# arrived yet: every order placed through the API reaches both services, so
# none is left once the system is quiet, and (CANCELLED, CANCELLED) or
# (REFUNDED, RELEASED) can never be the end of an order.
SETTLED = {
    (True, True): ("CONFIRMED", "CHARGED", "RESERVED"),
    (True, False): ("REJECTED", "REFUNDED", "REJECTED"),
    (False, True): ("REJECTED", "DECLINED", "RELEASED"),
    (False, False): ("REJECTED", "DECLINED", "REJECTED"),
}
DLT_TOPICS = [t + ".DLT" for t in CONSUMERS]
DBS = ("orders", "payments", "inventory")


def dlt_offsets(stack):
    """The end offsets of the three DLTs: take them before a fault test and
    give them to reconcile() as dlt_since."""
    return {t: end_offsets(stack.bootstrap, t) for t in DLT_TOPICS}


def _dlt_growth(stack, since):
    after = dlt_offsets(stack)
    return {t: sum(after[t].values()) - sum(since[t].values()) for t in DLT_TOPICS}


def sql(stack, db, query, params=None):
    """stack.sql, retried (up to ~10 s) while connections that a fault
    test's terminated backends or stopped server broke are made again."""
    for attempt in range(20):
        try:
            return stack.sql(db, query, params)
        except psycopg.OperationalError:
            if attempt == 19:
                raise
            time.sleep(0.5)


def _settled_view(stack, ids):
    orders = {r[0]: r[1:] for r in sql(stack, 
        "orders", "SELECT order_id, customer_id, sku, quantity, amount_cents, status,"
        " payment_approved, payment_reason, inventory_reserved, inventory_reason"
        " FROM orders WHERE order_id = ANY(%s)", (ids,))}
    pay = {r[0]: r[1:] for r in sql(stack, 
        "payments", "SELECT order_id, status, customer_id, amount_cents, reason FROM payments"
        " WHERE order_id = ANY(%s)", (ids,))}
    res = {r[0]: r[1:] for r in sql(stack, 
        "inventory", "SELECT order_id, status, sku, quantity, reason FROM reservations"
        " WHERE order_id = ANY(%s)", (ids,))}
    return orders, pay, res


def _at_rest(stack, ids):
    """(ok, what is still moving): every order has both answers, both
    services have their final row, no compensation is outstanding, and the
    three outboxes are empty."""
    orders, pay, res = _settled_view(stack, ids)
    open_ = [o for o, r in orders.items() if r[4] == "PENDING" or r[5] is None or r[7] is None]
    moving = [o for o in ids if pay.get(o, ("NONE",))[0] in ("NONE", "PENDING", "CANCELLED")
              or res.get(o, ("NONE",))[0] in ("NONE", "PENDING", "CANCELLED")]
    undo = [o for o, r in orders.items() if r[4] == "REJECTED" and (
        pay.get(o, ("",))[0] == "CHARGED" or res.get(o, ("",))[0] == "RESERVED")]
    outbox = {db: sql(stack, db, "SELECT count(*) FROM outbox")[0][0] for db in DBS}
    seen = {"unanswered orders": len(open_), "without final service rows": len(moving),
            "compensations outstanding": len(undo), "outbox rows": outbox}
    return not open_ and not moving and not undo and not any(outbox.values()), seen


def reconcile(stack, orders, balances, stocks, dlt_since=None, dlt_expected=None, timeout=90):
    """The invariants of a quiet system, checked from outside, over the
    given orders (every order the test knows was stored), customers (their
    initial balances) and SKUs (their initial stock):

    - every order is stored, and once the system is at rest (waited for up to
      `timeout` s) has both answers, its final payment and reservation rows,
      no outstanding compensation, and the outboxes of all three services are
      empty;
    - each order's (status, payment, reservation) is the one SETTLED allows
      for its two answers, the payment's customer and amount and the
      reservation's SKU and quantity are the order's, the reasons agree, and
      ORDER_CANCELLED is only ever one side's answer to the other's NO;
    - money and stock are conserved to the cent and the unit over every
      payment of the customers and every reservation of the SKUs, all of which
      must belong to the given orders (a charge of an order the test does not
      know is money lost), and no balance or stock is negative;
    - no DLT record is keyed by one of the orders, and when dlt_since (from
      dlt_offsets()) is given, the DLTs hold exactly dlt_expected
      ({dlt topic: records}, default none) more records than then.

    Returns {order id: status}."""
    ids = list(orders)
    have = {r[0] for r in sql(stack, "orders", "SELECT order_id FROM orders WHERE"
                                    " order_id = ANY(%s)", (ids,))}
    missing = [o for o in ids if o not in have]
    assert not missing, f"{len(missing)} accepted orders are not stored, e.g. {missing[:3]}"
    want = {t: (dlt_expected or {}).get(t, 0) for t in DLT_TOPICS}

    def dead_letters():
        """The DLT records keyed by these orders, decoded, as evidence."""
        keys = {o.encode() for o in ids}
        out = []
        for t in DLT_TOPICS:
            for m in read_all(stack.bootstrap, t, timeout=30):
                if m.key() in keys:
                    h = header_map(m)
                    why = [h.get("kafka_dlt-" + n, [b"?"])[0].decode(errors="replace")
                           for n in ("original-consumer-group", "exception-message")]
                    out.append((t, m.partition(), m.offset(), m.key().decode(), *why))
        return out

    def at_rest():
        ok, seen = _at_rest(stack, ids)
        if not ok and dlt_since is not None and any(
                n > want[t] for t, n in _dlt_growth(stack, dlt_since).items()):
            raise AssertionError(f"records were dead-lettered while waiting for rest ({seen}): "
                                 f"{_dlt_growth(stack, dlt_since)}, expected {want}; of these "
                                 f"orders: {dead_letters()[:5]}")
        return ok, seen

    stack.wait_until(at_rest, timeout, "the system to come to rest", interval=1.0)
    rows, pay, res = _settled_view(stack, ids)
    status = {}
    for o, (cust, sku, qty, amount, st, pa, preason, ir, ireason) in rows.items():
        ps, pcust, pamount, pr = pay[o]
        rs, rsku, rqty, rr = res[o]
        allowed = SETTLED[(pa, ir)]
        assert (st, ps, rs) == allowed, (
            f"order {o}: answers payment={pa} stock={ir} need {allowed}, found {(st, ps, rs)}")
        assert (pcust, pamount) == (cust, amount), (
            f"order {o} of {cust} for {amount}: payment is of {pcust} for {pamount}")
        assert (rsku, rqty) == (sku, qty), (
            f"order {o} of {qty} x {sku}: reservation is of {rqty} x {rsku}")
        assert (pr, rr) == (preason, ireason), (
            f"order {o}: reasons {preason}/{ireason}, services say {pr}/{rr}")
        assert pa == (pr == "OK") and ir == (rr == "OK"), f"order {o}: {pa}/{pr} {ir}/{rr}"
        assert pr != "ORDER_CANCELLED" or (not ir and rr != "ORDER_CANCELLED"), (
            f"order {o}: payment ORDER_CANCELLED without a stock rejection ({rr})")
        assert rr != "ORDER_CANCELLED" or (not pa and pr != "ORDER_CANCELLED"), (
            f"order {o}: stock ORDER_CANCELLED without a payment decline ({pr})")
        assert cust in balances and sku in stocks, f"order {o}: {cust}/{sku} not accounted for"
        status[o] = st
    known = set(ids)
    for cust, initial in balances.items():
        mine = sql(stack, "payments", "SELECT order_id, status, amount_cents FROM payments"
                         " WHERE customer_id = %s", (cust,))
        strangers = [o for o, _, _ in mine if o not in known]
        assert not strangers, f"{cust}: payments of orders the test does not know: {strangers[:5]}"
        charged = sum(a for _, st, a in mine if st == "CHARGED")
        now = stack.payments.balance(cust)
        assert now is not None and now >= 0 and initial == now + charged, (
            f"{cust}: initial {initial} != balance {now} + charged {charged}")
    for sku, initial in stocks.items():
        mine = sql(stack, "inventory", "SELECT order_id, status, quantity FROM reservations"
                         " WHERE sku = %s", (sku,))
        strangers = [o for o, _, _ in mine if o not in known]
        assert not strangers, f"{sku}: reservations of orders the test does not know: {strangers[:5]}"
        reserved = sum(q for _, st, q in mine if st == "RESERVED")
        now = stack.inventory.stock(sku)
        assert now is not None and now >= 0 and initial == now + reserved, (
            f"{sku}: initial {initial} != stock {now} + reserved {reserved}")
    bad = dead_letters()
    assert not bad, f"records of these orders were dead-lettered: {bad[:5]}"
    if dlt_since is not None:
        grew = _dlt_growth(stack, dlt_since)
        assert grew == want, f"DLT records added: {grew}, expected {want}"
    return status


def quiet(stack, orders):
    """True once every order is settled and no compensation is outstanding."""
    ids = list(orders)
    pending = stack.sql_one("orders", "SELECT count(*) FROM orders WHERE order_id = ANY(%s)"
                            " AND status = 'PENDING'", (ids,))
    rejected = [r[0] for r in sql(stack, "orders", "SELECT order_id FROM orders WHERE"
                                        " order_id = ANY(%s) AND status = 'REJECTED'", (ids,))]
    charged = stack.sql_one("payments", "SELECT count(*) FROM payments WHERE"
                            " order_id = ANY(%s) AND status = 'CHARGED'", (rejected,))
    reserved = stack.sql_one("inventory", "SELECT count(*) FROM reservations WHERE"
                             " order_id = ANY(%s) AND status = 'RESERVED'", (rejected,))
    return pending == 0 and charged == 0 and reserved == 0, (pending, charged, reserved)


# The line each final row must have in its daemon's log: daemon -> (database,
# table, {status: prefixes})
# (any of the prefixes, followed by " order_id=<id> ").
_EFFECT_LINES = {
    "payment-service": ("payments", "payments", {
        "CHARGED": ("payment charged",),
        "DECLINED": ("payment declined", "order cancelled before payment"),
        "REFUNDED": ("payment refunded",)}),
    "inventory-service": ("inventory", "reservations", {
        "RESERVED": ("stock reserved",),
        "REJECTED": ("stock rejected", "order cancelled before reservation"),
        "RELEASED": ("stock released",)}),
}
_LINE_RE = re.compile(r"\b((?:payment|stock) \w+|order cancelled before \w+|order accepted"
                      r"|order settled) order_id=(\S+)(?: status=(\w+))?")


def logged_effects(stack, ids, answered):
    """Every committed effect has its line in its daemon's log (written
    before the COMMIT, or before the 202): for each of the orders `ids`,
    payment-service's and inventory-service's final rows, the settled order,
    and for the orders in `answered` (answered 202 on a request's only
    attempt) the "order accepted" line. The logs span every restart of the
    test. Returns the problems found."""
    seen = {}
    for name, d in stack.daemons.items():
        lines = set()
        with open(d.log_path, errors="replace") as f:
            for line in f:
                for m in _LINE_RE.finditer(line):
                    lines.add((m.group(1), m.group(2), m.group(3)))
        seen[name] = lines
    problems = []
    for name, (db, table, need) in _EFFECT_LINES.items():
        for oid, status in sql(stack, db, f"SELECT order_id, status FROM {table}"
                               " WHERE order_id = ANY(%s)", (list(ids),)):
            if status in need and not any((p, oid, None) in seen[name] for p in need[status]):
                problems.append(f"{name}: {table} row {oid} is {status}, but its log has no "
                                f"line {' or '.join(need[status])!r} for it")
    for oid, status in sql(stack, "orders", "SELECT order_id, status FROM orders"
                           " WHERE order_id = ANY(%s) AND status <> 'PENDING'", (list(ids),)):
        if ("order settled", oid, status) not in seen["order-service"]:
            problems.append(f"order-service: order {oid} is {status}, but its log has no "
                            f"line 'order settled order_id={oid} status={status}'")
    for oid in answered:
        if ("order accepted", oid, None) not in seen["order-service"]:
            problems.append(f"order-service: order {oid} was answered 202, but its log has no "
                            f"line 'order accepted order_id={oid}'")
    return problems


@contextlib.contextmanager
def locked_outbox_row(stack, oid):
    """A duplicate PaymentCompleted of the settled order `oid`, committed to
    payment-service's outbox with the NOTIFY trigger off (this session only)
    and row-locked at once, then announced with a NOTIFY, so that the relay
    publishes it but cannot delete it while the block runs; yields the row id. The consumers ignore
    the duplicate once it goes out."""
    hdrs = json.dumps({k: v.decode() for k, v in headers("PaymentCompleted")})
    payload = json.dumps({"orderId": oid, "approved": True, "reason": "OK"})
    dsn = stack.dsn("payments")
    with psycopg.connect(dsn, autocommit=True) as writer, psycopg.connect(dsn) as locker:
        for _ in range(5):
            writer.execute("SET session_replication_role = replica")  # no NOTIFY trigger
            row = writer.execute(
                "INSERT INTO outbox(topic, msg_key, payload, headers) VALUES"
                " ('payments.completed', %s, %s, %s::jsonb) RETURNING id",
                (oid, payload, hdrs)).fetchone()[0]
            if locker.execute("SELECT id FROM outbox WHERE id = %s FOR UPDATE",
                              (row,)).fetchall():
                # Locked: now wake the relay (an idle relay only passes on a
                # notification, or after 30 s).
                writer.execute("NOTIFY outbox")
                break
            locker.rollback()  # the relay was quicker: try again
        else:
            raise AssertionError("the relay removed every row before it could be locked")
        try:
            yield row
        finally:
            locker.rollback()
