/*
 * ob_count.c - see ob_count.h.
 */
#include "ob_count.h"

#include "cm_httpc.h"
#include "ob_db.h"
#include "ob_proc.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* librdkafka publishes statistics every 5 s; a PostgreSQL backend that goes
 * idle within a second of its last flush keeps its counters for up to 10 s
 * (PGSTAT_IDLE_INTERVAL) before it publishes them. */
#define QUIET_BEFORE_NS 11000000000LL
#define IDLE_WINDOW_NS 5000000000LL
#define QUIET_AFTER_NS 11000000000LL

static const char *const daemons[3] = {"order-service", "payment-service", "inventory-service"};

static int put(ob_counts *c, const char *key, double v)
{
    for (size_t i = 0; i < c->n; i++) {
        if (strcmp(c->v[i].key, key) == 0) {
            c->v[i].v += v;
            return 0;
        }
    }
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 64;
        ob_counter *nv = realloc(c->v, cap * sizeof(*nv));
        if (!nv)
            return -ENOMEM;
        c->v = nv;
        c->cap = cap;
    }
    snprintf(c->v[c->n].key, sizeof(c->v[c->n].key), "%s", key);
    c->v[c->n++].v = v;
    return 0;
}

static double get(const ob_counts *c, const char *key)
{
    for (size_t i = 0; i < c->n; i++)
        if (strcmp(c->v[i].key, key) == 0)
            return c->v[i].v;
    return 0;
}

/* The value of a label in a series' label set, into out. */
static bool label(const char *labels, const char *name, char *out, size_t outlen)
{
    char pat[40];
    const char *p, *e;

    snprintf(pat, sizeof(pat), "%s=\"", name);
    if (!(p = strstr(labels, pat)))
        return false;
    p += strlen(pat);
    if (!(e = strchr(p, '"')) || (size_t)(e - p) >= outlen)
        return false;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
    return true;
}

/* The two series of one daemon's /metrics text. */
static int parse_metrics(ob_counts *c, const char *daemon, const char *text)
{
    static const char kafka[] = "orders_kafka_requests_total{";
    static const char trips[] = "orders_db_round_trips_total{";
    char key[96];

    for (const char *line = text; line && *line;) {
        const char *nl = strchr(line, '\n');
        if (strncmp(line, kafka, sizeof(kafka) - 1) == 0) {
            char client[24], request[40], labels[160];
            const char *close = strchr(line, '}');
            size_t n = close ? (size_t)(close - line) : 0;
            if (close && n < sizeof(labels)) {
                memcpy(labels, line, n);
                labels[n] = '\0';
                if (label(labels, "client", client, sizeof(client)) &&
                    label(labels, "request", request, sizeof(request))) {
                    snprintf(key, sizeof(key), "%s|%s|%s", daemon, client, request);
                    if (put(c, key, strtod(close + 1, NULL)) < 0)
                        return -ENOMEM;
                }
            }
        } else if (strncmp(line, trips, sizeof(trips) - 1) == 0) {
            char path[24], labels[96];
            const char *close = strchr(line, '}');
            size_t n = close ? (size_t)(close - line) : 0;
            if (close && n < sizeof(labels)) {
                memcpy(labels, line, n);
                labels[n] = '\0';
                if (label(labels, "path", path, sizeof(path))) {
                    snprintf(key, sizeof(key), "%s|pg|%s", daemon, path);
                    if (put(c, key, strtod(close + 1, NULL)) < 0)
                        return -ENOMEM;
                }
            }
        }
        line = nl ? nl + 1 : NULL;
    }
    return 0;
}

static void scrape(ob_counts *c, const ob_run *run, int i)
{
    const char *urls[3] = {run->o->url, run->o->payment_url, run->o->inventory_url};
    const char *tok = run->o->admin_token ? run->o->admin_token : run->o->token;
    char auth[600], err[160];
    const char *headers[2] = {auth, NULL};
    cm_httpc_opts opts = {
        .ca_file = run->o->cacert, .insecure = run->o->insecure, .timeout_ms = 5000};
    cm_httpc_response resp = {0};
    cm_httpc_url url;

    snprintf(auth, sizeof(auth), "Authorization: Bearer %s", tok ? tok : "");
    if (cm_httpc_parse_url(urls[i], &url, err, sizeof(err)) < 0 ||
        cm_httpc_request(&url, &opts, "GET", "/metrics", tok ? headers : NULL, NULL, 0, &resp, err,
                         sizeof(err)) < 0) {
        snprintf(c->missing[i], sizeof(c->missing[i]), "%s: %s", daemons[i], err);
    } else if (resp.status != 200) {
        snprintf(c->missing[i], sizeof(c->missing[i]), "%s: GET /metrics answered %d", daemons[i],
                 resp.status);
    } else if (!strstr(resp.body, "orders_db_round_trips_total")) {
        snprintf(c->missing[i], sizeof(c->missing[i]),
                 "%s: /metrics has no orders_db_round_trips_total (an older version)", daemons[i]);
    } else if (parse_metrics(c, daemons[i], resp.body) < 0) {
        snprintf(c->missing[i], sizeof(c->missing[i]), "%s: out of memory", daemons[i]);
    }
    cm_httpc_response_free(&resp);
}

