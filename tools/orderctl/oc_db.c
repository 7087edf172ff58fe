/*
 * oc_db.c - "orderctl db create": a service's PostgreSQL role and database,
 * made over an administrator's connection, the way deploy/postgres/pg.sh
 * create-dbs makes them for the dev stack: the database is owned by a login
 * role of its own (no superuser, no CREATEDB, no CREATEROLE) that alone (with
 * the superusers) may connect. With --pgpass the role also gets a new random
 * password, sent as a SCRAM verifier made here (the server never sees the
 * password), and a libpq password file is written for the service's
 * credentials. Nothing here talks to Kafka.
 */
#include "oc_cmd.h"

#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

static const char usage[] =
    "Usage: orderctl db create SERVICE [--admin CONNINFO] [--database NAME] [--role NAME]\n"
    "                          [--pgpass FILE]\n"
    "\n"
    "Creates what SERVICE (order-service, payment-service or inventory-service)\n"
    "needs in PostgreSQL, if missing: a login role (no superuser, no CREATEDB, no\n"
    "CREATEROLE, no replication) and a database owned by it that no other\n"
    "non-superuser may connect to. Safe to run again. The daemon creates its tables\n"
    "itself at start (schema migrations).\n"
    "\n"
    "Prints the DATABASE_URL line for /etc/orders/SERVICE.env on stdout (host and\n"
    "port as the administrator's connection reached the server).\n"
    "\n"
    "Options:\n"
    "  --admin CONNINFO  libpq connection string or URI of an administrator (a\n"
    "                    superuser, e.g. \"host=/run/postgresql user=postgres\"); default:\n"
    "                    libpq's PGHOST, PGPORT, PGUSER, ... and dbname=postgres\n"
    "  --database NAME   the database (default: orders, payments or inventory)\n"
    "  --role NAME       the role (default: the database's name); names are 1 to 63\n"
    "                    of a-z 0-9 _\n"
    "  --pgpass FILE     give the role a new random password (190 bits; set as a\n"
    "                    SCRAM-SHA-256 verifier, so the password never reaches the\n"
    "                    server or its log) and write the libpq password file FILE\n"
    "                    (\"*:*:DATABASE:ROLE:PASSWORD\", mode 0600, folder made 0700),\n"
    "                    e.g. /etc/orders/credentials/SERVICE/pgpass, the source of\n"
    "                    the unit's pgpass credential. Running it again rotates the\n"
    "                    password: restart the service afterwards\n"
    "\n"
    "Exit status: 0 ok, 2 usage error, 3 PostgreSQL or file error.\n";

typedef struct {
    const char *admin, *database, *role, *pgpass;
} db_args;

static const struct {
    const char *service, *database;
} service_dbs[] = {
    {"order-service", "orders"},
    {"payment-service", "payments"},
    {"inventory-service", "inventory"},
};

/* PostgreSQL names the tools accept: the ones pg.sh accepts. */
static bool name_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 63)
        return false;
    return strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789_") == n;
}

/* Runs one statement without parameters; 0 or -1 (reported). */
static int exec_ok(PGconn *conn, const char *sql, const char *what)
{
    PGresult *res = PQexec(conn, sql);
    int r = PQresultStatus(res) == PGRES_COMMAND_OK ? 0 : -1;

    if (r < 0)
        oc_err("could not %s: %s", what, PQresultErrorMessage(res));
    PQclear(res);
    return r;
}

/* 1 if the catalog query (one parameter) returns a row, 0 if not, -1 (reported). */
static int exists(PGconn *conn, const char *sql, const char *name)
{
    const char *params[1] = {name};
    PGresult *res = PQexecParams(conn, sql, 1, NULL, params, NULL, NULL, 0);
    int r;

    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        oc_err("could not look up \"%s\": %s", name, PQresultErrorMessage(res));
        r = -1;
    } else {
        r = PQntuples(res) > 0;
    }
    PQclear(res);
    return r;
}

/* Runs head + "a" + mid [+ "b"], a and b quoted as identifiers; 0 or -1 (reported). */
static int exec_ident(PGconn *conn, const char *head, const char *a, const char *mid, const char *b,
                      const char *what)
{
    char *qa = PQescapeIdentifier(conn, a, strlen(a));
    char *qb = b ? PQescapeIdentifier(conn, b, strlen(b)) : NULL;
    char sql[512];
    int r = -1;

    if (!qa || (b && !qb))
        oc_err("could not quote a name: %s", PQerrorMessage(conn));
    else if (snprintf(sql, sizeof(sql), "%s%s%s%s", head, qa, mid, qb ? qb : "") < (int)sizeof(sql))
        r = exec_ok(conn, sql, what);
    PQfreemem(qa);
    PQfreemem(qb);
    return r;
}

static int ensure_role_db(PGconn *conn, const char *role, const char *db)
{
    static const char role_sql[] = "SELECT 1 FROM pg_roles WHERE rolname = $1";
    static const char db_sql[] = "SELECT 1 FROM pg_database WHERE datname = $1";
    int r;

    if ((r = exists(conn, role_sql, role)) < 0)
        return -1;
    if (exec_ident(conn, r ? "ALTER ROLE " : "CREATE ROLE ", role,
                   " LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION", NULL,
                   "create the role") < 0)
        return -1;
    if ((r = exists(conn, db_sql, db)) < 0)
        return -1;
    if (exec_ident(conn, r ? "ALTER DATABASE " : "CREATE DATABASE ", db,
                   r ? " OWNER TO " : " OWNER ", role, "create the database") < 0 ||
        exec_ident(conn, "REVOKE ALL ON DATABASE ", db, " FROM PUBLIC", NULL,
                   "revoke the database from PUBLIC") < 0 ||
        exec_ident(conn, "GRANT CONNECT, TEMPORARY ON DATABASE ", db, " TO ", role,
                   "grant the database to its role") < 0)
        return -1;
    fprintf(stderr, "orderctl: role \"%s\" owns database \"%s\"%s\n", role, db,
            r ? " (both existed; attributes and grants set again)" : "");
    return 0;
}

