/*
 * cm_outbox.c - see cm_outbox.h.
 */
#include "cm_outbox.h"

#include "cm_db.h"
#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_trace.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#define RELAY_LOCK_KEY "7260002"
/* After stop, how long the relay still waits for delivery reports before it
 * purges what is in flight (it stays in the outbox for the next start). With
 * the HTTP drain and the consumer's close before it, the whole stop stays
 * well inside the units' TimeoutStopSec=30s. */
#define RELAY_STOP_GRACE_MS 3000
/* The span id of the event's parent (the commit or consume span that wrote
 * the row), kept in the row's headers for the relay's publish span; the
 * relay strips it, so it never reaches Kafka. Rows without it (older ones,
 * unsampled ones) get no publish span. */
#define HDR_PARENT_SPAN "x-orders-parent-span-id"

const char cm_outbox_migration[] =
    "CREATE TABLE outbox ("
    " id bigserial PRIMARY KEY,"
    " topic text NOT NULL,"
    " msg_key text NOT NULL,"
    " payload text NOT NULL,"
    " headers jsonb NOT NULL,"
    " created_at timestamptz NOT NULL DEFAULT clock_timestamp());"
    "CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS"
    " $$BEGIN PERFORM pg_notify('outbox', ''); RETURN NULL; END$$;"
    "CREATE TRIGGER outbox_notify AFTER INSERT ON outbox"
    " FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify();";

/* Returns whether parent was valid and sampled (then its span id is in
 * ret_parent_span). */
static bool traceparent_child(const char *parent, char out[56], char ret_parent_span[17])
{
    char fresh[56];

    ev_traceparent_new(fresh);
    if (parent && ev_traceparent_valid(parent, strlen(parent))) {
        /* Keep the trace id ("00-<32 hex>-") and the flags, take a new span
         * id: the span that publishes this event. */
        memcpy(out, parent, 36);
        memcpy(out + 36, fresh + 36, 16);
        memcpy(out + 52, parent + 52, 4);
        memcpy(ret_parent_span, parent + 36, 16);
        ret_parent_span[16] = '\0';
        return strchr("13579bdf", parent[54]) != NULL; /* flags bit 0: sampled */
    }
    memcpy(out, fresh, 56);
    return false;
}

int cm_outbox_headers(ev_type type, const char *parent_traceparent, char **ret_json,
                      char *ret_trace_id)
{
    char id[37], tp[56], version[12], parent_span[17];
    json_t *h;
    char *s;
    bool sampled;

    ev_uuid(id);
    sampled = traceparent_child(parent_traceparent, tp, parent_span);
    if (ret_trace_id)
        snprintf(ret_trace_id, 33, "%.32s", tp + 3);
    snprintf(version, sizeof(version), "%d", EV_VERSION);
    h = json_pack("{s:s, s:s, s:s, s:s, s:s}", EV_HDR_EVENT_ID, id, EV_HDR_EVENT_TYPE,
                  ev_type_name(type), EV_HDR_EVENT_VERSION, version, EV_HDR_TRACEPARENT, tp,
                  EV_HDR_TYPE_ID, ev_type_java_class(type));
    if (h && sampled)
        json_object_set_new(h, HDR_PARENT_SPAN, json_string(parent_span));
    if (!h)
        return -ENOMEM;
    s = json_dumps(h, JSON_COMPACT);
    json_decref(h);
    if (!s)
        return -ENOMEM;
    *ret_json = s;
    return 0;
}

static int encode_outcome(ev_type type, const char *order_id, bool yes, const char *reason,
                          char **ret_json)
{
    if (type == EV_PAYMENT_COMPLETED) {
        ev_payment_completed e = {.approved = yes};
        snprintf(e.order_id, sizeof(e.order_id), "%s", order_id);
        snprintf(e.reason, sizeof(e.reason), "%s", reason);
        return ev_payment_completed_encode(&e, ret_json);
    }
    if (type == EV_INVENTORY_RESERVED) {
        ev_inventory_reserved e = {.reserved = yes};
        snprintf(e.order_id, sizeof(e.order_id), "%s", order_id);
        snprintf(e.reason, sizeof(e.reason), "%s", reason);
        return ev_inventory_reserved_encode(&e, ret_json);
    }
    return -EINVAL;
}

