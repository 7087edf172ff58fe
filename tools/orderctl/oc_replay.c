/*
 * oc_replay.c - "orderctl dlt replay": send dead-letter records back to the
 * topic they came from.
 *
 * A replayed record keeps the original key, value and headers; the
 * kafka_dlt-* headers are dropped and "orders-replayed-from: <dlt topic>/
 * <partition>/<offset>" is added. It goes to the original partition number,
 * where the other events of its key are. Safe to run twice: the ledger topic
 * (oc_ledger.h) is read first and replayed records are skipped; a record's
 * marker is written only after the replay itself was acknowledged. A crash
 * between the two can replay a record twice, which the consumers absorb
 * (they dedupe by order id and event type). Two operators replaying the same
 * records at the same moment can do the same.
 *
 * Poison records (cause DeserializationException) are left on the DLT unless
 * --include-poison: no consumer can read them, so each of the two consumer
 * groups of the topic would dead-letter a replayed copy again, doubling them
 * with every replay. A record that both groups dead-lettered (two DLT
 * copies with the same kafka_dlt-original-topic/-partition/-offset) is sent
 * once; its other copies get a ledger marker naming that send (oc_origins.h).
 * A copy met after one that an earlier run replayed counts as replayed too.
 *
 * Records go out in batches of OC_BATCH: produce the batch, wait for every
 * delivery report, produce the markers of the acknowledged ones, wait again.
 */
#include "oc_cmd.h"
#include "oc_dlt.h"
#include "oc_kafka.h"
#include "oc_ledger.h"
#include "oc_origins.h"
#include "oc_topics.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define OC_BATCH 1000 /* also the progress interval, in records read */

static const char usage_text[] =
    "Usage: orderctl dlt replay [--topic T.DLT] [--partition P] [--from OFFSET]\n"
    "                           [--to OFFSET] [--key K] [--all] [--include-poison]\n"
    "                           [--dry-run] [common options]\n"
    "\n"
    "Sends the chosen records of the dead-letter topics back to their original topic\n"
    "(header kafka_dlt-original-topic) and partition, with the original key, value\n"
    "and headers, the kafka_dlt-* headers removed and the header\n"
    "" OC_HDR_REPLAYED_FROM "=<dlt topic>/<partition>/<offset> added, through an\n"
    "idempotent producer (acks=all), waiting for every delivery report. Each replay\n"
    "is recorded in the compacted topic " OC_LEDGER_TOPIC " (created when missing) and\n"
    "records found there are skipped, so running it twice replays nothing twice.\n"
    "A record dead-lettered by both consumer groups of its topic (two DLT records\n"
    "with the same original topic/partition/offset) is sent once. Poison records\n"
    "(cause DeserializationException) stay on the DLT unless --include-poison.\n"
    "Prints progress every 1000 records and a summary line.\n"
    "\n"
    "Options (choose records with --all or at least one of --partition/--from/--to/--key):\n"
    "  --topic T.DLT   only this dead-letter topic (default: all three)\n"
    "  --partition P   only partition P (needs --topic)\n"
    "  --from OFFSET   only offsets >= OFFSET (needs --partition)\n"
    "  --to OFFSET     only offsets <= OFFSET (needs --partition)\n"
    "  --key K         only records whose key is K\n"
    "  --all           every record of the chosen topic(s)\n"
    "  --include-poison  replay poison records too (by default they stay as\n"
    "                  evidence: both consumer groups would dead-letter them again)\n"
    "  --dry-run       list what would be replayed, send and record nothing\n" OC_COMMON_HELP "\n"
    "Exit status: 0 every chosen record replayed or skipped, 1 some records could not\n"
    "be replayed (each reported), 2 usage error, 3 broker error, a replay that could\n"
    "not be recorded, or interrupted.\n";

typedef struct {
    const char *topic, *key;
    int64_t partition, from, to; /* -1: not given */
    bool all, dry_run, include_poison;
} replay_args;

