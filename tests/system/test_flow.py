"""
End-to-end flow through the real daemons, broker and databases: confirmations,
rejections with their reasons, duplicate OrderCreated records, a burst of
concurrent orders against limited funds and stock, and kill -9 of
payment-service mid-stream. Each test uses its own customers, skus and orders.
"""

import json
import random
import re
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor


FINAL = ("CONFIRMED", "REJECTED")
TRACEPARENT_RE = re.compile(r"^00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$")


def assert_uuid(s):
    assert str(uuid.UUID(s)) == s.lower(), f"not a uuid: {s!r}"


def assert_order_fields(o, order_id, customer, sku, qty, amount):
    assert o["orderId"] == order_id
    assert o["customerId"] == customer
    assert o["sku"] == sku
    assert o["quantity"] == qty
    assert o["amountCents"] == amount


# ---------------------------------------------------------------- reconciliation


def reconcile(stack, initial_balance, initial_stock, order_ids):
    """Checks the invariants of a quiet system for this test's customers, skus
    and orders. Returns (ok, problems): problems is a list of strings."""
    customers = list(initial_balance)
    skus = list(initial_stock)
    ids = set(order_ids)
    problems = []

    orders = {r[0]: r for r in stack.sql(
        "orders", "SELECT order_id, customer_id, sku, quantity, amount_cents, status "
        "FROM orders WHERE order_id = ANY(%s)", (list(ids),))}
    missing = ids - set(orders)
    if missing:
        problems.append(f"{len(missing)} posted orders missing from the orders table")
    pending = [i for i, r in orders.items() if r[5] not in FINAL]
    if pending:
        problems.append(f"{len(pending)} orders not settled, e.g. {pending[:3]}")

    balances = dict(stack.sql("payments", "SELECT customer_id, balance_cents FROM accounts "
                                          "WHERE customer_id = ANY(%s)", (customers,)))
    stock = dict(stack.sql("inventory", "SELECT sku, available FROM stock WHERE sku = ANY(%s)",
                           (skus,)))
    payments = stack.sql("payments", "SELECT order_id, customer_id, amount_cents, status "
                                     "FROM payments WHERE customer_id = ANY(%s)", (customers,))
    reservations = stack.sql("inventory", "SELECT order_id, sku, quantity, status "
                                          "FROM reservations WHERE sku = ANY(%s)", (skus,))

    for c in customers:
        if balances.get(c) is None or balances[c] < 0:
            problems.append(f"balance of {c} is {balances.get(c)}")
    for s in skus:
        if stock.get(s) is None or stock[s] < 0:
            problems.append(f"stock of {s} is {stock.get(s)}")

    charged = {c: 0 for c in customers}
    charged_orders = {}
    for oid, cust, amount, status in payments:
        o = orders.get(oid)
        if oid not in ids or o is None:
            problems.append(f"payment for unknown order {oid}")
            continue
        if (cust, amount) != (o[1], o[4]):
            problems.append(f"payment {oid} is {cust}/{amount}, order says {o[1]}/{o[4]}")
        if status == "CHARGED":
            charged[cust] += amount
            charged_orders[oid] = charged_orders.get(oid, 0) + 1
    for c in customers:
        if balances.get(c) is not None and initial_balance[c] - balances[c] != charged[c]:
            problems.append(f"customer {c}: initial {initial_balance[c]} - balance {balances[c]} "
                            f"!= charged {charged[c]}")

    reserved = {s: 0 for s in skus}
    reserved_orders = {}
    for oid, sku, qty, status in reservations:
        o = orders.get(oid)
        if oid not in ids or o is None:
            problems.append(f"reservation for unknown order {oid}")
            continue
        if (sku, qty) != (o[2], o[3]):
            problems.append(f"reservation {oid} is {sku}/{qty}, order says {o[2]}/{o[3]}")
        if status == "RESERVED":
            reserved[sku] += qty
            reserved_orders[oid] = reserved_orders.get(oid, 0) + 1
    for s in skus:
        if stock.get(s) is not None and initial_stock[s] - stock[s] != reserved[s]:
            problems.append(f"sku {s}: initial {initial_stock[s]} - available {stock[s]} "
                            f"!= reserved {reserved[s]}")

    for oid, r in orders.items():
        if r[5] == "CONFIRMED" and (charged_orders.get(oid) != 1 or reserved_orders.get(oid) != 1):
            problems.append(f"confirmed order {oid}: charged {charged_orders.get(oid, 0)}x, "
                            f"reserved {reserved_orders.get(oid, 0)}x")
        if r[5] == "REJECTED" and (oid in charged_orders or oid in reserved_orders):
            problems.append(f"rejected order {oid} still charged/reserved")
    return not problems, problems


