"""
Concurrent clients of POST /orders that record a complete history, and a
checker over it (in the spirit of Jepsen's checkers): used by the fault tests
(test_faults.py, the PostgreSQL outage of test_failures.py).

Every request carries a marker: its amountCents is unique in the run, so the
order a request stored can be found in the orders table whatever its client
saw. Keyed clients send an Idempotency-Key and retry it after any failure
(unknown outcome or 503) until they get a 202, as a careful client does;
plain clients send once and live with what they got. Assertions never run in
the client threads: unexpected answers are collected and the test checks them
in the main thread.
"""

import itertools
import random
import threading
import time

import requests

from conftest import bearer, uid
from helpers import sql

# What a client can see, besides an HTTP status (int).
REFUSED = "refused"  # no connection: the request was never sent
DROPPED = "dropped"  # connection closed without an answer: unknown outcome
TIMEOUT = "timeout"  # no answer in time: unknown outcome


class Request:
    """One logical request and every attempt at it: (start, end, outcome,
    detail), start/end from time.monotonic()."""

    def __init__(self, client, key, body):
        self.client, self.key, self.body = client, key, body
        self.attempts = []
        self.order_id = None  # from the 202, if one came

    def __repr__(self):
        seen = [a[2] for a in self.attempts]
        return (f"<request {self.client} key={self.key} amount={self.body['amountCents']} "
                f"attempts={seen} order={self.order_id}>")


class OrderClients:
    """`keyed` + `plain` threads posting orders (customer and SKU drawn from
    the given lists, quantity 1 or 2, a unique amount) one after the other
    until stop(). Several requests are always in flight."""

    def __init__(self, stack, customers, skus, keyed=2, plain=2, seed=0, pace=0.02,
                 timeout=20, resolve_for=90):
        self.stack = stack
        self.customers, self.skus = list(customers), list(skus)
        self.keyed, self.plain = keyed, plain
        self.pace, self.timeout, self.resolve_for = pace, timeout, resolve_for
        self.requests, self.unexpected = [], []
        self._rng = random.Random(seed)
        self._seq = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = []
        self.url = stack.orders.base + "/orders"

    def start(self):
        self.t_start = time.monotonic()
        for i in range(self.keyed + self.plain):
            t = threading.Thread(target=self._run, args=(f"c{i}", i < self.keyed), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self):
        """Stops the clients; keyed ones first resolve the request they are
        on (up to resolve_for s). Returns the names of threads still running."""
        self._stop.set()
        deadline = time.monotonic() + self.resolve_for + self.timeout + 10
        for t in self._threads:
            t.join(max(0.0, deadline - time.monotonic()))
        return [t.name for t in self._threads if t.is_alive()]

    def answered(self):
        with self._lock:
            return sum(1 for r in self.requests if r.order_id)

    def outcomes(self):
        """{outcome: attempts} over every attempt so far."""
        with self._lock:
            out = {}
            for r in self.requests:
                for a in r.attempts:
                    out[a[2]] = out.get(a[2], 0) + 1
            return out

    def _body(self):
        with self._lock:
            return {"customerId": self._rng.choice(self.customers),
                    "sku": self._rng.choice(self.skus), "quantity": self._rng.randint(1, 2),
                    "amountCents": 100 + next(self._seq)}

    def _post(self, req):
        headers = {"Content-Type": "application/json", **bearer("orders")}
        if req.key:
            headers["Idempotency-Key"] = req.key
        t0 = time.monotonic()
        oid = None
        try:
            r = requests.post(self.url, json=req.body, headers=headers, timeout=self.timeout)
            outcome, detail = r.status_code, r.text[:300]
            if r.status_code == 202:
                oid = r.json().get("orderId")
        except requests.ConnectTimeout as e:
            outcome, detail = TIMEOUT, repr(e)
        except requests.ConnectionError as e:
            refused = "refused" in str(e).lower() or "NewConnectionError" in repr(e)
            outcome, detail = (REFUSED if refused else DROPPED), repr(e)[:300]
        except requests.Timeout as e:
            outcome, detail = TIMEOUT, repr(e)
        except requests.RequestException as e:
            outcome, detail = DROPPED, repr(e)[:300]
        req.attempts.append((t0, time.monotonic(), outcome, detail))
        return oid

    def _send(self, req):
        deadline = None
        while True:
            oid = self._post(req)
            outcome = req.attempts[-1][2]
            if oid:
                req.order_id = oid
                return
            if isinstance(outcome, int) and outcome != 503:
                with self._lock:
                    self.unexpected.append((req, req.attempts[-1]))
                return
            if not req.key:
                return
            if self._stop.is_set():
                deadline = deadline or time.monotonic() + self.resolve_for
                if time.monotonic() > deadline:
                    return
            time.sleep(0.2)

    def _run(self, name, keyed):
        while not self._stop.is_set():
            req = Request(name, uid("k") if keyed else None, self._body())
            with self._lock:
                self.requests.append(req)
            self._send(req)
            time.sleep(self.pace)


