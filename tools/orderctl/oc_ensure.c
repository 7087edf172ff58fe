/*
 * oc_ensure.c - "orderctl topics ensure": create the system's topics that
 * are missing and report every way an existing one differs from what is
 * wanted. It never deletes, shrinks or alters an existing topic: changing
 * the partition count of a keyed topic moves keys between partitions, which
 * is an operator's decision, not a tool's.
 */
#include "oc_cmd.h"
#include "oc_dlt.h"
#include "oc_kafka.h"
#include "oc_ledger.h"
#include "oc_topics.h"

#include "ev_event.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl topics ensure [--partitions N] [--replication-factor N]\n"
    "                              [--min-insync N] [--dry-run] [common options]\n"
    "\n"
    "Creates the topics that are missing with the Admin API: orders.created,\n"
    "payments.completed, inventory.reserved, each <topic>.DLT (as many partitions\n"
    "as its source) and " OC_LEDGER_TOPIC " (1 partition, cleanup.policy=compact).\n"
    "Checks the existing ones: partition count, replication factor (replicas of\n"
    "partition 0), min.insync.replicas, and the cleanup.policy of " OC_LEDGER_TOPIC ";\n"
    "prints one \"drift: ...\" line per difference. Never deletes, shrinks or alters\n"
    "an existing topic. A DLT with more partitions than its source is no drift.\n"
    "\n"
    "Options:\n"
    "  --partitions N          partitions per topic (default 6)\n"
    "  --replication-factor N  replication factor (default min(3, number of brokers))\n"
    "  --min-insync N          min.insync.replicas (default 2 when the replication\n"
    "                          factor is 3 or more, else 1)\n"
    "  --dry-run               report what would be created, create nothing\n" OC_COMMON_HELP "\n"
    "Exit status: 0 every topic present as wanted, 1 drift found, 2 usage error,\n"
    "3 broker error or a topic could not be created.\n";

#define N_TOPICS 7

typedef struct {
    char name[128];
    int partitions;
    bool is_dlt;                         /* more partitions than wanted is fine */
    bool compact;                        /* the ledger */
    const rd_kafka_metadata_topic_t *md; /* NULL: missing */
} plan_item;

typedef struct {
    int partitions, rf, min_isr; /* 0: default */
    bool dry_run;
    plan_item t[N_TOPICS];
    char *cfg[N_TOPICS * 2]; /* min.insync.replicas, cleanup.policy of each */
    int ok, created, drift, failed;
} ensure;

static const char *const cfg_names[] = {"min.insync.replicas", "cleanup.policy"};

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    ensure *e = ctx;
    int64_t v;

    if (opt == 'n') {
        e->dry_run = true;
        return -1;
    }
    if (oc_parse_i64(arg, 1, opt == 'p' ? 10000 : 32, &v) < 0)
        return oc_usage("%s needs a positive number", name);
    *(opt == 'p' ? &e->partitions : opt == 'r' ? &e->rf : &e->min_isr) = (int)v;
    return -1;
}

static int parse_args(ensure *e, oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"partitions", required_argument, NULL, 'p'},
        {"replication-factor", required_argument, NULL, 'r'},
        {"min-insync", required_argument, NULL, 'i'},
        {"dry-run", no_argument, NULL, 'n'},
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    return oc_getopt(argc, argv, "h", longopts, usage_text, on_opt, e, o);
}

static void add_item(ensure *e, size_t i, const char *name, int partitions, bool is_dlt,
                     bool compact, const struct rd_kafka_metadata *md)
{
    plan_item *t = &e->t[i];

    snprintf(t->name, sizeof(t->name), "%s", name);
    t->partitions = partitions;
    t->is_dlt = is_dlt;
    t->compact = compact;
    t->md = oc_kafka_md_topic(md, name);
}

/* The wanted topics; a DLT needs at least its source's actual partitions. */
static void plan(ensure *e, const struct rd_kafka_metadata *md)
{
    static const char *const base[] = {EV_TOPIC_ORDERS_CREATED, EV_TOPIC_PAYMENTS_COMPLETED,
                                       EV_TOPIC_INVENTORY_RESERVED};

    for (size_t i = 0; i < 3; i++) {
        const rd_kafka_metadata_topic_t *src = oc_kafka_md_topic(md, base[i]);
        int want = e->partitions;
        char dlt[128];

        if (src && src->partition_cnt > want)
            want = src->partition_cnt;
        snprintf(dlt, sizeof(dlt), "%s%s", base[i], OC_DLT_SUFFIX);
        add_item(e, 2 * i, base[i], e->partitions, false, false, md);
        add_item(e, 2 * i + 1, dlt, want, true, false, md);
    }
    add_item(e, 6, OC_LEDGER_TOPIC, 1, false, true, md);
}

static int replicas_of_p0(const rd_kafka_metadata_topic_t *t)
{
    for (int p = 0; p < t->partition_cnt; p++)
        if (t->partitions[p].id == 0)
            return t->partitions[p].replica_cnt;
    return 0;
}

