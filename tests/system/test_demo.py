"""
The run command as a user runs it: `deploy/demo.sh --no-wait` builds the
release preset, starts its own broker, databases and daemons, places the demo
orders, prints how each settled and how each was compensated, and stops
everything. This test runs it on ports, databases and a state folder of its
own (derived from TEST_PORT_OFFSET, never the demo's defaults 8080-8082/9092)
and checks that every printed outcome is what the order's label promises, and
that the printed balances and stock follow from the printed orders. The API
runs with authentication on: the demo made its tokens with orderctl, wrote
them to <state>/tokens.env and their hashes to <state>/tokens (both 0600),
printed how to use them, and no token reached a daemon log.

A second test runs it three times on one state folder and the same
databases, switching the broker's Kafka version (the default, then
KAFKA_VERSION=4.1.1, then the default again, or the other way round under
TEST_KAFKA_VERSION=4.1.1), as a user trying the README's two ways would:
each run settles every order as its label promises.

Environment: TEST_PORT_OFFSET (see conftest.py), TEST_KAFKA_VERSION (the
demo's broker; default the demo's own).
"""

import hashlib
import os
import re
import shlex
import stat
import subprocess

import psycopg
import psycopg.conninfo

from conftest import (KAFKA_VERSION, PG_SH, PORT_OFFSET, ROOT, RUN_DIR, check_broker_version,
                      kafka_sh_env, parse_assignments, port_in_use, run_script)

DEMO = ROOT / "deploy" / "demo.sh"
KAFKA_SH = ROOT / "deploy" / "kafka" / "kafka.sh"
STATE_DIR = RUN_DIR / "test-demo"
# Clear of the demo's defaults and of the other system tests (18080.., 19092..).
DEMO_OFFSET = 13000 + PORT_OFFSET
DB_PREFIX = f"demotest{PORT_OFFSET}_"
DEMO_TIMEOUT = 900  # it may have to build the release preset first
VERSIONS = ROOT / "deploy" / "kafka" / "versions.sh"
_versions = parse_assignments(VERSIONS.read_text())
DEFAULT_VERSION = _versions["KAFKA_DEFAULT_VERSION"]
KAFKA4_VERSION = _versions["KAFKA4_TEST_VERSION"]
FIRST_VERSION = KAFKA_VERSION or DEFAULT_VERSION
OTHER_VERSION = KAFKA4_VERSION if FIRST_VERSION.startswith("3.") else DEFAULT_VERSION
PORTS = [p + DEMO_OFFSET for p in (8080, 8081, 8082, 9092, 9192)]

# What each label's parenthesis promises: the order's status and the reason of
# the side that decides it. The other side says OK, or ORDER_CANCELLED when the
# refusal reached it before the order did (a tombstone; see the README).
PROMISES = {
    "confirms": ("CONFIRMED", None, None),
    "no funds": ("REJECTED", "payment", "INSUFFICIENT_FUNDS"),
    "unknown": ("REJECTED", "payment", "UNKNOWN_CUSTOMER"),
    "no stock": ("REJECTED", "inventory", "OUT_OF_STOCK"),
}

ANSI = re.compile(r"\x1b\[[0-9;]*m")
PLACED = re.compile(r"^  (.+?) +-> ([0-9a-f-]{36})  \((\w+), (\d+) x ([\w-]+), (\d+) cents\)$")
SETTLED = re.compile(r"^  (.+?) +(CONFIRMED|REJECTED|PENDING) +payment/inventory: (\S*)$")
COMPENSATED = re.compile(r"^  (.+?) +payment (\S+) +stock (\S+)$")
SETUP = re.compile(r"^  accounts: (.+); stock: (.+)$")
BALANCES = re.compile(r"^  balances: (.+); stock: (.+)$")


def pairs(text):
    """'alice 100000, bob 500' -> {'alice': 100000, 'bob': 500}"""
    out = {}
    for item in text.split(", "):
        name, value = item.rsplit(" ", 1)
        out[name] = int(value)
    return out


def sections(out):
    """The demo's output split at its '==> ' headers: {header: [lines]}."""
    found, current = {}, None
    for line in ANSI.sub("", out).splitlines():
        if line.startswith("==> "):
            current = found.setdefault(line[4:], [])
        elif current is not None:
            current.append(line)
    return found


def section(secs, prefix):
    hits = [lines for header, lines in secs.items() if header.startswith(prefix)]
    assert len(hits) == 1, f"expected one section '{prefix}...', have {list(secs)}"
    return hits[0]


def matches(lines, rx):
    return [m for m in map(rx.match, lines) if m]


