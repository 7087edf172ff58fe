/*
 * orders_bench.c - orders-bench, the benchmark tool of the order system:
 * wiring only. Set-up (accounts, stock), load (ob_load), settlement from the
 * orders database (ob_db), the processes' CPU and memory (ob_proc), then the
 * report (ob_report, ob_svg). See --help.
 */
#include "ob_count.h"
#include "ob_db.h"
#include "ob_load.h"
#include "ob_proc.h"
#include "ob_report.h"
#include "ob_svg.h"

#include <inttypes.h>
#include <stdio.h>
#include <time.h>

static void rfc3339(int64_t real_ns, char *buf, size_t len)
{
    time_t s = (time_t)(real_ns / 1000000000);
    struct tm tm;
    char day[32];

    gmtime_r(&s, &tm);
    strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm);
    snprintf(buf, len, "%s.%03dZ", day, (int)(real_ns / 1000000 % 1000));
}

static int verdict(const ob_run *run)
{
    if (run->failed > 0 || run->sent < run->n || ob_run_lost(run) > 0 ||
        ob_run_duplicated(run) > 0 || run->interrupted)
        return OB_EXIT_FINDING;
    return OB_EXIT_OK;
}

/* Results to stdout and the files; returns the exit status. */
static int report(const ob_run *run, const ob_procs *ps, const ob_requests *rq, PGconn *db,
                  double window_s)
{
    ob_results res;
    ob_report r = {.run = run, .res = &res, .procs = ps, .requests = rq, .dbname = PQdb(db)};
    int rc = verdict(run), k;

    if (ob_results_compute(run, &res) < 0) {
        ob_err("out of memory computing the results");
        return OB_EXIT_INFRA;
    }
    r.cpu_window_s = window_s;
    r.exit_status = rc;
    rfc3339(run->t0_real_ns, r.started_at, sizeof(r.started_at));
    ob_report_text(&r, stdout);
    fflush(stdout);
    if (run->o->json_path && (k = ob_report_json(&r, run->o->json_path)) != 0)
        rc = k;
    if (run->o->svg_path && (k = ob_svg_write(run->o->svg_path, &r)) != 0)
        rc = k;
    ob_results_free(&res);
    return rc;
}

static void tick(void *ctx)
{
    ob_procs_sample(ctx);
}

/* The run from the load on; returns the exit status. */
static int measure(ob_run *run, PGconn *db)
{
    ob_load *load = NULL;
    ob_requests rq = {0};
    ob_procs ps;
    int64_t window0;
    double window_s;
    int rc;

    if (run->o->requests && (rc = ob_requests_start(&rq, run, db)) != 0) {
        ob_requests_free(&rq);
        return rc;
    }
    if ((rc = ob_load_new(run, &load)) != 0) {
        ob_requests_free(&rq);
        return rc;
    }
    ob_procs_start(&ps, run, PQdb(db), PQbackendPID(db));
    run->tick = tick;
    run->tick_ctx = &ps;
    run->tick_ns = OB_SAMPLE_NS;
    run->last_tick_ns = window0 = ob_mono_ns();
    if (!run->o->quiet)
        fprintf(stderr, "orders-bench: run %s: posting %" PRId64 " orders to %s\n", run->run_id,
                run->n, run->o->url);
    rc = ob_load_run(load);
    ob_load_free(load);
    if (rc == 0)
        rc = ob_db_wait(db, run);
    run->tick = NULL;
    ob_procs_end(&ps);
    window_s = (double)(ob_mono_ns() - window0) / 1e9;
    if (rc == 0 && run->o->requests)
        rc = ob_requests_end(&rq, run, db);
    if (rc == 0)
        rc = ob_db_collect(db, run);
    if (rc == 0)
        rc = report(run, &ps, &rq, db, window_s);
    ob_procs_free(&ps);
    ob_requests_free(&rq);
    return rc;
}

int main(int argc, char **argv)
{
    ob_opts o;
    ob_run run;
    PGconn *db;
    int rc;

    if ((rc = ob_opts_parse(&o, argc, argv)) >= 0)
        return rc;
    ob_signals_install();
    if ((rc = ob_run_init(&run, &o)) != 0) {
        ob_run_free(&run);
        return rc;
    }
    if (!(db = ob_db_connect(o.orders_db))) {
        ob_run_free(&run);
        return OB_EXIT_INFRA;
    }
    rc = ob_run_setup(&run);
    if (rc == 0)
        rc = measure(&run, db);
    PQfinish(db);
    ob_run_free(&run);
    return rc;
}
