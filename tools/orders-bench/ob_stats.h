/*
 * ob_stats.h - the figures of a run, computed once from its order records:
 * latency series (sorted, nanoseconds) with nearest-rank percentiles, and
 * throughput.
 */
#pragma once

#include "ob_run.h"

#include <stddef.h>
#include <stdint.h>

typedef struct {
    int64_t *v; /* ascending */
    size_t n;
} ob_series;

/* The value at percentile pct (0..100), nearest rank; 0 if empty. */
int64_t ob_series_pct(const ob_series *s, double pct);
double ob_series_mean(const ob_series *s);

typedef struct {
    ob_series post;                    /* intended send -> 202 */
    ob_series settle;                  /* intended send -> settled_at */
    ob_series saga;                    /* created_at -> settled_at (server clock only) */
    ob_series service;                 /* actual send -> 202 */
    int64_t settled;                   /* 202'd orders CONFIRMED or REJECTED */
    double post_span_s, settle_span_s; /* t0 -> last response; t0 -> last settled_at */
    double post_per_s, settled_per_s;
} ob_results;

/* Computes the results of a run. Returns 0 or -ENOMEM. */
int ob_results_compute(const ob_run *run, ob_results *ret);
void ob_results_free(ob_results *r);
