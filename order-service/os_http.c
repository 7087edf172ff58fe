/*
 * os_http.c - order-service HTTP API: POST /orders and GET /orders/{id}
 * (GET /orders, the PENDING orders, is in os_pending.c).
 * See the OpenAPI document in schemas/ for the contract.
 */
#include "os_key.h"
#include "os_order.h"

#include "cm_db.h"
#include "cm_log.h"
#include "cm_outbox.h"
#include "cm_outbox_http.h"
#include "cm_trace.h"
#include "ev_event.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ISO_TS(col) CM_DB_ISO_TS(col)

static int json_id(json_t *body, const char *key, size_t max, char *out, size_t outlen,
                   cm_http_resp *resp)
{
    json_t *v = json_object_get(body, key);

    if (!json_is_string(v) || json_string_length(v) != strlen(json_string_value(v)) ||
        !ev_id_valid(json_string_value(v), max)) {
        cm_http_problem(resp, 400, "Bad Request",
                        "field \"%s\" must be a string of 1 to %zu printable characters without "
                        "spaces",
                        key, max);
        return -EINVAL;
    }
    snprintf(out, outlen, "%s", json_string_value(v));
    return 0;
}

static int parse_order(const cm_http_req *req, ev_order_created *o, cm_http_resp *resp)
{
    json_t *body = cm_http_json_body(req, resp);
    long long qty = 0, amount = 0;
    int r;

    if (!body)
        return -EINVAL;
    r = json_id(body, "customerId", EV_ID_MAX, o->customer_id, sizeof(o->customer_id), resp);
    if (r == 0)
        r = json_id(body, "sku", EV_SKU_MAX, o->sku, sizeof(o->sku), resp);
    if (r == 0)
        r = cm_http_json_int(body, "quantity", 1, 1000000, &qty, resp);
    if (r == 0)
        r = cm_http_json_int(body, "amountCents", 0, 1000000000000LL, &amount, resp);
    json_decref(body);
    o->quantity = (int32_t)qty;
    o->amount_cents = amount;
    return r;
}

/* The order row and its OrderCreated outbox row in one statement, hence one
 * round trip and one implicit transaction: both exist or neither does. */
static const char insert_sql[] =
    "WITH o AS ("
    "  INSERT INTO orders(order_id, customer_id, sku, quantity, amount_cents, status, trace_id)"
    "  VALUES ($1, $2, $3, $4::int, $5::bigint, 'PENDING', $9) RETURNING order_id)"
    " INSERT INTO outbox(topic, msg_key, payload, headers)"
    " SELECT $6, order_id, $7, $8::jsonb FROM o";

/* The same with an Idempotency-Key ($10): the key is claimed in the same
 * statement, in the scope of the token that sent it ($12), so that one client cannot
 * reach another's order by reusing its key. A concurrent request with the
 * same key waits on the key's primary key and then inserts nothing; it reads
 * the first request's order below. A key stored before keys had scopes
 * (scope '') still answers for everyone, as it did when it was stored. */
static const char insert_keyed_sql[] =
    "WITH k AS ("
    "  INSERT INTO idempotency_keys(scope, idem_key, fingerprint, order_id)"
    "  SELECT $12, $10, $11, $1 WHERE NOT EXISTS (SELECT 1 FROM idempotency_keys"
    "   WHERE scope = '' AND idem_key = $10)"
    "  ON CONFLICT (scope, idem_key) DO NOTHING RETURNING order_id),"
    " o AS ("
    "  INSERT INTO orders(order_id, customer_id, sku, quantity, amount_cents, status, trace_id)"
    "  SELECT $1, $2, $3, $4::int, $5::bigint, 'PENDING', $9 FROM k RETURNING order_id)"
    " INSERT INTO outbox(topic, msg_key, payload, headers)"
    " SELECT $6, order_id, $7, $8::jsonb FROM o";

static const char key_lookup_sql[] =
    "SELECT k.fingerprint, k.order_id, o.status FROM idempotency_keys k"
    " JOIN orders o USING (order_id) WHERE k.idem_key = $1 AND k.scope IN ($2, '')"
    " ORDER BY k.scope DESC LIMIT 1";

static bool key_valid(const char *key)
{
    size_t n = strlen(key);
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if (key[i] < 0x20 || key[i] > 0x7e)
            return false;
    return true;
}

/* Answers a request whose key was used before in scope: the same order for
 * the same request, 409 for a different one. */
