/*
 * ob_report.c - see ob_report.h.
 */
#include "ob_report.h"

#include <inttypes.h>
#include <jansson.h>
#include <string.h>

static const char *const kind_names[] = {"daemon", "broker", "postgres", "self"};

static ob_group *group_of(ob_group *g, size_t *n, size_t max, const ob_proc *p)
{
    size_t i;

    for (i = 0; i < *n; i++)
        if (g[i].kind == p->kind && g[i].counted == p->counted && strcmp(g[i].label, p->label) == 0)
            return &g[i];
    if (*n == max)
        return NULL;
    memset(&g[*n], 0, sizeof(g[*n]));
    snprintf(g[*n].label, sizeof(g[*n].label), "%s", p->label);
    g[*n].kind = p->kind;
    g[*n].counted = p->counted;
    g[*n].rss_kb = g[*n].anon_kb = -1;
    return &g[(*n)++];
}

static void add_mem(long *sum, long v)
{
    if (v >= 0)
        *sum = (*sum < 0 ? 0 : *sum) + v;
}

size_t ob_report_groups(const ob_procs *ps, ob_group *out, size_t max)
{
    size_t n = 0, i;
    int kind;

    for (kind = OB_PROC_DAEMON; kind <= OB_PROC_SELF; kind++) {
        for (i = 0; i < ps->n; i++) {
            const ob_proc *p = &ps->v[i];
            ob_group *g;
            if ((int)p->kind != kind || !(g = group_of(out, &n, max, p)))
                continue;
            int64_t w = ob_proc_wakeups(p);
            g->wakeups = w < 0 || g->wakeups < 0 ? -1 : g->wakeups + w;
            g->pids++;
            g->cpu_us += ob_proc_cpu_us(p);
            add_mem(&g->rss_kb, p->rss_kb);
            add_mem(&g->anon_kb, p->anon_kb);
        }
        if (kind == OB_PROC_POSTGRES && ps->unattributed_us > 0 && n < max) {
            ob_group *g = &out[n++];
            memset(g, 0, sizeof(*g));
            snprintf(g->label, sizeof(g->label), "postgres, exited between samples (anyone's)");
            g->kind = OB_PROC_POSTGRES;
            g->counted = false;
            g->cpu_us = ps->unattributed_us;
            g->wakeups = -1;
            g->rss_kb = g->anon_kb = -1;
        }
    }
    return n;
}

/* The counted groups' CPU (µs) and wake-ups (-1 if one could not be read). */
static void totals(const ob_procs *ps, int64_t *cpu_us, int64_t *wakeups)
{
    ob_group g[OB_GROUPS_MAX];
    size_t n = ob_report_groups(ps, g, OB_GROUPS_MAX), i;

    *cpu_us = *wakeups = 0;
    for (i = 0; i < n; i++)
        if (g[i].counted) {
            *cpu_us += g[i].cpu_us;
            *wakeups = g[i].wakeups < 0 || *wakeups < 0 ? -1 : *wakeups + g[i].wakeups;
        }
}

int64_t ob_report_wakeups_total(const ob_procs *ps)
{
    int64_t cpu, wakeups;

    totals(ps, &cpu, &wakeups);
    return wakeups;
}

int64_t ob_report_cpu_total_us(const ob_procs *ps)
{
    int64_t cpu, wakeups;

    totals(ps, &cpu, &wakeups);
    return cpu;
}

void ob_report_mode(const ob_run *run, char *buf, size_t len)
{
    const ob_opts *o = run->o;

    if (o->rate > 0)
        snprintf(buf, len, "open loop at %g orders/s, %" PRId64 " orders, %d connections", o->rate,
                 run->n, o->connections);
    else
        snprintf(buf, len, "closed loop, %" PRId64 " orders, %d connections", run->n,
                 o->connections);
}

/* ---- text ---- */

static void latency_row(FILE *out, const char *name, const ob_series *s)
{
    static const double pcts[] = {50, 90, 99, 99.9, 100};
    size_t i;

    fprintf(out, "  %-34s", name);
    if (s->n == 0) {
        fputs("       -\n", out);
        return;
    }
    for (i = 0; i < sizeof(pcts) / sizeof(pcts[0]); i++)
        fprintf(out, " %9.2f", (double)ob_series_pct(s, pcts[i]) / 1e6);
    fprintf(out, " %9.2f %8zu\n", ob_series_mean(s) / 1e6, s->n);
}

