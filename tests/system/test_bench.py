"""
Smoke test of orders-bench, the benchmark tool in tools/, against the real
stack: a short open-loop run and a short closed-loop run finish with exit 0,
nothing lost or duplicated, a JSON report with the expected keys and an SVG
picture that is well-formed XML; some orders reject when funds are short; a
keep-alive connection that the server closes is survived by sending the
request again; bad options and an unreachable database give their exit codes.
Authentication is on: the tool takes its tokens from ORDERS_TOKEN and
ADMIN_TOKEN in the environment, as `set -a; . .run/tokens.env` sets them,
and without them it stops at its set-up with exit 3 naming the 401.

Never a speed: the figures the tool prints are not checked.

Environment: ORDERS_BUILD_DIR (default <root>/build/dev) holds tools/orders-bench.
"""

import json
import os
import socket
import subprocess
import threading
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from conftest import TOKENS_ENV, make_pki, parse_assignments

ROOT = Path(__file__).resolve().parents[2]
RUN_TIMEOUT = 120

TOP_KEYS = {"tool", "version", "run_id", "started_at", "params", "throughput", "latency_ms",
            "outcomes", "connections", "cpu", "groups", "processes", "errors", "warnings",
            "exit_status"}
SERIES = {"post", "settle", "created_to_settled", "post_service"}
PERCENTILES = {"p50", "p90", "p99", "p999", "max", "mean", "count"}


def bench_path():
    build = Path(os.environ.get("ORDERS_BUILD_DIR", str(ROOT / "build" / "dev")))
    return build / "tools" / "orders-bench"


def token_env():
    """Our environment plus the tokens file's ORDERS_TOKEN and ADMIN_TOKEN,
    as sourcing it with `set -a` gives (written by the stack at set-up)."""
    env = {k: v for k, v in os.environ.items() if k not in ("ORDERS_TOKEN", "ADMIN_TOKEN")}
    if TOKENS_ENV.exists():
        env.update(parse_assignments(TOKENS_ENV.read_text()))
    return env


def run_bench(args, timeout=RUN_TIMEOUT, env=None):
    path = bench_path()
    if not path.is_file():
        pytest.fail(f"{path} not found: build the orders-bench target first")
    cp = subprocess.run([str(path), *args], cwd=ROOT, stdin=subprocess.DEVNULL,
                        capture_output=True, text=True, timeout=timeout,
                        env=token_env() if env is None else env)
    return cp


def stack_args(stack, url=None):
    return ["--url", url or stack.orders.base, "--payment-url", stack.payments.base,
            "--inventory-url", stack.inventory.base, "--orders-db", stack.dsn("orders"),
            "--timeout", "60", "--quiet"]