static void replay_keyed(PGconn *conn, const char *scope, const char *key, const char *fingerprint,
                         const ev_order_created *o, cm_http_resp *resp)
{
    const char *p[2] = {key, scope};
    PGresult *res;
    int r = cm_db_query(conn, &res, key_lookup_sql, 2, p);

    if (r < 0) {
        cm_daemon_db_problem(resp, r);
        return;
    }
    if (PQntuples(res) == 0) {
        cm_http_problem(resp, 500, "Internal Server Error", "idempotency key has no order");
    } else if (!os_fingerprint_matches(PQgetvalue(res, 0, 0), fingerprint, o->customer_id, o->sku,
                                       o->quantity, o->amount_cents)) {
        cm_http_problem(resp, 409, "Conflict",
                        "Idempotency-Key was already used with a different request");
    } else {
        resp->status = 202;
        snprintf(resp->location, sizeof(resp->location), "/orders/%s", PQgetvalue(res, 0, 1));
        resp->body = json_pack("{s:s, s:s}", "orderId", PQgetvalue(res, 0, 1), "status",
                               PQgetvalue(res, 0, 2));
    }
    PQclear(res);
}

/* Stores the order, with key (in scope, the token's name) if not NULL;
 * returns 1 if stored, 0 if the key was used before (resp is then filled),
 * or a cm_db code. */
static int store_order(PGconn *conn, const ev_order_created *o, const char *json,
                       const char *headers, const char *trace_id, const char *scope,
                       const char *key, cm_http_resp *resp)
{
    char qty[16], amount[24], fp[OS_FINGERPRINT_MAX];
    PGresult *res;
    int r;

    snprintf(qty, sizeof(qty), "%d", (int)o->quantity);
    snprintf(amount, sizeof(amount), "%" PRId64, o->amount_cents);
    r = os_fingerprint(o->customer_id, o->sku, o->quantity, o->amount_cents, fp);
    if (r < 0)
        return r;
    const char *p[12] = {
        o->order_id, o->customer_id, o->sku,   qty, amount, EV_TOPIC_ORDERS_CREATED,
        json,        headers,        trace_id, key, fp,     scope};
    r = cm_db_query(conn, &res, key ? insert_keyed_sql : insert_sql, key ? 12 : 9, p);
    if (r < 0)
        return r;
    r = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    if (!r)
        replay_keyed(conn, scope, key, fp, o, resp);
    return r;
}

/* Orders of one group commit, in one statement: one transaction, one
 * commit, one NOTIFY for the whole batch. The arrays carry the orders in
 * request order; the outbox rows keep that order. */
static const char insert_batch_sql[] =
    "WITH r AS (SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::int[],"
    "  $5::bigint[], $7::text[], $8::text[], $9::text[]) WITH ORDINALITY"
    "  AS r(order_id, customer_id, sku, quantity, amount_cents, payload, headers, trace_id, ord)),"
    " o AS ("
    "  INSERT INTO orders(order_id, customer_id, sku, quantity, amount_cents, status, trace_id)"
    "  SELECT order_id, customer_id, sku, quantity, amount_cents, 'PENDING', trace_id FROM r)"
    " INSERT INTO outbox(topic, msg_key, payload, headers)"
    " SELECT $6, order_id, payload, headers::jsonb FROM r ORDER BY ord";

/* An order on its way through the group commit. */
typedef struct {
    cm_http_pending *pending;
    ev_order_created o;
    char *json, *headers;
    char trace_id[33];
    bool traced; /* commit: the order's commit span (child of the request's) */
    cm_span_ctx commit;
    cm_http_resp resp; /* its answer, given once every line of the batch is written */
} os_write;

/* Ends the order's commit span: from the start of the transaction that
 * stored it (shared by every order of a group commit) to its answer. */
static void end_commit(cm_daemon *d, os_write *w, long long start_us, int batch, int status)
{
    char n[12], code[8];
    const cm_span_tag tags[] = {
        {"order.id", w->o.order_id},
        {"db.batch_size", n},
        {"http.status_code", code},
        {"error", status >= 500 ? code : NULL},
    };

    if (!w->traced)
        return;
    snprintf(n, sizeof(n), "%d", batch);
    snprintf(code, sizeof(code), "%d", status);
    w->commit.start_us = start_us;
    cm_trace_end(cm_daemon_tracer(d), &w->commit, CM_SPAN_CLIENT, "commit order", "postgresql",
                 tags, sizeof(tags) / sizeof(tags[0]), 0);
}