/* One record of the batch in flight. */
typedef struct {
    char id[320];
    char topic[256];
    char orig[320]; /* original record id, "" when the headers lack it */
    int64_t dlt_ts;
    int32_t dup_of; /* copy of the original sent by this slot of the batch, or -1 */
    bool dup;       /* a copy: not sent, only marked */
    oc_delivery replay, marker;
} slot;

typedef struct {
    const replay_args *a;
    rd_kafka_t *producer;
    const oc_ledger *ledger;
    oc_origins *origins;
    slot *batch;
    size_t n;
    int64_t seen, replayed, skipped, failed, unrecorded, poison, dups;
    bool fatal;
} replay_ctx;

static int check_args(const replay_args *a)
{
    bool filtered = a->partition >= 0 || a->from >= 0 || a->to >= 0 || a->key;

    if (!a->all && !filtered)
        return oc_usage("choose records with --all or --partition/--from/--to/--key");
    if (a->all && filtered)
        return oc_usage("--all cannot be combined with --partition/--from/--to/--key");
    if (a->partition >= 0 && !a->topic)
        return oc_usage("--partition needs --topic");
    if ((a->from >= 0 || a->to >= 0) && a->partition < 0)
        return oc_usage("--from and --to need --partition");
    if (a->from >= 0 && a->to >= 0 && a->from > a->to)
        return oc_usage("--from must not be above --to");
    if (a->topic && !oc_is_dlt_topic(a->topic))
        return oc_usage("--topic must name a dead-letter topic (<topic>%s)", OC_DLT_SUFFIX);
    return -1;
}

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    replay_args *a = ctx;

    if (opt == 't' || opt == 'k')
        *(opt == 't' ? &a->topic : &a->key) = arg;
    else if (opt == 'a' || opt == 'n' || opt == 'P')
        *(opt == 'a' ? &a->all : opt == 'n' ? &a->dry_run : &a->include_poison) = true;
    else if (oc_parse_i64(arg, 0, opt == 'p' ? INT32_MAX : INT64_MAX - 1,
                          opt == 'p'   ? &a->partition
                          : opt == 'F' ? &a->from
                                       : &a->to) < 0)
        return oc_usage("%s needs a number >= 0", name);
    return -1;
}

static int parse_args(replay_args *a, oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"topic", required_argument, NULL, 't'},
        {"partition", required_argument, NULL, 'p'},
        {"from", required_argument, NULL, 'F'},
        {"to", required_argument, NULL, 'T'},
        {"key", required_argument, NULL, 'k'},
        {"all", no_argument, NULL, 'a'},
        {"dry-run", no_argument, NULL, 'n'},
        {"include-poison", no_argument, NULL, 'P'},
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    int r = oc_getopt(argc, argv, "h", longopts, usage_text, on_opt, a, o);
    return r >= 0 ? r : check_args(a);
}

/* The original headers minus the dead-letter ones, plus the replay marker. */
static rd_kafka_headers_t *replay_headers(const rd_kafka_message_t *m, const char *id)
{
    rd_kafka_headers_t *src = NULL, *h;
    const char *name;
    const void *v;
    size_t n;

    if (rd_kafka_message_headers(m, &src) != RD_KAFKA_RESP_ERR_NO_ERROR)
        src = NULL;
    h = rd_kafka_headers_new(src ? rd_kafka_header_cnt(src) + 1 : 1);
    for (size_t i = 0; h && src && rd_kafka_header_get_all(src, i, &name, &v, &n) == 0; i++)
        if (!oc_dlt_header_dropped(name))
            rd_kafka_header_add(h, name, -1, v, v ? (ssize_t)n : 0);
    if (h)
        rd_kafka_header_add(h, OC_HDR_REPLAYED_FROM, -1, id, -1);
    return h;
}

/* Where a DLT record goes back to: its kafka_dlt-original-topic, which must
 * be the DLT's own source (a forged header cannot aim a replay elsewhere). */
