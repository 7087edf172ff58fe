"""
Kafka security with a real broker in secure mode (deploy/kafka/kafka.sh
--secure: SASL_SSL with SCRAM-SHA-512, mTLS, StandardAuthorizer, no
unauthenticated listener) and the ACLs of `orderctl acls ensure`:

- the flow (confirmed, declined, out of stock) with each daemon as its own
  principal, over SCRAM and over mTLS;
- the broker denies a principal writing a topic it does not own, reading a
  topic or group it has no ACL for, and every unauthenticated client; nothing
  is appended (end offsets);
- a daemon with a wrong Kafka password (or a rejected certificate) is not
  ready, logs one clear error, keeps what it accepted in its outbox and
  publishes it once fixed and restarted;
- `orderctl acls ensure` reports and repairs drift; `orderctl --config` with
  the operator principal tails the DLTs;
- after everything, no SASL password, private key or HTTP token is in any
  daemon's log or /metrics.

Everything else is secured too, as in production: the daemons serve HTTPS
(a throw-away CA, verified by the clients) with bearer tokens (the session's
token file, conftest.TOKENS), take their SASL password from a file
(KAFKA_SASL_PASSWORD_FILE) and connect to PostgreSQL as their own roles (no
superuser).

This file starts its own broker (port 19392 + TEST_PORT_OFFSET, 19692 + offset
on Kafka 4.x, folder .run/test-kafka-secure[-4]), its own databases (prefix
ksec<offset>_) and daemons (HTTP 18480.. + offset), and stops them at the end.
On Kafka 4.x (TEST_KAFKA_VERSION=4.1.1, label kafka4) the SCRAM cases are
skipped while the daemons' librdkafka is older than 2.6.1: its SCRAM fails
against 4.x brokers (verified with 2.0.2 against 4.1.1), so mTLS is the way
there.
"""

import os
import re
import subprocess
import time
from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
import requests
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

import conftest
from conftest import (KAFKA_SH, LOG_DIR, PG_SH, PORT_OFFSET, ROOT, RUN_DIR, TOKENS, TOKENS_FILE,
                      Daemon, InventoryApi, OrdersApi, PaymentsApi, build_dir,
                      check_broker_version, kafka_sh_env, make_pki, parse_assignments,
                      run_script, uid, wait_until, write_tokens_file)



def _default_version():
    text = (ROOT / "deploy" / "kafka" / "versions.sh").read_text()
    return re.search(r"^KAFKA_DEFAULT_VERSION=(\S+)", text, re.M).group(1)


VERSION = conftest.KAFKA_VERSION or os.environ.get("KAFKA_VERSION") or _default_version()
MAJOR = int(VERSION.split(".")[0])
KPORT = (19392 if MAJOR == 3 else 19692) + PORT_OFFSET
KDIR = RUN_DIR / ("test-kafka-secure" if MAJOR == 3 else "test-kafka-secure-4")
DB_PREFIX = f"ksec{PORT_OFFSET}_"
SERVICES = {
    "order-service": (18480 + PORT_OFFSET, "orders"),
    "payment-service": (18481 + PORT_OFFSET, "payments"),
    "inventory-service": (18482 + PORT_OFFSET, "inventory"),
}
TOPICS = ["orders.created", "payments.completed", "inventory.reserved"]
ORDERCTL = build_dir() / "tools" / "orderctl"


def librdkafka_version():
    """The librdkafka the daemons and orderctl are linked with."""
    out = subprocess.run([str(ORDERCTL), "--version"], capture_output=True, text=True,
                         timeout=10).stdout
    m = re.search(r"librdkafka (\d+)\.(\d+)\.(\d+)", out)
    assert m, f"orderctl --version names no librdkafka version: {out!r}"
    return tuple(int(x) for x in m.groups())


RDKAFKA = librdkafka_version()
SCRAM_WORKS = MAJOR < 4 or RDKAFKA >= (2, 6, 1)
SCRAM_SKIP = ("librdkafka %d.%d.%d: its SCRAM fails against Kafka 4.x brokers (fixed in 2.6.1); "
              "use mTLS there" % RDKAFKA)
MODES = [pytest.param("scram", marks=pytest.mark.skipif(not SCRAM_WORKS, reason=SCRAM_SKIP)),
         "mtls"]


