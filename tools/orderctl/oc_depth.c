/*
 * oc_depth.c - "orderctl dlt depth": records per dead-letter partition and
 * how many of them are not replayed yet, for people and monitoring checks.
 *
 * Records = high - low watermark (the DLTs are plain, non-transactional,
 * delete-policy topics, so every offset is a record); replayed ones are the
 * ledger's ids inside [low, high) of the partition.
 */
#include "oc_cmd.h"
#include "oc_dlt.h"
#include "oc_kafka.h"
#include "oc_ledger.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl dlt depth [--warn N] [common options]\n"
    "\n"
    "Prints, for every partition of orders.created.DLT, payments.completed.DLT and\n"
    "inventory.reserved.DLT, its low and high watermark, the records it holds\n"
    "(high - low) and how many of those are not replayed yet (not recorded in\n"
    "" OC_LEDGER_TOPIC " by orderctl dlt replay), then a summary line.\n"
    "\n"
    "Options:\n"
    "  --warn N   threshold of not-yet-replayed records (default 0)\n" OC_COMMON_HELP "\n"
    "Exit status: 0 not-yet-replayed records <= N, 1 more than N, 2 usage error,\n"
    "3 broker error or a DLT is missing.\n";

typedef struct {
    const char *topic;
    int32_t partition;
    int64_t low, high, replayed;
} row;

typedef struct {
    row *rows;
    size_t n;
} table;

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    (void)name;
    if (opt == 'w' && oc_parse_i64(arg, 0, INT64_MAX, ctx) < 0)
        return oc_usage("--warn needs a number >= 0");
    return -1;
}

static int parse_args(int64_t *warn, oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"warn", required_argument, NULL, 'w'},
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    return oc_getopt(argc, argv, "h", longopts, usage_text, on_opt, warn, o);
}

static int by_partition(const void *x, const void *y)
{
    const row *a = x, *b = y;
    int t = strcmp(a->topic, b->topic);

    return t ? t : (a->partition > b->partition) - (a->partition < b->partition);
}

/* Fills the rows of the DLTs that exist; returns 0, -ENOENT when some DLT
 * is missing (reported; the others are measured) or -EIO/-ENOMEM. */
static int measure(rd_kafka_t *rk, const struct rd_kafka_metadata *md, int timeout_ms, table *tb)
{
    size_t cap = 0;
    int rc = 0;

    for (size_t i = 0; i < OC_DLT_COUNT; i++) {
        const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, oc_dlt_topics[i]);
        cap += t ? (size_t)t->partition_cnt : 0;
    }
    if (!(tb->rows = calloc(cap + 1, sizeof(row))))
        return -ENOMEM;
    for (size_t i = 0; i < OC_DLT_COUNT; i++) {
        const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, oc_dlt_topics[i]);

        if (!t) {
            oc_err("topic %s does not exist (see orderctl topics ensure)", oc_dlt_topics[i]);
            rc = -ENOENT;
            continue;
        }
        for (int p = 0; p < t->partition_cnt; p++) {
            row *x = &tb->rows[tb->n++];

            x->topic = oc_dlt_topics[i];
            x->partition = t->partitions[p].id;
            if (oc_kafka_watermarks(rk, x->topic, x->partition, timeout_ms, &x->low, &x->high))
                return -EIO;
        }
    }
    qsort(tb->rows, tb->n, sizeof(row), by_partition);
    return rc;
}

static void count_replayed(void *ud, const char *topic, size_t topic_len, int32_t partition,
                           int64_t offset)
{
    table *tb = ud;

    for (size_t i = 0; i < tb->n; i++) {
        row *x = &tb->rows[i];

        if (x->partition == partition && strlen(x->topic) == topic_len &&
            memcmp(x->topic, topic, topic_len) == 0 && offset >= x->low && offset < x->high)
            x->replayed++;
    }
}

/* Prints the table and the summary; returns the not-yet-replayed total. */
static int64_t print_table(const table *tb, int64_t warn)
{
    int64_t records = 0, pending = 0;

    printf("%-26s %9s %12s %12s %10s %12s\n", "TOPIC", "PARTITION", "LOW", "HIGH", "RECORDS",
           "NOT-REPLAYED");
    for (size_t i = 0; i < tb->n; i++) {
        const row *x = &tb->rows[i];
        int64_t n = x->high - x->low, left = n - x->replayed;

        records += n;
        pending += left;
        printf("%-26s %9d %12lld %12lld %10lld %12lld\n", x->topic, (int)x->partition,
               (long long)x->low, (long long)x->high, (long long)n, (long long)left);
    }
    printf("total: %lld record(s) in %zu partition(s), %lld not yet replayed (warn above %lld)\n",
           (long long)records, tb->n, (long long)pending, (long long)warn);
    return pending;
}

int oc_cmd_dlt_depth(oc_opts *o, int argc, char **argv)
{
    int64_t warn = 0;
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *rk = NULL;
    oc_ledger *l = NULL;
    table tb = {NULL, 0};
    int r = parse_args(&warn, o, argc, argv), missing = 0;

    if (r >= 0)
        return r;
    if (oc_kafka_new(o, OC_KAFKA_CONSUMER, &rk) < 0)
        return OC_EXIT_INFRA;
    r = oc_kafka_metadata(rk, o->timeout_ms, &md);
    if (r == 0 && (r = measure(rk, md, o->timeout_ms, &tb)) == -ENOENT) {
        missing = 1;
        r = 0;
    }
    if (r == 0)
        r = oc_ledger_load(rk, md, o->timeout_ms, &l);
    if (r == 0) {
        oc_ledger_each(l, count_replayed, &tb);
        r = print_table(&tb, warn) > warn ? OC_EXIT_FINDING : OC_EXIT_OK;
    } else {
        r = OC_EXIT_INFRA;
    }
    oc_ledger_free(l);
    free(tb.rows);
    if (md)
        rd_kafka_metadata_destroy(md);
    oc_kafka_destroy(rk);
    return missing ? OC_EXIT_INFRA : r;
}