def bench_ok(stack, tmp_path, *args, url=None):
    """Runs the tool; asserts exit 0, nothing lost or duplicated, the JSON keys
    and a well-formed SVG; returns the JSON report."""
    out_json, out_svg = tmp_path / "bench.json", tmp_path / "bench.svg"
    cp = run_bench([*stack_args(stack, url), "--json", str(out_json), "--svg", str(out_svg),
                    *args])
    detail = f"stdout:\n{cp.stdout}\nstderr:\n{cp.stderr}\n{stack.log_tails()}"
    assert cp.returncode == 0, f"orders-bench exited {cp.returncode}\n{detail}"
    report = json.loads(out_json.read_text())
    assert TOP_KEYS <= report.keys(), f"missing keys {TOP_KEYS - report.keys()}"
    assert SERIES <= report["latency_ms"].keys()
    assert PERCENTILES <= report["latency_ms"]["settle"].keys(), report["latency_ms"]
    out = report["outcomes"]
    assert out["lost"] == 0 and out["duplicated"] == 0 and out["failed"] == 0, out
    assert "lost 0 " in cp.stdout and "duplicated 0 " in cp.stdout, cp.stdout
    root = ET.parse(out_svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg", root.tag
    assert root.findall(".//{http://www.w3.org/2000/svg}polyline"), "no curve in the SVG"
    return report


def settled(report, orders):
    out = report["outcomes"]
    assert out["accepted"] == orders, out
    assert out["confirmed"] + out["rejected"] == orders, out
    assert report["latency_ms"]["settle"]["count"] == orders, report["latency_ms"]


def test_open_loop(stack, tmp_path):
    report = bench_ok(stack, tmp_path, "--orders", "300", "--rate", "300", "--connections", "8")
    settled(report, 300)
    assert report["outcomes"]["rejected"] == 0, report["outcomes"]
    assert report["params"]["mode"] == "open"
    labels = {g["label"] for g in report["groups"]}
    for name in ("order-service", "payment-service", "inventory-service", "kafka broker",
                 "orders-bench (this tool)"):
        assert name in labels, f"{name} not among the measured processes: {sorted(labels)}"
    pids = {g["label"]: g["pids"] for g in report["groups"]}
    assert pids["order-service"] == 1, pids
    # Wake-ups (voluntary context switches of every thread) per settled
    # order: every daemon and the broker woke for the orders (a batch may
    # carry several, so less than one per order is possible), and the
    # total counts every process.
    wakes = {g["label"]: g["wakeups_per_order"] for g in report["groups"]}
    for name in ("order-service", "payment-service", "inventory-service", "kafka broker"):
        assert wakes[name] is not None and wakes[name] > 0, (name, wakes)
    assert report["cpu"]["wakeups_per_order"] >= sum(
        wakes[n] for n in ("order-service", "payment-service", "inventory-service")), report["cpu"]


def test_requests_per_order(stack, tmp_path):
    """--requests: the daemons' and PostgreSQL's counters over the run, per
    settled order. Each order is one event published by each daemon's relay,
    so each relay sent at most one Produce request per order (fewer when one
    request carried several); every consumer fetched; every path made round
    trips; the databases committed and WAL was flushed; the idle rates and
    the idle CPU of every process were measured before the run."""
    report = bench_ok(stack, tmp_path, "--orders", "200", "--rate", "100", "--connections", "4",
                      "--requests")
    settled(report, 200)
    rq = report["requests"]
    assert rq["orders"] == 200 and rq["missing"] == [], rq
    per = rq["perOrder"]
    for d in ("order-service", "payment-service", "inventory-service"):
        assert 0.05 < per.get(f"{d}|relay|Produce", 0) <= 1.0, (d, per)
        assert per.get(f"{d}|consumer|Fetch", 0) > 0, (d, per)
        assert per.get(f"{d}|pg|relay", 0) > 0 and per.get(f"{d}|pg|consumer", 0) > 0, (d, per)
    assert per.get("order-service|pg|api", 0) > 0.1, per  # the order's insert (group commit)
    commits = sum(v for k, v in per.items() if k.startswith("db|") and k.endswith("|commits"))
    assert commits >= 1, per
    assert per.get("wal|flushes", 0) > 0, per
    assert "order-service|relay|Produce" in rq["idlePerSecond"], rq
    # CPU over the idle window, % of one core: every process found and
    # measured; no daemon spins while idle.
    cpu = rq["idleCpuPercent"]
    assert set(cpu) == {"order-service", "payment-service", "inventory-service", "broker",
                        "postgres"}, cpu
    assert all(v >= 0 for v in cpu.values()), cpu
    for d in ("order-service", "payment-service", "inventory-service"):
        assert cpu[d] < 50, (d, cpu)


def test_closed_loop(stack, tmp_path):
    report = bench_ok(stack, tmp_path, "--orders", "200", "--rate", "0", "--connections", "4")
    settled(report, 200)
    assert report["params"]["mode"] == "closed"


def test_short_funds_reject_some(stack, tmp_path):
    report = bench_ok(stack, tmp_path, "--orders", "100", "--rate", "200", "--customers", "4",
                      "--skus", "2", "--funds-factor", "0.5")
    settled(report, 100)
    out = report["outcomes"]
    assert 0 < out["confirmed"] <= 50 and out["rejected"] >= 50, out


class DropSecondRequest:
    """A proxy in front of order-service that relays the first request of each
    client connection and closes the connection when a second one arrives,
    without passing it on: the server side of a keep-alive connection closed
    just as the client reused it."""

    def __init__(self, target_port):
        self.target = ("127.0.0.1", target_port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    @staticmethod
    def _read_message(f):
        head = b""
        while not head.endswith(b"\r\n\r\n"):
            line = f.readline()
            if not line:
                return None
            head += line
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        return head + f.read(length)

    def _serve(self, client):
        with client, socket.create_connection(self.target) as up:
            cf, uf = client.makefile("rb"), up.makefile("rb")
            request = self._read_message(cf)
            if request is None:
                return
            up.sendall(request)
            client.sendall(self._read_message(uf))
            self._read_message(cf)  # the second request: dropped with the connection

    def _accept(self):
        while not self.stop.is_set():
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def close(self):
        self.stop.set()
        self.thread.join(5)
        self.sock.close()


def test_closed_keepalive_connection_is_resent_once(stack, tmp_path):
    proxy = DropSecondRequest(stack.daemons["order-service"].port)
    try:
        pids = ",".join(f"{n}={d.pid}" for n, d in stack.daemons.items())
        report = bench_ok(stack, tmp_path, "--orders", "40", "--rate", "100", "--connections",
                          "2", "--pids", pids, url=f"http://127.0.0.1:{proxy.port}")
    finally:
        proxy.close()
    settled(report, 40)
    conns = report["connections"]
    # Every order after the first on a connection met a closed connection.
    assert conns["resends"] >= 30, conns
    assert conns["sockets_opened"] == conns["resends"] + 2, conns


def test_https_front_door(stack, tmp_path):
    """order-service serving HTTPS: the tool speaks TLS on its keep-alive
    connections (one handshake per socket), verifies the server against
    --cacert, and refuses a server its CA store does not vouch for."""
    pki = make_pki(tmp_path)
    d = stack.daemons["order-service"]
    normal = d.env
    d.stop()
    d.env = dict(normal, HTTP_TLS_CERT=str(pki / "server.pem"),
                 HTTP_TLS_KEY=str(pki / "server.key"))
    try:
        d.ca = str(pki / "ca.pem")
        d.start()
        d.wait_ready()
        url = f"https://127.0.0.1:{d.port}"
        report = bench_ok(stack, tmp_path, "--orders", "200", "--rate", "200", "--connections",
                          "4", "--cacert", str(pki / "ca.pem"), url=url)
        settled(report, 200)
        conns = report["connections"]
        assert conns["tls"] is True, conns
        assert 1 <= conns["tls_handshakes"] <= conns["sockets_opened"], conns
        assert conns["sockets_opened"] <= 4 + conns["resends"], conns

        # Without --cacert the throw-away CA is unknown: the set-up stops
        # (exit 3) before any order goes out, and says why.
        cp = run_bench([*stack_args(stack, url), "--orders", "5", "--rate", "50",
                        "--connections", "1", "--request-timeout", "5"], timeout=60)
        assert cp.returncode == 3, f"exit {cp.returncode}\n{cp.stdout}\n{cp.stderr}"
        assert "certificate verify failed" in cp.stderr, cp.stderr
        cp = run_bench(["--url", "https://127.0.0.1:1", "--cacert", str(tmp_path / "none.pem"),
                        "--orders", "1"], timeout=30)
        assert cp.returncode == 2 and "CA certificates" in cp.stderr, cp.stderr
    finally:
        if d.running():
            d.stop()
        d.env, d.ca = normal, None
        d.start()
        d.wait_ready()


def test_without_tokens_setup_fails_with_401(stack):
    env = {k: v for k, v in token_env().items() if k not in ("ORDERS_TOKEN", "ADMIN_TOKEN")}
    cp = run_bench([*stack_args(stack), "--orders", "1"], timeout=30, env=env)
    assert cp.returncode == 3, f"exit {cp.returncode}\n{cp.stderr}"
    assert "answered 401" in cp.stderr and "ADMIN_TOKEN" in cp.stderr, cp.stderr
    # A token for orders only cannot fund customers.
    cp = run_bench([*stack_args(stack), "--orders", "1", "--token",
                    stack.tokens["orders"][0]], timeout=30, env=env)
    assert cp.returncode == 3 and "answered 403" in cp.stderr, cp.stderr


def test_bad_options_exit_2():
    for args, message in ((["--token", "a b"], "--token"),
                          (["--rate", "fast"], "--rate"),
                          (["--orders", "0"], "--orders"),
                          (["--header", "no colon"], "--header"),
                          (["--url", "ftp://x"], "--url"),
                          (["--no-such-option"], "unknown option")):
        cp = run_bench(args, timeout=30)
        assert cp.returncode == 2, f"{args}: exit {cp.returncode}\n{cp.stderr}"
        assert message in cp.stderr, f"{args}: {cp.stderr!r}"
    cp = run_bench(["--help"], timeout=30)
    assert cp.returncode == 0
    for option in ("--orders", "--rate", "--connections", "--header", "--token", "--admin-token",
                   "ORDERS_TOKEN", "ADMIN_TOKEN", "--orders-db", "--json",
                   "--svg", "--pids", "--broker-pid", "--funds-factor", "--timeout"):
        assert option in cp.stdout, f"--help does not document {option}"


def test_unreachable_database_exit_3(stack):
    cp = run_bench(["--url", stack.orders.base, "--payment-url", stack.payments.base,
                    "--inventory-url", stack.inventory.base, "--orders-db",
                    "host=127.0.0.1 port=1 dbname=orders connect_timeout=2", "--orders", "1"],
                   timeout=30)
    assert cp.returncode == 3, f"exit {cp.returncode}\n{cp.stderr}"
    assert "orders database" in cp.stderr, cp.stderr
