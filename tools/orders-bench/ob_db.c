/*
 * ob_db.c - see ob_db.h.
 */
#include "ob_db.h"

#include "cm_config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_NS 100000000LL /* between two polls of the orders not settled yet */

PGconn *ob_db_connect(const char *conninfo)
{
    static const char check_sql[] = "SELECT 1 FROM orders LIMIT 0";
    /* A generic plan: the poll's array changes every time, and planning a
     * custom plan for thousands of ids costs more than running it. */
    const char *keys[] = {"dbname", "fallback_application_name", "options", NULL};
    const char *vals[] = {conninfo, "orders-bench", "-c plan_cache_mode=force_generic_plan", NULL};
    PGconn *db = PQconnectdbParams(keys, vals, 1);
    PGresult *res;

    if (!db || PQstatus(db) != CONNECTION_OK) {
        char shown[512];
        cm_config_mask(conninfo, shown, sizeof(shown)); /* never its password */
        ob_err("could not connect to the orders database (%s): %s", shown,
               db ? PQerrorMessage(db) : "out of memory");
        PQfinish(db);
        return NULL;
    }
    res = PQexec(db, check_sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ob_err("database \"%s\" has no orders table of order-service: %s", PQdb(db),
               PQerrorMessage(db));
        PQclear(res);
        PQfinish(db);
        return NULL;
    }
    PQclear(res);
    return db;
}

static void sleep_ns(int64_t ns)
{
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    nanosleep(&ts, NULL);
}

/* A text[] literal, {"id","id",...}, grown as ids are added. */
typedef struct {
    char *s;
    size_t len, cap;
} idarray;

/* Room for n more bytes, and for the closing "}" and NUL. */
static int idarray_reserve(idarray *a, size_t n)
{
    size_t need = a->len + n + 2, cap = a->cap ? a->cap : 4096;
    char *ns;

    if (need <= a->cap)
        return 0;
    while (cap < need)
        cap *= 2;
    if (!(ns = realloc(a->s, cap)))
        return -ENOMEM;
    a->s = ns;
    a->cap = cap;
    return 0;
}

static int idarray_add(idarray *a, const char *id)
{
    char sep = a->len == 0 ? '{' : ',';
    size_t i;

    if (idarray_reserve(a, 2 * strlen(id) + 3) < 0)
        return -ENOMEM;
    a->s[a->len++] = sep;
    a->s[a->len++] = '"';
    for (i = 0; id[i]; i++) {
        if (id[i] == '"' || id[i] == '\\')
            a->s[a->len++] = '\\';
        a->s[a->len++] = id[i];
    }
    a->s[a->len++] = '"';
    return 0;
}

/* Closes the literal: "{}" if empty. */
static int idarray_end(idarray *a)
{
    if (idarray_reserve(a, 1) < 0)
        return -ENOMEM;
    if (a->len == 0)
        a->s[a->len++] = '{';
    a->s[a->len++] = '}';
    a->s[a->len] = '\0';
    return 0;
}

static int64_t statements;

int64_t ob_db_statements(void)
{
    return statements;
}

void ob_db_count_statement(void)
{
    statements++;
}

/* Which of the ids are not settled yet: one primary-key probe per id, and the
 * list shrinks as orders settle, so a poll costs what is left, whatever the
 * size of the table. "settled_at IS NULL" rather than "status = 'PENDING'":
 * the latter makes the planner pick the partial index orders_pending, which
 * holds an entry for every order ever inserted until a vacuum removes them.
 * Prepared once; runs every POLL_NS while the orders settle. */
static int still_pending(PGconn *db, bool prepare, idarray *ids, int64_t *ret)
{
    static const char sql[] =
        "SELECT order_id FROM orders WHERE order_id = ANY($1::text[]) AND settled_at IS NULL";
    const char *p[1] = {ids->s};
    PGresult *res;
    int i, n;

    if (prepare) {
        statements++;
        res = PQprepare(db, "ob_pending", sql, 1, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            ob_err("could not prepare the query of pending orders: %s", PQerrorMessage(db));
            PQclear(res);
            return OB_EXIT_INFRA;
        }
        PQclear(res);
    }
    statements++;
    res = PQexecPrepared(db, "ob_pending", 1, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ob_err("could not query pending orders: %s", PQerrorMessage(db));
        PQclear(res);
        return OB_EXIT_INFRA;
    }
    n = PQntuples(res);
    ids->len = 0;
    for (i = 0; i < n; i++)
        if (idarray_add(ids, PQgetvalue(res, i, 0)) < 0)
            break;
    PQclear(res);
    if (i < n || idarray_end(ids) < 0) {
        ob_err("out of memory for the pending orders");
        return OB_EXIT_INFRA;
    }
    *ret = n;
    return 0;
}

static int accepted_ids(const ob_run *run, idarray *ids)
{
    int64_t i;

    for (i = 0; i < run->n; i++)
        if (run->orders[i].id[0] && idarray_add(ids, run->orders[i].id) < 0)
            return -ENOMEM;
    return idarray_end(ids);
}

