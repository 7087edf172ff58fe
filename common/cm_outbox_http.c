/*
 * cm_outbox_http.c - see cm_outbox_http.h.
 */
#include "cm_outbox_http.h"

#include "cm_daemon.h"
#include "cm_db.h"
#include "ev_event.h"

#include <stdio.h>
#include <stdlib.h>

/* clang-format off */
static const char unpublished_sql[] =
    "SELECT id, topic, coalesce(headers->>'event-type', ''), coalesce(headers->>'event-id', ''),"
    " coalesce(headers->>'traceparent', ''), " CM_DB_ISO_TS("created_at") ","
    " floor(extract(epoch FROM clock_timestamp() - created_at))::bigint"
    " FROM outbox WHERE msg_key = $1 ORDER BY id LIMIT $2::int";
/* clang-format on */

static json_t *row_json(PGresult *res, int i)
{
    return json_pack("{s:I, s:s, s:s, s:s, s:s, s:s, s:I}", "id",
                     (json_int_t)strtoll(PQgetvalue(res, i, 0), NULL, 10), "topic",
                     PQgetvalue(res, i, 1), "eventType", PQgetvalue(res, i, 2), "eventId",
                     PQgetvalue(res, i, 3), "traceparent", PQgetvalue(res, i, 4), "createdAt",
                     PQgetvalue(res, i, 5), "ageSeconds",
                     (json_int_t)strtoll(PQgetvalue(res, i, 6), NULL, 10));
}

void cm_outbox_http_get(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    cm_daemon *d = ctx;
    char limit[16];
    PGresult *res;
    PGconn *conn;
    json_t *rows;
    int r, n;

    if (!ev_id_valid(req->param, EV_ID_MAX)) {
        cm_http_problem(resp, 400, "Bad Request",
                        "an order id is 1 to %d printable characters without spaces", EV_ID_MAX);
        return;
    }
    if (!(conn = cm_daemon_db(d, resp)))
        return;
    snprintf(limit, sizeof(limit), "%d", CM_OUTBOX_HTTP_MAX + 1);
    const char *p[2] = {req->param, limit};
    r = cm_db_query(conn, &res, unpublished_sql, 2, p);
    cm_daemon_db_release(d, conn);
    if (r < 0) {
        cm_daemon_db_problem(resp, r);
        return;
    }
    n = PQntuples(res);
    rows = json_array();
    for (int i = 0; i < n && i < CM_OUTBOX_HTTP_MAX; i++)
        json_array_append_new(rows, row_json(res, i));
    PQclear(res);
    resp->status = 200;
    resp->body = json_pack("{s:s, s:s, s:i, s:b, s:o}", "orderId", req->param, "service",
                           d->def->name, "count", (int)json_array_size(rows), "truncated",
                           n > CM_OUTBOX_HTTP_MAX, "unpublished", rows);
}
