/*
 * cm_apply.h - runs the planned statements of a consumer batch (cm_consumer's
 * helper; see cm_plan and cm_set in cm_consumer.h).
 *
 * The records are cut into steps: a record with statements of its own is a
 * step; consecutive records of one cm_set form one (records with nothing to
 * do between them do not cut it), whose statements run once with the run's
 * columns as text[] parameters. All steps' statements go, in record order,
 * in pipelines (BEGIN with the first) of bounded weight: a record's
 * statements weigh one, a set statement one per PIPELINE_RECORDS rows it may
 * return, so that neither side of the connection buffers without bound.
 */
#pragma once

#include "cm_consumer.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* A planned record: its plan, the set of its subscription (used if
 * plan->in_set), and where its own statements' results go (CM_PLAN_MAX). */
typedef struct {
    cm_plan *plan;
    const cm_set *set;
    PGresult **res;
} cm_apply_rec;

typedef struct cm_apply cm_apply;

/* Runs the statements of recs[0..n-1] in a new transaction, left open
 * (cm_apply_began); when no record has anything to do, nothing is sent and no
 * transaction begins. On success returns 0: each record's own results are in its res, and a set
 * record's plan points (set_res, set_row) into *ret, which holds the runs'
 * results until cm_apply_free(). On failure returns the code of the first
 * failure (a cm_db code, -ENOMEM, -EINVAL for a record planned in_set whose
 * subscription declares no set, or -EIO for a set statement that returned a
 * row for no record) with reason set; *ret is then still to be freed. */
/* Whether cm_apply_run began a transaction (some record had statements). */
bool cm_apply_began(const cm_apply *a);

int cm_apply_run(PGconn *conn, cm_apply_rec *recs, int n, cm_apply **ret, char *reason,
                 size_t reasonlen);
/* NULL is fine. */
void cm_apply_free(cm_apply *a);