/* Polls until every accepted order is settled, --timeout or a stop. */
static int poll_pending(PGconn *db, ob_run *run, idarray *ids, int64_t *ret_t)
{
    int64_t start = ob_mono_ns(), deadline = start + (int64_t)(run->o->timeout_s * 1e9);
    int64_t last_progress = start, pending = 0, t = 0;
    bool prepared = false;
    int r;

    for (;;) {
        if ((r = still_pending(db, !prepared, ids, &pending)) != 0)
            return r;
        prepared = true;
        *ret_t = t = ob_mono_ns();
        if (pending == 0)
            return 0;
        if (t >= deadline || ob_stop) {
            run->settle_timed_out = t >= deadline;
            run->interrupted |= ob_stop != 0;
            return 0;
        }
        if (t - last_progress >= 1000000000LL && !run->o->quiet) {
            fprintf(stderr, "orders-bench: %5.1f s  settling: %" PRId64 " orders pending\n",
                    (double)(t - run->t0_mono_ns) / 1e9, pending);
            last_progress = t;
        }
        ob_run_tick(run);
        sleep_ns(POLL_NS);
    }
}

int ob_db_wait(PGconn *db, ob_run *run)
{
    idarray ids = {0};
    int64_t t = 0;
    int r;

    if (run->accepted == 0)
        return 0;
    if (accepted_ids(run, &ids) < 0) {
        free(ids.s);
        ob_err("out of memory for the pending orders");
        return OB_EXIT_INFRA;
    }
    r = poll_pending(db, run, &ids, &t);
    free(ids.s);
    run->settle_wait_ns = t - (run->t0_mono_ns + run->end_ns);
    if (run->settle_wait_ns < 0)
        run->settle_wait_ns = 0;
    return r;
}

/* ---- matching rows to 202s ---- */

typedef struct {
    int64_t *slot; /* order index + 1; 0 = empty */
    size_t mask;
} idmap;

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

/* The slot of id: where it is, or the empty slot where it belongs. */
static int64_t *idmap_find(const idmap *m, const ob_order *orders, const char *id)
{
    size_t i = (size_t)hash(id) & m->mask;

    while (m->slot[i] != 0 && strcmp(orders[m->slot[i] - 1].id, id) != 0)
        i = (i + 1) & m->mask;
    return &m->slot[i];
}

/* Maps every 202'd id to its order; counts ids answered twice. */
static int idmap_build(idmap *m, ob_run *run)
{
    size_t cap = 16;
    int64_t i;

    while (cap < (size_t)run->accepted * 2 + 2)
        cap *= 2;
    if (!(m->slot = calloc(cap, sizeof(*m->slot))))
        return -ENOMEM;
    m->mask = cap - 1;
    for (i = 0; i < run->n; i++) {
        int64_t *s;
        if (!run->orders[i].id[0])
            continue;
        s = idmap_find(m, run->orders, run->orders[i].id);
        if (*s != 0) {
            run->answered_twice++;
            run->orders[i].db = OB_DB_TWICE;
        } else
            *s = i + 1;
    }
    return 0;
}

static uint8_t status_code(const char *s)
{
    if (strcmp(s, "CONFIRMED") == 0)
        return OB_DB_CONFIRMED;
    if (strcmp(s, "REJECTED") == 0)
        return OB_DB_REJECTED;
    return OB_DB_PENDING;
}

static void apply_rows(ob_run *run, const idmap *m, PGresult *res)
{
    int k, rows = PQntuples(res);

    for (k = 0; k < rows; k++) {
        int64_t *s = idmap_find(m, run->orders, PQgetvalue(res, k, 0));
        ob_order *o;
        if (*s == 0) {
            run->unanswered++;
            continue;
        }
        o = &run->orders[*s - 1];
        o->db = status_code(PQgetvalue(res, k, 1));
        o->created_us = strtoll(PQgetvalue(res, k, 2), NULL, 10);
        o->settled_us = PQgetisnull(res, k, 3) ? 0 : strtoll(PQgetvalue(res, k, 3), NULL, 10);
        if (o->settled_us == 0)
            o->db = OB_DB_PENDING;
        if (o->settled_us > run->last_settled_us)
            run->last_settled_us = o->settled_us;
    }
}

static void count_outcomes(ob_run *run)
{
    int64_t i;

    for (i = 0; i < run->n; i++) {
        const ob_order *o = &run->orders[i];
        if (!o->id[0] || o->db == OB_DB_TWICE)
            continue;
        run->missing += o->db == OB_DB_ABSENT;
        run->unsettled += o->db == OB_DB_PENDING;
        run->confirmed += o->db == OB_DB_CONFIRMED;
        run->rejected += o->db == OB_DB_REJECTED;
    }
}

int ob_db_collect(PGconn *db, ob_run *run)
{
    static const char sql[] =
        "SELECT order_id, status, (extract(epoch FROM created_at) * 1000000)::bigint,"
        " (extract(epoch FROM settled_at) * 1000000)::bigint"
        " FROM orders WHERE starts_with(customer_id, $1)";
    const char *p[1] = {run->prefix};
    idmap m = {0};
    PGresult *res;

    if (idmap_build(&m, run) < 0) {
        ob_err("out of memory matching orders");
        return OB_EXIT_INFRA;
    }
    res = PQexecParams(db, sql, 1, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ob_err("could not read the run's orders: %s", PQerrorMessage(db));
        PQclear(res);
        free(m.slot);
        return OB_EXIT_INFRA;
    }
    apply_rows(run, &m, res);
    PQclear(res);
    free(m.slot);
    count_outcomes(run);
    return 0;
}