def env_file(principal, mode):
    return KDIR / "clients" / f"{principal}-{mode}.env"


def client_env(principal, mode, password=None):
    """The KAFKA_* settings of principal from kafka.sh's client file, which
    names the SASL password's file (KAFKA_SASL_PASSWORD_FILE); `password`
    (to test a wrong one) goes into a file of its own instead."""
    env = parse_assignments(env_file(principal, mode).read_text())
    if password and "KAFKA_SASL_PASSWORD_FILE" in env:
        f = KDIR / "secrets" / f"{principal}.test-password"
        f.write_text(password + "\n")
        f.chmod(0o600)
        env["KAFKA_SASL_PASSWORD_FILE"] = str(f)
    return env


def sasl_password(principal):
    return (KDIR / "secrets" / f"{principal}.password").read_text().strip()


def rk_conf(env, **extra):
    """librdkafka properties (python client) from KAFKA_* variables."""
    env = dict(env)
    pw_file = env.pop("KAFKA_SASL_PASSWORD_FILE", None)
    if pw_file:
        env["KAFKA_SASL_PASSWORD"] = Path(pw_file).read_text().strip()
    conf = {k[len("KAFKA_"):].lower().replace("_", "."): v for k, v in env.items()}
    conf.update(extra)
    return conf


def admin_conf(**extra):
    # mTLS for the harness's admin: works on 3.x and 4.x with any librdkafka
    return rk_conf(client_env("admin", "mtls"), **extra)


