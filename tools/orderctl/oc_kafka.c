/*
 * oc_kafka.c - see oc_kafka.h.
 */
#include "oc_kafka.h"

#include "cm_config.h"
#include "cm_kafka.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

/* The client's opaque: read by the callbacks, which run on our thread
 * (error and delivery callbacks are served by our polls; the log callback
 * only reads the flag, which is never written after creation). */
typedef struct {
    bool verbose;
    bool brokers_down;
    const char *bootstrap; /* the caller's oc_opts string, for messages */
} client_state;

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    const client_state *st = rd_kafka_opaque(rk);

    char safe[1024];

    if (st && st->verbose) {
        cm_config_redact(buf, safe, sizeof(safe)); /* known secrets never printed */
        fprintf(stderr, "orderctl: librdkafka %d %s: %s\n", level, fac, safe);
    }
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque)
{
    client_state *st = opaque;
    char safe[1024];

    (void)rk;
    if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN)
        st->brokers_down = true;
    cm_config_redact(reason, safe, sizeof(safe));
    if (st->verbose || err == RD_KAFKA_RESP_ERR__FATAL)
        oc_err("kafka error %s: %s", rd_kafka_err2name((rd_kafka_resp_err_t)err), safe);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque)
{
    oc_delivery *d = m->_private;

    (void)rk;
    (void)opaque;
    if (!d)
        return;
    d->err = m->err;
    d->state = m->err ? -1 : 1;
    d->partition = m->partition;
    d->offset = m->offset;
}

static int set_prop(rd_kafka_conf_t *conf, const char *k, const char *v)
{
    char e[256];

    if (rd_kafka_conf_set(conf, k, v, e, sizeof(e)) != RD_KAFKA_CONF_OK) {
        oc_err("could not set kafka property %s=\"%s\": %s", k, v, e);
        return -EINVAL;
    }
    return 0;
}

int oc_kafka_check_env(void)
{
    char err[512];
    int r = cm_kafka_check_env(err, sizeof(err));

    if (r < 0)
        oc_err("configuration error: %s", err);
    return r < 0 ? -EINVAL : 0;
}

/* KAFKA_* variables of the daemons' environment files pass through. Kafka's
 * launcher and dev stack variables (KAFKA_HEAP_OPTS, ...) never reach us
 * (cm_config_kafka_each passes over them); every other name was checked by
 * oc_kafka_check_env before, so an unknown one is refused here only if a
 * command skipped that check. */
static int set_from_env(void *ud, const char *var, const char *prop, const char *value)
{
    rd_kafka_conf_t *conf = ud;
    char e[256];
    rd_kafka_conf_res_t r = rd_kafka_conf_set(conf, prop, value, e, sizeof(e));

    if (r == RD_KAFKA_CONF_UNKNOWN) {
        oc_err("unknown %s: %s is no librdkafka property", var, prop);
        return -EINVAL;
    }
    if (r != RD_KAFKA_CONF_OK) {
        oc_err("invalid %s (librdkafka property %s): %s", var, prop,
               cm_config_secret_name(prop) ? "the value is not accepted (not shown: a secret)" : e);
        return -EINVAL;
    }
    return 0;
}

/* The KAFKA_* pass-through; a KAFKA_<NAME>_FILE that cannot be used is
 * reported here (set_from_env reports its own errors). */
static int kafka_env(rd_kafka_conf_t *conf)
{
    char err[512] = "";
    int r = cm_config_kafka_each(set_from_env, conf, err, sizeof(err));

    if (r != 0 && err[0])
        oc_err("%s", err);
    return r;
}

static void say_ignored(void *ud, const char *var, const char *owner)
{
    (void)ud;
    oc_err("ignoring %s: a %s variable, not a librdkafka property", var, owner);
}

static int set_list(rd_kafka_conf_t *conf, const char *const (*kv)[2], size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (set_prop(conf, kv[i][0], kv[i][1]) < 0)
            return -EINVAL;
    return 0;
}

