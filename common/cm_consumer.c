/*
 * cm_consumer.c - see cm_consumer.h.
 */
#include "cm_consumer.h"

#include "cm_apply.h"
#include "cm_db.h"
#include "cm_dlt.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "ev_event.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TRACEPARENT_MAX 64

typedef struct {
    rd_kafka_message_t *msg;
    char traceparent[TRACEPARENT_MAX];
    char trace_id[33];
    bool has_traceparent;
    cm_plan plan;
    PGresult *res[CM_PLAN_MAX];
    /* The record's CONSUMER span, when traced: its traceparent goes to the
     * handler; result is the loop's verdict, outcome the handler's. */
    bool traced;
    cm_span_ctx span;
    char span_tp[56];
    const char *result;
    char outcome[CM_OUTCOME_MAX];
    /* Its effect committed, or its DLT copy acknowledged: its offset may be
     * stored, also when stop came right after. */
    bool done;
} slot;

typedef struct {
    const cm_consumer_config *cfg;
    volatile const sig_atomic_t *stop;
    rd_kafka_t *rk;
    cm_dlt *dlt;
    PGconn *conn;
    slot *batch;
    int n;
    /* Records that arrived while the loop was paused (after a rebalance). */
    slot *later;
    int nlater;
    time_t last_probe;
} loop;

static void count(loop *l, const char *metric, const rd_kafka_message_t *m)
{
    char labels[160];
    snprintf(labels, sizeof(labels), "topic=\"%s\"", rd_kafka_topic_name(m->rkt));
    cm_metrics_add(l->cfg->health->metrics, metric, labels, 1);
}

static bool is_poison(int r)
{
    return r == -EBADMSG || r == -EINVAL || r == -EPROTONOSUPPORT;
}

static const cm_subscription *find_sub(const loop *l, const rd_kafka_message_t *m)
{
    const char *topic = rd_kafka_topic_name(m->rkt);
    for (size_t i = 0; i < l->cfg->nsubs; i++)
        if (strcmp(l->cfg->subs[i].topic, topic) == 0)
            return &l->cfg->subs[i];
    return NULL;
}

static void slot_fill(const loop *l, slot *s, rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;

    s->msg = m;
    s->has_traceparent = false;
    snprintf(s->trace_id, sizeof(s->trace_id), "-");
    if (rd_kafka_message_headers(m, &h) == 0 &&
        rd_kafka_header_get_last(h, EV_HDR_TRACEPARENT, &v, &len) == 0 && v &&
        len < TRACEPARENT_MAX) {
        memcpy(s->traceparent, v, len);
        s->traceparent[len] = '\0';
        s->has_traceparent = true;
        if (ev_traceparent_valid(s->traceparent, len))
            snprintf(s->trace_id, sizeof(s->trace_id), "%.32s", s->traceparent + 3);
    }
    s->done = false;
    s->traced = l->cfg->tracer && s->has_traceparent &&
                cm_trace_start(l->cfg->tracer, s->traceparent, false, &s->span);
    if (s->traced) {
        cm_trace_traceparent(&s->span, s->span_tp);
        s->result = "interrupted"; /* until the loop knows better */
        s->outcome[0] = '\0';
    }
}

/* Ends the span of a traced record once its fate is known. */
static void end_span(const loop *l, const slot *s)
{
    const rd_kafka_message_t *m = s->msg;
    char name[CM_SPAN_NAME_MAX], key[CM_SPAN_TAG_MAX], part[12], off[24];
    size_t klen = m->key_len < sizeof(key) - 1 ? m->key_len : sizeof(key) - 1;
    const cm_span_tag tags[] = {
        {"order.id", key},
        {"kafka.topic", rd_kafka_topic_name(m->rkt)},
        {"kafka.partition", part},
        {"kafka.offset", off},
        {"outcome", s->outcome[0] ? s->outcome : s->result},
        {"consumer.result", s->result},
    };

    memcpy(key, m->key ? m->key : "", m->key ? klen : 0);
    key[m->key ? klen : 0] = '\0';
    snprintf(name, sizeof(name), "consume %s", rd_kafka_topic_name(m->rkt));
    snprintf(part, sizeof(part), "%d", (int)m->partition);
    snprintf(off, sizeof(off), "%lld", (long long)m->offset);
    cm_trace_end(l->cfg->tracer, &s->span, CM_SPAN_CONSUMER, name, "kafka", tags,
                 sizeof(tags) / sizeof(tags[0]), 0);
}

