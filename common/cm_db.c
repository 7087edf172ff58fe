/*
 * cm_db.c - see cm_db.h.
 */
#include "cm_db.h"

#include "cm_config.h"
#include "cm_log.h"

#include <errno.h>
#include <libpq-events.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void notice_to_log(void *arg, const char *message)
{
    (void)arg;
    log_debug("postgres notice msg=\"%s\"", message);
}

/* Prepared statements, per connection. Our SQL lives in static arrays, so a
 * statement is known by its text's address; the first use on a connection
 * prepares it (one extra round trip), later uses skip parsing and planning. */
#define STMT_CACHE_MAX 64

typedef struct {
    const char *sql[STMT_CACHE_MAX];
    int n;
} stmt_cache;

static int on_conn_event(PGEventId id, void *info, void *pass)
{
    (void)pass;
    if (id == PGEVT_CONNDESTROY) {
        PGEventConnDestroy *e = info;
        free(PQinstanceData(e->conn, on_conn_event));
    } else if (id == PGEVT_CONNRESET) {
        PGEventConnReset *e = info;
        stmt_cache *c = PQinstanceData(e->conn, on_conn_event);
        if (c)
            c->n = 0; /* a new session has no prepared statements */
    }
    return 1;
}

/* Round trips to the server of every connection of this process, by the
 * calling thread's path: each statement, prepare and pipeline that waits for
 * its answer counts one. */
static _Atomic unsigned long long round_trips[CM_DB_PATHS];
static _Thread_local cm_db_path thread_path; /* CM_DB_API unless set */

void cm_db_thread_path(cm_db_path path)
{
    thread_path = path;
}

unsigned long long cm_db_round_trips(cm_db_path path)
{
    return atomic_load_explicit(&round_trips[path], memory_order_relaxed);
}

static void count_round_trip(void)
{
    atomic_fetch_add_explicit(&round_trips[thread_path], 1, memory_order_relaxed);
}

static void stmt_cache_attach(PGconn *conn)
{
    stmt_cache *c = calloc(1, sizeof(*c));

    if (!c)
        return;
    if (!PQregisterEventProc(conn, on_conn_event, "cm_db statement cache", NULL) ||
        !PQsetInstanceData(conn, on_conn_event, c))
        free(c);
}

/* Returns the name of sql's prepared statement on conn (preparing it now if
 * needed) in name, or leaves name empty to fall back to PQexecParams. */
static int stmt_name(PGconn *conn, const char *sql, int nparams, char name[16])
{
    stmt_cache *c = PQinstanceData(conn, on_conn_event);
    PGresult *res;
    int r;

    name[0] = '\0';
    if (!c)
        return 0;
    for (int i = 0; i < c->n; i++) {
        if (c->sql[i] == sql) {
            snprintf(name, 16, "cm%d", i);
            return 0;
        }
    }
    if (c->n == STMT_CACHE_MAX)
        return 0;
    snprintf(name, 16, "cm%d", c->n);
    count_round_trip();
    res = PQprepare(conn, name, sql, nparams, NULL);
    r = cm_db_classify(conn, res);
    PQclear(res);
    if (r < 0) {
        name[0] = '\0';
        return r;
    }
    c->sql[c->n++] = sql;
    return 0;
}

int cm_db_array(const char *const *vals, size_t n, char **ret)
{
    size_t cap = 3, len = 0;
    char *out;

    for (size_t i = 0; i < n; i++)
        cap += 2 * strlen(vals[i]) + 3;
    out = malloc(cap);
    if (!out)
        return -ENOMEM;
    out[len++] = '{';
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            out[len++] = ',';
        out[len++] = '"';
        for (const char *c = vals[i]; *c; c++) {
            if (*c == '"' || *c == '\\')
                out[len++] = '\\';
            out[len++] = *c;
        }
        out[len++] = '"';
    }
    out[len++] = '}';
    out[len] = '\0';
    *ret = out;
    return 0;
}

/* The server's message of the last failed statement of a pipeline on this
 * thread: after a pipeline, libpq's connection message may be empty. */
static __thread char pipeline_error[512];

const char *cm_db_error(PGconn *conn)
{
    static __thread char buf[512];
    const char *m = conn ? PQerrorMessage(conn) : "no connection";
    size_t n;

    if (conn && (!m || !*m) && pipeline_error[0])
        m = pipeline_error;
    /* a password of the connection string never reaches a log line */
    cm_config_redact(m && *m ? m : "unknown error", buf, sizeof(buf));
    n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (size_t i = 0; i < n; i++)
        if (buf[i] == '\n' || buf[i] == '"')
            buf[i] = buf[i] == '"' ? '\'' : ' ';
    return buf;
}