static int build_conf(const oc_opts *o, oc_kafka_role role, rd_kafka_conf_t *conf)
{
    static const char *const defaults[][2] = {
        {"client.id", "orderctl"},
        {"socket.connection.setup.timeout.ms", "10000"},
    };
    static const char *const producer_defaults[][2] = {
        {"message.timeout.ms", "30000"},
        {"linger.ms", "5"},
    };
    static const char *const consumer[][2] = {
        {"group.id", "orderctl"},
        {"enable.auto.commit", "false"},
        {"enable.auto.offset.store", "false"},
        {"enable.partition.eof", "true"},
        {"auto.offset.reset", "earliest"},
        /* the end of a partition shows only after an empty fetch: keep it short */
        {"fetch.wait.max.ms", "100"},
    };
    static const char *const producer[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
    };

    if (o->verbose)
        cm_config_kafka_each_ignored(say_ignored, NULL);
    if (set_list(conf, defaults, sizeof(defaults) / sizeof(defaults[0])) < 0 ||
        (role != OC_KAFKA_CONSUMER &&
         set_list(conf, producer_defaults,
                  sizeof(producer_defaults) / sizeof(producer_defaults[0])) < 0) ||
        kafka_env(conf) != 0 || set_prop(conf, "bootstrap.servers", o->bootstrap) < 0)
        return -EINVAL;
    if (role == OC_KAFKA_CONSUMER)
        return set_list(conf, consumer, sizeof(consumer) / sizeof(consumer[0]));
    if (role == OC_KAFKA_PRODUCER)
        return set_list(conf, producer, sizeof(producer) / sizeof(producer[0]));
    return 0;
}

int oc_kafka_new(const oc_opts *o, oc_kafka_role role, rd_kafka_t **ret)
{
    rd_kafka_conf_t *conf = rd_kafka_conf_new();
    client_state *st = calloc(1, sizeof(*st));
    rd_kafka_t *rk;
    char e[512];

    if (!st || build_conf(o, role, conf) < 0) {
        rd_kafka_conf_destroy(conf);
        free(st);
        return -EINVAL;
    }
    st->verbose = o->verbose;
    st->bootstrap = o->bootstrap;
    rd_kafka_conf_set_opaque(conf, st);
    rd_kafka_conf_set_log_cb(conf, on_log);
    rd_kafka_conf_set_error_cb(conf, on_error);
    if (role == OC_KAFKA_PRODUCER)
        rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
    rk = rd_kafka_new(role == OC_KAFKA_CONSUMER ? RD_KAFKA_CONSUMER : RD_KAFKA_PRODUCER, conf, e,
                      sizeof(e));
    if (!rk) {
        rd_kafka_conf_destroy(conf); /* rd_kafka_new takes conf only on success */
        free(st);
        oc_err("could not create kafka client: %s", e);
        return -EINVAL;
    }
    if (role == OC_KAFKA_CONSUMER)
        rd_kafka_poll_set_consumer(rk);
    *ret = rk;
    return 0;
}

void oc_kafka_destroy(rd_kafka_t *rk)
{
    client_state *st;

    if (!rk)
        return;
    st = rd_kafka_opaque(rk);
    if (rd_kafka_type(rk) == RD_KAFKA_CONSUMER)
        rd_kafka_consumer_close(rk);
    rd_kafka_destroy(rk);
    free(st);
}

int oc_kafka_metadata(rd_kafka_t *rk, int timeout_ms, const struct rd_kafka_metadata **ret)
{
    const client_state *st = rd_kafka_opaque(rk);
    rd_kafka_resp_err_t err = rd_kafka_metadata(rk, 1, NULL, ret, timeout_ms);

    if (err) {
        oc_err("could not fetch metadata from brokers %s: %s", st->bootstrap,
               rd_kafka_err2str(err));
        return -EIO;
    }
    return 0;
}

const rd_kafka_metadata_topic_t *oc_kafka_md_topic(const struct rd_kafka_metadata *md,
                                                   const char *topic)
{
    for (int i = 0; i < md->topic_cnt; i++)
        if (strcmp(md->topics[i].topic, topic) == 0)
            return md->topics[i].err == RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART ? NULL
                                                                                : &md->topics[i];
    return NULL;
}

int oc_kafka_broker_count(const struct rd_kafka_metadata *md)
{
    return md->broker_cnt;
}

int oc_kafka_watermarks(rd_kafka_t *rk, const char *topic, int32_t partition, int timeout_ms,
                        int64_t *ret_low, int64_t *ret_high)
{
    rd_kafka_resp_err_t err =
        rd_kafka_query_watermark_offsets(rk, topic, partition, ret_low, ret_high, timeout_ms);

    if (err) {
        oc_err("could not query offsets of %s partition %d: %s", topic, (int)partition,
               rd_kafka_err2str(err));
        return -EIO;
    }
    return 0;
}