static int target_of(const rd_kafka_message_t *m, const oc_dlt_info *d, char *out, size_t outlen)
{
    const char *dlt = rd_kafka_topic_name(m->rkt);
    size_t n = strlen(dlt) - strlen(OC_DLT_SUFFIX);

    if (!d->topic.p || d->topic.n != n || memcmp(d->topic.p, dlt, n) != 0 || n >= outlen)
        return -EINVAL;
    memcpy(out, dlt, n);
    out[n] = '\0';
    return 0;
}

/* Hands the replay of m (DLT headers d, target s->topic) to the producer as
 * slot s. Returns 0 or -ENOMEM. */
static int send_one(replay_ctx *c, const rd_kafka_message_t *m, const oc_dlt_info *d, slot *s)
{
    rd_kafka_headers_t *h;
    rd_kafka_resp_err_t err;

    if (c->a->dry_run) {
        printf("would replay %s to %s/", s->id, s->topic);
        if (d->has_partition)
            printf("%d key=", (int)d->partition);
        else
            printf("(by key) key=");
        oc_put_escaped(stdout, m->key, m->key_len);
        putchar('\n');
        c->replayed++;
        return 0;
    }
    if (!(h = replay_headers(m, s->id)))
        return -ENOMEM;
    s->replay.state = 0;
    err = rd_kafka_producev(
        c->producer, RD_KAFKA_V_TOPIC(s->topic),
        RD_KAFKA_V_PARTITION(d->has_partition ? d->partition : RD_KAFKA_PARTITION_UA),
        RD_KAFKA_V_KEY(m->key, m->key_len), RD_KAFKA_V_VALUE(m->payload, m->len),
        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_HEADERS(h),
        RD_KAFKA_V_OPAQUE(&s->replay), RD_KAFKA_V_END);
    if (err) {
        rd_kafka_headers_destroy(h); /* owned by librdkafka only on success */
        s->replay.state = -1;
        s->replay.err = err;
    }
    c->n++;
    return 0;
}

/* A copy of an original record this run sent (or found replayed): queued as
 * slot s to get a marker naming that send, nothing is produced. */
static void add_copy(replay_ctx *c, const oc_origin *o, slot *s)
{
    s->dup = true;
    s->dup_of = o->slot;
    s->replay = (oc_delivery){o->sent ? 1 : 0, RD_KAFKA_RESP_ERR_NO_ERROR, o->partition, o->offset};
    c->dups++;
    if (c->a->dry_run)
        printf("would mark %s as replayed: a copy of %s from another consumer group\n", s->id,
               s->orig);
    else
        c->n++;
}

/* Decides what to do with DLT record m (slot s): keep it (poison), mark it
 * as a copy, or send it. Returns 0, -EINVAL (m cannot be replayed, reported)
 * or -ENOMEM. */
static int take(replay_ctx *c, const rd_kafka_message_t *m, slot *s)
{
    rd_kafka_headers_t *h = NULL;
    oc_origin *o = NULL;
    oc_dlt_info d;
    bool fresh;

    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    oc_dlt_decode(h, &d);
    if (target_of(m, &d, s->topic, sizeof(s->topic)) < 0) {
        oc_err("cannot replay %s: its kafka_dlt-original-topic is not %.*s", s->id,
               (int)(strlen(rd_kafka_topic_name(m->rkt)) - strlen(OC_DLT_SUFFIX)),
               rd_kafka_topic_name(m->rkt));
        return -EINVAL;
    }
    if (oc_dlt_is_poison(&d) && !c->a->include_poison) {
        c->poison++;
        return 0;
    }
    s->dup = false;
    s->dup_of = -1;
    s->orig[0] = '\0';
    if (d.has_partition && d.has_offset)
        snprintf(s->orig, sizeof(s->orig), "%s/%d/%lld", s->topic, (int)d.partition,
                 (long long)d.offset);
    if (s->orig[0] && !(o = oc_origins_get(c->origins, s->orig, &fresh)))
        return -ENOMEM;
    if (o && (o->slot >= 0 || o->sent)) {
        add_copy(c, o, s);
        return 0;
    }
    if (send_one(c, m, &d, s) < 0)
        return -ENOMEM;
    if (o && c->a->dry_run)
        *o = (oc_origin){-1, true, -1, -1};
    else if (o)
        o->slot = (int32_t)(c->n - 1);
    return 0;
}

