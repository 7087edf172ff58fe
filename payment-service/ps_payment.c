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

/* OrderCreated records apply as a set (cm_set): a run of records costs two
 * statements, whatever its length. Row of a record (cm_outbox_reply_plan):
 * $1 orderId, $2 customerId, $3 amountCents, $4 the reply topic, $5..$8 the
 * reply payloads for OK, INSUFFICIENT_FUNDS, UNKNOWN_CUSTOMER,
 * ORDER_CANCELLED, $9 the reply headers; each a text[] over the run. */
#define CHARGE_ROWS                                                                                \
    "unnest($1::text[], $2::text[], $3::bigint[], $4::text[], $5::text[], $6::text[], $7::text[]," \
    " $8::text[], $9::text[]) WITH ORDINALITY AS r(order_id, customer_id, amount, topic, p_ok,"    \
    " p_funds, p_unknown, p_cancelled, headers, ord)"

/* Claims the run's orders: the dedupe. Only the first record of an order in
 * the run claims it (a later one is its duplicate). A concurrent duplicate
 * waits on the primary key until the first transaction ends, then finds the
 * claim taken and changes nothing. A tombstone left by an earlier rejection
 * of the stock (CANCELLED) becomes a claim marked ORDER_CANCELLED: declined,
 * not charged. */
static const char claim_sql[] =
    "INSERT INTO payments(order_id, customer_id, amount_cents, status, reason)"
    " SELECT DISTINCT ON (order_id) order_id, customer_id, amount, 'PENDING', ''"
    " FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY"
    "  AS r(order_id, customer_id, amount, ord)"
    " ORDER BY order_id, ord"
    " ON CONFLICT (order_id) DO UPDATE"
    " SET customer_id = EXCLUDED.customer_id, amount_cents = EXCLUDED.amount_cents,"
    "  status = 'PENDING', reason = 'ORDER_CANCELLED'"
    " WHERE payments.status = 'CANCELLED'";

/* Applies the run's claims (PENDING rows; none for duplicates): debits the
 * accounts, records the outcomes and writes the replies chosen by the
 * verdicts into the outbox, in record order, in one statement. Funds go in
 * record order per customer, as one charge after another would take them:
 * while a customer's running sum (cum) stays within the balance every charge
 * passes; from the first that does not, "run" walks the rest one by one,
 * so a later smaller charge may still pass. The accounts are locked first
 * (FOR UPDATE: the latest balance, and concurrent charges wait), so no
 * balance goes below zero. Returns (ordinal, verdict) per claim. */
static const char charge_sql[] =
    "WITH RECURSIVE r AS (SELECT * FROM " CHARGE_ROWS "),"
    " claim AS ("
    "  SELECT DISTINCT ON (r.order_id) r.*, p.reason AS mark"
    "  FROM r JOIN payments p USING (order_id)"
    "  WHERE p.status = 'PENDING' ORDER BY r.order_id, r.ord),"
    " c AS ("
    "  SELECT claim.*, a.bal, claim.mark = '' AND a.bal IS NOT NULL AS live,"
    "   count(*) FILTER (WHERE claim.mark = '' AND a.bal IS NOT NULL) OVER w AS rn,"
    "   sum(claim.amount) FILTER (WHERE claim.mark = '' AND a.bal IS NOT NULL) OVER w AS cum"
    "  FROM (SELECT * FROM claim ORDER BY customer_id, ord) claim LEFT JOIN LATERAL ("
    "   SELECT balance_cents AS bal FROM accounts"
    "   WHERE accounts.customer_id = claim.customer_id AND claim.mark = '' FOR UPDATE) a ON true"
    "  WINDOW w AS (PARTITION BY claim.customer_id ORDER BY claim.ord)),"
    " run(customer_id, rn, ord, ok, rest) AS ("
    "  SELECT customer_id, rn, ord, false, bal - (cum - amount) FROM c"
    "  WHERE live AND cum > bal AND cum - amount <= bal"
    "  UNION ALL"
    "  SELECT c.customer_id, c.rn, c.ord, run.rest >= c.amount,"
    "   run.rest - CASE WHEN run.rest >= c.amount THEN c.amount ELSE 0 END"
    "  FROM run JOIN c ON c.customer_id = run.customer_id AND c.rn = run.rn + 1 AND c.live),"
    " verdict AS ("
    "  SELECT c.*, CASE WHEN c.mark = 'ORDER_CANCELLED' THEN 'ORDER_CANCELLED'"
    "   WHEN c.bal IS NULL THEN 'UNKNOWN_CUSTOMER'"
    "   WHEN c.cum <= c.bal OR run.ok THEN 'OK' ELSE 'INSUFFICIENT_FUNDS' END AS reason"
    "  FROM c LEFT JOIN run ON run.ord = c.ord),"
    " debit AS ("
    "  UPDATE accounts SET balance_cents = accounts.balance_cents - t.total, updated_at = now()"
    "  FROM (SELECT customer_id, sum(amount) AS total FROM verdict WHERE reason = 'OK'"
    "   GROUP BY customer_id) t WHERE accounts.customer_id = t.customer_id),"
    " settle AS ("
    "  UPDATE payments SET reason = verdict.reason,"
    "  status = CASE WHEN verdict.reason = 'OK' THEN 'CHARGED' ELSE 'DECLINED' END"
    "  FROM verdict WHERE payments.order_id = verdict.order_id),"
    " reply AS ("
    "  INSERT INTO outbox(topic, msg_key, payload, headers)"
    "  SELECT topic, order_id, CASE reason WHEN 'OK' THEN p_ok WHEN 'INSUFFICIENT_FUNDS' THEN "
    "p_funds"
    "   WHEN 'UNKNOWN_CUSTOMER' THEN p_unknown ELSE p_cancelled END, headers::jsonb"
    "  FROM verdict ORDER BY ord)"
    " SELECT ord, reason FROM verdict";

