/*
 * is_inventory.c - see is_inventory.h.
 */
#include "is_inventory.h"

#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_outbox_http.h"
#include "cm_saga.h"
#include "ev_event.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char migration_1[] =
    "CREATE TABLE stock ("
    " sku text PRIMARY KEY,"
    " available integer NOT NULL CHECK (available >= 0),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE reservations ("
    " order_id text PRIMARY KEY,"
    " sku text NOT NULL,"
    " quantity integer NOT NULL,"
    " status text NOT NULL"
    "  CHECK (status IN ('PENDING', 'RESERVED', 'REJECTED', 'RELEASED', 'CANCELLED')),"
    " reason text NOT NULL,"
    " release_reason text,"
    " released_at timestamptz,"
    " created_at timestamptz NOT NULL DEFAULT now());";

/* A release adds back what a reservation took, onto a stock that PUT may
 * have set to its largest value meanwhile: bigint leaves room for that
 * (an integer overflowed, and a release that cannot be applied is retried
 * and dead-lettered). */
static const char migration_3[] = "ALTER TABLE stock ALTER COLUMN available TYPE bigint;";

const char *const is_migrations[] = {migration_1, cm_outbox_migration, migration_3};
const size_t is_nmigrations = sizeof(is_migrations) / sizeof(is_migrations[0]);

/* OrderCreated records apply as a set (cm_set): a run of records costs two
 * statements, whatever its length. Row of a record (cm_outbox_reply_plan):
 * $1 orderId, $2 sku, $3 quantity, $4 the reply topic, $5..$8 the reply
 * payloads for OK, OUT_OF_STOCK, UNKNOWN_SKU, ORDER_CANCELLED, $9 the reply
 * headers; each a text[] over the run. */
#define RESERVE_ROWS                                                                               \
    "unnest($1::text[], $2::text[], $3::int[], $4::text[], $5::text[], $6::text[], $7::text[],"    \
    " $8::text[], $9::text[]) WITH ORDINALITY AS r(order_id, sku, qty, topic, p_ok, p_out,"        \
    " p_unknown, p_cancelled, headers, ord)"

/* Claims the run's orders: the dedupe. Only the first record of an order in
 * the run claims it (a later one is its duplicate). A concurrent duplicate
 * waits on the primary key until the first transaction ends, then finds the
 * claim taken and changes nothing. A tombstone left by an earlier declined
 * payment (CANCELLED) becomes a claim marked ORDER_CANCELLED: rejected, no
 * stock. */
static const char claim_sql[] =
    "INSERT INTO reservations(order_id, sku, quantity, status, reason)"
    " SELECT DISTINCT ON (order_id) order_id, sku, qty, 'PENDING', ''"
    " FROM unnest($1::text[], $2::text[], $3::int[]) WITH ORDINALITY AS r(order_id, sku, qty, ord)"
    " ORDER BY order_id, ord"
    " ON CONFLICT (order_id) DO UPDATE SET sku = EXCLUDED.sku, quantity = EXCLUDED.quantity,"
    "  status = 'PENDING', reason = 'ORDER_CANCELLED'"
    " WHERE reservations.status = 'CANCELLED'";

/* Applies the run's claims (PENDING rows; none for duplicates): takes the
 * stock, records the outcomes and writes the replies chosen by the verdicts
 * into the outbox, in record order, in one statement. Stock goes in record
 * order per SKU, as one reservation after another would take it: while a
 * SKU's running sum (cum) stays within what is available every reservation
 * passes; from the first that does not, "run" walks the rest one by one, so
 * a later smaller one may still pass. The stock rows are locked first
 * (FOR UPDATE: the latest count, and concurrent reservations wait), so none
 * goes below zero. Returns (ordinal, verdict) per claim. */
