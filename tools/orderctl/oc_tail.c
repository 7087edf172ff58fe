/*
 * oc_tail.c - "orderctl dlt tail": print dead-letter records decoded.
 *
 * Reads with an assign()ed consumer that never commits, so tailing does not
 * move any consumer group and can run beside the daemons at any time.
 */
#include "oc_cmd.h"
#include "oc_dlt.h"
#include "oc_kafka.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl dlt tail [-f] [--topic T.DLT] [--max N] [--json] [common options]\n"
    "\n"
    "Prints the records of one dead-letter topic, or of all three (orders.created.DLT,\n"
    "payments.completed.DLT, inventory.reserved.DLT), with their kafka_dlt-* headers\n"
    "decoded: DLT topic/partition/offset and time, original topic/partition/offset and\n"
    "timestamp (RFC 3339), consumer group, exception class and cause, the reason,\n"
    "the key, the other headers and the payload. Control bytes are escaped.\n"
    "Without -f it reads from the beginning to the current end and exits. Never\n"
    "commits offsets: no consumer group is moved.\n"
    "\n"
    "Options:\n"
    "  -f, --follow    keep printing new records until SIGINT/SIGTERM\n"
    "  --topic T.DLT   only this dead-letter topic\n"
    "  --max N         only the last N records of each partition\n"
    "  --json          one JSON object per record and line; key, payload and header\n"
    "                  values that are not UTF-8 come as <name>Base64\n" OC_COMMON_HELP "\n"
    "Exit status: 0 ok (also when there is nothing to show), 2 usage error,\n"
    "3 broker error or a topic is missing.\n";

typedef struct {
    bool follow, json;
    int64_t max; /* -1: all */
    const char *topic;
    size_t shown;
} tail_args;

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    tail_args *a = ctx;
    (void)name;

    if (opt == 'f' || opt == 'j')
        *(opt == 'f' ? &a->follow : &a->json) = true;
    else if (opt == 't')
        a->topic = arg;
    else if (oc_parse_i64(arg, 1, INT64_MAX, &a->max) < 0)
        return oc_usage("--max needs a positive number");
    return -1;
}

static int parse_args(tail_args *a, oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"follow", no_argument, NULL, 'f'},
        {"topic", required_argument, NULL, 't'},
        {"max", required_argument, NULL, 'm'},
        {"json", no_argument, NULL, 'j'},
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    int r = oc_getopt(argc, argv, "fh", longopts, usage_text, on_opt, a, o);

    if (r >= 0)
        return r;
    if (a->topic && !oc_is_dlt_topic(a->topic))
        return oc_usage("--topic must name a dead-letter topic (<topic>%s)", OC_DLT_SUFFIX);
    return -1;
}

/* Appends one range per partition of topic to *r. Returns 0, -ENOENT
 * (topic missing, reported) or -EIO. */
static int add_ranges(rd_kafka_t *rk, const struct rd_kafka_metadata *md, const char *topic,
                      const tail_args *a, int timeout_ms, oc_range *r, size_t *n)
{
    const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, topic);

    if (!t) {
        oc_err("topic %s does not exist (see orderctl topics ensure)", topic);
        return -ENOENT;
    }
    for (int i = 0; i < t->partition_cnt; i++) {
        oc_range *x = &r[(*n)++];
        int64_t lo, hi;

        if (oc_kafka_watermarks(rk, topic, t->partitions[i].id, timeout_ms, &lo, &hi) < 0)
            return -EIO;
        x->topic = t->topic;
        x->partition = t->partitions[i].id;
        x->start = a->max > 0 && hi - a->max > lo ? hi - a->max : lo;
        x->end = a->follow ? INT64_MAX : hi;
    }
    return 0;
}

static int show(void *ud, const rd_kafka_message_t *m)
{
    tail_args *a = ud;
    int r = a->json ? oc_dlt_print_json(stdout, m) : oc_dlt_print_text(stdout, m);

    a->shown++;
    if (a->follow)
        fflush(stdout);
    if (r < 0)
        oc_err("could not write to standard output");
    return r;
}

/* Collects the ranges of every topic to tail; returns 0, -ENOENT if some
 * topic is missing (the others are still read) or -EIO/-ENOMEM. */
static int collect(rd_kafka_t *rk, const struct rd_kafka_metadata *md, const tail_args *a,
                   int timeout_ms, oc_range **ret, size_t *ret_n)
{
    const char *const *topics = a->topic ? &a->topic : oc_dlt_topics;
    size_t nt = a->topic ? 1 : OC_DLT_COUNT, cap = 0, n = 0;
    oc_range *r;
    int rc = 0;

    for (size_t i = 0; i < nt; i++) {
        const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, topics[i]);
        cap += t ? (size_t)t->partition_cnt : 0;
    }
    if (!(r = calloc(cap + 1, sizeof(*r))))
        return -ENOMEM;
    for (size_t i = 0; i < nt && rc != -EIO; i++) {
        int x = add_ranges(rk, md, topics[i], a, timeout_ms, r, &n);
        rc = x < 0 ? x : rc;
    }
    if (rc == -EIO) {
        free(r);
        return rc;
    }
    *ret = r;
    *ret_n = n;
    return rc;
}

int oc_cmd_dlt_tail(oc_opts *o, int argc, char **argv)
{
    tail_args a = {.max = -1};
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *rk = NULL;
    oc_range *ranges = NULL;
    size_t n = 0;
    int r = parse_args(&a, o, argc, argv), missing = 0;

    if (r >= 0)
        return r;
    if (oc_kafka_new(o, OC_KAFKA_CONSUMER, &rk) < 0)
        return OC_EXIT_INFRA;
    r = oc_kafka_metadata(rk, o->timeout_ms, &md);
    if (r == 0 && (r = collect(rk, md, &a, o->timeout_ms, &ranges, &n)) == -ENOENT) {
        missing = 1;
        r = 0;
    }
    if (r == 0)
        r = oc_kafka_read(rk, ranges, n, a.follow, show, &a);
    if (r == 0 && !a.json)
        printf("%zu dead-letter record(s)\n", a.shown);
    free(ranges);
    if (md)
        rd_kafka_metadata_destroy(md);
    oc_kafka_destroy(rk);
    return r < 0 || missing ? OC_EXIT_INFRA : OC_EXIT_OK;
}
