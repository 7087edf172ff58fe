/*
 * cm_apply.c - see cm_apply.h.
 */
#include "cm_apply.h"

#include "cm_db.h"

#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Weight per pipeline (see cm_apply.h): bounds what each side buffers
 * before the other reads (a pipeline of unbounded size could fill both
 * sockets). */
#define PIPELINE_RECORDS 64

/* One step of a batch: a record's own statements (set NULL, one member), or
 * the set statements of a run of records (members in batch order; records
 * with nothing to do between them are not members). */
typedef struct {
    const cm_set *set;
    cm_apply_rec **members;
    int n;
    char *arrays[CM_SET_COLS];
    const char *params[CM_SET_COLS];
    PGresult *res[CM_PLAN_MAX];
} step;

static int step_nstmts(const step *st)
{
    return st->set ? st->set->nsql : st->members[0]->plan->n;
}

/* What a step adds to what the server sends back before the client reads:
 * a record's statements count one; a set statement one per PIPELINE_RECORDS
 * rows it may return. */
static int step_weight(const step *st)
{
    return st->set ? st->set->nsql * (1 + st->n / PIPELINE_RECORDS) : 1;
}

static void steps_free(step *steps, int n)
{
    for (int i = 0; i < n; i++) {
        for (int c = 0; c < CM_SET_COLS; c++)
            free(steps[i].arrays[c]);
        for (int j = 0; j < CM_PLAN_MAX; j++)
            PQclear(steps[i].res[j]);
        free(steps[i].members);
    }
    free(steps);
}

/* Cuts recs[0..n-1] into steps: a record with statements of its own is a
 * step; consecutive records of one cm_set are one. Records with nothing to do
 * join no step (they cannot change what a run does). */
static int make_steps(cm_apply_rec *recs, int n, step **ret, int *ret_n)
{
    step *steps = calloc((size_t)n + 1, sizeof(*steps));
    int k = 0;

    if (!steps)
        return -ENOMEM;
    for (int i = 0; i < n; i++) {
        cm_apply_rec *rec = &recs[i];
        const cm_set *set = rec->plan->in_set ? rec->set : NULL;
        if (rec->plan->in_set && !set) {
            steps_free(steps, k);
            return -EINVAL; /* a handler planned a set its subscription does not declare */
        }
        if (!set && rec->plan->n == 0)
            continue;
        if (!set || k == 0 || steps[k - 1].set != set) {
            steps[k].set = set;
            if (!(steps[k].members = calloc((size_t)(n - i), sizeof(cm_apply_rec *)))) {
                steps_free(steps, k + 1);
                return -ENOMEM;
            }
            k++;
        }
        steps[k - 1].members[steps[k - 1].n++] = rec;
    }
    *ret = steps;
    *ret_n = k;
    return 0;
}

/* The arrays of a set step's parameters: column c of its members in order. */
static int step_arrays(step *st)
{
    const char **vals = calloc((size_t)st->n, sizeof(*vals));
    int r = vals ? 0 : -ENOMEM;

    for (int c = 0; c < st->set->ncols && r == 0; c++) {
        for (int i = 0; i < st->n; i++)
            vals[i] = st->members[i]->plan->row[c] ? st->members[i]->plan->row[c] : "";
        r = cm_db_array(vals, (size_t)st->n, &st->arrays[c]);
        st->params[c] = st->arrays[c];
    }
    free((void *)vals);
    return r;
}

/* Hands each member of a set step the row its statements returned for it
 * (first column: the member's ordinal, 1-based). */
static int step_rows(step *st, char *reason, size_t reasonlen)
{
    for (int i = 0; i < st->n; i++)
        for (int j = 0; j < CM_PLAN_MAX; j++) {
            st->members[i]->plan->set_res[j] = j < st->set->nsql ? st->res[j] : NULL;
            st->members[i]->plan->set_row[j] = -1;
        }
    for (int j = 0; j < st->set->nsql; j++)
        for (int row = 0; row < PQntuples(st->res[j]); row++) {
            char *end;
            long o = strtol(PQgetvalue(st->res[j], row, 0), &end, 10);
            if (*end || o < 1 || o > st->n || st->members[o - 1]->plan->set_row[j] != -1) {
                snprintf(reason, reasonlen, "set statement %d returned row %d for no record", j,
                         row);
                return -EIO;
            }
            st->members[o - 1]->plan->set_row[j] = row;
        }
    return 0;
}

