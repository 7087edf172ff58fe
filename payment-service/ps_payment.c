/*
 * ps_payment.c - see ps_payment.h.
 */
#include "ps_payment.h"

#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_outbox_http.h"
#include "cm_saga.h"
#include "ev_event.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char migration_1[] =
    "CREATE TABLE accounts ("
    " customer_id text PRIMARY KEY,"
    " balance_cents bigint NOT NULL CHECK (balance_cents >= 0),"
    " updated_at timestamptz NOT NULL DEFAULT now());"
    "CREATE TABLE payments ("
    " order_id text PRIMARY KEY,"
    " customer_id text NOT NULL,"
    " amount_cents bigint NOT NULL,"
    " status text NOT NULL"
    "  CHECK (status IN ('PENDING', 'CHARGED', 'DECLINED', 'REFUNDED', 'CANCELLED')),"
    " reason text NOT NULL,"
    " refund_reason text,"
    " refunded_at timestamptz,"
    " created_at timestamptz NOT NULL DEFAULT now());";

const char *const ps_migrations[] = {migration_1, cm_outbox_migration};
const size_t ps_nmigrations = sizeof(ps_migrations) / sizeof(ps_migrations[0]);

/* Claims the order: the dedupe. A concurrent duplicate waits on the primary
 * key until the first transaction ends, then finds the claim taken and
 * changes nothing. A tombstone left by an earlier rejection of the stock
 * (CANCELLED) becomes a claim marked ORDER_CANCELLED: declined, not charged. */
static const char claim_sql[] =
    "INSERT INTO payments(order_id, customer_id, amount_cents, status, reason)"
    " VALUES ($1, $2, $3::bigint, 'PENDING', '') ON CONFLICT (order_id) DO UPDATE"
    " SET customer_id = EXCLUDED.customer_id, amount_cents = EXCLUDED.amount_cents,"
    "  status = 'PENDING', reason = 'ORDER_CANCELLED'"
    " WHERE payments.status = 'CANCELLED'";

/* Applies this transaction's claim (a PENDING row; none for a duplicate):
 * debits the account, records the outcome and writes the reply chosen by the
 * verdict into the outbox, in one statement. "balance >= amount" is
 * re-checked under the row lock, so concurrent charges never take a balance
 * below zero. */
static const char charge_sql[] =
    "WITH claim AS ("
    "  SELECT reason AS mark FROM payments WHERE order_id = $1 AND status = 'PENDING'),"
    " debit AS ("
    "  UPDATE accounts SET balance_cents = balance_cents - $3::bigint, updated_at = now()"
    "  WHERE customer_id = $2 AND balance_cents >= $3::bigint"
    "  AND EXISTS (SELECT 1 FROM claim WHERE mark = '') RETURNING customer_id),"
    " verdict AS (SELECT CASE WHEN mark = 'ORDER_CANCELLED' THEN 'ORDER_CANCELLED'"
    "   WHEN EXISTS (SELECT 1 FROM debit) THEN 'OK'"
    "   WHEN EXISTS (SELECT 1 FROM accounts WHERE customer_id = $2) THEN 'INSUFFICIENT_FUNDS'"
    "   ELSE 'UNKNOWN_CUSTOMER' END AS reason FROM claim),"
    " settle AS ("
    "  UPDATE payments SET reason = verdict.reason,"
    "  status = CASE WHEN verdict.reason = 'OK' THEN 'CHARGED' ELSE 'DECLINED' END"
    "  FROM verdict WHERE payments.order_id = $1 RETURNING payments.reason)"
    " INSERT INTO outbox(topic, msg_key, payload, headers)"
    " SELECT $4, $1, CASE reason WHEN 'OK' THEN $5 WHEN 'INSUFFICIENT_FUNDS' THEN $6"
    "  WHEN 'UNKNOWN_CUSTOMER' THEN $7 ELSE $8 END, $9::jsonb FROM settle"
    " RETURNING (SELECT reason FROM settle)";

/* An OrderCreated between plan and done. */
typedef struct {
    ev_order_created o;
    char amount[24];
    const char *params[3];
    cm_outbox_reply reply;
} charge;

static void charge_free(void *state)
{
    charge *c = state;
    cm_outbox_reply_free(&c->reply);
    free(c);
}

