"""
System-test stack: the real PostgreSQL, a real Kafka broker (KRaft, from the
Maven jars) and the three daemons started from their real binaries.

One stack per pytest session (fixture `stack`). Every run starts clean: the
test databases are dropped and recreated, the test broker's folder is wiped.
Teardown always stops the daemons (SIGTERM, SIGKILL after 10 s) and the
broker, also when a test failed or the run was interrupted; it then reports a
daemon that did not exit 0 on SIGTERM.

Tests reach everything through the `stack` object: HTTP clients for the three
services, SQL helpers, a raw Kafka producer/consumer, `wait_until`, `uid`.

The HTTP API runs with authentication on, as in production: the harness makes
random bearer tokens for the session (TOKENS below), writes their SHA-256
lines to a token file (TOKENS_FILE, mode 0600) given to every daemon as
HTTP_TOKENS_FILE, and the clients send `Authorization: Bearer` by default: the
ORDERS token (orders:write, orders:read) to order-service, the ADMIN token
(every scope) to the other two. TOKENS_ENV holds ORDERS_TOKEN= and
ADMIN_TOKEN= like the run command's .run/tokens.env.

Environment:
  ORDERS_BUILD_DIR  build tree with the binaries (default <root>/build/dev)
  TEST_BOOTSTRAP    use this Kafka instead of starting one (host:port,...)
  TEST_KAFKA_VERSION  Kafka version of the test broker (default: kafka.sh's,
                    i.e. $KAFKA_VERSION or 3.9.1; the kafka4 entries set 4.1.1)
  TEST_KAFKA_NODES  nodes of the test cluster (default 1; 3 for broker faults:
                    then topics get replication factor 3, min.insync.replicas 2)
  TEST_PORT_OFFSET  added to every port the tests listen on (daemons, broker),
                    and part of the test databases' prefix, so that two test
                    runs (two work trees) can share one host (default 0).
                    kafka.sh takes ports P, P+100 and P+200 and the secure
                    brokers start at 19392 and 19692: offsets of parallel runs
                    must be 300 or more apart (e.g. 0, 500, 1000), or under 100
                    apart with none of their ports overlapping (0 and 50).
                    The test Zipkin (fixture `zipkin`) listens on 19411 + offset.
"""

import atexit
import base64
import datetime
import hashlib
import json
import os
import re
import secrets
import shlex
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

ROOT = Path(__file__).resolve().parents[2]
RUN_DIR = ROOT / ".run"
LOG_DIR = RUN_DIR / "test-logs"
KAFKA_DIR = RUN_DIR / "test-kafka"
PORT_OFFSET = int(os.environ.get("TEST_PORT_OFFSET", "0"))
KAFKA_PORT = 19092 + PORT_OFFSET
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
TOPICS_SH = ROOT / "deploy" / "kafka" / "topics.sh"
PG_SH = ROOT / "deploy" / "postgres" / "pg.sh"
ZIPKIN_SH = ROOT / "deploy" / "zipkin" / "zipkin.sh"
ZIPKIN_PORT = 19411 + PORT_OFFSET
ZIPKIN_DIR = RUN_DIR / f"test-zipkin{PORT_OFFSET}"
DB_PREFIX = f"test{PORT_OFFSET}_" if PORT_OFFSET else "test_"
PARTITIONS = 6
KAFKA_NODES = int(os.environ.get("TEST_KAFKA_NODES", "1"))
KAFKA_VERSION = os.environ.get("TEST_KAFKA_VERSION") or None

# name -> (HTTP port, database suffix)
SERVICES = {
    "order-service": (18080 + PORT_OFFSET, "orders"),
    "payment-service": (18081 + PORT_OFFSET, "payments"),
    "inventory-service": (18082 + PORT_OFFSET, "inventory"),
}
TOPICS = ["orders.created", "payments.completed", "inventory.reserved"]
TYPE_ID_PREFIX = "com.devcraftly.orders.events."

# Bearer tokens of this test session: name -> (token, scopes). "orders" and
# "admin" are the run command's ORDERS_TOKEN and ADMIN_TOKEN; one token more
# per scope, for tests of what each scope allows.
SCOPES = ["orders:write", "orders:read", "payments:read", "payments:admin", "inventory:read",
          "inventory:admin", "metrics:read"]
