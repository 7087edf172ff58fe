/*
 * cm_saga.h - the compensation step shared by payment-service and
 * inventory-service (choreography: each undoes its own effect when the other
 * side says no).
 *
 * A negative outcome from the other side either finds this service's effect
 * (a charge, a reservation) and undoes it, or arrives before the order did:
 * then the service remembers it with a tombstone row, so that the order is
 * not charged or reserved when it arrives later. Both steps are idempotent.
 */
#pragma once

#include "cm_consumer.h"
#include "cm_metrics.h"
#include "ev_event.h"

#include <libpq-fe.h>

/* A service's compensation, declared: which outcome event it reacts to and
 * how results are counted and logged. Its statements are the subscription's
 * cm_set (CM_SAGA_COLS columns: $1 orderId, $2 the other side's reason):
 * first remember (an INSERT of the tombstone ... ON CONFLICT DO NOTHING for
 * the first record of each order in the run, returning the ordinals of
 * those it wrote), then undo (for the first record of each order, undoes a
 * committed effect and returns the ordinals of those it undid). */
#define CM_SAGA_COLS 2

typedef struct {
    ev_type type;              /* EV_PAYMENT_COMPLETED or EV_INVENTORY_RESERVED */
    const char *metric;        /* counter, e.g. orders_payments_total */
    const char *undone_labels; /* e.g. outcome="refunded" */
    const char *remembered_labels;
    const char *undone_log; /* e.g. "payment refunded" */
    const char *remembered_log;
    const char *undone_outcome; /* the span's outcome tag, e.g. "refunded" */
    const char *remembered_outcome;
} cm_saga_def;

/* The consumer handler's two steps. cm_saga_plan() decodes rec as
 * def->type (poison codes as the decoders return them); a positive outcome
 * needs nothing (an empty plan); a negative one joins the run of the set
 * (remember, then undo, in the batch's pipeline). If the tombstone went in,
 * the undo finds nothing; if not, the order's row exists and is committed
 * (the insert waited for any concurrent writer) and the undo sees it.
 * cm_saga_done() counts and logs what happened. Both return 0 or a negative
 * code for the error handler. */
int cm_saga_plan(const cm_saga_def *def, const cm_record *rec, cm_plan *plan, char *reason,
                 size_t reasonlen);
int cm_saga_done(const cm_saga_def *def, cm_metrics *metrics, const cm_record *rec,
                 const cm_plan *plan);