static const char reserve_sql[] =
    "WITH RECURSIVE r AS (SELECT * FROM " RESERVE_ROWS "),"
    " claim AS ("
    "  SELECT DISTINCT ON (r.order_id) r.*, v.reason AS mark"
    "  FROM r JOIN reservations v USING (order_id)"
    "  WHERE v.status = 'PENDING' ORDER BY r.order_id, r.ord),"
    " c AS ("
    "  SELECT claim.*, a.bal, claim.mark = '' AND a.bal IS NOT NULL AS live,"
    "   count(*) FILTER (WHERE claim.mark = '' AND a.bal IS NOT NULL) OVER w AS rn,"
    "   sum(claim.qty) FILTER (WHERE claim.mark = '' AND a.bal IS NOT NULL) OVER w AS cum"
    "  FROM (SELECT * FROM claim ORDER BY sku, ord) claim LEFT JOIN LATERAL ("
    "   SELECT available AS bal FROM stock WHERE stock.sku = claim.sku AND claim.mark = ''"
    "   FOR UPDATE) a ON true"
    "  WINDOW w AS (PARTITION BY claim.sku ORDER BY claim.ord)),"
    " run(sku, rn, ord, ok, rest) AS ("
    "  SELECT sku, rn, ord, false, bal - (cum - qty) FROM c"
    "  WHERE live AND cum > bal AND cum - qty <= bal"
    "  UNION ALL"
    "  SELECT c.sku, c.rn, c.ord, run.rest >= c.qty,"
    "   run.rest - CASE WHEN run.rest >= c.qty THEN c.qty ELSE 0 END"
    "  FROM run JOIN c ON c.sku = run.sku AND c.rn = run.rn + 1 AND c.live),"
    " verdict AS ("
    "  SELECT c.*, CASE WHEN c.mark = 'ORDER_CANCELLED' THEN 'ORDER_CANCELLED'"
    "   WHEN c.bal IS NULL THEN 'UNKNOWN_SKU'"
    "   WHEN c.cum <= c.bal OR run.ok THEN 'OK' ELSE 'OUT_OF_STOCK' END AS reason"
    "  FROM c LEFT JOIN run ON run.ord = c.ord),"
    " take AS ("
    "  UPDATE stock SET available = stock.available - t.total, updated_at = now()"
    "  FROM (SELECT sku, sum(qty) AS total FROM verdict WHERE reason = 'OK' GROUP BY sku) t"
    "  WHERE stock.sku = t.sku),"
    " settle AS ("
    "  UPDATE reservations SET reason = verdict.reason,"
    "  status = CASE WHEN verdict.reason = 'OK' THEN 'RESERVED' ELSE 'REJECTED' END"
    "  FROM verdict WHERE reservations.order_id = verdict.order_id),"
    " reply AS ("
    "  INSERT INTO outbox(topic, msg_key, payload, headers)"
    "  SELECT topic, order_id, CASE reason WHEN 'OK' THEN p_ok WHEN 'OUT_OF_STOCK' THEN p_out"
    "   WHEN 'UNKNOWN_SKU' THEN p_unknown ELSE p_cancelled END, headers::jsonb"
    "  FROM verdict ORDER BY ord)"
    " SELECT ord, reason FROM verdict";

static const cm_set reserve_set = {{{claim_sql, 3}, {reserve_sql, 9}}, 2, CM_OUTBOX_REPLY_COLS};

/* An OrderCreated between plan and done. */
typedef struct {
    ev_order_created o;
    char qty[16];
    const char *params[3];
    cm_outbox_reply reply;
} reserve;

static void reserve_free(void *state)
{
    reserve *v = state;
    cm_outbox_reply_free(&v->reply);
    free(v);
}

static int plan_order_created(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                              size_t reasonlen)
{
    static const char *const verdicts[4] = {"OK", "OUT_OF_STOCK", "UNKNOWN_SKU", "ORDER_CANCELLED"};
    reserve *v = calloc(1, sizeof(*v));
    int r;
    (void)ctx;

    if (!v)
        return -ENOMEM;
    plan->state = v;
    plan->release = reserve_free;
    r = ev_order_created_decode(rec->msg->payload, rec->msg->len, &v->o, reason, reasonlen);
    if (r < 0)
        return r;
    snprintf(v->qty, sizeof(v->qty), "%d", (int)v->o.quantity);
    v->params[0] = v->o.order_id;
    v->params[1] = v->o.sku;
    v->params[2] = v->qty;
    return cm_outbox_reply_plan(&v->reply, plan, EV_INVENTORY_RESERVED, v->params, verdicts,
                                rec->traceparent);
}