static int plan_order_created(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                              size_t reasonlen)
{
    static const char *const verdicts[4] = {"OK", "INSUFFICIENT_FUNDS", "UNKNOWN_CUSTOMER",
                                            "ORDER_CANCELLED"};
    charge *c = calloc(1, sizeof(*c));
    int r;
    (void)ctx;

    if (!c)
        return -ENOMEM;
    plan->state = c;
    plan->release = charge_free;
    r = ev_order_created_decode(rec->msg->payload, rec->msg->len, &c->o, reason, reasonlen);
    if (r < 0)
        return r;
    snprintf(c->amount, sizeof(c->amount), "%" PRId64, c->o.amount_cents);
    c->params[0] = c->o.order_id;
    c->params[1] = c->o.customer_id;
    c->params[2] = c->amount;
    return cm_outbox_reply_plan(&c->reply, plan, EV_PAYMENT_COMPLETED, claim_sql, charge_sql,
                                c->params, verdicts, rec->traceparent);
}

static int done_order_created(void *ctx, const cm_record *rec, const cm_plan *plan,
                              PGresult *const *res, char *reason, size_t reasonlen)
{
    const charge *c = plan->state;
    const ev_order_created *o = &c->o;
    char verdict[32];
    (void)reason;
    (void)reasonlen;

    if (cm_outbox_reply_done(res, verdict, sizeof(verdict)) == 0) {
        /* A duplicate: its reply went to the outbox with the first one. */
        cm_record_outcome(rec, "duplicate");
        log_info("duplicate order ignored order_id=%s " CM_REC_FMT, o->order_id, CM_REC_ARGS(rec));
        return 0;
    }
    bool approved = strcmp(verdict, "OK") == 0;
    cm_record_outcome(rec, approved ? "charged" : "declined");
    cm_metrics_add(cm_daemon_metrics(ctx), "orders_payments_total",
                   approved ? "outcome=\"charged\"" : "outcome=\"declined\"", 1);
    log_info("payment %s order_id=%s customer_id=%s amount_cents=%" PRId64 " reason=%s " CM_REC_FMT,
             approved ? "charged" : "declined", o->order_id, o->customer_id, o->amount_cents,
             verdict, CM_REC_ARGS(rec));
    return 0;
}

/* Compensation: stock was rejected, so the charge is refunded; if the order
 * has not arrived yet, a CANCELLED tombstone keeps it from being charged. */
static const char remember_sql[] =
    "INSERT INTO payments(order_id, customer_id, amount_cents, status, reason, refund_reason)"
    " VALUES ($1, '', 0, 'CANCELLED', '', $2) ON CONFLICT (order_id) DO NOTHING";
static const char refund_sql[] =
    "WITH p AS ("
    "  UPDATE payments SET status = 'REFUNDED', refund_reason = $2, refunded_at = now()"
    "  WHERE order_id = $1 AND status = 'CHARGED' RETURNING customer_id, amount_cents)"
    " UPDATE accounts SET balance_cents = accounts.balance_cents + p.amount_cents,"
    "  updated_at = now()"
    " FROM p WHERE accounts.customer_id = p.customer_id RETURNING p.amount_cents";

static const cm_saga_def refund = {
    .type = EV_INVENTORY_RESERVED,
    .remember_sql = remember_sql,
    .undo_sql = refund_sql,
    .metric = "orders_payments_total",
    .undone_labels = "outcome=\"refunded\"",
    .remembered_labels = "outcome=\"cancelled\"",
    .undone_outcome = "refunded",
    .remembered_outcome = "cancelled",
    .undone_log = "payment refunded",
    .remembered_log = "order cancelled before payment",
};

static int plan_inventory_reserved(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                                   size_t reasonlen)
{
    (void)ctx;
    return cm_saga_plan(&refund, rec, plan, reason, reasonlen);
}

static int done_inventory_reserved(void *ctx, const cm_record *rec, const cm_plan *plan,
                                   PGresult *const *res, char *reason, size_t reasonlen)
{
    (void)reason;
    (void)reasonlen;
    return cm_saga_done(&refund, cm_daemon_metrics(ctx), rec, plan, res);
}

const cm_subscription ps_subscriptions[] = {
    {EV_TOPIC_ORDERS_CREATED, plan_order_created, done_order_created},
    {EV_TOPIC_INVENTORY_RESERVED, plan_inventory_reserved, done_inventory_reserved},
};
const size_t ps_nsubscriptions = sizeof(ps_subscriptions) / sizeof(ps_subscriptions[0]);

