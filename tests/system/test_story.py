"""
One order's story and the stuck orders on the real stack: `orderctl order ID`
and `orderctl orders stuck` read the three daemons' HTTP APIs (with a bearer
token) and the dead-letter topics of the real broker, and the read routes
behind them (GET /orders?status=PENDING, GET /outbox/{orderId}, the times and
reasons of GET /payments and GET /reservations).

Covered: a confirmed order (its trace id is the one the client's traceparent
started), a rejected order compensated each way (refund, release: a daemon is
stopped to fix the order of events, which is also the "service down" case:
exit 69 naming it), an order whose reply was dead-lettered, an outbox row not
yet published, an unknown id (exit 1), refused tokens (exit 77), HTTPS with
--cacert, stuck orders with the missing reply and an empty result.
"""

import json
import os
import re
import subprocess
import uuid

import requests

from conftest import PORT_OFFSET, SERVICES, build_dir, make_pki
from helpers import SPRING_CAUSE_POISON, dlt_records, headers, locked_outbox_row, produce_raw

HEX32 = re.compile(r"^[0-9a-f]{32}$")


def orderctl(stack, *args, token="admin", timeout=120, env_extra=None):
    """Runs orderctl against the test stack; returns the CompletedProcess."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAFKA_") and k not in ("ORDERCTL_TOKEN", "ORDERS_URL",
                                                        "PAYMENTS_URL", "INVENTORY_URL")}
    env.update(ORDERS_URL=stack.daemons["order-service"].url,
               PAYMENTS_URL=stack.daemons["payment-service"].url,
               INVENTORY_URL=stack.daemons["inventory-service"].url)
    if token:
        env["ORDERCTL_TOKEN"] = stack.tokens[token][0]
    env.update(env_extra or {})
    cmd = [str(build_dir() / "tools" / "orderctl"), *args, "--bootstrap", stack.bootstrap,
           "--timeout", "10"]
    cp = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                        timeout=timeout, env=env)
    print(f"$ orderctl {' '.join(args)} -> exit {cp.returncode}\n{cp.stdout}{cp.stderr}")
    return cp


def story(stack, oid, *args, expect=0, **kw):
    cp = orderctl(stack, "order", oid, "--json", *args, **kw)
    assert cp.returncode == expect, f"exit {cp.returncode}, expected {expect}: {cp.stderr}"
    return json.loads(cp.stdout)


def events(st, source=None):
    return [e["event"] for e in st["timeline"] if source is None or e["source"] == source]


def index_of(st, needle):
    for i, e in enumerate(st["timeline"]):
        if needle in e["event"]:
            return i
    raise AssertionError(f"no timeline event with {needle!r}: {events(st)}")


def assert_time_order(st):
    times = [stack_time(e["at"]) for e in st["timeline"]]
    assert times == sorted(times), f"timeline not in time order: {st['timeline']}"


def stack_time(s):
    # microseconds (order-service) or milliseconds (DLT): compare as numbers
    head, _, frac = s.rstrip("Z").partition(".")
    return head, float("0." + (frac or "0"))


def stuck(stack, *args, expect=None):
    cp = orderctl(stack, "orders", "stuck", "--json", *args)
    if expect is not None:
        assert cp.returncode == expect, f"exit {cp.returncode}, expected {expect}: {cp.stderr}"
    return cp, json.loads(cp.stdout) if cp.stdout.strip() else None


def place(stack, cust, sku, qty, amount, traceparent=None):
    h = {"traceparent": traceparent} if traceparent else {}
    r = stack.orders.post("/orders", json={"customerId": cust, "sku": sku, "quantity": qty,
                                           "amountCents": amount}, headers=h)
    assert r.status_code == 202, r.text
    return r.json()["orderId"]


def test_confirmed_order(stack):
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 1000)
    stack.set_stock(sku, 5)
    trace = uuid.uuid4().hex
    oid = place(stack, cust, sku, 2, 300, f"00-{trace}-{uuid.uuid4().hex[:16]}-01")
    stack.orders.wait_settled(oid, need=("payment", "inventory"))

    st = story(stack, oid)
    assert st["orderId"] == oid and st["found"] is True
    assert st["traceId"] == trace, "the trace id must be the one the client's traceparent started"
    assert st["order"]["status"] == "CONFIRMED" and st["order"]["traceId"] == trace
    assert st["payment"]["status"] == "CHARGED" and st["payment"]["amountCents"] == 300
    assert st["payment"]["refundedAt"] is None
    assert st["reservation"]["status"] == "RESERVED" and st["reservation"]["quantity"] == 2
    assert st["deadLetters"] == [] and st["unavailable"] == []
    assert st["outbox"] == {name: [] for name in SERVICES}, st["outbox"]
    assert_time_order(st)
    placed, settled = index_of(st, "order placed"), index_of(st, "settled: CONFIRMED")
    assert placed == 0 and settled == len(st["timeline"]) - 1
    assert "charged 300 cents" in " ".join(events(st, "payment-service"))
    assert "reserved 2 x " + sku in " ".join(events(st, "inventory-service"))
    assert "payment reply: approved (OK)" in events(st, "order-service")

    # The text form tells the same story.
    cp = orderctl(stack, "order", oid)
    assert cp.returncode == 0, cp.stderr
    assert f"trace id:  {trace}" in cp.stdout and "settled: CONFIRMED" in cp.stdout
    assert "dead-letter records of this order" in cp.stdout

    # An order made without traceparent gets a fresh trace id of its own.
    other = place(stack, cust, sku, 1, 100)
    got = stack.orders.order(other)["traceId"]
    assert HEX32.match(got) and got != trace


def test_declined_payment_released_and_payment_service_down(stack):
    """payment-service is stopped, so the stock is reserved first; orderctl
    names the daemon that is down (exit 69) and still prints the rest. Once it
    is back it declines and inventory-service releases the stock."""
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 100)
    stack.set_stock(sku, 5)
    pay = stack.daemons["payment-service"]
    pay.stop()
    try:
        oid = place(stack, cust, sku, 3, 500)
        stack.wait_until(lambda: (stack.inventory.reservation(oid) or {}).get("status")
                         == "RESERVED", 30, "stock reserved while payment-service is down")
        cp = orderctl(stack, "order", oid, "--json")
        assert cp.returncode == 69, cp.stderr
        assert "payment-service" in cp.stderr and "unreachable" in cp.stderr
        assert "order-service" not in cp.stderr and "inventory-service" not in cp.stderr
        st = json.loads(cp.stdout)
        assert st["order"]["status"] == "PENDING" and st["payment"] is None
        assert st["reservation"]["status"] == "RESERVED"
        assert [u["service"] for u in st["unavailable"]] == ["payment-service"]

        cp, listed = stuck(stack, "--older-than", "0s", "--limit", "1000", expect=1)
        mine = [o for o in listed["orders"] if o["orderId"] == oid]
        assert len(mine) == 1 and mine[0]["missing"] == "payment", listed
    finally:
        pay.restart()
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    stack.wait_until(lambda: (stack.inventory.reservation(oid) or {}).get("status")
                     == "RELEASED", 30, "stock released after the decline")

    st = story(stack, oid)
    assert st["order"]["status"] == "REJECTED"
    assert st["payment"]["status"] == "DECLINED"
    assert st["payment"]["reason"] == "INSUFFICIENT_FUNDS"
    r = st["reservation"]
    assert r["status"] == "RELEASED" and r["releasedAt"] and r["releaseReason"]
    assert_time_order(st)
    assert index_of(st, "reserved 3 x") < index_of(st, "declined 500 cents")
    assert index_of(st, "declined 500 cents") < index_of(st, "released 3 x")
    assert "payment reply: declined (INSUFFICIENT_FUNDS)" in events(st, "order-service")


def test_rejected_stock_refunded_and_stuck_while_inventory_is_down(stack):
    """inventory-service is stopped: the order waits for its stock reply and
    `orders stuck` says so; once it is back the stock is rejected and the
    charge refunded, and the story shows the refund after the charge."""
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 1000)
    stack.set_stock(sku, 0)
    inv = stack.daemons["inventory-service"]
    inv.stop()
    try:
        oid = place(stack, cust, sku, 1, 250)
        stack.wait_until(lambda: (stack.orders.order(oid) or {}).get("payment") is not None,
                         30, "the payment reply while inventory-service is down")
        cp, listed = stuck(stack, "--older-than", "0s", "--limit", "1000", expect=1)
        mine = [o for o in listed["orders"] if o["orderId"] == oid]
        assert len(mine) == 1 and mine[0]["missing"] == "inventory", listed
        assert mine[0]["ageSeconds"] >= 0 and HEX32.match(mine[0]["traceId"])
        ages = [o["createdAt"] for o in listed["orders"]]
        assert ages == sorted(ages), "oldest first"
        text = orderctl(stack, "orders", "stuck", "--older-than", "0s", "--limit", "1000")
        assert text.returncode == 1 and oid in text.stdout
        assert "look at inventory-service" in text.stdout
        # Not older than an hour: not listed.
        cp, listed = stuck(stack, "--older-than", "1h")
        assert oid not in [o["orderId"] for o in listed["orders"]]

        cp = orderctl(stack, "order", oid)
        assert cp.returncode == 69 and "inventory-service" in cp.stderr, cp.stderr
        assert "charged 250 cents" in cp.stdout, "what the others know is still printed"
    finally:
        inv.restart()
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    stack.wait_until(lambda: (stack.payments.payment(oid) or {}).get("status") == "REFUNDED",
                     30, "the charge refunded")
    cp, listed = stuck(stack, "--older-than", "0s", "--limit", "1000")
    assert oid not in [o["orderId"] for o in listed["orders"]]

    st = story(stack, oid)
    assert st["order"]["status"] == "REJECTED"
    assert st["reservation"]["status"] == "REJECTED"
    assert st["reservation"]["reason"] == "OUT_OF_STOCK"
    p = st["payment"]
    assert p["status"] == "REFUNDED" and p["refundReason"] and p["refundedAt"] >= p["createdAt"]
    assert_time_order(st)
    assert index_of(st, "charged 250 cents") < index_of(st, "rejected 1 x")
    assert index_of(st, "rejected 1 x") < index_of(st, "refunded 250 cents")
    assert "settled: REJECTED" in events(st, "order-service")


def test_dead_lettered_reply_is_in_the_story(stack):
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 1000)
    stack.set_stock(sku, 5)
    oid = place(stack, cust, sku, 1, 100)
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    # A reply that no consumer can read, with the order's key: order-service
    # and inventory-service (both read payments.completed) dead-letter it.
    val = b"\x00not json{"
    off = produce_raw(stack.bootstrap, "payments.completed", 2, oid.encode(), val,
                      headers("PaymentCompleted"))
    recs = dlt_records(stack.bootstrap, "payments.completed", oid, expect=2)
    assert len(recs) == 2, f"expected 2 DLT records, got {len(recs)}"

    st = story(stack, oid)
    dl = st["deadLetters"]
    assert len(dl) == 2, dl
    assert {d["consumerGroup"] for d in dl} == {"order-service", "inventory-service"}
    for d in dl:
        assert d["dltTopic"] == "payments.completed.DLT" and d["key"] == oid
        assert d["originalTopic"] == "payments.completed" and d["originalPartition"] == 2
        assert d["originalOffset"] == off and d["exceptionCauseFqcn"] == SPRING_CAUSE_POISON
        assert d["exceptionMessage"]
    assert sum("dead-lettered to payments.completed.DLT" in e for e in events(st, "kafka")) == 2
    assert index_of(st, "settled: CONFIRMED") < index_of(st, "dead-lettered")

    cp = orderctl(stack, "order", oid)
    assert cp.returncode == 0
    assert "payments.completed.DLT/2/" in cp.stdout and "original:" in cp.stdout
    assert "dead-letter records of this order (last 1000 of each partition searched): 2" \
        in cp.stdout
    # --no-dlt leaves the brokers alone; a search window of 1 record per
    # partition still finds the last one written.
    assert story(stack, oid, "--no-dlt")["deadLetters"] is None
    assert len(story(stack, oid, "--dlt-max", "1")["deadLetters"]) >= 1

    # A key known only to a DLT is found there (exit 0).
    ghost = stack.uid("ghost")
    produce_raw(stack.bootstrap, "orders.created", 1, ghost.encode(), b"{oops",
                headers("OrderCreated"))
    assert len(dlt_records(stack.bootstrap, "orders.created", ghost, expect=2)) == 2
    st = story(stack, ghost)
    assert st["order"] is None and st["payment"] is None and st["reservation"] is None
    assert st["found"] is True and len(st["deadLetters"]) == 2


def test_unknown_id_is_exit_1(stack):
    oid = stack.uid("nobody")
    st = story(stack, oid, expect=1)
    assert st["found"] is False and st["order"] is None and st["deadLetters"] == []
    cp = orderctl(stack, "order", oid)
    assert cp.returncode == 1 and f"no order {oid}" in cp.stderr


def test_refused_token_is_exit_77(stack):
    oid = stack.uid("o")
    cp = orderctl(stack, "order", oid, "--no-dlt", token="only-orders-read")
    assert cp.returncode == 77, cp.stderr
    assert "payment-service" in cp.stderr and "refused the token" in cp.stderr
    assert "order-service" not in cp.stderr
    cp = orderctl(stack, "orders", "stuck", token=None)
    assert cp.returncode == 77 and "refused the token" in cp.stderr
    # The token from a file works as well as from the environment.
    tf = stack.tokens_file.parent / f"story-token{PORT_OFFSET}"
    tf.write_text(stack.tokens["admin"][0] + "\n")
    tf.chmod(0o600)
    try:
        cp = orderctl(stack, "order", oid, "--no-dlt", "--token-file", str(tf), token=None)
        assert cp.returncode == 1, cp.stderr
    finally:
        tf.unlink()


def test_stuck_empty_and_bad_input(stack):
    cp, listed = stuck(stack, "--older-than", "1d", expect=0)
    assert listed["orders"] == [] and listed["count"] == 0 and listed["olderThanSeconds"] == 86400
    cp = orderctl(stack, "orders", "stuck", "--older-than", "1d")
    assert cp.returncode == 0 and "no order PENDING" in cp.stdout
    for bad in (["--older-than", "5x"], ["--older-than", "-1s"], ["--limit", "0"],
                ["--limit", "1001"], ["extra"]):
        assert orderctl(stack, "orders", "stuck", *bad).returncode == 2, bad
    for bad in (["order"], ["order", "a b"], ["order", "x" * 65], ["order", "x", "y"]):
        assert orderctl(stack, *bad).returncode == 2, bad


def test_pending_route_bad_parameters(stack):
    o = stack.orders
    for q in ("", "?status=CONFIRMED", "?status=PENDING&olderThan=-1",
              "?status=PENDING&olderThan=x", "?status=PENDING&limit=0",
              "?status=PENDING&limit=1001", "?status=PENDING&older_than=5"):
        r = o.get("/orders" + q)
        assert r.status_code == 400, (q, r.status_code, r.text)
        assert r.headers["Content-Type"].startswith("application/problem+json")
        assert r.json()["detail"]
    r = o.get("/orders?status=PENDING&olderThan=0&limit=1")
    assert r.status_code == 200 and r.json()["limit"] == 1 and len(r.json()["orders"]) <= 1
    # Each daemon's outbox route with its own read scope.
    for name, scope in (("order-service", "orders:read"), ("payment-service", "payments:read"),
                        ("inventory-service", "inventory:read")):
        url = stack.daemons[name].url + "/outbox/some-order"
        ok = requests.get(url, timeout=5, headers=stack.bearer("only-" + scope.replace(":", "-")))
        assert ok.status_code == 200 and ok.json() == {
            "orderId": "some-order", "service": name, "count": 0, "truncated": False,
            "unpublished": []}, ok.text
        other = "payments:read" if scope != "payments:read" else "orders:read"
        denied = requests.get(url, timeout=5,
                              headers=stack.bearer("only-" + other.replace(":", "-")))
        assert denied.status_code == 403


def test_unpublished_outbox_row_is_in_the_story(stack):
    """A reply committed to payment-service's outbox but not yet published:
    the row is written with the NOTIFY trigger off (this session only), and a
    row lock taken at once holds the relay's DELETE back (it may publish the
    row, it cannot remove it) while orderctl looks. The row is a duplicate
    reply of a settled order, which the consumers ignore once it goes out."""
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 1000)
    stack.set_stock(sku, 5)
    oid = place(stack, cust, sku, 1, 100)
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    with locked_outbox_row(stack, oid) as row:
        r = stack.payments.get(f"/outbox/{oid}")
        assert r.status_code == 200, r.text
        rows = r.json()["unpublished"]
        assert [x["id"] for x in rows] == [row] and rows[0]["eventType"] == "PaymentCompleted"
        assert rows[0]["topic"] == "payments.completed" and rows[0]["ageSeconds"] >= 0
        st = story(stack, oid, "--no-dlt")
        assert [x["id"] for x in st["outbox"]["payment-service"]] == [row]
        assert st["outbox"]["order-service"] == [] == st["outbox"]["inventory-service"]
        unpublished = [e for e in st["timeline"] if "not yet published" in e["event"]]
        assert len(unpublished) == 1 and unpublished[0]["source"] == "payment-service"
        assert "PaymentCompleted to payments.completed" in unpublished[0]["event"]
    stack.wait_until(lambda: stack.payments.get(f"/outbox/{oid}").json()["count"] == 0, 30,
                     "the relay to publish and remove the row")
    assert stack.orders.order(oid)["status"] == "CONFIRMED"


def test_https_with_cacert(stack, tmp_path):
    """order-service on HTTPS (a throw-away CA): orderctl verifies it against
    --cacert, and refuses it against the system's store (exit 69, naming the
    daemon and the certificate failure)."""
    pki = make_pki(tmp_path)
    d = stack.daemons["order-service"]
    normal = d.env
    d.stop()
    d.env = dict(normal, HTTP_TLS_CERT=str(pki / "server.pem"),
                 HTTP_TLS_KEY=str(pki / "server.key"))
    d.start()
    try:
        base = f"https://127.0.0.1:{d.port}"
        stack.wait_until(lambda: requests.get(base + "/readyz", verify=str(pki / "ca.pem"),
                                              timeout=2).status_code == 200, 30,
                         "order-service ready over HTTPS")
        cp = orderctl(stack, "orders", "stuck", "--older-than", "1d", "--orders-url", base,
                      "--cacert", str(pki / "ca.pem"))
        assert cp.returncode == 0 and "no order PENDING" in cp.stdout, cp.stderr
        cp = orderctl(stack, "order", stack.uid("nobody"), "--no-dlt", "--orders-url", base,
                      "--cacert", str(pki / "ca.pem"))
        assert cp.returncode == 1, cp.stderr
        cp = orderctl(stack, "orders", "stuck", "--orders-url", base)
        assert cp.returncode == 69, cp.stderr
        assert "order-service" in cp.stderr and "certificate" in cp.stderr, cp.stderr
    finally:
        if d.running():
            d.stop()
        d.env = normal
        d.start()
        d.wait_ready()