static int snapshot(ob_counts *c, const ob_run *run, PGconn *db)
{
    static const char sql[] =
        "SELECT 'db|' || datname || '|commits', xact_commit FROM pg_stat_database"
        " WHERE datname IS NOT NULL"
        " UNION ALL SELECT 'db|' || datname || '|rollbacks', xact_rollback FROM pg_stat_database"
        " WHERE datname IS NOT NULL"
        " UNION ALL SELECT 'wal|records', wal_records FROM pg_stat_wal"
        " UNION ALL SELECT 'wal|bytes', wal_bytes FROM pg_stat_wal"
        " UNION ALL SELECT 'wal|writes', wal_write FROM pg_stat_wal"
        " UNION ALL SELECT 'wal|flushes', wal_sync FROM pg_stat_wal";
    PGresult *res;

    c->t_ns = ob_mono_ns();
    for (int i = 0; i < 3; i++)
        scrape(c, run, i);
    c->own_polls = ob_db_statements();
    ob_db_count_statement();
    res = PQexec(db, sql);
    if (PQresultStatus(res) != PGRES_TUPLES_OK) {
        ob_err("could not read pg_stat_database and pg_stat_wal: %s", PQerrorMessage(db));
        PQclear(res);
        return OB_EXIT_INFRA;
    }
    for (int r = 0; r < PQntuples(res); r++) {
        if (put(c, PQgetvalue(res, r, 0), strtod(PQgetvalue(res, r, 1), NULL)) < 0) {
            PQclear(res);
            ob_err("out of memory for the counters");
            return OB_EXIT_INFRA;
        }
    }
    PQclear(res);
    return 0;
}

static void quiet(const ob_run *run, int64_t ns, const char *why)
{
    struct timespec ts = {.tv_sec = (time_t)(ns / 1000000000), .tv_nsec = (long)(ns % 1000000000)};

    if (!run->o->quiet)
        fprintf(stderr, "orders-bench: --requests: %.0f s of quiet %s\n", (double)ns / 1e9, why);
    while (!ob_stop && nanosleep(&ts, &ts) < 0 && errno == EINTR)
        ;
}

/* Sums the idle window's CPU by daemon, broker and PostgreSQL. */
static void idle_cpu(ob_idle_cpu *ic, const ob_procs *ps, double seconds)
{
    ic->seconds = seconds;
    ic->broker_us = ic->postgres_us = -1;
    for (int d = 0; d < 3; d++)
        ic->daemon_us[d] = -1;
    for (size_t i = 0; i < ps->n; i++) {
        const ob_proc *p = &ps->v[i];
        int64_t us = ob_proc_cpu_us(p), *slot = NULL;
        if (p->kind == OB_PROC_DAEMON) {
            for (int d = 0; d < 3; d++)
                if (strcmp(p->label, daemons[d]) == 0)
                    slot = &ic->daemon_us[d];
        } else if (p->kind == OB_PROC_BROKER) {
            slot = &ic->broker_us;
        } else if (p->kind == OB_PROC_POSTGRES && p->counted) {
            slot = &ic->postgres_us;
        }
        if (slot)
            *slot = (*slot < 0 ? 0 : *slot) + us;
    }
}

/* Percent of one core, or -1 when not measured. */
static double idle_pct(const ob_idle_cpu *ic, int64_t us)
{
    return us < 0 || ic->seconds <= 0 ? -1 : (double)us / 1e4 / ic->seconds;
}

int ob_requests_start(ob_requests *rq, const ob_run *run, PGconn *db)
{
    int r;

    memset(rq, 0, sizeof(*rq));
    snprintf(rq->dbname, sizeof(rq->dbname), "%s", PQdb(db));
    quiet(run, QUIET_BEFORE_NS, "for the counters to catch up with the set-up");
    if ((r = snapshot(&rq->idle0, run, db)) != 0)
        return r;
    ob_procs ps;
    int64_t t0 = ob_mono_ns();
    ob_procs_start(&ps, run, PQdb(db), PQbackendPID(db));
    quiet(run, IDLE_WINDOW_NS, "to measure the idle rates");
    ob_procs_end(&ps);
    idle_cpu(&rq->idle_cpu, &ps, (double)(ob_mono_ns() - t0) / 1e9);
    ob_procs_free(&ps);
    if ((r = snapshot(&rq->before, run, db)) != 0)
        return r;
    for (int i = 0; i < 3; i++)
        if (rq->before.missing[i][0])
            ob_err("not counted: %s", rq->before.missing[i]);
    return 0;
}