def drop_databases():
    pg = {k: v for k, v in parse_assignments(run_script([PG_SH, "ensure"])).items()
          if k.startswith("PG")}
    conninfo = psycopg.conninfo.make_conninfo(
        **{k: v for k, v in {"host": pg.get("PGHOST"), "port": pg.get("PGPORT"),
                             "user": pg.get("PGUSER"), "dbname": "postgres"}.items() if v})
    with psycopg.connect(conninfo, autocommit=True) as conn:
        for db in ("orders", "payments", "inventory"):
            conn.execute(f'DROP DATABASE IF EXISTS "{DB_PREFIX}{db}" WITH (FORCE)')


def kafka_dir(version):
    """The demo's broker folder of a Kafka version (one per version)."""
    return STATE_DIR / f"kafka-{version}"


def clean_state():
    """No demo broker of ours left (any version), no demo databases."""
    for d in [STATE_DIR / "kafka"] + sorted(STATE_DIR.glob("kafka-*")):
        run_script([KAFKA_SH, "clean", "--dir", d], env=kafka_sh_env(None), check=False)
    drop_databases()
    busy = [p for p in PORTS if port_in_use(p)]
    assert not busy, f"ports {busy} are in use before the demo started"


def run_demo(version=KAFKA_VERSION):
    """deploy/demo.sh --no-wait with KAFKA_VERSION=version (None: unset)."""
    env = {k: v for k, v in kafka_sh_env(None).items() if not k.startswith("KAFKA_")}
    if version:
        env["KAFKA_VERSION"] = version
    env.update(DEMO_PORT_OFFSET=str(DEMO_OFFSET), DEMO_DB_PREFIX=DB_PREFIX,
               DEMO_STATE_DIR=str(STATE_DIR))
    env.pop("DEMO_KAFKA_PORT", None)
    cmd = [str(DEMO), "--no-wait"]
    try:
        cp = subprocess.run(cmd, env=env, cwd=ROOT, stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=DEMO_TIMEOUT)
    except subprocess.TimeoutExpired as e:
        raise AssertionError(f"{shlex.join(cmd)} did not finish within {DEMO_TIMEOUT} s\n"
                             f"{e.stdout}\n{e.stderr}") from None
    print(cp.stdout, cp.stderr, sep="\n")
    return cp


def test_demo_prints_what_its_labels_promise():
    clean_state()
    check_run(run_demo(), FIRST_VERSION)


def test_demo_switches_kafka_version_both_ways():
    """The run command works whichever KAFKA_VERSION the previous run used,
    on the same state folder and with the data the previous runs left in
    PostgreSQL: each version has a broker folder of its own."""
    clean_state()
    for version in (FIRST_VERSION, OTHER_VERSION, FIRST_VERSION):
        check_run(run_demo(version if version != DEFAULT_VERSION else None), version)
    assert not (STATE_DIR / "kafka").exists(), "the demo used the unversioned folder"


