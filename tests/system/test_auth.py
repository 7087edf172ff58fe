"""
The HTTP API's authentication and authorization on the real daemons: bearer
tokens from the token file (SHA-256 hashes), scopes per route, 401/403 as
problem+json with WWW-Authenticate, nothing written on a refusal, the token
file re-read on SIGHUP (revoking and adding tokens without a restart),
secure-by-default start-up checks (exit 78), HTTP_AUTH=none, METRICS_TOKEN_SCOPE,
HTTPS with TLS 1.2+ only, the per-client connection limit, audit lines, and
that no token ever reaches a log or /metrics.

The stack's token file holds, besides ORDERS and ADMIN, one token per scope
("only-<scope>"): the matrix below uses them.
"""

import base64
import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import time
import warnings

import pytest
import requests

from conftest import (SCOPES, SERVICES, TOKENS, TOKENS_FILE, build_dir, make_pki, new_token,
                      token_hash, token_line, write_tokens_file)
from helpers import end_offsets

EX_CONFIG = 78
JSON = {"Content-Type": "application/json"}
REALM = 'Bearer realm="orders"'


def url(stack, service):
    return {"orders": stack.orders.base, "payments": stack.payments.base,
            "inventory": stack.inventory.base}[service]


def call(stack, service, method, path, headers=None, body=None, **kw):
    """A request with exactly the headers given (no session defaults)."""
    h = dict(headers or {})
    if body is not None:
        h.update(JSON)
    return requests.request(method, url(stack, service) + path, headers=h, timeout=10,
                            data=json.dumps(body) if body is not None else None, **kw)


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def assert_problem(r, status):
    assert r.status_code == status, f"expected {status}, got {r.status_code} {r.text[:300]}"
    assert r.headers.get("Content-Type", "").split(";")[0] == "application/problem+json", \
        r.headers
    doc = r.json()
    assert doc["status"] == status and doc["title"] and doc["detail"], doc
    return doc


def assert_401(r, presented):
    doc = assert_problem(r, 401)
    want = REALM + (', error="invalid_token"' if presented else "")
    assert r.headers.get("WWW-Authenticate") == want, r.headers
    return doc


def assert_403(r, scope):
    doc = assert_problem(r, 403)
    assert r.headers.get("WWW-Authenticate") == (
        f'{REALM}, error="insufficient_scope", scope="{scope}"'), r.headers
    assert scope in doc["detail"], doc
    return doc