class SecureStack:
    def __init__(self):
        self.daemons = {}
        self.pg_env = {}
        self.mode = None
        self.pki = None
        self.orders = self.payments = self.inventory = None
        self.kafka_started = False

    # -- set-up

    def setup(self, pki_dir):
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        write_tokens_file()
        self.pki = make_pki(pki_dir)
        ca = str(self.pki / "ca.pem")
        for name, (port, _) in SERVICES.items():
            self.daemons[name] = Daemon(name, build_dir() / name / name, port, None,
                                        LOG_DIR / f"ksec-{name}.log")
            self.daemons[name].ca = ca
        base = {name: d.url for name, d in self.daemons.items()}
        self.orders = OrdersApi(base["order-service"], token="orders", ca=ca)
        self.payments = PaymentsApi(base["payment-service"], ca=ca)
        self.inventory = InventoryApi(base["inventory-service"], ca=ca)
        for d in self.daemons.values():
            d.kill_leftover()
        self._setup_postgres()
        run_script([KAFKA_SH, "clean", "--dir", KDIR], env=kafka_sh_env(VERSION), check=False)
        self.kafka_started = True
        out = run_script([KAFKA_SH, "start", "--secure", "--dir", KDIR, "--port", KPORT],
                         env=kafka_sh_env(VERSION))
        check_broker_version(KDIR, out, VERSION)
        got = parse_assignments(out)
        assert got.get("bootstrap") == f"127.0.0.1:{KPORT}", out
        assert got.get("bootstrap_mtls") == f"127.0.0.1:{KPORT + 200}", out
        self.orderctl("topics", "ensure", "--partitions", "3")
        out = self.orderctl("acls", "ensure")
        assert "acls: 0 ok, 26 created, 0 extra" in out, out
        # CreateAcls returns before every broker applies them: wait until the
        # operator's reach the broker (one request made them all)
        wait_until(lambda: (self.orderctl("dlt", "depth", principal="orderctl", check=False)
                            and self.last_rc == 0, self.last_rc), 30, "the ACLs to apply")
        time.sleep(1)

    def _setup_postgres(self):
        out = run_script([PG_SH, "ensure"])
        self.pg_env = {k: v for k, v in parse_assignments(out).items() if k.startswith("PG")}
        with psycopg.connect(self.dsn_raw("postgres"), autocommit=True) as conn:
            for _, db in SERVICES.values():
                conn.execute(f'DROP DATABASE IF EXISTS "{DB_PREFIX}{db}" WITH (FORCE)')
        run_script([PG_SH, "create-dbs", "--prefix", DB_PREFIX]
                   + [db for _, db in SERVICES.values()], env=dict(os.environ, **self.pg_env))

    def dsn_raw(self, dbname, user=None):
        kw = {"host": self.pg_env.get("PGHOST"), "port": self.pg_env.get("PGPORT"),
              "user": user or self.pg_env.get("PGUSER"),
              "password": None if user else self.pg_env.get("PGPASSWORD"), "dbname": dbname}
        return psycopg.conninfo.make_conninfo(**{k: v for k, v in kw.items() if v})

    def sql_one(self, db, query, params=None):
        with psycopg.connect(self.dsn_raw(DB_PREFIX + db), autocommit=True) as conn:
            row = conn.execute(query, params).fetchone()
            return row[0] if row else None

    def daemon_env(self, name, mode, password=None):
        drop = ("KAFKA_", "HTTP_", "DATABASE_URL", "CONSUMER_GROUP", "LOG_LEVEL")
        env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
        env.update(self.pg_env)
        env.update(LOG_LEVEL="info", HTTP_ADDR="127.0.0.1", HTTP_PORT=str(SERVICES[name][0]),
                   DATABASE_URL=self.dsn_raw(DB_PREFIX + SERVICES[name][1],
                                             user=DB_PREFIX + SERVICES[name][1]),
                   HTTP_AUTH="tokens", HTTP_TOKENS_FILE=str(TOKENS_FILE),
                   HTTP_TLS_CERT=str(self.pki / "server.pem"),
                   HTTP_TLS_KEY=str(self.pki / "server.key"))
        env.update(client_env(name, mode, password))
        return env

    def use(self, mode):
        """All three daemons running as their own principals over mode."""
        if self.mode == mode and all(d.running() for d in self.daemons.values()):
            return
        for d in self.daemons.values():
            if d.running():
                d.stop()
        for name, d in self.daemons.items():
            d.env = self.daemon_env(name, mode)
            d.start()
        for d in self.daemons.values():
            d.wait_ready(60)
        self.mode = mode

    def orderctl(self, *args, principal="admin", mode="mtls", check=True):
        cp = subprocess.run([str(ORDERCTL), "--config", str(env_file(principal, mode)),
                             *map(str, args)], capture_output=True, text=True, timeout=60,
                            env={k: v for k, v in os.environ.items()
                                 if not k.startswith("KAFKA_")})
        out = cp.stdout + cp.stderr
        if check:
            assert cp.returncode in (0, 1), f"orderctl {args} exited {cp.returncode}:\n{out}"
        self.last_rc = cp.returncode
        return out

    # -- teardown

    def teardown(self):
        problems = []
        for d in self.daemons.values():
            rc, killed = d.terminate()
            if killed:
                problems.append(f"{d.name} ignored SIGTERM")
        if self.kafka_started:
            try:
                run_script([KAFKA_SH, "stop", "--dir", KDIR], env=kafka_sh_env(VERSION),
                           timeout=120)
            except Exception as e:  # report, do not mask the test result
                problems.append(f"kafka.sh stop failed: {e}")
        return problems


@pytest.fixture(scope="module")
def sec(tmp_path_factory):
    st = SecureStack()
    conftest._STACK = st  # wait_until fails fast when one of our daemons dies
    try:
        st.setup(tmp_path_factory.mktemp("pki"))
        yield st
    finally:
        problems = st.teardown()
        conftest._STACK = None
    assert not problems, problems


# ---------------------------------------------------------------- helpers


def end_offsets(topic):
    c = Consumer(admin_conf(**{"group.id": uid("ksec-offsets")}))
    try:
        md = c.list_topics(topic, timeout=10)
        out = {}
        for p in md.topics[topic].partitions:
            out[p] = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10,
                                             cached=False)[1]
        return out
    finally:
        c.close()


def try_produce(conf, topic, timeout=10.0):
    """Produces one record with conf; returns the delivery error (None = written)."""
    p = Producer(dict(conf, **{"message.timeout.ms": int(timeout * 1000),
                               "socket.connection.setup.timeout.ms": 5000}))
    result = {}
    p.produce(topic, key=b"intruder", value=b'{"orderId":"x","approved":true}',
              on_delivery=lambda err, msg: result.setdefault("err", err))
    p.flush(timeout + 5)
    assert "err" in result, f"no delivery report for {topic} within {timeout + 5} s"
    return result["err"]


