"""
Tracing against a real Zipkin server (deploy/zipkin/zipkin.sh, fixture
`zipkin`): the three daemons send their spans to it, and the tests read the
traces back through Zipkin's API (GET /api/v2/trace/{id}).

- A confirming order and a rejected-and-compensated one: each trace holds
  spans of all three services, every span but the root has its parent in the
  trace, each consume span is a child of the publish span of its record (and
  that span's id is the span id of the record's traceparent), and the
  compensation (refund) shows in the rejected order's trace.
- A collector that is down: orders flow as before, the spans are dropped and
  counted, the outage is logged once.
- Sampling ratio 0: no span of a trace that starts at order-service arrives;
  a client's sampled flag is still honoured.
"""

import os
import re
import subprocess

import pytest
import requests

from conftest import LOG_DIR, ROOT, bearer, build_dir, port_in_use
from helpers import header_map, metrics

SERVICES = ("order-service", "payment-service", "inventory-service")
TRACING_ENV = ("TRACING_URL", "TRACING_SAMPLE_RATIO", "TRACING_QUEUE")


@pytest.fixture(scope="module")
def tracing(stack):
    """Sets the daemons' tracing variables (restarting them); the stack is
    restored to tracing off at the end of the module."""
    try:
        yield stack.set_daemon_env
    finally:
        stack.set_daemon_env(**{k: None for k in TRACING_ENV})


def post_order(stack, cust, sku, qty, amount, traceparent=None):
    headers = {"Content-Type": "application/json", **bearer("orders")}
    if traceparent:
        headers["traceparent"] = traceparent
    r = requests.post(stack.orders.base + "/orders", timeout=10, headers=headers,
                      json={"customerId": cust, "sku": sku, "quantity": qty,
                            "amountCents": amount})
    assert r.status_code == 202, f"POST /orders: {r.status_code} {r.text}"
    return r.json()["orderId"]


def new_traceparent(flags="01"):
    trace, span = os.urandom(16).hex(), os.urandom(8).hex()
    return trace, span, f"00-{trace}-{span}-{flags}"


def key(span):
    return span["localEndpoint"]["serviceName"], span["name"]


# The spans every order's trace must hold: (service, span name) -> kind.
EXPECTED = {
    ("order-service", "post /orders"): "SERVER",
    ("order-service", "commit order"): "CLIENT",
    ("order-service", "publish orders.created"): "PRODUCER",
    ("payment-service", "consume orders.created"): "CONSUMER",
    ("inventory-service", "consume orders.created"): "CONSUMER",
    ("payment-service", "publish payments.completed"): "PRODUCER",
    ("inventory-service", "publish inventory.reserved"): "PRODUCER",
    ("order-service", "consume payments.completed"): "CONSUMER",
    ("order-service", "consume inventory.reserved"): "CONSUMER",
    ("inventory-service", "consume payments.completed"): "CONSUMER",
    ("payment-service", "consume inventory.reserved"): "CONSUMER",
}


def wait_trace(stack, zipkin, trace_id, want=EXPECTED):
    """Waits until Zipkin holds every expected span of the trace; returns
    {(service, name): span}, failing on a span that came twice."""
    def complete():
        spans = zipkin.trace(trace_id)
        have = {key(s) for s in spans}
        return set(want) <= have, sorted(have)

    stack.wait_until(complete, 60, f"trace {trace_id} with spans {sorted(want)}", interval=0.5)
    spans = zipkin.trace(trace_id)
    by_key = {}
    for s in spans:
        assert key(s) not in by_key, f"span {key(s)} twice in trace {trace_id}: {spans}"
        by_key[key(s)] = s
    return spans, by_key


def check_tree(spans, by_key, client_span):
    """The links every order's trace must have."""
    ids = {s["id"] for s in spans}
    assert {s["localEndpoint"]["serviceName"] for s in spans} == set(SERVICES), spans
    for k, kind in EXPECTED.items():
        assert by_key[k]["kind"] == kind, (k, by_key[k])
    root = by_key[("order-service", "post /orders")]
    assert root["parentId"] == client_span, root
    for s in spans:
        if s is not root:
            assert s.get("parentId") in ids, f"parent of {key(s)} not in the trace: {s}"
    tags = root["tags"]
    assert (tags["http.method"], tags["http.route"], tags["http.status_code"]) == \
        ("POST", "/orders", "202"), tags

    def parent(k):
        return by_key[k]["parentId"]

    def sid(k):
        return by_key[k]["id"]

    os_, ps, inv = SERVICES
    assert parent((os_, "commit order")) == sid((os_, "post /orders"))
    assert parent((os_, "publish orders.created")) == sid((os_, "commit order"))
    for svc in (ps, inv):
        assert parent((svc, "consume orders.created")) == sid((os_, "publish orders.created"))
    # Replies are children of the consume span that wrote them ...
    assert parent((ps, "publish payments.completed")) == sid((ps, "consume orders.created"))
    assert parent((inv, "publish inventory.reserved")) == sid((inv, "consume orders.created"))
    # ... and their consumers children of their publish span.
    for svc in (os_, inv):
        assert parent((svc, "consume payments.completed")) == sid((ps, "publish payments.completed"))
    for svc in (os_, ps):
        assert parent((svc, "consume inventory.reserved")) == sid((inv, "publish inventory.reserved"))
    for (svc, name), s in by_key.items():
        if name.startswith("consume "):
            t = s["tags"]
            assert t["kafka.topic"] == name[len("consume "):], s
            assert re.fullmatch(r"\d+", t["kafka.partition"]) and re.fullmatch(r"\d+",
                                                                                t["kafka.offset"]), s
            assert t["consumer.result"] == "applied", s


