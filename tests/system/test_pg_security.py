"""
PostgreSQL secured, and secrets kept out of everything a daemon prints.

A private cluster of our own (deploy/postgres/pg.sh ensure --secure: TLS from
a throw-away CA, `hostssl` + scram-sha-256 for every role but the superuser,
the superuser on the unix socket only) with the three databases, each owned
by its role, and random passwords in a pgpass file (pg.sh create-dbs
--passfile). Then, with a real order-service against it (and the test
broker of the `stack` fixture):

- DATABASE_URL without a password + PGPASSFILE (0600, and 0400 as a systemd
  credential is) + sslmode=verify-full with the CA: ready, over TLS, as its
  unprivileged role; nothing in its log shows the password, no superuser
  warning.
- a wrong password in the passfile: never ready (the HTTP server starts only
  once the database is reachable, so /readyz does not answer 200), one clear
  error in the log (not one per attempt); ready once the passfile is fixed and
  the daemon restarted.
- verify-full against a server whose certificate does not name the host, or
  with a CA that did not sign it: refused, with libpq's clear error.
- a passfile of mode 0644: libpq warns and ignores it (no password sent).
- order-service's role cannot connect to payments or inventory; no role of a
  daemon is a superuser.
- secrets: with a SCRAM-looking KAFKA_SASL_PASSWORD (in the environment, and
  through KAFKA_SASL_PASSWORD_FILE), a DATABASE_URL with password=..., a TLS
  key for HTTPS and LOG_LEVEL=debug, no secret appears in the daemon's log,
  /metrics, --help output or problem+json bodies, while the masked
  configuration lines ("***") are there.

The extra order-service runs in its own consumer group, and no order is
placed through it, so the stack's daemons see nothing of it.
"""

import base64
import os
import re
import secrets as pysecrets
import shutil
import stat
import subprocess
import tempfile
import time
from pathlib import Path

import psycopg
import pytest
import requests

from conftest import (DB_PREFIX, LOG_DIR, PG_SH, PORT_OFFSET, SERVICES, build_dir, port_in_use,
                      run_script, uid, wait_until)

PG_PORT = 25432 + PORT_OFFSET
DAEMON_PORT = SERVICES["order-service"][0] + 40
ROLE = DB_PREFIX + "orders"
DBS = ("orders", "payments", "inventory")

