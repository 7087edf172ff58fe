"""
The OpenAPI document (schemas/openapi.json) against the real daemons: every
response the tests provoke is validated against the schema the document
gives for that path, method and status, so the document cannot drift from
what the services answer.
"""

import json
import re

import jsonschema
import pytest
import requests

from conftest import ROOT, bearer

DOC = json.loads((ROOT / "schemas" / "openapi.json").read_text())
JSON = {"Content-Type": "application/json"}
ORDERS = bearer("orders")
ADMIN = bearer("admin")


def validate(path, method, response):
    """Validates response against DOC's schema for (path template, method)."""
    op = DOC["paths"][path][method.lower()]
    spec = op["responses"].get(str(response.status_code))
    assert spec, f"{method} {path}: status {response.status_code} is not documented"
    ctype = response.headers.get("Content-Type", "").split(";")[0]
    assert ctype in spec["content"], f"{method} {path}: content type {ctype} not documented"
    schema = spec["content"][ctype]["schema"]
    if ctype == "text/plain":
        return
    # The schema is placed at the document's root so that its "#/components/..."
    # references resolve; the document's own keys are not validation keywords.
    jsonschema.validate(response.json(), dict(DOC, **schema),
                        cls=jsonschema.Draft202012Validator)


def test_document_is_valid_json_schema_per_component():
    for name, schema in DOC["components"]["schemas"].items():
        jsonschema.Draft202012Validator.check_schema(schema)


def test_order_lifecycle_matches_document(stack):
    cust, sku = stack.uid("c"), stack.uid("s")
    pay = requests.put(stack.payments.base + f"/accounts/{cust}", json={"balanceCents": 900},
                       headers={**JSON, **ADMIN}, timeout=5)
    validate("/accounts/{customerId}", "PUT", pay)
    inv = requests.put(stack.inventory.base + f"/stock/{sku}", json={"available": 3},
                       headers={**JSON, **ADMIN}, timeout=5)
    validate("/stock/{sku}", "PUT", inv)
    r = requests.post(stack.orders.base + "/orders", headers={**JSON, **ORDERS}, timeout=5,
                      json={"customerId": cust, "sku": sku, "quantity": 1, "amountCents": 300})
    validate("/orders", "POST", r)
    oid = r.json()["orderId"]
    validate("/orders/{orderId}", "GET", requests.get(stack.orders.base + f"/orders/{oid}",
                                                      headers=ORDERS, timeout=5))
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    for base, path, tmpl in (
            (stack.orders.base, f"/orders/{oid}", "/orders/{orderId}"),
            (stack.payments.base, f"/accounts/{cust}", "/accounts/{customerId}"),
            (stack.payments.base, f"/payments/{oid}", "/payments/{orderId}"),
            (stack.inventory.base, f"/stock/{sku}", "/stock/{sku}"),
            (stack.inventory.base, f"/reservations/{oid}", "/reservations/{orderId}"),
            (stack.orders.base, f"/outbox/{oid}", "/outbox/{orderId}"),
            (stack.payments.base, f"/outbox/{oid}", "/outbox/{orderId}"),
            (stack.inventory.base, f"/outbox/{oid}", "/outbox/{orderId}"),
            (stack.orders.base, "/orders?status=PENDING&olderThan=0&limit=1000", "/orders")):
        validate(tmpl, "GET", requests.get(base + path, headers=ADMIN, timeout=5))


def test_pending_orders_match_document(stack):
    """A PENDING order (its replies held back: inventory-service is stopped
    for a moment) in GET /orders?status=PENDING, with its missing reply."""
    cust, sku = stack.uid("c"), stack.uid("s")
    stack.fund(cust, 500)
    stack.set_stock(sku, 1)
    inv = stack.daemons["inventory-service"]
    inv.stop()
    try:
        oid = stack.orders.create_ok(cust, sku, 1, 100)
        stack.wait_until(lambda: stack.orders.order(oid)["payment"] is not None, 30,
                         "the payment reply")
        r = requests.get(stack.orders.base + "/orders?status=PENDING&limit=1000", headers=ORDERS,
                         timeout=5)
        validate("/orders", "GET", r)
        assert oid in [o["orderId"] for o in r.json()["orders"]]
    finally:
        inv.restart()
    stack.orders.wait_settled(oid, need=("payment", "inventory"))


