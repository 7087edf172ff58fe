"""
System tests of orderctl's host set-up commands: `db create` (a service's
role and database over an administrator's connection, optionally with a
password and its pgpass file) against the real PostgreSQL, and `token init`
(a host's token file and its clients' tokens). No broker, no daemons: the
package test (test_package.py) runs both again on installed packages and
places an order through daemons set up with them.

Databases and roles are named test<offset>_setup_*; they are dropped before
and after each test.

Environment: ORDERS_BUILD_DIR (default <root>/build/dev) holds tools/orderctl;
TEST_PORT_OFFSET is part of the names.
"""

import base64
import hashlib
import hmac
import os
import stat
import subprocess

import psycopg
import pytest

from conftest import PG_SH, build_dir, parse_assignments, run_script, token_hash

PREFIX = f"test{int(os.environ.get('TEST_PORT_OFFSET', '0'))}_setup_"
ALL_SCOPES = ("orders:write,orders:read,payments:read,payments:admin,inventory:read,"
              "inventory:admin,metrics:read")


@pytest.fixture(scope="module")
def pg_env():
    out = run_script([PG_SH, "ensure"])
    return {k: v for k, v in parse_assignments(out).items() if k.startswith("PG")}


def admin_dsn(env, db="postgres"):
    return f"host={env['PGHOST']} port={env['PGPORT']} user={env['PGUSER']} dbname={db}"