/* Notes that the original of DLT record m, skipped as already replayed, was
 * sent by an earlier run, so that its other copies are not sent again. */
static int note_replayed(replay_ctx *c, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    char id[320];
    oc_origin *o;
    oc_dlt_info d;
    bool fresh;

    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    oc_dlt_decode(h, &d);
    if (!d.topic.p || !d.has_partition || !d.has_offset)
        return 0;
    snprintf(id, sizeof(id), "%.*s/%d/%lld", (int)d.topic.n, d.topic.p, (int)d.partition,
             (long long)d.offset);
    if (!(o = oc_origins_get(c->origins, id, &fresh)))
        return -ENOMEM;
    if (o->slot < 0 && !o->sent)
        *o = (oc_origin){-1, true, -1, -1};
    return 0;
}

/* Writes the markers of the acknowledged replays of the batch. */
static void mark_batch(replay_ctx *c)
{
    for (size_t i = 0; i < c->n; i++) {
        slot *s = &c->batch[i];
        oc_ledger_entry e;

        if (s->dup_of >= 0)
            s->replay = c->batch[s->dup_of].replay;
        e = (oc_ledger_entry){s->id, s->dlt_ts, s->topic, s->replay.partition, s->replay.offset};
        if (s->replay.state != 1) {
            oc_err("could not replay %s to %s: %s", s->id, s->topic,
                   rd_kafka_err2str(s->replay.err));
            c->failed++;
            continue;
        }
        if (oc_ledger_mark(c->producer, &e, &s->marker) < 0) {
            s->marker.state = -1;
            s->marker.err = RD_KAFKA_RESP_ERR__FAIL;
        }
    }
    oc_kafka_drain(c->producer);
}

/* Sends nothing new: settles the batch in flight and counts its outcome. */
static void flush_batch(replay_ctx *c)
{
    char e[256];

    oc_kafka_drain(c->producer);
    mark_batch(c);
    for (size_t i = 0; i < c->n; i++) {
        const slot *s = &c->batch[i];
        bool fresh;
        oc_origin *o = s->orig[0] && !s->dup ? oc_origins_get(c->origins, s->orig, &fresh) : NULL;

        if (o) /* found: it was added when the slot was queued */
            *o = (oc_origin){-1, s->replay.state == 1, s->replay.partition, s->replay.offset};
        if (s->replay.state != 1)
            continue;
        c->replayed += s->dup ? 0 : 1;
        if (s->marker.state != 1) {
            c->unrecorded++;
            oc_err("replayed %s but could not record it in %s: %s (a later run replays it "
                   "again)",
                   s->id, OC_LEDGER_TOPIC, rd_kafka_err2str(s->marker.err));
        }
    }
    c->n = 0;
    if (rd_kafka_fatal_error(c->producer, e, sizeof(e))) {
        oc_err("producer failed for good: %s", e);
        c->fatal = true;
    }
}

static void progress(const replay_ctx *c)
{
    fprintf(stderr, "orderctl: progress: %lld records read, %lld %s, %lld skipped, %lld failed\n",
            (long long)c->seen, (long long)c->replayed, c->a->dry_run ? "to replay" : "replayed",
            (long long)c->skipped, (long long)c->failed);
}

static bool key_matches(const replay_args *a, const rd_kafka_message_t *m)
{
    size_t n = a->key ? strlen(a->key) : 0;

    return !a->key || (m->key && m->key_len == n && memcmp(m->key, a->key, n) == 0);
}

