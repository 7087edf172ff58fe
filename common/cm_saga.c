/*
 * cm_saga.c - see cm_saga.h.
 */
#include "cm_saga.h"

#include "cm_db.h"

#include <string.h>

int cm_saga_compensate(PGconn *tx, const char *remember_sql, const char *undo_sql, int nparams,
                       const char *const *params)
{
    PGresult *res;
    int r = cm_db_query(tx, &res, remember_sql, nparams, params);
    bool inserted;

    if (r < 0)
        return r;
    inserted = strcmp(PQcmdTuples(res), "1") == 0;
    PQclear(res);
    if (inserted)
        return CM_SAGA_REMEMBERED;
    r = cm_db_query(tx, &res, undo_sql, nparams, params);
    if (r < 0)
        return r;
    r = PQntuples(res) > 0 ? CM_SAGA_UNDONE : CM_SAGA_NOTHING;
    PQclear(res);
    return r;
}