def try_consume(conf, topic, group, timeout=10.0):
    """Subscribes with conf/group; returns the first error (or 'record')."""
    c = Consumer(dict(conf, **{"group.id": group, "auto.offset.reset": "earliest",
                               "enable.auto.commit": False}))
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                return m.error()
            return "record"
        return None
    finally:
        c.close()


def place_three(sec):
    """A confirmed, a declined and an out-of-stock order; returns their ids."""
    c_ok, c_poor, c_out = uid("cust"), uid("cust"), uid("cust")
    sku, sku_few = uid("sku"), uid("sku")
    sec.payments.set_balance(c_ok, 10_000)
    sec.payments.set_balance(c_poor, 100)
    sec.payments.set_balance(c_out, 10_000)
    sec.inventory.set_stock(sku, 10)
    sec.inventory.set_stock(sku_few, 1)
    return (sec.orders.create_ok(c_ok, sku, 2, 1_000), sec.orders.create_ok(c_poor, sku, 1, 500),
            sec.orders.create_ok(c_out, sku_few, 3, 300))


def check_three(sec, ids, timeout=30):
    ok, poor, out = ids
    o = sec.orders.wait_settled(ok, timeout, need=("payment", "inventory"))
    assert o["status"] == "CONFIRMED", o
    o = sec.orders.wait_settled(poor, timeout, need=("payment",))
    assert o["status"] == "REJECTED" and o["payment"]["reason"] == "INSUFFICIENT_FUNDS", o
    o = sec.orders.wait_settled(out, timeout, need=("inventory",))
    assert o["status"] == "REJECTED" and o["inventory"]["reason"] == "OUT_OF_STOCK", o


def log_text(d):
    return d.log_path.read_text(errors="replace")


# ---------------------------------------------------------------- (a) the flow


@pytest.mark.parametrize("mode", MODES)
def test_flow_with_own_principals(sec, mode):
    sec.use(mode)
    ids = place_three(sec)
    check_three(sec, ids)
    for d in sec.daemons.values():
        assert "Kafka authentication failed" not in log_text(d)
        assert "Kafka denied" not in log_text(d)
        assert "superuser" not in log_text(d), f"{d.name} connected as a superuser"
        r = d.http_get("/readyz", timeout=5)
        assert r.status_code == 200 and r.json()["kafkaAccess"] == "ok", r.text


# ---------------------------------------------------------------- (b) denied


def _denied_cases(mode):
    pay = rk_conf(client_env("payment-service", mode))
    order = rk_conf(client_env("order-service", mode))
    sasl_port, mtls_port = f"127.0.0.1:{KPORT}", f"127.0.0.1:{KPORT + 200}"
    ca = str(KDIR / "tls" / "ca.pem")
    return [
        ("payment-service writes inventory.reserved", pay, "inventory.reserved"),
        ("order-service writes payments.completed", order, "payments.completed"),
        ("no SASL on the SASL_SSL port",
         {"bootstrap.servers": sasl_port, "security.protocol": "SSL", "ssl.ca.location": ca},
         "payments.completed"),
        ("no client certificate on the mTLS port",
         {"bootstrap.servers": mtls_port, "security.protocol": "SSL", "ssl.ca.location": ca},
         "payments.completed"),
        ("plaintext to the mTLS port", {"bootstrap.servers": mtls_port}, "payments.completed"),
        ("plaintext to the SASL_SSL port", {"bootstrap.servers": sasl_port}, "inventory.reserved"),
    ]


@pytest.mark.parametrize("mode", MODES)
def test_broker_denies_foreign_writes_and_unauthenticated_clients(sec, mode):
    for what, conf, topic in _denied_cases(mode):
        before = end_offsets(topic)
        err = try_produce(conf, topic, timeout=5)
        assert err is not None, f"{what}: the record was written"
        if "writes" in what:
            assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, f"{what}: {err}"
        assert end_offsets(topic) == before, f"{what}: {topic} grew"


@pytest.mark.parametrize("mode", MODES)
def test_broker_denies_reads_without_acl(sec, mode):
    pay = rk_conf(client_env("payment-service", mode))
    # a topic it does not consume, with its own group
    err = try_consume(pay, "payments.completed", "payment-service")
    assert isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err
    # a topic it does consume, with another service's group
    err = try_consume(pay, "orders.created", "order-service")
    assert isinstance(err, KafkaError) and err.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, err


