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

#include <libpq-fe.h>

typedef enum {
    CM_SAGA_NOTHING = 0,    /* already compensated, or nothing was taken */
    CM_SAGA_REMEMBERED = 1, /* the order had not arrived: tombstone written */
    CM_SAGA_UNDONE = 2,     /* the effect was undone (refund, release) */
} cm_saga_result;

/* Runs remember_sql (an INSERT of the tombstone ... ON CONFLICT DO NOTHING);
 * if it inserted nothing, the order's row exists and is committed (the
 * insert waited for any concurrent writer), so undo_sql (which must return a
 * row when it undid something) runs next. Both take the same parameters.
 * Returns a cm_saga_result or a cm_db error code. */
int cm_saga_compensate(PGconn *tx, const char *remember_sql, const char *undo_sql, int nparams,
                       const char *const *params);
