"""
The fault schedule: concurrent clients (with and without Idempotency-Key)
place orders while a randomised schedule of faults hits the stack, then a
checker goes over the complete history (history.check_history), the
strict reconcile (helpers.reconcile) over every order stored, and the logs
(helpers.logged_effects: every committed effect and every 202 has its line).

Faults, each once, in an order and with gaps and durations drawn from the
seed: SIGTERM of each daemon (restarted after a moment), SIGKILL of each
daemon (the same), the PostgreSQL backends of the test databases terminated,
one service's test database read-only for 8 to 10 s, longer than a record's
retries (ALTER DATABASE ... SET default_transaction_read_only, its backends
terminated so that sessions pick it up, then reset and terminated again), and the test broker's JVM
paused (SIGSTOP/SIGCONT) for longer than the daemons' message.timeout.ms
(lowered to MESSAGE_TIMEOUT_MS for this file). Only the test databases and
the broker the harness started are touched.

Environment: TEST_FAULT_SEED replays a schedule (the seed is printed and
named in every failure); TEST_FAULTS=kind,kind,... runs only those kinds
(sigterm, kill9, pg_terminate, read_only, broker_pause). Bounded: faults stop
being started after FAULT_BUDGET s, and every wait has a deadline.
"""

import os
import random
import signal
import time

import psycopg
import pytest

from conftest import DB_PREFIX, KAFKA_DIR, SERVICES, port_in_use
from helpers import dlt_offsets, logged_effects, reconcile
from history import OrderClients, check_history

FAULTS = ("sigterm", "kill9", "pg_terminate", "read_only", "broker_pause")
MESSAGE_TIMEOUT_MS = 5000
FAULT_BUDGET = 100  # s after the first fault; later faults are skipped
DBS = [DB_PREFIX + db for _, db in SERVICES.values()]


def broker_pid():
    """The pid of the test broker's JVM: node 1 of this tree's .run/test-kafka
    (its pid file, checked against the marker kafka.sh puts on the JVM's
    command line), or None when there is none (another TEST_BOOTSTRAP)."""
    node = KAFKA_DIR / "node-1"
    try:
        pid = int((node / "pid").read_text().strip())
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            args = f.read().split(b"\0")
    except (OSError, ValueError):
        return None
    return pid if f"-Dorders.kafka.node={node}".encode() in args else None


def terminate_backends(conn, dbs):
    return conn.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                        " WHERE datname = ANY(%s) AND pid <> pg_backend_pid()",
                        (dbs,)).fetchone()[0]


def reset_read_only(stack):
    with psycopg.connect(stack.dsn_raw("postgres"), autocommit=True) as c:
        for db in DBS:
            c.execute(f'ALTER DATABASE "{db}" RESET default_transaction_read_only')
        terminate_backends(c, DBS)


def schedule(rng, kinds):
    """[(kind, target, gap before it in s, duration in s)] in random order."""
    plan = []
    for name in SERVICES:
        plan += [(k, name) for k in ("sigterm", "kill9") if k in kinds]
    if "pg_terminate" in kinds:
        plan.append(("pg_terminate", "test databases"))
    if "read_only" in kinds:
        plan.append(("read_only", rng.choice([db for _, db in SERVICES.values()])))
    if "broker_pause" in kinds and broker_pid() is not None:
        plan.append(("broker_pause", "test broker"))
    rng.shuffle(plan)
    out = []
    for kind, target in plan:
        dur = {"sigterm": rng.uniform(0, 2), "kill9": rng.uniform(0, 2), "pg_terminate": 0,
               "read_only": rng.uniform(8, 10),
               "broker_pause": MESSAGE_TIMEOUT_MS / 1000 + rng.uniform(2, 4)}[kind]
        out.append((kind, target, round(rng.uniform(1, 4), 1), round(dur, 1)))
    return out


