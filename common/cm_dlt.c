/*
 * cm_dlt.c - see cm_dlt.h.
 */
#include "cm_dlt.h"

#include "cm_kafka.h"
#include "cm_log.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cm_dlt_topic(const char *topic, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s.DLT", topic);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

static void put_be(uint8_t *out, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--) {
        out[i] = (uint8_t)(v & 0xff);
        v >>= 8;
    }
}

rd_kafka_headers_t *cm_dlt_headers(const rd_kafka_message_t *m, const char *group,
                                   const char *cause_fqcn, const char *message)
{
    rd_kafka_headers_t *orig = NULL, *h;
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    uint8_t part[4], off[8], tsb[8];
    const char *tsname =
        tstype == RD_KAFKA_TIMESTAMP_LOG_APPEND_TIME ? "LOG_APPEND_TIME" : "CREATE_TIME";

    if (rd_kafka_message_headers(m, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR && orig)
        h = rd_kafka_headers_copy(orig);
    else
        h = rd_kafka_headers_new(10);
    if (!h)
        return NULL;
    put_be(part, (uint64_t)(uint32_t)m->partition, 4);
    put_be(off, (uint64_t)m->offset, 8);
    put_be(tsb, (uint64_t)(ts < 0 ? 0 : ts), 8);
    rd_kafka_header_add(h, "kafka_dlt-original-topic", -1, rd_kafka_topic_name(m->rkt), -1);
    rd_kafka_header_add(h, "kafka_dlt-original-partition", -1, part, 4);
    rd_kafka_header_add(h, "kafka_dlt-original-offset", -1, off, 8);
    rd_kafka_header_add(h, "kafka_dlt-original-timestamp", -1, tsb, 8);
    rd_kafka_header_add(h, "kafka_dlt-original-timestamp-type", -1, tsname, -1);
    rd_kafka_header_add(h, "kafka_dlt-original-consumer-group", -1, group, -1);
    rd_kafka_header_add(h, "kafka_dlt-exception-fqcn", -1, CM_DLT_FQCN_LISTENER, -1);
    rd_kafka_header_add(h, "kafka_dlt-exception-cause-fqcn", -1, cause_fqcn, -1);
    rd_kafka_header_add(h, "kafka_dlt-exception-message", -1, message, -1);
    return h;
}

struct cm_dlt {
    char client_id[128];
    cm_health *health;
    rd_kafka_t *producer;
    /* Fault injection for the tests (CM_FAULT_DLT_FATAL=N): the first N
     * producers raise a fatal error before their first write. */
    long fatal_left;
    bool fatal_armed;
    /* The write in flight (at most one): set by cm_dlt_send, settled by its
     * delivery report. */
    const rd_kafka_message_t *m;
    char topic[512];
    rd_kafka_headers_t *headers; /* a copy to send again, or NULL */
    bool by_key;                 /* sent to the partitioner's choice */
    int state;                   /* 0 pending, 1 persisted, -1 failed */
    rd_kafka_resp_err_t err;
    char error[1024];
};

static void on_dlt_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    cm_dlt *d = m->_private;
    (void)rk;
    (void)opaque;
    d->err = m->err;
    d->state = m->err ? -1 : 1;
}

static int producer_new(cm_dlt *d, char *err, size_t errlen)
{
    rd_kafka_conf_t *conf;
    int r = cm_kafka_conf(CM_KAFKA_DLT_PRODUCER, d->client_id, NULL, d->health, &conf, err, errlen);

    if (r < 0)
        return r;
    rd_kafka_conf_set_dr_msg_cb(conf, on_dlt_delivery);
    r = cm_kafka_new(CM_KAFKA_DLT_PRODUCER, conf, &d->producer, err, errlen);
    if (r == 0 && d->fatal_left > 0) {
        d->fatal_left--;
        d->fatal_armed = true;
    }
    return r;
}

int cm_dlt_new(const char *client_id, cm_health *health, cm_dlt **ret, char *err, size_t errlen)
{
    cm_dlt *d = calloc(1, sizeof(*d));
    const char *fault = getenv("CM_FAULT_DLT_FATAL");
    int r;

    if (!d) {
        snprintf(err, errlen, "out of memory");
        return -ENOMEM;
    }
    snprintf(d->client_id, sizeof(d->client_id), "%s", client_id);
    d->health = health;
    d->fatal_left = fault ? strtol(fault, NULL, 10) : 0;
    d->state = 1;
    r = producer_new(d, err, errlen);
    if (r < 0) {
        free(d);
        return r;
    }
    *ret = d;
    return 0;
}