def check_run(cp, version):
    """One demo run printed what its labels promise, on Kafka `version`, and
    stopped everything it started."""
    logs = ""
    for name in ("order-service", "payment-service", "inventory-service"):
        path = STATE_DIR / "logs" / f"{name}.log"
        if path.exists():
            logs += f"\n----- {path} (tail)\n" + "\n".join(path.read_text().splitlines()[-20:])
    assert cp.returncode == 0, f"demo.sh exited {cp.returncode}\n{cp.stderr}{logs}"
    secs = sections(cp.stdout)
    assert f"starting Kafka {version} (data in {kafka_dir(version)})" in secs, list(secs)
    check_broker_version(kafka_dir(version), cp.stdout, version)

    setup = matches(section(secs, "funding accounts"), SETUP)
    assert len(setup) == 1, secs
    balances0, stock0 = pairs(setup[0][1]), pairs(setup[0][2])

    placed = matches(section(secs, "placing demo orders"), PLACED)
    assert len(placed) >= 4, f"too few orders placed: {secs['placing demo orders']}"
    orders = {}
    for m in placed:
        label, oid, cust, qty, sku, cents = m.groups()
        promise = re.search(r"\(([^)]*)\)$", label)
        assert promise and promise[1] in PROMISES, f"label without a known promise: {label!r}"
        assert label not in orders, f"two orders labelled {label!r}"
        orders[label] = dict(id=oid, customer=cust, qty=int(qty), sku=sku, cents=int(cents),
                             promise=PROMISES[promise[1]])
    assert len({o["id"] for o in orders.values()}) == len(orders), "order ids repeat"
    assert {o["promise"][0] for o in orders.values()} == {"CONFIRMED", "REJECTED"}

    settled = {m[1]: m for m in matches(section(secs, "waiting for every order"), SETTLED)}
    compensated = {m[1]: m for m in matches(section(secs, "compensation"), COMPENSATED)}
    assert set(settled) == set(orders), f"settled lines {sorted(settled)} vs orders {sorted(orders)}"
    assert set(compensated) == set(orders), (f"compensation lines {sorted(compensated)} "
                                             f"vs orders {sorted(orders)}")

    for label, o in orders.items():
        want_status, side, want_reason = o["promise"]
        _, status, reasons = settled[label].groups()
        assert status == want_status, f"{label!r}: printed {status}, the label promises {want_status}"
        pay_reason, inv_reason = (reasons.split("/") + ["", ""])[:2]
        assert pay_reason and inv_reason, f"{label!r}: reasons {reasons!r} lack a side"
        _, pay, res = compensated[label].groups()
        if want_status == "CONFIRMED":
            assert (pay_reason, inv_reason) == ("OK", "OK"), f"{label!r}: {reasons}"
            assert (pay, res) == ("CHARGED", "RESERVED"), f"{label!r}: payment {pay} stock {res}"
            continue
        deciding, other = ((pay_reason, inv_reason) if side == "payment"
                           else (inv_reason, pay_reason))
        assert deciding == want_reason, f"{label!r}: {side} said {deciding}, label: {want_reason}"
        assert other in ("OK", "ORDER_CANCELLED"), f"{label!r}: the other side said {other}"
        # Compensation: nothing stays charged or reserved. A side that had
        # said OK undid its effect; one that never acted has nothing to undo.
        if pay_reason == "OK":
            assert pay == "REFUNDED", f"{label!r}: payment {pay} ({reasons})"
        else:
            assert pay in ("DECLINED", "CANCELLED"), f"{label!r}: payment {pay} ({reasons})"
        if inv_reason == "OK":
            assert res == "RELEASED", f"{label!r}: stock {res} ({reasons})"
        else:
            assert res in ("REJECTED", "CANCELLED"), f"{label!r}: stock {res} ({reasons})"

    # The final balances and stock follow from the orders that confirmed.
    final = matches(section(secs, "compensation"), BALANCES)
    assert len(final) == 1, secs
    want_bal, want_stock = dict(balances0), dict(stock0)
    for o in orders.values():
        if o["promise"][0] == "CONFIRMED":
            want_bal[o["customer"]] -= o["cents"]
            want_stock[o["sku"]] -= o["qty"]
    assert pairs(final[0][1]) == want_bal, final[0][0]
    assert pairs(final[0][2]) == want_stock, final[0][0]

    # Its tokens: in tokens.env and, hashed, in the daemons' token file; both
    # 0600; the how-to printed; no token in any log.
    env_file, tokens_file = STATE_DIR / "tokens.env", STATE_DIR / "tokens"
    assert stat.S_IMODE(env_file.stat().st_mode) == 0o600
    assert stat.S_IMODE(tokens_file.stat().st_mode) == 0o600
    toks = parse_assignments(env_file.read_text())
    assert set(toks) == {"ORDERS_TOKEN", "ADMIN_TOKEN"}, toks
    lines = [ln.split() for ln in tokens_file.read_text().splitlines() if not ln.startswith("#")]
    assert {ln[1] for ln in lines} == {"demo-orders", "demo-admin"}, lines
    for name, tok in toks.items():
        assert re.fullmatch(r"ot_[A-Za-z0-9_-]{43}", tok), name
        assert hashlib.sha256(tok.encode()).hexdigest() in {ln[0] for ln in lines}, name
        for path in (STATE_DIR / "logs").glob("*.log"):
            assert tok not in path.read_text(errors="replace"), f"{name} in {path}"
        assert tok not in cp.stdout and tok not in cp.stderr, f"{name} printed"
    # One order's story (bob's, declined for funds) through orderctl, and no
    # order stuck.
    bob = next(o for label, o in orders.items() if "no funds" in label)
    story = "\n".join(section(secs, "one order's story"))
    assert f"order {bob['id']}" in story and "status:    REJECTED" in story, story
    assert f"declined {bob['cents']} cents for {bob['customer']} (INSUFFICIENT_FUNDS)" in story
    assert "settled: REJECTED" in story and "trace id:" in story, story
    stuck = "\n".join(section(secs, "stuck orders"))
    assert "no order PENDING for more than 60s" in stuck, stuck
    howto = "\n".join(section(secs, "using the API"))
    assert f"set -a; . {env_file}; set +a" in howto, howto
    assert 'Authorization: Bearer $ORDERS_TOKEN' in howto, howto

    # It stopped everything it started.
    busy = [p for p in PORTS if port_in_use(p)]
    assert not busy, f"ports {busy} still in use after demo.sh returned"
    status = subprocess.run([str(KAFKA_SH), "status", "--dir", str(kafka_dir(version))],
                            capture_output=True, text=True, timeout=60, env=kafka_sh_env(None))
    assert status.returncode == 3, f"demo's broker still running:\n{status.stdout}"