def wait_reconciled(stack, initial_balance, initial_stock, order_ids, timeout=60):
    # Compensation (refund/release) may finish after the order is settled.
    stack.wait_until(lambda: reconcile(stack, initial_balance, initial_stock, order_ids),
                     timeout, "money and stock to reconcile", interval=0.5)


def wait_all_final(stack, order_ids, timeout):
    ids = list(order_ids)

    def all_final():
        rows = stack.sql("orders", "SELECT status, count(*) FROM orders "
                                   "WHERE order_id = ANY(%s) GROUP BY status", (ids,))
        counts = dict(rows)
        final = sum(counts.get(s, 0) for s in FINAL)
        return final == len(ids), counts

    return stack.wait_until(all_final, timeout, f"all {len(ids)} orders CONFIRMED or REJECTED",
                            interval=0.5)[1]


# ---------------------------------------------------------------- (a) happy path


def test_order_confirms(stack):
    cust, sku = stack.uid("cust"), stack.uid("sku")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 7)
    assert stack.payments.balance(cust) == 10_000
    assert stack.inventory.stock(sku) == 7

    r = stack.orders.create(cust, sku, 3, 2_499)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["status"] == "PENDING"
    order_id = body["orderId"]
    assert_uuid(order_id)
    assert r.headers.get("Location") in (f"/orders/{order_id}",
                                         f"{stack.orders.base}/orders/{order_id}"), r.headers

    o = stack.orders.wait_settled(order_id, need=("payment", "inventory"))
    assert o["status"] == "CONFIRMED", o
    assert_order_fields(o, order_id, cust, sku, 3, 2_499)
    assert o["payment"]["approved"] is True and o["payment"]["reason"] == "OK", o
    assert o["inventory"]["reserved"] is True and o["inventory"]["reason"] == "OK", o
    created, settled = stack.parse_ts(o["createdAt"]), stack.parse_ts(o["settledAt"])
    assert created <= settled <= stack.parse_ts(o["updatedAt"]), o
    for side in ("payment", "inventory"):
        assert created <= stack.parse_ts(o[side]["at"]) <= settled, o

    assert stack.payments.balance(cust) == 10_000 - 2_499
    assert stack.inventory.stock(sku) == 7 - 3
    p = stack.payments.payment(order_id)
    p_created = stack.parse_ts(p.pop("createdAt"))
    assert p == {"orderId": order_id, "customerId": cust, "amountCents": 2_499,
                 "status": "CHARGED", "reason": "OK", "refundReason": None,
                 "refundedAt": None}, p
    res = stack.inventory.reservation(order_id)
    res_created = stack.parse_ts(res.pop("createdAt"))
    assert res == {"orderId": order_id, "sku": sku, "quantity": 3, "status": "RESERVED",
                   "reason": "OK", "releaseReason": None, "releasedAt": None}, res
    # Charged and reserved after the order was placed, before it settled.
    assert created <= p_created <= settled and created <= res_created <= settled
    # Location points at the order.
    assert stack.orders.get(r.headers["Location"].replace(stack.orders.base, "")).json() == o