static void accepted(cm_daemon *d, const os_write *w, cm_http_resp *resp)
{
    const ev_order_created *o = &w->o;

    cm_metrics_add(cm_daemon_metrics(d), "orders_placed_total", "", 1);
    log_info("order accepted order_id=%s customer_id=%s sku=%s quantity=%d amount_cents=%" PRId64
             " trace_id=%s",
             o->order_id, o->customer_id, o->sku, (int)o->quantity, o->amount_cents, w->trace_id);
    resp->status = 202;
    snprintf(resp->location, sizeof(resp->location), "/orders/%s", o->order_id);
    resp->body = json_pack("{s:s, s:s}", "orderId", o->order_id, "status", "PENDING");
}

/* Stores one order on its own (with or without Idempotency-Key) and answers. */
static void store_one(cm_daemon *d, PGconn *conn, const os_write *w, const char *scope,
                      const char *key, cm_http_resp *resp)
{
    int r = store_order(conn, &w->o, w->json, w->headers, w->trace_id, scope, key, resp);

    if (r < 0)
        cm_daemon_db_problem(resp, r);
    else if (r > 0)
        accepted(d, w, resp);
}

static int store_batch(PGconn *conn, os_write **ws, int n)
{
    const char **cols[8] = {0};
    char(*nums)[2][24] = calloc((size_t)n, sizeof(*nums));
    char *arr[8] = {0};
    int r = nums ? 0 : -ENOMEM;

    for (int c = 0; c < 8 && r == 0; c++)
        if (!(cols[c] = calloc((size_t)n, sizeof(char *))))
            r = -ENOMEM;
    for (int i = 0; i < n && r == 0; i++) {
        const ev_order_created *o = &ws[i]->o;
        snprintf(nums[i][0], sizeof(nums[i][0]), "%d", (int)o->quantity);
        snprintf(nums[i][1], sizeof(nums[i][1]), "%" PRId64, o->amount_cents);
        cols[0][i] = o->order_id;
        cols[1][i] = o->customer_id;
        cols[2][i] = o->sku;
        cols[3][i] = nums[i][0];
        cols[4][i] = nums[i][1];
        cols[5][i] = ws[i]->json;
        cols[6][i] = ws[i]->headers;
        cols[7][i] = ws[i]->trace_id;
    }
    for (int c = 0; c < 8 && r == 0; c++)
        r = cm_db_array(cols[c], (size_t)n, &arr[c]);
    if (r == 0) {
        const char *p[9] = {arr[0], arr[1], arr[2], arr[3], arr[4], EV_TOPIC_ORDERS_CREATED,
                            arr[5], arr[6], arr[7]};
        r = cm_db_query(conn, NULL, insert_batch_sql, 9, p);
    }
    for (int c = 0; c < 8; c++) {
        free(arr[c]);
        free((void *)cols[c]);
    }
    free(nums);
    return r;
}

/* The group commit (cm_batch flush, on the batch thread): all orders in one
 * statement; if that statement fails for a reason other than an outage,
 * each order is tried alone, so that one bad order fails only itself. The
 * batch's "order accepted" lines are held and written together before the
 * first of its answers (cm_log_hold): an order that was answered 202 has
 * its line. */
void os_flush_orders(void *ctx, void **items, int n)
{
    os_write **ws = (os_write **)items;
    cm_http_resp resp = {0};
    long long start_us = cm_daemon_tracer(ctx) ? cm_trace_now_us() : 0;
    PGconn *conn;
    int r;

    cm_log_hold();
    if (!(conn = cm_daemon_db(ctx, &resp))) {
        r = -ECONNRESET;
        json_decref(resp.body); /* each order gets its own 503 below */
    } else {
        r = store_batch(conn, ws, n);
        if (r < 0)
            log_debug("batch of %d orders failed code=%d; storing one by one", n, r);
    }
    for (int i = 0; i < n; i++) {
        ws[i]->resp = (cm_http_resp){0};
        if (r == 0)
            accepted(ctx, ws[i], &ws[i]->resp);
        else if (conn && r != -ECONNRESET)
            store_one(ctx, conn, ws[i], NULL, NULL, &ws[i]->resp);
        else
            cm_daemon_db_problem(&ws[i]->resp, -ECONNRESET);
    }
    if (conn)
        cm_daemon_db_release(ctx, conn);
    cm_log_release();
    for (int i = 0; i < n; i++) {
        end_commit(ctx, ws[i], start_us, n, ws[i]->resp.status);
        cm_http_complete(ws[i]->pending, &ws[i]->resp);
        free(ws[i]->json);
        free(ws[i]->headers);
        free(ws[i]);
    }
}

/* POST /orders. An order without Idempotency-Key joins the group commit and
 * is answered when its batch has committed; a keyed one is stored on its
 * own (its key must be claimed in the same statement). */