TOKENS_DIR = RUN_DIR / f"test-tokens{PORT_OFFSET}"
TOKENS_FILE = TOKENS_DIR / "tokens"
TOKENS_ENV = TOKENS_DIR / "tokens.env"


def new_token():
    """A token shaped like orderctl's: "ot_" + 32 random bytes, base64url."""
    return "ot_" + base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")


def token_hash(token):
    return hashlib.sha256(token.encode()).hexdigest()


def token_line(name, token, scopes):
    return f"{token_hash(token)} {name} {','.join(scopes)}\n"


TOKENS = {"orders": (new_token(), ["orders:write", "orders:read"]),
          "admin": (new_token(), list(SCOPES))}
for _s in SCOPES:
    TOKENS["only-" + _s.replace(":", "-")] = (new_token(), [_s])


def bearer(name="admin"):
    """The Authorization header of one of this session's tokens."""
    return {"Authorization": f"Bearer {TOKENS[name][0]}"}


def scope_token(scope):
    """The token that has exactly this one scope."""
    return TOKENS["only-" + scope.replace(":", "-")][0]


def write_tokens_file(path=TOKENS_FILE, tokens=None):
    """Writes the token file (hashes only), mode 0600; returns its path."""
    tokens = TOKENS if tokens is None else tokens
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = "# test session tokens: <sha256> <name> <scopes>\n" + "".join(
        token_line(name, tok, scopes) for name, (tok, scopes) in tokens.items())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)
    return path


STOP_GRACE = 10.0  # seconds between SIGTERM and SIGKILL
READY_TIMEOUT = 30.0
SCRIPT_TIMEOUT = 300.0

# The running stack, for the failure hook and wait_until's log tails.
_STACK = None


def make_pki(d, hosts=("127.0.0.1",)):
    """A throw-away CA (d/ca.pem) and a server certificate d/server.pem with
    key d/server.key (0600) for the IP addresses `hosts`, signed by it."""
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True, timeout=60)
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=orders test CA")
    openssl("req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj",
            f"/CN={hosts[0]}")
    (Path(d) / "san.ext").write_text("subjectAltName=" + ",".join(f"IP:{h}" for h in hosts)
                                     + "\nextendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    os.chmod(Path(d) / "server.key", 0o600)
    return Path(d)


def build_dir():
    return Path(os.environ.get("ORDERS_BUILD_DIR", str(ROOT / "build" / "dev")))


def uid(prefix="t"):
    """A unique id-like string (printable ASCII, no spaces, well under 64 bytes)."""
    return f"{prefix}-{uuid.uuid4().hex}"


def parse_ts(s):
    """Parses an RFC 3339 timestamp such as 2026-11-26T22:50:01.123456Z."""
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    return datetime.datetime.fromisoformat(s)


def run_script(args, env=None, timeout=SCRIPT_TIMEOUT, check=True):
    """Runs a deploy script; returns its stdout. Raises with both streams on failure."""
    args = [str(a) for a in args]
    try:
        cp = subprocess.run(args, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise RuntimeError(f"{shlex.join(args)} did not finish within {timeout} s\n"
                           f"stdout:\n{e.stdout}\nstderr:\n{e.stderr}") from None
    if check and cp.returncode != 0:
        raise RuntimeError(f"{shlex.join(args)} exited {cp.returncode}\n"
                           f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}")
    return cp.stdout


def parse_assignments(text):
    """KEY=VALUE lines (optionally 'export KEY=VALUE', shell-quoted) -> dict."""
    out = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("export "):
            line = line[len("export "):].strip()
        m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)=(.*)$", line)
        if not m:
            continue
        try:
            words = shlex.split(m.group(2))
        except ValueError:
            words = [m.group(2)]
        out[m.group(1)] = " ".join(words)
    return out


def kafka_sh_env(version=KAFKA_VERSION):
    """The environment for deploy/kafka/kafka.sh: ours, with KAFKA_VERSION set
    when a version was asked for (and then the jars of that version, not a
    KAFKA_LIBS_DIR meant for another)."""
    env = dict(os.environ)
    if version:
        env["KAFKA_VERSION"] = version
        env.pop("KAFKA_LIBS_DIR", None)
    return env


def check_broker_version(kafka_dir, out, version=KAFKA_VERSION):
    """After kafka.sh start: when a version was asked for, the broker that runs
    must be that version, as kafka.sh recorded it and as the broker itself
    logs it at start ("Kafka version: 4.1.1")."""
    if not version:
        return
    recorded = parse_assignments(Path(kafka_dir, "cluster.env").read_text()).get("VERSION")
    assert recorded == version, f"kafka.sh recorded Kafka {recorded}, expected {version}\n{out}"
    log = Path(kafka_dir, "node-1", "server.log")
    deadline = time.monotonic() + 30
    while f"Kafka version: {version}" not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{log} never says 'Kafka version: {version}'"
        time.sleep(0.2)


def pytest_report_header(config):
    return f"kafka: {KAFKA_VERSION or os.environ.get('KAFKA_VERSION') or 'default (kafka.sh)'}"


def port_in_use(port):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _daemons():
    return list(_STACK.daemons.values()) if _STACK is not None else []


def log_tails(n=40):
    parts = []
    for d in _daemons():
        parts.append(f"----- {d.name} ({d.log_path}), last {n} lines -----\n{d.log_tail(n)}")
    return "\n".join(parts)


def exit_description(rc):
    if rc is None:
        return "still running"
    if rc < 0:
        return f"killed by signal {-rc}"
    if rc == 0:
        return "exit code 0 (a clean stop: SIGTERM/SIGINT from outside the harness?)"
    return f"exit code {rc}"


def _check_daemons_alive():
    for d in _daemons():
        if d.crashed():
            why = exit_description(d.proc.returncode)
            raise AssertionError(f"{d.name} died unexpectedly: {why}\n{log_tails()}")


def wait_until(pred, timeout, what, interval=0.1):
    """Polls pred() until it returns something truthy, and returns that.

    pred may return a tuple (ok, seen) to report `seen` on timeout instead of
    the raw value. Transient connection errors count as "not yet". On timeout
    raises AssertionError naming what was expected, what was last seen and the
    tail of every daemon log. A daemon that died on its own fails at once.
    """
    deadline = time.monotonic() + timeout
    seen, err = None, None
    while True:
        _check_daemons_alive()
        try:
            v = pred()
            err = None
            if isinstance(v, tuple) and len(v) == 2:
                ok, seen = v
            else:
                ok, seen = v, v
            if ok:
                return v
        except (requests.RequestException, psycopg.OperationalError, ConnectionError) as e:
            err = e
        left = deadline - time.monotonic()
        if left <= 0:
            detail = f"last saw: {seen!r}" if err is None else f"last error: {err!r}"
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; "
                                 f"{detail}\n{log_tails()}")
        time.sleep(min(interval, left))