static const cm_set charge_set = {{{claim_sql, 3}, {charge_sql, 9}}, 2, CM_OUTBOX_REPLY_COLS};

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
    return cm_outbox_reply_plan(&c->reply, plan, EV_PAYMENT_COMPLETED, c->params, verdicts,
                                rec->traceparent);
}

static int done_order_created(void *ctx, const cm_record *rec, const cm_plan *plan,
                              PGresult *const *res, char *reason, size_t reasonlen)
{
    const charge *c = plan->state;
    const ev_order_created *o = &c->o;
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
 * has not arrived yet, a CANCELLED tombstone keeps it from being charged. A
 * set (cm_saga.h): the rows are $1 orderId, $2 the reason; only the first
 * record of an order in a run acts (a later one is its duplicate). */
#define SAGA_ROWS                                                                                  \
    "SELECT DISTINCT ON (order_id) * FROM unnest($1::text[], $2::text[]) WITH ORDINALITY"          \
    " AS r(order_id, why, ord) ORDER BY order_id, ord"
static const char remember_sql[] =
    "WITH f AS (" SAGA_ROWS "),"
    " tomb AS ("
    "  INSERT INTO payments(order_id, customer_id, amount_cents, status, reason, refund_reason)"
    "  SELECT order_id, '', 0, 'CANCELLED', '', why FROM f ORDER BY order_id"
    "  ON CONFLICT (order_id) DO NOTHING RETURNING order_id)"
    " SELECT f.ord FROM tomb JOIN f USING (order_id)";
/* A customer refunded twice in a run gets the sum in one update. */
static const char refund_sql[] =
    "WITH f AS (" SAGA_ROWS "),"
    " p AS ("
    "  UPDATE payments SET status = 'REFUNDED', refund_reason = f.why, refunded_at = now()"
    "  FROM f WHERE payments.order_id = f.order_id AND payments.status = 'CHARGED'"
    "  RETURNING payments.order_id, payments.customer_id, payments.amount_cents),"
    " credit AS ("
    "  UPDATE accounts SET balance_cents = accounts.balance_cents + t.total, updated_at = now()"
    "  FROM (SELECT customer_id, sum(amount_cents) AS total FROM p GROUP BY customer_id) t"
    "  WHERE accounts.customer_id = t.customer_id)"
    " SELECT f.ord, p.amount_cents FROM p JOIN f USING (order_id)";

static const cm_set refund_set = {{{remember_sql, 2}, {refund_sql, 2}}, 2, CM_SAGA_COLS};

static const cm_saga_def refund = {
    .type = EV_INVENTORY_RESERVED,
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
    (void)res;
    (void)reason;
    (void)reasonlen;
    return cm_saga_done(&refund, cm_daemon_metrics(ctx), rec, plan);
}

const cm_subscription ps_subscriptions[] = {
    {EV_TOPIC_ORDERS_CREATED, plan_order_created, done_order_created, &charge_set},
    {EV_TOPIC_INVENTORY_RESERVED, plan_inventory_reserved, done_inventory_reserved, &refund_set},
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
