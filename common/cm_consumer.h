/*
 * cm_consumer.h - the one consumer loop every daemon runs.
 *
 * It polls a batch of records, applies them in one database transaction,
 * commits, and only then stores the offsets, so a crash between apply and
 * commit redelivers rather than loses. A handler works in two steps: plan()
 * decodes a record and names the statements that apply it, or (set-based,
 * see cm_set) gives its row to statements that apply a whole run of records
 * at once; the loop sends the statements of the whole batch in one pipeline
 * (one round trip for many records, in record order, inside the
 * transaction); done() then reads that record's results, before the commit.
 * Handlers dedupe by (orderId, event type) in the same transaction, which
 * makes redelivery harmless.
 *
 * The error handler classifies each failure by the handler's return code:
 *   0             applied (or a duplicate that changed nothing)
 *   -EBADMSG      the record can never succeed (not JSON, wrong types,
 *   -EINVAL       missing fields, unsupported version): to <topic>.DLT at once
 *   -EPROTONOSUPPORT
 *   -ECONNRESET   a dependency is down: pause, retry without end, readiness
 *                 false, nothing dead-lettered
 *   other < 0     a failure tied to the record: retried max_retries times,
 *                 backoff apart, then dead-lettered
 * A failed batch is re-run one record per transaction, so one bad record
 * costs only itself. The offset of a dead-lettered record is stored only
 * after the DLT write is acknowledged.
 */
#pragma once

#include "cm_db.h"
#include "cm_health.h"
#include "cm_trace.h"

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <string.h>

#define CM_OUTCOME_MAX 24

typedef struct {
    const rd_kafka_message_t *msg;
    /* NUL-terminated copy of the header, or NULL; when the record is traced,
     * the traceparent of its CONSUMER span instead, so that what the
     * handler writes (its reply) becomes a child of that span. */
    const char *traceparent;
    const char *trace_id; /* its 32 hex digits, or "-" */
    char *outcome;        /* CM_OUTCOME_MAX bytes when traced, else NULL */
} cm_record;

/* Names what the handler did with rec ("charged", "refunded", "duplicate"):
 * the outcome tag of the record's span. A literal or short word; nothing
 * happens when the record is not traced. */
static inline void cm_record_outcome(const cm_record *rec, const char *word)
{
    if (rec->outcome) {
        size_t n = strnlen(word, CM_OUTCOME_MAX - 1);
        memcpy(rec->outcome, word, n);
        rec->outcome[n] = '\0';
    }
}

/* The key=value fields that place a record in a log line. */
#define CM_REC_FMT "topic=%s partition=%d offset=%lld trace_id=%s"
#define CM_REC_ARGS(rec)                                                                           \
    rd_kafka_topic_name((rec)->msg->rkt), (int)(rec)->msg->partition,                              \
        (long long)(rec)->msg->offset, (rec)->trace_id

#define CM_PLAN_MAX 2
#define CM_SET_COLS 10

/* A set-based handler: statements that apply a whole run of records at once
 * instead of each record's own statements. A run is a sequence of records of
 * the batch, consecutive but for records with nothing to do, whose
 * subscriptions share this cm_set. Each record gives a row of ncols text
 * values (cm_plan.row); the loop passes column c of the run as parameter
 * $c+1, a PostgreSQL text[] in batch order (a statement may take only the
 * first few columns), so that
 * "unnest($1::text[], ...) WITH ORDINALITY" numbers the records 1..n as the
 * loop does. The statements run in order, once per run, in the batch's
 * transaction and pipeline; each returns at most one row per record, whose
 * first column is that ordinal (rows for no record are an error). A statement
 * must give every record the outcome that applying the records one by one, in
 * batch order, would give (duplicates, limits reached part way, ...): the
 * loop also runs a record alone (a run of one) when it isolates a failure. */
typedef struct {
    const char *sql; /* static storage (cm_db_query) */
    int nparams;     /* it takes columns $1..$nparams */
} cm_set_stmt;

typedef struct {
    cm_set_stmt stmt[CM_PLAN_MAX];
    int nsql;
    int ncols;
} cm_set;

/* The statements that apply one record (n may be 0: nothing to do), and the
 * handler's state between plan() and done(): the statements' parameters
 * point into it. The loop calls release(state) when the record is done.
 * A record of a subscription with a cm_set sets in_set and fills row
 * instead (n stays 0); before done() the loop fills set_res/set_row (read
 * them with cm_plan_value()). */
typedef struct {
    cm_db_stmt stmts[CM_PLAN_MAX];
    int n;
    void *state;
    void (*release)(void *state);
    bool in_set;
    const char *row[CM_SET_COLS];
    PGresult *set_res[CM_PLAN_MAX]; /* owned by the loop */
    int set_row[CM_PLAN_MAX];       /* -1: the statement returned no row for it */
} cm_plan;

/* In done() of a record planned in_set: the value of column col of the row
 * that the run's statement j returned for this record, or NULL if it
 * returned none (or the value is SQL NULL). */
const char *cm_plan_value(const cm_plan *plan, int j, int col);

/* Decodes rec and fills plan. On failure writes a short reason (used in logs
 * and the DLT exception message) and returns a code (see above). */
typedef int (*cm_plan_fn)(void *ctx, const cm_record *rec, cm_plan *plan, char *reason,
                          size_t reasonlen);
/* Reads the results of plan's statements (res[0..plan->n-1]; they ran and
 * succeeded, the transaction is still open). Returns 0 or a code as above. */
typedef int (*cm_done_fn)(void *ctx, const cm_record *rec, const cm_plan *plan,
                          PGresult *const *res, char *reason, size_t reasonlen);

typedef struct {
    const char *topic;
    cm_plan_fn plan;
    cm_done_fn done;
    const cm_set *set; /* NULL: each record runs its own statements */
} cm_subscription;

typedef struct {
    const char *client_id; /* also names the DLT producer */
    const char *group;
    const char *db_url;
    const cm_subscription *subs;
    size_t nsubs;
    void *ctx;            /* passed to every handler */
    int batch_max;        /* records per transaction */
    int max_retries;      /* for failures tied to a record */
    long long backoff_ms; /* between those retries */
    cm_health *health;
    /* Called once stop is seen, before the consumer is closed (the daemon
     * stops its HTTP server there: the documented drain order). */
    void (*before_close)(void *arg);
    void *before_close_arg;
    /* Called from the loop at least every 200 ms while it makes progress,
     * also while it waits out an outage (systemd watchdog, status). */
    void (*tick)(void *arg);
    void *tick_arg;
    /* NULL: off. Else a CONSUMER span per record whose traceparent is
     * sampled, from its arrival to the commit of its effects (or its DLT
     * write), with order id, topic, partition, offset and outcome tags. */
    cm_tracer *tracer;
} cm_consumer_config;

/* Runs until *stop becomes non-zero, then closes the consumer (leaving the
 * group at once) and returns 0; returns a negative code if set-up failed. */
int cm_consumer_run(const cm_consumer_config *cfg, volatile const sig_atomic_t *stop);