# ---------------------------------------------------------------- daemons


class Daemon:
    """One daemon process: started from its binary, stderr to its log file."""

    def __init__(self, name, binary, port, env, log_path):
        self.name = name
        self.binary = Path(binary)
        self.port = port
        self.env = env
        self.log_path = Path(log_path)
        self.pid_path = self.log_path.with_suffix(".pid")
        self.proc = None
        self.expect_down = True  # False while it should be running
        self._log_truncated = False
        self.ca = None  # CA file when the daemon serves HTTPS (HTTP_TLS_CERT)

    @property
    def url(self):
        return f"{'https' if self.ca else 'http'}://127.0.0.1:{self.port}"

    def http_get(self, path, **kw):
        """GET path from the daemon (over HTTPS, verified, when self.ca)."""
        kw.setdefault("timeout", 5)
        kw.setdefault("verify", self.ca or True)
        return requests.get(self.url + path, **kw)

    @property
    def pid(self):
        return self.proc.pid if self.proc else None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def crashed(self):
        return not self.expect_down and self.proc is not None and self.proc.poll() is not None

    def start(self):
        assert not self.running(), f"{self.name} is already running"
        if not self.binary.is_file():
            raise FileNotFoundError(f"{self.binary} not found (build, or set ORDERS_BUILD_DIR)")
        if port_in_use(self.port):
            raise RuntimeError(f"port {self.port} for {self.name} is already in use")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        mode = "a" if self._log_truncated else "w"
        self._log_truncated = True
        with open(self.log_path, mode) as log:
            now = time.strftime("%H:%M:%S")
            log.write(f"=== test harness: starting {self.binary} at {now} ===\n")
            log.flush()
            # Own session: a Ctrl-C in the terminal reaches pytest, which then
            # stops the daemons in order, rather than killing them under it.
            self.proc = subprocess.Popen([str(self.binary)], env=self.env, cwd=ROOT,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        self.pid_path.write_text(f"{self.proc.pid}\n")
        self.expect_down = False
        return self

    def wait_ready(self, timeout=READY_TIMEOUT):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            if self.proc is None or self.proc.poll() is not None:
                rc = self.proc.returncode if self.proc else None
                raise AssertionError(f"{self.name} exited with code {rc} before it was ready\n"
                                     f"{self.log_tail(60)}")
            try:
                r = self.http_get("/readyz", timeout=2)
                last = f"{r.status_code} {r.text[:200]}"
                if r.status_code == 200:
                    return self
            except requests.RequestException as e:
                last = repr(e)
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.name} not ready within {timeout} s; last /readyz: "
                                     f"{last}\n{self.log_tail(60)}")
            time.sleep(0.05)

    def _signal_wait(self, sig, timeout):
        """Sends sig and waits up to timeout s; returns the exit code or None."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def terminate(self):
        """SIGTERM, then SIGKILL after STOP_GRACE s. Never raises; returns
        (exit code, whether SIGKILL was needed), or (None, False) if not started."""
        if self.proc is None:
            return None, False
        self.expect_down = True
        rc = self._signal_wait(signal.SIGTERM, STOP_GRACE)
        killed = False
        if rc is None:
            killed = True
            rc = self._signal_wait(signal.SIGKILL, 10)
        self.pid_path.unlink(missing_ok=True)
        return rc, killed

    def stop(self):
        """Graceful stop: the daemon must exit 0 on SIGTERM within the grace time."""
        assert self.running(), f"{self.name} is not running"
        rc, killed = self.terminate()
        assert not killed, (f"{self.name} did not exit within {STOP_GRACE} s of SIGTERM\n"
                            f"{self.log_tail()}")
        assert rc == 0, f"{self.name} exited {rc} on SIGTERM (expected 0)\n{self.log_tail()}"

    def kill9(self):
        assert self.running(), f"{self.name} is not running"
        self.expect_down = True
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.pid_path.unlink(missing_ok=True)

    def restart(self, timeout=READY_TIMEOUT):
        if self.running():
            self.stop()
        # The kernel frees a dead process's listening socket at once; wait for it anyway.
        wait_until(lambda: not port_in_use(self.port), 10, f"port {self.port} to be free")
        self.start()
        return self.wait_ready(timeout)

    def log_tail(self, n=40):
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                size = f.tell()
                f.seek(max(0, size - 256 * 1024))
                lines = f.read().decode("utf-8", "replace").splitlines()
        except FileNotFoundError:
            return "(no log)"
        return "\n".join(lines[-n:])

    def kill_leftover(self):
        """Kills a daemon left behind by an earlier run that was itself killed
        (recorded in our pid file and still running our binary)."""
        try:
            pid = int(self.pid_path.read_text().strip())
        except (FileNotFoundError, ValueError):
            return
        try:
            argv0 = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode()
        except OSError:
            argv0 = ""
        if argv0 == str(self.binary):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
        self.pid_path.unlink(missing_ok=True)


# ---------------------------------------------------------------- HTTP clients


class Api:
    """A small client for one service; one requests.Session per thread, each
    sending the Authorization header of token `token` (a TOKENS name) unless
    a request brings its own headers["Authorization"] (None: send none)."""

    def __init__(self, base, token="admin", ca=None):
        self.base = base
        self.token = token
        self.ca = ca  # CA file to verify an https base with
        self._local = threading.local()

    @property
    def session(self):
        s = getattr(self._local, "session", None)
        if s is None:
            s = self._local.session = requests.Session()
            s.headers.update(bearer(self.token))
        return s

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 10)
        if self.ca:  # per request: REQUESTS_CA_BUNDLE would beat Session.verify
            kw.setdefault("verify", self.ca)
        return self.session.request(method, self.base + path, **kw)

    def get(self, path, **kw):
        return self.request("GET", path, **kw)

    def post(self, path, **kw):
        return self.request("POST", path, **kw)

    def put(self, path, **kw):
        return self.request("PUT", path, **kw)

    def delete(self, path, **kw):
        return self.request("DELETE", path, **kw)

    def _json_or_none(self, r, what):
        if r.status_code == 404:
            return None
        assert r.status_code == 200, f"GET {what}: expected 200/404, got {r.status_code} {r.text}"
        return r.json()


class OrdersApi(Api):
    def create(self, customer_id, sku, quantity, amount_cents, **extra):
        body = {"customerId": customer_id, "sku": sku, "quantity": quantity,
                "amountCents": amount_cents, **extra}
        return self.post("/orders", json=body)

    def create_ok(self, customer_id, sku, quantity, amount_cents):
        r = self.create(customer_id, sku, quantity, amount_cents)
        assert r.status_code == 202, f"POST /orders: expected 202, got {r.status_code} {r.text}"
        return r.json()["orderId"]

    def order(self, order_id):
        return self._json_or_none(self.get(f"/orders/{order_id}"), f"/orders/{order_id}")

    def wait_settled(self, order_id, timeout=30, need=("payment",)):
        """Waits until the order is CONFIRMED or REJECTED and the named outcome
        objects ("payment", "inventory") are present; returns the order."""
        def settled():
            o = self.order(order_id)
            ok = (o is not None and o["status"] in ("CONFIRMED", "REJECTED")
                  and all(o.get(k) is not None for k in need))
            return ok, o
        return wait_until(settled, timeout, f"order {order_id} settled with {need}")[1]


class PaymentsApi(Api):
    def set_balance(self, customer_id, cents):
        r = self.put(f"/accounts/{customer_id}", json={"balanceCents": cents})
        assert r.status_code == 200, f"PUT /accounts: expected 200, got {r.status_code} {r.text}"
        body = r.json()
        assert body == {"customerId": customer_id, "balanceCents": cents}, body
        return body

    def balance(self, customer_id):
        a = self._json_or_none(self.get(f"/accounts/{customer_id}"), f"/accounts/{customer_id}")
        return None if a is None else a["balanceCents"]

    def payment(self, order_id):
        return self._json_or_none(self.get(f"/payments/{order_id}"), f"/payments/{order_id}")


class InventoryApi(Api):
    def set_stock(self, sku, available):
        r = self.put(f"/stock/{sku}", json={"available": available})
        assert r.status_code == 200, f"PUT /stock: expected 200, got {r.status_code} {r.text}"
        body = r.json()
        assert body == {"sku": sku, "available": available}, body
        return body

    def stock(self, sku):
        s = self._json_or_none(self.get(f"/stock/{sku}"), f"/stock/{sku}")
        return None if s is None else s["available"]

    def reservation(self, order_id):
        return self._json_or_none(self.get(f"/reservations/{order_id}"),
                                  f"/reservations/{order_id}")


# ---------------------------------------------------------------- the stack


class Stack:
    def __init__(self):
        self.root = ROOT
        self.daemons = {}
        self.pg_env = {}
        self.bootstrap = None
        self.own_kafka = False
        self._kafka_started = False
        self._conns = {}
        self._conn_lock = threading.Lock()
        self._torn_down = False
        self.orders = OrdersApi(f"http://127.0.0.1:{SERVICES['order-service'][0]}", "orders")
        self.payments = PaymentsApi(f"http://127.0.0.1:{SERVICES['payment-service'][0]}")
        self.inventory = InventoryApi(f"http://127.0.0.1:{SERVICES['inventory-service'][0]}")

    uid = staticmethod(uid)
    bearer = staticmethod(bearer)
    scope_token = staticmethod(scope_token)
    tokens = TOKENS
    tokens_file = TOKENS_FILE
    wait_until = staticmethod(wait_until)
    parse_ts = staticmethod(parse_ts)
    log_tails = staticmethod(log_tails)

    # -- set-up

    def setup(self):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        for name, (port, db) in SERVICES.items():
            binary = build_dir() / name / name
            self.daemons[name] = Daemon(name, binary, port, None, LOG_DIR / f"{name}.log")
        for d in self.daemons.values():
            d.kill_leftover()
        for d in self.daemons.values():
            if not d.binary.is_file():
                raise FileNotFoundError(f"{d.binary} not found (build, or set ORDERS_BUILD_DIR)")
        self._setup_postgres()
        self._setup_kafka()
        self._setup_tokens()
        env = self._daemon_env()
        for name, d in self.daemons.items():
            d.env = dict(env, HTTP_PORT=str(d.port),
                         DATABASE_URL=self.daemon_dsn(SERVICES[name][1]))
        for d in self.daemons.values():
            d.start()
        for d in self.daemons.values():
            d.wait_ready()

    def _setup_postgres(self):
        out = run_script([PG_SH, "ensure"])
        self.pg_env = {k: v for k, v in parse_assignments(out).items() if k.startswith("PG")}
        if "PGHOST" not in self.pg_env:
            raise RuntimeError(f"pg.sh ensure printed no PGHOST=...:\n{out}")
        dbs = [DB_PREFIX + db for _, db in SERVICES.values()]
        with psycopg.connect(self.dsn_raw("postgres"), autocommit=True) as conn:
            for db in dbs:
                conn.execute(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
        run_script([PG_SH, "create-dbs", "--prefix", DB_PREFIX]
                   + [db for _, db in SERVICES.values()], env=dict(os.environ, **self.pg_env))
        for db in dbs:  # prove that they exist and are reachable
            psycopg.connect(self.dsn_raw(db)).close()

    def _setup_kafka(self):
        given = os.environ.get("TEST_BOOTSTRAP")
        if given:
            self.bootstrap = given
        else:
            self.own_kafka = True
            # Fresh broker state every run: old topics and group offsets would
            # otherwise leak into this run.
            run_script([KAFKA_SH, "clean", "--dir", KAFKA_DIR], env=kafka_sh_env(), check=False)
            self._kafka_started = True  # from here on, teardown must stop it
            out = run_script([KAFKA_SH, "start", "--nodes", KAFKA_NODES, "--dir", KAFKA_DIR,
                              "--port", KAFKA_PORT], env=kafka_sh_env())
            check_broker_version(KAFKA_DIR, out)
            self.bootstrap = parse_assignments(out).get("bootstrap")
            if not self.bootstrap:
                raise RuntimeError(f"kafka.sh start printed no bootstrap=...:\n{out}")
        run_script([TOPICS_SH, "--bootstrap", self.bootstrap,
                    "--partitions", PARTITIONS, "--replication-factor", min(3, KAFKA_NODES),
                    "--min-insync", 2 if KAFKA_NODES >= 3 else 1])

        def topics_visible():
            p = Producer({"bootstrap.servers": self.bootstrap})
            md = p.list_topics(timeout=5)
            have = {t for t in md.topics if md.topics[t].error is None}
            want = set(TOPICS) | {t + ".DLT" for t in TOPICS}
            return want <= have, sorted(have)

        wait_until(topics_visible, 60, f"topics {TOPICS} (+ .DLT) on {self.bootstrap}",
                   interval=0.5)

    def _setup_tokens(self):
        write_tokens_file()
        fd = os.open(TOKENS_ENV, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(f"ORDERS_TOKEN={TOKENS['orders'][0]}\nADMIN_TOKEN={TOKENS['admin'][0]}\n")

    def _daemon_env(self):
        drop = ("KAFKA_", "HTTP_", "DATABASE_URL", "CONSUMER_GROUP", "LOG_LEVEL",
                "METRICS_TOKEN_SCOPE")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(self.pg_env)
        env.update(KAFKA_BOOTSTRAP_SERVERS=self.bootstrap, LOG_LEVEL="info",
                   HTTP_ADDR="127.0.0.1", HTTP_TOKENS_FILE=str(TOKENS_FILE))
        return env

    def set_daemon_env(self, **overrides):
        """Restarts the three daemons with these environment variables set
        (a value of None removes one), and waits until all are ready again.
        The change lasts until the next call: callers restore what they set."""
        for d in self.daemons.values():
            if d.running():
                d.stop()
        for d in self.daemons.values():
            for k, v in overrides.items():
                if v is None:
                    d.env.pop(k, None)
                else:
                    d.env[k] = str(v)
        for d in self.daemons.values():
            wait_until(lambda: not port_in_use(d.port), 10, f"port {d.port} to be free")
            d.start()
        for d in self.daemons.values():
            d.wait_ready()

    # -- teardown

    def teardown(self):
        """Stops everything; never raises. Returns a list of problems to report."""
        if self._torn_down:
            return []
        self._torn_down = True
        problems = []
        for c in list(self._conns.values()):
            try:
                c.close()
            except Exception:
                pass
        self._conns.clear()
        # SIGTERM all at once, then collect (each gets its grace time).
        running = [d for d in self.daemons.values() if d.running()]
        for d in running:
            d.expect_down = True
            try:
                d.proc.send_signal(signal.SIGTERM)
            except ProcessLookupError:
                pass
        for d in self.daemons.values():
            rc, killed = d.terminate()
            if killed:
                problems.append(f"{d.name} ignored SIGTERM for {STOP_GRACE} s and was killed")
            elif d in running and rc != 0:
                problems.append(f"{d.name} exited {rc} on SIGTERM (expected 0)")
        if self._kafka_started:
            try:
                run_script([KAFKA_SH, "stop", "--dir", KAFKA_DIR], env=kafka_sh_env(), timeout=120)
            except Exception as e:
                problems.append(f"kafka.sh stop failed: {e}")
        return problems

    # -- PostgreSQL

    def dsn_raw(self, dbname):
        kw = {"host": self.pg_env.get("PGHOST"), "port": self.pg_env.get("PGPORT"),
              "user": self.pg_env.get("PGUSER"), "password": self.pg_env.get("PGPASSWORD"),
              "dbname": dbname}
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in kw.items() if v})

    def dsn(self, db):
        """libpq conninfo of a test database, db in orders|payments|inventory,
        as the harness's (super)user: tests read and arrange data with it."""
        return self.dsn_raw(DB_PREFIX + db)

    def daemon_dsn(self, db):
        """The conninfo a daemon uses: its database's own role (pg.sh
        create-dbs makes it; it owns that database only, no superuser)."""
        kw = {"host": self.pg_env.get("PGHOST"), "port": self.pg_env.get("PGPORT"),
              "user": DB_PREFIX + db, "dbname": DB_PREFIX + db}
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in kw.items() if v})

    def sql(self, db, query, params=None):
        """Runs one statement (autocommit) on a test database; returns all rows."""
        with self._conn_lock:
            conn = self._conns.get(db)
            if conn is None or conn.closed:
                conn = self._conns[db] = psycopg.connect(self.dsn(db), autocommit=True)
            try:
                cur = conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                conn.close()
                raise

    def sql_one(self, db, query, params=None):
        rows = self.sql(db, query, params)
        return rows[0][0] if rows else None

    # -- Kafka

    @staticmethod
    def event_headers(event_type, event_id=None):
        return [
            ("event-id", (event_id or str(uuid.uuid4())).encode()),
            ("event-type", event_type.encode()),
            ("event-version", b"1"),
            ("traceparent", f"00-{uuid.uuid4().hex}-{uuid.uuid4().hex[:16]}-01".encode()),
            ("__TypeId__", (TYPE_ID_PREFIX + event_type).encode()),
        ]

    def produce(self, topic, key, value, headers):
        """Produces one record and waits for its delivery report."""
        p = Producer({"bootstrap.servers": self.bootstrap, "acks": "all"})
        result = {}

        def on_delivery(err, msg):
            result["err"] = err
            result["msg"] = msg

        p.produce(topic, key=key, value=value, headers=headers, on_delivery=on_delivery)
        left = p.flush(15)
        assert left == 0 and "err" in result, f"record to {topic} not delivered within 15 s"
        assert result["err"] is None, f"delivery to {topic} failed: {result['err']}"
        return result["msg"]

    def produce_order_created(self, order_id, customer_id, sku, quantity, amount_cents,
                              value=None, event_id=None):
        """Produces an OrderCreated straight onto orders.created, headed as the
        contract says. Returns the value bytes (pass them back as `value` to
        produce the very same record again)."""
        if value is None:
            value = json.dumps({"orderId": order_id, "customerId": customer_id, "sku": sku,
                                "quantity": quantity, "amountCents": amount_cents},
                               separators=(",", ":")).encode()
        self.produce("orders.created", order_id.encode(), value,
                     self.event_headers("OrderCreated", event_id))
        return value

    def collect_records(self, topics, key, timeout=30, grace=5.0):
        """Reads `topics` from the beginning with a fresh consumer group and
        returns {topic: [message, ...]} of the records with this key.

        Waits (up to timeout) until every topic has at least one such record,
        then keeps consuming `grace` seconds more and until it has reached the
        end of every partition, so that a late duplicate would be seen too.
        """
        key = key.encode() if isinstance(key, str) else key
        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": uid("test-reader"),
                      "auto.offset.reset": "earliest", "enable.auto.commit": False,
                      "enable.partition.eof": False})
        try:
            parts = []
            for t in topics:
                md = c.list_topics(t, timeout=10)
                parts += [TopicPartition(t, p, OFFSET_BEGINNING) for p in md.topics[t].partitions]
            c.assign(parts)
            found = {t: [] for t in topics}
            deadline = time.monotonic() + timeout
            stop_at = None
            while True:
                now = time.monotonic()
                if stop_at is None and all(found.values()):
                    stop_at = now + grace
                if stop_at is not None and now >= stop_at and self._at_end(c, parts):
                    return found
                if stop_at is None and now >= deadline:
                    seen = {t: len(v) for t, v in found.items()}
                    raise AssertionError(f"timed out after {timeout} s waiting for records with "
                                         f"key {key!r} on every one of {topics}; saw {seen}\n"
                                         f"{log_tails()}")
                if stop_at is not None and now >= stop_at + 30:
                    raise AssertionError("consumer could not reach the end of the partitions")
                m = c.poll(0.2)
                if m is None:
                    continue
                if m.error():
                    if m.error().code() == KafkaError._PARTITION_EOF:
                        continue
                    raise AssertionError(f"consumer error: {m.error()}")
                if m.key() == key:
                    found[m.topic()].append(m)
        finally:
            c.close()

    @staticmethod
    def _at_end(c, parts):
        positions = c.position([TopicPartition(p.topic, p.partition) for p in parts])
        for tp in positions:
            lo, hi = c.get_watermark_offsets(TopicPartition(tp.topic, tp.partition), timeout=5,
                                             cached=False)
            if hi > lo and tp.offset < hi:
                return False
        return True

    # -- convenience for tests

    def fund(self, customer_id, cents):
        return self.payments.set_balance(customer_id, cents)

    def set_stock(self, sku, available):
        return self.inventory.set_stock(sku, available)


