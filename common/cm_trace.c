/*
 * cm_trace.c - see cm_trace.h.
 *
 * The ring is an array of fixed-size span records; a producer (any thread)
 * copies its span into the next free record under the mutex, the sender
 * takes up to SEND_BATCH records at a time. Encoding (jansson) and the POST
 * (cm_httpc) happen on the sender thread only, outside the mutex.
 */
#include "cm_trace.h"

#include "cm_httpc.h"
#include "cm_log.h"
#include "ev_event.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Spans per POST; also the queue length that wakes the sender at once. */
#define SEND_BATCH 512
/* How often the sender sends what is queued when fewer than SEND_BATCH. */
#define SEND_INTERVAL_MS 1000
/* One POST's bound: a collector slower than this costs its batch. */
#define SEND_TIMEOUT_MS 2000
/* The stop's bound for sending what is still queued. */
#define STOP_FLUSH_MS 2000
#define SPANS_PATH "/api/v2/spans"

typedef struct {
    cm_span_ctx ctx;
    cm_span_kind kind;
    long long end_us;
    const char *remote;
    char name[CM_SPAN_NAME_MAX];
    int ntags;
    const char *keys[CM_SPAN_TAGS];
    char values[CM_SPAN_TAGS][CM_SPAN_TAG_MAX];
} span_rec;

struct cm_tracer {
    cm_httpc_url url;
    char url_text[512]; /* for log lines */
    double ratio;
    const char *service;
    cm_metrics *metrics;
    pthread_mutex_t mu;
    pthread_cond_t cond; /* CLOCK_MONOTONIC */
    span_rec *ring;
    size_t cap, head, count;
    bool stop;
    struct timespec stop_deadline;
    pthread_t thread;
    atomic_ulong dropped_full; /* not yet added to the metric */
    /* sender thread only */
    span_rec *batch;
    bool down;
    unsigned long down_dropped;
};

static const char *const kind_names[] = {"SERVER", "CLIENT", "PRODUCER", "CONSUMER"};

long long cm_trace_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int parse_ratio(const char *s, double *ret, char *err, size_t errlen)
{
    char *end;
    double v;

    errno = 0;
    v = s ? strtod(s, &end) : 0;
    if (!s || !*s || end == s || *end || errno || !(v >= 0.0 && v <= 1.0)) {
        snprintf(err, errlen,
                 "invalid TRACING_SAMPLE_RATIO=\"%s\": must be a number from 0 to 1 (0.1 = one "
                 "trace in ten)",
                 s ? s : "");
        return -EINVAL;
    }
    *ret = v;
    return 0;
}

int cm_trace_config_check(const cm_trace_config *cfg, char *err, size_t errlen)
{
    cm_httpc_url url;
    char why[256];
    double ratio;
    int r = parse_ratio(cfg->sample_ratio, &ratio, err, errlen);

    if (r < 0 || !cfg->url || !cfg->url[0])
        return r;
    if (cm_httpc_parse_url(cfg->url, &url, why, sizeof(why)) < 0) {
        snprintf(err, errlen,
                 "invalid TRACING_URL=\"%s\": %s (expected the collector's base URL, e.g. "
                 "http://127.0.0.1:9411)",
                 cfg->url, why);
        return -EINVAL;
    }
    if (cfg->queue < CM_TRACE_QUEUE_MIN || cfg->queue > CM_TRACE_QUEUE_MAX) {
        snprintf(err, errlen, "invalid TRACING_QUEUE=%lld: must be between %d and %d", cfg->queue,
                 CM_TRACE_QUEUE_MIN, CM_TRACE_QUEUE_MAX);
        return -EINVAL;
    }
    return 0;
}