/* Sends the statements of steps[0..n-1] (after BEGIN if begin) in one
 * pipeline and hands each step its results. */
static int run_pipeline(PGconn *conn, step *steps, int n, bool begin)
{
    int total = begin, k = 0, r;
    cm_db_stmt *stmts;
    PGresult **res;

    for (int i = 0; i < n; i++)
        total += step_nstmts(&steps[i]);
    stmts = calloc((size_t)total + 1, sizeof(*stmts));
    res = calloc((size_t)total + 1, sizeof(*res));
    if (!stmts || !res) {
        free(stmts);
        free(res);
        return -ENOMEM;
    }
    if (begin)
        stmts[k++] = (cm_db_stmt){"BEGIN", 0, NULL};
    for (int i = 0; i < n; i++) {
        const step *st = &steps[i];
        for (int j = 0; j < step_nstmts(st); j++)
            stmts[k++] =
                st->set ? (cm_db_stmt){st->set->stmt[j].sql, st->set->stmt[j].nparams, st->params}
                        : st->members[0]->plan->stmts[j];
    }
    r = cm_db_pipeline(conn, stmts, total, res);
    if (r == 0) {
        k = 0;
        if (begin)
            PQclear(res[k++]);
        for (int i = 0; i < n; i++)
            for (int j = 0; j < step_nstmts(&steps[i]); j++) {
                if (steps[i].set)
                    steps[i].res[j] = res[k++];
                else
                    steps[i].members[0]->res[j] = res[k++];
            }
    }
    free(stmts);
    free(res);
    return r;
}

/* Runs every step: the set steps' arrays are built, the statements go in
 * pipelines of at most PIPELINE_RECORDS weight (BEGIN with the first), and
 * each set step's rows are handed to its members. */
static int run_steps(PGconn *conn, step *steps, int n, char *reason, size_t reasonlen)
{
    int r = 0, first = 0, weight = 0;

    for (int i = 0; i < n && r == 0; i++)
        if (steps[i].set && (r = step_arrays(&steps[i])) < 0)
            snprintf(reason, reasonlen, "%s", strerror(-r));
    for (int i = 0; i <= n && r == 0; i++) {
        int w = i < n ? step_weight(&steps[i]) : 0;
        if (i > first && (i == n || weight + w > PIPELINE_RECORDS)) {
            r = run_pipeline(conn, steps + first, i - first, first == 0);
            if (r < 0)
                snprintf(reason, reasonlen, "%s", cm_db_error(conn));
            first = i;
            weight = 0;
        }
        weight += w;
    }
    for (int i = 0; i < n && r == 0; i++)
        if (steps[i].set)
            r = step_rows(&steps[i], reason, reasonlen);
    return r;
}

const char *cm_plan_value(const cm_plan *plan, int j, int col)
{
    if (j < 0 || j >= CM_PLAN_MAX || !plan->set_res[j] || plan->set_row[j] < 0 ||
        PQgetisnull(plan->set_res[j], plan->set_row[j], col))
        return NULL;
    return PQgetvalue(plan->set_res[j], plan->set_row[j], col);
}

struct cm_apply {
    step *steps;
    int n;
};

int cm_apply_run(PGconn *conn, cm_apply_rec *recs, int n, cm_apply **ret, char *reason,
                 size_t reasonlen)
{
    cm_apply *a = calloc(1, sizeof(*a));
    int r = a ? make_steps(recs, n, &a->steps, &a->n) : -ENOMEM;

    *ret = a;
    if (r < 0) {
        snprintf(reason, reasonlen, "%s",
                 r == -EINVAL ? "a record was planned for a set its subscription does not declare"
                              : strerror(-r));
        return r;
    }
    return run_steps(conn, a->steps, a->n, reason, reasonlen);
}

bool cm_apply_began(const cm_apply *a)
{
    return a && a->n > 0;
}

void cm_apply_free(cm_apply *a)
{
    if (!a)
        return;
    if (a->steps)
        steps_free(a->steps, a->n);
    free(a);
}
