/*
 * os_order.c - see os_order.h.
 */
#include "os_order.h"

#include "cm_log.h"
#include "cm_outbox.h"
#include "ev_event.h"
#include "os_settle.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char migration_1[] =
    "CREATE TABLE orders ("
    " order_id text PRIMARY KEY,"
    " customer_id text NOT NULL,"
    " sku text NOT NULL,"
    " quantity integer NOT NULL CHECK (quantity >= 1),"
    " amount_cents bigint NOT NULL CHECK (amount_cents >= 0),"
    " status text NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'REJECTED')),"
    " payment_approved boolean, payment_reason text, payment_at timestamptz,"
    " inventory_reserved boolean, inventory_reason text, inventory_at timestamptz,"
    " created_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),"
    " settled_at timestamptz);"
    "CREATE INDEX orders_pending ON orders (created_at) WHERE status = 'PENDING';"
    "CREATE TABLE idempotency_keys ("
    " idem_key text PRIMARY KEY,"
    " fingerprint text NOT NULL,"
    " order_id text NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT now());";

/* Idempotency keys scoped by the name of the token that sent them: the
 * primary key becomes (scope, idem_key). Keys stored before keep
 * scope '' (shared, as they were) and their old fingerprint text, marked
 * "v1|" so that os_fingerprint_matches() compares it in its own encoding. */
static const char migration_3[] =
    "ALTER TABLE idempotency_keys ADD COLUMN scope text NOT NULL DEFAULT '';"
    "ALTER TABLE idempotency_keys ALTER COLUMN scope DROP DEFAULT;"
    "UPDATE idempotency_keys SET fingerprint = 'v1|' || fingerprint;"
    "ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey,"
    " ADD PRIMARY KEY (scope, idem_key);";

/* The trace id of the order's traceparent (the W3C trace the client's
 * traceparent started, or the one POST /orders started), so that "what
 * happened to order X" leads to its trace. NULL for orders stored before. */
static const char migration_4[] = "ALTER TABLE orders ADD COLUMN trace_id text;";

const char *const os_migrations[] = {migration_1, cm_outbox_migration, migration_3, migration_4};
const size_t os_nmigrations = sizeof(os_migrations) / sizeof(os_migrations[0]);

/* ---- replies ---- */

/* A reply costs one round trip: os_settle_table() gives, for this reply, the
 * transition from each of the nine possible prior states, and one statement
 * locks the order row, looks its current state up in that table and applies
 * the transition. The state machine stays the one authority on transitions. */
#define PRIOR_STATE_INDEX                                                                          \
    "1 + 3 * (CASE WHEN payment_approved IS NULL THEN 0 WHEN payment_approved THEN 1 ELSE 2 END)"  \
    " + (CASE WHEN inventory_reserved IS NULL THEN 0 WHEN inventory_reserved THEN 1 ELSE 2 END)"
#define APPLY_REPLY_SQL(side, outcome)                                                             \
    "WITH o AS ("                                                                                  \
    "  SELECT order_id, status, substr($2, " PRIOR_STATE_INDEX ", 1) AS next"                      \
    "  FROM orders WHERE order_id = $1 FOR UPDATE),"                                               \
    " t AS (SELECT clock_timestamp() AS now),"                                                     \
    " u AS ("                                                                                      \
    "  UPDATE orders SET"                                                                          \
    "   status = CASE o.next WHEN 'C' THEN 'CONFIRMED' WHEN 'R' THEN 'REJECTED'"                   \
    "    ELSE 'PENDING' END,"                                                                      \
    "   " outcome " = $3::boolean, " side "_reason = $4, " side "_at = t.now,"                     \
    "   updated_at = t.now,"                                                                       \
    "   settled_at = coalesce(orders.settled_at, CASE WHEN o.next <> 'P' THEN t.now END)"          \
    "  FROM o, t WHERE orders.order_id = o.order_id AND o.next <> '-'"                             \
    "  RETURNING orders.status,"                                                                   \
    "   extract(epoch FROM orders.settled_at - orders.created_at) AS secs)"                        \
    " SELECT o.status, (SELECT status FROM u), (SELECT secs FROM u) FROM o"

/* One clock reading per update, so that the order's times agree; a settled
 * order keeps its settled_at. */
static const char payment_sql[] = APPLY_REPLY_SQL("payment", "payment_approved");
static const char inventory_sql[] = APPLY_REPLY_SQL("inventory", "inventory_reserved");

/* A reply between plan and done. */
typedef struct {
    os_side side;
    char order_id[EV_ID_MAX + 1];
    char why[EV_REASON_MAX + 1];
    char table[10];
    const char *params[4];
} reply;

/* Decodes one side's reply and plans its one statement, which applies it to
 * the order under the order's row lock. */
