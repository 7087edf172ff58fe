/*
 * cm_kafka.c - see cm_kafka.h.
 */
#include "cm_kafka.h"

#include "cm_config.h"
#include "cm_log.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <string.h>

struct set_ctx {
    rd_kafka_conf_t *conf;
    char *err;
    size_t errlen;
};

static int set_from_env(void *ud, const char *var, const char *prop, const char *value)
{
    struct set_ctx *c = ud;
    char e[256];

    rd_kafka_conf_res_t r = rd_kafka_conf_set(c->conf, prop, value, e, sizeof(e));

    if (r == RD_KAFKA_CONF_UNKNOWN) {
        snprintf(c->err, c->errlen,
                 "unknown %s: %s is no librdkafka property (only Kafka's launcher and dev "
                 "stack variables such as KAFKA_HEAP_OPTS are ignored)",
                 var, prop);
        return -EINVAL;
    }
    if (r != RD_KAFKA_CONF_OK) {
        char safe[256];
        /* librdkafka's message may quote the value: never a secret's */
        cm_config_redact(e, safe, sizeof(safe));
        snprintf(c->err, c->errlen, "invalid %s (librdkafka property %s): %s", var, prop,
                 cm_config_secret_name(prop) ? "the value is not accepted (not shown: a secret)"
                                             : safe);
        return -EINVAL;
    }
    return 0;
}

/* librdkafka's own lines may carry what it was given (a debug dump of the
 * configuration, a broker's error text): known secrets are redacted. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    char safe[1024];

    cm_config_redact(buf, safe, sizeof(safe));
    cm_log(level > LOG_DEBUG ? LOG_DEBUG : level, "librdkafka client=%s facility=%s msg=\"%s\"",
           rd_kafka_name(rk), fac, safe);
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    cm_health *h = opaque;
    char safe[1024];

    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN && h)
        atomic_store(&h->kafka_ok, false);
    cm_config_redact(reason, safe, sizeof(safe));
    cm_log(err == RD_KAFKA_RESP_ERR__FATAL ? LOG_ERR : LOG_WARNING,
           "kafka error client=%s code=%s reason=\"%s\"", rd_kafka_name(rk),
           rd_kafka_err2name((rd_kafka_resp_err_t)err), safe);
}

/* Consumer statistics: the lag of every assigned partition becomes
 * orders_consumer_lag{topic,partition}. */
static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    cm_health *h = opaque;
    json_t *root = json_loadb(json, len, 0, NULL);
    json_t *topics = json_object_get(root, "topics"), *t, *p;
    const char *tname, *pid;
    (void)rk;

    if (h && topics) {
        cm_metrics_clear(h->metrics, "orders_consumer_lag");
        json_object_foreach(topics, tname, t)
        {
            json_object_foreach(json_object_get(t, "partitions"), pid, p)
            {
                json_int_t lag = json_integer_value(json_object_get(p, "consumer_lag"));
                char labels[192];
                if (strcmp(pid, "-1") == 0 || !json_is_true(json_object_get(p, "desired")) ||
                    lag < 0)
                    continue;
                snprintf(labels, sizeof(labels), "topic=\"%s\",partition=\"%s\"", tname, pid);
                cm_metrics_set(h->metrics, "orders_consumer_lag", labels, (double)lag);
            }
        }
    }
    json_decref(root);
    return 0; /* librdkafka frees json */
}

int cm_kafka_conf(cm_kafka_role role, const char *client_id, const char *group, cm_health *health,
                  rd_kafka_conf_t **ret, char *err, size_t errlen)
{
    static const char *const producer_defaults[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        {"linger.ms", "1"},
        {"message.timeout.ms", "30000"},
        {"compression.type", "lz4"},
        /* Java's partitioner: a Spring service producing the same keys puts
         * them on the same partitions as we do. */
        {"partitioner", "murmur2_random"},
    };
    static const char *const consumer_defaults[][2] = {
        {"enable.auto.offset.store", "false"}, {"enable.auto.commit", "true"},
        {"auto.commit.interval.ms", "1000"},   {"auto.offset.reset", "earliest"},
        {"enable.partition.eof", "false"},     {"session.timeout.ms", "10000"},
        {"statistics.interval.ms", "5000"},
    };
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    struct set_ctx c = {conf, err, errlen};
    char e[256];
    int r;

#define SET(k, v)                                                                                  \
    do {                                                                                           \
        if (rd_kafka_conf_set(conf, (k), (v), e, sizeof(e)) != RD_KAFKA_CONF_OK) {                 \
            snprintf(err, errlen, "could not set kafka property %s: %s", (k), e);                  \
            rd_kafka_conf_destroy(conf);                                                           \
            return -EINVAL;                                                                        \
        }                                                                                          \
    } while (0)

    SET("bootstrap.servers", "127.0.0.1:9092");
    SET("client.id", client_id);
    if (role == CM_KAFKA_PRODUCER) {
        for (size_t i = 0; i < sizeof(producer_defaults) / sizeof(producer_defaults[0]); i++)
            SET(producer_defaults[i][0], producer_defaults[i][1]);
    } else {
        SET("group.id", group);
        for (size_t i = 0; i < sizeof(consumer_defaults) / sizeof(consumer_defaults[0]); i++)
            SET(consumer_defaults[i][0], consumer_defaults[i][1]);
    }
#undef SET
    r = cm_config_kafka_each(set_from_env, &c, err, errlen);
    if (r < 0) {
        rd_kafka_conf_destroy(conf);
        return r;
    }
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (role == CM_KAFKA_CONSUMER)
        rd_kafka_conf_set_stats_cb(conf, on_stats);
    rd_kafka_conf_set_opaque(conf, health);
    *ret = conf;
    return 0;
}

int cm_kafka_check_env(char *err, size_t errlen)
{
    static const cm_kafka_role roles[] = {CM_KAFKA_PRODUCER, CM_KAFKA_CONSUMER};

    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]); i++) {
        rd_kafka_conf_t *conf;
        int r = cm_kafka_conf(roles[i], "config-check", "config-check", NULL, &conf, err, errlen);
        if (r < 0)
            return r;
        rd_kafka_conf_destroy(conf);
    }
    return 0;
}

int cm_kafka_new(cm_kafka_role role, rd_kafka_conf_t *conf, rd_kafka_t **ret, char *err,
                 size_t errlen)
{
    rd_kafka_t *rk = rd_kafka_new(role == CM_KAFKA_PRODUCER ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER,
                                  conf, err, errlen);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }
    *ret = rk;
    return 0;
}