# ---------------------------------------------------------------- (c) bad credentials


def _one_error_then_fixed(sec, mode, bad_env, pattern, hold=12):
    d = sec.daemons["order-service"]
    sec.use(mode)
    d.stop()
    d.env = bad_env
    d.start()
    # not ready, with the cause named once
    wait_until(lambda: (d.http_get("/readyz", timeout=2).status_code == 503
                        and d.http_get("/readyz", timeout=2).json()["kafkaAccess"]
                        != "ok", d.http_get("/readyz", timeout=2).text),
               30, "order-service /readyz 503 with kafkaAccess set")
    m = d.http_get("/metrics", timeout=5).text
    assert re.search(r"^orders_ready 0$", m, re.M), m
    # orders accepted meanwhile wait in the outbox
    ids = place_three(sec)
    time.sleep(hold)  # several reconnect rounds of every client
    r = d.http_get("/readyz", timeout=2)
    assert r.status_code == 503, f"ready again after {hold} s of failures: {r.text}"
    assert d.running(), "order-service died on the authentication failure"
    text = log_text(d).split("=== test harness: starting")[-1]
    lines = [ln for ln in text.splitlines() if re.search(pattern, ln)]
    assert len(lines) == 1, f"expected one line matching {pattern!r}, got {len(lines)}:\n" + \
        "\n".join(lines[:10])
    assert " error: " in lines[0], lines[0]
    n = sec.sql_one("orders", "SELECT count(*) FROM outbox")
    assert n >= 3, f"outbox holds {n} rows, expected the 3 new orders"
    for oid in ids:
        assert sec.orders.order(oid)["status"] == "PENDING"
    # fixed credential + restart: ready, and the orders settle
    d.stop()
    d.env = sec.daemon_env("order-service", mode)
    d.start()
    d.wait_ready(60)
    check_three(sec, ids, timeout=60)
    return lines[0]


@pytest.mark.skipif(not SCRAM_WORKS, reason=SCRAM_SKIP)
def test_wrong_password_not_ready_one_error_nothing_lost(sec):
    wrong = "wrong-" + uid("pw")
    line = _one_error_then_fixed(
        sec, "scram", sec.daemon_env("order-service", "scram", password=wrong),
        r"Kafka authentication failed for user order-service",
        hold=65)  # beyond the 60 s a failure counts: the retries renew it
    assert wrong not in log_text(sec.daemons["order-service"]), "the password reached the log"
    assert "SCRAM-SHA-512" in line or "credentials" in line, line


def test_rejected_certificate_not_ready_one_error_nothing_lost(sec, tmp_path):
    # a certificate with the right name from a CA the broker does not trust
    key, crt = tmp_path / "rogue.key", tmp_path / "rogue.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=order-service", "-keyout", str(key), "-out", str(crt)],
                   check=True, capture_output=True, timeout=60)
    env = sec.daemon_env("order-service", "mtls")
    env.update(KAFKA_SSL_CERTIFICATE_LOCATION=str(crt), KAFKA_SSL_KEY_LOCATION=str(key))
    _one_error_then_fixed(sec, "mtls", env, r"Kafka TLS handshake failed for certificate")


def _denied_then_restored(sec, daemon, acl, pattern, code, blocks=True):
    """Removes one ACL of a running daemon, places orders, expects the daemon
    to turn not ready with one loud line, restores the ACL and expects every
    order to settle (nothing lost) and the daemon to be ready again."""
    sec.use(sec.mode or "mtls")
    d = sec.daemons[daemon]
    start = len(log_text(d))
    kafka_acls("--remove", "--force", *acl)
    try:
        ids = place_three(sec)

        def denied():
            r = d.http_get("/readyz", timeout=2)
            return r.status_code == 503 and r.json()["kafkaAccess"] == code, r.text
        wait_until(denied, 60, f"{daemon} not ready with kafkaAccess {code}")
        time.sleep(5)
        lines = [ln for ln in log_text(d)[start:].splitlines() if re.search(pattern, ln)]
        assert len(lines) == 1 and " error: " in lines[0], lines
        if blocks:  # the order that needs both services to confirm waits
            assert sec.orders.order(ids[0])["status"] == "PENDING"
    finally:
        out = sec.orderctl("acls", "ensure")
        assert "1 created" in out, out
    check_three(sec, ids, timeout=120)
    wait_until(lambda: d.http_get("/readyz", timeout=2).status_code == 200, 60,
               f"{daemon} ready again")


