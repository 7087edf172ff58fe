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

/* Replies apply as a set (cm_set): a run of replies, of both sides, is one
 * statement. Row of a record: $1 orderId, $2 the side ("payment",
 * "inventory"), $3 the outcome ("true", "false"), $4 the reason, $5 the
 * reply's transitions (os_settle_table(): for each of the nine prior states,
 * the new status letter, or '-' where the reply changes nothing). The state
 * machine stays the one authority on transitions.
 *
 * One statement locks the run's orders and gives each reply the state that
 * applying the replies one by one in record order would give it: a side's
 * outcome is the stored one, or else that of the first reply for that side
 * earlier in the run (a later one is a duplicate: its table says '-'). The
 * status a reply found is that of the last reply before it that changed the
 * order, or the stored one. Each order is updated once, to its state after
 * the run, with one clock reading; a settled order keeps its settled_at.
 * Returns per reply to a known order: its ordinal, the status it found, the
 * status it made (NULL: a duplicate) and, for a reply that changed the
 * order, the seconds from creation to settlement (NULL: not settled yet). */
static const char reply_sql[] =
    "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::boolean[], $4::text[],"
    "  $5::text[]) WITH ORDINALITY AS r(order_id, side, yes, why, tbl, ord)),"
    " o AS ("
    "  SELECT order_id, status, payment_approved AS pay, inventory_reserved AS inv FROM orders"
    "  WHERE order_id IN (SELECT order_id FROM r) ORDER BY order_id FOR UPDATE),"
    " fp AS (SELECT DISTINCT ON (order_id) order_id, ord, yes, why FROM r"
    "  WHERE side = 'payment' ORDER BY order_id, ord),"
    " fi AS (SELECT DISTINCT ON (order_id) order_id, ord, yes, why FROM r"
    "  WHERE side = 'inventory' ORDER BY order_id, ord),"
    " x AS ("
    "  SELECT r.ord, r.order_id, o.status AS was, fp.ord AS p_ord, fp.yes AS p_yes,"
    "   fp.why AS p_why, fi.ord AS i_ord, fi.yes AS i_yes, fi.why AS i_why, substr(r.tbl, 1"
    "   + 3 * (CASE WHEN s.p IS NULL THEN 0 WHEN s.p THEN 1 ELSE 2 END)"
    "   + (CASE WHEN s.i IS NULL THEN 0 WHEN s.i THEN 1 ELSE 2 END), 1) AS next"
    "  FROM r JOIN o ON o.order_id = r.order_id"
    "   LEFT JOIN fp ON fp.order_id = r.order_id LEFT JOIN fi ON fi.order_id = r.order_id,"
    "   LATERAL (SELECT coalesce(o.pay, CASE WHEN fp.ord < r.ord THEN fp.yes END) AS p,"
    "    coalesce(o.inv, CASE WHEN fi.ord < r.ord THEN fi.yes END) AS i) s),"
    " y AS ("
    "  SELECT x.*, array_remove(array_agg(nullif(next, '-')) OVER (PARTITION BY order_id"
    "   ORDER BY ord ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), NULL) AS before"
    "  FROM x),"
    " fin AS ("
    "  SELECT DISTINCT ON (order_id) * FROM x WHERE next <> '-'"
    "  ORDER BY order_id, ord DESC),"
    " t AS (SELECT clock_timestamp() AS now),"
    " u AS ("
    "  UPDATE orders SET"
    "   status = CASE fin.next WHEN 'C' THEN 'CONFIRMED' WHEN 'R' THEN 'REJECTED'"
    "    ELSE 'PENDING' END,"
    "   payment_approved = coalesce(orders.payment_approved, fin.p_yes),"
    "   payment_reason = CASE WHEN orders.payment_approved IS NULL AND fin.p_ord IS NOT NULL"
    "    THEN fin.p_why ELSE orders.payment_reason END,"
    "   payment_at = CASE WHEN orders.payment_approved IS NULL AND fin.p_ord IS NOT NULL"
    "    THEN t.now ELSE orders.payment_at END,"
    "   inventory_reserved = coalesce(orders.inventory_reserved, fin.i_yes),"
    "   inventory_reason = CASE WHEN orders.inventory_reserved IS NULL AND fin.i_ord IS NOT NULL"
    "    THEN fin.i_why ELSE orders.inventory_reason END,"
    "   inventory_at = CASE WHEN orders.inventory_reserved IS NULL AND fin.i_ord IS NOT NULL"
    "    THEN t.now ELSE orders.inventory_at END,"
    "   updated_at = t.now,"
    "   settled_at = coalesce(orders.settled_at, CASE WHEN fin.next <> 'P' THEN t.now END)"
    "  FROM fin CROSS JOIN t"
    "  WHERE orders.order_id = fin.order_id"
    "  RETURNING orders.order_id,"
    "   extract(epoch FROM orders.settled_at - orders.created_at) AS secs),"
    " z AS (SELECT y.*, y.before[array_upper(y.before, 1)] AS last FROM y)"
    " SELECT z.ord,"
    "  CASE z.last WHEN 'C' THEN 'CONFIRMED' WHEN 'R' THEN 'REJECTED' WHEN 'P' THEN 'PENDING'"
    "   ELSE z.was END,"
    "  CASE z.next WHEN 'C' THEN 'CONFIRMED' WHEN 'R' THEN 'REJECTED' WHEN 'P' THEN 'PENDING' END,"
    "  CASE WHEN z.next IN ('C', 'R') THEN u.secs END"
    " FROM z LEFT JOIN u ON u.order_id = z.order_id";