def this_start(daemon):
    text = daemon.log_path.read_text(errors="replace")
    return text[text.rfind("=== test harness: starting"):]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raw(port, request, timeout=10, source=None):
    """Sends request bytes on a fresh connection; returns the whole answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(request)
        out = b""
        while True:
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            out += chunk
        return out


# ---------------------------------------------------------------- the routes

# (service, method, path template, scope, body or None, expected status with the scope)
def routes(stack, oid, cust, sku):
    return [
        ("orders", "POST", "/orders", "orders:write",
         {"customerId": cust, "sku": sku, "quantity": 1, "amountCents": 1}, 202),
        ("orders", "GET", f"/orders/{oid}", "orders:read", None, 200),
        ("payments", "PUT", f"/accounts/{cust}", "payments:admin", {"balanceCents": 500}, 200),
        ("payments", "GET", f"/accounts/{cust}", "payments:read", None, 200),
        ("payments", "GET", f"/payments/{oid}", "payments:read", None, 200),
        ("inventory", "PUT", f"/stock/{sku}", "inventory:admin", {"available": 5}, 200),
        ("inventory", "GET", f"/stock/{sku}", "inventory:read", None, 200),
        ("inventory", "GET", f"/reservations/{oid}", "inventory:read", None, 200),
        ("orders", "GET", "/orders?status=PENDING&olderThan=0&limit=5", "orders:read", None, 200),
        ("orders", "GET", f"/outbox/{oid}", "orders:read", None, 200),
        ("payments", "GET", f"/outbox/{oid}", "payments:read", None, 200),
        ("inventory", "GET", f"/outbox/{oid}", "inventory:read", None, 200),
    ]


@pytest.fixture(scope="module")
def settled_order(stack):
    """A confirmed order (its customer, sku and id), for the GET routes."""
    cust, sku = stack.uid("auth-c"), stack.uid("auth-s")
    stack.fund(cust, 10_000)
    stack.set_stock(sku, 100)
    oid = stack.orders.create_ok(cust, sku, 1, 100)
    stack.orders.wait_settled(oid, need=("payment", "inventory"))
    return oid, cust, sku


def nothing_written(stack, cust, sku):
    """No order of cust, no account cust, no stock row sku."""
    assert stack.sql_one("orders", "SELECT count(*) FROM orders WHERE customer_id = %s",
                         (cust,)) == 0
    assert stack.sql_one("payments", "SELECT count(*) FROM accounts WHERE customer_id = %s",
                         (cust,)) == 0
    assert stack.sql_one("inventory", "SELECT count(*) FROM stock WHERE sku = %s", (sku,)) == 0


def bad_credentials():
    """(id, headers, presented) forms that must all get 401."""
    good = TOKENS["admin"][0]
    basic = base64.b64encode(f"admin:{good}".encode()).decode()
    return [
        ("none", {}, False),
        ("unknown-token", bearer(new_token()), True),
        ("token-plus-one", bearer(good + "x"), True),
        ("token-minus-one", bearer(good[:-1]), True),
        ("the-hash-itself", bearer(token_hash(good)), True),
        ("empty-bearer", {"Authorization": "Bearer"}, True),
        ("bearer-space", {"Authorization": "Bearer "}, True),
        ("basic", {"Authorization": f"Basic {basic}"}, True),
        ("token-scheme", {"Authorization": f"Token {good}"}, True),
        ("no-scheme", {"Authorization": good}, True),
        ("two-tokens", {"Authorization": f"Bearer {good} {good}"}, True),
        ("bearer-comma", {"Authorization": f"Bearer {good}, Bearer {good}"}, True),
        ("quoted", {"Authorization": f'Bearer "{good}"'}, True),
        ("other-header", {"X-Auth-Token": good}, False),
        ("cookie", {"Cookie": f"token={good}"}, False),
    ]


@pytest.mark.parametrize("form", [c[0] for c in bad_credentials()])
def test_bad_credentials_get_401_and_write_nothing(stack, form, settled_order):
    _, headers, presented = next(c for c in bad_credentials() if c[0] == form)
    oid = settled_order[0]
    cust, sku = stack.uid("denied-c"), stack.uid("denied-s")
    before = end_offsets(stack.bootstrap, "orders.created")
    for service, method, path, scope, body, _ in routes(stack, oid, cust, sku):
        r = call(stack, service, method, path, headers, body)
        doc = assert_401(r, presented)
        # The problem names what is needed, never what was presented.
        for tok, _s in TOKENS.values():
            assert tok not in r.text and tok not in json.dumps(dict(r.headers))
        assert scope in doc["detail"], doc
    nothing_written(stack, cust, sku)
    assert end_offsets(stack.bootstrap, "orders.created") == before


def test_token_in_query_string_is_not_accepted(stack, settled_order):
    cust, sku = stack.uid("q-c"), stack.uid("q-s")
    good = TOKENS["admin"][0]
    r = call(stack, "orders", "POST", f"/orders?access_token={good}", {},
             {"customerId": cust, "sku": sku, "quantity": 1, "amountCents": 1})
    assert_401(r, False)
    r = call(stack, "payments", "PUT", f"/accounts/{cust}?access_token={good}", {},
             {"balanceCents": 1})
    assert_401(r, False)
    nothing_written(stack, cust, sku)


def test_two_authorization_headers_are_refused(stack):
    good = TOKENS["admin"][0]
    cust = stack.uid("two-c")
    body = b'{"balanceCents":5}'
    req = (f"PUT /accounts/{cust} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           f"Authorization: Bearer {good}\r\nAuthorization: Bearer {good}\r\n"
           f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    out = raw(stack.daemons["payment-service"].port, req + body)
    assert out.startswith(b"HTTP/1.1 401"), out[:300]
    assert b'WWW-Authenticate: Bearer realm="orders", error="invalid_token"' in out, out[:500]
    assert stack.payments.balance(cust) is None


def test_refused_before_the_body_is_sent(stack):
    """A client that waits for "100 Continue" gets the 401 instead, its body
    never asked for; one that sends its body gets the 401 after it."""
    port = stack.daemons["payment-service"].port
    cust = stack.uid("expect-c")
    head = (f"PUT /accounts/{cust} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
            f"Content-Type: application/json\r\nContent-Length: 18\r\n"
            f"Expect: 100-continue\r\n\r\n").encode()
    out = raw(port, head, timeout=5)  # the body is never sent
    assert out.startswith(b"HTTP/1.1 401"), out[:200]
    assert b"100 Continue" not in out, out[:200]
    body = b'{"balanceCents":5}'
    out = raw(port, head.replace(b"Expect: 100-continue\r\n", b"") + body)
    assert out.startswith(b"HTTP/1.1 401"), out[:200]
    assert stack.payments.balance(cust) is None


def test_scheme_and_header_name_are_case_insensitive(stack):
    cust = stack.uid("case-c")
    good = TOKENS["admin"][0]
    for auth_header in (f"bearer {good}", f"BEARER {good}", f"Bearer   {good}"):
        r = call(stack, "payments", "PUT", f"/accounts/{cust}", {"Authorization": auth_header},
                 {"balanceCents": 7})
        assert r.status_code == 200, f"{auth_header[:8]}...: {r.status_code} {r.text}"
    body = b'{"balanceCents":8}'
    req = (f"PUT /accounts/{cust} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
           f"authorization: Bearer {good}\r\ncontent-type: application/json\r\n"
           f"content-length: {len(body)}\r\n\r\n").encode()
    out = raw(stack.daemons["payment-service"].port, req + body)
    assert out.startswith(b"HTTP/1.1 200"), out[:300]
    assert stack.payments.balance(cust) == 8


@pytest.mark.parametrize("scope", SCOPES)
def test_each_scope_allows_exactly_its_routes(stack, settled_order, scope):
    """The token of one scope, on every route of the three daemons: 2xx where
    the route needs that scope, 403 (and nothing written) everywhere else."""
    oid, fund_cust, fund_sku = settled_order
    token = stack.scope_token(scope)
    cust, sku = stack.uid("m-c"), stack.uid("m-s")
    allowed = []
    for service, method, path, need, body, ok in routes(stack, oid, fund_cust, fund_sku):
        if need != scope:
            # Fresh ids for the forbidden writes: we can see that nothing came of them.
            path = path.replace(fund_cust, cust).replace(fund_sku, sku)
            body = body and {k: (cust if v == fund_cust else sku if v == fund_sku else v)
                             for k, v in body.items()}
        r = call(stack, service, method, path, bearer(token), body)
        if need == scope:
            assert r.status_code == ok, f"{scope}: {method} {path}: {r.status_code} {r.text}"
            allowed.append((method, path))
        else:
            assert_403(r, need)
    # Every scope but metrics:read opens one route or a few; none opens more.
    assert len(allowed) == {"orders:write": 1, "orders:read": 3, "payments:read": 3,
                            "payments:admin": 1, "inventory:read": 3, "inventory:admin": 1,
                            "metrics:read": 0}[scope], allowed
    nothing_written(stack, cust, sku)


def test_orders_token_cannot_fund_or_stock(stack):
    cust, sku = stack.uid("o-c"), stack.uid("o-s")
    orders = bearer(TOKENS["orders"][0])
    assert_403(call(stack, "payments", "PUT", f"/accounts/{cust}", orders, {"balanceCents": 1}),
               "payments:admin")
    assert_403(call(stack, "inventory", "PUT", f"/stock/{sku}", orders, {"available": 1}),
               "inventory:admin")
    assert_403(call(stack, "payments", "GET", f"/accounts/{cust}", orders), "payments:read")
    nothing_written(stack, cust, sku)


@pytest.mark.parametrize("service", ["orders", "payments", "inventory"])
def test_health_readiness_and_metrics_are_open(stack, service):
    for path in ("/healthz", "/readyz", "/metrics"):
        r = call(stack, service, "GET", path)
        assert r.status_code == 200, f"{service} {path}: {r.status_code} {r.text[:200]}"


def test_denials_are_counted_and_logged_without_the_credential(stack):
    port = stack.daemons["order-service"].port
    wrong = new_token()
    r = call(stack, "orders", "POST", "/orders", bearer(wrong),
             {"customerId": "c", "sku": "s", "quantity": 1, "amountCents": 1})
    assert_401(r, True)
    r = call(stack, "orders", "POST", "/orders", bearer(stack.scope_token("orders:read")),
             {"customerId": "c", "sku": "s", "quantity": 1, "amountCents": 1})
    assert_403(r, "orders:write")
    metrics = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    assert 'orders_http_requests_total{route="/orders",method="POST",status="401"}' in metrics
    assert 'orders_http_requests_total{route="/orders",method="POST",status="403"}' in metrics
    log = stack.daemons["order-service"].log_path.read_text(errors="replace")
    assert wrong not in log
    unauthorized = [ln for ln in log.splitlines() if "http unauthorized" in ln]
    assert any("client=127.0.0.1" in ln and "route=/orders" in ln and "unknown token" in ln
               for ln in unauthorized), unauthorized[-3:]
    forbidden = [ln for ln in log.splitlines() if "http forbidden" in ln]
    assert any("token=only-orders-read" in ln and "scope=orders:write" in ln
               for ln in forbidden), forbidden[-3:]


def test_a_flood_of_refused_requests_is_logged_rate_limited_and_counted(stack):
    """400 requests without a token: all get 401 and are counted in
    /metrics, but at most the burst (100) plus 20 a second are logged one by
    one; the rest are reported as a count, so the numbers add up."""
    with restarted(stack, "order-service") as d:  # a fresh log budget
        d.wait_ready()
        since = len(d.log_path.read_text(errors="replace"))
        route = 'orders_http_requests_total{route="/orders/{}",method="GET",status="401"}'

        def count401():
            for ln in d.http_get("/metrics").text.splitlines():
                if ln.startswith(route + " "):
                    return int(float(ln.split()[1]))
            return 0
        before = count401()
        flood = 400
        t0 = time.monotonic()
        with requests.Session() as s:
            for i in range(flood):
                r = s.get(f"{d.url}/orders/flood-{i}", timeout=10)
                assert r.status_code == 401
        took = time.monotonic() - t0
        time.sleep(1.2)  # the budget refills: the next refusal is logged with the count
        assert call(stack, "orders", "GET", "/orders/flood-last").status_code == 401
        assert count401() - before == flood + 1
        log = d.log_path.read_text(errors="replace")[since:]
        one_by_one = [ln for ln in log.splitlines()
                      if "http unauthorized" in ln and "route=/orders/{}" in ln]
        counts = [int(m) for m in re.findall(r"http refused requests not logged count=(\d+)", log)]
        assert counts, "no line said how many refusals were not logged"
        assert len(one_by_one) <= 100 + 20 * (took + 1.5) + 1, (len(one_by_one), took)
        assert len(one_by_one) < flood
        assert len(one_by_one) + sum(counts) == flood + 1, (len(one_by_one), counts)


def test_writes_are_audited_with_the_token_name(stack):
    cust, sku = stack.uid("audit-c"), stack.uid("audit-s")
    stack.fund(cust, 1_000)
    stack.set_stock(sku, 3)
    oid = stack.orders.create_ok(cust, sku, 1, 100)

    def audit_lines(name):
        return [ln for ln in stack.daemons[name].log_path.read_text().splitlines()
                if " audit " in ln or ln.startswith("audit") or "audit token=" in ln]

    pay = [ln for ln in audit_lines("payment-service") if f'param="{cust}"' in ln]
    assert len(pay) == 1, pay
    assert "token=admin method=PUT route=/accounts/{} " in pay[0] and "status=200" in pay[0]
    inv = [ln for ln in audit_lines("inventory-service") if f'param="{sku}"' in ln]
    assert len(inv) == 1 and "token=admin method=PUT route=/stock/{}" in inv[0], inv
    orders = [ln for ln in audit_lines("order-service") if f"order_id={oid}" in ln]
    assert len(orders) == 1, orders
    assert "token=orders method=POST route=/orders " in orders[0] and "status=202" in orders[0]
    # A refused write is audited too, with no token name.
    call(stack, "payments", "PUT", f"/accounts/{cust}x", {}, {"balanceCents": 1})
    denied = [ln for ln in audit_lines("payment-service") if f'param="{cust}x"' in ln]
    assert len(denied) == 1 and "token=- " in denied[0] and "status=401" in denied[0], denied


# ---------------------------------------------------------------- reload on SIGHUP


def reloaded(daemon, since, what):
    def seen():
        text = daemon.log_path.read_text(errors="replace")[since:]
        return what in text, text[-500:]
    return seen


def orderctl(*args, stdin=None):
    return subprocess.run([str(build_dir() / "tools" / "orderctl"), *args], input=stdin,
                          capture_output=True, text=True, timeout=30)


def test_orderctl_token_new_and_hash():
    cp = orderctl("token", "new", "--name", "ci.bench-1", "--scope", "orders:write,orders:read")
    assert cp.returncode == 0, cp.stderr
    tok, line = cp.stdout.splitlines()
    assert tok.startswith("ot_") and len(tok) == 46, tok
    assert base64.urlsafe_b64decode(tok[3:] + "=") and len(base64.urlsafe_b64decode(
        tok[3:] + "=")) == 32
    assert line + "\n" == token_line("ci.bench-1", tok, ["orders:write", "orders:read"])
    assert tok not in cp.stderr and "shown once" in cp.stderr
    again = orderctl("token", "new", "--name", "x", "--scope", "orders:read").stdout
    assert again.split()[0] != tok
    cp = orderctl("token", "hash", stdin=tok + "\n")
    assert cp.returncode == 0 and cp.stdout.strip() == token_hash(tok), cp
    cp = orderctl("token", "hash", "--name", "n", "--scope", "orders:read", stdin=tok)
    assert cp.stdout == token_line("n", tok, ["orders:read"]), cp
    for args, says in ((["--name", "a b", "--scope", "orders:read"], "--name"),
                       (["--name", "a", "--scope", "orders:wrote"], "unknown scope"),
                       (["--name", "a", "--scope", "orders:read,"], "unknown scope"),
                       (["--name", "a"], "--scope"),
                       (["--scope", "orders:read"], "--name")):
        cp = orderctl("token", "new", *args)
        assert cp.returncode == 2 and says in cp.stderr and not cp.stdout, (args, cp)
    assert orderctl("token", "hash", stdin="").returncode == 2
    assert "token new" in orderctl("--help").stdout


def test_sighup_revokes_and_adds_tokens_without_restart(stack):
    d = stack.daemons["order-service"]
    pid = d.pid
    revoked = TOKENS["only-orders-read"][0]
    late = orderctl("token", "new", "--name", "late", "--scope", "orders:read").stdout.split()[0]
    oid = stack.orders.create_ok(stack.uid("hup-c"), stack.uid("hup-s"), 1, 1)
    assert call(stack, "orders", "GET", f"/orders/{oid}", bearer(revoked)).status_code == 200
    assert_401(call(stack, "orders", "GET", f"/orders/{oid}", bearer(late)), True)
    tokens = {k: v for k, v in TOKENS.items() if k != "only-orders-read"}
    tokens["late"] = (late, ["orders:read"])
    try:
        write_tokens_file(tokens=tokens)
        mark = d.log_path.stat().st_size
        os.kill(pid, signal.SIGHUP)
        stack.wait_until(reloaded(d, mark, f"reloaded {len(tokens)} tokens"), 10,
                         "order-service to log the reload")
        assert_401(call(stack, "orders", "GET", f"/orders/{oid}", bearer(revoked)), True)
        assert call(stack, "orders", "GET", f"/orders/{oid}", bearer(late)).status_code == 200

        # A broken file is refused with file:line; the tokens in force stay.
        with open(TOKENS_FILE, "a") as f:
            f.write("not-a-hash late2 orders:read\n")
        mark = d.log_path.stat().st_size
        os.kill(pid, signal.SIGHUP)
        stack.wait_until(reloaded(d, mark, "token file not reloaded"), 10,
                         "order-service to log the failed reload")
        text = d.log_path.read_text(errors="replace")[mark:]
        assert f"{TOKENS_FILE}:{len(tokens) + 2}:" in text, text
        assert call(stack, "orders", "GET", f"/orders/{oid}", bearer(late)).status_code == 200
        assert stack.orders.order(oid) is not None
        assert d.pid == pid and d.running()
    finally:
        write_tokens_file()
        mark = d.log_path.stat().st_size
        os.kill(pid, signal.SIGHUP)
        stack.wait_until(reloaded(d, mark, f"reloaded {len(TOKENS)} tokens"), 10,
                         "order-service to reload the session's tokens")
    assert call(stack, "orders", "GET", f"/orders/{oid}", bearer(revoked)).status_code == 200
    assert_401(call(stack, "orders", "GET", f"/orders/{oid}", bearer(late)), True)


# ---------------------------------------------------------------- start-up checks


def run_until_exit(name, extra, timeout=15):
    """A daemon with `extra` in its environment, a database that cannot
    answer: a start-up check exits at once, anything later would wait."""
    env = {"PATH": "/usr/bin:/bin", "HTTP_PORT": str(free_port()),
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **extra}
    try:
        return subprocess.run([str(build_dir() / name / name)], env=env,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} with {extra} still running after {timeout} s\n{e.stderr}")


def config_error(cp):
    assert cp.returncode == EX_CONFIG, f"exit {cp.returncode}\n{cp.stderr}"
    errors = [ln for ln in cp.stderr.splitlines() if "configuration error" in ln]
    assert len(errors) == 1, cp.stderr
    assert "database" not in cp.stderr.replace("DATABASE_URL", ""), cp.stderr
    return errors[0]


@pytest.mark.parametrize("name", list(SERVICES))
def test_no_token_file_exits_78_naming_the_variable(name):
    line = config_error(run_until_exit(name, {}))
    assert "HTTP_TOKENS_FILE" in line and "HTTP_AUTH=none" in line, line
    line = config_error(run_until_exit(name, {"HTTP_AUTH": "tokens"}))
    assert "HTTP_TOKENS_FILE" in line, line


def test_bad_token_files_exit_78(tmp_path):
    name = "payment-service"
    good = token_line("app", new_token(), ["orders:read"])
    cases = {
        "malformed": ("# header\n" + good + "zz app orders:read\n", 0o600, ":3:"),
        "bad-scope": (good.replace("orders:read", "Orders"), 0o600, ":1: invalid scope"),
        "group-writable": (good, 0o620, "writable by group or others"),
        "world-writable": (good, 0o602, "writable by group or others"),
    }
    for case, (text, mode, says) in cases.items():
        path = tmp_path / case
        path.write_text(text)
        os.chmod(path, mode)
        line = config_error(run_until_exit(name, {"HTTP_TOKENS_FILE": str(path)}))
        assert str(path) in line and says in line, f"{case}: {line}"
    line = config_error(run_until_exit(name, {"HTTP_TOKENS_FILE": str(tmp_path / "missing")}))
    assert "missing" in line and "No such file" in line, line
    for var, value, says in (("HTTP_AUTH", "maybe", "HTTP_AUTH"),
                             ("METRICS_TOKEN_SCOPE", "Metrics", "METRICS_TOKEN_SCOPE"),
                             ("HTTP_TLS_CERT", "/nonexistent.pem", "HTTP_TLS_KEY")):
        line = config_error(run_until_exit(name, {"HTTP_TOKENS_FILE": str(TOKENS_FILE),
                                                  var: value}))
        assert says in line, line


@contextlib.contextmanager
def restarted(stack, name, **env):
    """The daemon `name` restarted with `env` on top of its environment for
    the block; afterwards restarted as it was, and ready."""
    d = stack.daemons[name]
    normal = d.env
    d.stop()
    d.env = dict(normal, **env)
    d.start()
    try:
        yield d
    finally:
        if d.running():
            d.stop()
        d.env = normal
        d.start()
        d.wait_ready()


def test_audit_lines_are_written_whatever_the_log_level(stack):
    with restarted(stack, "inventory-service", LOG_LEVEL="error") as d:
        d.wait_ready()
        sku = stack.uid("quiet-s")
        r = call(stack, "inventory", "PUT", f"/stock/{sku}", bearer(TOKENS["admin"][0]),
                 {"available": 2})
        assert r.status_code == 200, r.text
        lines = this_start(d).splitlines()
        assert not [ln for ln in lines if " info: " in ln], "LOG_LEVEL=error wrote info lines"
        audit = [ln for ln in lines if "audit token=admin method=PUT route=/stock/{}" in ln
                 and f'param="{sku}"' in ln and "status=200" in ln]
        assert len(audit) == 1, lines[-20:]


def test_http_auth_none_works_with_a_warning(stack):
    with restarted(stack, "inventory-service", HTTP_AUTH="none") as d:
        d.wait_ready()
        sku = stack.uid("none-s")
        r = call(stack, "inventory", "PUT", f"/stock/{sku}", {}, {"available": 4})
        assert r.status_code == 200, r.text
        assert call(stack, "inventory", "GET", f"/stock/{sku}").json()["available"] == 4
        lines = this_start(d).splitlines()
        warn = [ln for ln in lines if "HTTP_AUTH=none" in ln and "open to anyone" in ln]
        assert len(warn) == 1 and (" warning: " in warn[0] or warn[0].startswith("<4>")), warn
        audit = [ln for ln in lines if "audit token=- method=PUT" in ln and sku in ln]
        assert len(audit) == 1, audit


def test_idempotency_keys_are_shared_with_http_auth_none(stack):
    """Without authentication no client has a name: every client shares one
    scope of Idempotency-Keys (the README says so)."""
    with restarted(stack, "order-service", HTTP_AUTH="none") as d:
        d.wait_ready()
        key, cust = stack.uid("key"), stack.uid("c")
        body = {"customerId": cust, "sku": "s", "quantity": 1, "amountCents": 100}
        ids = set()
        for hdr in ({}, bearer(TOKENS["admin"][0])):
            r = call(stack, "orders", "POST", "/orders", {**hdr, "Idempotency-Key": key}, body)
            assert r.status_code == 202, r.text
            ids.add(r.json()["orderId"])
        assert len(ids) == 1, ids
        assert stack.sql_one("orders", "SELECT count(*) FROM orders WHERE customer_id = %s",
                             (cust,)) == 1


def test_metrics_token_scope(stack):
    with restarted(stack, "payment-service", METRICS_TOKEN_SCOPE="metrics:read") as d:
        d.wait_ready()
        assert_401(call(stack, "payments", "GET", "/metrics"), False)
        assert_403(call(stack, "payments", "GET", "/metrics", bearer(TOKENS["orders"][0])),
                   "metrics:read")
        r = call(stack, "payments", "GET", "/metrics", bearer(stack.scope_token("metrics:read")))
        assert r.status_code == 200 and "orders_ready 1" in r.text, r.text[:300]
        assert call(stack, "payments", "GET", "/healthz").status_code == 200
        # The other daemons are unchanged: /metrics open.
        assert call(stack, "orders", "GET", "/metrics").status_code == 200


# ---------------------------------------------------------------- HTTPS


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    """A throw-away CA and a server certificate for IP 127.0.0.1 signed by it."""
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_client(pki, minimum=None, maximum=None, legacy=False):
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    if legacy:
        # Let this client offer the old versions at all (OpenSSL 3 refuses by default),
        # so that the refusal comes from the server.
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    if minimum:
        ctx.minimum_version = minimum
    if maximum:
        ctx.maximum_version = maximum
    return ctx


def tls_handshake(port, ctx):
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s, server_hostname="127.0.0.1") as t:
            return t.version()


def test_https_serves_the_flow_tls12_and_13_only(stack, pki):
    with restarted(stack, "order-service", HTTP_TLS_CERT=str(pki / "server.pem"),
                   HTTP_TLS_KEY=str(pki / "server.key")) as d:
        base = f"https://127.0.0.1:{d.port}"
        ca = str(pki / "ca.pem")
        stack.wait_until(lambda: requests.get(base + "/readyz", verify=ca, timeout=2)
                         .status_code == 200, 30, "order-service ready over HTTPS")
        cust, sku = stack.uid("tls-c"), stack.uid("tls-s")
        stack.fund(cust, 1_000)
        stack.set_stock(sku, 2)
        orders = bearer(TOKENS["orders"][0])
        r = requests.post(base + "/orders", verify=ca, timeout=10, headers={**JSON, **orders},
                          json={"customerId": cust, "sku": sku, "quantity": 1,
                                "amountCents": 300})
        assert r.status_code == 202, r.text
        oid = r.json()["orderId"]

        def settled():
            o = requests.get(f"{base}/orders/{oid}", verify=ca, headers=orders, timeout=5).json()
            return o["status"] in ("CONFIRMED", "REJECTED") and o["inventory"] is not None, o
        o = stack.wait_until(settled, 30, f"order {oid} settled over HTTPS")[1]
        assert o["status"] == "CONFIRMED", o
        assert_401(requests.get(f"{base}/orders/{oid}", verify=ca, timeout=5), False)

        # The versions: 1.3 and 1.2 are served, 1.1 and 1.0 refused by the server.
        assert tls_handshake(d.port, tls_client(pki)) == "TLSv1.3"
        assert tls_handshake(d.port, tls_client(pki, maximum=ssl.TLSVersion.TLSv1_2)) \
            == "TLSv1.2"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # TLSv1, TLSv1_1: the point
            # The legacy client itself works (it offers 1.0 to 1.2, gets 1.2)...
            ctx = tls_client(pki, minimum=ssl.TLSVersion.TLSv1,
                             maximum=ssl.TLSVersion.TLSv1_2, legacy=True)
            assert tls_handshake(d.port, ctx) == "TLSv1.2"
            # ...and offering at most 1.1 or 1.0, the server ends the handshake
            # (an alert or a close), not the client before sending.
            for old in (ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1):
                ctx = tls_client(pki, minimum=ssl.TLSVersion.TLSv1, maximum=old, legacy=True)
                with pytest.raises(ssl.SSLError) as e:
                    tls_handshake(d.port, ctx)
                msg = str(e.value).upper()
                assert "NO_PROTOCOLS_AVAILABLE" not in msg, f"{old}: refused locally: {e.value}"
                assert ("PROTOCOL_VERSION" in msg or "UNSUPPORTED_PROTOCOL" in msg
                        or isinstance(e.value, (ssl.SSLZeroReturnError, ssl.SSLEOFError))), \
                    f"{old}: {e.value!r}"
        cp = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{d.port}",
                             "-tls1_1", "-cipher", "DEFAULT:@SECLEVEL=0"],
                            input="", capture_output=True, text=True, timeout=30)
        assert cp.returncode != 0, cp.stdout[-500:]
        # A certificate from another CA is not trusted by the client: no fallback.
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(base + "/healthz", timeout=5)
        # Plain HTTP to the HTTPS port gets no HTTP answer.
        out = raw(d.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert not out.startswith(b"HTTP/1.1 200"), out[:200]
        log = this_start(d)
        assert f"started http=https://127.0.0.1:{d.port}" in log, log[-2000:]
        key_body = "".join((pki / "server.key").read_text().splitlines()[1:-1])
        assert key_body[:40] not in log


def test_plain_http_on_a_public_address_warns(stack):
    # 0.0.0.0 is not loopback: tokens would cross the network in clear text.
    with restarted(stack, "inventory-service", HTTP_ADDR="0.0.0.0") as d:
        d.wait_ready()
        warn = [ln for ln in this_start(d).splitlines() if "clear text" in ln]
        assert len(warn) == 1 and "HTTP_TLS_CERT" in warn[0], warn


# ---------------------------------------------------------------- connection limit


def test_per_client_connection_limit(stack):
    with restarted(stack, "payment-service", HTTP_CLIENT_CONNECTIONS="4") as d:
        req = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
        held = []
        try:
            d.wait_ready()
            time.sleep(0.5)  # the readiness probe's connection is closed by now
            for _ in range(4):
                s = socket.create_connection(("127.0.0.1", d.port), timeout=5)
                s.sendall(req)
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
                held.append(s)
            # A fifth from the same address is closed without an answer...
            with socket.create_connection(("127.0.0.1", d.port), timeout=5) as extra:
                try:
                    extra.sendall(req)
                    got = extra.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    got = b""
                assert got == b"", got[:100]
            # ...while the first four still work, and another address is served.
            for s in held:
                s.sendall(req)
                assert s.recv(4096).startswith(b"HTTP/1.1 200")
            out = raw(d.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                      source="127.0.0.2")
            assert out.startswith(b"HTTP/1.1 200"), out[:100]
            # One closed: a slot is free again.
            held.pop().close()
            time.sleep(0.3)
            out = raw(d.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            assert out.startswith(b"HTTP/1.1 200"), out[:100]
        finally:
            for s in held:
                s.close()


# ---------------------------------------------------------------- secrets


def test_zz_no_token_in_any_log_or_metrics(stack):
    """Last in this file: every token of the session (and the wrong ones the
    tests presented are random, never repeated) is absent from the daemons'
    logs and /metrics; hashes are fine, plaintext is not."""
    texts = {d.name: d.log_path.read_text(errors="replace") for d in stack.daemons.values()}
    for name, d in stack.daemons.items():
        texts[f"{name} /metrics"] = requests.get(d.url + "/metrics", timeout=5).text
    for where, text in texts.items():
        for tname, (tok, _) in TOKENS.items():
            assert tok not in text, f"token {tname} appears in {where}"
            assert tok[3:20] not in text, f"a piece of token {tname} appears in {where}"
