"""
PostgreSQL roles: each daemon connects as its database's own role, which
owns that database only (no superuser, no CREATEDB, no CREATEROLE) and
cannot connect to the other two; a daemon connected as a superuser says so.
"""

import psycopg
import pytest

from conftest import DB_PREFIX, SERVICES


def test_each_daemon_connects_as_its_own_unprivileged_role(stack):
    for name, (_, db) in SERVICES.items():
        rows = stack.sql(db, "SELECT DISTINCT a.usename, r.rolsuper, r.rolcreatedb, r.rolcreaterole"
                             " FROM pg_stat_activity a JOIN pg_roles r ON r.rolname = a.usename"
                             " WHERE a.application_name = %s AND a.datname = %s",
                         (name, DB_PREFIX + db))
        assert rows == [(DB_PREFIX + db, False, False, False)], \
            f"{name}: sessions on {DB_PREFIX + db} as {rows}, expected its own role only"
        owner = stack.sql_one(db, "SELECT pg_get_userbyid(datdba) FROM pg_database"
                                  " WHERE datname = current_database()")
        assert owner == DB_PREFIX + db
        tables = stack.sql(db, "SELECT tablename, tableowner FROM pg_tables"
                               " WHERE schemaname = 'public'")
        assert tables and all(o == DB_PREFIX + db for _, o in tables), tables
    for d in stack.daemons.values():
        assert "as superuser" not in d.log_path.read_text(), f"{d.name} warned of a superuser"


@pytest.mark.parametrize("role,other", [("orders", "payments"), ("orders", "inventory"),
                                        ("payments", "orders"), ("inventory", "payments")])
def test_a_role_cannot_connect_to_another_daemons_database(stack, role, other):
    kw = {"host": stack.pg_env.get("PGHOST"), "port": stack.pg_env.get("PGPORT"),
          "user": DB_PREFIX + role, "dbname": DB_PREFIX + other, "connect_timeout": 5}
    with pytest.raises(psycopg.OperationalError, match="CONNECT privilege"):
        psycopg.connect(**{k: v for k, v in kw.items() if v}).close()


def test_a_daemon_connected_as_superuser_warns(stack):
    main = stack.daemons["payment-service"]
    port = main.port + 20
    su = type(main)("payment-service-su", main.binary, port,
                    dict(main.env, HTTP_PORT=str(port), DATABASE_URL=stack.dsn("payments")),
                    main.log_path.with_name("payment-service-su.log"))
    try:
        su.start()
        su.wait_ready()
        log = su.log_path.read_text()
        assert "connected to PostgreSQL as superuser" in log, log[-2000:]
    finally:
        su.terminate()