class Faults:
    """Runs faults; records the moments order-service was SIGKILLed and the
    problems seen (a daemon that did not stop cleanly on SIGTERM)."""

    def __init__(self, stack):
        self.stack = stack
        self.crashes = []
        self.problems = []
        self.log = []

    def restart(self, d):
        self.stack.wait_until(lambda: not port_in_use(d.port), 15, f"port {d.port} to be free")
        d.start()
        d.wait_ready(90)

    def sigterm(self, name, down):
        d = self.stack.daemons[name]
        rc, killed = d.terminate()
        if killed or rc != 0:
            self.problems.append(f"{name} on SIGTERM: exit {rc}, needed SIGKILL: {killed}")
        time.sleep(down)
        self.restart(d)

    def kill9(self, name, down):
        d = self.stack.daemons[name]
        if name == "order-service":
            self.crashes.append(time.monotonic())
        d.kill9()
        time.sleep(down)
        self.restart(d)

    def pg_terminate(self, _target, _dur):
        with psycopg.connect(self.stack.dsn_raw("postgres"), autocommit=True) as c:
            n = terminate_backends(c, DBS)
        self.log[-1] += f" ({n} backends)"

    def read_only(self, db, secs):
        name = DB_PREFIX + db
        with psycopg.connect(self.stack.dsn_raw("postgres"), autocommit=True) as c:
            c.execute(f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
            try:
                terminate_backends(c, [name])
                time.sleep(secs)
            finally:
                c.execute(f'ALTER DATABASE "{name}" RESET default_transaction_read_only')
                terminate_backends(c, [name])

    def broker_pause(self, _target, secs):
        pid = broker_pid()
        assert pid, "the test broker's JVM is gone"
        os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(secs)
        finally:
            os.kill(pid, signal.SIGCONT)

    def run(self, t0, kind, target, dur):
        self.log.append(f"{time.monotonic() - t0:6.1f}s {kind} {target} {dur}s")
        getattr(self, kind)(target, dur)
        self.log[-1] += f" -> done at {time.monotonic() - t0:.1f}s"

    def revive(self):
        """Starts whatever a failed fault left down."""
        for d in self.stack.daemons.values():
            if not d.running():
                self.problems.append(f"{d.name} was down after the faults")
                self.restart(d)


@pytest.fixture
def short_message_timeout(stack):
    """The daemons with message.timeout.ms lowered, so that a broker pause of
    a few seconds outlasts it; the usual settings again afterwards."""
    saved = {name: dict(d.env) for name, d in stack.daemons.items()}
    for d in stack.daemons.values():
        d.stop()
        d.env = dict(d.env, KAFKA_MESSAGE_TIMEOUT_MS=str(MESSAGE_TIMEOUT_MS))
    for d in stack.daemons.values():
        d.start()
    for d in stack.daemons.values():
        d.wait_ready(60)
    try:
        yield
    finally:
        pid = broker_pid()
        if pid:
            os.kill(pid, signal.SIGCONT)
        reset_read_only(stack)
        for name, d in stack.daemons.items():
            if d.running():
                d.terminate()
            d.env = saved[name]
            d.restart(60)


def test_fault_schedule(stack, short_message_timeout):
    seed = int(os.environ.get("TEST_FAULT_SEED") or random.SystemRandom().randrange(1, 10**9))
    kinds = [k for k in os.environ.get("TEST_FAULTS", ",".join(FAULTS)).split(",") if k]
    unknown = set(kinds) - set(FAULTS)
    assert not unknown, f"TEST_FAULTS: unknown kinds {unknown}; known: {FAULTS}"
    plan = schedule(random.Random(seed), kinds)
    header = f"TEST_FAULT_SEED={seed} TEST_FAULTS={','.join(kinds)}"
    print(header, "\nschedule (kind, target, gap s, duration s):", *plan, sep="\n  ")

    balances = {stack.uid("rich"): 1_000_000_000 for _ in range(3)}
    balances[stack.uid("poor")] = 3_000  # declines, refunds after rejected stock
    stocks = {stack.uid("s"): 1_000_000 for _ in range(2)}
    stocks[stack.uid("scarce")] = 25  # out of stock soon: releases, refunds
    for c, b in balances.items():
        stack.fund(c, b)
    for k, n in stocks.items():
        stack.set_stock(k, n)
    since = dlt_offsets(stack)
    faults = Faults(stack)
    clients = OrderClients(stack, balances, stocks, keyed=3, plain=6, seed=seed)
    clients.start()
    try:
        stack.wait_until(lambda: clients.answered() >= 20, 60, "orders flowing")
        t0 = time.monotonic()
        for kind, target, gap, dur in plan:
            if time.monotonic() - t0 > FAULT_BUDGET:
                faults.log.append(f"budget of {FAULT_BUDGET} s used up: {kind} {target} skipped")
                continue
            time.sleep(gap)
            faults.run(t0, kind, target, dur)
        n = clients.answered()
        stack.wait_until(lambda: clients.answered() >= n + 20, 90,
                         "orders flowing after the last fault")
    finally:
        still = clients.stop()
        faults.revive()
    story = (f"{header}\nfaults:\n  " + "\n  ".join(faults.log)
             + f"\nattempt outcomes: {clients.outcomes()}")
    print(story)
    assert not still, f"{story}\nclients still running: {still}"
    for d in stack.daemons.values():
        d.wait_ready(90)
    bad, stored, summary = check_history(clients, faults.crashes, t_ref=t0)
    story += f"\nhistory: {summary}"
    problems = faults.problems + bad
    # The reconcile runs also when the history is bad: both verdicts are shown.
    try:
        status = reconcile(stack, stored, balances, stocks, dlt_since=since, timeout=120)
    except AssertionError as e:
        problems.append(f"reconcile: {e}")
        status = {}
    # Every committed effect has its log line, though daemons were killed:
    # lines are held per batch and written before its COMMIT or its 202s.
    answered = [r.order_id for r in clients.requests if r.order_id and len(r.attempts) == 1]
    problems += logged_effects(stack, stored, answered)
    counts = {s: list(status.values()).count(s) for s in set(status.values())}
    print(f"{story}\nsettled: {counts}")
    assert not problems, (f"{story}\n{len(problems)} violations:\n  "
                          + "\n  ".join(problems[:30]))
    assert counts.get("CONFIRMED", 0) > 0, f"{story}\nnothing confirmed: {counts}"
