/*
 * os_pending.c - GET /orders?status=PENDING&olderThan=SECONDS&limit=N: the
 * orders still waiting for a reply, oldest first, each with the reply (or
 * replies) it waits for, so that an operator knows which service to look at
 * (orderctl orders stuck).
 *
 * Only status=PENDING is served: it reads the partial index orders_pending
 * (created_at WHERE status = 'PENDING'), so the cost follows the number of
 * PENDING orders returned, never the size of the table. Settled orders are
 * looked up one by one with GET /orders/{id}.
 */
#include "os_order.h"

#include "cm_db.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PENDING_LIMIT_DEFAULT 100
#define PENDING_LIMIT_MAX 1000
#define OLDER_THAN_MAX 315360000LL /* ten years, in seconds */

/* One more row than asked for tells whether the list was cut. */
/* clang-format off */
static const char pending_sql[] =
    "SELECT order_id, customer_id, sku, quantity, amount_cents, " CM_DB_ISO_TS("created_at") ","
    " floor(extract(epoch FROM clock_timestamp() - created_at))::bigint,"
    " payment_approved IS NOT NULL, inventory_reserved IS NOT NULL, trace_id"
    " FROM orders WHERE status = 'PENDING'"
    " AND created_at <= clock_timestamp() - make_interval(secs => $1::bigint)"
    " ORDER BY created_at LIMIT $2::int + 1";
/* clang-format on */

/* Reads query parameter name as an integer in [min, max] (def when absent).
 * Returns 0, or -1 with resp filled (400). */
static int query_int(const cm_http_req *req, const char *name, long long min, long long max,
                     long long def, long long *ret, cm_http_resp *resp)
{
    const char *v = cm_http_query(req, name);
    char *end;
    long long x;

    if (!v) {
        *ret = def;
        return 0;
    }
    x = strtoll(v, &end, 10);
    if (*v < '0' || *v > '9' || *end != '\0' || x < min || x > max) {
        cm_http_problem(resp, 400, "Bad Request",
                        "query parameter \"%s\" must be an integer from %lld to %lld", name, min,
                        max);
        return -1;
    }
    *ret = x;
    return 0;
}

static int parse_query(const cm_http_req *req, long long *older, long long *limit,
                       cm_http_resp *resp)
{
    static const char *const known[] = {"status", "olderThan", "limit", NULL};
    const char *unknown = cm_http_query_unknown(req, known);
    const char *status = cm_http_query(req, "status");

    if (unknown) {
        cm_http_problem(resp, 400, "Bad Request",
                        "unknown query parameter (known: status, olderThan, limit)");
        return -1;
    }
    if (!status || strcmp(status, "PENDING") != 0) {
        cm_http_problem(resp, 400, "Bad Request",
                        "query parameter \"status\" must be PENDING (settled orders are read "
                        "one by one with GET /orders/{id})");
        return -1;
    }
    if (query_int(req, "olderThan", 0, OLDER_THAN_MAX, 0, older, resp) < 0)
        return -1;
    return query_int(req, "limit", 1, PENDING_LIMIT_MAX, PENDING_LIMIT_DEFAULT, limit, resp);
}

static json_t *pending_json(PGresult *res, int i)
{
    bool paid = strcmp(PQgetvalue(res, i, 7), "t") == 0;
    bool stocked = strcmp(PQgetvalue(res, i, 8), "t") == 0;
    const char *missing = !paid && !stocked ? "both" : !paid ? "payment" : "inventory";

    return json_pack(
        "{s:s, s:s, s:s, s:I, s:I, s:s, s:I, s:s, s:o}", "orderId", PQgetvalue(res, i, 0),
        "customerId", PQgetvalue(res, i, 1), "sku", PQgetvalue(res, i, 2), "quantity",
        (json_int_t)strtoll(PQgetvalue(res, i, 3), NULL, 10), "amountCents",
        (json_int_t)strtoll(PQgetvalue(res, i, 4), NULL, 10), "createdAt", PQgetvalue(res, i, 5),
        "ageSeconds", (json_int_t)strtoll(PQgetvalue(res, i, 6), NULL, 10), "missing", missing,
        "traceId", PQgetisnull(res, i, 9) ? json_null() : json_string(PQgetvalue(res, i, 9)));
}

void os_list_pending(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    long long older, limit;
    char p_older[24], p_limit[24];
    PGresult *res;
    PGconn *conn;
    json_t *rows;
    int r, n;

    if (parse_query(req, &older, &limit, resp) < 0 || !(conn = cm_daemon_db(ctx, resp)))
        return;
    snprintf(p_older, sizeof(p_older), "%lld", older);
    snprintf(p_limit, sizeof(p_limit), "%lld", limit);
    const char *p[2] = {p_older, p_limit};
    r = cm_db_query(conn, &res, pending_sql, 2, p);
    cm_daemon_db_release(ctx, conn);
    if (r < 0) {
        cm_daemon_db_problem(resp, r);
        return;
    }
    n = PQntuples(res);
    rows = json_array();
    for (int i = 0; i < n && i < limit; i++)
        json_array_append_new(rows, pending_json(res, i));
    PQclear(res);
    resp->status = 200;
    resp->body =
        json_pack("{s:s, s:I, s:I, s:i, s:b, s:o}", "status", "PENDING", "olderThanSeconds",
                  (json_int_t)older, "limit", (json_int_t)limit, "count",
                  (int)json_array_size(rows), "truncated", n > limit, "orders", rows);
}