# ---------------------------------------------------------------- (b) payment declined


def test_payment_declined_insufficient_funds(stack):
    cust, sku = stack.uid("cust"), stack.uid("sku")
    stack.fund(cust, 999)
    stack.set_stock(sku, 5)
    order_id = stack.orders.create_ok(cust, sku, 2, 1_000)

    o = stack.orders.wait_settled(order_id, need=("payment",))
    assert o["status"] == "REJECTED", o
    assert o["payment"]["approved"] is False, o
    assert o["payment"]["reason"] == "INSUFFICIENT_FUNDS", o
    assert o["settledAt"] is not None
    p = stack.payments.payment(order_id)
    assert p is not None and p["status"] == "DECLINED" and p["reason"] == "INSUFFICIENT_FUNDS", p
    assert stack.payments.balance(cust) == 999
    # Stock reserved for it (if any) is released again.
    stack.wait_until(lambda: (stack.inventory.stock(sku) == 5, stack.inventory.stock(sku)), 30,
                     f"stock of {sku} back to 5")
    assert stack.orders.order(order_id)["status"] == "REJECTED"


def test_payment_declined_unknown_customer(stack):
    cust, sku = stack.uid("nobody"), stack.uid("sku")
    stack.set_stock(sku, 5)
    order_id = stack.orders.create_ok(cust, sku, 1, 100)

    o = stack.orders.wait_settled(order_id, need=("payment",))
    assert o["status"] == "REJECTED", o
    assert o["payment"]["approved"] is False, o
    assert o["payment"]["reason"] == "UNKNOWN_CUSTOMER", o
    assert stack.payments.balance(cust) is None, "a declined payment must not create an account"
    stack.wait_until(lambda: (stack.inventory.stock(sku) == 5, stack.inventory.stock(sku)), 30,
                     f"stock of {sku} back to 5")


# ---------------------------------------------------------------- (c) stock rejected


def test_inventory_rejected_out_of_stock(stack):
    cust, sku = stack.uid("cust"), stack.uid("sku")
    stack.fund(cust, 5_000)
    stack.set_stock(sku, 2)
    order_id = stack.orders.create_ok(cust, sku, 3, 1_500)

    o = stack.orders.wait_settled(order_id, need=("inventory",))
    assert o["status"] == "REJECTED", o
    assert o["inventory"]["reserved"] is False, o
    assert o["inventory"]["reason"] == "OUT_OF_STOCK", o
    r = stack.inventory.reservation(order_id)
    assert r is not None and r["status"] == "REJECTED" and r["reason"] == "OUT_OF_STOCK", r
    assert stack.inventory.stock(sku) == 2
    # A charge made for it (if any) is refunded.
    stack.wait_until(lambda: (stack.payments.balance(cust) == 5_000, stack.payments.balance(cust)),
                     30, f"balance of {cust} back to 5000")
    assert stack.orders.order(order_id)["status"] == "REJECTED"


def test_inventory_rejected_unknown_sku(stack):
    cust, sku = stack.uid("cust"), stack.uid("nosku")
    stack.fund(cust, 5_000)
    order_id = stack.orders.create_ok(cust, sku, 1, 700)

    o = stack.orders.wait_settled(order_id, need=("inventory",))
    assert o["status"] == "REJECTED", o
    assert o["inventory"]["reserved"] is False, o
    assert o["inventory"]["reason"] == "UNKNOWN_SKU", o
    assert stack.inventory.stock(sku) is None, "a rejected reservation must not create stock"
    stack.wait_until(lambda: (stack.payments.balance(cust) == 5_000, stack.payments.balance(cust)),
                     30, f"balance of {cust} back to 5000")


# ---------------------------------------------------------------- (d) duplicate OrderCreated


