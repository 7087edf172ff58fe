"""
Operations on the real stack: the systemd notify protocol (READY=1 only once
the dependencies are up, watchdog pings, STOPPING=1), readiness only once the
consumer has joined its group, the drain on SIGTERM
with an order in flight, /metrics in the Prometheus format (checked with
promtool) with counters that move, and journald priority prefixes in logs.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest
import requests

from confluent_kafka import Consumer

from conftest import bearer
from helpers import headers, metric, metrics, produce_raw, value

PROMTOOL = shutil.which("promtool")


class Forwarder:
    """A TCP forwarder on a loopback port, to make a dependency appear on
    demand: the daemon is pointed at it before it listens."""

    def __init__(self, target_host, target_port):
        self.target = (target_host, int(target_port))
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.sock = None
        self.stop = threading.Event()

    def start(self):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self):
        self.stop.set()
        if self.sock:
            self.sock.close()


def notifications(sock, seconds):
    """Every sd_notify datagram received within `seconds`, as strings."""
    out, deadline = [], time.monotonic() + seconds
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            out.append(sock.recv(4096).decode())
        except socket.timeout:
            break
    return out


def test_notify_ready_only_after_dependencies_watchdog_and_stopping(stack, tmp_path):
    pg = stack.pg_env
    fwd = Forwarder(pg.get("PGHOST", "127.0.0.1"), pg.get("PGPORT", "5432"))
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    main = stack.daemons["payment-service"]
    url = re.sub(r"port=\d+", f"port={fwd.port}", stack.daemon_dsn("payments"))
    port = main.port + 10  # offset with the others (TEST_PORT_OFFSET)
    env = dict(main.env, HTTP_PORT=str(port), DATABASE_URL=url, NOTIFY_SOCKET=path,
               WATCHDOG_USEC="1000000", JOURNAL_STREAM="8:1234",
               CONSUMER_GROUP=stack.uid("notify-test"))
    log = tmp_path / "payment-notify.log"
    proc = subprocess.Popen([str(main.binary)], env=env, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # PostgreSQL is unreachable: no READY=1, and the daemon keeps waiting.
        early = notifications(sock, 3)
        assert not any("READY=1" in n for n in early), early
        assert proc.poll() is None, "daemon gave up instead of waiting for PostgreSQL"
        # ... and tells systemd so: the start timeout is extended (a unit's
        # TimeoutStartSec would otherwise kill a daemon that waits), with a
        # STATUS that names the wait, and the watchdog is fed meanwhile.
        extend = [n for n in early if "EXTEND_TIMEOUT_USEC=30000000" in n]
        assert extend and "STATUS=starting: waiting for database" in extend[0], early
        assert sum("WATCHDOG=1" in n for n in early) >= 3, early
        fwd.start()
        got, deadline = [], time.monotonic() + 30
        while not any("READY=1" in n for n in got) and time.monotonic() < deadline:
            got += notifications(sock, 0.5)
        assert any("READY=1" in n for n in got), f"no READY=1 after PostgreSQL came up: {got}"
        r = requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5)
        assert r.status_code == 200, f"READY=1 sent but /readyz says {r.status_code} {r.text}"
        later = notifications(sock, 2.5)
        pings = [n for n in later if "WATCHDOG=1" in n]
        assert len(pings) >= 3, f"watchdog interval 1 s, expected pings every 0.5 s: {later}"
        assert any(n.startswith("STATUS=") for n in got + later)
        proc.send_signal(signal.SIGTERM)
        stopping = notifications(sock, 3)
        assert any("STOPPING=1" in n for n in stopping), stopping
        assert proc.wait(10) == 0
        lines = log.read_text().splitlines()
        assert lines and all(re.match(r"^<[0-7]>", line) for line in lines), (
            "under journald every line must start with a priority prefix: "
            + "\n".join(lines[:5]))
        assert any(line.startswith("<4>") and "waiting for database" in line for line in lines)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        sock.close()
        fwd.close()


def test_ready_only_once_the_consumer_joined_its_group(stack):
    """/readyz waits for the consumer's first partition assignment. A member
    of the group that holds the rebalance back (it stops polling, as a busy
    instance may) keeps a new instance out of the group: that instance is not
    ready although its database and brokers answer. Once the member lets go
    the new instance joins and is ready. (On a fresh broker the same wait is
    the offsets topic being created at the first join.)"""
    group = stack.uid("join-test")
    holder = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group,
                       "max.poll.interval.ms": 120000, "session.timeout.ms": 30000})
    holder.subscribe(["orders.created"])
    stack.wait_until(lambda: (holder.poll(0.2), holder.assignment())[1], 60,
                     "the holding member to get its partitions")
    main = stack.daemons["payment-service"]
    port = main.port + 20
    svc = type(main)("payment-service-join", main.binary, port,
                     dict(main.env, HTTP_PORT=str(port), CONSUMER_GROUP=group),
                     main.log_path.with_name("payment-service-join.log"))

    def readyz():
        try:
            r = svc.http_get("/readyz", timeout=2)
            return r.status_code, r.json()
        except (requests.RequestException, ValueError):
            return None, {}

    try:
        svc.start()
        up = ("started", "database", "kafka")
        stack.wait_until(lambda: all(readyz()[1].get(k) for k in up), 60,
                         "the new instance's database and brokers to answer")
        # The member does not poll: the rebalance the new instance asked for
        # waits for it (up to its max.poll.interval.ms), and so does readiness.
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            status, body = readyz()
            assert status == 503 and body.get("consumerGroup") is False, (
                f"ready before it joined its group: {status} {body}\n{svc.log_tail()}")
            time.sleep(0.2)
        holder.close()
        holder = None
        svc.wait_ready(60)
        status, body = readyz()
        assert status == 200 and body.get("consumerGroup") is True, body
        assert "joined consumer group" in svc.log_path.read_text()
        svc.stop()
    finally:
        if holder is not None:
            holder.close()
        if svc.running():
            svc.terminate()


def test_sigterm_drains_in_order_and_loses_nothing(stack):
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 1000)
    stack.set_stock(sku, 10)
    svc = stack.daemons["payment-service"]
    oid = stack.orders.create_ok(cust, sku, 1, 250)
    t0 = time.monotonic()
    svc.stop()  # asserts exit code 0 within the grace time
    took = time.monotonic() - t0
    assert took < 5, f"drain took {took:.1f} s"
    text = svc.log_path.read_text()
    steps = ["stopping: http server", "stopping: kafka consumer", "stopping: outbox relay",
             "stopping: database", "stopped"]
    last = text.rfind("=== test harness: starting")
    at = [text.find(s, last) for s in steps]
    assert all(a >= 0 for a in at) and at == sorted(at), f"drain order: {list(zip(steps, at))}"
    svc.start()
    svc.wait_ready()
    order = stack.orders.wait_settled(oid, need=("payment", "inventory"))
    assert order["status"] == "CONFIRMED"
    assert stack.payments.balance(cust) == 750
    assert stack.sql_one("payments", "SELECT count(*) FROM payments WHERE order_id = %s",
                         (oid,)) == 1


@pytest.mark.parametrize("name", ["order-service", "payment-service", "inventory-service"])
def test_metrics_pass_promtool(stack, name):
    assert PROMTOOL, "promtool not found (Debian package prometheus; deploy/install-deps.sh)"
    r = requests.get(stack.daemons[name].url + "/metrics", timeout=5)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    cp = subprocess.run([PROMTOOL, "check", "metrics"], input=r.text, capture_output=True,
                        text=True, timeout=30)
    assert cp.returncode == 0, f"promtool: {cp.stdout}{cp.stderr}"
    for family in ("orders_records_consumed_total", "orders_dead_lettered_total",
                   "orders_outbox_backlog", "orders_http_request_duration_seconds",
                   "orders_ready") + (("orders_settle_duration_seconds", "orders_pending",
                                       "orders_pending_oldest_age_seconds")
                                      if name == "order-service" else ()):
        assert f"# TYPE {family} " in r.text, f"{family} missing"


def test_counters_move(stack):
    order_svc, inv_svc = stack.daemons["order-service"], stack.daemons["inventory-service"]
    label = {"topic": "payments.completed"}
    dlt0 = {d.name: metric(d.url, "orders_dead_lettered_total", **label)
            for d in (order_svc, inv_svc)}
    produce_raw(stack.bootstrap, "payments.completed", 4, stack.uid("poison").encode(),
                b"not json", headers("PaymentCompleted"))
    for d in (order_svc, inv_svc):
        stack.wait_until(lambda: metric(d.url, "orders_dead_lettered_total", **label)
                         == dlt0[d.name] + 1, 20, f"{d.name} DLT counter +1")
    time.sleep(1)
    for d in (order_svc, inv_svc):
        assert metric(d.url, "orders_dead_lettered_total", **label) == dlt0[d.name] + 1

    placed0 = metric(order_svc.url, "orders_placed_total")
    posts0 = metric(order_svc.url, "orders_http_requests_total", route="/orders",
                    method="POST", status="202")
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 100)
    stack.set_stock(sku, 1)
    oid = stack.orders.create_ok(cust, sku, 1, 100)
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    assert metric(order_svc.url, "orders_placed_total") == placed0 + 1
    assert metric(order_svc.url, "orders_http_requests_total", route="/orders", method="POST",
                  status="202") == posts0 + 1
    assert metric(order_svc.url, "orders_ready") == 1


def test_settlement_metrics(stack):
    """orders_settle_duration_seconds observes each settled order once, by
    outcome, with the time from its creation to its settlement as the order
    itself shows it; orders_pending and orders_pending_oldest_age_seconds show
    an order waiting for a reply, and drop to 0 once it settled."""
    svc, pay = stack.daemons["order-service"], stack.daemons["payment-service"]

    def settle(outcome):
        return (metric(svc.url, "orders_settle_duration_seconds_count", outcome=outcome),
                metric(svc.url, "orders_settle_duration_seconds_sum", outcome=outcome))

    (c0, s0), (r0, q0) = settle("confirmed"), settle("rejected")
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 1_000)
    stack.set_stock(sku, 5)
    ok = stack.orders.wait_settled(stack.orders.create_ok(cust, sku, 1, 100),
                                   need=("payment", "inventory"))
    no = stack.orders.wait_settled(stack.orders.create_ok(stack.uid("nobody"), sku, 1, 100))
    assert (ok["status"], no["status"]) == ("CONFIRMED", "REJECTED"), (ok, no)

    def took(o):
        return (stack.parse_ts(o["settledAt"]) - stack.parse_ts(o["createdAt"])).total_seconds()

    (c1, s1), (r1, q1) = settle("confirmed"), settle("rejected")
    assert (c1 - c0, r1 - r0) == (1, 1), "each settled order is observed once, by its outcome"
    assert abs((s1 - s0) - took(ok)) < 0.002, (s1 - s0, took(ok))
    assert abs((q1 - q0) - took(no)) < 0.002, (q1 - q0, took(no))

    # The gauges against the database itself (other tests may have left
    # orders PENDING for good: their records are on a DLT); the gauges are
    # refreshed at most every 2 s.
    def db_pending():
        n, age = stack.sql("orders", "SELECT count(*), coalesce(extract(epoch FROM "
                           "clock_timestamp() - min(created_at)), 0) FROM orders "
                           "WHERE status = 'PENDING'")[0]
        return n, float(age)

    def gauges_match(extra=0):
        (n, age), m = db_pending(), metrics(svc.url)
        shown = (m.get(("orders_pending", frozenset()), -1),
                 m.get(("orders_pending_oldest_age_seconds", frozenset()), -1))
        return shown[0] == n + extra and abs(shown[1] - age) < 4, (shown, n, age)

    stack.wait_until(gauges_match, 30, "orders_pending* as the database counts them")
    n0 = db_pending()[0]
    # An order that cannot settle while payment-service is down.
    pay.stop()
    try:
        oid = stack.orders.create_ok(cust, sku, 1, 100)
        stack.wait_until(lambda: db_pending()[0] == n0 + 1 and gauges_match()[0]
                         and metric(svc.url, "orders_pending_oldest_age_seconds") >= 2.0,
                         30, "orders_pending one up, the oldest age 2 s or more")
    finally:
        pay.start()
        pay.wait_ready()
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    stack.wait_until(lambda: db_pending()[0] == n0 and gauges_match()[0], 30,
                     "orders_pending back down once the order settled")


def test_log_lines_carry_record_fields_and_one_trace(stack):
    """One line per event with key=value fields; the order's trace id (from
    the client's traceparent) is in the lines of all three daemons."""
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 500)
    stack.set_stock(sku, 5)
    trace = os.urandom(16).hex()
    r = requests.post(stack.orders.base + "/orders", timeout=10,
                      json={"customerId": cust, "sku": sku, "quantity": 1, "amountCents": 100},
                      headers={"Content-Type": "application/json", **bearer("orders"),
                               "traceparent": f"00-{trace}-{os.urandom(8).hex()}-01"})
    assert r.status_code == 202
    oid = r.json()["orderId"]
    stack.orders.wait_settled(oid, need=("payment", "inventory"))

    def lines(name):
        return [line for line in stack.daemons[name].log_path.read_text().splitlines()
                if f"order_id={oid}" in line]

    accepted = [line for line in lines("order-service") if "order accepted" in line]
    assert len(accepted) == 1 and f"trace_id={trace}" in accepted[0], accepted
    for name, topic in (("payment-service", "orders.created"),
                        ("inventory-service", "orders.created"),
                        ("order-service", "payments.completed|inventory.reserved")):
        event = [line for line in lines(name) if "topic=" in line]
        assert event, f"{name}: no event line for {oid}"
        for line in event:
            assert re.search(rf"topic=({topic}) partition=\d+ offset=\d+ trace_id={trace}",
                             line), f"{name}: {line}"
