/*
 * oc_ledger.c - see oc_ledger.h.
 */
#include "oc_ledger.h"

#include "oc_dlt.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *id;   /* NULL: free slot */
    int64_t ts; /* DLT record timestamp, -1 unknown */
    bool live;  /* false after a tombstone */
} slot;

struct oc_ledger {
    slot *slots;
    size_t cap; /* power of two */
    size_t used;
    bool exists;
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a */

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ULL;
    return h;
}

static slot *lookup(const oc_ledger *l, const char *id)
{
    size_t i = (size_t)hash(id) & (l->cap - 1);

    while (l->slots[i].id && strcmp(l->slots[i].id, id) != 0)
        i = (i + 1) & (l->cap - 1);
    return &l->slots[i];
}

static int grow(oc_ledger *l)
{
    oc_ledger bigger = {calloc(l->cap * 2, sizeof(slot)), l->cap * 2, l->used, l->exists};

    if (!bigger.slots)
        return -ENOMEM;
    for (size_t i = 0; i < l->cap; i++)
        if (l->slots[i].id)
            *lookup(&bigger, l->slots[i].id) = l->slots[i];
    free(l->slots);
    *l = bigger;
    return 0;
}

/* Records id as replayed (live) or forgotten (tombstone). */
static int put(oc_ledger *l, const char *id, int64_t ts, bool live)
{
    slot *s;

    if ((l->used + 1) * 2 > l->cap && grow(l) < 0)
        return -ENOMEM;
    s = lookup(l, id);
    if (!s->id) {
        if (!(s->id = strdup(id)))
            return -ENOMEM;
        l->used++;
    }
    s->ts = ts;
    s->live = live;
    return 0;
}

static int64_t value_ts(const void *p, size_t n)
{
    json_t *v = json_loadb(p, n, 0, NULL);
    json_t *ts = json_object_get(v, "dltTimestamp");
    int64_t out = json_is_integer(ts) ? (int64_t)json_integer_value(ts) : -1;

    json_decref(v);
    return out;
}

static int on_record(void *ud, const rd_kafka_message_t *m)
{
    oc_ledger *l = ud;
    char id[512];

    if (!m->key || m->key_len == 0 || m->key_len >= sizeof(id))
        return 0; /* not ours */
    memcpy(id, m->key, m->key_len);
    id[m->key_len] = '\0';
    if (!m->payload)
        return put(l, id, -1, false);
    return put(l, id, value_ts(m->payload, m->len), true);
}

static int read_topic(oc_ledger *l, rd_kafka_t *consumer, const rd_kafka_metadata_topic_t *t,
                      int timeout_ms)
{
    oc_range *r = calloc((size_t)t->partition_cnt + 1, sizeof(*r));
    int ret = 0;

    if (!r)
        return -ENOMEM;
    for (int i = 0; i < t->partition_cnt && ret == 0; i++) {
        r[i].topic = OC_LEDGER_TOPIC;
        r[i].partition = t->partitions[i].id;
        ret = oc_kafka_watermarks(consumer, OC_LEDGER_TOPIC, r[i].partition, timeout_ms,
                                  &r[i].start, &r[i].end);
    }
    if (ret == 0)
        ret = oc_kafka_read(consumer, r, (size_t)t->partition_cnt, false, on_record, l);
    free(r);
    if (ret == 0 && oc_stop)
        ret = -EINTR;
    return ret;
}

int oc_ledger_load(rd_kafka_t *consumer, const struct rd_kafka_metadata *md, int timeout_ms,
                   oc_ledger **ret)
{
    const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, OC_LEDGER_TOPIC);
    oc_ledger *l = calloc(1, sizeof(*l));
    int r = 0;

    if (!l || !(l->slots = calloc(64, sizeof(slot)))) {
        free(l);
        return -ENOMEM;
    }
    l->cap = 64;
    l->exists = t != NULL;
    if (t)
        r = read_topic(l, consumer, t, timeout_ms);
    if (r < 0) {
        oc_ledger_free(l);
        return r;
    }
    *ret = l;
    return 0;
}

void oc_ledger_free(oc_ledger *l)
{
    if (!l)
        return;
    for (size_t i = 0; i < l->cap; i++)
        free(l->slots[i].id);
    free(l->slots);
    free(l);
}

bool oc_ledger_topic_exists(const oc_ledger *l)
{
    return l->exists;
}

bool oc_ledger_has(const oc_ledger *l, const char *id, int64_t dlt_ts)
{
    const slot *s = lookup(l, id);

    return s->id && s->live && (s->ts < 0 || dlt_ts < 0 || s->ts == dlt_ts);
}

/* Splits "<topic>/<partition>/<offset>" from the right (topic names cannot
 * hold a '/'). Returns 0 or -EINVAL. */
static int split_id(const char *id, size_t *ret_topic_len, int32_t *ret_p, int64_t *ret_o)
{
    const char *o = strrchr(id, '/'), *p;
    char buf[32];
    int64_t pv, ov;

    if (!o || o == id)
        return -EINVAL;
    for (p = o - 1; p > id && *p != '/'; p--)
        ;
    if (p == id || (size_t)(o - p - 1) >= sizeof(buf))
        return -EINVAL;
    memcpy(buf, p + 1, (size_t)(o - p - 1));
    buf[o - p - 1] = '\0';
    if (oc_parse_i64(buf, 0, INT32_MAX, &pv) < 0 || oc_parse_i64(o + 1, 0, INT64_MAX, &ov) < 0)
        return -EINVAL;
    *ret_topic_len = (size_t)(p - id);
    *ret_p = (int32_t)pv;
    *ret_o = ov;
    return 0;
}

void oc_ledger_each(const oc_ledger *l,
                    void (*fn)(void *ud, const char *topic, size_t topic_len, int32_t partition,
                               int64_t offset),
                    void *ud)
{
    for (size_t i = 0; i < l->cap; i++) {
        const slot *s = &l->slots[i];
        size_t tlen;
        int32_t p;
        int64_t o;

        if (s->id && s->live && split_id(s->id, &tlen, &p, &o) == 0)
            fn(ud, s->id, tlen, p, o);
    }
}

int oc_ledger_mark(rd_kafka_t *producer, const oc_ledger_entry *e, oc_delivery *d)
{
    char now[32];
    char *value;
    json_t *v;
    rd_kafka_resp_err_t err;

    oc_rfc3339_ms(oc_now_ms(), now);
    v = json_pack("{s:s,s:I,s:s,s:i,s:I,s:s}", "replayedAt", now, "dltTimestamp",
                  (json_int_t)e->dlt_ts, "topic", e->topic, "partition", (int)e->partition,
                  "offset", (json_int_t)e->offset, "by", "orderctl");
    value = v ? json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(v);
    if (!value)
        return -ENOMEM;
    d->state = 0;
    err = rd_kafka_producev(
        producer, RD_KAFKA_V_TOPIC(OC_LEDGER_TOPIC), RD_KAFKA_V_KEY(e->id, strlen(e->id)),
        RD_KAFKA_V_VALUE(value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_OPAQUE(d), RD_KAFKA_V_END);
    free(value);
    if (err) {
        oc_err("could not record replay of %s in %s: %s", e->id, OC_LEDGER_TOPIC,
               rd_kafka_err2str(err));
        return -EIO;
    }
    return 0;
}