static int done_order_created(void *ctx, const cm_record *rec, const cm_plan *plan,
                              PGresult *const *res, char *reason, size_t reasonlen)
{
    const reserve *v = plan->state;
    const ev_order_created *o = &v->o;
    char verdict[32];
    (void)reason;
    (void)reasonlen;

    (void)res;
    if (cm_outbox_reply_done(plan, verdict, sizeof(verdict)) == 0) {
        /* A duplicate: its reply went to the outbox with the first one. */
        cm_record_outcome(rec, "duplicate");
        log_info("duplicate order ignored order_id=%s " CM_REC_FMT, o->order_id, CM_REC_ARGS(rec));
        return 0;
    }
    bool reserved = strcmp(verdict, "OK") == 0;
    cm_record_outcome(rec, reserved ? "reserved" : "rejected");
    cm_metrics_add(cm_daemon_metrics(ctx), "orders_reservations_total",
                   reserved ? "outcome=\"reserved\"" : "outcome=\"rejected\"", 1);
    log_info("stock %s order_id=%s sku=%s quantity=%d reason=%s " CM_REC_FMT,
             reserved ? "reserved" : "rejected", o->order_id, o->sku, (int)o->quantity, verdict,
             CM_REC_ARGS(rec));
    return 0;
}

/* Compensation: the payment was declined, so the stock is released; if the
 * order has not arrived yet, a CANCELLED tombstone keeps it from reserving.
 * A set (cm_saga.h): the rows are $1 orderId, $2 the reason; only the first
 * record of an order in a run acts (a later one is its duplicate). */
#define SAGA_ROWS                                                                                  \
    "SELECT DISTINCT ON (order_id) * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY"          \
    " AS r(order_id, why, ord) ORDER BY order_id, ord"
static const char remember_sql[] =
    "WITH f AS (" SAGA_ROWS "),"
    " tomb AS ("
    "  INSERT INTO reservations(order_id, sku, quantity, status, reason, release_reason)"
    "  SELECT order_id, '', 0, 'CANCELLED', '', why FROM f ORDER BY order_id"
    "  ON CONFLICT (order_id) DO NOTHING RETURNING order_id)"
    " SELECT f.ord FROM tomb JOIN f USING (order_id)";
/* A SKU released twice in a run gets the sum in one update. */
static const char release_sql[] =
    "WITH f AS (" SAGA_ROWS "),"
    " v AS ("
    "  UPDATE reservations SET status = 'RELEASED', release_reason = f.why, released_at = now()"
    "  FROM f WHERE reservations.order_id = f.order_id AND reservations.status = 'RESERVED'"
    "  RETURNING reservations.order_id, reservations.sku, reservations.quantity),"
    " back AS ("
    "  UPDATE stock SET available = stock.available + t.total, updated_at = now()"
    "  FROM (SELECT sku, sum(quantity) AS total FROM v GROUP BY sku) t WHERE stock.sku = t.sku)"
    " SELECT f.ord, v.quantity FROM v JOIN f USING (order_id)";

static const cm_set release_set = {{{remember_sql, 2}, {release_sql, 2}}, 2, CM_SAGA_COLS};

static const cm_saga_def release = {
    .type = EV_PAYMENT_COMPLETED,
    .metric = "orders_reservations_total",
    .undone_labels = "outcome=\"released\"",
    .remembered_labels = "outcome=\"cancelled\"",
    .undone_outcome = "released",
    .remembered_outcome = "cancelled",
    .undone_log = "stock released",
    .remembered_log = "order cancelled before reservation",
};

static int plan_payment_completed(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                                  size_t reasonlen)
{
    (void)ctx;
    return cm_saga_plan(&release, rec, plan, reason, reasonlen);
}

static int done_payment_completed(void *ctx, const cm_record *rec, const cm_plan *plan,
                                  PGresult *const *res, char *reason, size_t reasonlen)
{
    (void)res;
    (void)reason;
    (void)reasonlen;
    return cm_saga_done(&release, cm_daemon_metrics(ctx), rec, plan);
}