int cm_outbox_reply_plan(cm_outbox_reply *reply, cm_plan *plan, ev_type reply_type,
                         const char *const params[3], const char *const verdicts[4],
                         const char *parent_traceparent)
{
    int r = cm_outbox_headers(reply_type, parent_traceparent, &reply->headers, NULL);

    /* The reply for every possible verdict is encoded here, by the codec;
     * the statement only picks one. */
    for (int i = 0; i < 4 && r == 0; i++)
        r = encode_outcome(reply_type, params[0], i == 0, verdicts[i], &reply->payloads[i]);
    if (r < 0)
        return r;
    for (int i = 0; i < 3; i++)
        plan->row[i] = params[i];
    plan->row[3] = ev_type_topic(reply_type);
    for (int i = 0; i < 4; i++)
        plan->row[4 + i] = reply->payloads[i];
    plan->row[8] = reply->headers;
    plan->in_set = true;
    return 0;
}

int cm_outbox_reply_done(const cm_plan *plan, char *ret_verdict, size_t verdict_len)
{
    const char *v = cm_plan_value(plan, 1, 1);

    if (!v)
        return 0;
    snprintf(ret_verdict, verdict_len, "%s", v);
    return 1;
}

void cm_outbox_reply_free(cm_outbox_reply *reply)
{
    for (int i = 0; i < 4; i++)
        free(reply->payloads[i]);
    free(reply->headers);
}

/* ---- relay ---- */

/* How long delivered rows wait for a notification to be deleted together
 * with the read of the next rows before they are deleted on their own. */
#define RELAY_DELETE_WAIT_MS 20
/* An idle relay waits for a notification, its producer's events or stop,
 * all on file descriptors: it does not poll. A pass every 30 s is the one
 * guard left (a session that died without the socket saying so); rows that
 * could not be delivered are tried again every second. */
#define RELAY_IDLE_PASS_MS 30000
#define RELAY_RETRY_MS 1000

struct cm_relay {
    const char *db_url;
    const char *client_id;
    int batch;
    cm_health *health;
    cm_tracer *tracer;
    atomic_bool stop;
    int wake_fd; /* eventfd: written at stop, ends every wait at once */
    pthread_t thread;
    PGconn *conn;
    rd_kafka_t *producer;
    int events_fd[2]; /* pipe librdkafka writes to when the producer has events */
    bool leader;      /* holds the relay lock */
    /* Fault injection for the tests (CM_FAULT_PRODUCER_FATAL_AFTER=N): raise
     * a fatal producer error once N rows were acknowledged. 0 = off. */
    long long fatal_after;
    long long acked;
    int left; /* rows of the last pass not delivered (logged at stop) */
    /* Rows delivered but not deleted yet, as an array literal "{1,2}", or
     * NULL: the next pass deletes them in the statement that reads the next
     * rows (one round trip and one commit instead of two). */
    char *delivered;
    char pass_error[256]; /* the last failed pass's error, logged once */
};

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Delivery state of one row of the current batch: set by the DR callback. */
typedef struct {
    int state; /* 0 pending, 1 persisted, -1 failed */
    rd_kafka_resp_err_t err;
    /* The publish span (produce -> delivery report), when sampled: its id is
     * the span id of the record's traceparent. */
    bool traced;
    cm_span_ctx span;
    long long end_us;
    int32_t partition;
    int64_t offset;
} relay_slot;

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    relay_slot *slot = m->_private;
    (void)rk;
    (void)opaque;
    slot->err = m->err;
    slot->state = m->err ? -1 : 1;
    if (slot->traced) {
        slot->end_us = cm_trace_now_us();
        slot->partition = m->partition;
        slot->offset = m->offset;
    }
}