@pytest.mark.parametrize("name", ["order-service", "payment-service", "inventory-service"])
def test_health_endpoints_match_document(stack, name):
    url = stack.daemons[name].url
    for path in ("/healthz", "/readyz", "/metrics"):
        validate(path, "GET", requests.get(url + path, timeout=5))


def test_errors_match_document(stack):
    o = stack.orders.base
    oj = {**JSON, **ORDERS}
    cases = [
        ("/orders", "POST", requests.post(o + "/orders", data="{", headers=oj, timeout=5)),
        ("/orders", "POST", requests.post(o + "/orders", data="x" * 70000, headers=oj,
                                          timeout=5)),
        ("/orders", "POST", requests.post(o + "/orders", data="{}", timeout=5,
                                          headers={"Content-Type": "text/plain", **ORDERS})),
        ("/orders/{orderId}", "GET", requests.get(o + "/orders/nope", headers=ORDERS,
                                                  timeout=5)),
        ("/orders", "GET", requests.get(o + "/orders?status=DONE", headers=ORDERS, timeout=5)),
        ("/orders", "GET", requests.get(o + "/orders?status=PENDING&limit=0", headers=ORDERS,
                                        timeout=5)),
        ("/outbox/{orderId}", "GET", requests.get(o + "/outbox/x", timeout=5)),
        ("/outbox/{orderId}", "GET", requests.get(stack.payments.base + "/outbox/x", timeout=5,
                                                  headers=bearer("orders"))),
        ("/accounts/{customerId}", "GET",
         requests.get(stack.payments.base + "/accounts/nobody", headers=ADMIN, timeout=5)),
        ("/stock/{sku}", "PUT", requests.put(stack.inventory.base + "/stock/x",
                                             json={"available": -1}, headers={**JSON, **ADMIN},
                                             timeout=5)),
        # Authentication: no token, an unknown one, a token without the scope.
        ("/orders", "POST", requests.post(o + "/orders", data="{}", headers=JSON, timeout=5)),
        ("/orders/{orderId}", "GET", requests.get(o + "/orders/nope", timeout=5,
                                                  headers={"Authorization": "Bearer ot_nope"})),
        ("/accounts/{customerId}", "PUT",
         requests.put(stack.payments.base + "/accounts/x", json={"balanceCents": 1},
                      headers={**JSON, **bearer("only-payments-read")}, timeout=5)),
        ("/stock/{sku}", "GET", requests.get(stack.inventory.base + "/stock/x", timeout=5,
                                             headers=bearer("orders"))),
    ]
    for tmpl, method, r in cases:
        assert r.status_code >= 400
        validate(tmpl, method, r)


def test_every_documented_path_is_served(stack):
    bases = {"/orders": stack.orders.base, "/accounts": stack.payments.base,
             "/payments": stack.payments.base, "/stock": stack.inventory.base,
             "/reservations": stack.inventory.base}
    for path, ops in DOC["paths"].items():
        base = next((b for prefix, b in bases.items() if path.startswith(prefix)),
                    stack.orders.base)
        concrete = re.sub(r"\{[^}]+\}", "x", path)
        for method in ops:
            r = requests.request(method.upper(), base + concrete, timeout=5, headers=ADMIN,
                                 json={} if method in ("post", "put") else None)
            assert r.status_code != 405, f"{method.upper()} {path} is not served"
            if r.status_code == 404:
                assert "no resource" not in r.text, f"{method.upper()} {path} has no route"
