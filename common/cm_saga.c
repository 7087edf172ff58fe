/*
 * cm_saga.c - see cm_saga.h.
 */
#include "cm_saga.h"

#include "cm_db.h"
#include "cm_log.h"

#include <string.h>

typedef enum {
    SAGA_NOTHING,    /* already compensated, or nothing was taken */
    SAGA_REMEMBERED, /* the order had not arrived: tombstone written */
    SAGA_UNDONE,     /* the effect was undone (refund, release) */
} saga_result;

static int compensate(PGconn *tx, const char *remember_sql, const char *undo_sql,
                      const char *const params[2])
{
    const cm_db_stmt stmts[2] = {{remember_sql, 2, params}, {undo_sql, 2, params}};
    PGresult *res[2];
    int r = cm_db_pipeline(tx, stmts, 2, res);

    if (r < 0)
        return r;
    if (strcmp(PQcmdTuples(res[0]), "1") == 0)
        r = SAGA_REMEMBERED;
    else
        r = PQntuples(res[1]) > 0 ? SAGA_UNDONE : SAGA_NOTHING;
    PQclear(res[0]);
    PQclear(res[1]);
    return r;
}

/* Decodes an outcome event ({orderId, <bool>, reason}) of either type. */
static int decode_outcome(ev_type type, const cm_record *rec, char *order_id, bool *yes, char *why,
                          char *reason, size_t reasonlen)
{
    const void *buf = rec->msg->payload;
    size_t len = rec->msg->len;
    int r;

    if (type == EV_PAYMENT_COMPLETED) {
        ev_payment_completed e;
        if ((r = ev_payment_completed_decode(buf, len, &e, reason, reasonlen)) < 0)
            return r;
        *yes = e.approved;
        memcpy(order_id, e.order_id, EV_ID_MAX + 1);
        memcpy(why, e.reason, EV_REASON_MAX + 1);
        return 0;
    }
    ev_inventory_reserved e;
    if ((r = ev_inventory_reserved_decode(buf, len, &e, reason, reasonlen)) < 0)
        return r;
    *yes = e.reserved;
    memcpy(order_id, e.order_id, EV_ID_MAX + 1);
    memcpy(why, e.reason, EV_REASON_MAX + 1);
    return 0;
}

int cm_saga_handle(const cm_saga_def *def, cm_metrics *metrics, PGconn *tx, const cm_record *rec,
                   char *reason, size_t reasonlen)
{
    char order_id[EV_ID_MAX + 1], why[EV_REASON_MAX + 1];
    bool yes;
    int r = decode_outcome(def->type, rec, order_id, &yes, why, reason, reasonlen);

    if (r < 0 || yes)
        return r; /* poison, or a positive outcome: nothing to compensate */
    const char *const p[2] = {order_id, why};
    r = compensate(tx, def->remember_sql, def->undo_sql, p);
    if (r == SAGA_UNDONE) {
        cm_metrics_add(metrics, def->metric, def->undone_labels, 1);
        log_info("%s order_id=%s reason=%s " CM_REC_FMT, def->undone_log, order_id, why,
                 CM_REC_ARGS(rec));
    } else if (r == SAGA_REMEMBERED) {
        cm_metrics_add(metrics, def->metric, def->remembered_labels, 1);
        log_info("%s order_id=%s reason=%s " CM_REC_FMT, def->remembered_log, order_id, why,
                 CM_REC_ARGS(rec));
    }
    return r < 0 ? r : 0;
}