bool cm_traceparent_parse(const char *tp, char trace_id[33], char span_id[17], bool *sampled)
{
    if (!tp || !ev_traceparent_valid(tp, strlen(tp)))
        return false;
    memcpy(trace_id, tp + 3, 32);
    trace_id[32] = '\0';
    memcpy(span_id, tp + 36, 16);
    span_id[16] = '\0';
    /* flags: two hex digits, bit 0 is "sampled" */
    char lo = tp[54];
    int v = lo >= 'a' ? lo - 'a' + 10 : lo - '0';
    *sampled = (v & 1) != 0;
    return true;
}

bool cm_trace_sampled_at(const char *trace_id, double ratio)
{
    uint64_t v = 0;

    if (ratio >= 1.0)
        return true;
    if (ratio <= 0.0)
        return false;
    for (int i = 16; i < 32; i++) {
        char c = trace_id[i];
        v = (v << 4) | (uint64_t)(c >= 'a' ? c - 'a' + 10 : c - '0');
    }
    return (double)v < ratio * 18446744073709551616.0;
}

bool cm_trace_start(cm_tracer *t, const char *parent, bool root, cm_span_ctx *ctx)
{
    if (!t)
        return false;
    if (cm_traceparent_parse(parent, ctx->trace_id, ctx->parent_id, &ctx->sampled)) {
        /* the parent's decision stands */
    } else if (root) {
        char tp[56];
        ev_traceparent_new(tp);
        memcpy(ctx->trace_id, tp + 3, 32);
        ctx->trace_id[32] = '\0';
        ctx->parent_id[0] = '\0';
        ctx->sampled = cm_trace_sampled_at(ctx->trace_id, t->ratio);
    } else {
        return false;
    }
    ev_span_id(ctx->span_id);
    ctx->start_us = cm_trace_now_us();
    return ctx->sampled;
}

void cm_trace_traceparent(const cm_span_ctx *ctx, char out[56])
{
    memcpy(out, "00-", 3);
    memcpy(out + 3, ctx->trace_id, 32);
    out[35] = '-';
    memcpy(out + 36, ctx->span_id, 16);
    memcpy(out + 52, ctx->sampled ? "-01" : "-00", 4);
}

static void copy_cut(char *dst, const char *src, size_t max)
{
    size_t n = strnlen(src, max - 1);
    memcpy(dst, src, n);
    dst[n] = '\0';
}

void cm_trace_end(cm_tracer *t, const cm_span_ctx *ctx, cm_span_kind kind, const char *name,
                  const char *remote, const cm_span_tag *tags, int ntags, long long end_us)
{
    span_rec *s;

    if (!t || !ctx->sampled)
        return;
    if (!end_us)
        end_us = cm_trace_now_us();
    pthread_mutex_lock(&t->mu);
    if (t->count == t->cap) {
        pthread_mutex_unlock(&t->mu);
        atomic_fetch_add(&t->dropped_full, 1);
        return;
    }
    s = &t->ring[(t->head + t->count) % t->cap];
    s->ctx = *ctx;
    s->kind = kind;
    s->end_us = end_us;
    s->remote = remote;
    copy_cut(s->name, name, sizeof(s->name));
    s->ntags = 0;
    for (int i = 0; i < ntags && s->ntags < CM_SPAN_TAGS; i++) {
        if (!tags[i].value)
            continue;
        s->keys[s->ntags] = tags[i].key;
        copy_cut(s->values[s->ntags++], tags[i].value, CM_SPAN_TAG_MAX);
    }
    if (++t->count == SEND_BATCH)
        pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->mu);
}

/* ---- sender ---- */

/* Tag values come from clients (order ids, routes) and are cut at a byte
 * limit: anything but printable ASCII becomes '?', so that jansson (UTF-8
 * only) never refuses a span. */
static json_t *ascii_string(const char *s)
{
    char buf[CM_SPAN_TAG_MAX];
    size_t i = 0;

    for (; s[i] && i + 1 < sizeof(buf); i++)
        buf[i] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : '?';
    buf[i] = '\0';
    return json_string(buf);
}