static const cm_set reply_set = {{{reply_sql, 5}}, 1, 5};

/* A reply between plan and done. */
typedef struct {
    os_side side;
    char order_id[EV_ID_MAX + 1];
    char why[EV_REASON_MAX + 1];
    char table[10];
} reply;

/* Decodes one side's reply and gives its row to the run's statement. */
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
    plan->row[0] = y->order_id;
    plan->row[1] = side == OS_SIDE_PAYMENT ? "payment" : "inventory";
    plan->row[2] = yes ? "true" : "false";
    plan->row[3] = y->why;
    plan->row[4] = y->table;
    plan->in_set = true;
    return 0;
}

static int done_reply(void *ctx, const cm_record *rec, const cm_plan *plan, PGresult *const *res,
                      char *reason, size_t reasonlen)
{
    const reply *y = plan->state;
    const char *was = cm_plan_value(plan, 0, 1), *now = cm_plan_value(plan, 0, 2);
    const char *secs = cm_plan_value(plan, 0, 3);

    (void)res;
    if (!cm_plan_value(plan, 0, 0)) {
        snprintf(reason, reasonlen, "unknown order %s", y->order_id);
        return -ENOENT; /* tied to the record: retried, then dead-lettered */
    }
    if (!now) {
        cm_record_outcome(rec, "duplicate");
        log_info("duplicate reply ignored order_id=%s side=%s " CM_REC_FMT, y->order_id,
                 y->side == OS_SIDE_PAYMENT ? "payment" : "inventory", CM_REC_ARGS(rec));
    } else if (was && strcmp(was, "PENDING") == 0 && strcmp(now, "PENDING") != 0) {
        bool confirmed = strcmp(now, "CONFIRMED") == 0;
        cm_record_outcome(rec, confirmed ? "confirmed" : "rejected");
        cm_metrics_add(cm_daemon_metrics(ctx), "orders_settled_total",
                       confirmed ? "status=\"CONFIRMED\"" : "status=\"REJECTED\"", 1);
        /* created (the POST's commit) -> settled, both on the database's clock */
        if (secs)
            cm_metrics_observe(cm_daemon_metrics(ctx), "orders_settle_duration_seconds",
                               confirmed ? "outcome=\"confirmed\"" : "outcome=\"rejected\"",
                               strtod(secs, NULL));
        log_info("order settled order_id=%s status=%s " CM_REC_FMT, y->order_id, now,
                 CM_REC_ARGS(rec));
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
    {EV_TOPIC_PAYMENTS_COMPLETED, plan_payment, done_reply, &reply_set},
    {EV_TOPIC_INVENTORY_RESERVED, plan_inventory, done_reply, &reply_set},
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