int ob_requests_end(ob_requests *rq, const ob_run *run, PGconn *db)
{
    int r;

    quiet(run, QUIET_AFTER_NS, "for the counters to catch up with the run");
    if ((r = snapshot(&rq->after, run, db)) != 0)
        return r;
    rq->taken = true;
    return 0;
}

void ob_requests_free(ob_requests *rq)
{
    free(rq->idle0.v);
    free(rq->before.v);
    free(rq->after.v);
}

/* The difference of key between two snapshots; the orders database's
 * commits less this tool's own statements in between. */
static double delta(const ob_counts *a, const ob_counts *b, const char *key, const char *orders_db)
{
    double d = get(b, key) - get(a, key);
    char own[96];

    snprintf(own, sizeof(own), "db|%s|commits", orders_db);
    if (strcmp(key, own) == 0)
        d -= (double)(b->own_polls - a->own_polls);
    return d < 0 ? 0 : d;
}

static bool daemon_read(const ob_requests *rq, int i)
{
    return !rq->before.missing[i][0] && !rq->after.missing[i][0];
}

/* Sum of the differences of the keys starting with prefix (and, if not NULL,
 * ending with suffix). */
static double sum(const ob_counts *a, const ob_counts *b, const char *prefix, const char *suffix,
                  const char *orders_db)
{
    double s = 0;
    size_t pl = strlen(prefix), sl = suffix ? strlen(suffix) : 0;

    for (size_t i = 0; i < b->n; i++) {
        const char *k = b->v[i].key;
        size_t kl = strlen(k);
        if (strncmp(k, prefix, pl) == 0 &&
            (!suffix || (kl >= sl && strcmp(k + kl - sl, suffix) == 0)))
            s += delta(a, b, k, orders_db);
    }
    return s;
}