/* Checks what the loop itself can tell about a record: a handler exists, the
 * event version is one this build reads. */
static int precheck(const loop *l, const slot *s, char *reason, size_t reasonlen)
{
    rd_kafka_headers_t *h = NULL;
    const void *v;
    size_t len;

    if (!find_sub(l, s->msg)) {
        snprintf(reason, reasonlen, "no handler for topic %s", rd_kafka_topic_name(s->msg->rkt));
        return -EBADMSG;
    }
    if (rd_kafka_message_headers(s->msg, &h) == 0 &&
        rd_kafka_header_get_last(h, EV_HDR_EVENT_VERSION, &v, &len) == 0) {
        char buf[16], *end;
        if (!v || len == 0 || len >= sizeof(buf))
            goto bad;
        memcpy(buf, v, len);
        buf[len] = '\0';
        if (strtol(buf, &end, 10) != EV_VERSION || *end != '\0')
            goto bad;
    }
    return 0;
bad:
    snprintf(reason, reasonlen, "unsupported event version %.*s", (int)(len < 16 ? len : 16),
             v ? (const char *)v : "");
    return -EPROTONOSUPPORT;
}

static cm_record record_of(slot *s)
{
    if (s->traced)
        return (cm_record){s->msg, s->span_tp, s->trace_id, s->outcome};
    return (cm_record){s->msg, s->has_traceparent ? s->traceparent : NULL, s->trace_id, NULL};
}

static void slot_release(slot *s)
{
    for (int i = 0; i < CM_PLAN_MAX; i++) {
        PQclear(s->res[i]);
        s->res[i] = NULL;
    }
    if (s->plan.release)
        s->plan.release(s->plan.state);
    s->plan = (cm_plan){0};
}

static int plan_slot(loop *l, slot *s, char *reason, size_t reasonlen)
{
    cm_record rec = record_of(s);
    int r = precheck(l, s, reason, reasonlen);

    if (r < 0)
        return r;
    reason[0] = '\0';
    s->plan = (cm_plan){0};
    r = find_sub(l, s->msg)->plan(l->cfg->ctx, &rec, &s->plan, reason, reasonlen);
    if (r < 0 && !reason[0])
        snprintf(reason, reasonlen, "%s", strerror(-r));
    return r;
}

static int done_slot(loop *l, slot *s, char *reason, size_t reasonlen)
{
    cm_record rec = record_of(s);
    int r;

    reason[0] = '\0';
    s->outcome[0] = '\0'; /* a verdict of a rolled-back attempt is not one */
    r = find_sub(l, s->msg)->done(l->cfg->ctx, &rec, &s->plan, s->res, reason, reasonlen);
    if (r < 0 && !reason[0])
        snprintf(reason, reasonlen, "%s", r == -ECONNRESET ? cm_db_error(l->conn) : strerror(-r));
    return r;
}

/* Applies slots[0..n-1] in a new transaction (BEGIN goes with the first
 * pipeline), leaving it open: every record is planned, the statements run
 * (cm_apply_run), then every record reads its results. Records with nothing
 * to do (a reply that undoes nothing) cost no round trip: when no record of
 * the batch has statements, no transaction begins (*ret_began false).
 * Returns 0 or the code of the first failure. */