static int plan_reply(const cm_record *rec, os_side side, cm_plan *plan, char *reason,
                      size_t reasonlen)
{
    reply *y = calloc(1, sizeof(*y));
    bool yes;
    int r;

    if (!y)
        return -ENOMEM;
    plan->state = y;
    plan->release = free;
    y->side = side;
    r = ev_outcome_decode(side == OS_SIDE_PAYMENT ? EV_PAYMENT_COMPLETED : EV_INVENTORY_RESERVED,
                          rec->msg->payload, rec->msg->len, y->order_id, &yes, y->why, reason,
                          reasonlen);
    if (r < 0)
        return r;
    os_settle_table(side, yes, y->table);
    y->params[0] = y->order_id;
    y->params[1] = y->table;
    y->params[2] = yes ? "true" : "false";
    y->params[3] = y->why;
    plan->stmts[0] =
        (cm_db_stmt){side == OS_SIDE_PAYMENT ? payment_sql : inventory_sql, 4, y->params};
    plan->n = 1;
    return 0;
}

static int done_reply(void *ctx, const cm_record *rec, const cm_plan *plan, PGresult *const *res,
                      char *reason, size_t reasonlen)
{
    const reply *y = plan->state;
    PGresult *r = res[0];

    if (PQntuples(r) == 0) {
        snprintf(reason, reasonlen, "unknown order %s", y->order_id);
        return -ENOENT; /* tied to the record: retried, then dead-lettered */
    }
    if (PQgetisnull(r, 0, 1)) {
        cm_record_outcome(rec, "duplicate");
        log_info("duplicate reply ignored order_id=%s side=%s " CM_REC_FMT, y->order_id,
                 y->side == OS_SIDE_PAYMENT ? "payment" : "inventory", CM_REC_ARGS(rec));
    } else if (strcmp(PQgetvalue(r, 0, 0), "PENDING") == 0 &&
               strcmp(PQgetvalue(r, 0, 1), "PENDING") != 0) {
        bool confirmed = strcmp(PQgetvalue(r, 0, 1), "CONFIRMED") == 0;
        cm_record_outcome(rec, confirmed ? "confirmed" : "rejected");
        cm_metrics_add(cm_daemon_metrics(ctx), "orders_settled_total",
                       confirmed ? "status=\"CONFIRMED\"" : "status=\"REJECTED\"", 1);
        /* created (the POST's commit) -> settled, both on the database's clock */
        if (!PQgetisnull(r, 0, 2))
            cm_metrics_observe(cm_daemon_metrics(ctx), "orders_settle_duration_seconds",
                               confirmed ? "outcome=\"confirmed\"" : "outcome=\"rejected\"",
                               strtod(PQgetvalue(r, 0, 2), NULL));
        log_info("order settled order_id=%s status=%s " CM_REC_FMT, y->order_id,
                 PQgetvalue(r, 0, 1), CM_REC_ARGS(rec));
    }
    return 0;
}

static int plan_payment(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                        size_t reasonlen)
{
    (void)ctx;
    return plan_reply(rec, OS_SIDE_PAYMENT, plan, reason, reasonlen);
}

static int plan_inventory(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                          size_t reasonlen)
{
    (void)ctx;
    return plan_reply(rec, OS_SIDE_INVENTORY, plan, reason, reasonlen);
}

const cm_subscription os_subscriptions[] = {
    {EV_TOPIC_PAYMENTS_COMPLETED, plan_payment, done_reply},
    {EV_TOPIC_INVENTORY_RESERVED, plan_inventory, done_reply},
};
const size_t os_nsubscriptions = sizeof(os_subscriptions) / sizeof(os_subscriptions[0]);

/* Counted when the handler or request ran; a transaction rolled back and
 * retried may count twice (the orders table never does). */
const cm_metric_def os_metrics[] = {
    {"orders_placed_total", CM_METRIC_COUNTER, "Orders accepted by POST /orders."},
    {"orders_settled_total", CM_METRIC_COUNTER, "Orders settled, by final status."},
    {"orders_settle_duration_seconds", CM_METRIC_HISTOGRAM,
     "Time from an order's creation to its settlement, by outcome."},
    {"orders_pending", CM_METRIC_GAUGE, "Orders waiting for a reply (PENDING)."},
    {"orders_pending_oldest_age_seconds", CM_METRIC_GAUGE,
     "Age of the oldest PENDING order (0 when none)."},
};
const size_t os_nmetrics = sizeof(os_metrics) / sizeof(os_metrics[0]);

/* One query over the partial index of PENDING orders, on scrape. With the
 * database down the gauges keep their last values; orders_dependency_up and
 * orders_ready say why. */
void os_scrape(cm_daemon *d)
{
    static const char sql[] =
        "SELECT count(*), coalesce(extract(epoch FROM clock_timestamp() - min(created_at)), 0)"
        " FROM orders WHERE status = 'PENDING'";
    cm_http_resp ignored = {0};
    PGresult *res;
    PGconn *conn = cm_daemon_db(d, &ignored);
    int r;

    json_decref(ignored.body);
    if (!conn)
        return;
    r = cm_db_query(conn, &res, sql, 0, NULL);
    cm_daemon_db_release(d, conn);
    if (r < 0)
        return;
    cm_metrics_set(cm_daemon_metrics(d), "orders_pending", "", strtod(PQgetvalue(res, 0, 0), NULL));
    cm_metrics_set(cm_daemon_metrics(d), "orders_pending_oldest_age_seconds", "",
                   strtod(PQgetvalue(res, 0, 1), NULL));
    PQclear(res);
}