def test_topic_write_denied_is_loud_and_loses_nothing(sec):
    _denied_then_restored(sec, "payment-service",
                          ["--allow-principal", "User:payment-service", "--operation", "Write",
                           "--topic", "payments.completed"],
                          r"Kafka denied access to a topic for", "TOPIC_AUTHORIZATION_FAILED")
    assert sec.sql_one("payments", "SELECT count(*) FROM outbox") == 0


def test_group_denied_is_loud_and_loses_nothing(sec):
    _denied_then_restored(sec, "inventory-service",
                          ["--allow-principal", "User:inventory-service", "--operation", "Read",
                           "--group", "inventory-service"],
                          r"Kafka denied access to the consumer group for",
                          "GROUP_AUTHORIZATION_FAILED", blocks=False)
    # A member keeps fetching its assigned partitions without the group ACL
    # (Fetch needs READ on the topic only); what fails is the group protocol
    # (heartbeats, offset commits): loud, and a restart re-reads from the
    # last commit (the consumers dedupe).


# ---------------------------------------------------------------- (d) orderctl


def kafka_acls(*args):
    """Kafka's own kafka-acls tool (the Python client here has no ACL API),
    as admin over mTLS."""
    cls = "kafka.admin.AclCommand" if MAJOR == 3 else "org.apache.kafka.tools.AclCommand"
    libs = os.environ.get("KAFKA_LIBS_DIR") or str(RUN_DIR / "kafka-libs" / VERSION)
    cp = subprocess.run(["java", "-Xmx256m", "-XX:TieredStopAtLevel=1", "-cp", f"{libs}/*", cls,
                         "--bootstrap-server", f"127.0.0.1:{KPORT + 200}", "--command-config",
                         str(KDIR / "clients" / "admin.properties"), *args],
                        capture_output=True, text=True, timeout=120)
    assert cp.returncode == 0, f"kafka-acls {args} exited {cp.returncode}:\n{cp.stdout}{cp.stderr}"
    return cp.stdout


def test_acls_ensure_reports_and_repairs_drift(sec):
    out = sec.orderctl("acls", "ensure")
    assert sec.last_rc == 0 and "acls: 26 ok, 0 created, 0 extra" in out, out
    # one missing (the operator's, so that no daemon notices)
    kafka_acls("--remove", "--force", "--allow-principal", "User:orderctl", "--operation", "Read",
               "--topic", "orders.created.DLT")
    out = sec.orderctl("acls", "ensure", "--dry-run")
    assert sec.last_rc == 1, out
    assert "would create: User:orderctl ALLOW READ TOPIC:orders.created.DLT" in out, out
    out = sec.orderctl("acls", "ensure")
    assert sec.last_rc == 0, out
    assert "created: User:orderctl ALLOW READ TOPIC:orders.created.DLT" in out, out
    assert "acls: 25 ok, 1 created, 0 extra" in out, out
    # one extra: reported, kept, then pruned
    kafka_acls("--add", "--allow-principal", "User:orderctl", "--operation", "Read",
               "--topic", "orders.created")
    out = sec.orderctl("acls", "ensure")
    assert sec.last_rc == 1, out
    assert "extra: User:orderctl ALLOW READ TOPIC:orders.created" in out, out
    out = sec.orderctl("acls", "ensure")
    assert sec.last_rc == 1 and "1 extra" in out, out
    out = sec.orderctl("acls", "ensure", "--prune")
    assert sec.last_rc == 0 and "1 removed" in out, out
    out = sec.orderctl("acls", "ensure")
    assert sec.last_rc == 0 and "acls: 26 ok, 0 created, 0 extra" in out, out
    # another CONSUMER_GROUP: its ACL is missing, the default group's is extra
    out = sec.orderctl("acls", "ensure", "--dry-run", "--group", "payment-service=pay-2")
    assert sec.last_rc == 1, out
    assert "would create: User:payment-service ALLOW READ GROUP:pay-2" in out, out
    assert "extra: User:payment-service ALLOW READ GROUP:payment-service" in out, out
    assert "acls: 25 ok, 1 to create, 1 extra" in out, out


