/*
 * cm_metrics.h - counters, gauges and histograms rendered in the Prometheus
 * text exposition format (version 0.0.4) for GET /metrics.
 *
 * A series is a metric name plus a preformatted label set such as
 * `topic="orders.created",outcome="applied"`. Label values come from closed
 * sets (topic names, route patterns, fixed words), never straight from a
 * client: every distinct value is a series kept for the life of the daemon.
 * A value that could hold any other byte goes through
 * cm_metrics_label_value() first. Every metric is declared
 * once with cm_metrics_describe() before use; updates from any thread are
 * serialised by one mutex, which is cheap at our rates (a few per record).
 */
#pragma once

#include <stddef.h>

typedef enum {
    CM_METRIC_COUNTER,
    CM_METRIC_GAUGE,
    CM_METRIC_HISTOGRAM, /* seconds, fixed buckets 1 ms .. 60 s (1-2-5 steps) */
} cm_metric_type;

typedef struct cm_metrics cm_metrics;

int cm_metrics_new(cm_metrics **ret);
void cm_metrics_free(cm_metrics *m);

/* Declares a metric; name and help must be string literals (not copied). */
void cm_metrics_describe(cm_metrics *m, const char *name, cm_metric_type type, const char *help);

/* Counter: adds v. Gauge: cm_metrics_set replaces the value. Histogram:
 * cm_metrics_observe records one observation. Unknown names are ignored, so
 * a NULL m or an undeclared metric never breaks the caller. */
void cm_metrics_add(cm_metrics *m, const char *name, const char *labels, double v);
void cm_metrics_set(cm_metrics *m, const char *name, const char *labels, double v);
void cm_metrics_observe(cm_metrics *m, const char *name, const char *labels, double seconds);

/* Removes every series of a gauge (e.g. lag of partitions no longer owned). */
void cm_metrics_clear(cm_metrics *m, const char *name);

/* Writes s into out (size outlen > 0) as the text of a label value, between
 * the quotes: backslash, double quote and newline escaped as the exposition
 * format says, every other byte outside printable ASCII replaced by '?', so
 * that the result is always valid (and valid UTF-8). Cut at outlen - 1
 * bytes, never inside an escape. NULL s gives "". Returns out. */
const char *cm_metrics_label_value(const char *s, char *out, size_t outlen);

/* Renders all series; returns a malloc'd NUL-terminated text or NULL. */
char *cm_metrics_render(cm_metrics *m);
