/*
 * oc_topics.c - see oc_topics.h.
 */
#include "oc_topics.h"

#include "oc_kafka.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int oc_topics_default_rf(const struct rd_kafka_metadata *md)
{
    return md->broker_cnt < 3 ? (md->broker_cnt > 0 ? md->broker_cnt : 1) : 3;
}

int oc_topics_default_min_isr(int rf)
{
    return rf >= 3 ? 2 : 1;
}

/* Options for one admin request: the broker waits up to timeout_ms for the
 * operation, the request itself gets a little longer. */
static rd_kafka_AdminOptions_t *admin_options(rd_kafka_t *rk, rd_kafka_admin_op_t op,
                                              int timeout_ms)
{
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, op);
    char e[256];

    if (!ao)
        return NULL;
    if ((op == RD_KAFKA_ADMIN_OP_CREATETOPICS &&
         rd_kafka_AdminOptions_set_operation_timeout(ao, timeout_ms, e, sizeof(e))) ||
        rd_kafka_AdminOptions_set_request_timeout(ao, timeout_ms + 5000, e, sizeof(e))) {
        oc_err("could not set admin options: %s", e);
        rd_kafka_AdminOptions_destroy(ao);
        return NULL;
    }
    return ao;
}

/* Waits for the result of an admin request on q. Returns the event (caller
 * destroys) or NULL (reported) on timeout or request-level error. */
static rd_kafka_event_t *admin_result(rd_kafka_queue_t *q, const char *what, int timeout_ms)
{
    rd_kafka_event_t *ev = rd_kafka_queue_poll(q, timeout_ms + 10000);

    if (!ev) {
        oc_err("%s: no answer within %d s", what, timeout_ms / 1000 + 10);
        return NULL;
    }
    if (rd_kafka_event_error(ev)) {
        oc_err("%s failed: %s", what, rd_kafka_event_error_string(ev));
        rd_kafka_event_destroy(ev);
        return NULL;
    }
    return ev;
}

static rd_kafka_NewTopic_t *new_topic(const oc_new_topic *t)
{
    char e[256], isr[16];
    rd_kafka_NewTopic_t *nt = rd_kafka_NewTopic_new(t->name, t->partitions, t->rf, e, sizeof(e));

    if (!nt) {
        oc_err("could not describe new topic %s: %s", t->name, e);
        return NULL;
    }
    snprintf(isr, sizeof(isr), "%d", t->min_isr);
    if (rd_kafka_NewTopic_set_config(nt, "min.insync.replicas", isr) ||
        (t->compact && rd_kafka_NewTopic_set_config(nt, "cleanup.policy", "compact"))) {
        rd_kafka_NewTopic_destroy(nt);
        return NULL;
    }
    return nt;
}

/* Counts and reports the per-topic results of a CreateTopics request. */
static int create_results(rd_kafka_event_t *ev, const oc_new_topic *t, size_t n)
{
    size_t cnt = 0;
    const rd_kafka_topic_result_t **res =
        rd_kafka_CreateTopics_result_topics(rd_kafka_event_CreateTopics_result(ev), &cnt);
    int failed = (int)n - (int)cnt;

    for (size_t i = 0; i < cnt; i++) {
        const char *name = rd_kafka_topic_result_name(res[i]);
        rd_kafka_resp_err_t err = rd_kafka_topic_result_error(res[i]);
        const oc_new_topic *want = NULL;

        for (size_t j = 0; j < n; j++)
            if (strcmp(t[j].name, name) == 0)
                want = &t[j];
        if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS) {
            printf("exists: %s (created concurrently)\n", name);
        } else if (err || !want) {
            const char *why = rd_kafka_topic_result_error_string(res[i]);

            oc_err("could not create %s: %s", name, why ? why : rd_kafka_err2str(err));
            failed++;
        } else {
            printf("created: %s partitions %d, replication-factor %d, min.insync.replicas %d%s\n",
                   name, want->partitions, want->rf, want->min_isr,
                   want->compact ? ", cleanup.policy compact" : "");
        }
    }
    return failed;
}

/* True when every topic of t is in md with all its partitions led. */
static bool all_led(const struct rd_kafka_metadata *md, const oc_new_topic *t, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const rd_kafka_metadata_topic_t *mt = oc_kafka_md_topic(md, t[i].name);

        if (!mt || mt->err || mt->partition_cnt < 1)
            return false;
        for (int p = 0; p < mt->partition_cnt; p++)
            if (mt->partitions[p].leader < 0 || mt->partitions[p].err)
                return false;
    }
    return true;
}

