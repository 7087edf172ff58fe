"""
The seams of stopping and standing by, checked from outside: a graceful
stop (SIGTERM, as `systemctl restart` and every package upgrade send) under a
steady load of POST /orders must answer every order it committed, and a
standby order-service beside an active one must not grow with the traffic.
"""

import threading
import time

import requests

from conftest import bearer
from helpers import metric


def _rss_anon_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError(f"no RssAnon in /proc/{pid}/status")


def test_sigterm_under_load_answers_every_committed_order(stack):
    """Eight clients keep POSTing orders (no Idempotency-Key, each order with
    its own customerId as a marker) while order-service is restarted with
    SIGTERM four times. Every order stored must have been answered 202 to its
    client, every 202 must name a stored order of that customer, and a request
    whose connection failed must have left nothing behind: a client that saw
    an error and retries creates no second order, one that gives up is right
    to believe nothing happened."""
    svc = stack.daemons["order-service"]
    run = stack.uid("gs")
    url = svc.url + "/orders"
    done = threading.Event()
    lock = threading.Lock()
    answered = {}  # customerId -> (status, orderId or None)
    failed = {}  # customerId -> exception name: the client saw no answer
    errors = []

    def client(k):
        session = requests.Session()
        session.headers.update(bearer("orders"))
        i = 0
        try:
            while not done.is_set():
                cust = f"{run}-{k}-{i}"
                i += 1
                body = {"customerId": cust, "sku": f"{run}-sku", "quantity": 1,
                        "amountCents": 100 + k}
                try:
                    r = session.post(url, json=body, timeout=20)
                except requests.RequestException as e:
                    with lock:
                        failed[cust] = type(e).__name__
                    session.close()
                    session = requests.Session()
                    session.headers.update(bearer("orders"))
                    time.sleep(0.02)  # down: do not spin on refused connections
                    continue
                oid = r.json().get("orderId") if r.status_code == 202 else None
                with lock:
                    answered[cust] = (r.status_code, oid)
        except Exception as e:  # reported in the main thread
            errors.append(repr(e))

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(8)]
    for t in threads:
        t.start()
    stops = 0
    try:
        for _ in range(4):
            before = len(answered)
            stack.wait_until(lambda: len(answered) >= before + 150, 60,
                             "150 more orders answered before the next stop")
            svc.restart()  # SIGTERM, exit 0 within the grace time, start, ready
            stops += 1
        after = len(answered)
        stack.wait_until(lambda: len(answered) >= after + 100, 60,
                         "orders answered after the last restart")
    finally:
        done.set()
        for t in threads:
            t.join(30)
    assert not errors, errors
    assert stops == 4

    rows = stack.sql("orders", "SELECT customer_id, order_id FROM orders "
                     "WHERE customer_id LIKE %s", (run + "-%",))
    stored = {c: o for c, o in rows}
    accepted = {c: o for c, (s, o) in answered.items() if s == 202}
    other = {c: s for c, (s, o) in answered.items() if s != 202}
    unanswered = sorted(set(stored) - set(accepted))
    print(f"stops={stops} requests={len(answered) + len(failed)} accepted={len(accepted)} "
          f"other={sorted(set(other.values()))} connection errors={len(failed)} "
          f"stored={len(stored)}")
    assert not unanswered, (
        f"{len(unanswered)} orders were committed but their client got no 202 "
        f"(e.g. {[(c, failed.get(c) or other.get(c)) for c in unanswered[:5]]}); "
        f"{svc.log_tail(30)}")
    missing = {c: o for c, o in accepted.items() if stored.get(c) != o}
    assert not missing, f"202s that name no stored order of their customer: {list(missing)[:5]}"
    assert not set(other.values()) - {503}, f"unexpected answers: {other}"
    # The stops were seen: each logged that every request taken was answered.
    text = svc.log_path.read_text()
    assert text.count("http server drained, every request taken was answered") >= stops, \
        svc.log_tail(40)


def test_standby_order_service_stays_flat_under_commits(stack):
    """A second order-service on the same database stands by on the relay
    lock. Orders through the active one and 400,000 commits that NOTIFY the
    outbox channel must not grow the standby's memory: it must not queue
    notifications it never reads."""
    main = stack.daemons["order-service"]
    port = main.port + 10
    second = type(main)("order-service-2", main.binary, port, dict(main.env, HTTP_PORT=str(port)),
                        main.log_path.with_name("order-service-2.log"))
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 10_000_000)
    stack.set_stock(sku, 100_000)
    try:
        second.start()
        second.wait_ready()
        time.sleep(3)  # one standby round of the relay (every 2 s) before the baseline
        base = _rss_anon_kib(second.pid)
        ids = [stack.orders.create_ok(cust, sku, 1, 10) for _ in range(100)]
        # 400,000 commits on the order database, each notifying the outbox
        # channel as an order's commit does (autocommit: a DO block may commit).
        stack.sql("orders", "DO $$ BEGIN FOR i IN 1..400000 LOOP "
                  "PERFORM pg_notify('outbox', i::text); COMMIT; END LOOP; END $$")
        time.sleep(5)  # two more standby rounds, each reading what the socket holds
        grown = _rss_anon_kib(second.pid) - base
        print(f"standby RssAnon {base} KiB, grown by {grown} KiB over 400,100 commits")
        # Reading and dropping them costs nothing lasting; keeping them costs
        # ~60 bytes each (~25 MiB here). 8 MiB leaves room for the allocator
        # (and ASan's quarantine in the sanitizer build).
        assert grown < 8192, (f"the standby's anonymous memory grew by {grown} KiB over "
                              f"400,100 commits\n{second.log_tail(20)}")
        # The active instance still publishes (it listens), the standby published nothing.
        stack.wait_until(lambda: all(stack.orders.order(o)["status"] != "PENDING" for o in ids),
                         60, "the 100 orders settled through the active relay")
        assert metric(second.url, "orders_records_produced_total", topic="orders.created") == 0
    finally:
        if second.running():
            second.stop()