static void wake_col(FILE *out, int64_t wakeups, int64_t settled)
{
    if (wakeups < 0 || settled <= 0)
        fprintf(out, " %13s", "-");
    else
        fprintf(out, " %13.1f", (double)wakeups / (double)settled);
}

static void mem_col(FILE *out, long kb)
{
    if (kb < 0)
        fprintf(out, " %11s", "-");
    else
        fprintf(out, " %11.1f", (double)kb / 1024.0);
}

static void group_row(FILE *out, const ob_group *g, int64_t settled)
{
    if (g->pids > 0)
        fprintf(out, "  %-58s %4d %9.3f", g->label, g->pids, (double)g->cpu_us / 1e6);
    else
        fprintf(out, "  %-58s %4s %9.3f", g->label, "", (double)g->cpu_us / 1e6);
    if (settled > 0)
        fprintf(out, " %10.1f", (double)g->cpu_us / (double)settled);
    else
        fprintf(out, " %10s", "-");
    wake_col(out, g->wakeups, settled);
    mem_col(out, g->rss_kb);
    mem_col(out, g->anon_kb);
    fputc('\n', out);
}

static void processes_text(const ob_report *r, FILE *out)
{
    ob_group g[OB_GROUPS_MAX];
    size_t n = ob_report_groups(r->procs, g, OB_GROUPS_MAX), i;
    int64_t total = ob_report_cpu_total_us(r->procs), settled = r->res->settled;
    bool others = false;

    fprintf(out, "\nCPU over %.2f s (first POST until all settled), memory at the end:\n",
            r->cpu_window_s);
    fprintf(out, "  %-58s %4s %9s %10s %13s %11s %11s\n", "process", "pids", "CPU s", "us/order",
            "wakeups/order", "VmRSS MiB", "RssAnon MiB");
    for (i = 0; i < n; i++) {
        if (g[i].counted)
            group_row(out, &g[i], settled);
        others |= !g[i].counted;
    }
    fprintf(out, "  %-58s %4s %9.3f", "total, all processes above", "", (double)total / 1e6);
    if (settled > 0) {
        fprintf(out, " %10.1f", (double)total / (double)settled);
        wake_col(out, ob_report_wakeups_total(r->procs), settled);
        fprintf(out, "  (%.2f ms per settled order)\n", (double)total / (double)settled / 1000.0);
    } else {
        fprintf(out, " %10s\n", "-");
    }
    if (others)
        fprintf(out, "  not counted (not part of this run, or not known to be):\n");
    for (i = 0; i < n; i++)
        if (!g[i].counted)
            group_row(out, &g[i], settled);
    fputs("  (a process that exited counts until its last sample; VmRSS of PostgreSQL processes\n"
          "  counts the shared buffers they touched in each one; wakeups/order: the voluntary\n"
          "  context switches of its threads, each a sleep and a wake-up)\n",
          out);
}

void ob_report_text(const ob_report *r, FILE *out)
{
    const ob_run *run = r->run;
    const ob_results *res = r->res;
    char mode[128];
    int i;

    ob_report_mode(run, mode, sizeof(mode));
    fprintf(out, "orders-bench run %s: %s\n", run->run_id, mode);
    fprintf(out, "  started %s, %s, orders database %s\n", r->started_at, run->o->url, r->dbname);
    fprintf(out,
            "\nthroughput  POST %.1f/s (202s over %.2f s)   settled %.1f/s (first POST to "
            "last settled_at, %.2f s)\n",
            res->post_per_s, res->post_span_s, res->settled_per_s, res->settle_span_s);
    fprintf(out, "\nlatency, ms %26s %9s %9s %9s %9s %9s %9s %8s\n", "", "p50", "p90", "p99",
            "p99.9", "max", "mean", "count");
    latency_row(out, "POST -> 202", &res->post);
    latency_row(out, "POST -> settled", &res->settle);
    latency_row(out, "created_at -> settled_at (server)", &res->saga);
    latency_row(out, "actual send -> 202", &res->service);
    fprintf(out, "  (POST counts from the intended send time%s)\n",
            run->o->rate > 0 ? ", the open loop's schedule" : "; closed loop: the actual send");
    fprintf(out,
            "\noutcome     sent %" PRId64 "  202 %" PRId64 "  failed %" PRId64
            "  CONFIRMED %" PRId64 "  REJECTED %" PRId64 "%s%s\n",
            run->sent, run->accepted, run->failed, run->confirmed, run->rejected,
            run->settle_timed_out ? "  (settlement timed out)" : "",
            run->interrupted ? "  (interrupted)" : "");
    fprintf(out,
            "check       lost %" PRId64 " (missing %" PRId64 ", not settled %" PRId64
            ")   duplicated %" PRId64 " (no 202 named it %" PRId64 ", id answered twice %" PRId64
            ")\n",
            ob_run_lost(run), run->missing, run->unsettled, ob_run_duplicated(run), run->unanswered,
            run->answered_twice);
    fprintf(out,
            "connections %d, sockets opened %" PRIu64 ", requests resent after a closed "
            "keep-alive connection %" PRIu64 ", most orders waiting for a connection %" PRId64
            "%s\n",
            run->o->connections, run->sockets, run->resends, run->max_waiting,
            run->url.tls ? " (https)" : "");
    processes_text(r, out);
    if (r->requests)
        ob_requests_text(r->requests, res->settled, out);
    for (i = 0; i < run->nerrors; i++)
        fprintf(out, "error       %s\n", run->errors[i]);
    for (i = 0; i < r->procs->nwarnings; i++)
        fprintf(out, "warning     %s\n", r->procs->warnings[i]);
}