def _stop_on_sigterm(signum, frame):
    # Turn SIGTERM into KeyboardInterrupt so that pytest tears the stack down.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def stack():
    global _STACK
    st = Stack()
    _STACK = st
    atexit.register(st.teardown)  # last resort if pytest itself dies
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop_on_sigterm)
    problems = []
    try:
        st.setup()
        yield st
    finally:
        problems = st.teardown()
    if problems:
        pytest.fail("teardown: " + "; ".join(problems) + "\n" + log_tails(), pytrace=False)


class Zipkin:
    """The test session's Zipkin server (deploy/zipkin/zipkin.sh), read
    through its API."""

    def __init__(self, url):
        self.url = url

    def trace(self, trace_id):
        """The spans of one trace (a list, empty when Zipkin has none)."""
        r = requests.get(f"{self.url}/api/v2/trace/{trace_id}", timeout=5)
        if r.status_code == 404:
            return []
        assert r.status_code == 200, f"GET /api/v2/trace/{trace_id}: {r.status_code} {r.text}"
        return r.json()


@pytest.fixture(scope="session")
def zipkin():
    """A real Zipkin server (in-memory storage) on 19411 + TEST_PORT_OFFSET,
    stopped at the end of the session."""
    try:
        out = run_script([ZIPKIN_SH, "start", "--port", ZIPKIN_PORT, "--dir", ZIPKIN_DIR])
        url = parse_assignments(out).get("url")
        if not url:
            raise RuntimeError(f"zipkin.sh start printed no url=...:\n{out}")
        yield Zipkin(url)
    finally:
        run_script([ZIPKIN_SH, "stop", "--dir", ZIPKIN_DIR], check=False, timeout=60)


@pytest.fixture(autouse=True)
def daemons_up(request):
    """Every test starts with all three daemons running, and fails if one of
    them died during it. A daemon found dead (say a test failed between kill -9
    and restart) is restarted first, so that one failure does not cascade."""
    if "stack" not in request.fixturenames:
        yield
        return
    st = request.getfixturevalue("stack")
    for d in st.daemons.values():
        if not d.running():
            with open(d.log_path, "a") as log:
                log.write(f"=== test harness: {d.name} found down "
                          f"({exit_description(d.proc.returncode if d.proc else None)}) "
                          f"before {request.node.nodeid}; restarting ===\n")
            d.restart()
    yield
    dead = [f"{d.name}: {exit_description(d.proc.returncode)}"
            for d in st.daemons.values() if d.crashed()]
    if dead:
        pytest.fail("daemon died during the test: " + "; ".join(dead) + "\n" + log_tails(),
                    pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and _STACK is not None and _STACK.daemons:
        rep.sections.append(("daemon logs (tail)", log_tails(60)))