/* 32 of [A-Za-z0-9] from getrandom (rejection sampling: no bias). */
static int random_password(char out[33])
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    size_t n = 0;

    while (n < 32) {
        unsigned char buf[64];
        ssize_t got = getrandom(buf, sizeof(buf), 0);

        if (got < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        for (ssize_t i = 0; i < got && n < 32; i++)
            if (buf[i] < 248) /* 248 = 4 * 62 */
                out[n++] = alphabet[buf[i] % 62];
        explicit_bzero(buf, sizeof(buf));
    }
    out[32] = '\0';
    return 0;
}

static int set_password(PGconn *conn, const char *role, const char *db, const char *file)
{
    char pw[33], line[256], sql[512];
    char *verifier = NULL, *qrole = NULL, *qverifier = NULL;
    int r = -1;

    if (random_password(pw) < 0) {
        oc_err("could not get random bytes: %s", strerror(errno));
        return -1;
    }
    verifier = PQencryptPasswordConn(conn, pw, role, "scram-sha-256");
    if (!verifier) {
        oc_err("could not make the SCRAM verifier: %s", PQerrorMessage(conn));
        goto out;
    }
    qrole = PQescapeIdentifier(conn, role, strlen(role));
    qverifier = PQescapeLiteral(conn, verifier, strlen(verifier));
    if (!qrole || !qverifier) {
        oc_err("could not quote: %s", PQerrorMessage(conn));
        goto out;
    }
    if (snprintf(sql, sizeof(sql), "ALTER ROLE %s PASSWORD %s", qrole, qverifier) >=
        (int)sizeof(sql)) {
        oc_err("statement too long");
        goto out;
    }
    /* The file first: a failed ALTER leaves the old password working, while
     * a password set but never written down would lock the service out. */
    snprintf(line, sizeof(line), "*:*:%s:%s:%s\n", db, role, pw);
    if (oc_write_file(file, line, 0600, true) < 0 || exec_ok(conn, sql, "set the password") < 0)
        goto out;
    fprintf(stderr, "orderctl: new password of \"%s\" written to %s (0600)\n", role, file);
    r = 0;
out:
    explicit_bzero(pw, sizeof(pw));
    explicit_bzero(line, sizeof(line));
    PQfreemem(verifier);
    PQfreemem(qrole);
    PQfreemem(qverifier);
    return r;
}

static int parse(int argc, char **argv, db_args *a)
{
    static const struct option longopts[] = {
        {"admin", required_argument, NULL, 'a'}, {"database", required_argument, NULL, 'd'},
        {"role", required_argument, NULL, 'r'},  {"pgpass", required_argument, NULL, 'p'},
        {"help", no_argument, NULL, 'h'},        {NULL, 0, NULL, 0},
    };
    int opt;

    while ((opt = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (opt) {
        case 'h':
            fputs(usage, stdout);
            return OC_EXIT_OK;
        case 'a':
            a->admin = optarg;
            break;
        case 'd':
            a->database = optarg;
            break;
        case 'r':
            a->role = optarg;
            break;
        case 'p':
            a->pgpass = optarg;
            break;
        default:
            return oc_usage("unknown option");
        }
    }
    return -1;
}

int oc_cmd_db_create(oc_opts *o, int argc, char **argv)
{
    db_args a = {0};
    const char *service, *host, *port, *known = NULL;
    PGconn *conn;
    int r = parse(argc, argv, &a);
    (void)o;

    if (r >= 0)
        return r;
    if (optind + 1 != argc)
        return oc_usage("db create needs one SERVICE (order-service, payment-service or "
                        "inventory-service)");
    service = argv[optind];
    for (size_t i = 0; i < sizeof(service_dbs) / sizeof(service_dbs[0]); i++)
        if (strcmp(service_dbs[i].service, service) == 0)
            known = service_dbs[i].database;
    if (!known)
        return oc_usage("unknown service \"%s\"", service);
    if (!a.database)
        a.database = known;
    if (!a.role)
        a.role = a.database;
    if (!name_ok(a.database) || !name_ok(a.role))
        return oc_usage("database and role names are 1 to 63 of a-z 0-9 _");

    conn = PQconnectdb(a.admin ? a.admin : "dbname=postgres");
    if (PQstatus(conn) != CONNECTION_OK) {
        oc_err("could not connect as administrator: %s", PQerrorMessage(conn));
        PQfinish(conn);
        return OC_EXIT_INFRA;
    }
    r = ensure_role_db(conn, a.role, a.database);
    if (r == 0 && a.pgpass)
        r = set_password(conn, a.role, a.database, a.pgpass);
    if (r == 0) {
        host = PQhost(conn);
        port = PQport(conn);
        printf("DATABASE_URL=host=%s port=%s dbname=%s user=%s\n",
               host && *host ? host : "localhost", port && *port ? port : "5432", a.database,
               a.role);
    }
    PQfinish(conn);
    return r == 0 ? OC_EXIT_OK : OC_EXIT_INFRA;
}