static int post_order(void *ctx, const cm_http_req *req, cm_http_resp *resp,
                      cm_http_pending *pending)
{
    const char *key = cm_http_header(req, "Idempotency-Key");
    os_write *w;
    PGconn *conn;
    int r;

    if (key && !key_valid(key)) {
        cm_http_problem(resp, 400, "Bad Request",
                        "Idempotency-Key must be 1 to 255 printable ASCII characters");
        return 0;
    }
    if (!(w = calloc(1, sizeof(*w)))) {
        cm_http_problem(resp, 500, "Internal Server Error", "out of memory");
        return 0;
    }
    if (parse_order(req, &w->o, resp) < 0)
        goto out;
    ev_uuid(w->o.order_id);
    r = ev_order_created_encode(&w->o, &w->json);
    /* The event's trace: a child of the commit span when sampled, else of
     * the request (its span, or the client's traceparent with tracing off). */
    char commit_tp[56];
    const char *parent = req->traceparent ? req->traceparent : cm_http_header(req, "traceparent");
    if ((w->traced = cm_trace_start(cm_daemon_tracer(ctx), req->traceparent, false, &w->commit))) {
        cm_trace_traceparent(&w->commit, commit_tp);
        parent = commit_tp;
    }
    if (r == 0)
        r = cm_outbox_headers(EV_ORDER_CREATED, parent, &w->headers, w->trace_id);
    if (r < 0) {
        cm_http_problem(resp, 400, "Bad Request", "the order is not valid");
        goto out;
    }
    w->pending = pending;
    if (!key && cm_daemon_batch(ctx) && cm_batch_submit(cm_daemon_batch(ctx), w) == 0)
        return 1;
    if ((conn = cm_daemon_db(ctx, resp))) {
        long long start_us = w->traced ? cm_trace_now_us() : 0;
        store_one(ctx, conn, w, req->token ? req->token : "-", key, resp);
        end_commit(ctx, w, start_us, 1, resp->status);
        cm_daemon_db_release(ctx, conn);
    }
out:
    free(w->json);
    free(w->headers);
    free(w);
    return 0;
}

static json_t *outcome_json(PGresult *res, int col, const char *yes_key)
{
    if (PQgetisnull(res, 0, col))
        return json_null();
    return json_pack("{s:b, s:s, s:s}", yes_key, strcmp(PQgetvalue(res, 0, col), "t") == 0,
                     "reason", PQgetvalue(res, 0, col + 1), "at", PQgetvalue(res, 0, col + 2));
}

static json_t *order_json(PGresult *res)
{
    json_t *settled = PQgetisnull(res, 0, 13) ? json_null() : json_string(PQgetvalue(res, 0, 13));
    json_t *trace = PQgetisnull(res, 0, 15) ? json_null() : json_string(PQgetvalue(res, 0, 15));
    return json_pack(
        "{s:s, s:s, s:s, s:I, s:I, s:s, s:o, s:o, s:s, s:s, s:o, s:o}", "orderId",
        PQgetvalue(res, 0, 0), "customerId", PQgetvalue(res, 0, 1), "sku", PQgetvalue(res, 0, 2),
        "quantity", (json_int_t)strtoll(PQgetvalue(res, 0, 3), NULL, 10), "amountCents",
        (json_int_t)strtoll(PQgetvalue(res, 0, 4), NULL, 10), "status", PQgetvalue(res, 0, 5),
        "payment", outcome_json(res, 6, "approved"), "inventory", outcome_json(res, 9, "reserved"),
        "createdAt", PQgetvalue(res, 0, 12), "updatedAt", PQgetvalue(res, 0, 14), "settledAt",
        settled, "traceId", trace);
}

static void get_order(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    /* clang-format off */
    static const char sql[] =
        "SELECT order_id, customer_id, sku, quantity, amount_cents, status,"
        " payment_approved, payment_reason, " ISO_TS("payment_at") ","
        " inventory_reserved, inventory_reason, " ISO_TS("inventory_at") ","
        " " ISO_TS("created_at") ", " ISO_TS("settled_at") ", " ISO_TS("updated_at") ","
        " trace_id FROM orders WHERE order_id = $1";
    /* clang-format on */
    cm_daemon_get_one(ctx, req, resp, sql, "order", order_json);
}

const cm_http_route os_routes[] = {
    {"POST", "/orders", NULL, post_order, "orders:write", false},
    {"GET", "/orders/{}", get_order, NULL, "orders:read", false},
    {"GET", "/orders", os_list_pending, NULL, "orders:read", false},
    {"GET", "/outbox/{}", cm_outbox_http_get, NULL, "orders:read", false},
};
const size_t os_nroutes = sizeof(os_routes) / sizeof(os_routes[0]);