int cm_db_connect(const char *url, PGconn **ret, char *err, size_t errlen)
{
    /* Defaults first, the operator's URL after: what the URL sets wins. A
     * server that vanishes without a word (a partition, a dead host) is
     * noticed in seconds rather than after the kernel's two hours. */
    static const char *const keys[] = {"connect_timeout",
                                       "keepalives_idle",
                                       "keepalives_interval",
                                       "keepalives_count",
                                       "application_name",
                                       "dbname",
                                       NULL};
    const char *values[] = {"5", "10", "5", "3", cm_log_ident(), url, NULL};
    PQconninfoOption *opts = PQconninfoParse(url, NULL);
    PGconn *conn;

    /* Its password, if the URL has one, is redacted from libpq's messages. */
    for (PQconninfoOption *o = opts; o && o->keyword; o++)
        if (o->val && *o->val && strstr(o->keyword, "password"))
            cm_config_secret_add(o->val);
    PQconninfoFree(opts);
    conn = PQconnectdbParams(keys, values, 1);

    if (!conn || PQstatus(conn) != CONNECTION_OK) {
        snprintf(err, errlen, "%s", cm_db_error(conn));
        PQfinish(conn);
        return -ECONNRESET;
    }
    PQsetNoticeProcessor(conn, notice_to_log, NULL);
    stmt_cache_attach(conn);
    *ret = conn;
    return 0;
}

int cm_db_default_statement_timeout(PGconn *conn, const char *timeout)
{
    PGresult *res = NULL;
    char sql[64];
    int r;

    if ((r = cm_db_query(conn, &res, "SHOW statement_timeout", 0, NULL)) < 0)
        return r;
    bool own = strcmp(PQgetvalue(res, 0, 0), "0") != 0;
    PQclear(res);
    if (own)
        return 0;
    snprintf(sql, sizeof(sql), "SET statement_timeout = '%s'", timeout);
    return cm_db_exec(conn, sql);
}

int cm_db_classify_sqlstate(const char *state)
{
    /* The server, not the statement: the work succeeds once the server (or
     * the one a reconnect reaches after a failover) can take it again.
     *   08     connection exception
     *   53     insufficient resources (too many connections, disk full)
     *   58     system error (I/O error, undefined file)
     *   57P    shutdown, crash shutdown, cannot connect now, database dropped
     *   57014  query canceled (statement_timeout, pg_cancel_backend)
     *   55P03  lock not available (lock_timeout)
     *   25006  read-only transaction (a standby, or default_transaction_read_only) */
    static const char *const outage_classes[] = {"08", "53", "58"};
    static const char *const outage_states[] = {"57014", "55P03", "25006"};

    if (!state || strlen(state) != 5)
        return -ECONNRESET;
    for (size_t i = 0; i < sizeof(outage_classes) / sizeof(outage_classes[0]); i++)
        if (strncmp(state, outage_classes[i], 2) == 0)
            return -ECONNRESET;
    for (size_t i = 0; i < sizeof(outage_states) / sizeof(outage_states[0]); i++)
        if (strcmp(state, outage_states[i]) == 0)
            return -ECONNRESET;
    if (strncmp(state, "57P", 3) == 0)
        return -ECONNRESET;
    if (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0)
        return -EAGAIN;
    return -EIO;
}

int cm_db_classify(PGconn *conn, const PGresult *res)
{
    ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK)
        return 0;
    if (!conn || PQstatus(conn) != CONNECTION_OK)
        return -ECONNRESET;
    return cm_db_classify_sqlstate(res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL);
}

int cm_db_query(PGconn *conn, PGresult **ret, const char *sql, int nparams,
                const char *const *params)
{
    char name[16];
    PGresult *res;
    int r = stmt_name(conn, sql, nparams, name);

    if (r < 0) {
        log_debug("sql prepare failed code=%d error=\"%s\"", r, cm_db_error(conn));
        return r;
    }
    count_round_trip();
    res = name[0] ? PQexecPrepared(conn, name, nparams, params, NULL, NULL, 0)
                  : PQexecParams(conn, sql, nparams, NULL, params, NULL, NULL, 0);
    r = cm_db_classify(conn, res);

    if (r < 0) {
        log_debug("sql failed code=%d error=\"%s\"", r, cm_db_error(conn));
        PQclear(res);
        return r;
    }
    if (ret)
        *ret = res;
    else
        PQclear(res);
    return 0;
}

