/*
 * oc_dlt.c - see oc_dlt.h.
 */
#include "oc_dlt.h"

#include "cm_dlt.h"
#include "ev_event.h"

#include <errno.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

const char *const oc_dlt_topics[OC_DLT_COUNT] = {
    EV_TOPIC_ORDERS_CREATED OC_DLT_SUFFIX,
    EV_TOPIC_PAYMENTS_COMPLETED OC_DLT_SUFFIX,
    EV_TOPIC_INVENTORY_RESERVED OC_DLT_SUFFIX,
};

uint64_t oc_be_decode(const void *p, size_t n)
{
    const uint8_t *b = p;
    uint64_t v = 0;

    for (size_t i = 0; i < n && i < 8; i++)
        v = (v << 8) | b[i];
    return v;
}

static oc_bytes header(const rd_kafka_headers_t *h, const char *name)
{
    oc_bytes out = {NULL, 0};
    const void *v = NULL;
    size_t n = 0;

    if (h && rd_kafka_header_get_last(h, name, &v, &n) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        out.p = v ? v : "";
        out.n = v ? n : 0;
    }
    return out;
}

/* A fixed-size big-endian number; false if absent or of another size. */
static bool header_be(const rd_kafka_headers_t *h, const char *name, size_t size, uint64_t *ret)
{
    oc_bytes b = header(h, name);

    if (!b.p || b.n != size)
        return false;
    *ret = oc_be_decode(b.p, b.n);
    return true;
}

void oc_dlt_decode(const rd_kafka_headers_t *h, oc_dlt_info *ret)
{
    uint64_t v = 0;

    memset(ret, 0, sizeof(*ret));
    ret->topic = header(h, "kafka_dlt-original-topic");
    if ((ret->has_partition = header_be(h, "kafka_dlt-original-partition", 4, &v)))
        ret->partition = (int32_t)(uint32_t)v;
    if ((ret->has_offset = header_be(h, "kafka_dlt-original-offset", 8, &v)))
        ret->offset = (int64_t)v;
    if ((ret->has_timestamp = header_be(h, "kafka_dlt-original-timestamp", 8, &v)))
        ret->timestamp = (int64_t)v;
    ret->timestamp_type = header(h, "kafka_dlt-original-timestamp-type");
    ret->group = header(h, "kafka_dlt-original-consumer-group");
    ret->fqcn = header(h, "kafka_dlt-exception-fqcn");
    ret->cause_fqcn = header(h, "kafka_dlt-exception-cause-fqcn");
    ret->message = header(h, "kafka_dlt-exception-message");
}

bool oc_dlt_is_poison(const oc_dlt_info *d)
{
    size_t n = strlen(CM_DLT_FQCN_DESERIALIZATION);

    return d->cause_fqcn.p && d->cause_fqcn.n == n &&
           memcmp(d->cause_fqcn.p, CM_DLT_FQCN_DESERIALIZATION, n) == 0;
}

void oc_rfc3339_ms(int64_t ms, char out[32])
{
    time_t secs = (time_t)(ms / 1000);
    int frac = (int)(ms % 1000);
    struct tm tm;
    size_t n;

    if (frac < 0) {
        frac += 1000;
        secs--;
    }
    if (!gmtime_r(&secs, &tm) || (n = strftime(out, 32, "%Y-%m-%dT%H:%M:%S", &tm)) == 0) {
        snprintf(out, 32, "-");
        return;
    }
    snprintf(out + n, 32 - n, ".%03dZ", frac);
}

bool oc_dlt_header_dropped(const char *name)
{
    return strncmp(name, OC_DLT_HDR_PREFIX, strlen(OC_DLT_HDR_PREFIX)) == 0 ||
           strcmp(name, OC_HDR_REPLAYED_FROM) == 0;
}

int oc_record_id(const rd_kafka_message_t *m, char *out, size_t outlen)
{
    int n = snprintf(out, outlen, "%s/%d/%lld", rd_kafka_topic_name(m->rkt), (int)m->partition,
                     (long long)m->offset);
    return n < 0 || (size_t)n >= outlen ? -ENAMETOOLONG : 0;
}

/* ---------------------------------------------------------------- text */

/* Length of the valid UTF-8 sequence at p (at most n bytes) that is not a
 * C0/C1 control or DEL, else 0. */