static json_t *span_json(const cm_tracer *t, const span_rec *s)
{
    json_t *tags = json_object(), *o;
    long long dur = s->end_us - s->ctx.start_us;

    for (int i = 0; i < s->ntags; i++)
        json_object_set_new(tags, s->keys[i], ascii_string(s->values[i]));
    o = json_pack("{s:s, s:s, s:o, s:s, s:I, s:I, s:{s:s}, s:o}", "traceId", s->ctx.trace_id, "id",
                  s->ctx.span_id, "name", ascii_string(s->name), "kind", kind_names[s->kind],
                  "timestamp", (json_int_t)s->ctx.start_us, "duration",
                  (json_int_t)(dur > 0 ? dur : 1), "localEndpoint", "serviceName", t->service,
                  "tags", tags);
    if (o && s->ctx.parent_id[0])
        json_object_set_new(o, "parentId", json_string(s->ctx.parent_id));
    if (o && s->remote)
        json_object_set_new(o, "remoteEndpoint", json_pack("{s:s}", "serviceName", s->remote));
    return o;
}

static long long mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void count_dropped(cm_tracer *t, const char *reason, unsigned long n)
{
    char labels[64];

    if (!n)
        return;
    snprintf(labels, sizeof(labels), "reason=\"%s\"", reason);
    cm_metrics_add(t->metrics, "orders_spans_dropped_total", labels, (double)n);
}

/* POSTs batch[0..n-1]; counts it as sent or dropped; logs an outage once at
 * its start and once at its end. */
static void send_batch(cm_tracer *t, int n, int timeout_ms)
{
    static const char *const headers[] = {"Content-Type: application/json", NULL};
    cm_httpc_opts opts = {.timeout_ms = timeout_ms, .max_body = 65536};
    cm_httpc_response resp = {0};
    json_t *arr = json_array();
    char err[256] = "", *body = NULL;
    int r = -ENOMEM;

    for (int i = 0; i < n && arr; i++) {
        json_t *o = span_json(t, &t->batch[i]);
        if (o)
            json_array_append_new(arr, o);
    }
    if (arr)
        body = json_dumps(arr, JSON_COMPACT);
    json_decref(arr);
    if (body)
        r = cm_httpc_request(&t->url, &opts, "POST", SPANS_PATH, headers, body, strlen(body), &resp,
                             err, sizeof(err));
    else
        snprintf(err, sizeof(err), "out of memory encoding spans");
    if (r == 0 && (resp.status < 200 || resp.status > 299)) {
        snprintf(err, sizeof(err), "HTTP %d: %.120s", resp.status, resp.body ? resp.body : "");
        r = -EPROTO;
    }
    free(body);
    cm_httpc_response_free(&resp);
    if (r == 0) {
        cm_metrics_add(t->metrics, "orders_spans_sent_total", "", n);
        if (t->down)
            log_info("tracing collector answers again url=%s spans_dropped_meanwhile=%lu",
                     t->url_text, t->down_dropped);
        t->down = false;
        return;
    }
    count_dropped(t, "send_failed", (unsigned long)n);
    if (!t->down) {
        log_warning("tracing collector unreachable, spans are dropped until it answers url=%s "
                    "error=\"%s\"",
                    t->url_text, err);
        t->down = true;
        t->down_dropped = 0;
    }
    t->down_dropped += (unsigned long)n;
}

/* Takes up to SEND_BATCH spans off the ring (mutex held). */
static int take(cm_tracer *t)
{
    int n = 0;

    while (t->count > 0 && n < SEND_BATCH) {
        t->batch[n++] = t->ring[t->head];
        t->head = (t->head + 1) % t->cap;
        t->count--;
    }
    return n;
}