/* Ends the publish span of a delivered row. */
static void end_publish(cm_relay *r, PGresult *res, int i, const relay_slot *slot)
{
    char name[CM_SPAN_NAME_MAX], part[12], off[24];
    const cm_span_tag tags[] = {
        {"kafka.topic", PQgetvalue(res, i, 1)},
        {"order.id", PQgetvalue(res, i, 2)},
        {"kafka.partition", part},
        {"kafka.offset", off},
    };

    snprintf(name, sizeof(name), "publish %s", PQgetvalue(res, i, 1));
    snprintf(part, sizeof(part), "%d", (int)slot->partition);
    snprintf(off, sizeof(off), "%lld", (long long)slot->offset);
    cm_trace_end(r->tracer, &slot->span, CM_SPAN_PRODUCER, name, "kafka", tags,
                 sizeof(tags) / sizeof(tags[0]), slot->end_us);
}

/* Waits up to ms for stop, or for fd (when >= 0) to become readable. */
static void wait_fd(cm_relay *r, int fd, long ms)
{
    struct pollfd pfd[2] = {{.fd = r->wake_fd, .events = POLLIN}, {.fd = fd, .events = POLLIN}};

    if (!atomic_load(&r->stop))
        (void)poll(pfd, fd >= 0 ? 2 : 1, (int)ms);
}

static void sleep_ms(cm_relay *r, long ms)
{
    wait_fd(r, -1, ms);
}

/* Empties the pipe librdkafka writes to and serves the producer's events
 * (statistics, errors; delivery reports are served by the pass). */
static void serve_producer(cm_relay *r)
{
    char buf[64];

    if (r->events_fd[0] >= 0)
        while (read(r->events_fd[0], buf, sizeof(buf)) > 0)
            ;
    if (r->producer)
        rd_kafka_poll(r->producer, 0);
}

static int relay_connect(cm_relay *r)
{
    static const char lock[] = "SELECT pg_try_advisory_lock(" RELAY_LOCK_KEY ")";
    char err[256];
    PGresult *res;
    int rc;

    if (!r->conn) {
        rc = cm_db_connect(r->db_url, &r->conn, err, sizeof(err));
        if (rc < 0) {
            log_warning("outbox relay cannot reach database error=\"%s\"", err);
            return rc;
        }
        r->leader = false;
        /* A relay statement behind a lock held elsewhere fails after the
         * timeout (the pass is retried on a new session) instead of
         * holding the relay, and its stop, without end. */
        rc = cm_db_default_statement_timeout(r->conn, CM_DB_STATEMENT_TIMEOUT);
        if (rc < 0) {
            log_warning("outbox relay cannot reach database error=\"%s\"", cm_db_error(r->conn));
            return rc;
        }
    }
    if (!r->leader) {
        rc = cm_db_query(r->conn, &res, lock, 0, NULL);
        if (rc < 0)
            return rc;
        r->leader = strcmp(PQgetvalue(res, 0, 0), "t") == 0;
        PQclear(res);
        /* Only the active relay listens: libpq keeps every notification it
         * reads until PQnotifies() takes it, so a standby that listened
         * would hold one per commit on the database, for as long as it
         * stands by (and hold back the server's notification queue). */
        if (r->leader && (rc = cm_db_exec(r->conn, "LISTEN outbox")) < 0) {
            r->leader = false;
            return rc;
        }
        if (r->leader)
            log_info("outbox relay is active");
    }
    return 0;
}

/* A producer's first message to a topic waits for that topic's metadata
 * (about a second with librdkafka 2.0.2); asking for it up front keeps that
 * wait out of the first order's latency. */
static void warm_metadata(cm_relay *r, rd_kafka_t *rk)
{
    static const char *const topics[] = {EV_TOPIC_ORDERS_CREATED, EV_TOPIC_PAYMENTS_COMPLETED,
                                         EV_TOPIC_INVENTORY_RESERVED};
    /* Short waits, and none once stopping: brokers that do not answer must
     * not hold up a stop (the first publication waits for them anyway). */
    for (size_t i = 0; i < sizeof(topics) / sizeof(topics[0]) && !atomic_load(&r->stop); i++) {
        rd_kafka_topic_t *t = rd_kafka_topic_new(rk, topics[i], NULL);
        const struct rd_kafka_metadata *md = NULL;
        if (t && rd_kafka_metadata(rk, 0, t, &md, 1000) == RD_KAFKA_RESP_ERR_NO_ERROR)
            rd_kafka_metadata_destroy(md);
        if (t)
            rd_kafka_topic_destroy(t);
    }
}