static size_t printable_seq(const unsigned char *p, size_t n)
{
    size_t len = 0;

    if (p[0] < 0x80)
        return p[0] < 0x20 || p[0] == 0x7f ? 0 : 1;
    if (p[0] >= 0xc2 && p[0] < 0xe0)
        len = 2;
    else if (p[0] >= 0xe0 && p[0] < 0xf0)
        len = 3;
    else if (p[0] >= 0xf0 && p[0] < 0xf5)
        len = 4;
    if (len == 0 || len > n)
        return 0;
    for (size_t i = 1; i < len; i++)
        if ((p[i] & 0xc0) != 0x80)
            return 0;
    if ((len == 2 && p[0] == 0xc2 && p[1] < 0xa0) || (len == 3 && p[0] == 0xe0 && p[1] < 0xa0) ||
        (len == 3 && p[0] == 0xed && p[1] >= 0xa0) || (len == 4 && p[0] == 0xf0 && p[1] < 0x90) ||
        (len == 4 && p[0] == 0xf4 && p[1] >= 0x90))
        return 0; /* C1 control, overlong, surrogate or above U+10FFFF */
    return len;
}

void oc_put_escaped(FILE *f, const void *p, size_t n)
{
    const unsigned char *b = p;

    if (!p) {
        fputc('-', f);
        return;
    }
    for (size_t i = 0; i < n;) {
        size_t len = printable_seq(b + i, n - i);

        if (len == 0) {
            fprintf(f, "\\x%02x", b[i]);
            len = 1;
        } else if (b[i] == '\\') {
            fputs("\\\\", f);
        } else {
            fwrite(b + i, 1, len, f);
        }
        i += len;
    }
}

static void put_escaped(FILE *f, oc_bytes b)
{
    oc_put_escaped(f, b.p, b.n);
}

static void put_field(FILE *f, const char *label, oc_bytes b)
{
    fprintf(f, "  %-10s ", label);
    put_escaped(f, b);
    fputc('\n', f);
}

static void put_headers(FILE *f, const rd_kafka_headers_t *h)
{
    const char *name;
    const void *v;
    size_t n, shown = 0;

    fprintf(f, "  %-10s ", "headers:");
    for (size_t i = 0; h && rd_kafka_header_get_all(h, i, &name, &v, &n) == 0; i++) {
        if (strncmp(name, OC_DLT_HDR_PREFIX, strlen(OC_DLT_HDR_PREFIX)) == 0)
            continue;
        fprintf(f, "%s", shown++ ? ", " : "");
        put_escaped(f, (oc_bytes){name, strlen(name)});
        fputc('=', f);
        put_escaped(f, (oc_bytes){v ? v : "", v ? n : 0});
    }
    fprintf(f, "%s\n", shown ? "" : "-");
}

static void put_original(FILE *f, const oc_dlt_info *d)
{
    char ts[32] = "-";

    if (d->has_timestamp)
        oc_rfc3339_ms(d->timestamp, ts);
    fprintf(f, "  %-10s ", "original:");
    put_escaped(f, d->topic);
    if (d->has_partition)
        fprintf(f, "/%d", (int)d->partition);
    else
        fputs("/-", f);
    if (d->has_offset)
        fprintf(f, "/%lld", (long long)d->offset);
    else
        fputs("/-", f);
    fprintf(f, " at %s (", ts);
    put_escaped(f, d->timestamp_type);
    fputs(")\n", f);
}

int oc_dlt_print_text(FILE *f, const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    char when[32] = "-";
    oc_dlt_info d;

    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    oc_dlt_decode(h, &d);
    if (ts >= 0)
        oc_rfc3339_ms(ts, when);
    fprintf(f, "%s/%d/%lld at %s\n", rd_kafka_topic_name(m->rkt), (int)m->partition,
            (long long)m->offset, when);
    put_original(f, &d);
    put_field(f, "group:", d.group);
    put_field(f, "exception:", d.fqcn);
    put_field(f, "cause:", d.cause_fqcn);
    put_field(f, "reason:", d.message);
    put_field(f, "key:", (oc_bytes){m->key, m->key ? m->key_len : 0});
    put_headers(f, h);
    put_field(f, "payload:", (oc_bytes){m->payload, m->payload ? m->len : 0});
    fputc('\n', f);
    return ferror(f) ? -EIO : 0;
}

/* ---------------------------------------------------------------- JSON */

static char *base64(const void *p, size_t n)
{
    static const char tab[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *b = p;
    char *out = malloc((n + 2) / 3 * 4 + 1), *o = out;

    if (!out)
        return NULL;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)b[i] << 16;

        if (i + 1 < n)
            v |= (uint32_t)b[i + 1] << 8;
        if (i + 2 < n)
            v |= b[i + 2];
        *o++ = tab[(v >> 18) & 63];
        *o++ = tab[(v >> 12) & 63];
        *o++ = i + 1 < n ? tab[(v >> 6) & 63] : '=';
        *o++ = i + 2 < n ? tab[v & 63] : '=';
    }
    *o = '\0';
    return out;
}

