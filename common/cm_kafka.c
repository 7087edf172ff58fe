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
#include <strings.h>

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
 * configuration, a broker's error text): known secrets are redacted. A
 * broker connection failure ("FAIL") reaches on_error too, which logs it (an
 * access failure once): librdkafka's own line about it, repeated at every
 * reconnect, goes to the debug level. */
static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf)
{
    char safe[1024];

    if (strcmp(fac, "FAIL") == 0)
        level = LOG_DEBUG;
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
    if (cm_kafka_is_access_error((rd_kafka_resp_err_t)err, safe)) {
        cm_kafka_access_failed(h, rk, (rd_kafka_resp_err_t)err, safe);
        return;
    }
    if (err == RD_KAFKA_RESP_ERR__FATAL) {
        /* e.g. the idempotent producer's InitProducerId refused
         * (CLUSTER_AUTHORIZATION_FAILED): the relay recreates the producer,
         * the cause counts as an access failure meanwhile. */
        char why[512], why_safe[512];
        rd_kafka_resp_err_t fe = rd_kafka_fatal_error(rk, why, sizeof(why));

        cm_config_redact(why, why_safe, sizeof(why_safe));
        if (cm_kafka_is_access_error(fe, why_safe))
            cm_kafka_access_failed(h, rk, fe, why_safe);
    }
    cm_log(err == RD_KAFKA_RESP_ERR__FATAL ? LOG_ERR : LOG_WARNING,
           "kafka error client=%s code=%s reason=\"%s\"", rd_kafka_name(rk),
           rd_kafka_err2name((rd_kafka_resp_err_t)err), safe);
}

bool cm_kafka_is_access_error(rd_kafka_resp_err_t err, const char *reason)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR__AUTHENTICATION:
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR_SASL_AUTHENTICATION_FAILED:
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return true;
    case RD_KAFKA_RESP_ERR__TRANSPORT:
        /* With TLS 1.3 the broker rejects a client certificate after the
         * client's side of the handshake is done: the alert arrives as a
         * receive failure ("sslv3 alert bad certificate", "certificate
         * required", "unknown ca"). */
        return reason && strstr(reason, "SSL") && strstr(reason, "alert");
    default:
        return false;
    }
}

/* The principal rk presents, for the log line: "user NAME" (SASL) or
 * "certificate FILE" (mTLS), or "no credentials". */
static void principal_of(const rd_kafka_t *rk, char *out, size_t outlen)
{
    const rd_kafka_conf_t *conf = rd_kafka_conf((rd_kafka_t *)rk);
    char proto[32] = "", v[256] = "";
    size_t n = sizeof(proto);

    rd_kafka_conf_get(conf, "security.protocol", proto, &n);
    n = sizeof(v);
    if (strncasecmp(proto, "sasl", 4) == 0 &&
        rd_kafka_conf_get(conf, "sasl.username", v, &n) == RD_KAFKA_CONF_OK && *v) {
        snprintf(out, outlen, "user %s (%s)", v, proto);
        return;
    }
    n = sizeof(v);
    if (strcasecmp(proto, "ssl") == 0 &&
        rd_kafka_conf_get(conf, "ssl.certificate.location", v, &n) == RD_KAFKA_CONF_OK && *v) {
        snprintf(out, outlen, "certificate %s (%s)", v, proto);
        return;
    }
    snprintf(out, outlen, "no credentials (%s)", *proto ? proto : "plaintext");
}

static const char *access_cause(rd_kafka_resp_err_t err)
{
    switch (err) {
    case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
        return "Kafka denied access to a topic";
    case RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED:
        return "Kafka denied access to the consumer group";
    case RD_KAFKA_RESP_ERR_CLUSTER_AUTHORIZATION_FAILED:
    case RD_KAFKA_RESP_ERR_TRANSACTIONAL_ID_AUTHORIZATION_FAILED:
        return "Kafka denied a cluster operation";
    case RD_KAFKA_RESP_ERR__SSL:
    case RD_KAFKA_RESP_ERR__TRANSPORT:
        return "Kafka TLS handshake failed";
    default:
        return "Kafka authentication failed";
    }
}

#define ACCESS_RELOG_S 600
#define RECOVERY_LOGGED (1 << 30) /* in kafka_denied_seen */

/* One bit per cause of access_cause, for "logged in this episode". */
static int cause_bit(rd_kafka_resp_err_t err)
{
    const char *c = access_cause(err);
    static const char *const causes[] = {
        "Kafka authentication failed", "Kafka TLS handshake failed",
        "Kafka denied access to a topic", "Kafka denied access to the consumer group",
        "Kafka denied a cluster operation"};

    for (size_t i = 0; i < sizeof(causes) / sizeof(causes[0]); i++)
        if (strcmp(c, causes[i]) == 0)
            return 1 << i;
    return 1;
}