def _check_reply(msg, event_type, order_id, flag):
    headers = {}
    for k, v in msg.headers() or []:
        assert k not in headers, f"header {k} twice on {msg.topic()}"
        headers[k] = v
    assert headers.get("event-type") == event_type.encode(), headers
    assert headers.get("event-version") == b"1", headers
    assert headers.get("__TypeId__") == f"com.devcraftly.orders.events.{event_type}".encode()
    assert_uuid(headers["event-id"].decode())
    assert TRACEPARENT_RE.match(headers["traceparent"].decode()), headers
    assert msg.key() == order_id.encode()
    value = json.loads(msg.value())
    assert value == {"orderId": order_id, flag: True, "reason": "OK"}, value


def test_duplicate_order_created_charges_and_reserves_once(stack):
    cust, sku = stack.uid("cust"), stack.uid("sku")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 10)
    order_id = str(uuid.uuid4())

    # The same record twice (same key and value, each with its own event id).
    value = stack.produce_order_created(order_id, cust, sku, 4, 3_210)
    stack.produce_order_created(order_id, cust, sku, 4, 3_210, value=value)

    stack.wait_until(lambda: (stack.payments.payment(order_id) is not None
                              and stack.inventory.reservation(order_id) is not None, None),
                     30, f"payment and reservation rows for {order_id}")
    # And once more after the first one was applied: a late redelivery.
    stack.produce_order_created(order_id, cust, sku, 4, 3_210, value=value)

    replies = stack.collect_records(["payments.completed", "inventory.reserved"], order_id,
                                    timeout=30, grace=5.0)
    pc, ir = replies["payments.completed"], replies["inventory.reserved"]
    assert len(pc) == 1, f"expected exactly one PaymentCompleted for {order_id}, got {len(pc)}"
    assert len(ir) == 1, f"expected exactly one InventoryReserved for {order_id}, got {len(ir)}"
    _check_reply(pc[0], "PaymentCompleted", order_id, "approved")
    _check_reply(ir[0], "InventoryReserved", order_id, "reserved")

    assert stack.payments.balance(cust) == 10_000 - 3_210
    assert stack.inventory.stock(sku) == 10 - 4
    assert stack.sql("payments", "SELECT count(*), sum(amount_cents) FROM payments "
                                 "WHERE order_id = %s", (order_id,)) == [(1, 3_210)]
    assert stack.sql("inventory", "SELECT count(*), sum(quantity) FROM reservations "
                                  "WHERE order_id = %s", (order_id,)) == [(1, 4)]
    assert stack.payments.payment(order_id)["status"] == "CHARGED"
    assert stack.inventory.reservation(order_id)["status"] == "RESERVED"


# ---------------------------------------------------------------- (e) concurrency


def test_concurrent_orders_against_limited_funds_and_stock(stack):
    rng = random.Random(20261126)
    customers = [stack.uid("cust") for _ in range(5)]
    skus = [stack.uid("sku") for _ in range(3)]
    initial_balance = {c: 15_000 for c in customers}
    initial_stock = {s: 120 for s in skus}
    for c, b in initial_balance.items():
        stack.fund(c, b)
    for s, n in initial_stock.items():
        stack.set_stock(s, n)
    # Demand is about twice what funds and stock allow: some must reject.
    plan = [(customers[i % 5], rng.choice(skus), rng.randint(1, 3), rng.randint(100, 900))
            for i in range(300)]

    def post(args):
        r = stack.orders.create(*args)
        return r.status_code, r.text, (r.json()["orderId"] if r.status_code == 202 else None)

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(post, plan))
    bad = [(code, text) for code, text, _ in results if code != 202]
    assert not bad, f"{len(bad)} POSTs failed, e.g. {bad[:3]}"
    order_ids = [oid for _, _, oid in results]
    assert len(set(order_ids)) == 300

    counts = wait_all_final(stack, order_ids, timeout=120)
    assert counts.get("CONFIRMED", 0) > 0 and counts.get("REJECTED", 0) > 0, counts
    wait_reconciled(stack, initial_balance, initial_stock, order_ids)

    # Replies arrive in any order: when one side's NO reaches the other side
    # before the order does, the other side answers ORDER_CANCELLED (and never
    # charges or reserves), so that reason is allowed only opposite a real NO.
    reasons = {"payment": {"OK", "INSUFFICIENT_FUNDS", "ORDER_CANCELLED"},
               "inventory": {"OK", "OUT_OF_STOCK", "ORDER_CANCELLED"}}
    for oid, args in zip(order_ids, plan):
        o = stack.orders.order(oid)
        assert_order_fields(o, oid, *args)
        assert o["status"] in FINAL and o["settledAt"] is not None, o
        for side, other, flag in (("payment", "inventory", "approved"),
                                  ("inventory", "payment", "reserved")):
            if o[side] is not None:
                assert o[side]["reason"] in reasons[side], o
                assert o[side][flag] == (o[side]["reason"] == "OK"), o
                if o[side]["reason"] == "ORDER_CANCELLED":
                    assert o["status"] == "REJECTED", o
                    assert o[other] is not None and o[other]["reason"] not in (
                        "OK", "ORDER_CANCELLED"), o
        if o["status"] == "CONFIRMED":
            assert o["payment"]["approved"] and o["inventory"]["reserved"], o
        else:
            assert ((o["payment"] is not None and not o["payment"]["approved"])
                    or (o["inventory"] is not None and not o["inventory"]["reserved"])), o