/* New topics get their leaders a moment after CreateTopics returns. */
static int wait_leaders(rd_kafka_t *rk, const oc_new_topic *t, size_t n, int timeout_ms)
{
    int64_t deadline = oc_mono_ms() + timeout_ms;

    while (!oc_stop) {
        const struct rd_kafka_metadata *md;
        bool ok;

        if (oc_kafka_metadata(rk, timeout_ms, &md) < 0)
            return -EIO;
        ok = all_led(md, t, n);
        rd_kafka_metadata_destroy(md);
        if (ok)
            return 0;
        if (oc_mono_ms() >= deadline)
            break;
        rd_kafka_poll(rk, 200);
    }
    oc_err("created topics have partitions without a leader after %d s", timeout_ms / 1000);
    return -EIO;
}

int oc_topics_create(rd_kafka_t *rk, const oc_new_topic *t, size_t n, int timeout_ms)
{
    rd_kafka_NewTopic_t **nts = calloc(n + 1, sizeof(*nts));
    rd_kafka_AdminOptions_t *ao = admin_options(rk, RD_KAFKA_ADMIN_OP_CREATETOPICS, timeout_ms);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev = NULL;
    int r = -EIO;
    size_t made = 0;

    while (nts && made < n && (nts[made] = new_topic(&t[made])))
        made++;
    if (nts && ao && made == n) {
        rd_kafka_CreateTopics(rk, nts, n, ao, q);
        ev = admin_result(q, "CreateTopics", timeout_ms);
    }
    if (ev) {
        r = create_results(ev, t, n);
        rd_kafka_event_destroy(ev);
    }
    if (r == 0 && wait_leaders(rk, t, n, timeout_ms) < 0)
        r = -EIO;
    if (nts)
        rd_kafka_NewTopic_destroy_array(nts, made);
    free(nts);
    if (ao)
        rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_queue_destroy(q);
    return r;
}

/* Copies the values of names out of one DescribeConfigs resource. */
static int config_values(const rd_kafka_ConfigResource_t *res, const char *const *names, size_t nn,
                         char **row)
{
    size_t cnt = 0;
    const rd_kafka_ConfigEntry_t **ents = rd_kafka_ConfigResource_configs(res, &cnt);

    if (rd_kafka_ConfigResource_error(res)) {
        oc_err("could not describe %s: %s", rd_kafka_ConfigResource_name(res),
               rd_kafka_ConfigResource_error_string(res));
        return -EIO;
    }
    for (size_t i = 0; i < cnt; i++) {
        const char *v = rd_kafka_ConfigEntry_value(ents[i]);

        for (size_t j = 0; j < nn; j++)
            if (v && !row[j] && strcmp(rd_kafka_ConfigEntry_name(ents[i]), names[j]) == 0 &&
                !(row[j] = strdup(v)))
                return -ENOMEM;
    }
    return 0;
}

/* Fills ret from the resources of a DescribeConfigs result, matched by
 * name: the result need not keep the order of the request. */
static int describe_results(rd_kafka_event_t *ev, const char *const *topics, size_t n,
                            const char *const *names, size_t nn, char **ret)
{
    size_t cnt = 0;
    const rd_kafka_ConfigResource_t **rs =
        rd_kafka_DescribeConfigs_result_resources(rd_kafka_event_DescribeConfigs_result(ev), &cnt);
    int r = 0;

    for (size_t i = 0; i < cnt && r == 0; i++)
        for (size_t k = 0; k < n && r == 0; k++)
            if (strcmp(rd_kafka_ConfigResource_name(rs[i]), topics[k]) == 0)
                r = config_values(rs[i], names, nn, &ret[k * nn]);
    return r;
}

int oc_topics_describe(rd_kafka_t *rk, const char *const *topics, size_t n,
                       const char *const *names, size_t nn, int timeout_ms, char **ret)
{
    rd_kafka_ConfigResource_t **crs = calloc(n + 1, sizeof(*crs));
    rd_kafka_AdminOptions_t *ao = admin_options(rk, RD_KAFKA_ADMIN_OP_DESCRIBECONFIGS, timeout_ms);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev = NULL;
    int r = -EIO;

    memset(ret, 0, n * nn * sizeof(*ret));
    for (size_t i = 0; crs && i < n; i++)
        crs[i] = rd_kafka_ConfigResource_new(RD_KAFKA_RESOURCE_TOPIC, topics[i]);
    if (crs && ao && n > 0) {
        rd_kafka_DescribeConfigs(rk, crs, n, ao, q);
        ev = admin_result(q, "DescribeConfigs", timeout_ms);
    } else if (n == 0) {
        r = 0;
    }
    if (ev) {
        r = describe_results(ev, topics, n, names, nn, ret);
        rd_kafka_event_destroy(ev);
    }
    for (size_t i = 0; r < 0 && i < n * nn; i++) {
        free(ret[i]);
        ret[i] = NULL;
    }
    if (crs)
        rd_kafka_ConfigResource_destroy_array(crs, n);
    free(crs);
    if (ao)
        rd_kafka_AdminOptions_destroy(ao);
    rd_kafka_queue_destroy(q);
    return r;
}
