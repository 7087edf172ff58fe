/*
 * cm_trace.h - spans of the W3C trace in each record's traceparent, sent to
 * a Zipkin-compatible collector (POST <url>/api/v2/spans, Zipkin v2 JSON).
 *
 * Off unless TRACING_URL is set: then cm_tracer_new() gives NULL and every
 * function here is a test of that pointer. On, a span costs the caller a
 * copy into a slot of a bounded ring under one mutex; it never blocks and
 * never allocates. One sender thread takes what is queued every second (or
 * at once when a batch is full), encodes it as JSON and POSTs it with a
 * timeout. A full ring drops the new span, a failed POST drops its batch:
 * both counted in orders_spans_dropped_total{reason}; sent spans in
 * orders_spans_sent_total. A collector that is down is logged once when the
 * outage starts and once when it ends.
 *
 * Sampling is decided once, where a trace starts (cm_trace_start() with
 * root = true and no valid parent): by the trace id against the ratio, so
 * the decision is the same wherever it is recomputed. Everywhere else the
 * sampled flag of the parent traceparent is honoured (W3C flags "01"/"00").
 */
#pragma once

#include "cm_metrics.h"

#include <stdbool.h>
#include <stddef.h>

typedef struct cm_tracer cm_tracer;

typedef enum {
    CM_SPAN_SERVER,
    CM_SPAN_CLIENT,
    CM_SPAN_PRODUCER,
    CM_SPAN_CONSUMER,
} cm_span_kind;

/* The identity and start of a span in progress: small, kept by the caller
 * (request state, consumer slot, outbox row) until the span ends. */
typedef struct {
    char trace_id[33];  /* 32 hex digits */
    char span_id[17];   /* 16 hex digits */
    char parent_id[17]; /* "" for the root of a trace */
    bool sampled;
    long long start_us; /* wall clock, microseconds since the epoch */
} cm_span_ctx;

/* A tag: key is a string literal (not copied); value is copied, cut at
 * CM_SPAN_TAG_MAX - 1 bytes. NULL values are left out. */
typedef struct {
    const char *key;
    const char *value;
} cm_span_tag;

#define CM_SPAN_TAGS 6
#define CM_SPAN_TAG_MAX 64
#define CM_SPAN_NAME_MAX 48

/* Default and bounds of TRACING_QUEUE (spans held for the sender). */
#define CM_TRACE_QUEUE_DEFAULT "4096"
#define CM_TRACE_QUEUE_MIN 16
#define CM_TRACE_QUEUE_MAX 1048576

typedef struct {
    const char *url;          /* Zipkin base URL; "" = tracing off */
    const char *sample_ratio; /* "0" .. "1" as text */
    long long queue;          /* ring size in spans */
    const char *service;      /* localEndpoint.serviceName; must outlive the tracer */
} cm_trace_config;

/* Checks cfg (URL parses, ratio within 0..1). Returns 0, or -EINVAL with a
 * message naming the variable in err. Nothing is started. */
int cm_trace_config_check(const cm_trace_config *cfg, char *err, size_t errlen);

/* Starts the tracer and its sender thread; with tracing off sets *ret to
 * NULL and returns 0. The metrics above are declared in metrics (not NULL).
 * Returns 0, -EINVAL (bad cfg, message in err) or -ENOMEM. */
int cm_tracer_new(const cm_trace_config *cfg, cm_metrics *metrics, cm_tracer **ret, char *err,
                  size_t errlen);

/* Sends what is queued (waiting at most 2 s in all), stops the sender and
 * frees the tracer. NULL is fine. */
void cm_tracer_stop(cm_tracer *t);

static inline bool cm_trace_on(const cm_tracer *t)
{
    return t != NULL;
}

/* Wall-clock microseconds, the unit of Zipkin's timestamps. */
long long cm_trace_now_us(void);

/* Begins a span as a child of parent (a traceparent, may be NULL or
 * invalid): a new span id, the start now. A valid parent gives its trace id,
 * its span id as parent id and its sampled flag. Without one, root = true
 * starts a new trace sampled at the configured ratio; root = false leaves
 * nothing to trace. Returns whether the span is sampled (then it must end
 * with cm_trace_end()); ctx holds the ids either way when a trace exists,
 * for the traceparent the work passes on (cm_trace_traceparent()). With
 * tracing off returns false and leaves ctx untouched. */
bool cm_trace_start(cm_tracer *t, const char *parent, bool root, cm_span_ctx *ctx);

/* Writes ctx as a traceparent "00-<trace>-<span>-<01|00>" (56 bytes with
 * the NUL): the parent of whatever this span's work causes. */
void cm_trace_traceparent(const cm_span_ctx *ctx, char out[56]);

/* Ends the span of ctx: queues it with its name (copied, cut at
 * CM_SPAN_NAME_MAX - 1), kind, tags (at most CM_SPAN_TAGS), the remote
 * side's service name (a literal such as "kafka", or NULL) and its end
 * (end_us, or now when 0). An unsampled ctx or a NULL t does nothing; a
 * full queue drops the span and counts it. Never blocks on the sender. */
void cm_trace_end(cm_tracer *t, const cm_span_ctx *ctx, cm_span_kind kind, const char *name,
                  const char *remote, const cm_span_tag *tags, int ntags, long long end_us);

/* Parses a traceparent into its trace id, span id and sampled flag.
 * Returns false (nothing written) if tp is NULL or not valid. */
bool cm_traceparent_parse(const char *tp, char trace_id[33], char span_id[17], bool *sampled);

/* The sampling decision for a new trace id at ratio (0..1): the trace id's
 * last 16 hex digits as a fraction of 2^64 below the ratio. */
bool cm_trace_sampled_at(const char *trace_id, double ratio);