static int pipeline_collect(PGconn *conn, int n, PGresult **res)
{
    int r = 0;

    for (int i = 0; i < n; i++) {
        PGresult *x, *extra;
        res[i] = PQgetResult(conn);
        x = res[i];
        if (!x)
            return -ECONNRESET;
        if (r == 0 && PQresultStatus(x) == PGRES_PIPELINE_ABORTED)
            r = -EIO; /* cannot happen before the first failure */
        else if (r == 0 && (r = cm_db_classify(conn, x)) < 0)
            snprintf(pipeline_error, sizeof(pipeline_error), "%s", PQresultErrorMessage(x));
        /* Each statement's results end with NULL. */
        while ((extra = PQgetResult(conn)) != NULL)
            PQclear(extra);
    }
    return r;
}

static int pipeline_run(PGconn *conn, const cm_db_stmt *stmts, int n, PGresult **res,
                        char (*names)[16])
{
    PGresult *sync;
    int r = 0;

    for (int i = 0; i < n && r == 0; i++)
        r = stmt_name(conn, stmts[i].sql, stmts[i].nparams, names[i]);
    if (r < 0)
        return r;
    pipeline_error[0] = '\0';
    if (!PQenterPipelineMode(conn))
        return -ECONNRESET;
    for (int i = 0; i < n; i++) {
        int ok = names[i][0] ? PQsendQueryPrepared(conn, names[i], stmts[i].nparams,
                                                   stmts[i].params, NULL, NULL, 0)
                             : PQsendQueryParams(conn, stmts[i].sql, stmts[i].nparams, NULL,
                                                 stmts[i].params, NULL, NULL, 0);
        if (!ok)
            return -ECONNRESET;
    }
    if (!PQpipelineSync(conn))
        return -ECONNRESET;
    count_round_trip();
    r = pipeline_collect(conn, n, res);
    sync = PQgetResult(conn);
    if (!sync || PQresultStatus(sync) != PGRES_PIPELINE_SYNC)
        r = r ? r : -ECONNRESET;
    PQclear(sync);
    if (!PQexitPipelineMode(conn) && r == 0)
        r = -ECONNRESET;
    return r;
}

int cm_db_pipeline(PGconn *conn, const cm_db_stmt *stmts, int n, PGresult **ret)
{
    PGresult *res_small[16] = {0}, **res = res_small;
    char names_small[16][16], (*names)[16] = names_small;
    int r;

    if (n > 16) {
        res = calloc((size_t)n, sizeof(*res));
        names = calloc((size_t)n, sizeof(*names));
        if (!res || !names) {
            free(res);
            free(names);
            return -ENOMEM;
        }
    }
    r = pipeline_run(conn, stmts, n, res, names);
    if (r < 0)
        log_debug("pipeline failed code=%d error=\"%s\"", r, cm_db_error(conn));
    for (int i = 0; i < n; i++) {
        if (r == 0 && ret)
            ret[i] = res[i];
        else
            PQclear(res[i]);
    }
    if (n > 16) {
        free(res);
        free(names);
    }
    return r;
}

int cm_db_exec(PGconn *conn, const char *sql)
{
    /* PQexec, not PQexecParams: migrations hold several statements. */
    PGresult *res;
    int r;

    count_round_trip();
    res = PQexec(conn, sql);
    r = cm_db_classify(conn, res);

    if (r < 0)
        log_debug("sql failed code=%d error=\"%s\"", r, cm_db_error(conn));
    PQclear(res);
    return r;
}

static int migrate_one(PGconn *conn, int version, const char *sql)
{
    static const char record[] = "INSERT INTO schema_migrations(version) VALUES ($1::int)";
    char v[16];
    const char *p[1] = {v};
    int r;

    snprintf(v, sizeof(v), "%d", version);
    r = cm_db_exec(conn, "BEGIN");
    if (r == 0)
        r = cm_db_exec(conn, sql);
    if (r == 0)
        r = cm_db_query(conn, NULL, record, 1, p);
    if (r == 0)
        r = cm_db_exec(conn, "COMMIT");
    if (r < 0) {
        log_error("could not apply migration version=%d error=\"%s\"", version, cm_db_error(conn));
        cm_db_exec(conn, "ROLLBACK");
        return r;
    }
    log_info("applied migration version=%d", version);
    return 0;
}