/* ---- JSON ---- */

static json_t *series_json(const ob_series *s)
{
    if (s->n == 0)
        return json_pack("{s:I}", "count", (json_int_t)0);
    return json_pack("{s:f, s:f, s:f, s:f, s:f, s:f, s:f, s:I}", "p50",
                     (double)ob_series_pct(s, 50) / 1e6, "p90", (double)ob_series_pct(s, 90) / 1e6,
                     "p99", (double)ob_series_pct(s, 99) / 1e6, "p999",
                     (double)ob_series_pct(s, 99.9) / 1e6, "max",
                     (double)ob_series_pct(s, 100) / 1e6, "min", (double)ob_series_pct(s, 0) / 1e6,
                     "mean", ob_series_mean(s) / 1e6, "count", (json_int_t)s->n);
}

static json_t *per_order(int64_t us, int64_t settled)
{
    return settled > 0 ? json_real((double)us / (double)settled) : json_null();
}

static json_t *count_json(int64_t n)
{
    return n >= 0 ? json_integer((json_int_t)n) : json_null();
}

static json_t *wake_per_order(int64_t wakeups, int64_t settled)
{
    return wakeups >= 0 && settled > 0 ? json_real((double)wakeups / (double)settled) : json_null();
}

static json_t *mem_json(long kb)
{
    return kb >= 0 ? json_integer(kb) : json_null();
}

static json_t *processes_json(const ob_report *r)
{
    json_t *a = json_array();
    size_t i;

    for (i = 0; i < r->procs->n; i++) {
        const ob_proc *p = &r->procs->v[i];
        json_array_append_new(
            a, json_pack("{s:i, s:s, s:s, s:b, s:b, s:b, s:f, s:o, s:o, s:o, s:o, s:o}", "pid",
                         p->pid, "label", p->label, "kind", kind_names[p->kind], "counted",
                         p->counted, "at_start", p->at_start, "alive", p->alive, "cpu_s",
                         (double)ob_proc_cpu_us(p) / 1e6, "us_per_order",
                         per_order(ob_proc_cpu_us(p), r->res->settled), "wakeups",
                         count_json(ob_proc_wakeups(p)), "wakeups_per_order",
                         wake_per_order(ob_proc_wakeups(p), r->res->settled), "vmrss_kb",
                         mem_json(p->rss_kb), "rssanon_kb", mem_json(p->anon_kb)));
    }
    return a;
}

static json_t *groups_json(const ob_report *r)
{
    ob_group g[OB_GROUPS_MAX];
    size_t n = ob_report_groups(r->procs, g, OB_GROUPS_MAX), i;
    json_t *a = json_array();

    for (i = 0; i < n; i++)
        json_array_append_new(
            a,
            json_pack("{s:s, s:s, s:b, s:i, s:f, s:o, s:o, s:o, s:o, s:o}", "label", g[i].label,
                      "kind", kind_names[g[i].kind], "counted", g[i].counted, "pids", g[i].pids,
                      "cpu_s", (double)g[i].cpu_us / 1e6, "us_per_order",
                      per_order(g[i].cpu_us, r->res->settled), "wakeups", count_json(g[i].wakeups),
                      "wakeups_per_order", wake_per_order(g[i].wakeups, r->res->settled),
                      "vmrss_kb", mem_json(g[i].rss_kb), "rssanon_kb", mem_json(g[i].anon_kb)));
    return a;
}

static json_t *strings_json(const char (*v)[200], int n)
{
    json_t *a = json_array();
    int i;

    for (i = 0; i < n; i++)
        json_array_append_new(a, json_string(v[i]));
    return a;
}