/* Prints the drift lines of existing topic i; returns how many. */
static int check_one(const ensure *e, size_t i)
{
    const plan_item *t = &e->t[i];
    const char *isr = e->cfg[i * 2], *policy = e->cfg[i * 2 + 1];
    int parts = t->md->partition_cnt, rf = replicas_of_p0(t->md), n = 0;
    char want_isr[16];

    snprintf(want_isr, sizeof(want_isr), "%d", e->min_isr);
    if (parts < t->partitions || (parts > t->partitions && !t->is_dlt)) {
        printf("drift: %s partitions %d, want %d\n", t->name, parts, t->partitions);
        n++;
    }
    if (rf != e->rf) {
        printf("drift: %s replication-factor %d, want %d\n", t->name, rf, e->rf);
        n++;
    }
    if (!isr || strcmp(isr, want_isr) != 0) {
        printf("drift: %s min.insync.replicas %s, want %s\n", t->name, isr ? isr : "unknown",
               want_isr);
        n++;
    }
    if (t->compact && (!policy || !strstr(policy, "compact"))) {
        printf("drift: %s cleanup.policy %s, want compact\n", t->name, policy ? policy : "unknown");
        n++;
    }
    if (n == 0)
        printf("ok: %s partitions %d, replication-factor %d, min.insync.replicas %s\n", t->name,
               parts, rf, isr);
    return n;
}

/* Describes and checks the existing topics. Returns 0 or -EIO. */
static int check_existing(ensure *e, rd_kafka_t *rk, int timeout_ms)
{
    const char *names[N_TOPICS];
    char *vals[N_TOPICS * 2];
    size_t n = 0, k = 0;

    for (size_t i = 0; i < N_TOPICS; i++)
        if (e->t[i].md)
            names[n++] = e->t[i].name;
    if (oc_topics_describe(rk, names, n, cfg_names, 2, timeout_ms, vals) < 0)
        return -EIO;
    for (size_t i = 0; i < N_TOPICS; i++) {
        if (!e->t[i].md)
            continue;
        e->cfg[i * 2] = vals[k * 2];
        e->cfg[i * 2 + 1] = vals[k * 2 + 1];
        k++;
        if (check_one(e, i) > 0)
            e->drift++;
        else
            e->ok++;
    }
    return 0;
}

static int create_missing(ensure *e, rd_kafka_t *rk, int timeout_ms)
{
    oc_new_topic nt[N_TOPICS];
    size_t n = 0;
    int r;

    for (size_t i = 0; i < N_TOPICS; i++) {
        if (e->t[i].md)
            continue;
        nt[n++] =
            (oc_new_topic){e->t[i].name, e->t[i].partitions, e->rf, e->min_isr, e->t[i].compact};
        if (e->dry_run)
            printf("would create: %s partitions %d, replication-factor %d, "
                   "min.insync.replicas %d%s\n",
                   e->t[i].name, e->t[i].partitions, e->rf, e->min_isr,
                   e->t[i].compact ? ", cleanup.policy compact" : "");
    }
    if (e->dry_run)
        e->created = (int)n;
    if (n == 0 || e->dry_run)
        return 0;
    r = oc_topics_create(rk, nt, n, timeout_ms);
    if (r < 0) {
        e->failed = (int)n;
        return -1;
    }
    e->failed = r;
    e->created = (int)n - r;
    return 0;
}

/* Applies the defaults that depend on the cluster; 0 or OC_EXIT_USAGE. */
static int resolve(ensure *e, const struct rd_kafka_metadata *md)
{
    int brokers = oc_kafka_broker_count(md);

    if (e->rf == 0)
        e->rf = oc_topics_default_rf(md);
    if (e->min_isr == 0)
        e->min_isr = oc_topics_default_min_isr(e->rf);
    if (e->rf > brokers)
        return oc_usage("replication factor %d exceeds the %d broker(s) of the cluster", e->rf,
                        brokers);
    if (e->min_isr > e->rf)
        return oc_usage("--min-insync %d exceeds the replication factor %d", e->min_isr, e->rf);
    return 0;
}

static int run(ensure *e, const oc_opts *o, rd_kafka_t *rk, const struct rd_kafka_metadata *md)
{
    int r = resolve(e, md);

    if (r != 0)
        return r;
    plan(e, md);
    if (check_existing(e, rk, o->timeout_ms) < 0)
        return OC_EXIT_INFRA;
    create_missing(e, rk, o->timeout_ms);
    printf("topics: %d ok, %d %s, %d with drift, %d failed\n", e->ok, e->created,
           e->dry_run ? "to create" : "created", e->drift, e->failed);
    if (e->failed > 0)
        return OC_EXIT_INFRA;
    return e->drift > 0 ? OC_EXIT_FINDING : OC_EXIT_OK;
}

int oc_cmd_topics_ensure(oc_opts *o, int argc, char **argv)
{
    ensure e = {.partitions = 6};
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *rk = NULL;
    int r = parse_args(&e, o, argc, argv);

    if (r >= 0)
        return r;
    if (oc_kafka_new(o, OC_KAFKA_ADMIN, &rk) < 0)
        return OC_EXIT_INFRA;
    if (oc_kafka_metadata(rk, o->timeout_ms, &md) < 0)
        r = OC_EXIT_INFRA;
    else
        r = run(&e, o, rk, md);
    for (size_t i = 0; i < N_TOPICS * 2; i++)
        free(e.cfg[i]);
    if (md)
        rd_kafka_metadata_destroy(md);
    oc_kafka_destroy(rk);
    return r;
}