void ob_requests_text(const ob_requests *rq, int64_t settled, FILE *out)
{
    static const char *const clients[] = {"consumer", "relay", "dlt"};
    const ob_counts *a = &rq->before, *b = &rq->after, *i0 = &rq->idle0;
    const char *odb = rq->dbname;
    double n = settled > 0 ? (double)settled : 1, idle_s = (double)(a->t_ns - i0->t_ns) / 1e9;
    double kafka_all = 0, trips_all = 0, kafka_idle = 0, trips_idle = 0;
    char prefix[96];

    if (!rq->taken)
        return;
    fprintf(out, "\nRequests per settled order (--requests; %" PRId64 " orders; %.1f s window):\n",
            settled, (double)(b->t_ns - a->t_ns) / 1e9);
    for (int d = 0; d < 3; d++) {
        if (!daemon_read(rq, d)) {
            fprintf(out, "  %-18s not counted: %s\n", daemons[d],
                    rq->after.missing[d][0] ? rq->after.missing[d] : rq->before.missing[d]);
            continue;
        }
        for (size_t c = 0; c < sizeof(clients) / sizeof(clients[0]); c++) {
            char line[512];
            size_t len = 0;
            snprintf(prefix, sizeof(prefix), "%s|%s|", daemons[d], clients[c]);
            double total = sum(a, b, prefix, NULL, odb);
            kafka_all += total;
            kafka_idle += sum(i0, a, prefix, NULL, odb);
            line[0] = '\0';
            for (size_t k = 0; k < b->n; k++) {
                if (strncmp(b->v[k].key, prefix, strlen(prefix)) != 0)
                    continue;
                double per = delta(a, b, b->v[k].key, odb) / n;
                if (per >= 0.005 && len < sizeof(line) - 64)
                    len += (size_t)snprintf(line + len, sizeof(line) - len, " %s %.2f",
                                            b->v[k].key + strlen(prefix), per);
            }
            fprintf(out, "  %-18s Kafka %-8s %6.2f %s\n", c == 0 ? daemons[d] : "", clients[c],
                    total / n, total > 0 ? line + 1 : "");
        }
        snprintf(prefix, sizeof(prefix), "%s|pg|", daemons[d]);
        double trips = sum(a, b, prefix, NULL, odb);
        trips_all += trips;
        trips_idle += sum(i0, a, prefix, NULL, odb);
        fprintf(out, "  %-18s PostgreSQL round trips %.2f (", "", trips / n);
        for (size_t k = 0, first = 1; k < b->n; k++) {
            if (strncmp(b->v[k].key, prefix, strlen(prefix)) != 0)
                continue;
            fprintf(out, "%s%s %.2f", first ? "" : ", ", b->v[k].key + strlen(prefix),
                    delta(a, b, b->v[k].key, odb) / n);
            first = 0;
        }
        fprintf(out, ")\n");
    }
    fprintf(out, "  %-18s Kafka requests %.2f, PostgreSQL round trips %.2f\n", "all daemons",
            kafka_all / n, trips_all / n);
    fprintf(out, "  %-18s commits %.2f (", "PostgreSQL", sum(a, b, "db|", "|commits", odb) / n);
    bool first = true;
    for (size_t k = 0; k < b->n; k++) {
        const char *key = b->v[k].key;
        size_t kl = strlen(key);
        if (strncmp(key, "db|", 3) != 0 || kl < 8 || strcmp(key + kl - 8, "|commits") != 0)
            continue;
        double per = delta(a, b, key, odb) / n;
        if (per < 0.005)
            continue;
        fprintf(out, "%s%.*s %.2f", first ? "" : ", ", (int)(kl - 11), key + 3, per);
        first = false;
    }
    fprintf(out, "), rollbacks %.2f, WAL flushes %.2f, WAL writes %.2f, WAL %.0f bytes\n",
            sum(a, b, "db|", "|rollbacks", odb) / n, delta(a, b, "wal|flushes", odb) / n,
            delta(a, b, "wal|writes", odb) / n, delta(a, b, "wal|bytes", odb) / n);
    if (idle_s > 0)
        fprintf(out,
                "  %-18s Kafka %.1f requests/s, PostgreSQL round trips %.1f/s, commits %.1f/s, "
                "WAL flushes %.1f/s (over %.1f s before the run)\n",
                "idle", kafka_idle / idle_s, trips_idle / idle_s,
                sum(i0, a, "db|", "|commits", odb) / idle_s,
                delta(i0, a, "wal|flushes", odb) / idle_s, idle_s);
    const ob_idle_cpu *ic = &rq->idle_cpu;
    if (ic->seconds > 0) {
        fprintf(out, "  %-18s CPU, %% of one core:", "idle");
        for (int d = 0; d < 3; d++)
            if (ic->daemon_us[d] >= 0)
                fprintf(out, " %s %.2f,", daemons[d], idle_pct(ic, ic->daemon_us[d]));
        if (ic->broker_us >= 0)
            fprintf(out, " broker %.2f,", idle_pct(ic, ic->broker_us));
        if (ic->postgres_us >= 0)
            fprintf(out, " PostgreSQL %.2f", idle_pct(ic, ic->postgres_us));
        fprintf(out, " (over %.1f s)\n", ic->seconds);
    }
}

void *ob_requests_json(const ob_requests *rq, int64_t settled)
{
    const ob_counts *a = &rq->before, *b = &rq->after, *i0 = &rq->idle0;
    const char *odb = rq->dbname;
    double n = settled > 0 ? (double)settled : 1, idle_s = (double)(a->t_ns - i0->t_ns) / 1e9;
    json_t *j, *per = json_object(), *idle = json_object(), *missing = json_array();

    if (!rq->taken) {
        json_decref(per);
        json_decref(idle);
        json_decref(missing);
        return NULL;
    }
    for (size_t k = 0; k < b->n; k++) {
        const char *key = b->v[k].key;
        json_object_set_new(per, key, json_real(delta(a, b, key, odb) / n));
        if (idle_s > 0)
            json_object_set_new(idle, key, json_real(delta(i0, a, key, odb) / idle_s));
    }
    for (int d = 0; d < 3; d++)
        if (!daemon_read(rq, d))
            json_array_append_new(missing,
                                  json_string(rq->after.missing[d][0] ? rq->after.missing[d]
                                                                      : rq->before.missing[d]));
    json_t *cpu = json_object();
    const ob_idle_cpu *ic = &rq->idle_cpu;
    for (int d = 0; d < 3; d++)
        if (ic->daemon_us[d] >= 0)
            json_object_set_new(cpu, daemons[d], json_real(idle_pct(ic, ic->daemon_us[d])));
    if (ic->broker_us >= 0)
        json_object_set_new(cpu, "broker", json_real(idle_pct(ic, ic->broker_us)));
    if (ic->postgres_us >= 0)
        json_object_set_new(cpu, "postgres", json_real(idle_pct(ic, ic->postgres_us)));
    j = json_pack("{s:I,s:f,s:o,s:o,s:o,s:o}", "orders", (json_int_t)settled, "windowSeconds",
                  (double)(b->t_ns - a->t_ns) / 1e9, "perOrder", per, "idlePerSecond", idle,
                  "idleCpuPercent", cpu, "missing", missing);
    return j;
}