static int relay_producer(cm_relay *r)
{
    rd_kafka_conf_t *conf;
    char err[512];
    int rc;

    if (r->producer) {
        char fatal[256];
        rd_kafka_resp_err_t fe = rd_kafka_fatal_error(r->producer, fatal, sizeof(fatal));
        if (!fe)
            return 0;
        log_error("recreating producer after fatal error code=%s reason=\"%s\"",
                  rd_kafka_err2name(fe), fatal);
        rd_kafka_destroy(r->producer);
        r->producer = NULL;
    }
    rc = cm_kafka_conf(CM_KAFKA_PRODUCER, r->client_id, NULL, r->health, &conf, err, sizeof(err));
    if (rc < 0)
        return log_error_errno(rc, "could not configure producer: %s", err);
    rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rc = cm_kafka_new(CM_KAFKA_PRODUCER, conf, &r->producer, err, sizeof(err));
    if (rc < 0)
        return log_error_errno(rc, "could not create producer: %s", err);
    if (r->events_fd[1] >= 0) {
        /* The producer's main queue wakes the relay's waits, which then
         * need no time slices to serve its statistics and errors. */
        rd_kafka_queue_t *q = rd_kafka_queue_get_main(r->producer);
        rd_kafka_queue_io_event_enable(q, r->events_fd[1], "1", 1);
        rd_kafka_queue_destroy(q);
    }
    warm_metadata(r, r->producer);
    return 0;
}

/* The row's headers for Kafka, less the internal parent span id; with
 * tracing on, a sampled row's publish span is begun in slot. */
static rd_kafka_headers_t *headers_from_json(cm_relay *r, const char *text, relay_slot *slot)
{
    json_t *obj = json_loads(text, 0, NULL);
    rd_kafka_headers_t *h = rd_kafka_headers_new(8);
    const char *name, *parent = NULL, *tp = NULL;
    json_t *v;

    json_object_foreach(obj, name, v)
    {
        if (!json_is_string(v))
            continue;
        if (strcmp(name, HDR_PARENT_SPAN) == 0) {
            parent = json_string_value(v);
            continue;
        }
        if (strcmp(name, EV_HDR_TRACEPARENT) == 0)
            tp = json_string_value(v);
        rd_kafka_header_add(h, name, -1, json_string_value(v), (ssize_t)json_string_length(v));
    }
    slot->traced = false;
    if (cm_trace_on(r->tracer) && parent && strlen(parent) == 16 &&
        cm_traceparent_parse(tp, slot->span.trace_id, slot->span.span_id, &slot->span.sampled) &&
        slot->span.sampled) {
        memcpy(slot->span.parent_id, parent, 17);
        slot->span.start_us = cm_trace_now_us();
        slot->traced = true;
    }
    json_decref(obj);
    return h;
}

static int produce_row(cm_relay *r, PGresult *res, int i, relay_slot *slot)
{
    const char *topic = PQgetvalue(res, i, 1), *key = PQgetvalue(res, i, 2);
    const char *value = PQgetvalue(res, i, 3);
    rd_kafka_headers_t *h = headers_from_json(r, PQgetvalue(res, i, 4), slot);
    rd_kafka_resp_err_t err;

    for (;;) {
        err = rd_kafka_producev(r->producer, RD_KAFKA_V_TOPIC(topic),
                                RD_KAFKA_V_KEY(key, strlen(key)),
                                RD_KAFKA_V_VALUE((void *)value, (size_t)PQgetlength(res, i, 3)),
                                RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                                RD_KAFKA_V_OPAQUE(slot), RD_KAFKA_V_END);
        if (err != RD_KAFKA_RESP_ERR__QUEUE_FULL || atomic_load(&r->stop))
            break;
        rd_kafka_poll(r->producer, 50);
    }
    if (err) {
        rd_kafka_headers_destroy(h);
        slot->state = -1;
        slot->err = err;
        return -EIO;
    }
    return 0;
}

