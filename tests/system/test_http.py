"""
Hostile and malformed HTTP requests against the real daemons. Each bad request
must get a clear 4xx with an application/problem+json body whose "status"
matches, and must create nothing (the orders table is counted before and after).

Authentication is on: the hostile cases run twice (fixture `who`), first
without a token, where each must meet a 401 (decided from the headers, before
the body is looked at), then with a valid token, where each gets the answer of
its own fault (400, 413, 415, ...).
"""

import http.client
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from conftest import DB_PREFIX, TOKENS, bearer
from helpers import metric

VALID = {"customerId": "c-http", "sku": "s-http", "quantity": 1, "amountCents": 100}
MISSING = object()
MAX_BODY = 64 * 1024


def order_body(**changes):
    b = dict(VALID)
    for k, v in changes.items():
        if v is MISSING:
            del b[k]
        else:
            b[k] = v
    return json.dumps(b).encode()


def valid_json_of_size(n):
    """A valid order (plus an ignored padding field) of exactly n bytes."""
    base = json.dumps(dict(VALID, pad="")).encode()
    assert n >= len(base)
    return json.dumps(dict(VALID, pad="x" * (n - len(base)))).encode()


def assert_problem(r, status):
    """r is a requests.Response or a (status, headers, body) tuple."""
    if isinstance(r, tuple):
        code, headers, body = r
        ctype = headers.get("Content-Type", "")
    else:
        code, ctype, body = r.status_code, r.headers.get("Content-Type", ""), r.content
    allowed = status if isinstance(status, (set, tuple, list)) else {status}
    assert code in allowed, f"expected {sorted(allowed)}, got {code}: {body[:300]!r}"
    assert ctype.split(";")[0].strip() == "application/problem+json", \
        f"{code}: Content-Type {ctype!r}, expected application/problem+json"
    doc = json.loads(body)
    assert isinstance(doc, dict), doc
    assert doc.get("status") == code, f"problem status {doc.get('status')!r} != HTTP {code}"
    for k in ("type", "title", "detail"):
        assert isinstance(doc.get(k), str), f"problem field {k!r} missing or not a string: {doc}"
    return doc


@pytest.fixture(params=["no-token", "token"])
def who(request):
    return request.param


def auth(who, **headers):
    """Request headers: with who == "no-token" the client's Authorization
    header is dropped (None), else the client's own token goes."""
    if who == "no-token":
        headers["Authorization"] = None
    return headers


def expect(who, status):
    return 401 if who == "no-token" else status


def assert_denied_or(r, who, status):
    doc = assert_problem(r, expect(who, status))
    if who == "no-token":
        headers = r[1] if isinstance(r, tuple) else r.headers
        assert headers.get("WWW-Authenticate", "").startswith("Bearer realm="), headers
    return doc


def order_count(stack):
    return stack.sql_one("orders", "SELECT count(*) FROM orders")


@pytest.fixture
def creates_nothing(stack):
    before = order_count(stack)
    yield
    after = order_count(stack)
    assert after == before, f"orders table grew from {before} to {after} rows"