static int role_bit(rd_kafka_type_t type)
{
    return type == RD_KAFKA_PRODUCER ? 1 : 2;
}

void cm_kafka_access_failed(cm_health *h, const rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            const char *reason)
{
    long long now, last;
    int bit = cause_bit(err);
    char who[320];
    bool loud = true;

    principal_of(rk, who, sizeof(who));
    if (h) {
        now = cm_health_now_s();
        /* A failure after a quiet spell (the last one lapsed) starts a new
         * episode: its causes are logged again. */
        if (now - atomic_exchange(&h->kafka_denied_at, now) > CM_KAFKA_DENIED_HOLD_S)
            atomic_store(&h->kafka_denied_seen, 0);
        atomic_store(&h->kafka_denied, (int)err);
        atomic_fetch_or(&h->kafka_denied_roles, role_bit(rd_kafka_type(rk)));
        /* Loud the first time a cause shows in this episode (the first of the
         * daemon's clients to fail), then at most every ACCESS_RELOG_S. */
        loud = (atomic_fetch_or(&h->kafka_denied_seen, bit) & bit) == 0;
        atomic_fetch_and(&h->kafka_denied_seen, ~RECOVERY_LOGGED);
        last = atomic_load(&h->kafka_denied_logged);
        if (loud || now - last >= ACCESS_RELOG_S)
            loud = atomic_compare_exchange_strong(&h->kafka_denied_logged, &last, now) || loud;
    }
    cm_log(loud ? LOG_ERR : LOG_DEBUG, "%s for %s client=%s code=%s reason=\"%s\"%s",
           access_cause(err), who, rd_kafka_name(rk), rd_kafka_err2name(err), reason,
           loud && h ? " (not ready while this lasts; repeated at most every 10 min)" : "");
}

void cm_kafka_access_ok(cm_health *h, const rd_kafka_t *rk)
{
    int bit = role_bit(rd_kafka_type(rk)), prev;

    /* A consumer that reads proves nothing about a producer that may not
     * write, and the other way round: each type clears its own failures. */
    if (!h || (atomic_load(&h->kafka_denied_roles) & bit) == 0)
        return;
    prev = atomic_fetch_and(&h->kafka_denied_roles, ~bit);
    /* The episode (what was logged) ends only when failures stop for
     * CM_KAFKA_DENIED_HOLD_S: a group that may not commit while its fetches
     * work fails and succeeds in turn, and must not log every turn. */
    if ((prev & bit) && (prev & ~bit) == 0 &&
        (atomic_fetch_or(&h->kafka_denied_seen, RECOVERY_LOGGED) & RECOVERY_LOGGED) == 0)
        log_info("kafka access works again (was code=%s)",
                 rd_kafka_err2name((rd_kafka_resp_err_t)atomic_load(&h->kafka_denied)));
}

/* Requests sent so far by one client, per request type, summed over the
 * brokers ("req" of each broker in the statistics: cumulative since the
 * client was made), become orders_kafka_requests_total{client,request}. A
 * client made again (after a fatal error) starts from zero, which Prometheus
 * reads as a counter reset. */
static void stats_requests(cm_health *h, json_t *root, const char *client)
{
    static const char *const kinds[] = {
        "Produce",      "Fetch",         "ListOffsets",      "Metadata",
        "OffsetCommit", "OffsetFetch",   "FindCoordinator",  "JoinGroup",
        "Heartbeat",    "LeaveGroup",    "SyncGroup",        "InitProducerId",
        "ApiVersion",   "SaslHandshake", "SaslAuthenticate", "ConsumerGroupHeartbeat"};
    json_int_t sum[sizeof(kinds) / sizeof(kinds[0])] = {0};
    json_t *brokers = json_object_get(root, "brokers"), *b;
    const char *bname;

    json_object_foreach(brokers, bname, b)
    {
        json_t *req = json_object_get(b, "req");
        for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++)
            sum[i] += json_integer_value(json_object_get(req, kinds[i]));
    }
    for (size_t i = 0; i < sizeof(kinds) / sizeof(kinds[0]); i++) {
        char labels[96];
        if (sum[i] == 0)
            continue;
        snprintf(labels, sizeof(labels), "client=\"%s\",request=\"%s\"", client, kinds[i]);
        cm_metrics_set(h->metrics, "orders_kafka_requests_total", labels, (double)sum[i]);
    }
}

/* Consumer statistics: the lag of every assigned partition becomes
 * orders_consumer_lag{topic,partition}. */