static int apply(loop *l, slot *slots, int n, bool *ret_began, char *reason, size_t reasonlen)
{
    cm_apply_rec *recs = calloc((size_t)n + 1, sizeof(*recs));
    cm_apply *run = NULL;
    int r = recs ? 0 : -ENOMEM;

    if (r < 0)
        snprintf(reason, reasonlen, "%s", strerror(-r));
    for (int i = 0; i < n && r == 0; i++) {
        r = plan_slot(l, &slots[i], reason, reasonlen);
        if (r == 0)
            recs[i] = (cm_apply_rec){&slots[i].plan,
                                     slots[i].plan.in_set ? find_sub(l, slots[i].msg)->set : NULL,
                                     slots[i].res};
    }
    if (r == 0)
        r = cm_apply_run(l->conn, recs, n, &run, reason, reasonlen);
    *ret_began = cm_apply_began(run);
    for (int i = 0; i < n && r == 0; i++)
        r = done_slot(l, &slots[i], reason, reasonlen);
    cm_apply_free(run);
    free(recs);
    for (int i = 0; i < n; i++)
        slot_release(&slots[i]);
    return r;
}

/* A statement of the loop never waits longer than CM_DB_STATEMENT_TIMEOUT:
 * it fails with 57014, an outage, and the loop waits it out feeding the
 * watchdog and honouring stop, not ready meanwhile. */
static int ensure_db(loop *l)
{
    char err[256];

    if (l->conn && PQstatus(l->conn) == CONNECTION_OK)
        return 0;
    PQfinish(l->conn);
    l->conn = NULL;
    if (cm_db_connect(l->cfg->db_url, &l->conn, err, sizeof(err)) < 0) {
        log_warning("database unavailable, consumer waits error=\"%s\"", err);
        return -ECONNRESET;
    }
    if (cm_db_default_statement_timeout(l->conn, CM_DB_STATEMENT_TIMEOUT) == 0)
        return 0;
    log_warning("database unavailable, consumer waits error=\"%s\"", cm_db_error(l->conn));
    PQfinish(l->conn);
    l->conn = NULL;
    return -ECONNRESET;
}

/* Waits ms, or until done(arg) (if given) says so, while keeping the group
 * membership alive and the watchdog fed: the assignment is paused and the
 * consumer polled in slices of at most 100 ms; a record that still arrives
 * (a partition newly assigned during the wait) is kept for the next batch.
 * Returns early when stop is set. */
static void wait_for(loop *l, long long ms, bool (*done)(void *arg), void *arg)
{
    rd_kafka_topic_partition_list_t *as = NULL;
    struct timespec start, now;

    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        rd_kafka_message_t *m;
        if (!as && rd_kafka_assignment(l->rk, &as) == 0)
            rd_kafka_pause_partitions(l->rk, as);
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long el =
            (now.tv_sec - start.tv_sec) * 1000LL + (now.tv_nsec - start.tv_nsec) / 1000000;
        if (el >= ms || *l->stop || (done && done(arg)))
            break;
        if (l->cfg->tick)
            l->cfg->tick(l->cfg->tick_arg);
        m = rd_kafka_consumer_poll(l->rk, (int)(ms - el < 100 ? ms - el : 100));
        if (!m)
            continue;
        if (m->err || l->nlater >= l->cfg->batch_max) {
            /* Not kept: the position stays behind it, so it comes again. */
            rd_kafka_seek(m->rkt, m->partition, m->offset, 0);
            rd_kafka_message_destroy(m);
        } else {
            slot_fill(l, &l->later[l->nlater++], m);
        }
        if (as) {
            rd_kafka_topic_partition_list_destroy(as);
            as = NULL; /* re-pause: the assignment may have changed */
        }
    }
    if (as) {
        rd_kafka_resume_partitions(l->rk, as);
        rd_kafka_topic_partition_list_destroy(as);
    }
}

static void idle(loop *l, long long ms)
{
    wait_for(l, ms, NULL, NULL);
}

/* reason: the server's message (read-only, timeout, ...), logged once per
 * outage. */
static void outage(loop *l, long long *backoff, const char *reason)
{
    if (atomic_exchange(&l->cfg->health->db_ok, false))
        log_warning("database outage: the consumer waits and retries, nothing is dead-lettered "
                    "meanwhile (not ready) error=\"%s\"",
                    reason);
    PQfinish(l->conn);
    l->conn = NULL;
    idle(l, *backoff);
    *backoff = *backoff * 2 > 5000 ? 5000 : *backoff * 2;
}