static int consider(void *ud, const rd_kafka_message_t *m)
{
    replay_ctx *c = ud;
    rd_kafka_timestamp_type_t tstype;
    slot *s = &c->batch[c->n];

    if (!key_matches(c->a, m))
        return 0;
    c->seen++;
    s->dlt_ts = rd_kafka_message_timestamp(m, &tstype);
    if (oc_record_id(m, s->id, sizeof(s->id)) < 0) {
        c->failed++;
    } else if (oc_ledger_has(c->ledger, s->id, s->dlt_ts)) {
        c->skipped++;
        if (note_replayed(c, m) < 0)
            return -ENOMEM;
    } else {
        int r = take(c, m, s);

        if (r == -ENOMEM)
            return r;
        c->failed += r < 0 ? 1 : 0;
    }
    if (c->n == OC_BATCH || c->seen % OC_BATCH == 0) {
        if (c->n > 0)
            flush_batch(c);
        if (c->seen % OC_BATCH == 0)
            progress(c);
    }
    return c->fatal ? -EIO : 0;
}

/* Appends the ranges of topic chosen by a. Returns 0, -ENOENT (topic or
 * partition missing, reported) or -EIO. */
static int add_ranges(rd_kafka_t *rk, const struct rd_kafka_metadata *md, const char *topic,
                      const replay_args *a, int timeout_ms, oc_range *r, size_t *n)
{
    const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, topic);
    size_t before = *n;

    if (!t) {
        oc_err("topic %s does not exist (see orderctl topics ensure)", topic);
        return -ENOENT;
    }
    for (int i = 0; i < t->partition_cnt; i++) {
        oc_range *x = &r[*n];
        int64_t lo, hi;

        if (a->partition >= 0 && t->partitions[i].id != a->partition)
            continue;
        if (oc_kafka_watermarks(rk, topic, t->partitions[i].id, timeout_ms, &lo, &hi) < 0)
            return -EIO;
        *x = (oc_range){t->topic, t->partitions[i].id, lo, hi};
        if (a->from > lo)
            x->start = a->from;
        if (a->to >= 0 && a->to + 1 < hi)
            x->end = a->to + 1;
        (*n)++;
    }
    if (a->partition >= 0 && *n == before) {
        oc_err("%s has no partition %lld", topic, (long long)a->partition);
        return -ENOENT;
    }
    return 0;
}

static int collect(rd_kafka_t *rk, const struct rd_kafka_metadata *md, const replay_args *a,
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
    for (size_t i = 0; i < nt && rc == 0; i++)
        rc = add_ranges(rk, md, topics[i], a, timeout_ms, r, &n);
    if (rc < 0) {
        free(r);
        return rc;
    }
    *ret = r;
    *ret_n = n;
    return 0;
}

/* Creates the ledger topic when a real replay needs it and it is missing. */
static int ensure_ledger(rd_kafka_t *producer, const struct rd_kafka_metadata *md,
                         const oc_ledger *l, int timeout_ms)
{
    int rf = oc_topics_default_rf(md);
    oc_new_topic t = {OC_LEDGER_TOPIC, 1, rf, oc_topics_default_min_isr(rf), true};

    if (oc_ledger_topic_exists(l))
        return 0;
    return oc_topics_create(producer, &t, 1, timeout_ms) == 0 ? 0 : -EIO;
}

/* Lets the producer learn the partitions of every topic it may write to:
 * the sources of the chosen DLTs and the ledger. */