static void *sender_main(void *arg)
{
    cm_tracer *t = arg;

    for (;;) {
        struct timespec deadline;
        bool stopping;
        int n, timeout = SEND_TIMEOUT_MS;

        clock_gettime(CLOCK_MONOTONIC, &deadline);
        deadline.tv_sec += SEND_INTERVAL_MS / 1000;
        pthread_mutex_lock(&t->mu);
        while (!t->stop && t->count < SEND_BATCH)
            if (pthread_cond_timedwait(&t->cond, &t->mu, &deadline) == ETIMEDOUT)
                break;
        n = take(t);
        stopping = t->stop;
        if (stopping) {
            long long left =
                t->stop_deadline.tv_sec * 1000LL + t->stop_deadline.tv_nsec / 1000000 - mono_ms();
            timeout = left < 1 ? 0 : (left < SEND_TIMEOUT_MS ? (int)left : SEND_TIMEOUT_MS);
        }
        pthread_mutex_unlock(&t->mu);
        count_dropped(t, "queue_full", atomic_exchange(&t->dropped_full, 0));
        if (n > 0 && (!stopping || timeout > 0))
            send_batch(t, n, timeout);
        else if (n > 0)
            count_dropped(t, "stopped", (unsigned long)n);
        if (stopping && (n == 0 || timeout == 0))
            break;
    }
    pthread_mutex_lock(&t->mu);
    if (t->count > 0)
        log_warning("tracing stopped with spans not sent count=%zu (the stop waits at most %d ms)",
                    t->count, STOP_FLUSH_MS);
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

int cm_tracer_new(const cm_trace_config *cfg, cm_metrics *metrics, cm_tracer **ret, char *err,
                  size_t errlen)
{
    pthread_condattr_t ca;
    cm_tracer *t;
    int r;

    *ret = NULL;
    if ((r = cm_trace_config_check(cfg, err, errlen)) < 0 || !cfg->url[0])
        return r;
    if (!(t = calloc(1, sizeof(*t))))
        goto nomem;
    t->cap = (size_t)cfg->queue;
    t->ring = calloc(t->cap, sizeof(*t->ring));
    t->batch = calloc(SEND_BATCH, sizeof(*t->batch));
    if (!t->ring || !t->batch)
        goto nomem;
    cm_httpc_parse_url(cfg->url, &t->url, err, errlen);
    snprintf(t->url_text, sizeof(t->url_text), "%s", cfg->url);
    parse_ratio(cfg->sample_ratio, &t->ratio, err, errlen);
    t->service = cfg->service;
    t->metrics = metrics;
    pthread_mutex_init(&t->mu, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&t->cond, &ca);
    pthread_condattr_destroy(&ca);
    /* The series exist from the start, so a scrape shows 0, not nothing. */
    cm_metrics_add(metrics, "orders_spans_sent_total", "", 0);
    cm_metrics_add(metrics, "orders_spans_dropped_total", "reason=\"queue_full\"", 0);
    cm_metrics_add(metrics, "orders_spans_dropped_total", "reason=\"send_failed\"", 0);
    if ((r = pthread_create(&t->thread, NULL, sender_main, t)) != 0) {
        pthread_cond_destroy(&t->cond);
        pthread_mutex_destroy(&t->mu);
        free(t->ring);
        free(t->batch);
        free(t);
        snprintf(err, errlen, "could not start the span sender: %s", strerror(r));
        return -r;
    }
    pthread_setname_np(t->thread, "trace-sender");
    log_info("tracing on url=%s%s sample_ratio=%g queue=%zu", cfg->url, SPANS_PATH, t->ratio,
             t->cap);
    *ret = t;
    return 0;
nomem:
    if (t) {
        free(t->ring);
        free(t->batch);
    }
    free(t);
    snprintf(err, errlen, "out of memory for a span queue of %lld", cfg->queue);
    return -ENOMEM;
}

void cm_tracer_stop(cm_tracer *t)
{
    if (!t)
        return;
    pthread_mutex_lock(&t->mu);
    clock_gettime(CLOCK_MONOTONIC, &t->stop_deadline);
    t->stop_deadline.tv_sec += STOP_FLUSH_MS / 1000;
    t->stop = true;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_cond_destroy(&t->cond);
    pthread_mutex_destroy(&t->mu);
    free(t->ring);
    free(t->batch);
    free(t);
}