/* Counts the rows the brokers acknowledged and keeps their ids for the next
 * pass to delete; logs the first that was not delivered. Returns 0 or
 * -ENOMEM. */
static int note_delivered(cm_relay *r, PGresult *res, relay_slot *slots, int n, int *ret_failed)
{
    size_t cap = (size_t)n * 21 + 3, len = 0;
    char *ids = malloc(cap);
    int failed = 0;

    if (!ids)
        return -ENOMEM;
    ids[len++] = '{';
    for (int i = 0; i < n; i++) {
        if (slots[i].state == 1) {
            char labels[160];
            snprintf(labels, sizeof(labels), "topic=\"%s\"", PQgetvalue(res, i, 1));
            cm_metrics_add(r->health->metrics, "orders_records_produced_total", labels, 1);
            if (slots[i].traced)
                end_publish(r, res, i, &slots[i]);
        }
        if (slots[i].state != 1) {
            if (cm_kafka_is_access_error(slots[i].err, NULL))
                cm_kafka_access_failed(r->health, r->producer, slots[i].err,
                                       rd_kafka_err2str(slots[i].err));
            if (failed++ == 0)
                log_warning("outbox row not delivered id=%s topic=%s key=%s error=\"%s\"",
                            PQgetvalue(res, i, 0), PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
                            rd_kafka_err2str(slots[i].err));
            continue;
        }
        len += (size_t)snprintf(ids + len, cap - len, "%s%s", len > 1 ? "," : "",
                                PQgetvalue(res, i, 0));
    }
    ids[len++] = '}';
    ids[len] = '\0';
    *ret_failed = failed;
    free(r->delivered);
    r->delivered = NULL;
    if (failed == n)
        free(ids);
    else
        r->delivered = ids;
    return 0;
}

/* Deletes the delivered rows on their own (at stop). Returns 0 (also when
 * there are none), or a code when they stay (no session, or it failed). */
static int delete_delivered(cm_relay *r)
{
    static const char sql[] = "DELETE FROM outbox WHERE id = ANY($1::bigint[])";
    const char *p[1] = {r->delivered};
    int rc;

    if (!r->delivered)
        return 0;
    if (!r->conn)
        return -ECONNRESET;
    rc = cm_db_query(r->conn, NULL, sql, 1, p);
    if (rc == 0) {
        free(r->delivered);
        r->delivered = NULL;
    }
    return rc;
}