static void warm(replay_ctx *c, const struct rd_kafka_metadata *md, int timeout_ms)
{
    const char *const *dlts = c->a->topic ? &c->a->topic : oc_dlt_topics;
    size_t nd = c->a->topic ? 1 : OC_DLT_COUNT, n = 0;
    const char *names[OC_DLT_COUNT + 1];
    char src[OC_DLT_COUNT][256];

    for (size_t i = 0; i < nd; i++) {
        size_t len = strlen(dlts[i]) - strlen(OC_DLT_SUFFIX);

        snprintf(src[i], sizeof(src[i]), "%.*s", (int)len, dlts[i]);
        if (oc_kafka_md_topic(md, src[i]))
            names[n++] = src[i];
    }
    names[n++] = OC_LEDGER_TOPIC;
    oc_kafka_warm(c->producer, names, n, timeout_ms);
}

static int summary(const replay_ctx *c, int read_rc)
{
    printf("%s %lld, skipped %lld already replayed, %lld failed%s\n",
           c->a->dry_run ? "would replay" : "replayed", (long long)c->replayed,
           (long long)c->skipped, (long long)c->failed, oc_stop ? " (interrupted)" : "");
    if (c->dups > 0)
        printf("%s %lld copy(ies) of records dead-lettered by more than one consumer group as "
               "replayed (each original sent once)\n",
               c->a->dry_run ? "would mark" : "marked", (long long)c->dups);
    if (c->poison > 0)
        printf("kept %lld poison record(s) on the DLT (replay them with --include-poison)\n",
               (long long)c->poison);
    if (c->unrecorded > 0)
        printf("%lld replayed record(s) could not be recorded in %s\n", (long long)c->unrecorded,
               OC_LEDGER_TOPIC);
    if (read_rc < 0 || c->fatal || c->unrecorded > 0 || oc_stop)
        return OC_EXIT_INFRA;
    return c->failed > 0 ? OC_EXIT_FINDING : OC_EXIT_OK;
}

/* Reads, replays and records; returns the exit status. */
static int run(replay_ctx *c, const oc_opts *o, rd_kafka_t *consumer,
               const struct rd_kafka_metadata *md)
{
    oc_ledger *l = NULL;
    oc_range *ranges = NULL;
    size_t n = 0;
    int r = collect(consumer, md, c->a, o->timeout_ms, &ranges, &n);

    if (r < 0)
        return r == -ENOENT && c->a->partition >= 0 ? OC_EXIT_USAGE : OC_EXIT_INFRA;
    if (oc_ledger_load(consumer, md, o->timeout_ms, &l) < 0 ||
        (!c->a->dry_run && (oc_kafka_new(o, OC_KAFKA_PRODUCER, &c->producer) < 0 ||
                            ensure_ledger(c->producer, md, l, o->timeout_ms) < 0))) {
        free(ranges);
        oc_ledger_free(l);
        return OC_EXIT_INFRA;
    }
    c->ledger = l;
    if (c->producer)
        warm(c, md, o->timeout_ms);
    r = oc_kafka_read(consumer, ranges, n, false, consider, c);
    if (c->n > 0)
        flush_batch(c);
    free(ranges);
    oc_ledger_free(l);
    return summary(c, r);
}

int oc_cmd_dlt_replay(oc_opts *o, int argc, char **argv)
{
    replay_args a = {.partition = -1, .from = -1, .to = -1};
    replay_ctx c = {.a = &a};
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *consumer = NULL;
    int r = parse_args(&a, o, argc, argv);

    if (r >= 0)
        return r;
    if (!(c.batch = calloc(OC_BATCH, sizeof(slot))) || oc_origins_new(&c.origins) < 0 ||
        oc_kafka_new(o, OC_KAFKA_CONSUMER, &consumer) < 0) {
        free(c.batch);
        oc_origins_free(c.origins);
        return OC_EXIT_INFRA;
    }
    if (oc_kafka_metadata(consumer, o->timeout_ms, &md) < 0)
        r = OC_EXIT_INFRA;
    else
        r = run(&c, o, consumer, md);
    if (md)
        rd_kafka_metadata_destroy(md);
    oc_kafka_destroy(consumer);
    oc_kafka_destroy(c.producer);
    oc_origins_free(c.origins);
    free(c.batch);
    return r;
}