static bool dlt_settled(void *arg)
{
    return cm_dlt_poll(arg) != 0;
}

/* Dead-letter writes failing is an episode: not ready, one error line at its
 * start and one info line at its end. */
static void dlt_episode(loop *l, bool failing)
{
    if (atomic_exchange(&l->cfg->health->dlt_failing, failing) == failing)
        return;
    if (failing)
        log_error("dead-letter writes fail: the consumer waits with its partitions paused and "
                  "is not ready until one succeeds error=\"%s\"",
                  cm_dlt_error(l->dlt));
    else
        log_info("dead-letter writes work again");
}

/* Writes the DLT copy of s and waits for its acknowledgement, polling the
 * consumer and feeding the watchdog meanwhile. Never skips a record without
 * its DLT copy: retries until done. Returns 0, or -ECANCELED when stop came
 * first (the record is then redelivered after the restart). */
static int dead_letter(loop *l, slot *s, bool poison, const char *reason)
{
    long long backoff = 500;

    while (!*l->stop) {
        int r = cm_dlt_send(l->dlt, s->msg, l->cfg->group, poison, reason);
        if (r == 0) {
            wait_for(l, LLONG_MAX, dlt_settled, l->dlt);
            r = cm_dlt_poll(l->dlt);
            if (r == 0) { /* stop */
                cm_dlt_abort(l->dlt);
                log_warning("stopping with a dead-letter write unacknowledged: the record comes "
                            "again after the restart topic=%s partition=%d offset=%lld",
                            rd_kafka_topic_name(s->msg->rkt), (int)s->msg->partition,
                            (long long)s->msg->offset);
                break;
            }
        }
        if (r > 0) {
            s->result = "dead-lettered";
            s->done = true;
            s->outcome[0] = '\0';
            dlt_episode(l, false);
            atomic_fetch_add(&l->cfg->health->dead_lettered, 1);
            count(l, "orders_dead_lettered_total", s->msg);
            log_error("publishing to %s.DLT partition=%d offset=%lld key=%.*s reason=\"%s\"",
                      rd_kafka_topic_name(s->msg->rkt), (int)s->msg->partition,
                      (long long)s->msg->offset, (int)s->msg->key_len,
                      s->msg->key ? (const char *)s->msg->key : "", reason);
            return 0;
        }
        log_debug("dead-letter write failed error=\"%s\"", cm_dlt_error(l->dlt));
        dlt_episode(l, true);
        idle(l, backoff);
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
    return -ECANCELED;
}

/* One record in its own transaction, with the error handler's policy. */
static void process_single(loop *l, slot *s)
{
    char reason[256];
    long long backoff = 100, conflict_backoff = 50;
    int attempts = 0;

    while (!*l->stop) {
        int r = ensure_db(l);
        bool began = false;
        if (r == 0) {
            cm_log_hold();
            r = apply(l, s, 1, &began, reason, sizeof(reason));
            if (r == 0 && began) {
                cm_log_flush(); /* the record's lines, before its COMMIT */
                if ((r = cm_db_exec(l->conn, "COMMIT")) < 0)
                    snprintf(reason, sizeof(reason), "%s", cm_db_error(l->conn));
            } else if (r < 0) {
                cm_log_drop();
                if (PQstatus(l->conn) == CONNECTION_OK)
                    cm_db_exec(l->conn, "ROLLBACK");
            }
            cm_log_release();
        } else {
            snprintf(reason, sizeof(reason), "%s", cm_db_error(l->conn));
        }
        if (r == 0) {
            atomic_store(&l->cfg->health->db_ok, true);
            s->result = "applied";
            s->done = true;
            return;
        }
        if (r == -ECONNRESET) {
            outage(l, &backoff, reason);
            continue;
        }
        if (r == -EAGAIN) {
            /* A deadlock or serialization failure is no fault of the record:
             * retried at once (a short, growing pause), never counted
             * toward RETRY_MAX and the DLT. */
            atomic_fetch_add(&l->cfg->health->retries, 1);
            count(l, "orders_retries_total", s->msg);
            log_warning("transient conflict, retrying record topic=%s partition=%d offset=%lld "
                        "reason=\"%s\" trace_id=%s",
                        rd_kafka_topic_name(s->msg->rkt), (int)s->msg->partition,
                        (long long)s->msg->offset, reason, s->trace_id);
            idle(l, conflict_backoff);
            conflict_backoff = conflict_backoff * 2 > 2000 ? 2000 : conflict_backoff * 2;
            continue;
        }
        if (is_poison(r)) {
            dead_letter(l, s, true, reason);
            return;
        }
        if (++attempts > l->cfg->max_retries) {
            dead_letter(l, s, false, reason);
            return;
        }
        atomic_fetch_add(&l->cfg->health->retries, 1);
        count(l, "orders_retries_total", s->msg);
        log_warning("retrying record topic=%s partition=%d offset=%lld attempt=%d reason=\"%s\" "
                    "trace_id=%s",
                    rd_kafka_topic_name(s->msg->rkt), (int)s->msg->partition,
                    (long long)s->msg->offset, attempts, reason, s->trace_id);
        idle(l, l->cfg->backoff_ms);
    }
}

/* The fast path: the whole batch in one transaction. Returns 0, or the code
 * of the first failure (the transaction is then rolled back). */
static int process_batch_tx(loop *l, char *reason, size_t reasonlen)
{
    int r = ensure_db(l);
    bool began = false;

    if (r < 0) {
        snprintf(reason, reasonlen, "%s", cm_db_error(l->conn));
        return r;
    }
    /* The batch's info lines are held and written in a few writes before
     * its COMMIT, so that a crash the batch survives keeps every one of
     * them; a batch rolled back drops them (its records are done again one
     * by one, and log then). */
    cm_log_hold();
    r = apply(l, l->batch, l->n, &began, reason, reasonlen);
    if (r == 0 && began) {
        cm_log_flush();
        if ((r = cm_db_exec(l->conn, "COMMIT")) < 0) {
            snprintf(reason, reasonlen, "%s", cm_db_error(l->conn));
            log_warning("batch commit failed: the lines just written for its records did not "
                        "take effect; the records are done again records=%d reason=\"%s\"",
                        l->n, reason);
        }
    } else if (r < 0) {
        int dropped = cm_log_drop();
        if (l->conn && PQstatus(l->conn) == CONNECTION_OK)
            cm_db_exec(l->conn, "ROLLBACK");
        log_debug("batch rolled back records=%d lines_dropped=%d reason=\"%s\"", l->n, dropped,
                  reason);
    }
    cm_log_release();
    return r;
}

static void process(loop *l)
{
    long long backoff = 100;
    char reason[256];

    while (!*l->stop) {
        int r = process_batch_tx(l, reason, sizeof(reason));
        if (r == 0) {
            atomic_store(&l->cfg->health->db_ok, true);
            for (int i = 0; i < l->n; i++) {
                l->batch[i].result = "applied";
                l->batch[i].done = true;
            }
            return;
        }
        if (r != -ECONNRESET)
            break;
        outage(l, &backoff, reason);
    }
    /* Some record failed: isolate it by running each record on its own. */
    for (int i = 0; i < l->n && !*l->stop; i++)
        process_single(l, &l->batch[i]);
}

/* Stores the offsets of the batch's done records. Records are done in batch
 * order (the batch's transaction does all, the one-by-one path stops at
 * stop), so on each partition the done records come before the others and
 * the stored offset never passes a record that is not done. */
static void store_offsets(loop *l)
{
    rd_kafka_topic_partition_list_t *offs = rd_kafka_topic_partition_list_new(l->n);

    for (int i = 0; i < l->n && l->batch[i].done; i++) {
        rd_kafka_message_t *m = l->batch[i].msg;
        rd_kafka_topic_partition_t *p =
            rd_kafka_topic_partition_list_find(offs, rd_kafka_topic_name(m->rkt), m->partition);
        if (!p)
            p = rd_kafka_topic_partition_list_add(offs, rd_kafka_topic_name(m->rkt), m->partition);
        if (m->offset + 1 > p->offset)
            p->offset = m->offset + 1;
    }
    /* Fails for partitions revoked meanwhile: their new owner redoes them,
     * and dedupe makes that harmless. */
    if (offs->cnt > 0)
        rd_kafka_offsets_store(l->rk, offs);
    rd_kafka_topic_partition_list_destroy(offs);
}

/* Readiness needs a live answer from the brokers even when no record flows:
 * a metadata request for the subscribed topics, at most every 2 s. */
static void probe_kafka(loop *l)
{
    const struct rd_kafka_metadata *md = NULL;
    time_t now = time(NULL);

    if (now - l->last_probe < 2)
        return;
    l->last_probe = now;
    if (rd_kafka_metadata(l->rk, 0, NULL, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        atomic_store(&l->cfg->health->kafka_ok, md->broker_cnt > 0);
        rd_kafka_metadata_destroy(md);
    } else {
        atomic_store(&l->cfg->health->kafka_ok, false);
    }
}

static void collect(loop *l)
{
    l->n = 0;
    /* Records kept back during a pause go first. */
    for (int i = 0; i < l->nlater; i++)
        l->batch[l->n++] = l->later[i];
    l->nlater = 0;
    while (l->n < l->cfg->batch_max && !*l->stop) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(l->rk, l->n == 0 ? 200 : 0);
        if (!m) {
            if (l->n == 0)
                probe_kafka(l);
            break;
        }
        if (m->err) {
            if (cm_kafka_is_access_error(m->err, rd_kafka_message_errstr(m)))
                cm_kafka_access_failed(l->cfg->health, l->rk, m->err, rd_kafka_message_errstr(m));
            else if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
                log_warning("consumer error code=%s reason=\"%s\"", rd_kafka_err2name(m->err),
                            rd_kafka_message_errstr(m));
            rd_kafka_message_destroy(m);
            continue;
        }
        atomic_store(&l->cfg->health->kafka_ok, true);
        cm_kafka_access_ok(l->cfg->health, l->rk);
        slot_fill(l, &l->batch[l->n++], m);
    }
}

static int subscribe(loop *l)
{
    rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new((int)l->cfg->nsubs);
    rd_kafka_resp_err_t err;

    for (size_t i = 0; i < l->cfg->nsubs; i++)
        rd_kafka_topic_partition_list_add(topics, l->cfg->subs[i].topic, RD_KAFKA_PARTITION_UA);
    err = rd_kafka_subscribe(l->rk, topics);
    rd_kafka_topic_partition_list_destroy(topics);
    if (err) {
        log_error("could not subscribe error=\"%s\"", rd_kafka_err2str(err));
        return -EINVAL;
    }
    return 0;
}

static int setup(loop *l)
{
    rd_kafka_conf_t *conf;
    char err[512];
    int r;

    l->batch = calloc((size_t)l->cfg->batch_max, sizeof(slot));
    l->later = calloc((size_t)l->cfg->batch_max, sizeof(slot));
    if (!l->batch || !l->later)
        return -ENOMEM;
    r = cm_kafka_conf(CM_KAFKA_CONSUMER, l->cfg->client_id, l->cfg->group, l->cfg->health, &conf,
                      err, sizeof(err));
    if (r == 0)
        r = cm_kafka_new(CM_KAFKA_CONSUMER, conf, &l->rk, err, sizeof(err));
    if (r == 0)
        r = cm_dlt_new(l->cfg->client_id, l->cfg->health, &l->dlt, err, sizeof(err));
    if (r < 0)
        return log_error_errno(r, "could not create kafka clients: %s", err);
    rd_kafka_poll_set_consumer(l->rk);
    return subscribe(l);
}

/* rd_kafka_consumer_close blocks up to session.timeout.ms (10 s by our
 * default, 45 s by Kafka's newer one) when the coordinator does not answer:
 * the close runs in the background instead, waited for CLOSE_BOUND_MS. A
 * consumer that could not leave the group is evicted by the coordinator after
 * session.timeout.ms; its offsets stored so far were committed by then or are
 * redelivered (dedupe makes that harmless). */
#define CLOSE_BOUND_MS 3000

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void close_consumer(rd_kafka_t *rk)
{
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_error_t *e = rd_kafka_consumer_close_queue(rk, q);
    long long start = mono_ms();
    bool closed = false;

    if (e) {
        log_warning("could not close the consumer error=\"%s\"", rd_kafka_error_string(e));
        rd_kafka_error_destroy(e);
    }
    while (!e && !(closed = rd_kafka_consumer_closed(rk)) && mono_ms() - start < CLOSE_BOUND_MS) {
        rd_kafka_event_t *ev = rd_kafka_queue_poll(q, 100);
        if (ev && rd_kafka_event_type(ev) == RD_KAFKA_EVENT_REBALANCE) {
            if (strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0) {
                rd_kafka_error_t *ue =
                    rd_kafka_incremental_unassign(rk, rd_kafka_event_topic_partition_list(ev));
                if (ue)
                    rd_kafka_error_destroy(ue);
            } else {
                rd_kafka_assign(rk, NULL);
            }
        }
        if (ev)
            rd_kafka_event_destroy(ev);
    }
    rd_kafka_queue_destroy(q);
    if (closed) {
        rd_kafka_destroy(rk);
        return;
    }
    log_warning("the consumer did not leave its group within %d ms (brokers not answering): "
                "the group rebalances after session.timeout.ms instead",
                CLOSE_BOUND_MS);
    rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

/* librdkafka's order: every message of a client is destroyed before the
 * client (a message holds references into it: rd_kafka_destroy would wait for
 * them, or free what they point to); the consumer is closed (leaving the
 * group) before it is destroyed. */
static void teardown(loop *l)
{
    if (l->cfg->before_close)
        l->cfg->before_close(l->cfg->before_close_arg);
    for (int i = 0; i < l->nlater; i++)
        rd_kafka_message_destroy(l->later[i].msg);
    l->nlater = 0;
    cm_dlt_free(l->dlt);
    if (l->rk)
        close_consumer(l->rk);
    free(l->batch);
    free(l->later);
    PQfinish(l->conn);
}

int cm_consumer_run(const cm_consumer_config *cfg, volatile const sig_atomic_t *stop)
{
    loop l = {.cfg = cfg, .stop = stop};
    int r;

    cm_db_thread_path(CM_DB_CONSUMER);
    r = setup(&l);

    if (r == 0 && ensure_db(&l) == 0)
        atomic_store(&cfg->health->db_ok, true);
    if (r == 0)
        probe_kafka(&l); /* readiness at once, not after the first idle poll */
    while (r == 0 && !*stop) {
        if (cfg->tick)
            cfg->tick(cfg->tick_arg);
        collect(&l);
        if (l.n == 0)
            continue;
        log_debug("consumer batch start count=%d", l.n);
        /* The batch's order, which decides every outcome (set runs give
         * each record the outcome of this order applied one by one). */
        for (int i = 0; cm_log_enabled(LOG_DEBUG) && i < l.n; i++)
            log_debug("consumer batch record index=%d key=%.*s " CM_REC_FMT, i,
                      (int)l.batch[i].msg->key_len,
                      l.batch[i].msg->key ? (const char *)l.batch[i].msg->key : "",
                      CM_REC_ARGS(&l.batch[i]));
        process(&l);
        log_debug("consumer batch done count=%d", l.n);
        atomic_fetch_add(&cfg->health->consumed, l.n);
        for (int i = 0; i < l.n; i++) {
            count(&l, "orders_records_consumed_total", l.batch[i].msg);
            if (l.batch[i].traced)
                end_span(&l, &l.batch[i]);
        }
        /* A batch cut short by stop stores the offsets of the records done
         * before it (their effects are committed); the rest is redelivered.
         * A batch done just as stop came stores them all, so that its
         * records (and their DLT copies) do not come again. */
        store_offsets(&l);
        for (int i = 0; i < l.n; i++)
            rd_kafka_message_destroy(l.batch[i].msg);
        l.n = 0;
    }
    teardown(&l);
    return r;
}
