/*
 * cm_saga.c - see cm_saga.h.
 */
#include "cm_saga.h"

#include "cm_db.h"
#include "cm_log.h"

#include <string.h>

int cm_saga_compensate(PGconn *tx, const char *remember_sql, const char *undo_sql, int nparams,
                       const char *const *params)
{
    const cm_db_stmt stmts[2] = {{remember_sql, nparams, params}, {undo_sql, nparams, params}};
    PGresult *res[2];
    int r = cm_db_pipeline(tx, stmts, 2, res);

    if (r < 0)
        return r;
    /* After a tombstone was written the undo finds nothing to undo. */
    if (strcmp(PQcmdTuples(res[0]), "1") == 0)
        r = CM_SAGA_REMEMBERED;
    else
        r = PQntuples(res[1]) > 0 ? CM_SAGA_UNDONE : CM_SAGA_NOTHING;
    PQclear(res[0]);
    PQclear(res[1]);
    return r;
}

int cm_saga_handle(const cm_saga_def *def, cm_metrics *metrics, PGconn *tx, const cm_record *rec,
                   char *reason, size_t reasonlen)
{
    char order_id[EV_ID_MAX + 1], why[EV_REASON_MAX + 1];
    bool yes;
    int r;

    if (def->type == EV_PAYMENT_COMPLETED) {
        ev_payment_completed e;
        r = ev_payment_completed_decode(rec->msg->payload, rec->msg->len, &e, reason, reasonlen);
        if (r < 0)
            return r; /* poison */
        yes = e.approved;
        memcpy(order_id, e.order_id, sizeof(order_id));
        memcpy(why, e.reason, sizeof(why));
    } else {
        ev_inventory_reserved e;
        r = ev_inventory_reserved_decode(rec->msg->payload, rec->msg->len, &e, reason, reasonlen);
        if (r < 0)
            return r; /* poison */
        yes = e.reserved;
        memcpy(order_id, e.order_id, sizeof(order_id));
        memcpy(why, e.reason, sizeof(why));
    }
    if (yes)
        return 0; /* a positive outcome: nothing to compensate */
    const char *p[2] = {order_id, why};
    r = cm_saga_compensate(tx, def->remember_sql, def->undo_sql, 2, p);
    if (r == CM_SAGA_UNDONE) {
        cm_metrics_add(metrics, def->metric, def->undone_labels, 1);
        log_info("%s order_id=%s reason=%s " CM_REC_FMT, def->undone_log, order_id, why,
                 CM_REC_ARGS(rec));
    } else if (r == CM_SAGA_REMEMBERED) {
        cm_metrics_add(metrics, def->metric, def->remembered_labels, 1);
        log_info("%s order_id=%s reason=%s " CM_REC_FMT, def->remembered_log, order_id, why,
                 CM_REC_ARGS(rec));
    }
    return r < 0 ? r : 0;
}