def test_orderctl_dlt_tail_as_operator_via_config(sec):
    sec.use(sec.mode or "mtls")
    key = uid("poison")
    p = Producer(admin_conf())
    p.produce("orders.created", key=key.encode(), value=b"not json at all")
    assert p.flush(15) == 0

    def tailed():
        out = sec.orderctl("dlt", "tail", principal="orderctl")
        return key in out, out
    out = wait_until(tailed, 30, f"the poison record {key} in orderctl dlt tail")[1]
    assert "orders.created.DLT" in out, out
    # the operator principal can not write what only a daemon writes
    err = try_produce(rk_conf(client_env("orderctl", "mtls")), "orders.created.DLT", timeout=8)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err


def test_orderctl_config_file_syntax_and_precedence(tmp_path):
    """--config: KAFKA_* lines (comments, quotes) become settings, a variable
    set in the environment wins, --bootstrap wins over both, a bad line is a
    usage error, a world-readable file with a password gets a warning."""
    cfg = tmp_path / "orderctl.env"
    cfg.write_text('# comment\n\n  ; also a comment\nKAFKA_BOOTSTRAP_SERVERS="127.0.0.1:1"\n'
                   "KAFKA_SASL_PASSWORD='not-used'\nDATABASE_URL=skipped\n")
    cfg.chmod(0o644)
    base = {k: v for k, v in os.environ.items() if not k.startswith("KAFKA_")}

    def run(*args, **env):
        cp = subprocess.run([str(ORDERCTL), *args, "--timeout", "1", "dlt", "depth"],
                            capture_output=True, text=True, timeout=30, env=dict(base, **env))
        return cp.returncode, cp.stderr

    rc, err = run("--config", str(cfg))
    assert rc == 3 and "brokers 127.0.0.1:1:" in err, err
    assert "readable by others" in err, err
    rc, err = run("--config", str(cfg), KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:2")
    assert rc == 3 and "brokers 127.0.0.1:2:" in err, err
    rc, err = run("--bootstrap", "127.0.0.1:3", "--config", str(cfg))
    assert rc == 3 and "brokers 127.0.0.1:3:" in err, err
    cfg.chmod(0o600)
    rc, err = run("--config", str(cfg))
    assert "readable by others" not in err, err
    bad = tmp_path / "bad.env"
    bad.write_text("KAFKA_OK=1\nthis is no assignment\n")
    rc, err = run("--config", str(bad))
    assert rc == 2 and "bad.env:2: not a KEY=VALUE line" in err, err
    rc, err = run("--config", str(tmp_path / "missing.env"))
    assert rc == 2 and "cannot read --config" in err, err


# ---------------------------------------------------------------- secrets


def _pem_body_lines(path):
    return [ln for ln in Path(path).read_text().splitlines()
            if ln and not ln.startswith("-----") and len(ln) >= 16]


def test_zz_no_secret_in_any_log_or_metrics(sec):
    """After everything above (the flows, the failures, the restarts): no
    SASL password, private key or HTTP token in a daemon's log or /metrics."""
    sec.use(sec.mode or "mtls")
    secrets = {f"sasl password of {p.stem}": p.read_text().strip()
               for p in (KDIR / "secrets").glob("*.password")}
    secrets.update({f"token {name}": tok for name, (tok, _) in TOKENS.items()})
    keys = [sec.pki / "server.key", *(KDIR / "tls").glob("*.key")]
    for k in keys:
        for i, ln in enumerate(_pem_body_lines(k)):
            secrets[f"line {i + 1} of {k.name}"] = ln
    assert len(secrets) > 10, secrets.keys()
    for d in sec.daemons.values():
        texts = {"log": log_text(d), "/metrics": d.http_get("/metrics").text}
        for where, text in texts.items():
            found = [what for what, value in secrets.items() if value in text]
            assert not found, f"{d.name}'s {where} holds {found}"