def raw_exchange(port, head, parts=(), delay=0.0, timeout=10.0):
    """Sends head (bytes) then each of parts with `delay` s between them on a
    fresh connection, and reads the response: (status, headers, body).
    A server that answers early and stops reading is fine: send errors are
    ignored and the response is read anyway."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(head)
            for p in parts:
                if delay:
                    time.sleep(delay)
                s.sendall(p)
        except OSError:  # reset, broken pipe, or a send that blocked past the timeout
            pass
        resp = http.client.HTTPResponse(s)
        resp.begin()
        body = resp.read()
        return resp.status, {k: v for k, v in resp.getheaders()}, body


def post_head(length=None, ctype="application/json", extra="", who="token"):
    h = "POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    if who == "token":
        h += f"Authorization: Bearer {TOKENS['orders'][0]}\r\n"
    if ctype:
        h += f"Content-Type: {ctype}\r\n"
    if length is not None:
        h += f"Content-Length: {length}\r\n"
    return (h + extra + "\r\n").encode()


# ---------------------------------------------------------------- bad bodies -> 400

BAD_BODIES = {
    "malformed": b'{"customerId": "c",',
    "not-json": b"hello",
    "trailing-garbage": order_body() + b" x",
    "two-objects": order_body() + order_body(),
    "trailing-comma": order_body()[:-1] + b",}",
    "single-quotes": order_body().replace(b'"', b"'"),
    "json-array": b"[" + order_body() + b"]",
    "empty-array": b"[]",
    "null": b"null",
    "number": b"42",
    "string": b'"order"',
    "empty-object": b"{}",
    "empty-body": b"",
    "whitespace-body": b"   \n",
    "duplicate-customerId": b'{"customerId":"c1","customerId":"c2","sku":"s","quantity":1,'
                            b'"amountCents":100}',
    "duplicate-quantity": b'{"customerId":"c","sku":"s","quantity":1,"quantity":2,'
                          b'"amountCents":100}',
    "deep-array-open": b"[" * 10000,
    "deep-array": b"[" * 10000 + b"]" * 10000,
    "deep-object": b'{"a":' * 10000 + b"1" + b"}" * 10000,
    "deep-in-unknown-field": order_body()[:-1] + b',"x":' + b"[" * 10000 + b"]" * 10000 + b"}",
    "invalid-utf8": order_body(customerId="c").replace(b'"c"', b'"c\xff\xfe"'),
    "nul-in-customerId": order_body(customerId="a\u0000b"),
    "customerId-number": order_body(customerId=5),
    "customerId-null": order_body(customerId=None),
    "customerId-array": order_body(customerId=["c"]),
    "customerId-object": order_body(customerId={}),
    "customerId-bool": order_body(customerId=True),
    "customerId-empty": order_body(customerId=""),
    "customerId-space": order_body(customerId="a b"),
    "customerId-tab": order_body(customerId="a\tb"),
    "customerId-too-long": order_body(customerId="c" * 65),
    "customerId-huge": order_body(customerId="c" * 10000),
    "sku-number": order_body(sku=7),
    "sku-null": order_body(sku=None),
    "sku-empty": order_body(sku=""),
    "sku-too-long": order_body(sku="s" * 65),
    "quantity-string": order_body(quantity="1"),
    "quantity-real": order_body(quantity=1.5),
    "quantity-bool": order_body(quantity=True),
    "quantity-null": order_body(quantity=None),
    "quantity-array": order_body(quantity=[1]),
    "quantity-zero": order_body(quantity=0),
    "quantity-negative": order_body(quantity=-1),
    "quantity-int32-overflow": order_body(quantity=2**31),
    "quantity-int64-overflow": order_body(quantity=2**63),
    "quantity-huge": order_body(quantity=10**30),
    "amountCents-string": order_body(amountCents="100"),
    "amountCents-real": order_body(amountCents=100.5),
    "amountCents-real-integral": order_body(amountCents=100.0),
    "amountCents-exponent": order_body().replace(b'"amountCents": 100', b'"amountCents": 1e2'),
    "amountCents-null": order_body(amountCents=None),
    "amountCents-bool": order_body(amountCents=False),
    "amountCents-negative": order_body(amountCents=-1),
    "amountCents-int64-overflow": order_body(amountCents=2**63),
    "amountCents-int64-underflow": order_body(amountCents=-(2**63) - 1),
    "amountCents-huge": order_body(amountCents=10**30),
    "missing-customerId": order_body(customerId=MISSING),
    "missing-sku": order_body(sku=MISSING),
    "missing-quantity": order_body(quantity=MISSING),
    "missing-amountCents": order_body(amountCents=MISSING),
}


@pytest.mark.parametrize("body", list(BAD_BODIES.values()), ids=list(BAD_BODIES))
def test_bad_order_body_is_rejected(stack, creates_nothing, who, body):
    r = stack.orders.post("/orders", data=body,
                          headers=auth(who, **{"Content-Type": "application/json"}))
    assert_denied_or(r, who, 400)


def test_unknown_fields_are_ignored(stack):
    before = order_count(stack)
    cust, sku = stack.uid("cust"), stack.uid("sku")
    r = stack.orders.create(cust, sku, 2, 300, note="gift", nested={"a": [1, 2, {"b": None}]},
                            extraNumber=1.5e300, extraFlag=False)
    assert r.status_code == 202, r.text
    oid = r.json()["orderId"]
    assert order_count(stack) == before + 1
    o = stack.orders.order(oid)
    assert (o["customerId"], o["sku"], o["quantity"], o["amountCents"]) == (cust, sku, 2, 300)
    assert "note" not in o and "nested" not in o


def test_content_type_with_charset_is_accepted(stack):
    before = order_count(stack)
    r = stack.orders.post("/orders", data=order_body(customerId=stack.uid("cust")),
                          headers={"Content-Type": "application/json; charset=utf-8"})
    assert r.status_code == 202, r.text
    assert order_count(stack) == before + 1


# ---------------------------------------------------------------- size limits -> 413


def test_body_of_exactly_64k_is_accepted(stack):
    before = order_count(stack)
    body = valid_json_of_size(MAX_BODY)
    assert len(body) == MAX_BODY
    r = stack.orders.post("/orders", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 202, r.text[:300]
    assert order_count(stack) == before + 1


@pytest.mark.parametrize("size", [MAX_BODY + 1, 1024 * 1024])
def test_body_over_64k_is_413(stack, creates_nothing, who, size):
    body = valid_json_of_size(size)
    resp = raw_exchange(stack.daemons["order-service"].port, post_head(len(body), who=who),
                        [body])
    assert_denied_or(resp, who, 413)


def test_huge_declared_length_is_413_without_reading_it(stack, creates_nothing, who):
    # The client announces 100 MB and sends nothing: the answer must not wait for it.
    resp = raw_exchange(stack.daemons["order-service"].port,
                        post_head(100 * 1024 * 1024, who=who), timeout=10)
    assert_denied_or(resp, who, 413)


def test_chunked_body_over_64k_is_413(stack, creates_nothing, who):
    body = valid_json_of_size(200 * 1024)
    chunks = [body[i:i + 8192] for i in range(0, len(body), 8192)]
    parts = [b"%x\r\n%s\r\n" % (len(c), c) for c in chunks] + [b"0\r\n\r\n"]
    resp = raw_exchange(stack.daemons["order-service"].port,
                        post_head(extra="Transfer-Encoding: chunked\r\n", who=who), parts)
    assert_denied_or(resp, who, 413)


def test_refused_chunked_body_is_not_read_without_bound(stack, who):
    """A refused chunked body (401 before it, 413 once past the limit) is
    thrown away only up to a bound; past it the server closes the connection
    instead of reading whatever the client keeps sending."""
    chunk = b"x" * 65536
    piece = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    sent, limit = 0, 256 * 1024 * 1024
    with socket.create_connection(("127.0.0.1", stack.daemons["order-service"].port),
                                  timeout=20) as s:
        try:
            s.sendall(post_head(extra="Transfer-Encoding: chunked\r\n", who=who))
            while sent < limit:
                s.sendall(piece)
                sent += len(piece)
        except OSError:  # reset or broken pipe: the server stopped reading
            pass
    # The default limit is 64 KiB: what the kernel buffers on both sides of a
    # loopback connection is a few MiB at most.
    assert sent < 32 * 1024 * 1024, f"the server read {sent} bytes of a refused body"


# ---------------------------------------------------------------- content type -> 415


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded",
                                   "application/xml", "application/jsonx"])
def test_wrong_content_type_is_415(stack, creates_nothing, who, ctype):
    r = stack.orders.post("/orders", data=order_body(), headers=auth(who, **{"Content-Type": ctype}))
    assert_denied_or(r, who, 415)


def test_missing_content_type_is_rejected(stack, creates_nothing, who):
    r = stack.orders.post("/orders", data=order_body(), headers=auth(who))
    assert "Content-Type" not in r.request.headers
    assert_denied_or(r, who, {400, 415})


# ---------------------------------------------------------------- methods and paths


@pytest.mark.parametrize("method", ["DELETE", "PUT", "PATCH"])
def test_wrong_method_on_orders_is_405(stack, creates_nothing, method):
    r = stack.orders.request(method, "/orders", data=order_body(),
                             headers={"Content-Type": "application/json"})
    assert_problem(r, 405)


def test_get_orders_without_status_is_400(stack, creates_nothing):
    """GET /orders lists PENDING orders (GET /orders?status=PENDING): without
    the status, or with a body, it is a 400, never an order."""
    r = stack.orders.request("GET", "/orders", data=order_body(),
                             headers={"Content-Type": "application/json"})
    assert_problem(r, 400)


@pytest.mark.parametrize("method", ["POST", "DELETE", "PUT"])
def test_wrong_method_on_an_order(stack, creates_nothing, method):
    r = stack.orders.request(method, f"/orders/{uuid.uuid4()}", data=order_body(),
                             headers={"Content-Type": "application/json"})
    assert_problem(r, {404, 405})


@pytest.mark.parametrize("service", ["orders", "payments", "inventory"])
@pytest.mark.parametrize("path", ["/", "/nope", "/orders/x/y", "/healthz/x", "/metricsx"])
def test_unknown_path_is_404(stack, creates_nothing, service, path):
    api = getattr(stack, service)
    if service == "orders" and path == "/orders/x/y":
        assert_problem(api.get(path), {400, 404})
    else:
        assert_problem(api.get(path), 404)


def test_unknown_order_is_404(stack):
    assert_problem(stack.orders.get(f"/orders/{uuid.uuid4()}"), 404)


@pytest.mark.parametrize("oid", ["not-a-uuid", "a" * 300, "%00", "..%2f..%2fetc", "%ff%fe",
                                 "12345678-1234-1234-1234-1234567890abX", "%20"])
def test_invalid_order_id_is_404_or_400(stack, who, oid):
    r = stack.orders.get(f"/orders/{oid}", headers=auth(who))
    if oid in ("%00", "..%2f..%2fetc"):
        # Decoded, these are "/orders/" and "/orders/../../etc": no route at all, so
        # 404 before any authentication.
        assert_problem(r, 404)
    else:
        assert_denied_or(r, who, {400, 404})


def test_very_long_path(stack, who):
    r = stack.orders.get("/orders/" + "a" * 20000, headers=auth(who))
    # libmicrohttpd itself refuses a request line this long, before any route.
    assert_problem(r, {400, 401, 404, 414, 431})


def raw_request(port, data, timeout=10):
    """Sends data as is on a fresh connection; returns (status, headers, body)."""
    return raw_exchange(port, data, timeout=timeout)


@pytest.mark.parametrize("request_line", [b"GET /nope%ff%fe HTTP/1.1",
                                          b"GET /orders/x/%c3 HTTP/1.1",
                                          b"\xff\xfe /orders HTTP/1.1"],
                         ids=["404-path", "404-cut-character", "405-method"])
def test_problem_details_are_valid_utf8(stack, request_line):
    """A detail that echoes bytes that are not UTF-8 (a decoded path, a made-up
    method) still goes out as a problem document, the bytes replaced."""
    status, headers, body = raw_request(stack.daemons["order-service"].port,
                                        request_line + b"\r\nHost: x\r\nConnection: close\r\n\r\n")
    doc = assert_problem((status, headers, body), {404, 405})
    assert "?" in doc["detail"], doc


def test_problem_details_keep_valid_utf8(stack):
    doc = assert_problem(stack.orders.get("/caf%C3%A9"), 404)
    assert doc["detail"] == "no resource at /caf\u00e9", doc


# ---------------------------------------------------------------- made-up methods and /metrics

PROMTOOL = shutil.which("promtool") or ("/usr/bin/promtool" if os.path.exists("/usr/bin/promtool")
                                        else None)
HOSTILE_METHOD = 'X",route="y'


def series_of(text, family):
    return [ln for ln in text.splitlines() if ln.startswith(family + "{")]


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian package "
                    "prometheus, installed by deploy/install-deps.sh)")
def test_made_up_methods_keep_metrics_valid_and_bounded(stack):
    """Made-up methods, one with quotes in it and a body over the limit, sent
    without a token. Each is counted as method="OTHER" (a
    closed set), /metrics still passes promtool, and 60 distinct methods add
    at most a handful of series."""
    d = stack.daemons["order-service"]
    before = requests.get(d.url + "/metrics", timeout=5).text
    n_before = len(series_of(before, "orders_http_requests_total"))
    big = 2 * 1024 * 1024
    raw_exchange(d.port, (f"{HOSTILE_METHOD} /orders HTTP/1.1\r\nHost: x\r\n"
                          f"Connection: close\r\nContent-Type: application/json\r\n"
                          f"Content-Length: {big}\r\n\r\n").encode(), [b"x" * big])
    for i in range(60):
        method = f"M{i}{uuid.uuid4().hex[:6].upper()}"
        path = ("/orders", "/nope", "/orders/x")[i % 3]
        status, _, _ = raw_exchange(d.port, (f"{method} {path} HTTP/1.1\r\nHost: x\r\n"
                                             "Connection: close\r\nContent-Length: 2\r\n"
                                             "Content-Type: application/json\r\n\r\n{}").encode())
        assert 400 <= status < 500, (method, path, status)
    text = requests.get(d.url + "/metrics", timeout=5).text
    cp = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True,
                        text=True, timeout=30)
    lines = series_of(text, "orders_http_requests_total")
    assert cp.returncode == 0, f"promtool: {cp.stdout}{cp.stderr}\n" + "\n".join(lines)
    methods = {m for ln in lines for m in re.findall(r'method="([^"]*)"', ln)}
    assert methods <= {"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "CONNECT", "TRACE",
                       "PATCH", "OTHER"}, methods
    assert 'route="y' not in text
    assert any('method="OTHER"' in ln and 'status="413"' in ln for ln in lines), lines
    assert len(lines) - n_before <= 6, "\n".join(lines)


# ---------------------------------------------------------------- Idempotency-Key


def post_keyed(stack, key, token, **body):
    return stack.orders.post("/orders", json=dict(VALID, **body),
                             headers={**bearer(token), "Idempotency-Key": key})


def test_idempotency_key_fingerprint_keeps_fields_apart(stack):
    """Two different requests whose fields joined with "|" read the same are
    two requests: the second use of the key is a conflict."""
    key, c = stack.uid("key"), stack.uid("c")
    first = post_keyed(stack, key, "orders", customerId=f"{c}|b", sku="s")
    assert first.status_code == 202, first.text
    again = post_keyed(stack, key, "orders", customerId=f"{c}|b", sku="s")
    assert again.status_code == 202 and again.json()["orderId"] == first.json()["orderId"]
    other = post_keyed(stack, key, "orders", customerId=c, sku="b|s")
    assert_problem(other, 409)
    assert stack.sql_one("orders", "SELECT count(*) FROM orders WHERE customer_id IN (%s, %s)",
                         (f"{c}|b", c)) == 1


def test_idempotency_keys_are_scoped_by_token(stack):
    """One key and one body from two tokens are two orders; each token gets
    its own order back when it sends them again."""
    key, c = stack.uid("key"), stack.uid("c")
    a = post_keyed(stack, key, "orders", customerId=c)
    b = post_keyed(stack, key, "admin", customerId=c)
    assert a.status_code == 202 and b.status_code == 202, (a.text, b.text)
    assert a.json()["orderId"] != b.json()["orderId"], "the second token got the first's order"
    assert post_keyed(stack, key, "orders", customerId=c).json()["orderId"] == a.json()["orderId"]
    assert post_keyed(stack, key, "admin", customerId=c).json()["orderId"] == b.json()["orderId"]
    assert_problem(post_keyed(stack, key, "admin", customerId=c, quantity=2), 409)
    assert stack.sql_one("orders", "SELECT count(*) FROM orders WHERE customer_id = %s",
                         (c,)) == 2


def test_idempotency_key_stored_before_scopes_still_answers(stack):
    """A key stored by a version without scopes (scope '', fingerprint marked
    v1 by the migration) still returns its order to a client retrying after
    the upgrade, and still refuses a different request."""
    key, c = stack.uid("key"), stack.uid("c")
    oid = str(uuid.uuid4())
    stack.sql("orders", "INSERT INTO orders(order_id, customer_id, sku, quantity, amount_cents,"
              " status) VALUES (%s, %s, %s, 1, 100, 'PENDING')", (oid, c, VALID["sku"]))
    stack.sql("orders", "INSERT INTO idempotency_keys(scope, idem_key, fingerprint, order_id)"
              " VALUES ('', %s, %s, %s)", (key, f"v1|{c}|{VALID['sku']}|1|100", oid))
    for token in ("orders", "admin"):
        r = post_keyed(stack, key, token, customerId=c)
        assert r.status_code == 202 and r.json()["orderId"] == oid, r.text
    assert_problem(post_keyed(stack, key, "orders", customerId=c, quantity=2), 409)
    assert stack.sql_one("orders", "SELECT count(*) FROM orders WHERE customer_id = %s",
                         (c,)) == 1


# ---------------------------------------------------------------- payment / inventory APIs


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"balanceCents":-1}', b'{"balanceCents":"5"}',
                                  b'{"balanceCents":1.5}', b'{"balanceCents":9223372036854775808}',
                                  b"{}", b'{"balanceCents":1,"balanceCents":2}'],
                         ids=["malformed", "array", "negative", "string", "real", "overflow",
                              "missing", "duplicate"])
def test_bad_account_put_creates_nothing(stack, who, body):
    cust = stack.uid("cust")
    r = stack.payments.put(f"/accounts/{cust}", data=body,
                           headers=auth(who, **{"Content-Type": "application/json"}))
    assert_denied_or(r, who, 400)
    assert_problem(stack.payments.get(f"/accounts/{cust}"), 404)


@pytest.mark.parametrize("body", [b"{", b"[]", b'{"available":-1}', b'{"available":"5"}',
                                  b'{"available":1.5}', b'{"available":2147483648}', b"{}",
                                  b'{"available":1,"available":2}'],
                         ids=["malformed", "array", "negative", "string", "real", "overflow",
                              "missing", "duplicate"])
def test_bad_stock_put_creates_nothing(stack, who, body):
    sku = stack.uid("sku")
    r = stack.inventory.put(f"/stock/{sku}", data=body,
                            headers=auth(who, **{"Content-Type": "application/json"}))
    assert_denied_or(r, who, 400)
    assert_problem(stack.inventory.get(f"/stock/{sku}"), 404)


def test_put_with_wrong_content_type_is_415(stack, who):
    cust, sku = stack.uid("cust"), stack.uid("sku")
    assert_denied_or(stack.payments.put(f"/accounts/{cust}", data=b'{"balanceCents":1}',
                                        headers=auth(who, **{"Content-Type": "text/plain"})),
                     who, 415)
    assert_denied_or(stack.inventory.put(f"/stock/{sku}", data=b'{"available":1}',
                                         headers=auth(who, **{"Content-Type": "text/plain"})),
                     who, 415)
    assert stack.payments.balance(cust) is None and stack.inventory.stock(sku) is None


def test_release_onto_the_largest_stock_fits(stack):
    """Stock reserved, then set to the largest value PUT takes, then released
    (the payment declined): the release is applied, not retried into the DLT."""
    inv, pay = stack.daemons["inventory-service"], stack.daemons["payment-service"]
    cust, sku = stack.uid("c"), stack.uid("s")
    dlt0 = metric(inv.url, "orders_dead_lettered_total", topic="payments.completed")
    stack.set_stock(sku, 5)
    pay.stop()  # the decline must come after the PUT below
    try:
        oid = stack.orders.create_ok(cust, sku, 2, 100)  # unknown customer: declined
        stack.wait_until(lambda: (stack.inventory.reservation(oid) or {}).get("status")
                         == "RESERVED", 30, "stock reserved")
        stack.set_stock(sku, 2147483647)
    finally:
        pay.start()
        pay.wait_ready()
    stack.wait_until(lambda: (stack.inventory.reservation(oid) or {}).get("status")
                     == "RELEASED", 60, "reservation released")
    assert stack.orders.wait_settled(oid, need=("payment", "inventory"))["status"] == "REJECTED"
    assert stack.inventory.stock(sku) == 2147483647 + 2
    assert metric(inv.url, "orders_dead_lettered_total", topic="payments.completed") == dlt0


def test_unknown_ids_on_payment_and_inventory_are_404(stack):
    assert_problem(stack.payments.get(f"/accounts/{stack.uid('nobody')}"), 404)
    assert_problem(stack.payments.get(f"/payments/{uuid.uuid4()}"), 404)
    assert_problem(stack.inventory.get(f"/stock/{stack.uid('nosku')}"), 404)
    assert_problem(stack.inventory.get(f"/reservations/{uuid.uuid4()}"), 404)


# ---------------------------------------------------------------- slow clients


def test_slow_client_within_timeout_works(stack, who):
    """Headers first, then the body in pieces over ~1.5 s: still a normal answer
    (or a clean problem response), and other clients are served meanwhile."""
    port = stack.daemons["order-service"].port
    cust = stack.uid("cust")
    body = order_body(customerId=cust)
    pieces = [body[i:i + 10] for i in range(0, len(body), 10)]
    delay = 1.5 / len(pieces)
    result = {}

    def slow():
        try:
            result["resp"] = raw_exchange(port, post_head(len(body), who=who), pieces,
                                          delay=delay, timeout=20)
        except Exception as e:  # reported below
            result["err"] = e

    t = threading.Thread(target=slow)
    t.start()
    try:
        # While the slow upload is in progress, other requests are answered promptly.
        for _ in range(5):
            t0 = time.monotonic()
            r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
            assert r.status_code == 200
            assert time.monotonic() - t0 < 1.0, "a slow client held up another request"
            time.sleep(0.1)
    finally:
        t.join(30)
    assert "err" not in result, f"slow client got a broken connection: {result.get('err')!r}"
    status, headers, rbody = result["resp"]
    if who == "no-token":
        assert_denied_or(result["resp"], who, 401)
    elif status == 202:
        oid = json.loads(rbody)["orderId"]
        assert stack.orders.order(oid)["customerId"] == cust
    else:
        assert_problem(result["resp"], {400, 408})


def test_stalled_client_does_not_block_others(stack):
    port = stack.daemons["order-service"].port
    with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled:
        stalled.sendall(b"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le")
        r = requests.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert r.status_code == 200
        with socket.create_connection(("127.0.0.1", port), timeout=10) as stalled2:
            stalled2.sendall(post_head(1000))  # promises a body that never comes
            r = stack.orders.get(f"/orders/{uuid.uuid4()}")
            assert r.status_code == 404


# ---------------------------------------------------------------- database refused


def test_orders_refused_by_the_database_get_503_and_leak_nothing(stack):
    """While the database refuses order-service's role (CONNECTION LIMIT 0, its
    sessions ended: the cluster itself stays up for other tests), every order
    of the group commit is answered 503 with a problem document. Then the
    daemon stops cleanly: on the ASan build a leaked answer body would make it
    exit 1."""
    d, role = stack.daemons["order-service"], DB_PREFIX + "orders"
    stack.sql("orders", f'ALTER ROLE "{role}" CONNECTION LIMIT 0')
    try:
        stack.sql("orders", "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE usename = %s", (role,))
        for _ in range(10):
            assert_problem(stack.orders.create(stack.uid("c"), "s", 1, 100), 503)
    finally:
        stack.sql("orders", f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
    d.stop()  # asserts exit status 0
    d.start()
    d.wait_ready()
    stack.orders.create_ok(stack.uid("c"), "s", 1, 100)


# ---------------------------------------------------------------- health


@pytest.mark.parametrize("service", ["orders", "payments", "inventory"])
def test_health_and_readiness(stack, service):
    api = getattr(stack, service)
    # Further fields (e.g. per-dependency detail) are allowed.
    r = api.get("/healthz")
    assert r.status_code == 200 and r.json()["status"] == "ok", r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
    r = api.get("/readyz")
    assert r.status_code == 200 and r.json()["status"] == "ready", r.text
    assert r.headers["Content-Type"].startswith("application/json"), r.headers
