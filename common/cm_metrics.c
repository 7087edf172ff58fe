/*
 * cm_metrics.c - see cm_metrics.h. Series live in a flat array searched
 * linearly: a daemon has a few dozen of them.
 */
#include "cm_metrics.h"

#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* 1-2-5 steps from 1 ms to 10 s, then 30 s and 60 s: one set resolves an
 * HTTP request (milliseconds) and an order's settlement (which waits for two
 * services and, in an outage, for minutes). */
#define NBUCKETS 15
static const double bucket_le[NBUCKETS] = {0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2,
                                           0.5,   1,     2,     5,    10,   30,   60};

typedef struct {
    const char *name;
    const char *help;
    cm_metric_type type;
} descriptor;

typedef struct {
    int desc;     /* index into descriptors */
    char *labels; /* owned */
    double value; /* counter/gauge value; histogram sum */
    unsigned long long count;
    unsigned long long buckets[NBUCKETS];
} series;

struct cm_metrics {
    pthread_mutex_t lock;
    descriptor descs[64];
    size_t ndescs;
    series *series;
    size_t nseries, cap;
};

int cm_metrics_new(cm_metrics **ret)
{
    cm_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return -ENOMEM;
    pthread_mutex_init(&m->lock, NULL);
    *ret = m;
    return 0;
}

void cm_metrics_free(cm_metrics *m)
{
    if (!m)
        return;
    for (size_t i = 0; i < m->nseries; i++)
        free(m->series[i].labels);
    free(m->series);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

void cm_metrics_describe(cm_metrics *m, const char *name, cm_metric_type type, const char *help)
{
    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    if (m->ndescs < sizeof(m->descs) / sizeof(m->descs[0]))
        m->descs[m->ndescs++] = (descriptor){name, help, type};
    pthread_mutex_unlock(&m->lock);
}

static int find_desc(cm_metrics *m, const char *name)
{
    for (size_t i = 0; i < m->ndescs; i++)
        if (strcmp(m->descs[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Returns the series for (name, labels), creating it; NULL if unknown. Called
 * with the lock held. */
static series *lookup(cm_metrics *m, const char *name, const char *labels)
{
    int d = find_desc(m, name);
    series *s;

    if (d < 0)
        return NULL;
    labels = labels ? labels : "";
    for (size_t i = 0; i < m->nseries; i++)
        if (m->series[i].desc == d && strcmp(m->series[i].labels, labels) == 0)
            return &m->series[i];
    if (m->nseries == m->cap) {
        size_t cap = m->cap ? m->cap * 2 : 32;
        series *ns = realloc(m->series, cap * sizeof(*ns));
        if (!ns)
            return NULL;
        m->series = ns;
        m->cap = cap;
    }
    s = &m->series[m->nseries];
    memset(s, 0, sizeof(*s));
    s->desc = d;
    s->labels = strdup(labels);
    if (!s->labels)
        return NULL;
    m->nseries++;
    return s;
}

static void update(cm_metrics *m, const char *name, const char *labels, double v, int op)
{
    series *s;

    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    s = lookup(m, name, labels);
    if (s && op == 0) {
        s->value += v;
    } else if (s && op == 1) {
        s->value = v;
    } else if (s) {
        s->value += v;
        s->count++;
        for (int i = 0; i < NBUCKETS; i++)
            if (v <= bucket_le[i])
                s->buckets[i]++;
    }
    pthread_mutex_unlock(&m->lock);
}

void cm_metrics_add(cm_metrics *m, const char *name, const char *labels, double v)
{
    update(m, name, labels, v, 0);
}

void cm_metrics_set(cm_metrics *m, const char *name, const char *labels, double v)
{
    update(m, name, labels, v, 1);
}

void cm_metrics_observe(cm_metrics *m, const char *name, const char *labels, double seconds)
{
    update(m, name, labels, seconds, 2);
}

void cm_metrics_clear(cm_metrics *m, const char *name)
{
    size_t w = 0;
    int d;

    if (!m)
        return;
    pthread_mutex_lock(&m->lock);
    d = find_desc(m, name);
    for (size_t i = 0; i < m->nseries; i++) {
        if (m->series[i].desc == d)
            free(m->series[i].labels);
        else
            m->series[w++] = m->series[i];
    }
    m->nseries = w;
    pthread_mutex_unlock(&m->lock);
}

const char *cm_metrics_label_value(const char *s, char *out, size_t outlen)
{
    size_t o = 0;

    if (outlen == 0)
        return out;
    for (; s && *s; s++) {
        unsigned char c = (unsigned char)*s;
        const char *esc = c == '\\' ? "\\\\" : c == '"' ? "\\\"" : c == '\n' ? "\\n" : NULL;
        size_t n = esc ? 2 : 1;

        if (o + n >= outlen)
            break;
        if (esc)
            memcpy(out + o, esc, 2);
        else
            out[o] = (c >= 0x20 && c < 0x7f) ? (char)c : '?';
        o += n;
    }
    out[o] = '\0';
    return out;
}

typedef struct {
    char *buf;
    size_t len, cap;
    int failed;
} sbuf;

static void put(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(sbuf *b, const char *fmt, ...)
{
    va_list ap;
    int n;

    for (;;) {
        va_start(ap, fmt);
        n = vsnprintf(b->buf ? b->buf + b->len : NULL, b->buf ? b->cap - b->len : 0, fmt, ap);
        va_end(ap);
        if (n < 0) {
            b->failed = 1;
            return;
        }
        if (b->buf && b->len + (size_t)n < b->cap) {
            b->len += (size_t)n;
            return;
        }
        size_t cap = (b->cap ? b->cap * 2 : 4096) + (size_t)n;
        char *nb = realloc(b->buf, cap);
        if (!nb) {
            b->failed = 1;
            return;
        }
        b->buf = nb;
        b->cap = cap;
    }
}

static void render_series(sbuf *b, const descriptor *d, const series *s)
{
    const char *sep = s->labels[0] ? "," : "";

    if (d->type != CM_METRIC_HISTOGRAM) {
        put(b, "%s%s%s%s %.17g\n", d->name, s->labels[0] ? "{" : "", s->labels,
            s->labels[0] ? "}" : "", s->value);
        return;
    }
    for (int i = 0; i < NBUCKETS; i++)
        put(b, "%s_bucket{%s%sle=\"%g\"} %llu\n", d->name, s->labels, sep, bucket_le[i],
            s->buckets[i]);
    put(b, "%s_bucket{%s%sle=\"+Inf\"} %llu\n", d->name, s->labels, sep, s->count);
    put(b, "%s_sum%s%s%s %.17g\n", d->name, s->labels[0] ? "{" : "", s->labels,
        s->labels[0] ? "}" : "", s->value);
    put(b, "%s_count%s%s%s %llu\n", d->name, s->labels[0] ? "{" : "", s->labels,
        s->labels[0] ? "}" : "", s->count);
}

char *cm_metrics_render(cm_metrics *m)
{
    static const char *types[] = {"counter", "gauge", "histogram"};
    sbuf b = {0};

    pthread_mutex_lock(&m->lock);
    for (size_t d = 0; d < m->ndescs; d++) {
        put(&b, "# HELP %s %s\n# TYPE %s %s\n", m->descs[d].name, m->descs[d].help,
            m->descs[d].name, types[m->descs[d].type]);
        for (size_t i = 0; i < m->nseries; i++)
            if (m->series[i].desc == (int)d)
                render_series(&b, &m->descs[d], &m->series[i]);
    }
    pthread_mutex_unlock(&m->lock);
    if (b.failed) {
        free(b.buf);
        return NULL;
    }
    return b.buf;
}
