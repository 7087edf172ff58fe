/*
 * cm_saga.c - see cm_saga.h.
 */
#include "cm_saga.h"

#include "cm_db.h"
#include "cm_log.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* What a planned compensation needs until it is done. */
typedef struct {
    char order_id[EV_ID_MAX + 1];
    char why[EV_REASON_MAX + 1];
} saga_state;

int cm_saga_plan(const cm_saga_def *def, const cm_record *rec, cm_plan *plan, char *reason,
                 size_t reasonlen)
{
    saga_state d, *st;
    bool yes;
    int r = ev_outcome_decode(def->type, rec->msg->payload, rec->msg->len, d.order_id, &yes, d.why,
                              reason, reasonlen);

    if (r < 0 || yes)
        return r; /* poison, or a positive outcome (most records): nothing to do */
    if (!(st = malloc(sizeof(*st))))
        return -ENOMEM;
    *st = d;
    plan->state = st;
    plan->release = free;
    plan->row[0] = st->order_id;
    plan->row[1] = st->why;
    plan->in_set = true;
    return 0;
}

int cm_saga_done(const cm_saga_def *def, cm_metrics *metrics, const cm_record *rec,
                 const cm_plan *plan)
{
    const saga_state *st = plan->state;

    if (!plan->in_set) {
        cm_record_outcome(rec, "nothing-to-undo");
        return 0;
    }
    if (cm_plan_value(plan, 0, 0)) {
        /* The order had not arrived: the tombstone was written. */
        cm_record_outcome(rec, def->remembered_outcome);
        cm_metrics_add(metrics, def->metric, def->remembered_labels, 1);
        log_info("%s order_id=%s reason=%s " CM_REC_FMT, def->remembered_log, st->order_id, st->why,
                 CM_REC_ARGS(rec));
    } else if (cm_plan_value(plan, 1, 0)) {
        cm_record_outcome(rec, def->undone_outcome);
        cm_metrics_add(metrics, def->metric, def->undone_labels, 1);
        log_info("%s order_id=%s reason=%s " CM_REC_FMT, def->undone_log, st->order_id, st->why,
                 CM_REC_ARGS(rec));
    } else {
        cm_record_outcome(rec, "nothing-to-undo"); /* already undone, or nothing taken */
    }
    return 0;
}