/* Publishes one batch; returns the number of rows read (>= 0) or a code. */
static int relay_pass(cm_relay *r)
{
    static const char sql[] = "SELECT id, topic, msg_key, payload, headers::text,"
                              " extract(epoch FROM clock_timestamp() - created_at)"
                              " FROM outbox ORDER BY id LIMIT $1";
    /* The rows the last pass delivered are deleted by the statement that
     * reads the next ones; its snapshot still sees them, hence the filter. */
    static const char delete_and_read[] =
        "WITH done AS (DELETE FROM outbox WHERE id = ANY($2::bigint[]))"
        " SELECT id, topic, msg_key, payload, headers::text,"
        " extract(epoch FROM clock_timestamp() - created_at)"
        " FROM outbox WHERE id <> ALL($2::bigint[]) ORDER BY id LIMIT $1";
    char lim[16];
    const char *p[2] = {lim, r->delivered};
    PGresult *res;
    relay_slot *slots;
    int n, rc, pending, failed = 0;

    snprintf(lim, sizeof(lim), "%d", r->batch);
    rc = r->delivered ? cm_db_query(r->conn, &res, delete_and_read, 2, p)
                      : cm_db_query(r->conn, &res, sql, 1, p);
    if (rc < 0)
        return rc;
    free(r->delivered);
    r->delivered = NULL;
    n = PQntuples(res);
    atomic_store(&r->health->outbox_backlog, n);
    cm_metrics_set(r->health->metrics, "orders_outbox_backlog", "", n);
    cm_metrics_set(r->health->metrics, "orders_outbox_oldest_age_seconds", "",
                   n > 0 ? strtod(PQgetvalue(res, 0, 5), NULL) : 0);
    if (n <= 0) {
        r->left = 0; /* the rows that had failed are gone */
        PQclear(res);
        return 0;
    }
    slots = calloc((size_t)n, sizeof(*slots));
    if (!slots) {
        PQclear(res);
        return -ENOMEM;
    }
    for (int i = 0; i < n; i++)
        produce_row(r, res, i, &slots[i]);
    if (r->fatal_after > 0 && r->acked + n >= r->fatal_after) {
        /* While this batch is in flight: its rows must be sent again. */
        r->fatal_after = 0;
        log_warning("fault injection: raising a fatal producer error with %d rows in flight", n);
        rd_kafka_test_fatal_error(r->producer, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                  "injected by CM_FAULT_PRODUCER_FATAL_AFTER");
    }
    /* Every delivery report arrives within message.timeout.ms. When the
     * daemon is stopping, rows still unacknowledged after a grace period are
     * purged (reported as failed, so they stay in the outbox for the next
     * start) to keep the drain inside systemd's stop timeout. */
    for (long long stop_seen = 0, purged = 0;;) {
        rd_kafka_poll(r->producer, 20);
        pending = 0;
        for (int i = 0; i < n; i++)
            pending += slots[i].state == 0;
        if (pending == 0)
            break;
        /* The grace counts from the stop, however long the wait had lasted
         * before it (brokers that stopped answering). */
        if (!stop_seen && atomic_load(&r->stop))
            stop_seen = mono_ms();
        if (stop_seen && !purged && mono_ms() - stop_seen >= RELAY_STOP_GRACE_MS) {
            rd_kafka_purge(r->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            purged = 1;
        }
    }
    rc = note_delivered(r, res, slots, n, &failed);
    r->acked += n - failed;
    r->left = failed;
    log_debug("outbox relay published count=%d failed=%d", n - failed, failed);
    if (rc == 0) {
        atomic_fetch_add(&r->health->produced, n - failed);
        if (n - failed > 0) {
            atomic_store(&r->health->kafka_ok, true);
            cm_kafka_access_ok(r->health, r->producer);
        }
    }
    free(slots);
    PQclear(res);
    if (rc < 0)
        return rc;
    if (failed > 0 && !atomic_load(&r->stop)) {
        log_warning("outbox relay will resend undelivered rows count=%d", failed);
        sleep_ms(r, 1000);
    }
    return n;
}

/* Drains notifications already read by libpq; returns how many there were. */
static int drain_notifies(PGconn *conn)
{
    PGnotify *n;
    int count = 0;

    PQconsumeInput(conn);
    while ((n = PQnotifies(conn)) != NULL) {
        PQfreemem(n);
        count++;
    }
    return count;
}

/* Waits for a notification (or anything else on the session's socket: its
 * end), stop, or timeout_ms; the producer's events are served meanwhile. */
static void wait_notify(cm_relay *r, int timeout_ms)
{
    struct pollfd pfd[3] = {{.fd = PQsocket(r->conn), .events = POLLIN},
                            {.fd = r->wake_fd, .events = POLLIN},
                            {.fd = r->events_fd[0], .events = POLLIN}};
    long long end = mono_ms() + timeout_ms;

    /* A NOTIFY may have arrived with the last query's results: then libpq
     * holds it already and the socket stays quiet. */
    if (drain_notifies(r->conn) > 0)
        return;
    for (long long left = timeout_ms; left > 0 && !atomic_load(&r->stop); left = end - mono_ms()) {
        int n = poll(pfd, r->events_fd[0] >= 0 ? 3 : 2, (int)left);
        if (n > 0 && (pfd[2].revents & POLLIN))
            serve_producer(r);
        if (n > 0 && (pfd[0].revents || pfd[1].revents))
            break;
    }
    serve_producer(r);
    drain_notifies(r->conn);
}

static void *relay_main(void *arg)
{
    cm_relay *r = arg;
    long backoff = 100;

    cm_db_thread_path(CM_DB_RELAY);
    while (!atomic_load(&r->stop)) {
        int rc = relay_connect(r);
        if (rc == 0)
            rc = relay_producer(r);
        if (rc == 0 && !r->leader) {
            atomic_store(&r->health->relay_db_ok, true);
            /* Standby: another instance publishes; try for the lock again
             * in 2 s (serving the producer's events meanwhile). */
            wait_fd(r, r->events_fd[0], 2000);
            serve_producer(r);
            continue;
        }
        if (rc == 0) {
            rc = relay_pass(r);
            const char *why = rc < 0 && r->conn ? cm_db_error(r->conn) : "";
            if (*why && strcmp(why, r->pass_error) != 0) {
                log_warning("outbox relay pass failed, retrying on a new session error=\"%s\"",
                            why);
                snprintf(r->pass_error, sizeof(r->pass_error), "%s", why);
            } else if (rc == 0 && r->pass_error[0]) {
                log_info("outbox relay passes again");
                r->pass_error[0] = '\0';
            }
        }
        if (rc < 0) {
            atomic_store(&r->health->relay_db_ok, false);
            PQfinish(r->conn);
            r->conn = NULL;
            sleep_ms(r, backoff);
            backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
            continue;
        }
        backoff = 100;
        atomic_store(&r->health->relay_db_ok, true);
        /* Delivered rows wait a little for the next rows' notification to
         * be deleted with their read; the wait is off the orders' path (the
         * events are on the brokers already). */
        if (rc < r->batch)
            wait_notify(r, r->delivered  ? RELAY_DELETE_WAIT_MS
                           : r->left > 0 ? RELAY_RETRY_MS
                                         : RELAY_IDLE_PASS_MS);
    }
    if (delete_delivered(r) < 0)
        log_warning("outbox relay could not delete delivered rows at stop (they are published "
                    "again after the next start) error=\"%s\"",
                    r->conn ? cm_db_error(r->conn) : "no session");
    free(r->delivered);
    /* Every row sent was waited for (or purged) by its pass: nothing is
     * queued, the bounds are a guard. */
    if (r->producer) {
        if (rd_kafka_flush(r->producer, 1000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
            rd_kafka_purge(r->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
            rd_kafka_poll(r->producer, 100);
        }
        rd_kafka_destroy(r->producer);
    }
    if (r->left > 0)
        log_warning("outbox relay stopped with rows unpublished count=%d (they stay in the "
                    "outbox and are published after the next start)",
                    r->left);
    PQfinish(r->conn);
    return NULL;
}

static void close_fds(cm_relay *r)
{
    close(r->wake_fd);
    if (r->events_fd[0] >= 0) {
        close(r->events_fd[0]);
        close(r->events_fd[1]);
    }
}

int cm_relay_start(const char *db_url, const char *client_id, int batch, cm_health *health,
                   cm_tracer *tracer, cm_relay **ret)
{
    cm_relay *r = calloc(1, sizeof(*r));
    int rc;

    if (!r)
        return -ENOMEM;
    r->db_url = db_url;
    r->client_id = client_id;
    r->batch = batch;
    r->health = health;
    r->tracer = tracer;
    const char *fault = getenv("CM_FAULT_PRODUCER_FATAL_AFTER");
    r->fatal_after = fault ? strtoll(fault, NULL, 10) : 0;
    r->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (r->wake_fd < 0) {
        rc = -errno;
        free(r);
        return rc;
    }
    if (pipe2(r->events_fd, O_CLOEXEC | O_NONBLOCK) < 0)
        r->events_fd[0] = r->events_fd[1] = -1; /* then the waits serve it on their ends */
    rc = pthread_create(&r->thread, NULL, relay_main, r);
    if (rc == 0)
        pthread_setname_np(r->thread, "outbox-relay");
    if (rc != 0) {
        close_fds(r);
        free(r);
        return -rc;
    }
    *ret = r;
    return 0;
}

void cm_relay_stop(cm_relay *relay)
{
    uint64_t one = 1;

    if (!relay)
        return;
    atomic_store(&relay->stop, true);
    if (write(relay->wake_fd, &one, sizeof(one)) < 0)
        log_warning("could not wake the outbox relay error=\"%s\"", strerror(errno));
    pthread_join(relay->thread, NULL);
    close_fds(relay);
    free(relay);
}