# ---------------------------------------------------------------- (f) kill -9


def test_kill9_payment_service_mid_stream(stack):
    payment = stack.daemons["payment-service"]
    customers = [stack.uid("cust") for _ in range(3)]
    skus = [stack.uid("sku") for _ in range(2)]
    initial_balance = {c: 10_000_000 for c in customers}
    initial_stock = {s: 100_000 for s in skus}
    for c, b in initial_balance.items():
        stack.fund(c, b)
    for s, n in initial_stock.items():
        stack.set_stock(s, n)
    rng = random.Random(9)
    plan = [(customers[i % 3], skus[i % 2], rng.randint(1, 5), rng.randint(1, 10_000))
            for i in range(150)]

    posted, failures = [], []

    def poster():
        for args in plan:
            try:
                r = stack.orders.create(*args)
                if r.status_code == 202:
                    posted.append(r.json()["orderId"])
                else:
                    failures.append((r.status_code, r.text))
            except Exception as e:  # reported below
                failures.append(repr(e))
            time.sleep(0.01)  # pacing, so that the kill lands mid-stream

    t = threading.Thread(target=poster, name="poster", daemon=True)
    t.start()
    try:
        stack.wait_until(lambda: (len(posted) >= 50, len(posted)), 60, "50 orders posted")
        stack.wait_until(
            lambda: (stack.sql_one("payments", "SELECT count(*) FROM payments "
                                               "WHERE customer_id = ANY(%s)", (customers,)) > 0,
                     None), 30, "payment-service to have charged something")
        payment.kill9()
        n_at_kill = len(posted)
        stack.wait_until(lambda: (len(posted) >= min(150, n_at_kill + 30), len(posted)), 60,
                         "30 more orders posted while payment-service is down")
        payment.restart()
    finally:
        t.join(120)
    assert not t.is_alive(), "poster thread did not finish"
    assert not failures, f"{len(failures)} POSTs failed, e.g. {failures[:3]}"
    assert len(posted) == 150

    # A killed consumer's partitions move only after its session times out.
    counts = wait_all_final(stack, posted, timeout=180)
    assert counts == {"CONFIRMED": 150}, counts
    wait_reconciled(stack, initial_balance, initial_stock, posted)
    # Charged once, per customer: each balance moved by exactly the amounts of
    # that customer's orders (a row count keyed on the order id could not fail).
    for c in customers:
        spent = sum(a[3] for a in plan if a[0] == c)
        assert initial_balance[c] - stack.payments.balance(c) == spent, f"{c}: not {spent}"