# What this file adds to the stack's order-service environment for its own
# daemons, in one place. The HTTP side (HTTP_AUTH, HTTP_TOKENS_FILE) is the
# stack's: with bearer tokens on, /readyz and /metrics stay open and the API
# answers 401 problem+json, which the secrets test reads as well.
EXTRA_ENV = {"LOG_LEVEL": "info"}
# A daemon started outside the stack (configuration checks only, it never
# gets as far as HTTP): the one place this file switches HTTP auth off.
STANDALONE_ENV = {"HTTP_AUTH": "none", "HTTP_PORT": "1", "DATABASE_URL": "host=127.0.0.1 port=1"}


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def pg():
    """The private secure cluster: {dir, env (superuser), ca, passfile, passwords}."""
    tmp = Path(tempfile.mkdtemp(prefix=f"pgsec{PORT_OFFSET}-"))
    tmp.chmod(0o755)  # user postgres must reach the cluster's folder
    d = tmp / "pg"
    try:
        out = run_script([PG_SH, "ensure", "--secure", "--dir", d, "--private-port", PG_PORT])
        env = dict(l.split("=", 1) for l in out.splitlines() if "=" in l)
        assert env["PGHOST"] == str(d) and env["PGSSLROOTCERT"] == f"{d}.ca.pem", out
        passfile = tmp / "pgpass"
        run_script([PG_SH, "create-dbs", "--prefix", DB_PREFIX, "--passfile", passfile, *DBS],
                   env=dict(os.environ, **env))
        assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
        passwords = {}
        for line in passfile.read_text().splitlines():
            host, port, db, user, pw = line.split(":")
            assert (host, port, db) == ("*", str(PG_PORT), user), line
            passwords[user] = pw
        assert set(passwords) == {DB_PREFIX + n for n in DBS}
        assert all(re.fullmatch(r"[A-Za-z0-9]{32}", p) for p in passwords.values()), passwords.keys()
        yield {"dir": d, "tmp": tmp, "env": env, "ca": env["PGSSLROOTCERT"],
               "passfile": passfile, "passwords": passwords}
    finally:
        subprocess.run([str(PG_SH), "stop", "--dir", str(d)], capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def su_sql(pg, query, params=None, db="postgres"):
    """As the superuser over the cluster's unix socket."""
    with psycopg.connect(host=pg["env"]["PGHOST"], port=PG_PORT, user="postgres", dbname=db,
                         autocommit=True) as c:
        return c.execute(query, params).fetchall()


def daemon_url(pg, **kw):
    kw = {"host": "localhost", "port": PG_PORT, "dbname": ROLE, "user": ROLE,
          "sslmode": "verify-full", "sslrootcert": pg["ca"], **kw}
    return " ".join(f"{k}={v}" for k, v in kw.items() if v is not None)


class Secure:
    """One extra order-service against the secure cluster."""

    def __init__(self, stack, pg, name):
        main = stack.daemons["order-service"]
        base = {k: v for k, v in main.env.items() if not k.startswith("PG")}
        self.env = dict(base, **EXTRA_ENV, HTTP_PORT=str(DAEMON_PORT),
                        CONSUMER_GROUP=uid("pgsec-order-service"))
        self.daemon = type(main)(name, main.binary, DAEMON_PORT, self.env,
                                 LOG_DIR / f"{name}.log")
        self.pg = pg

    def start(self, **env):
        wait_until(lambda: not port_in_use(DAEMON_PORT), 15, f"port {DAEMON_PORT} free")
        self.daemon.env = {k: v for k, v in dict(self.env, **env).items() if v is not None}
        self.daemon.start()
        return self

    def log(self):
        return self.daemon.log_path.read_text(errors="replace")

    def stop(self):
        self.daemon.terminate()


@pytest.fixture
def secure(stack, pg, request):
    name = request.node.name.removeprefix("test_").replace("[", "-").replace("]", "")
    s = Secure(stack, pg, f"order-service-pgsec-{name}")
    yield s
    s.stop()


def passfile_copy(pg, name, mode=0o600, password=None):
    """A passfile for order-service's role only (its real password unless
    another is given), with the given mode."""
    p = pg["tmp"] / name
    pw = password if password is not None else pg["passwords"][ROLE]
    p.write_text(f"*:{PG_PORT}:{ROLE}:{ROLE}:{pw}\n")
    p.chmod(mode)
    return p


def readyz(port=DAEMON_PORT, scheme="http", **kw):
    try:
        return requests.get(f"{scheme}://127.0.0.1:{port}/readyz", timeout=2, **kw).status_code
    except requests.RequestException:
        return None


def never_ready(secure, seconds):
    """For `seconds`, /readyz never answers 200 and the daemon keeps running."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert readyz() != 200, f"ready although it should not be\n{secure.daemon.log_tail()}"
        assert secure.daemon.running(), f"exited\n{secure.daemon.log_tail()}"
        time.sleep(0.2)


def wait_log(secure, text, timeout=20):
    return wait_until(lambda: text in secure.log(), timeout, f"{text!r} in {secure.daemon.log_path}")


# ---------------------------------------------------------------- the cluster


def test_the_secure_cluster_refuses_plain_tcp_and_the_superuser_over_tcp(pg):
    pw = pg["passwords"][ROLE]
    with pytest.raises(psycopg.OperationalError, match="no encryption"):
        psycopg.connect(host="127.0.0.1", port=PG_PORT, user=ROLE, dbname=ROLE, password=pw,
                        sslmode="disable", connect_timeout=5)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(host="127.0.0.1", port=PG_PORT, user="postgres", dbname="postgres",
                        password="guess", sslmode="require", connect_timeout=5)
    hba = su_sql(pg, "SELECT type, user_name, auth_method FROM pg_hba_file_rules"
                     " WHERE error IS NULL ORDER BY line_number")
    assert ("local", ["postgres"], "trust") in hba
    assert all(t in ("local", "hostssl", "hostnossl") for t, _, _ in hba), hba
    assert all(m in ("scram-sha-256", "reject") for t, _, m in hba if t != "local"), hba
    # the password is stored hashed
    stored = su_sql(pg, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (ROLE,))[0][0]
    assert stored.startswith("SCRAM-SHA-256$") and pw not in stored
    # and never reached the server's log
    assert pw not in (pg["dir"] / "server.log").read_text(errors="replace")


@pytest.mark.parametrize("other", ["payments", "inventory"])
def test_order_service_role_cannot_connect_to_another_database(pg, other):
    with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
        psycopg.connect(host="localhost", port=PG_PORT, user=ROLE, dbname=DB_PREFIX + other,
                        password=pg["passwords"][ROLE], sslmode="verify-full",
                        sslrootcert=pg["ca"], connect_timeout=5)


def test_no_daemon_role_is_privileged(pg):
    rows = su_sql(pg, "SELECT rolname, rolsuper, rolcreatedb, rolcreaterole, rolreplication,"
                      " rolbypassrls FROM pg_roles WHERE rolname = ANY(%s) ORDER BY 1",
                  ([DB_PREFIX + n for n in DBS],))
    assert sorted(r[0] for r in rows) == sorted(DB_PREFIX + n for n in DBS)
    assert all(r[1:] == (False,) * 5 for r in rows), rows


def test_rotating_passwords_replaces_the_line_and_the_old_one_stops_working(pg):
    role = DB_PREFIX + "inventory"
    old = pg["passwords"][role]
    run_script([PG_SH, "passwords", "--passfile", pg["passfile"], "--prefix", DB_PREFIX,
                "inventory"], env=dict(os.environ, **pg["env"]))
    lines = pg["passfile"].read_text().splitlines()
    assert stat.S_IMODE(pg["passfile"].stat().st_mode) == 0o600
    mine = [l for l in lines if l.split(":")[3] == role]
    assert len(mine) == 1 and len(lines) == 3, lines  # the other roles' lines kept
    new = mine[0].split(":")[4]
    assert new != old
    kw = dict(host="localhost", port=PG_PORT, user=role, dbname=role, sslmode="verify-full",
              sslrootcert=pg["ca"], connect_timeout=5)
    psycopg.connect(password=new, **kw).close()
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(password=old, **kw)
    pg["passwords"][role] = new


# ---------------------------------------------------------------- a daemon on it


@pytest.mark.parametrize("mode", [0o600, 0o400])
def test_daemon_connects_with_passfile_over_verified_tls(secure, pg, mode):
    pf = passfile_copy(pg, f"pgpass-{mode:o}", mode)
    secure.start(DATABASE_URL=daemon_url(pg), PGPASSFILE=str(pf))
    secure.daemon.wait_ready()
    sessions = su_sql(pg, "SELECT a.usename, s.ssl, r.rolsuper FROM pg_stat_activity a"
                          " JOIN pg_stat_ssl s USING (pid) JOIN pg_roles r ON r.rolname = a.usename"
                          " WHERE a.datname = %s AND a.application_name = 'order-service'",
                      (ROLE,))
    assert sessions and all(s == (ROLE, True, False) for s in sessions), sessions
    log = secure.log()
    assert pg["passwords"][ROLE] not in log
    assert "as superuser" not in log
    assert "waiting for database" not in log, log[-2000:]


def test_wrong_password_is_one_clear_error_until_fixed(secure, pg):
    pf = passfile_copy(pg, "pgpass-wrong", password="not-the-password-" + pysecrets.token_hex(8))
    secure.start(DATABASE_URL=daemon_url(pg), PGPASSFILE=str(pf))
    wait_log(secure, "password authentication failed")
    never_ready(secure, 8)  # several attempts (back-off 0.2 s, 0.4 s, ... 5 s)
    said = [l for l in secure.log().splitlines() if "password authentication failed" in l]
    assert len(said) == 1, said
    # libpq's words, '"' turned to "'" by the log line's quoting
    assert "waiting for database" in said[0] and f"for user '{ROLE}'" in said[0], said
    assert "not-the-password" not in secure.log()
    # fixed passfile, restart: ready
    passfile_copy(pg, "pgpass-wrong")
    secure.stop()
    secure.start(DATABASE_URL=daemon_url(pg), PGPASSFILE=str(pf))
    secure.daemon.wait_ready()


def test_world_readable_passfile_is_ignored_by_libpq(secure, pg):
    pf = passfile_copy(pg, "pgpass-0644", 0o644)
    secure.start(DATABASE_URL=daemon_url(pg), PGPASSFILE=str(pf))
    wait_log(secure, "has group or world access")
    wait_log(secure, "no password supplied")
    never_ready(secure, 3)


@pytest.fixture(scope="module")
def other_ca(pg):
    """A CA that signed nothing of the server's."""
    d = pg["tmp"] / "other-ca"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=another CA", "-keyout", "ca.key", "-out", "ca.pem", cwd=d)
    return d / "ca.pem"


@pytest.mark.parametrize("case", ["name", "ca"])
def test_verify_full_refuses_a_server_it_cannot_verify(secure, pg, other_ca, case):
    pf = passfile_copy(pg, f"pgpass-{case}")
    if case == "name":  # the right server, under a name its certificate does not carry
        url = daemon_url(pg, host="db.invalid", hostaddr="127.0.0.1")
        expect = "does not match host name 'db.invalid'"
    else:
        url = daemon_url(pg, sslrootcert=other_ca)
        expect = "certificate verify failed"
    secure.start(DATABASE_URL=url, PGPASSFILE=str(pf))
    wait_log(secure, expect)
    never_ready(secure, 2)
    assert not su_sql(pg, "SELECT 1 FROM pg_stat_activity WHERE usename = %s", (ROLE,))


# ---------------------------------------------------------------- secrets


def scram_looking():
    """A password as a SCRAM user would get one: 32 random bytes, base64."""
    return base64.b64encode(os.urandom(32)).decode().rstrip("=")


@pytest.fixture(scope="module")
def tls_key(pg):
    """A key and certificate for HTTPS (helper-made, signed by nobody)."""
    d = pg["tmp"] / "http-tls"
    d.mkdir()
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj",
            "/CN=localhost", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", "key.pem",
            "-out", "cert.pem", cwd=d)
    (d / "key.pem").chmod(0o600)
    return d / "key.pem", d / "cert.pem"


