"""
Set-based consumer batches against the sequential outcome.

A consumer applies a run of records with one statement per kind (cm_set),
and every record must get the outcome that applying the records one by one,
in the order the consumer took them, would give. Each test stops one daemon,
produces a crafted burst of records to the real broker (duplicates inside the
burst and of records applied before it, limits reached part way with a later
smaller record still passing, unknown customers/SKUs, compensation for an
order in the same burst, compensation and charge of one customer in the same
burst) and checks that the daemon applied them as one batch with the outcome
of a one-by-one run.

To make the burst one batch, the daemon (restarted with LOG_LEVEL=debug, so
that it logs each batch's records in order: "consumer batch record" lines)
is first held inside the batch before it: the test locks a row that a
blocker record needs, produces the blocker, waits until the daemon's
statement waits on the lock, produces the burst, gives the daemon's fetcher
a moment to queue it, and releases the lock; the next batch then takes all
that is queued. (The test database's statement_timeout is raised meanwhile,
so that the wait is not taken for an outage.) The test then applies the
burst's records one by one, in the order the log shows, in Python, and
compares balances or stock, the payment/reservation/order rows and the
replies published on the reply topic (one per order that was not a
duplicate, with the sequential verdict).

The last three tests take the statements alone (set_sql_dump prints the very
text the daemons prepare) and run them on the real PostgreSQL over a few
hundred random mixed batches, a batch at once and one record at a time, each
in a transaction that is rolled back: results and rows must agree.
"""

import json
import os
import random
import re
import subprocess
import time
import uuid

import psycopg
from confluent_kafka import Producer
from conftest import build_dir
from helpers import metric, read_all

RECORD_RE = re.compile(r"consumer batch record index=(\d+) key=(\S*) topic=(\S+) "
                       r"partition=(\d+) offset=(\d+)")


def produce_burst(stack, records):
    """records: [(topic, key, value_dict)], produced in this order onto
    partition 0 of each topic (one producer, idempotent: order kept).
    Returns [(topic, partition, offset)] in the same order."""
    p = Producer({"bootstrap.servers": stack.bootstrap, "acks": "all",
                  "enable.idempotence": True})
    out = [None] * len(records)

    def report(i):
        def cb(err, msg):
            assert err is None, f"delivery failed: {err}"
            out[i] = (msg.topic(), msg.partition(), msg.offset())
        return cb

    types = {"orders.created": "OrderCreated", "payments.completed": "PaymentCompleted",
             "inventory.reserved": "InventoryReserved"}
    for i, (topic, key, value) in enumerate(records):
        p.produce(topic, key=key.encode(), partition=0,
                  value=json.dumps(value, separators=(",", ":")).encode(),
                  headers=stack.event_headers(types[topic]), on_delivery=report(i))
    assert p.flush(20) == 0 and all(out), "burst not delivered"
    return out


def log_size(daemon):
    return daemon.log_path.stat().st_size


def batches_since(daemon, pos):
    """The batches the daemon logged after byte pos and finished (committed:
    "consumer batch done" comes after the commit; the records are logged
    before it): [[(topic, partition, offset, key)]]."""
    with open(daemon.log_path, "rb") as f:
        f.seek(pos)
        text = f.read().decode(errors="replace")
    batches, current = [], None
    for line in text.splitlines():
        if "consumer batch start count=" in line:
            current = []
        elif "consumer batch done count=" in line and current is not None:
            batches.append(current)
            current = None
        m = RECORD_RE.search(line)
        if m and current is not None:
            current.append((m.group(3), int(m.group(4)), int(m.group(5)), m.group(2)))
    return batches


# After a phase of the burst is acknowledged by the broker, how long the
# daemon's fetcher (which runs while the consumer thread waits) gets to queue
# it before the next phase is produced.
FETCH_GRACE = 1.5


def restart_debug(stack, daemon, db):
    """Restarts daemon with LOG_LEVEL=debug on a database whose
    statement_timeout is a minute (the consumer keeps one set there)."""
    dbname = stack.sql_one(db, "SELECT current_database()")
    stack.sql(db, f'ALTER DATABASE "{dbname}" SET statement_timeout = \'60s\'')
    daemon.stop()
    daemon.env = dict(daemon.env, LOG_LEVEL="debug")
    daemon.start()
    daemon.wait_ready()


def reset_timeout(stack, db):
    dbname = stack.sql_one(db, "SELECT current_database()")
    stack.sql(db, f'ALTER DATABASE "{dbname}" RESET statement_timeout')