/* Sets obj[name] to the bytes as a string, or, when they are not UTF-8,
 * obj[name + "Base64"] to their base64; null when absent. */
static int set_bytes(json_t *obj, const char *name, oc_bytes b)
{
    char alt[64];
    char *enc;
    json_t *v;

    if (!b.p)
        return json_object_set_new(obj, name, json_null());
    v = json_stringn(b.p, b.n);
    if (v)
        return json_object_set_new(obj, name, v);
    snprintf(alt, sizeof(alt), "%sBase64", name);
    enc = base64(b.p, b.n);
    if (!enc)
        return -1;
    v = json_string(enc);
    free(enc);
    return json_object_set_new(obj, alt, v);
}

static json_t *json_headers(const rd_kafka_headers_t *h)
{
    json_t *arr = json_array();
    const char *name;
    const void *v;
    size_t n;

    for (size_t i = 0; arr && h && rd_kafka_header_get_all(h, i, &name, &v, &n) == 0; i++) {
        json_t *o;

        if (strncmp(name, OC_DLT_HDR_PREFIX, strlen(OC_DLT_HDR_PREFIX)) == 0)
            continue;
        o = json_object();
        if (!o || set_bytes(o, "name", (oc_bytes){name, strlen(name)}) < 0 ||
            set_bytes(o, "value", (oc_bytes){v ? v : "", v ? n : 0}) < 0 ||
            json_array_append_new(arr, o) < 0) {
            json_decref(arr);
            return NULL;
        }
    }
    return arr;
}

static json_t *json_time(bool has, int64_t ms)
{
    char buf[32];

    if (!has)
        return json_null();
    oc_rfc3339_ms(ms, buf);
    return json_string(buf);
}

static json_t *json_original(const rd_kafka_message_t *m, const rd_kafka_headers_t *h)
{
    rd_kafka_timestamp_type_t tstype;
    int64_t ts = rd_kafka_message_timestamp(m, &tstype);
    oc_dlt_info d;
    json_t *o;

    oc_dlt_decode(h, &d);
    o = json_pack("{s:s,s:i,s:I,s:o}", "dltTopic", rd_kafka_topic_name(m->rkt), "dltPartition",
                  (int)m->partition, "dltOffset", (json_int_t)m->offset, "timestamp",
                  json_time(ts >= 0, ts));
    if (!o || set_bytes(o, "originalTopic", d.topic) < 0 ||
        json_object_set_new(o, "originalPartition",
                            d.has_partition ? json_integer(d.partition) : json_null()) < 0 ||
        json_object_set_new(o, "originalOffset",
                            d.has_offset ? json_integer(d.offset) : json_null()) < 0 ||
        json_object_set_new(o, "originalTimestamp", json_time(d.has_timestamp, d.timestamp)) < 0 ||
        set_bytes(o, "originalTimestampType", d.timestamp_type) < 0 ||
        set_bytes(o, "consumerGroup", d.group) < 0 || set_bytes(o, "exceptionFqcn", d.fqcn) < 0 ||
        set_bytes(o, "exceptionCauseFqcn", d.cause_fqcn) < 0 ||
        set_bytes(o, "exceptionMessage", d.message) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *oc_dlt_json(const rd_kafka_message_t *m)
{
    rd_kafka_headers_t *h = NULL;
    json_t *o;

    if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
        h = NULL;
    o = json_original(m, h);
    if (!o || set_bytes(o, "key", (oc_bytes){m->key, m->key ? m->key_len : 0}) < 0 ||
        set_bytes(o, "payload", (oc_bytes){m->payload, m->payload ? m->len : 0}) < 0 ||
        json_object_set_new(o, "headers", json_headers(h)) < 0) {
        json_decref(o);
        return NULL;
    }
    return o;
}

int oc_dlt_print_json(FILE *f, const rd_kafka_message_t *m)
{
    json_t *o = oc_dlt_json(m);
    int r = 0;

    if (!o)
        r = -ENOMEM;
    else if (json_dumpf(o, f, JSON_COMPACT | JSON_PRESERVE_ORDER) < 0 || fputc('\n', f) == EOF)
        r = -EIO;
    json_decref(o);
    return r;
}