static void stats_lag(cm_health *h, json_t *root)
{
    json_t *topics = json_object_get(root, "topics"), *t, *p;
    const char *tname, *pid;

    if (!topics)
        return;
    cm_metrics_clear(h->metrics, "orders_consumer_lag");
    json_object_foreach(topics, tname, t)
    {
        json_object_foreach(json_object_get(t, "partitions"), pid, p)
        {
            json_int_t lag = json_integer_value(json_object_get(p, "consumer_lag"));
            char labels[192];
            if (strcmp(pid, "-1") == 0 || !json_is_true(json_object_get(p, "desired")) || lag < 0)
                continue;
            snprintf(labels, sizeof(labels), "topic=\"%s\",partition=\"%s\"", tname, pid);
            cm_metrics_set(h->metrics, "orders_consumer_lag", labels, (double)lag);
        }
    }
}

static int on_stats(cm_health *h, char *json, size_t len, cm_kafka_role role)
{
    static const char *const clients[] = {
        [CM_KAFKA_PRODUCER] = "relay",
        [CM_KAFKA_CONSUMER] = "consumer",
        [CM_KAFKA_DLT_PRODUCER] = "dlt",
    };
    json_t *root;

    if (!h || !h->metrics)
        return 0;
    root = json_loadb(json, len, 0, NULL);
    if (root) {
        if (role == CM_KAFKA_CONSUMER)
            stats_lag(h, root);
        stats_requests(h, root, clients[role]);
    }
    json_decref(root);
    return 0; /* librdkafka frees json */
}

static int on_consumer_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    return on_stats(opaque, json, len, CM_KAFKA_CONSUMER);
}

static int on_relay_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    return on_stats(opaque, json, len, CM_KAFKA_PRODUCER);
}

static int on_dlt_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
    (void)rk;
    return on_stats(opaque, json, len, CM_KAFKA_DLT_PRODUCER);
}

/* The consumer's rebalances: what librdkafka does without a callback
 * (assign what is given, give up what is taken, for the eager and the
 * cooperative protocols alike), and the first assignment marks the group
 * joined for readiness. Until then records of a fresh group would only wait
 * (on a fresh broker the offsets topic is made at the first join: seconds). */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque)
{
    cm_health *h = opaque;
    bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
    rd_kafka_error_t *error = NULL;
    rd_kafka_resp_err_t r = RD_KAFKA_RESP_ERR_NO_ERROR;
    bool assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;

    if (cooperative)
        error = assign ? rd_kafka_incremental_assign(rk, parts)
                       : rd_kafka_incremental_unassign(rk, parts);
    else
        r = rd_kafka_assign(rk, assign ? parts : NULL);
    if (error || r) {
        log_error("could not %s partitions after a rebalance: %s", assign ? "take" : "give up",
                  error ? rd_kafka_error_string(error) : rd_kafka_err2str(r));
        rd_kafka_error_destroy(error);
        return;
    }
    if (assign && h && !atomic_exchange(&h->group_joined, true))
        log_info("joined consumer group partitions=%d", parts ? parts->cnt : 0);
}

int cm_kafka_conf(cm_kafka_role role, const char *client_id, const char *group, cm_health *health,
                  rd_kafka_conf_t **ret, char *err, size_t errlen)
{
    static const char *const producer_defaults[][2] = {
        {"enable.idempotence", "true"},
        {"acks", "all"},
        /* 0: a row is sent as soon as the broker thread sees it. The relay
         * batches by itself (it reads many rows while a produce is in
         * flight), and a linger only added a second wake-up of the broker
         * thread and ~5 ms to POST->settled at 200 orders/s (measured with
         * orders-bench; README "linger.ms=0"). */
        {"linger.ms", "0"},
        {"message.timeout.ms", "30000"},
        {"compression.type", "lz4"},
        /* Java's partitioner: a Spring service producing the same keys puts
         * them on the same partitions as we do. */
        {"partitioner", "murmur2_random"},
        {"statistics.interval.ms", "5000"},
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
    if (role != CM_KAFKA_CONSUMER) {
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
    if (role == CM_KAFKA_CONSUMER) {
        rd_kafka_conf_set_stats_cb(conf, on_consumer_stats);
        rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
    } else {
        rd_kafka_conf_set_stats_cb(conf, role == CM_KAFKA_PRODUCER ? on_relay_stats : on_dlt_stats);
    }
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
    rd_kafka_t *rk = rd_kafka_new(role != CM_KAFKA_CONSUMER ? RD_KAFKA_PRODUCER : RD_KAFKA_CONSUMER,
                                  conf, err, errlen);
    if (!rk) {
        rd_kafka_conf_destroy(conf);
        return -EINVAL;
    }
    *ret = rk;
    return 0;
}