int cm_db_migrate(PGconn *conn, const char *const *migrations, size_t n)
{
    static const char create[] =
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())";
    static const char current[] = "SELECT coalesce(max(version), 0) FROM schema_migrations";
    PGresult *res = NULL;
    int have, r;

    /* The lock makes concurrent starts of several instances safe. */
    r = cm_db_exec(conn, "SELECT pg_advisory_lock(7260001)");
    if (r < 0)
        return r;
    r = cm_db_exec(conn, create);
    if (r == 0)
        r = cm_db_query(conn, &res, current, 0, NULL);
    if (r == 0) {
        have = (int)strtol(PQgetvalue(res, 0, 0), NULL, 10);
        PQclear(res);
        for (size_t i = (size_t)have; i < n && r == 0; i++)
            r = migrate_one(conn, (int)i + 1, migrations[i]);
    }
    cm_db_exec(conn, "SELECT pg_advisory_unlock(7260001)");
    return r;
}

struct cm_dbpool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    const char *url;
    size_t size, nfree;
    PGconn **free;
};

int cm_dbpool_new(const char *url, size_t size, cm_dbpool **ret)
{
    cm_dbpool *p = calloc(1, sizeof(*p));

    if (!p || !(p->free = calloc(size, sizeof(PGconn *)))) {
        free(p);
        return -ENOMEM;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->url = url;
    p->size = size;
    /* Slots start empty (NULL): connections are made lazily on acquire. */
    p->nfree = size;
    *ret = p;
    return 0;
}

int cm_dbpool_acquire(cm_dbpool *pool, PGconn **ret)
{
    PGconn *conn;
    char err[256];

    pthread_mutex_lock(&pool->lock);
    while (pool->nfree == 0)
        pthread_cond_wait(&pool->cond, &pool->lock);
    conn = pool->free[--pool->nfree];
    pthread_mutex_unlock(&pool->lock);

    /* An idle pooled connection has nothing to read (it does not LISTEN).
     * A readable socket means the server said goodbye (restart, failover,
     * idle timeout): replace it here rather than fail the request with it. */
    if (conn) {
        struct pollfd pfd = {.fd = PQsocket(conn), .events = POLLIN};
        if (PQstatus(conn) != CONNECTION_OK || poll(&pfd, 1, 0) != 0) {
            PQfinish(conn);
            conn = NULL;
        }
    }
    if (!conn) {
        if (cm_db_connect(pool->url, &conn, err, sizeof(err)) < 0) {
            log_warning("database unavailable error=\"%s\"", err);
            cm_dbpool_release(pool, NULL);
            return -ECONNRESET;
        }
        /* A request never waits on the database longer than this. */
        if (cm_db_default_statement_timeout(conn, CM_DB_STATEMENT_TIMEOUT) < 0) {
            log_warning("database unavailable error=\"%s\"", cm_db_error(conn));
            PQfinish(conn);
            cm_dbpool_release(pool, NULL);
            return -ECONNRESET;
        }
    }
    *ret = conn;
    return 0;
}

/* The server reports both (PostgreSQL 14+) at start and on every change. */
static bool session_read_only(const PGconn *conn)
{
    const char *hs = PQparameterStatus(conn, "in_hot_standby");
    const char *ro = PQparameterStatus(conn, "default_transaction_read_only");

    return (hs && strcmp(hs, "on") == 0) || (ro && strcmp(ro, "on") == 0);
}

void cm_dbpool_release(cm_dbpool *pool, PGconn *conn)
{
    /* A connection left inside a transaction or broken is not reused, nor
     * one on a read-only session (a standby after a failover, a database
     * made read-only): it would refuse every write for good, while a new
     * connection may reach the new primary. */
    if (conn && (PQstatus(conn) != CONNECTION_OK || PQtransactionStatus(conn) != PQTRANS_IDLE ||
                 session_read_only(conn))) {
        PQfinish(conn);
        conn = NULL;
    }
    pthread_mutex_lock(&pool->lock);
    pool->free[pool->nfree++] = conn;
    pthread_cond_signal(&pool->cond);
    pthread_mutex_unlock(&pool->lock);
}

void cm_dbpool_free(cm_dbpool *pool)
{
    if (!pool)
        return;
    for (size_t i = 0; i < pool->nfree; i++)
        PQfinish(pool->free[i]);
    pthread_mutex_destroy(&pool->lock);
    pthread_cond_destroy(&pool->cond);
    free(pool->free);
    free(pool);
}