@pytest.mark.parametrize("via", ["env", "file"])
def test_no_secret_in_log_metrics_help_or_problems(secure, pg, tls_key, via):
    db_pw = pg["passwords"][ROLE]
    sasl_pw, key_pw = scram_looking(), scram_looking()
    key, cert = tls_key
    key_body = [l for l in key.read_text().splitlines() if l and not l.startswith("-----")]
    env = {"DATABASE_URL": daemon_url(pg, password=f"'{db_pw}'"), "LOG_LEVEL": "debug",
           # accepted by librdkafka whatever the protocol; the PLAINTEXT test
           # broker never asks for them
           "KAFKA_SASL_USERNAME": "order-service",
           "KAFKA_SSL_KEY_PASSWORD": key_pw,
           "HTTP_TLS_CERT": str(cert), "HTTP_TLS_KEY": str(key)}
    if via == "env":
        env["KAFKA_SASL_PASSWORD"] = sasl_pw
    else:
        f = pg["tmp"] / "kafka-password"
        f.write_text(sasl_pw + "\n")
        f.chmod(0o400)
        env["KAFKA_SASL_PASSWORD_FILE"] = str(f)
    help_out = subprocess.run([str(secure.daemon.binary), "--help"], capture_output=True,
                              text=True, env=dict(secure.env, **env), timeout=30)
    assert help_out.returncode == 0, help_out.stderr
    # HTTPS once the daemon knows HTTP_TLS_* (else they are no variables of its)
    https = "HTTP_TLS_KEY" in help_out.stdout
    scheme, verify = ("https", str(cert)) if https else ("http", None)
    secure.start(**env)
    wait_until(lambda: readyz(scheme=scheme, verify=verify) == 200, 30,
               f"{secure.daemon.name} ready over {scheme}")
    base = f"{scheme}://127.0.0.1:{DAEMON_PORT}"
    bodies = []
    for method, path, body in [("GET", "/orders/" + uid("missing"), None),
                               ("POST", "/orders", b"{not json"),
                               ("POST", "/orders", b'{"customerId": 1}'),
                               ("PUT", "/no/such/route", b"x"),
                               ("GET", "/metrics", None)]:
        r = requests.request(method, base + path, data=body, timeout=10, verify=verify)
        if path != "/metrics":
            assert r.status_code >= 400 and "problem+json" in r.headers.get("Content-Type", ""), \
                (method, path, r.status_code, r.headers, r.text)
        else:
            assert r.status_code == 200 and "orders_ready 1" in r.text, r.text[:500]
        bodies.append(r.text)
    secure.stop()
    log = secure.log()
    # it did print its configuration, masked
    assert "config DATABASE_URL=" in log and "password=***" in log, log[:3000]
    assert ('config KAFKA_SASL_PASSWORD="***"' in log if via == "env"
            else f'config KAFKA_SASL_PASSWORD_FILE="{env["KAFKA_SASL_PASSWORD_FILE"]}"' in log)
    assert 'config KAFKA_SSL_KEY_PASSWORD="***"' in log
    outputs = {"log": log, "--help": help_out.stdout + help_out.stderr,
               "HTTP responses": "\n".join(bodies)}
    for secret in [db_pw, sasl_pw, key_pw, *key_body]:
        for what, text in outputs.items():
            assert secret not in text, f"a secret ({secret[:4]}...) in the {what}"