/* ---- HTTP ---- */

static void put_account(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    static const char sql[] =
        "INSERT INTO accounts(customer_id, balance_cents) VALUES ($1, $2::bigint)"
        " ON CONFLICT (customer_id) DO UPDATE SET balance_cents = EXCLUDED.balance_cents,"
        " updated_at = now()";
    json_t *body;
    long long balance;
    char b[24];
    PGconn *conn;
    int r;

    if (!ev_id_valid(req->param, EV_ID_MAX)) {
        cm_http_problem(resp, 400, "Bad Request", "invalid customer id");
        return;
    }
    body = cm_http_json_body(req, resp);
    if (!body)
        return;
    r = cm_http_json_int(body, "balanceCents", 0, 1000000000000000LL, &balance, resp);
    json_decref(body);
    if (r < 0 || !(conn = cm_daemon_db(ctx, resp)))
        return;
    snprintf(b, sizeof(b), "%lld", balance);
    const char *p[2] = {req->param, b};
    r = cm_db_query(conn, NULL, sql, 2, p);
    cm_daemon_db_release(ctx, conn);
    if (r < 0) {
        cm_daemon_db_problem(resp, r);
        return;
    }
    log_info("account set customer_id=%s balance_cents=%lld", req->param, balance);
    resp->status = 200;
    resp->body =
        json_pack("{s:s, s:I}", "customerId", req->param, "balanceCents", (json_int_t)balance);
}

static json_t *account_json(PGresult *res)
{
    return json_pack("{s:s, s:I}", "customerId", PQgetvalue(res, 0, 0), "balanceCents",
                     (json_int_t)strtoll(PQgetvalue(res, 0, 1), NULL, 10));
}

static void get_account(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    static const char sql[] =
        "SELECT customer_id, balance_cents FROM accounts WHERE customer_id = $1";
    cm_daemon_get_one(ctx, req, resp, sql, "account", account_json);
}

static json_t *text_or_null(PGresult *res, int col)
{
    return PQgetisnull(res, 0, col) ? json_null() : json_string(PQgetvalue(res, 0, col));
}

static json_t *payment_json(PGresult *res)
{
    return json_pack("{s:s, s:s, s:I, s:s, s:s, s:s, s:o, s:o}", "orderId", PQgetvalue(res, 0, 0),
                     "customerId", PQgetvalue(res, 0, 1), "amountCents",
                     (json_int_t)strtoll(PQgetvalue(res, 0, 2), NULL, 10), "status",
                     PQgetvalue(res, 0, 3), "reason", PQgetvalue(res, 0, 4), "createdAt",
                     PQgetvalue(res, 0, 5), "refundReason", text_or_null(res, 6), "refundedAt",
                     text_or_null(res, 7));
}

/* created_at is when the charge (or the decline) was decided, or when a
 * tombstone remembered an early rejection of the stock (CANCELLED). */
static void get_payment(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    /* clang-format off */
    static const char sql[] =
        "SELECT order_id, customer_id, amount_cents, status, reason,"
        " " CM_DB_ISO_TS("created_at") ", refund_reason, " CM_DB_ISO_TS("refunded_at")
        " FROM payments WHERE order_id = $1";
    /* clang-format on */
    cm_daemon_get_one(ctx, req, resp, sql, "payment for order", payment_json);
}

const cm_http_route ps_routes[] = {
    {"PUT", "/accounts/{}", put_account, NULL, "payments:admin", false},
    {"GET", "/accounts/{}", get_account, NULL, "payments:read", false},
    {"GET", "/payments/{}", get_payment, NULL, "payments:read", false},
    {"GET", "/outbox/{}", cm_outbox_http_get, NULL, "payments:read", false},
};
const size_t ps_nroutes = sizeof(ps_routes) / sizeof(ps_routes[0]);

/* Counted when the handler ran; a transaction rolled back and retried may
 * count an outcome twice (the ledger itself never does). */
const cm_metric_def ps_metrics[] = {
    {"orders_payments_total", CM_METRIC_COUNTER,
     "Payment outcomes: charged, declined, refunded, cancelled before the order arrived."},
};
const size_t ps_nmetrics = sizeof(ps_metrics) / sizeof(ps_metrics[0]);
