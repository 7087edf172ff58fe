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

const char *const os_migrations[] = {migration_1, cm_outbox_migration};
const size_t os_nmigrations = sizeof(os_migrations) / sizeof(os_migrations[0]);

/* ---- replies ---- */

static os_outcome outcome_of(PGresult *res, int col)
{
    if (PQgetisnull(res, 0, col))
        return OS_OUTCOME_UNKNOWN;
    return strcmp(PQgetvalue(res, 0, col), "t") == 0 ? OS_OUTCOME_YES : OS_OUTCOME_NO;
}

/* Applies one side's reply to the order, under its row lock. */
static int apply_reply(cm_daemon *d, PGconn *tx, const cm_record *rec, const char *order_id,
                       os_side side, bool yes, const char *why, char *reason, size_t reasonlen)
{
    static const char lock_sql[] = "SELECT status, payment_approved, inventory_reserved FROM orders"
                                   " WHERE order_id = $1 FOR UPDATE";
    /* One clock reading per update, so that the order's times agree. */
    static const char payment_sql[] =
        "UPDATE orders SET status = $2, payment_approved = $3::boolean, payment_reason = $4,"
        " payment_at = t.now, updated_at = t.now,"
        " settled_at = coalesce(settled_at, CASE WHEN $2 <> 'PENDING' THEN t.now END)"
        " FROM (SELECT clock_timestamp() AS now) t WHERE order_id = $1";
    static const char inventory_sql[] =
        "UPDATE orders SET status = $2, inventory_reserved = $3::boolean, inventory_reason = $4,"
        " inventory_at = t.now, updated_at = t.now,"
        " settled_at = coalesce(settled_at, CASE WHEN $2 <> 'PENDING' THEN t.now END)"
        " FROM (SELECT clock_timestamp() AS now) t WHERE order_id = $1";
    const char *p[4] = {order_id};
    os_order_state st;
    os_status before;
    PGresult *res;
    int r = cm_db_query(tx, &res, lock_sql, 1, p);

    if (r < 0)
        return r;
    if (PQntuples(res) == 0) {
        PQclear(res);
        snprintf(reason, reasonlen, "unknown order %s", order_id);
        return -ENOENT; /* tied to the record: retried, then dead-lettered */
    }
    st.status = (os_status)os_status_parse(PQgetvalue(res, 0, 0));
    st.payment = outcome_of(res, 1);
    st.inventory = outcome_of(res, 2);
    PQclear(res);
    before = st.status;
    if (!os_settle_apply(&st, side, yes)) {
        log_info("duplicate reply ignored order_id=%s side=%s " CM_REC_FMT, order_id,
                 side == OS_SIDE_PAYMENT ? "payment" : "inventory", CM_REC_ARGS(rec));
        return 0;
    }
    /* A settled order keeps its settled_at: only the first settling sets it. */
    p[1] = os_status_name(st.status);
    p[2] = yes ? "true" : "false";
    p[3] = why;
    r = cm_db_query(tx, NULL, side == OS_SIDE_PAYMENT ? payment_sql : inventory_sql, 4, p);
    if (r == 0 && before == OS_PENDING && st.status != OS_PENDING) {
        cm_metrics_add(cm_daemon_metrics(d), "orders_settled_total",
                       st.status == OS_CONFIRMED ? "status=\"CONFIRMED\"" : "status=\"REJECTED\"",
                       1);
        log_info("order settled order_id=%s status=%s " CM_REC_FMT, order_id,
                 os_status_name(st.status), CM_REC_ARGS(rec));
    }
    return r;
}

static int on_payment(void *ctx, PGconn *tx, const cm_record *rec, char *reason, size_t reasonlen)
{
    ev_payment_completed e;
    int r = ev_payment_completed_decode(rec->msg->payload, rec->msg->len, &e, reason, reasonlen);
    if (r < 0)
        return r;
    return apply_reply(ctx, tx, rec, e.order_id, OS_SIDE_PAYMENT, e.approved, e.reason, reason,
                       reasonlen);
}

static int on_inventory(void *ctx, PGconn *tx, const cm_record *rec, char *reason, size_t reasonlen)
{
    ev_inventory_reserved e;
    int r = ev_inventory_reserved_decode(rec->msg->payload, rec->msg->len, &e, reason, reasonlen);
    if (r < 0)
        return r;
    return apply_reply(ctx, tx, rec, e.order_id, OS_SIDE_INVENTORY, e.reserved, e.reason, reason,
                       reasonlen);
}

const cm_subscription os_subscriptions[] = {
    {EV_TOPIC_PAYMENTS_COMPLETED, on_payment},
    {EV_TOPIC_INVENTORY_RESERVED, on_inventory},
};
const size_t os_nsubscriptions = sizeof(os_subscriptions) / sizeof(os_subscriptions[0]);

/* Counted when the handler or request ran; a transaction rolled back and
 * retried may count twice (the orders table never does). */
const cm_metric_def os_metrics[] = {
    {"orders_placed_total", CM_METRIC_COUNTER, "Orders accepted by POST /orders."},
    {"orders_settled_total", CM_METRIC_COUNTER, "Orders settled, by final status."},
};
const size_t os_nmetrics = sizeof(os_metrics) / sizeof(os_metrics[0]);
