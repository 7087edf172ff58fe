/*
 * ob_stats.c - see ob_stats.h.
 */
#include "ob_stats.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

int64_t ob_series_pct(const ob_series *s, double pct)
{
    size_t k;

    if (s->n == 0)
        return 0;
    k = (size_t)ceil(pct / 100.0 * (double)s->n);
    if (k < 1)
        k = 1;
    if (k > s->n)
        k = s->n;
    return s->v[k - 1];
}

double ob_series_mean(const ob_series *s)
{
    double sum = 0;
    size_t i;

    for (i = 0; i < s->n; i++)
        sum += (double)s->v[i];
    return s->n ? sum / (double)s->n : 0;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

static void sort(ob_series *s)
{
    if (s->n > 1)
        qsort(s->v, s->n, sizeof(*s->v), cmp_i64);
}

int ob_results_compute(const ob_run *run, ob_results *ret)
{
    size_t cap = (size_t)run->n ? (size_t)run->n : 1;
    int64_t i;

    memset(ret, 0, sizeof(*ret));
    ret->post.v = malloc(cap * sizeof(int64_t));
    ret->settle.v = malloc(cap * sizeof(int64_t));
    ret->saga.v = malloc(cap * sizeof(int64_t));
    ret->service.v = malloc(cap * sizeof(int64_t));
    if (!ret->post.v || !ret->settle.v || !ret->saga.v || !ret->service.v) {
        ob_results_free(ret);
        return -ENOMEM;
    }
    for (i = 0; i < run->n; i++) {
        const ob_order *o = &run->orders[i];
        if (o->http_status != 202 || !o->id[0])
            continue;
        ret->post.v[ret->post.n++] = o->done_ns - o->intended_ns;
        ret->service.v[ret->service.n++] = o->done_ns - o->sent_ns;
        if (o->db != OB_DB_CONFIRMED && o->db != OB_DB_REJECTED)
            continue;
        ret->settle.v[ret->settle.n++] = o->settled_us * 1000 - (run->t0_real_ns + o->intended_ns);
        ret->saga.v[ret->saga.n++] = (o->settled_us - o->created_us) * 1000;
    }
    sort(&ret->post);
    sort(&ret->settle);
    sort(&ret->saga);
    sort(&ret->service);
    ret->settled = (int64_t)ret->settle.n;
    ret->post_span_s = (double)run->end_ns / 1e9;
    if (run->last_settled_us > 0)
        ret->settle_span_s = ((double)run->last_settled_us * 1000 - (double)run->t0_real_ns) / 1e9;
    if (ret->post_span_s > 0)
        ret->post_per_s = (double)run->accepted / ret->post_span_s;
    if (ret->settle_span_s > 0)
        ret->settled_per_s = (double)ret->settled / ret->settle_span_s;
    return 0;
}

void ob_results_free(ob_results *r)
{
    free(r->post.v);
    free(r->settle.v);
    free(r->saga.v);
    free(r->service.v);
    memset(r, 0, sizeof(*r));
}