void oc_kafka_warm(rd_kafka_t *producer, const char *const *topics, size_t n, int timeout_ms)
{
    for (size_t i = 0; i < n; i++) {
        rd_kafka_topic_t *rkt = rd_kafka_topic_new(producer, topics[i], NULL);
        const struct rd_kafka_metadata *md = NULL;

        if (!rkt)
            continue;
        if (rd_kafka_metadata(producer, 0, rkt, &md, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
            rd_kafka_metadata_destroy(md);
        rd_kafka_topic_destroy(rkt);
    }
}

void oc_kafka_drain(rd_kafka_t *producer)
{
    while (rd_kafka_flush(producer, 1000) == RD_KAFKA_RESP_ERR__TIMED_OUT)
        ;
}

/* Reading state: which ranges are finished. */
typedef struct {
    const oc_range *r;
    size_t n;
    bool *done;
    size_t left;
    bool follow;
} read_state;

static void mark_done(read_state *rs, size_t i)
{
    if (!rs->follow && !rs->done[i]) {
        rs->done[i] = true;
        rs->left--;
    }
}

static long find_range(const read_state *rs, const rd_kafka_message_t *m)
{
    const char *t = m->rkt ? rd_kafka_topic_name(m->rkt) : NULL;

    for (size_t i = 0; t && i < rs->n; i++)
        if (rs->r[i].partition == m->partition && strcmp(rs->r[i].topic, t) == 0)
            return (long)i;
    return -1;
}

/* A consumer error: end of a partition, a transient condition to sit out,
 * or a failure of the read. Returns 0 to go on or -EIO (reported). */
static int on_read_error(rd_kafka_t *rk, read_state *rs, const rd_kafka_message_t *m)
{
    const client_state *st = rd_kafka_opaque(rk);
    long i = find_range(rs, m);

    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
        if (i >= 0)
            mark_done(rs, (size_t)i);
        return 0;
    }
    if (m->rkt || m->err == RD_KAFKA_RESP_ERR__FATAL ||
        (!rs->follow && (m->err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN || st->brokers_down))) {
        oc_err("could not read %s partition %d: %s", m->rkt ? rd_kafka_topic_name(m->rkt) : "-",
               (int)m->partition, rd_kafka_message_errstr(m));
        return -EIO;
    }
    if (st->verbose)
        oc_err("kafka: %s (retrying)", rd_kafka_message_errstr(m));
    return 0;
}

static int assign_ranges(rd_kafka_t *rk, read_state *rs)
{
    rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)rs->n);
    rd_kafka_resp_err_t err;

    for (size_t i = 0; i < rs->n; i++) {
        if (!rs->follow && rs->r[i].start >= rs->r[i].end) {
            rs->done[i] = true;
            rs->left--;
            continue;
        }
        rd_kafka_topic_partition_list_add(l, rs->r[i].topic, rs->r[i].partition)->offset =
            rs->r[i].start;
    }
    err = l->cnt > 0 ? rd_kafka_assign(rk, l) : RD_KAFKA_RESP_ERR_NO_ERROR;
    rd_kafka_topic_partition_list_destroy(l);
    if (err) {
        oc_err("could not assign partitions: %s", rd_kafka_err2str(err));
        return -EIO;
    }
    return 0;
}

int oc_kafka_read(rd_kafka_t *consumer, const oc_range *ranges, size_t n, bool follow,
                  oc_read_fn fn, void *ud)
{
    read_state rs = {ranges, n, calloc(n ? n : 1, sizeof(bool)), n, follow};
    int r;

    if (!rs.done)
        return -ENOMEM;
    r = assign_ranges(consumer, &rs);
    while (r == 0 && !oc_stop && (follow || rs.left > 0)) {
        rd_kafka_message_t *m = rd_kafka_consumer_poll(consumer, 100);
        long i;

        if (!m)
            continue;
        i = find_range(&rs, m);
        if (m->err) {
            r = on_read_error(consumer, &rs, m);
        } else if (i >= 0 && (follow || (!rs.done[i] && m->offset < ranges[i].end))) {
            r = fn(ud, m);
            if (m->offset >= ranges[i].end - 1)
                mark_done(&rs, (size_t)i);
        } else if (i >= 0) {
            mark_done(&rs, (size_t)i);
        }
        rd_kafka_message_destroy(m);
    }
    rd_kafka_assign(consumer, NULL);
    free(rs.done);
    return r;
}