@pytest.mark.parametrize("case", ["both", "missing", "too-big"])
def test_kafka_secret_file_mistakes_stop_daemon_and_orderctl(tmp_path, case):
    """Config errors of KAFKA_<NAME>_FILE, before anything is reached: the
    daemon exits 78 naming the variable, orderctl refuses too; neither
    prints the secret."""
    pw = scram_looking()
    f = tmp_path / "kafka-password"
    f.write_text(pw + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KAFKA_", "HTTP_"))}
    env.update(STANDALONE_ENV, KAFKA_SASL_PASSWORD_FILE=str(f))
    if case == "both":
        env["KAFKA_SASL_PASSWORD"] = pw
        want = "both KAFKA_SASL_PASSWORD and KAFKA_SASL_PASSWORD_FILE are set"
    elif case == "missing":
        env["KAFKA_SASL_PASSWORD_FILE"] = str(tmp_path / "no-such-file")
        want = f'cannot read KAFKA_SASL_PASSWORD_FILE="{tmp_path}/no-such-file"'
    else:
        f.write_text("x" * (64 * 1024 + 1))
        want = "KAFKA_SASL_PASSWORD_FILE"
    daemon = build_dir() / "order-service" / "order-service"
    r = subprocess.run([str(daemon)], env=env, capture_output=True, text=True, timeout=30)
    out = r.stdout + r.stderr
    assert r.returncode == 78 and want in out and "configuration error" in out, (r.returncode, out)
    assert pw not in out
    r = subprocess.run([str(build_dir() / "tools" / "orderctl"), "dlt", "depth",
                        "--bootstrap", "127.0.0.1:1"], env=env, capture_output=True, text=True,
                       timeout=30)
    assert r.returncode != 0 and want in r.stderr, (r.returncode, r.stderr)
    assert pw not in r.stdout + r.stderr