const cm_subscription is_subscriptions[] = {
    {EV_TOPIC_ORDERS_CREATED, plan_order_created, done_order_created, &reserve_set},
    {EV_TOPIC_PAYMENTS_COMPLETED, plan_payment_completed, done_payment_completed, &release_set},
};
const size_t is_nsubscriptions = sizeof(is_subscriptions) / sizeof(is_subscriptions[0]);

/* ---- HTTP ---- */

static void put_stock(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    static const char sql[] = "INSERT INTO stock(sku, available) VALUES ($1, $2::bigint)"
                              " ON CONFLICT (sku) DO UPDATE SET available = EXCLUDED.available,"
                              " updated_at = now()";
    json_t *body;
    long long available;
    char a[24];
    PGconn *conn;
    int r;

    if (!ev_id_valid(req->param, EV_SKU_MAX)) {
        cm_http_problem(resp, 400, "Bad Request", "invalid sku");
        return;
    }
    if (!(body = cm_http_json_body(req, resp)))
        return;
    r = cm_http_json_int(body, "available", 0, 2147483647LL, &available, resp);
    json_decref(body);
    if (r < 0 || !(conn = cm_daemon_db(ctx, resp)))
        return;
    snprintf(a, sizeof(a), "%lld", available);
    const char *p[2] = {req->param, a};
    r = cm_db_query(conn, NULL, sql, 2, p);
    cm_daemon_db_release(ctx, conn);
    if (r < 0) {
        cm_daemon_db_problem(resp, r);
        return;
    }
    log_info("stock set sku=%s available=%lld", req->param, available);
    resp->status = 200;
    resp->body = json_pack("{s:s, s:I}", "sku", req->param, "available", (json_int_t)available);
}

static json_t *stock_json(PGresult *res)
{
    return json_pack("{s:s, s:I}", "sku", PQgetvalue(res, 0, 0), "available",
                     (json_int_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10));
}

static void get_stock(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    static const char sql[] = "SELECT sku, available FROM stock WHERE sku = $1";
    cm_daemon_get_one(ctx, req, resp, sql, "sku", stock_json);
}

static json_t *text_or_null(PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? json_null() : json_string(PQgetvalue(res, 0, col));
}

static json_t *reservation_json(PGresult *res)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:o, s:o}", "orderId", PQgetvalue(res, 0, 0),
                     "sku", PQgetvalue(res, 0, 1), "quantity",
                     (json_int_t)strtoll(PQgetvalue(res, 0, 2), NULL, 10), "status",
                     PQgetvalue(res, 0, 3), "reason", PQgetvalue(res, 0, 4), "createdAt",
                     PQgetvalue(res, 0, 5), "releaseReason", text_or_null(res, 6), "releasedAt",
                     text_or_null(res, 7));
}

/* created_at is when the reservation (or the rejection) was decided, or when
 * a tombstone remembered an early decline of the payment (CANCELLED). */
static void get_reservation(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    /* clang-format off */
    static const char sql[] =
        "SELECT order_id, sku, quantity, status, reason,"
        " " CM_DB_ISO_TS("created_at") ", release_reason, " CM_DB_ISO_TS("released_at")
        " FROM reservations WHERE order_id = $1";
    /* clang-format on */
    cm_daemon_get_one(ctx, req, resp, sql, "reservation for order", reservation_json);
}

const cm_http_route is_routes[] = {
    {"PUT", "/stock/{}", put_stock, NULL, "inventory:admin", false},
    {"GET", "/stock/{}", get_stock, NULL, "inventory:read", false},
    {"GET", "/reservations/{}", get_reservation, NULL, "inventory:read", false},
    {"GET", "/outbox/{}", cm_outbox_http_get, NULL, "inventory:read", false},
};
const size_t is_nroutes = sizeof(is_routes) / sizeof(is_routes[0]);

/* Counted when the handler ran; a transaction rolled back and retried may
 * count an outcome twice (the stock itself never is). */
const cm_metric_def is_metrics[] = {
    {"orders_reservations_total", CM_METRIC_COUNTER,
     "Reservation outcomes: reserved, rejected, released, cancelled before the order arrived."},
};
const size_t is_nmetrics = sizeof(is_metrics) / sizeof(is_metrics[0]);