def test_traces_of_a_confirmed_and_a_compensated_order(stack, zipkin, tracing):
    tracing(TRACING_URL=zipkin.url, TRACING_SAMPLE_RATIO="1")

    cust, sku, short_sku = stack.uid("c"), stack.uid("s"), stack.uid("s")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 5)
    stack.set_stock(short_sku, 1)

    trace_ok, client_ok, tp_ok = new_traceparent()
    ok = post_order(stack, cust, sku, 1, 1_000, tp_ok)
    assert stack.orders.wait_settled(ok, need=("payment", "inventory"))["status"] == "CONFIRMED"

    # The rejected order is charged first, for certain: inventory-service
    # is down until the charge is made, so its rejection comes after and the
    # charge is refunded (compensation), not prevented.
    inv = stack.daemons["inventory-service"]
    inv.stop()
    trace_rej, client_rej, tp_rej = new_traceparent()
    rej = post_order(stack, cust, short_sku, 3, 2_000, tp_rej)
    stack.wait_until(lambda: ((p := stack.payments.payment(rej)) is not None
                              and p["status"] == "CHARGED", p), 30, f"payment of {rej} charged")
    inv.start()
    inv.wait_ready()
    o = stack.orders.wait_settled(rej, need=("payment", "inventory"))
    assert o["status"] == "REJECTED" and o["inventory"]["reason"] == "OUT_OF_STOCK", o
    stack.wait_until(lambda: ((p := stack.payments.payment(rej)) is not None
                              and p["status"] == "REFUNDED", p), 30, f"payment of {rej} refunded")

    spans, by_key = wait_trace(stack, zipkin, trace_ok)
    check_tree(spans, by_key, client_ok)
    outcome = {k: s["tags"].get("outcome") for k, s in by_key.items()}
    assert outcome[("payment-service", "consume orders.created")] == "charged", outcome
    assert outcome[("inventory-service", "consume orders.created")] == "reserved", outcome
    assert outcome[("order-service", "consume payments.completed")] in ("applied", "confirmed")
    assert outcome[("order-service", "consume inventory.reserved")] in ("applied", "confirmed")
    assert "confirmed" in (outcome[("order-service", "consume payments.completed")],
                           outcome[("order-service", "consume inventory.reserved")]), outcome
    assert outcome[("payment-service", "consume inventory.reserved")] == "nothing-to-undo"
    for s in spans:
        assert s["tags"].get("order.id", ok) == ok, s

    # The record on orders.created carries the publish span's id, and not
    # the outbox's internal parent key.
    rec = stack.collect_records(["orders.created"], ok, grace=0.5)["orders.created"][0]
    h = header_map(rec)
    tp = h["traceparent"][0].decode()
    assert tp == f"00-{trace_ok}-{by_key[('order-service', 'publish orders.created')]['id']}-01"
    assert not any(k.startswith("x-orders-") for k in h), h

    spans, by_key = wait_trace(stack, zipkin, trace_rej)
    check_tree(spans, by_key, client_rej)
    outcome = {k: s["tags"].get("outcome") for k, s in by_key.items()}
    assert outcome[("inventory-service", "consume orders.created")] == "rejected", outcome
    assert outcome[("inventory-service", "consume payments.completed")] == "nothing-to-undo"
    assert outcome[("payment-service", "consume orders.created")] == "charged", outcome
    assert outcome[("payment-service", "consume inventory.reserved")] == "refunded", outcome
    assert "rejected" in (outcome[("order-service", "consume payments.completed")],
                          outcome[("order-service", "consume inventory.reserved")]), outcome

    screenshot(zipkin, trace_ok, "order-trace.png")
    screenshot(zipkin, trace_rej, "order-trace-compensated.png")


def screenshot(zipkin, trace_id, name):
    """deploy/zipkin/screenshot.sh draws a trace with headless Chromium: a
    PNG of the asked size, left in .run/test-logs/ (the README's picture,
    deploy/zipkin/order-trace.png, is the confirmed order's of such a run)."""
    out = LOG_DIR / name
    out.unlink(missing_ok=True)
    cp = subprocess.run([str(ROOT / "deploy" / "zipkin" / "screenshot.sh"), "--zipkin", zipkin.url,
                         "--size", "1200x700", "--wait", "30", trace_id, str(out)],
                        capture_output=True, text=True, timeout=180)
    assert cp.returncode == 0, f"screenshot.sh exited {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
    assert trace_id in cp.stdout, cp.stdout
    png = out.read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR", png[:16]
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert (width, height) == (1200, 700), (width, height)
    assert len(png) > 20_000, f"{len(png)} bytes: an empty page?"
    # Wrong input is refused before Chromium starts.
    bad = subprocess.run([str(ROOT / "deploy" / "zipkin" / "screenshot.sh"), "not-hex", str(out)],
                         capture_output=True, text=True, timeout=30)
    assert bad.returncode == 2 and "trace id" in bad.stderr, bad.stderr