/* An idempotent producer that hit a fatal error (its sequence state is lost)
 * refuses every write from then on: only a new one can write again. */
static int renew_if_fatal(cm_dlt *d)
{
    char why[256], err[512];
    rd_kafka_resp_err_t fe = rd_kafka_fatal_error(d->producer, why, sizeof(why));

    if (!fe)
        return 0;
    /* Logged here, like the relay's: an event an operator must see, once. */
    log_error("recreating dead-letter producer after fatal error code=%s reason=\"%s\"",
              rd_kafka_err2name(fe), why);
    rd_kafka_destroy(d->producer);
    d->producer = NULL;
    if (producer_new(d, err, sizeof(err)) < 0) {
        snprintf(d->error, sizeof(d->error), "could not recreate the producer: %s", err);
        return -EIO;
    }
    return 0;
}

static int produce(cm_dlt *d)
{
    const rd_kafka_message_t *m = d->m;
    rd_kafka_headers_t *h = rd_kafka_headers_copy(d->headers);
    rd_kafka_resp_err_t err;

    if (!h)
        return -ENOMEM;
    d->state = 0;
    err =
        rd_kafka_producev(d->producer, RD_KAFKA_V_TOPIC(d->topic),
                          RD_KAFKA_V_PARTITION(d->by_key ? RD_KAFKA_PARTITION_UA : m->partition),
                          RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                          RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(h);
        d->state = -1;
        d->err = err;
    }
    return err ? -EIO : 0;
}

/* A DLT with fewer partitions than its source has no partition of the
 * original's number: the record goes where the partitioner puts its key. */
static bool retry_by_key(cm_dlt *d)
{
    if (d->state >= 0 || d->by_key || d->err != RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION)
        return false;
    d->by_key = true;
    return produce(d) == 0;
}

int cm_dlt_send(cm_dlt *d, const rd_kafka_message_t *m, const char *group, bool poison,
                const char *reason)
{
    int r = cm_dlt_topic(rd_kafka_topic_name(m->rkt), d->topic, sizeof(d->topic));

    if (r < 0)
        return r;
    if (d->state == 0)
        return -EBUSY;
    if (d->headers)
        rd_kafka_headers_destroy(d->headers);
    d->headers = cm_dlt_headers(
        m, group, poison ? CM_DLT_FQCN_DESERIALIZATION : CM_DLT_FQCN_PROCESSING, reason);
    if (!d->headers)
        return -ENOMEM;
    d->m = m;
    d->by_key = false;
    d->error[0] = '\0';
    if (renew_if_fatal(d) < 0)
        return -EIO;
    if (d->fatal_armed) {
        d->fatal_armed = false;
        rd_kafka_test_fatal_error(d->producer, RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                                  "injected by CM_FAULT_DLT_FATAL");
    }
    r = produce(d);
    if (r < 0 && !retry_by_key(d)) {
        snprintf(d->error, sizeof(d->error), "could not produce to %s: %s", d->topic,
                 rd_kafka_err2str(d->err));
        return -EIO;
    }
    return 0;
}

int cm_dlt_poll(cm_dlt *d)
{
    if (d->state == 0)
        rd_kafka_poll(d->producer, 0);
    if (d->state < 0 && retry_by_key(d))
        return 0;
    if (d->state < 0 && !d->error[0]) {
        if (cm_kafka_is_access_error(d->err, NULL))
            cm_kafka_access_failed(d->health, d->producer, d->err, rd_kafka_err2str(d->err));
        snprintf(d->error, sizeof(d->error), "could not publish to %s partition=%d: %s", d->topic,
                 d->by_key ? -1 : (int)d->m->partition, rd_kafka_err2str(d->err));
    }
    return d->state;
}

const char *cm_dlt_error(const cm_dlt *d)
{
    return d->error[0] ? d->error : "no error";
}

void cm_dlt_abort(cm_dlt *d)
{
    if (d->state != 0)
        return;
    rd_kafka_purge(d->producer, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
    /* The purged write's report comes with the next polls. */
    for (int i = 0; i < 20 && d->state == 0; i++)
        rd_kafka_poll(d->producer, 50);
}

void cm_dlt_free(cm_dlt *d)
{
    if (!d)
        return;
    /* Nothing is left in flight (every write is waited for or aborted): the
     * bound only guards against a broken promise. */
    cm_dlt_abort(d);
    rd_kafka_flush(d->producer, 1000);
    rd_kafka_destroy(d->producer);
    if (d->headers)
        rd_kafka_headers_destroy(d->headers);
    free(d);
}
