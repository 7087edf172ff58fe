/*
 * cm_daemon.h - the life cycle shared by the three daemons.
 *
 * A daemon is described by a cm_daemon_def (its name, defaults, migrations,
 * subscriptions and HTTP routes); cm_daemon_main() does the rest:
 *   1. load configuration (the common table plus the service's own) and fail
 *      with a message naming a bad variable;
 *   2. wait for PostgreSQL (never skipped: retried until it answers or the
 *      daemon is told to stop) and apply the migrations;
 *   3. start the outbox relay, the HTTP server (with /healthz and /readyz),
 *      then run the consumer loop on the main thread;
 *   SIGHUP reloads the HTTP token file (a bad file keeps the old tokens);
 *   4. on SIGTERM or SIGINT drain in a fixed order: stop HTTP, close the
 *      consumer (the group rebalances at once), stop the relay (flushing the
 *      producer), send the spans still queued (at most 2 s), close the
 *      database.
 * Handlers receive the cm_daemon as their ctx.
 */
#pragma once

#include "cm_batch.h"
#include "cm_config.h"
#include "cm_consumer.h"
#include "cm_db.h"
#include "cm_health.h"
#include "cm_http.h"
#include "cm_notify.h"
#include "cm_trace.h"

#include <pthread.h>
#include <stdbool.h>

typedef struct {
    const char *http_addr;
    long long http_port;
    long long http_threads;
    long long http_body_max;
    const char *database_url;
    long long db_pool_size;
    const char *log_level;
    const char *consumer_group;
    long long consumer_batch;
    long long outbox_batch;
    long long write_batch;
    long long retry_max;
    long long retry_backoff_ms;
    const char *http_auth;        /* "tokens" or "none" */
    const char *http_tokens_file; /* "" = not set */
    const char *metrics_token_scope;
    const char *http_tls_cert;
    const char *http_tls_key;
    long long http_client_connections;
    const char *tracing_url; /* "" = tracing off */
    const char *tracing_sample_ratio;
    long long tracing_queue;
} cm_base_config;

typedef struct {
    const char *name;
    cm_metric_type type;
    const char *help;
} cm_metric_def;

struct cm_daemon;

typedef struct {
    const char *name;        /* "order-service"; also client.id and default group */
    const char *description; /* one line for --help */
    int default_port;
    const char *default_database_url;
    const char *const *migrations;
    size_t nmigrations;
    const cm_subscription *subs;
    size_t nsubs;
    const cm_http_route *routes;
    size_t nroutes;
    const cm_cfg_item *cfg_items; /* the service's own variables, or NULL */
    size_t ncfg_items;
    void *cfg;                    /* where they are loaded */
    const cm_metric_def *metrics; /* the service's own metrics, or NULL */
    size_t nmetrics;
    /* Group commit for HTTP handlers (see cm_daemon_batch()), or NULL. Called
     * with the cm_daemon as ctx. */
    cm_batch_flush_fn batch_flush;
    /* Refreshes gauges that are read from the database (e.g. orders pending)
     * when /metrics is scraped, at most every SCRAPE_REFRESH_MS; or NULL. */
    void (*on_scrape)(struct cm_daemon *d);
} cm_daemon_def;

typedef struct cm_daemon {
    const cm_daemon_def *def;
    cm_base_config base;
    cm_health health;
    cm_dbpool *pool; /* for HTTP handlers */
    cm_http *http;
    cm_auth *auth;  /* NULL with HTTP_AUTH=none */
    char *tls_cert; /* PEM contents, read once at start */
    char *tls_key;
    cm_batch *batch;   /* when def->batch_flush is set */
    cm_tracer *tracer; /* NULL: tracing off */
    cm_notify notify;
    pthread_mutex_t scrape_mu; /* one on_scrape at a time; when it last ran */
    long long scraped_ms;
} cm_daemon;

/* The daemon's group-commit queue (cm_batch_submit()), or NULL. */
cm_batch *cm_daemon_batch(cm_daemon *d);

/* Takes a pooled database connection for an HTTP handler. If the database is
 * unreachable, fills resp with a 503 problem and returns NULL. */
PGconn *cm_daemon_db(cm_daemon *d, cm_http_resp *resp);
void cm_daemon_db_release(cm_daemon *d, PGconn *conn);

/* Fills resp with 503 (an outage) or 500 for a database error code r. */
void cm_daemon_db_problem(cm_http_resp *resp, int r);

/* GET handler body shared by the services: runs sql with the path parameter
 * as $1 and answers 200 with fill(result) for one row, 404 ("no <what>
 * <param>") for none, 503/500 on database errors. */
void cm_daemon_get_one(cm_daemon *d, const cm_http_req *req, cm_http_resp *resp, const char *sql,
                       const char *what, json_t *(*fill)(PGresult *res));

/* The daemon's metrics registry (for handlers' domain counters). */
cm_metrics *cm_daemon_metrics(cm_daemon *d);

/* The daemon's tracer (cm_trace.h), NULL when tracing is off. */
cm_tracer *cm_daemon_tracer(cm_daemon *d);

/* Runs the daemon; returns the process exit status. */
int cm_daemon_main(const cm_daemon_def *def, int argc, char **argv);