def test_collector_down_costs_only_spans(stack, tracing):
    port = 19412 + int(os.environ.get("TEST_PORT_OFFSET", "0"))
    assert not port_in_use(port), f"port {port} should be closed for this test"
    tracing(TRACING_URL=f"http://127.0.0.1:{port}", TRACING_SAMPLE_RATIO="1")
    log = stack.daemons["order-service"].log_path

    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 10)
    first = stack.orders.create_ok(cust, sku, 1, 100)
    assert stack.orders.wait_settled(first, need=("payment", "inventory"))["status"] == "CONFIRMED"

    def dropped(name):
        m = metrics(stack.daemons[name].url)
        sent = m.get(("orders_spans_sent_total", frozenset()), None)
        failed = m.get(("orders_spans_dropped_total",
                        frozenset({("reason", "send_failed")})), None)
        return sent, failed

    for name in SERVICES:
        stack.wait_until(lambda: ((v := dropped(name))[1] or 0) > 0 and v[0] == 0, 15,
                         f"{name}: spans dropped as send_failed, none sent")
    before = dropped("order-service")[1]
    # More orders while the collector stays down: they settle as before, the
    # drops grow, and the outage is logged once, not once per batch.
    more = [stack.orders.create_ok(cust, sku, 1, 100) for _ in range(3)]
    for oid in more:
        assert stack.orders.wait_settled(oid, need=("payment", "inventory"))["status"] == \
            "CONFIRMED"
    stack.wait_until(lambda: (dropped("order-service")[1] > before, dropped("order-service")),
                     15, "more spans dropped")
    text = log.read_text(errors="replace").split("=== test harness: starting")[-1]
    assert text.count("tracing collector unreachable") == 1, \
        [line for line in text.splitlines() if "tracing" in line]


def test_sampling_zero_sends_no_spans(stack, zipkin, tracing):
    tracing(TRACING_URL=zipkin.url, TRACING_SAMPLE_RATIO="0")
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 10)

    plain = stack.orders.create_ok(cust, sku, 1, 100)  # a trace that starts here
    trace_off, _, tp_off = new_traceparent("00")       # a client that did not sample
    unsampled = post_order(stack, cust, sku, 1, 100, tp_off)
    for oid in (plain, unsampled):
        stack.orders.wait_settled(oid, need=("payment", "inventory"))
    line = [x for x in stack.daemons["order-service"].log_path.read_text().splitlines()
            if f"order accepted order_id={plain}" in x]
    assert line, f"no 'order accepted' line for {plain}"
    trace_plain = re.search(r"trace_id=([0-9a-f]{32})", line[-1]).group(1)

    # A client's sampled flag is honoured: this trace arrives, and since each
    # daemon sends its spans in order, anything the two orders before it had
    # caused would have arrived by then too.
    trace_on, _, tp_on = new_traceparent("01")
    sampled = post_order(stack, cust, sku, 1, 100, tp_on)
    stack.orders.wait_settled(sampled, need=("payment", "inventory"))
    wait_trace(stack, zipkin, trace_on)
    for t in (trace_plain, trace_off):
        assert zipkin.trace(t) == [], f"trace {t} should not have been sampled"
    for name in SERVICES:
        m = metrics(stack.daemons[name].url)
        assert m.get(("orders_spans_sent_total", frozenset()), 0) > 0, name


@pytest.mark.parametrize("name", SERVICES)
@pytest.mark.parametrize("var,value", [
    ("TRACING_SAMPLE_RATIO", "1.5"),
    ("TRACING_SAMPLE_RATIO", "ten percent"),
    ("TRACING_URL", "zipkin:9411"),
    ("TRACING_QUEUE", "8"),
])
def test_bad_tracing_setting_exits_78_naming_it(name, var, value):
    env = {"PATH": "/usr/bin:/bin", "HTTP_AUTH": "none", "HTTP_PORT": "1",
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
           "TRACING_URL": "http://127.0.0.1:9411", var: value}
    cp = subprocess.run([str(build_dir() / name / name)], env=env, stdin=subprocess.DEVNULL,
                        capture_output=True, text=True, timeout=15)
    assert cp.returncode == 78, f"{name} with {var}={value}: exit {cp.returncode}\n{cp.stderr}"
    errors = [ln for ln in cp.stderr.splitlines() if "configuration error" in ln]
    assert len(errors) == 1 and f"{var}=" in errors[0], cp.stderr