def burst_behind_blocker(stack, daemon, db, lock_sql, lock_params, blocker, phases,
                         timeout=60):
    """Holds the daemon in the blocker's batch (see the module comment) while
    the burst is produced, phase after phase, then lets it go. The fetcher
    queues records in the order they arrive, so the batch takes the phases in
    order (records of two topics in one phase come in either order). Returns
    the burst's records and coordinates and the batches the daemon logged,
    once it has taken every record."""
    pos = log_size(daemon)
    records, coords = [], []
    with psycopg.connect(stack.dsn(db)) as lock:
        lock.execute(lock_sql, lock_params)
        produce_burst(stack, [blocker])
        stack.wait_until(lambda: (stack.sql_one(
            db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock'") > 0, None), 30,
            "the daemon's batch to wait on the test's lock")
        for phase in phases:
            records += phase
            coords += produce_burst(stack, phase)
            time.sleep(FETCH_GRACE)
        lock.commit()
    want = set(coords)

    def taken():
        seen = {(t, p, o) for b in batches_since(daemon, pos) for (t, p, o, _) in b}
        return want <= seen, len(want - seen)

    stack.wait_until(taken, timeout, "the daemon to take every record of the burst")
    reset_timeout(stack, db)
    return records, coords, batches_since(daemon, pos)


def order_of(batches, coords):
    """The burst's records (indices into coords) in the order the daemon took
    them, and the batch number of each."""
    index = {c: i for i, c in enumerate(coords)}
    order, batch_of = [], {}
    for n, b in enumerate(batches):
        for (t, p, o, _) in b:
            i = index.get((t, p, o))
            if i is not None and i not in batch_of:  # a redelivery would repeat it
                order.append(i)
                batch_of[i] = n
    return order, batch_of


def wait_outbox_empty(stack, db):
    stack.wait_until(lambda: (stack.sql_one(db, "SELECT count(*) FROM outbox") == 0, None), 30,
                     f"the {db} outbox to drain")


def replies_by_key(stack, topic, keys):
    out = {k: [] for k in keys}
    for m in read_all(stack.bootstrap, topic, timeout=20):
        k = m.key().decode()
        if k in out:
            out[k].append(json.loads(m.value()))
    return out


def insert_orders(stack, orders):
    """Order rows (PENDING) for crafted orders, so that order-service can apply
    their replies: {order_id: (customer, sku, quantity, amount)}."""
    for oid, (cust, sku, qty, amount) in orders.items():
        stack.sql("orders", "INSERT INTO orders(order_id, customer_id, sku, quantity, "
                            "amount_cents, status) VALUES (%s, %s, %s, %s, %s, 'PENDING')",
                  (oid, cust, sku, qty, amount))


def order_created(oid, cust, sku, qty, amount):
    return ("orders.created", oid, {"orderId": oid, "customerId": cust, "sku": sku,
                                    "quantity": qty, "amountCents": amount})


# ------------------------------------------------- the sequential model


class Ledger:
    """One-by-one application of OrderCreated (take) and a negative outcome
    of the other side (compensate), as payment-service or inventory-service
    applies a single record: the reference the batches are compared with."""

    def __init__(self, limits, short, unknown):
        self.left = dict(limits)  # customer/sku -> balance/available
        self.rows = {}            # order -> [status, key, amount, reason]
        self.replies = {}         # order -> [(ok, reason)]
        self.short, self.unknown = short, unknown

    def take(self, oid, key, amount):
        row = self.rows.get(oid)
        if row is not None:
            if row[0] != "CANCELLED":
                return  # a duplicate: no effect, no reply
            verdict = "ORDER_CANCELLED"
        elif key not in self.left:
            verdict = self.unknown
        elif self.left[key] >= amount:
            self.left[key] -= amount
            verdict = "OK"
        else:
            verdict = self.short
        self.rows[oid] = ["TAKEN" if verdict == "OK" else "REFUSED", key, amount, verdict]
        self.replies.setdefault(oid, []).append((verdict == "OK", verdict))

    def compensate(self, oid):
        row = self.rows.get(oid)
        if row is None:
            self.rows[oid] = ["CANCELLED", "", 0, ""]
        elif row[0] == "TAKEN":
            row[0] = "UNDONE"
            self.left[row[1]] += row[2]


def check_burst(stack, db, table, key_col, amount_col, limit_table, limit_key, limit_col,
                status_names, reply_topic, flag, ledger, records, coords, batches, keys):
    order, batch_of = order_of(batches, coords)
    assert sorted(order) == list(range(len(records))), "records missing from the log"
    assert len(set(batch_of.values())) == 1, (
        f"the burst was split over batches {sorted(set(batch_of.values()))}: "
        f"{[len(b) for b in batches]}")
    for i in order:
        topic, oid, value = records[i]
        if topic == "orders.created":
            ledger.take(oid, value["customerId"] if key_col == "customer_id" else value["sku"],
                        value["amountCents"] if key_col == "customer_id" else value["quantity"])
        else:
            ledger.compensate(oid)

    wait_outbox_empty(stack, db)
    got_left = dict(stack.sql(db, f"SELECT {limit_key}, {limit_col} FROM {limit_table} "
                                  f"WHERE {limit_key} = ANY(%s)", (keys,)))
    assert got_left == {k: v for k, v in ledger.left.items() if k in keys}, \
        f"balances/stock differ from the sequential run (order {order})"
    oids = sorted({r[1] for r in records})
    rows = {r[0]: list(r[1:]) for r in stack.sql(
        db, f"SELECT order_id, status, {key_col}, {amount_col}, reason FROM {table} "
            f"WHERE order_id = ANY(%s)", (oids,))}
    want = {oid: [status_names[r[0]]] + r[1:] for oid, r in ledger.rows.items()}
    assert rows == want, f"rows differ from the sequential run (order {order})"
    got = replies_by_key(stack, reply_topic, oids)
    want = {oid: ledger.replies.get(oid, []) for oid in oids}
    got = {oid: [(v[flag], v["reason"]) for v in vs] for oid, vs in got.items()}
    assert got == want, f"replies differ from the sequential run (order {order})"
    return order


def test_payment_batch_matches_sequential(stack):
    payment = stack.daemons["payment-service"]
    a, b, c, d = (stack.uid("cust") for _ in range(4))
    nobody = stack.uid("nobody")
    sku = stack.uid("sku")
    stack.set_stock(sku, 1_000_000)  # inventory-service reserves every order
    limits = {a: 1_000, b: 500, c: 0, d: 10_000}
    for cust, cents in limits.items():
        stack.fund(cust, cents)
    oid = {n: str(uuid.uuid4()) for n in ["p1", "p2"] + [f"o{i}" for i in range(1, 10)]}
    amounts = {"p1": (a, 300), "p2": (b, 400), "o1": (a, 400), "o2": (a, 500), "o3": (a, 250),
               "o4": (nobody, 100), "o5": (b, 300), "o6": (c, 0), "o7": (d, 100),
               "o8": (d, 200)}
    blocker_cust, blocker = stack.uid("cust"), str(uuid.uuid4())
    stack.fund(blocker_cust, 1_000)
    insert_orders(stack, {oid[n]: (cu, sku, 1, am) for n, (cu, am) in amounts.items()})
    insert_orders(stack, {blocker: (blocker_cust, sku, 1, 1)})
    ledger = Ledger(limits, "INSUFFICIENT_FUNDS", "UNKNOWN_CUSTOMER")
    restart_debug(stack, payment, "payments")

    # Before the burst: p1 and p2 charged in batches of their own.
    earlier = [order_created(oid[n], *amounts[n][:1], sku, 1, amounts[n][1]) for n in ("p1", "p2")]
    produce_burst(stack, earlier)
    for _, o, v in earlier:
        ledger.take(o, v["customerId"], v["amountCents"])
        stack.wait_until(lambda o=o: (stack.payments.payment(o) is not None, None), 30,
                         f"payment of {o}")

    rejected = {"reserved": False, "reason": "OUT_OF_STOCK"}

    def oc(n):
        return order_created(oid[n], amounts[n][0], sku, 1, amounts[n][1])

    def comp(n):
        return ("inventory.reserved", oid[n], dict(rejected, orderId=oid[n]))

    phases = [
        [comp("o7")],                    # before its order: a tombstone
        [oc("o1"), oc("o1"),             # a duplicate inside the batch
         oc("o2"),                       # more than a's balance left: declined
         oc("o3"),                       # smaller, after the declined one: charged
         oc("o4"),                       # unknown customer
         oc("p1"),                       # a duplicate of an earlier batch
         oc("o6"),                       # zero against a zero balance
         oc("o7"), oc("o8")],
        [comp("p2"),                     # refund of an earlier batch's charge ...
         comp("o8"),                     # ... and of this batch's charge
         comp("o9"),                     # an order that never comes: a tombstone
         comp("o7")],                    # a duplicate compensation
        [oc("o5"),                       # b's charge, fits only after p2's refund
         oc("o2")],                      # a duplicate of a declined order
    ]
    records, coords, batches = burst_behind_blocker(
        stack, payment, "payments", "SELECT 1 FROM accounts WHERE customer_id = %s FOR UPDATE",
        (blocker_cust,), order_created(blocker, blocker_cust, sku, 1, 1), phases)
    order = check_burst(stack, "payments", "payments", "customer_id", "amount_cents", "accounts",
                        "customer_id", "balance_cents",
                        {"TAKEN": "CHARGED", "REFUSED": "DECLINED", "UNDONE": "REFUNDED",
                         "CANCELLED": "CANCELLED"},
                        "payments.completed", "approved", ledger, records, coords, batches,
                        list(limits))
    # The cases the burst is for.
    assert ledger.replies[oid["o2"]] == [(False, "INSUFFICIENT_FUNDS")]
    assert ledger.replies[oid["o3"]] == [(True, "OK")]
    assert ledger.replies[oid["o4"]] == [(False, "UNKNOWN_CUSTOMER")]
    assert len(ledger.replies[oid["o1"]]) == 1 and oid["p1"] in ledger.replies
    assert ledger.rows[oid["o9"]][0] == "CANCELLED"
    assert ledger.replies[oid["o7"]] == [(False, "ORDER_CANCELLED")]
    assert ledger.rows[oid["o8"]][0] == "UNDONE" and ledger.rows[oid["p2"]][0] == "UNDONE"
    assert ledger.replies[oid["o5"]] == [(True, "OK")]
    assert order == sorted(order), f"phases not taken in order: {order}"


def test_inventory_batch_matches_sequential(stack):
    inventory = stack.daemons["inventory-service"]
    s1, s2, s3 = (stack.uid("sku") for _ in range(3))
    nosku = stack.uid("nosku")
    cust = stack.uid("cust")
    stack.fund(cust, 10**12)  # payment-service approves every order
    limits = {s1: 10, s2: 4, s3: 1}
    for sku, n in limits.items():
        stack.set_stock(sku, n)
    oid = {n: str(uuid.uuid4()) for n in ["p1", "p2"] + [f"o{i}" for i in range(1, 9)]}
    qty = {"p1": (s1, 3), "p2": (s2, 3), "o1": (s1, 5), "o2": (s1, 4), "o3": (s1, 2),
           "o4": (nosku, 1), "o5": (s2, 3), "o6": (s3, 1), "o7": (s3, 1)}
    blocker_sku, blocker = stack.uid("sku"), str(uuid.uuid4())
    stack.set_stock(blocker_sku, 10)
    insert_orders(stack, {oid[n]: (cust, sk, q, 100) for n, (sk, q) in qty.items()})
    insert_orders(stack, {blocker: (cust, blocker_sku, 1, 100)})
    ledger = Ledger(limits, "OUT_OF_STOCK", "UNKNOWN_SKU")
    restart_debug(stack, inventory, "inventory")

    def oc(n):
        return order_created(oid[n], cust, qty[n][0], qty[n][1], 100)

    def comp(n):
        return ("payments.completed", oid[n],
                {"orderId": oid[n], "approved": False, "reason": "INSUFFICIENT_FUNDS"})

    earlier = [oc("p1"), oc("p2")]
    produce_burst(stack, earlier)
    for _, o, v in earlier:
        ledger.take(o, v["sku"], v["quantity"])
        stack.wait_until(lambda o=o: (stack.inventory.reservation(o) is not None, None), 30,
                         f"reservation of {o}")

    phases = [
        [comp("o6")],         # before its order: a tombstone
        [oc("o1"), oc("o1"),  # s1: 7 left -> 2, and a duplicate
         oc("o2"),            # 4 > 2: out of stock
         oc("o3"),            # 2: reserved
         oc("o4"),            # unknown sku
         oc("p1"),            # duplicate of an earlier batch
         oc("o6"), oc("o7")],
        [comp("p2"),          # release of an earlier batch's reservation ...
         comp("o7"),          # ... and of this batch's
         comp("o8"),          # never comes: a tombstone
         comp("o6")],         # a duplicate compensation
        [oc("o5")],           # s2 fits only after p2's release
    ]
    records, coords, batches = burst_behind_blocker(
        stack, inventory, "inventory", "SELECT 1 FROM stock WHERE sku = %s FOR UPDATE",
        (blocker_sku,), order_created(blocker, cust, blocker_sku, 1, 100), phases)
    order = check_burst(stack, "inventory", "reservations", "sku", "quantity", "stock", "sku",
                "available",
                {"TAKEN": "RESERVED", "REFUSED": "REJECTED", "UNDONE": "RELEASED",
                 "CANCELLED": "CANCELLED"},
                "inventory.reserved", "reserved", ledger, records, coords, batches, list(limits))
    assert ledger.replies[oid["o2"]] == [(False, "OUT_OF_STOCK")]
    assert ledger.replies[oid["o3"]] == [(True, "OK")]
    assert ledger.replies[oid["o4"]] == [(False, "UNKNOWN_SKU")]
    assert ledger.replies[oid["o6"]] == [(False, "ORDER_CANCELLED")]
    assert ledger.rows[oid["o7"]][0] == "UNDONE" and ledger.rows[oid["o8"]][0] == "CANCELLED"
    assert ledger.replies[oid["o5"]] == [(True, "OK")]
    assert order == sorted(order), f"phases not taken in order: {order}"


# ------------------------------------------------- order-service


def settle(state, side, yes, why):
    """The order state machine (os_settle.h), one reply: returns (status
    before, status after or None for a duplicate)."""
    before = state["status"]
    if state[side] is not None:
        return before, None
    state[side] = (yes, why)
    p, i = state["payment"], state["inventory"]
    if (p and not p[0]) or (i and not i[0]):
        state["status"] = "REJECTED"
    elif p and i:
        state["status"] = "CONFIRMED"
    return before, state["status"]


def test_order_replies_batch_matches_sequential(stack):
    order_svc = stack.daemons["order-service"]
    cust, sku = stack.uid("cust"), stack.uid("sku")
    names = ["a", "b", "c", "d", "e", "f", "g"]
    oid = {n: str(uuid.uuid4()) for n in names}
    insert_orders(stack, {o: (cust, sku, 1, 1) for o in oid.values()})
    # e and f had a reply before the burst.
    stack.sql("orders", "UPDATE orders SET payment_approved = true, payment_reason = 'OK' "
                        "WHERE order_id = %s", (oid["e"],))
    stack.sql("orders", "UPDATE orders SET payment_approved = false, payment_reason = 'EARLY', "
                        "status = 'REJECTED', settled_at = clock_timestamp() "
                        "WHERE order_id = %s", (oid["f"],))
    state = {o: {"status": "PENDING", "payment": None, "inventory": None} for o in oid.values()}
    state[oid["e"]]["payment"] = (True, "OK")
    state[oid["f"]].update(status="REJECTED", payment=(False, "EARLY"))

    def pay(n, yes, why):
        return ("payments.completed", oid[n], {"orderId": oid[n], "approved": yes,
                                               "reason": why})

    def inv(n, yes, why):
        return ("inventory.reserved", oid[n], {"orderId": oid[n], "reserved": yes,
                                               "reason": why})

    # Nothing else settles once the daemon is restarted: its counters then
    # count the burst alone.
    stack.wait_until(lambda: (stack.sql_one("orders", "SELECT count(*) FROM orders WHERE "
                                                      "status = 'PENDING' AND NOT order_id = "
                                                      "ANY(%s)", (list(oid.values()),)) == 0,
                              None), 90, "the other tests' orders to settle")
    restart_debug(stack, order_svc, "orders")
    blocker = str(uuid.uuid4())
    insert_orders(stack, {blocker: (cust, sku, 1, 1)})
    phases = [[
        pay("a", True, "OK"), inv("a", True, "OK"), pay("a", True, "OK"),   # confirmed, dup
        inv("b", False, "OUT_OF_STOCK"), pay("b", True, "OK"),              # rejected
        pay("c", False, "INSUFFICIENT_FUNDS"), pay("c", True, "OK"),        # first one counts
        pay("d", True, "OK"),                                               # stays pending
        inv("e", True, "OK"),                                               # confirms e
        inv("f", True, "OK"),                                               # f stays rejected
        inv("g", True, "OK"), pay("g", False, "UNKNOWN_CUSTOMER"), inv("g", False, "X"),
    ]]
    records, coords, batches = burst_behind_blocker(
        stack, order_svc, "orders", "SELECT 1 FROM orders WHERE order_id = %s FOR UPDATE",
        (blocker,), ("payments.completed", blocker,
                     {"orderId": blocker, "approved": True, "reason": "OK"}), phases)
    order, batch_of = order_of(batches, coords)
    assert len(set(batch_of.values())) == 1, f"the burst was split: {batches}"
    settled = {"CONFIRMED": 0, "REJECTED": 0}
    for i in order:
        topic, o, v = records[i]
        side = "payment" if topic == "payments.completed" else "inventory"
        before, after = settle(state[o], side, v.get("approved", v.get("reserved")), v["reason"])
        if before == "PENDING" and after in settled:
            settled[after] += 1

    rows = {r[0]: r[1:] for r in stack.sql(
        "orders", "SELECT order_id, status, payment_approved, payment_reason, inventory_reserved,"
                  " inventory_reason, settled_at IS NOT NULL FROM orders WHERE order_id = ANY(%s)",
        (list(oid.values()),))}
    want = {o: (s["status"], *(s["payment"] or (None, None)), *(s["inventory"] or (None, None)),
                s["status"] != "PENDING") for o, s in state.items()}
    assert rows == want, f"orders differ from the sequential run (order {order})"
    assert settled == {"CONFIRMED": 2, "REJECTED": 3}, settled  # a, e / b, c, g
    # The settle counters count what the sequential run settled (done()
    # reads the status each reply found and made from the set statement).
    for s, n in settled.items():
        assert metric(order_svc.url, "orders_settled_total", status=s) == n, s
    assert metric(order_svc.url, "orders_settle_duration_seconds_count",
                  outcome="confirmed") == settled["CONFIRMED"]


# ------------------------------------------------- the statements alone
#
# The exact statements the daemons run (set_sql_dump prints them from the
# subscription tables), on the real PostgreSQL, over many random mixed
# batches: each batch applied as the consumer applies it (runs of one set)
# and one record at a time, each in a transaction that is rolled back; the
# results and every row they touched must agree.


def set_sql():
    tool = os.environ.get("SET_SQL_DUMP") or str(build_dir() / "tests" / "set_sql_dump")
    return json.loads(subprocess.run([tool], check=True, capture_output=True, text=True,
                                     timeout=30).stdout)


def pg_array(vals):
    """A text[] literal, quoted as cm_db_array quotes it."""
    return "{" + ",".join('"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
                          for v in vals) + "}"


def apply_runs(cur, subs, recs, shape=tuple):
    """recs: [(topic, row)]. Runs each run of consecutive records of one set
    as the loop does; returns {record index: [shape(row) per statement, or
    None]} (row without its ordinal)."""
    out, i = {}, 0
    while i < len(recs):
        stmts = subs[recs[i][0]]["statements"]
        j = i
        while j < len(recs) and subs[recs[j][0]]["statements"] == stmts:
            j += 1
        cols = list(zip(*(row for _, row in recs[i:j])))
        for k, st in enumerate(stmts):
            sql = re.sub(r"\$(\d+)", r"%(p\1)s", st["sql"].replace("%", "%%"))
            cur.execute(sql, {f"p{c + 1}": pg_array(cols[c]) for c in range(st["nparams"])})
            for row in (cur.fetchall() if cur.description else []):
                out.setdefault(i + int(row[0]) - 1, [None] * len(stmts))[k] = shape(row[1:])
        i = j
    return out


def differential(stack, db, subs, trial, snapshot, trials, shape=tuple):
    """For each seed: trial(rng) gives (setup(cur), records); the batch and
    the one-record runs must give the same results and snapshot(cur)."""
    with psycopg.connect(stack.dsn(db)) as conn:
        for seed in range(trials):
            setup, recs = trial(random.Random(seed))
            got = []
            for alone in (False, True):
                with conn.transaction(force_rollback=True):
                    cur = conn.cursor()
                    setup(cur)
                    if alone:
                        res = {}
                        for n, r in enumerate(recs):
                            res.update({n: v for v in apply_runs(cur, subs, [r], shape).values()})
                    else:
                        res = apply_runs(cur, subs, recs, shape)
                    got.append((res, snapshot(cur)))
            assert got[0] == got[1], f"seed {seed}: batch {got[0]} != one by one {got[1]}"


def ledger_trial(key_kind, unknown_key, amount_of, comp_topic, reply):
    """Random batches for payment-service or inventory-service."""
    def trial(rng):
        tag = uuid.uuid4().hex[:12]
        keys = [f"{key_kind}-{tag}-{i}" for i in range(rng.randint(1, 4))]
        limits = {k: rng.randint(0, 300) for k in keys}
        oids = [f"o-{tag}-{i}" for i in range(rng.randint(1, 12))]
        orders = {o: (rng.choice(keys + [f"{unknown_key}-{tag}"]), amount_of(rng)) for o in oids}

        def oc(o):
            k, n = orders[o]
            return ("orders.created", (o, k, str(n), reply, f"ok-{o}", f"short-{o}",
                                       f"unknown-{o}", f"cancelled-{o}", json.dumps({"o": o})))
        prior = [oc(o) for o in oids if rng.random() < 0.3]
        recs = [oc(o) if rng.random() < 0.6 else (comp_topic, (o, "NO"))
                for o in (rng.choice(oids) for _ in range(rng.randint(1, 30)))]
        return (keys, oids, limits, prior), recs
    return trial


def test_set_statements_match_one_by_one_payment(stack):
    subs = set_sql()["subscriptions"]["payment-service"]
    gen = ledger_trial("cust", "nobody", lambda rng: rng.randint(0, 150), "inventory.reserved",
                       "payments.completed")
    state = {}

    def trial(rng):
        (keys, oids, limits, prior), recs = gen(rng)

        def setup(cur):
            for k, v in limits.items():
                cur.execute("INSERT INTO accounts(customer_id, balance_cents) VALUES (%s, %s)",
                            (k, v))
            apply_runs(cur, subs, prior)
        state.update(keys=keys, oids=oids)
        return setup, recs

    def snapshot(cur):
        cur.execute("SELECT customer_id, balance_cents FROM accounts WHERE customer_id = ANY(%s)"
                    " ORDER BY 1", (state["keys"],))
        a = cur.fetchall()
        cur.execute("SELECT order_id, customer_id, amount_cents, status, reason, refund_reason"
                    " FROM payments WHERE order_id = ANY(%s) ORDER BY 1", (state["oids"],))
        p = cur.fetchall()
        cur.execute("SELECT topic, msg_key, payload, headers FROM outbox WHERE msg_key = ANY(%s)"
                    " ORDER BY id", (state["oids"],))
        return a, p, cur.fetchall()

    differential(stack, "payments", subs, trial, snapshot, 150)


def test_set_statements_match_one_by_one_inventory(stack):
    subs = set_sql()["subscriptions"]["inventory-service"]
    gen = ledger_trial("sku", "nosku", lambda rng: rng.randint(1, 150), "payments.completed",
                       "inventory.reserved")
    state = {}

    def trial(rng):
        (keys, oids, limits, prior), recs = gen(rng)

        def setup(cur):
            for k, v in limits.items():
                cur.execute("INSERT INTO stock(sku, available) VALUES (%s, %s)", (k, v))
            apply_runs(cur, subs, prior)
        state.update(keys=keys, oids=oids)
        return setup, recs

    def snapshot(cur):
        cur.execute("SELECT sku, available FROM stock WHERE sku = ANY(%s) ORDER BY 1",
                    (state["keys"],))
        a = cur.fetchall()
        cur.execute("SELECT order_id, sku, quantity, status, reason, release_reason"
                    " FROM reservations WHERE order_id = ANY(%s) ORDER BY 1", (state["oids"],))
        p = cur.fetchall()
        cur.execute("SELECT topic, msg_key, payload, headers FROM outbox WHERE msg_key = ANY(%s)"
                    " ORDER BY id", (state["oids"],))
        return a, p, cur.fetchall()

    differential(stack, "inventory", subs, trial, snapshot, 150)


def test_set_statements_match_one_by_one_order_replies(stack):
    dump = set_sql()
    subs, tables = dump["subscriptions"]["order-service"], dump["tables"]
    state = {}
    status = {(0, 0): "PENDING", (1, 0): "PENDING", (0, 1): "PENDING", (1, 1): "CONFIRMED"}

    def trial(rng):
        tag = uuid.uuid4().hex[:12]
        oids = [f"o-{tag}-{i}" for i in range(rng.randint(1, 6))]
        prior = {o: (rng.choice([0, 0, 0, 1, 2]), rng.choice([0, 0, 0, 1, 2])) for o in oids}
        recs = []
        for _ in range(rng.randint(1, 20)):
            side = rng.choice(["payment", "inventory"])
            yes = rng.random() < 0.7
            topic = "payments.completed" if side == "payment" else "inventory.reserved"
            flag = "true" if yes else "false"
            recs.append((topic, (rng.choice(oids), side, flag, rng.choice(["OK", "X"]),
                                 tables[side][flag])))

        def setup(cur):
            for o, (p, i) in prior.items():
                st = "REJECTED" if 2 in (p, i) else status[(p, i)]
                cur.execute(
                    "INSERT INTO orders(order_id, customer_id, sku, quantity, amount_cents, status,"
                    " payment_approved, payment_reason, inventory_reserved, inventory_reason,"
                    " settled_at) VALUES (%s, 'c', 's', 1, 1, %s, %s, %s, %s, %s,"
                    " CASE WHEN %s <> 'PENDING' THEN now() END)",
                    (o, st, None if p == 0 else p == 1, "old" if p else None,
                     None if i == 0 else i == 1, "old" if i else None, st))
        state.update(oids=oids)
        return setup, recs

    def snapshot(cur):
        cur.execute("SELECT order_id, status, payment_approved, payment_reason,"
                    " inventory_reserved, inventory_reason, payment_at IS NULL,"
                    " inventory_at IS NULL, settled_at IS NULL FROM orders"
                    " WHERE order_id = ANY(%s) ORDER BY 1", (state["oids"],))
        return cur.fetchall()

    # The settle seconds depend on the clock: compared as present or not.
    differential(stack, "orders", subs, trial, snapshot, 200,
                 shape=lambda r: (r[0], r[1], r[2] is not None))


def test_idle_relays_wait_without_round_trips(stack):
    """An idle relay waits on its session's socket for the outbox's
    notification, on its producer's event pipe and on stop, without polling:
    over 4 s with no orders, each relay makes at most one round trip (its
    30-second guard pass may fall in the window; it used to pass every
    second). The first order after the quiet still settles at once: the
    notification of its outbox row wakes each relay."""
    names = ("order-service", "payment-service", "inventory-service")
    daemons = [stack.daemons[n] for n in names]

    def trips():
        return [metric(d.url, "orders_db_round_trips_total", path="relay") for d in daemons]

    time.sleep(1)  # rows of earlier tests: published, and deleted 20 ms later
    before = trips()
    time.sleep(4)
    after = trips()
    for n, b, a in zip(names, before, after):
        assert a - b <= 1, f"{n}: the idle relay made {a - b:.0f} round trips in 4 s"
    cust, sku = stack.uid("idle-c"), stack.uid("idle-s")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 5)
    t0 = time.monotonic()
    order_id = stack.orders.create_ok(cust, sku, 1, 100)
    o = stack.orders.wait_settled(order_id, timeout=20, need=("payment", "inventory"))
    assert o["status"] == "CONFIRMED", o
    assert time.monotonic() - t0 < 5, "the order waited for a relay's guard pass"


def test_replies_with_nothing_to_undo_cost_no_round_trip(stack):
    """A reply that undoes nothing (stock reserved, as payment-service reads
    it; a charge, as inventory-service reads it) opens no transaction: while
    a burst of such records is consumed, the consumer's PostgreSQL round
    trips (orders_db_round_trips_total{path="consumer"}) stay where they
    were, and nothing is written for those orders. The orders exist in
    order-service's database only (no OrderCreated), so that order-service
    settles them from the same replies instead of retrying replies to
    unknown orders, and dead-lettering them, for minutes after the test."""
    payment, inventory = stack.daemons["payment-service"], stack.daemons["inventory-service"]
    keys = [stack.uid("noop") for _ in range(20)]
    watched = ((payment, "inventory.reserved"), (inventory, "payments.completed"))
    for k in keys:
        stack.sql("orders", "INSERT INTO orders(order_id, customer_id, sku, quantity,"
                  " amount_cents, status) VALUES (%s, 'noop', 'noop', 1, 0, 'PENDING')", (k,))

    def counters():
        return {d.name: (metric(d.url, "orders_db_round_trips_total", path="consumer"),
                         metric(d.url, "orders_records_consumed_total", topic=t))
                for d, t in watched}

    before = counters()
    produce_burst(stack, [("inventory.reserved", k, {"orderId": k, "reserved": True,
                                                     "reason": "OK"}) for k in keys]
                  + [("payments.completed", k, {"orderId": k, "approved": True, "reason": "OK"})
                     for k in keys])
    stack.wait_until(lambda: all(counters()[d.name][1] >= before[d.name][1] + len(keys)
                                 for d, _ in watched),
                     30, "both consumers to take the burst")
    after = counters()
    for d, _ in watched:
        assert after[d.name][1] == before[d.name][1] + len(keys), (d.name, before, after)
        assert after[d.name][0] == before[d.name][0], (
            f"{d.name}: {after[d.name][0] - before[d.name][0]:.0f} round trips for records "
            "with nothing to do")
    for db, table in (("payments", "payments"), ("inventory", "reservations")):
        with psycopg.connect(stack.dsn(db), autocommit=True) as conn:
            n = conn.execute(f"SELECT count(*) FROM {table} WHERE order_id = ANY(%s)",
                             (keys,)).fetchone()[0]
        assert n == 0, f"{n} {table} rows written for replies with nothing to undo"
    stack.wait_until(lambda: stack.sql_one("orders", "SELECT count(*) FROM orders WHERE"
                                           " order_id = ANY(%s) AND status = 'CONFIRMED'",
                                           (keys,)) == len(keys),
                     30, "order-service to settle the orders from the same replies")