static json_t *params_json(const ob_report *r)
{
    const ob_opts *o = r->run->o;

    return json_pack("{s:s, s:I, s:f, s:i, s:i, s:i, s:i, s:I, s:f, s:s, s:s, s:s, s:s, s:f, "
                     "s:f, s:i}",
                     "mode", o->rate > 0 ? "open" : "closed", "orders", (json_int_t)r->run->n,
                     "rate", o->rate, "connections", o->connections, "customers", o->customers,
                     "skus", o->skus, "quantity", o->quantity, "amount_cents",
                     (json_int_t)o->amount, "funds_factor", o->funds_factor, "url", o->url,
                     "payment_url", o->payment_url, "inventory_url", o->inventory_url, "orders_db",
                     r->dbname, "timeout_s", o->timeout_s, "request_timeout_s",
                     o->request_timeout_s, "headers", (int)o->nheaders);
}

static json_t *outcomes_json(const ob_run *run)
{
    return json_pack("{s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:I, s:b, s:b}", "sent",
                     (json_int_t)run->sent, "accepted", (json_int_t)run->accepted, "failed",
                     (json_int_t)run->failed, "confirmed", (json_int_t)run->confirmed, "rejected",
                     (json_int_t)run->rejected, "lost", (json_int_t)ob_run_lost(run), "missing",
                     (json_int_t)run->missing, "unsettled", (json_int_t)run->unsettled,
                     "duplicated", (json_int_t)ob_run_duplicated(run), "unanswered",
                     (json_int_t)run->unanswered, "answered_twice", (json_int_t)run->answered_twice,
                     "settle_timed_out", run->settle_timed_out, "interrupted", run->interrupted);
}

static json_t *report_json(const ob_report *r)
{
    const ob_run *run = r->run;
    const ob_results *res = r->res;
    int64_t total = ob_report_cpu_total_us(r->procs);

    return json_pack(
        "{s:s, s:s, s:s, s:s, s:o, s:{s:f, s:f, s:f, s:f}, s:{s:o, s:o, s:o, s:o}, s:o, "
        "s:{s:i, s:I, s:I, s:b, s:I, s:I}, s:{s:f, s:f, s:o, s:o, s:f, s:f}, s:o, s:o, s:o, s:o, "
        "s:i}",
        "tool", "orders-bench", "version", ORDERS_VERSION, "run_id", run->run_id, "started_at",
        r->started_at, "params", params_json(r), "throughput", "post_per_s", res->post_per_s,
        "settled_per_s", res->settled_per_s, "post_span_s", res->post_span_s, "settle_span_s",
        res->settle_span_s, "latency_ms", "post", series_json(&res->post), "settle",
        series_json(&res->settle), "created_to_settled", series_json(&res->saga), "post_service",
        series_json(&res->service), "outcomes", outcomes_json(run), "connections", "count",
        run->o->connections, "sockets_opened", (json_int_t)run->sockets, "resends",
        (json_int_t)run->resends, "tls", run->url.tls, "tls_handshakes",
        (json_int_t)run->handshakes, "max_waiting", (json_int_t)run->max_waiting, "cpu", "window_s",
        r->cpu_window_s, "total_s", (double)total / 1e6, "us_per_order",
        per_order(total, res->settled), "wakeups_per_order",
        wake_per_order(ob_report_wakeups_total(r->procs), res->settled), "postgres_unattributed_s",
        (double)r->procs->unattributed_us / 1e6, "settle_wait_s", (double)run->settle_wait_ns / 1e9,
        "groups", groups_json(r), "processes", processes_json(r), "errors",
        strings_json(run->errors, run->nerrors), "warnings",
        strings_json(r->procs->warnings, r->procs->nwarnings), "exit_status", r->exit_status);
}

int ob_report_json(const ob_report *r, const char *path)
{
    json_t *j = report_json(r),
           *rq = r->requests ? ob_requests_json(r->requests, r->res->settled) : NULL;
    int rc;

    if (j && rq)
        json_object_set_new(j, "requests", rq);
    else
        json_decref(rq);

    if (!j) {
        ob_err("could not build the JSON report");
        return OB_EXIT_INFRA;
    }
    rc = json_dump_file(j, path, JSON_INDENT(2) | JSON_REAL_PRECISION(9));
    json_decref(j);
    if (rc != 0) {
        ob_err("could not write %s", path);
        return OB_EXIT_INFRA;
    }
    return 0;
}
