"""
The daemons' KAFKA_* pass-through on real processes: with Kafka's launcher
variables and the dev stack's own (KAFKA_HEAP_OPTS, KAFKA_OPTS,
KAFKA_LIBS_DIR, ...) in their environment the three daemons start, say once
at debug level that they passed over each, and settle orders; an unknown
KAFKA_* name or a bad value stops a daemon at start with exit 78 and a
message naming the variable, before it touches PostgreSQL. orderctl's Kafka
commands give the same answer to the same environment (exit 78, the daemons'
message, before they connect anywhere) and pass over the same launcher
variables.
"""

import socket
import subprocess

import pytest

from conftest import SERVICES, build_dir
from helpers import LAUNCHER_ENV

EX_CONFIG = 78
# orderctl's commands that talk to Kafka (token and acls show do not).
ORDERCTL_KAFKA_COMMANDS = [["dlt", "tail"], ["dlt", "depth"], ["dlt", "replay", "--all"],
                           ["topics", "ensure"], ["acls", "ensure"]]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def this_start(daemon):
    """The daemon's log lines since the harness last started it."""
    text = daemon.log_path.read_text(errors="replace")
    return text[text.rfind("=== test harness: starting"):].splitlines()


def test_daemons_start_and_work_with_launcher_variables_set(stack):
    normal = {name: d.env for name, d in stack.daemons.items()}
    try:
        for name, d in stack.daemons.items():
            d.stop()
            d.env = dict(normal[name], LOG_LEVEL="debug", **LAUNCHER_ENV)
            d.start()
        for name, d in stack.daemons.items():
            d.wait_ready()
            lines = this_start(d)
            for var in LAUNCHER_ENV:
                said = [ln for ln in lines if f"ignoring {var}:" in ln]
                assert len(said) == 1, (f"{name}: expected one 'ignoring {var}:' line, "
                                        f"saw {said}\n{d.log_tail(60)}")
                assert " debug: " in said[0] or said[0].startswith("<7>"), said[0]
            assert not [ln for ln in lines if "unknown KAFKA_" in ln or "invalid KAFKA_" in ln]

        # They do their work: an order placed now settles through all three.
        cust, sku = stack.uid("cust"), stack.uid("sku")
        stack.fund(cust, 1_000)
        stack.set_stock(sku, 2)
        oid = stack.orders.create_ok(cust, sku, 1, 400)
        o = stack.orders.wait_settled(oid, need=("payment", "inventory"))
        assert o["status"] == "CONFIRMED", o
        assert stack.payments.balance(cust) == 1_000 - 400
        assert stack.inventory.stock(sku) == 2 - 1
    finally:
        for name, d in stack.daemons.items():
            if d.running():
                d.stop()
            d.env = normal[name]
            d.start()
        for d in stack.daemons.values():
            d.wait_ready()


def run_until_exit(name, extra, timeout=15):
    """Starts the daemon with the launcher variables and `extra` set, a free
    HTTP port and a database that cannot answer (port 1): a check made at
    start-up exits at once, anything later would wait for the database."""
    env = {"PATH": "/usr/bin:/bin", "HTTP_PORT": str(free_port()),
           "DATABASE_URL": "postgresql://postgres@127.0.0.1:1/none",
           "KAFKA_BOOTSTRAP_SERVERS": "127.0.0.1:1", **LAUNCHER_ENV, **extra}
    binary = build_dir() / name / name
    try:
        return subprocess.run([str(binary)], env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"{name} with {extra} was still running after {timeout} s "
                    f"(no start-up check?)\n{e.stderr}")


@pytest.mark.parametrize("name", list(SERVICES))
@pytest.mark.parametrize("var,value,says", [
    ("KAFKA_NO_SUCH_PROPERTY", "1", "no.such.property is no librdkafka property"),
    ("KAFKA_HEAP_OPTS_EXTRA", "-Xmx1g", "heap.opts.extra is no librdkafka property"),
    ("KAFKA_ACKS", "banana", "librdkafka property acks"),
])
def test_unknown_or_bad_kafka_variable_exits_78_naming_it(name, var, value, says):
    cp = run_until_exit(name, {var: value})
    assert cp.returncode == EX_CONFIG, (f"{name} with {var}={value}: expected exit "
                                        f"{EX_CONFIG}, got {cp.returncode}\n{cp.stderr}")
    errors = [ln for ln in cp.stderr.splitlines() if "configuration error" in ln]
    assert len(errors) == 1 and var in errors[0] and says in errors[0], cp.stderr
    assert "database" not in cp.stderr, f"{name} went on to the database:\n{cp.stderr}"


def run_orderctl(args, extra, timeout=30):
    """orderctl with the launcher variables and `extra` set, pointed at a
    broker that cannot answer (port 1, 2 s per request)."""
    env = {"PATH": "/usr/bin:/bin", **LAUNCHER_ENV, **extra}
    cmd = [str(build_dir() / "tools" / "orderctl"), *args, "--bootstrap", "127.0.0.1:1",
           "--timeout", "2"]
    return subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("var,value", [
    ("KAFKA_NO_SUCH_PROPERTY", "1"),  # unknown
    ("KAFKA_SECURITY_PROTCOL", "SSL"),  # misspelt
    ("KAFKA_SECURITY_PROTOCOL", "bogus"),  # invalid value
    ("KAFKA_SASL_PASSWORD_FILE", "/nonexistent/kafka-password"),  # unusable file
], ids=["unknown", "misspelt", "invalid", "unreadable-file"])
def test_orderctl_refuses_what_the_daemons_refuse(var, value):
    """The same environment, the same answer: exit 78 and the daemon's own
    message, before orderctl talks to any broker (nothing about the
    unreachable one on port 1)."""
    daemon = run_until_exit("payment-service", {var: value})
    assert daemon.returncode == EX_CONFIG, daemon.stderr
    said = [ln.split("configuration error: ", 1)[1] for ln in daemon.stderr.splitlines()
            if "configuration error: " in ln]
    assert len(said) == 1 and var in said[0], daemon.stderr
    for args in ORDERCTL_KAFKA_COMMANDS:
        cp = run_orderctl(args, {var: value})
        assert cp.returncode == EX_CONFIG, (f"orderctl {' '.join(args)} with {var}={value}: "
                                            f"exit {cp.returncode}\n{cp.stderr}")
        assert cp.stderr.splitlines() == [f"orderctl: configuration error: {said[0]}"], (
            f"orderctl {' '.join(args)}: expected the daemon's message alone\n{cp.stderr}")


def test_orderctl_passes_over_launcher_variables():
    """With only Kafka's launcher and dev-stack variables set, every Kafka
    command of orderctl goes on to the broker (unreachable here: exit 3, not
    78), silently; the commands that need no broker work."""
    for args in ORDERCTL_KAFKA_COMMANDS:
        cp = run_orderctl(args, {})
        assert cp.returncode == 3, f"orderctl {' '.join(args)}: exit {cp.returncode}\n{cp.stderr}"
        assert "configuration error" not in cp.stderr and "ignoring" not in cp.stderr, cp.stderr
    cp = run_orderctl(["acls", "show"], {"KAFKA_NO_SUCH_PROPERTY": "1"})
    assert cp.returncode == 0 and "User:payment-service" in cp.stdout, cp.stderr