def check_history(clients, crashes=(), t_ref=None):
    """Checks the complete history of `clients` against the orders table.
    `crashes` are the moments (time.monotonic()) order-service was killed
    with SIGKILL: only a request in flight at such a moment may lose the
    answer of an order it stored. Returns (violations, stored order ids,
    summary). The properties:

    - every 202 names a stored order, with the request's body;
    - every stored order was asked for by exactly one request (none is
      stored twice: an Idempotency-Key retry finds the first);
    - every stored order was answered 202, unless its client saw the
      connection drop or time out while order-service was killed (unknown
      outcome); a 503 or a refused connection never stored anything;
    - every keyed request ended with a 202 (its retries resolved it); a plain
      one with an unknown outcome is resolved by its marker, either way;
    - no answer outside 202/503 (collected from the threads; a database
      that is down or read-only is the server's fault: 503, and nothing
      stored).
    """
    stack = clients.stack
    reqs = list(clients.requests)
    by_amount = {r.body["amountCents"]: r for r in reqs}
    rows = sql(stack, "orders", "SELECT order_id, customer_id, sku, quantity, amount_cents"
                " FROM orders WHERE customer_id = ANY(%s)", (clients.customers,))
    bad, odd = [], {}
    for r, a in clients.unexpected:  # one line per kind of answer, with an example
        odd.setdefault((a[2], a[3]), []).append((r, a))
    for (code, text), seen in odd.items():
        r, a = seen[0]
        bad.append(f"{len(seen)} unexpected answers {code} {text!r}, first to {r} at "
                   f"{a[0] - (clients.t_start if t_ref is None else t_ref):.1f}s")
    cut_short = {id(r) for r, _ in clients.unexpected}
    stored = {}
    for oid, cust, sku, qty, amount in rows:
        r = by_amount.get(amount)
        if r is None:
            bad.append(f"order {oid} (amount {amount}) stored, but no client asked for it")
            continue
        body = r.body
        if (cust, sku, qty) != (body["customerId"], body["sku"], body["quantity"]):
            bad.append(f"order {oid} stored as {(cust, sku, qty, amount)} for {r}")
        if amount in stored:
            bad.append(f"{r} stored twice: {stored[amount]} and {oid}")
        stored[amount] = oid

    t_ref = clients.t_start if t_ref is None else t_ref

    def when(a):
        return f"{a[0] - t_ref:.1f}s..{a[1] - t_ref:.1f}s"

    def crashed_during(a):
        return any(a[0] - 0.5 <= k <= a[1] + 0.5 for k in crashes)

    summary = {"requests": len(reqs), "202": 0, "unknown, stored": 0, "unknown, not stored": 0,
               "refused or 5xx": 0, "keyed retries": 0}
    for r in reqs:
        oid = stored.get(r.body["amountCents"])
        summary["keyed retries"] += max(0, len(r.attempts) - 1) if r.key else 0
        if r.order_id:
            summary["202"] += 1
            if oid != r.order_id:
                bad.append(f"{r}: answered 202 {r.order_id}, stored: {oid}")
            continue
        if r.key and id(r) not in cut_short:
            bad.append(f"{r}: keyed request never answered 202 (stored: {oid})")
            continue
        last = r.attempts[-1]
        if last[2] in (DROPPED, TIMEOUT):
            summary["unknown, stored" if oid else "unknown, not stored"] += 1
            if oid and not crashed_during(last):
                bad.append(f"{r}: order {oid} stored, but its answer was lost ({last[2]} at "
                           f"{when(last)}: {last[3]}) although order-service was not killed")
        else:
            summary["refused or 5xx"] += 1
            if oid:
                bad.append(f"{r}: order {oid} stored although the answer was {last[2]} at "
                           f"{when(last)}")
    return bad, list(stored.values()), summary
