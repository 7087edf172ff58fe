/*
 * ob_db.c - see ob_db.h.
 */
#include "ob_db.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define POLL_NS 50000000LL /* between two counts of PENDING orders */

PGconn *ob_db_connect(const char *conninfo)
{
    static const char check_sql[] = "SELECT 1 FROM orders LIMIT 0";
    const char *keys[] = {"dbname", "fallback_application_name", NULL};
    const char *vals[] = {conninfo, "orders-bench", NULL};
    PGconn *db = PQconnectdbParams(keys, vals, 1);
    PGresult *res;

    if (!db || PQstatus(db) != CONNECTION_OK) {
        ob_err("could not connect to the orders database (%s): %s", conninfo,
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

/* The run's PENDING orders; the partial index orders_pending holds only those.
 * Prepared once: the count runs every POLL_NS while the orders settle. */
static int count_pending(PGconn *db, const ob_run *run, bool prepare, int64_t *ret)
{
    static const char sql[] =
        "SELECT count(*) FROM orders WHERE status = 'PENDING' AND starts_with(customer_id, $1)";
    const char *p[1] = {run->prefix};
    PGresult *res;

    if (prepare) {
        res = PQprepare(db, "ob_pending", sql, 1, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            ob_err("could not prepare the count of pending orders: %s", PQerrorMessage(db));
            PQclear(res);
            return OB_EXIT_INFRA;
        }
        PQclear(res);
    }
    res = PQexecPrepared(db, "ob_pending", 1, p, NULL, NULL, 0);

    if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
        ob_err("could not count pending orders: %s", PQerrorMessage(db));
        PQclear(res);
        return OB_EXIT_INFRA;
    }
    *ret = strtoll(PQgetvalue(res, 0, 0), NULL, 10);
    PQclear(res);
    return 0;
}

int ob_db_wait(PGconn *db, ob_run *run)
{
    int64_t start = ob_mono_ns(), deadline = start + (int64_t)(run->o->timeout_s * 1e9);
    int64_t last_progress = start, pending = 0, t = 0;
    bool prepared = false;
    int r;

    if (run->accepted == 0)
        return 0;
    for (;;) {
        if ((r = count_pending(db, run, !prepared, &pending)) != 0)
            return r;
        prepared = true;
        t = ob_mono_ns();
        if (pending == 0)
            break;
        if (t >= deadline || ob_stop) {
            run->settle_timed_out = t >= deadline;
            run->interrupted |= ob_stop != 0;
            break;
        }
        if (t - last_progress >= 1000000000LL && !run->o->quiet) {
            fprintf(stderr, "orders-bench: %5.1f s  settling: %" PRId64 " orders pending\n",
                    (double)(t - run->t0_mono_ns) / 1e9, pending);
            last_progress = t;
        }
        ob_run_tick(run);
        sleep_ns(POLL_NS);
    }
    run->settle_wait_ns = t - (run->t0_mono_ns + run->end_ns);
    if (run->settle_wait_ns < 0)
        run->settle_wait_ns = 0;
    return 0;
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