def drop(env, name):
    with psycopg.connect(admin_dsn(env), autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        c.execute(f'DROP ROLE IF EXISTS "{name}"')


@pytest.fixture
def dbname(pg_env):
    name = PREFIX + "orders"
    drop(pg_env, name)
    yield name
    drop(pg_env, name)


def orderctl(*args, env=None):
    return subprocess.run([str(build_dir() / "tools" / "orderctl"), *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=60)


def one(env, sql, params=None):
    with psycopg.connect(admin_dsn(env), autocommit=True) as c:
        cur = c.execute(sql, params)
        return cur.fetchone() if cur.description else None


def scram_matches(verifier, password):
    """True if a PostgreSQL SCRAM-SHA-256 verifier was made from password."""
    mech, rest = verifier.split("$", 1)
    iters_salt, keys = rest.split("$")
    iters, salt = iters_salt.split(":")
    stored_key = keys.split(":")[0]
    salted = hashlib.pbkdf2_hmac("sha256", password.encode(), base64.b64decode(salt), int(iters))
    client_key = hmac.new(salted, b"Client Key", hashlib.sha256).digest()
    return mech == "SCRAM-SHA-256" and base64.b64encode(
        hashlib.sha256(client_key).digest()).decode() == stored_key


def test_db_create_makes_an_owned_database_only_its_role_may_use(pg_env, dbname):
    env = dict(os.environ, **pg_env)
    r = orderctl("db", "create", "order-service", "--database", dbname, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == (f"DATABASE_URL=host={pg_env['PGHOST']} port={pg_env['PGPORT']} "
                        f"dbname={dbname} user={dbname}\n")
    login, superuser, createdb, createrole, repl = one(
        pg_env, "SELECT rolcanlogin, rolsuper, rolcreatedb, rolcreaterole, rolreplication "
        "FROM pg_roles WHERE rolname = %s", (dbname,))
    assert (login, superuser, createdb, createrole, repl) == (True, False, False, False, False)
    assert one(pg_env, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s",
               (dbname,))[0] == dbname
    # PUBLIC lost CONNECT: a role that is neither owner nor superuser cannot connect.
    assert one(pg_env, "SELECT has_database_privilege('public', %s, 'CONNECT')",
               (dbname,))[0] is False
    assert one(pg_env, "SELECT has_database_privilege(%s, %s, 'CONNECT')",
               (dbname, dbname))[0] is True
    # The daemon's role can create its tables there.
    with psycopg.connect(f"host={pg_env['PGHOST']} port={pg_env['PGPORT']} user={dbname} "
                         f"dbname={dbname}", autocommit=True) as c:
        c.execute("CREATE TABLE t (x int)")

    # Again: nothing to create, attributes and grants set again, exit 0.
    one(pg_env, f'ALTER ROLE "{dbname}" CREATEDB')
    r = orderctl("db", "create", "order-service", "--database", dbname, env=env)
    assert r.returncode == 0, r.stderr
    assert "both existed" in r.stderr
    assert one(pg_env, "SELECT rolcreatedb FROM pg_roles WHERE rolname = %s",
               (dbname,))[0] is False


def test_db_create_pgpass_sets_a_scram_password_and_writes_its_file(pg_env, dbname, tmp_path):
    env = dict(os.environ, **pg_env)
    passfile = tmp_path / "credentials" / "order-service" / "pgpass"
    r = orderctl("db", "create", "order-service", "--database", dbname, "--pgpass", passfile,
                 env=env)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(passfile.stat().st_mode) == 0o600
    assert stat.S_IMODE(passfile.parent.stat().st_mode) == 0o700
    line = passfile.read_text()
    host, port, db, role, password = line.rstrip("\n").split(":")
    assert (host, port, db, role) == ("*", "*", dbname, dbname)
    assert len(password) == 32 and password.isalnum()
    verifier = one(pg_env, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (dbname,))[0]
    assert scram_matches(verifier, password), verifier
    assert password not in r.stdout + r.stderr

    # Again: a new password (rotation), the file follows.
    r = orderctl("db", "create", "order-service", "--database", dbname, "--pgpass", passfile,
                 env=env)
    assert r.returncode == 0, r.stderr
    password2 = passfile.read_text().rstrip("\n").split(":")[4]
    assert password2 != password
    verifier = one(pg_env, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (dbname,))[0]
    assert scram_matches(verifier, password2)


def test_db_create_refuses_what_it_cannot_do(pg_env):
    env = dict(os.environ, **pg_env)
    assert orderctl("db", "create", "shipping-service", env=env).returncode == 2
    assert orderctl("db", "create", "order-service", "--role", "Robert'); DROP",
                    env=env).returncode == 2
    assert orderctl("db", "create", env=env).returncode == 2
    r = orderctl("db", "create", "order-service", "--admin", "host=127.0.0.1 port=1 "
                 "connect_timeout=2", env=env)
    assert r.returncode == 3 and "could not connect as administrator" in r.stderr


def test_token_init_writes_the_token_file_and_prints_each_token_once(tmp_path):
    f = tmp_path / "tokens"
    r = orderctl("token", "init", "--file", f)
    assert r.returncode == 0, r.stderr
    tokens = parse_assignments(r.stdout)
    assert sorted(tokens) == ["ADMIN_TOKEN", "ORDERS_TOKEN"]
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    lines = [ln for ln in f.read_text().splitlines() if not ln.startswith("#")]
    assert sorted(lines) == sorted([
        f"{token_hash(tokens['ORDERS_TOKEN'])} orders orders:write,orders:read",
        f"{token_hash(tokens['ADMIN_TOKEN'])} admin {ALL_SCOPES}"])
    assert tokens["ORDERS_TOKEN"] not in f.read_text()

    # An existing file is kept (exit 1) unless --force.
    before = f.read_text()
    r = orderctl("token", "init", "--file", f)
    assert r.returncode == 1 and "--force" in r.stderr and r.stdout == ""
    assert f.read_text() == before

    r = orderctl("token", "init", "--file", f, "--force", "--client", "ci-bot=orders:write",
                 "--client", "prometheus=metrics:read")
    assert r.returncode == 0, r.stderr
    tokens = parse_assignments(r.stdout)
    assert sorted(tokens) == ["CI_BOT_TOKEN", "PROMETHEUS_TOKEN"]
    assert f"{token_hash(tokens['CI_BOT_TOKEN'])} ci-bot orders:write" in f.read_text()
    assert " admin " not in f.read_text()

    for bad in (["--client", "x=nope:write"], ["--client", "no-scopes"],
                ["--client", "a=orders:read", "--client", "a=orders:write"]):
        assert orderctl("token", "init", "--file", tmp_path / "t2", *bad).returncode == 2, bad
        assert not (tmp_path / "t2").exists()
