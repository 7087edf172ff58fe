/*
 * cm_dlt.c - see cm_dlt.h.
 */
#include "cm_dlt.h"

#include "cm_kafka.h"
#include "cm_log.h"

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
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

static void on_dlt_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    int *state = m->_private;
    (void)rk;
    (void)opaque;
    *state = m->err ? -(int)m->err - 1000000 : 1;
}

int cm_dlt_publish(rd_kafka_t *producer, const rd_kafka_message_t *m, const char *group,
                   bool poison, const char *reason)
{
    char topic[512];
    rd_kafka_headers_t *h;
    rd_kafka_resp_err_t err;
    volatile int state = 0;
    int r = cm_dlt_topic(rd_kafka_topic_name(m->rkt), topic, sizeof(topic));

    if (r < 0)
        return r;
    h = cm_dlt_headers(m, group, poison ? CM_DLT_FQCN_DESERIALIZATION : CM_DLT_FQCN_PROCESSING,
                       reason);
    if (!h)
        return -ENOMEM;
    err =
        rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_PARTITION(m->partition),
                          RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
                          RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
                          RD_KAFKA_V_OPAQUE((void *)&state), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(h);
        log_error("could not produce to %s error=\"%s\"", topic, rd_kafka_err2str(err));
        return -EIO;
    }
    while (state == 0)
        rd_kafka_poll(producer, 50);
    if (state != 1) {
        rd_kafka_resp_err_t e = (rd_kafka_resp_err_t)(-(state + 1000000));

        if (cm_kafka_is_access_error(e, NULL))
            cm_kafka_access_failed(rd_kafka_opaque(producer), producer, e, rd_kafka_err2str(e));
        log_error("could not publish to %s partition=%d offset=%lld error=\"%s\"", topic,
                  (int)m->partition, (long long)m->offset,
                  rd_kafka_err2str((rd_kafka_resp_err_t)(-(state + 1000000))));
        return -EIO;
    }
    log_error("publishing to %s partition=%d offset=%lld key=%.*s reason=\"%s\"", topic,
              (int)m->partition, (long long)m->offset, (int)m->key_len,
              m->key ? (const char *)m->key : "", reason);
    return 0;
}

int cm_dlt_producer_new(const char *client_id, cm_health *health, rd_kafka_t **ret, char *err,
                        size_t errlen)
{
    rd_kafka_conf_t *conf;
    int r = cm_kafka_conf(CM_KAFKA_PRODUCER, client_id, NULL, health, &conf, err, errlen);

    if (r < 0)
        return r;
    rd_kafka_conf_set_dr_msg_cb(conf, on_dlt_delivery);
    return cm_kafka_new(CM_KAFKA_PRODUCER, conf, ret, err, errlen);
}
