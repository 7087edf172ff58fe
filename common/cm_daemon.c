/*
 * cm_daemon.c - see cm_daemon.h. The stop flag below is the only mutable
 * global of a daemon: the signal handler sets it, every loop reads it.
 */
#include "cm_daemon.h"

#include "cm_kafka.h"
#include "cm_log.h"
#include "cm_notify.h"
#include "cm_outbox.h"
#include "cm_trace.h"
#include "ev_event.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_requested;
static volatile sig_atomic_t reload_requested;
/* Wakes the reload thread (a byte per signal): it sleeps in read(), so an
 * idle daemon has no timer of its own here. */
static int wake_pipe[2] = {-1, -1};

static void wake_reloader(void)
{
    int saved = errno;
    if (wake_pipe[1] >= 0 && write(wake_pipe[1], "x", 1) < 0) {
        /* full: a wake-up is pending already */
    }
    errno = saved;
}

static void on_signal(int sig)
{
    if (sig == SIGHUP)
        reload_requested = 1;
    else
        stop_requested = 1;
    wake_reloader();
}

#define BASE(f) offsetof(cm_base_config, f)
static const cm_cfg_item base_items[] = {
    {"HTTP_ADDR", CM_CFG_STRING, "127.0.0.1", 0, 0, BASE(http_addr), false,
     "address the HTTP server listens on"},
    {"HTTP_PORT", CM_CFG_INT, NULL, 1, 65535, BASE(http_port), false,
     "port of the HTTP server (API, /healthz, /readyz)"},
    {"HTTP_THREADS", CM_CFG_INT, "0", 0, 256, BASE(http_threads), false,
     "HTTP worker threads; 0 = one per online CPU"},
    {"HTTP_BODY_MAX", CM_CFG_INT, "65536", 256, 16777216, BASE(http_body_max), false,
     "largest accepted request body in bytes (larger: 413)"},
    {"DATABASE_URL", CM_CFG_STRING, NULL, 0, 0, BASE(database_url), false,
     "libpq connection string or URI of the service's own database"},
    {"DB_POOL_SIZE", CM_CFG_INT, "4", 1, 256, BASE(db_pool_size), false,
     "database connections for HTTP requests"},
    {"LOG_LEVEL", CM_CFG_STRING, "info", 0, 0, BASE(log_level), false,
     "debug, info, notice, warning or error"},
    {"CONSUMER_GROUP", CM_CFG_STRING, NULL, 0, 0, BASE(consumer_group), false,
     "Kafka consumer group id"},
    {"CONSUMER_BATCH", CM_CFG_INT, "256", 1, 10000, BASE(consumer_batch), false,
     "most records applied in one database transaction"},
    {"OUTBOX_BATCH", CM_CFG_INT, "500", 1, 10000, BASE(outbox_batch), false,
     "most outbox rows published per relay pass"},
    {"WRITE_BATCH", CM_CFG_INT, "256", 1, 10000, BASE(write_batch), false,
     "most HTTP writes committed in one transaction (group commit)"},
    {"RETRY_MAX", CM_CFG_INT, "3", 0, 100, BASE(retry_max), false,
     "retries of a failing record before it is dead-lettered"},
    {"RETRY_BACKOFF", CM_CFG_DURATION, "2s", 0, 60000, BASE(retry_backoff_ms), false,
     "wait between those retries (ms, or with unit: 500ms, 2s)"},
    {"HTTP_AUTH", CM_CFG_STRING, "tokens", 0, 0, BASE(http_auth), false,
     "tokens (bearer tokens from HTTP_TOKENS_FILE) or none (no authentication)"},
    {"HTTP_TOKENS_FILE", CM_CFG_STRING, "", 0, 0, BASE(http_tokens_file), false,
     "token file: '<sha256-hex> <name> <scope>[,...]' lines; re-read on SIGHUP"},
    {"METRICS_TOKEN_SCOPE", CM_CFG_STRING, "", 0, 0, BASE(metrics_token_scope), false,
     "scope a token needs for /metrics (e.g. metrics:read); empty = open"},
    {"HTTP_TLS_CERT", CM_CFG_STRING, "", 0, 0, BASE(http_tls_cert), false,
     "PEM certificate (chain) file; with HTTP_TLS_KEY: HTTPS only, TLS 1.2+"},
    {"HTTP_TLS_KEY", CM_CFG_STRING, "", 0, 0, BASE(http_tls_key), false,
     "PEM private key file of HTTP_TLS_CERT (read once at start)"},
    {"HTTP_CLIENT_CONNECTIONS", CM_CFG_INT, "128", 0, 1000, BASE(http_client_connections), false,
     "HTTP connections at once from one client address; 0 = no limit"},
    {"TRACING_URL", CM_CFG_STRING, "", 0, 0, BASE(tracing_url), false,
     "Zipkin collector base URL (spans POSTed to <url>/api/v2/spans); empty = tracing off"},
    {"TRACING_SAMPLE_RATIO", CM_CFG_STRING, "0.1", 0, 0, BASE(tracing_sample_ratio), false,
     "share of new traces sampled, 0 to 1 (decided where a trace starts)"},
    {"TRACING_QUEUE", CM_CFG_INT, CM_TRACE_QUEUE_DEFAULT, CM_TRACE_QUEUE_MIN, CM_TRACE_QUEUE_MAX,
     BASE(tracing_queue), false, "spans held for the sender; more are dropped and counted"},
};
#define NBASE (sizeof(base_items) / sizeof(base_items[0]))

/* A default as --help shows it: never a password (cm_config_mask). */
static const char *shown_default(const cm_cfg_item *it, char *buf, size_t len)
{
    if (!it->def)
        return "required";
    if (!it->def[0])
        return "unset";
    if (it->secret || cm_config_secret_name(it->name))
        return "***";
    cm_config_mask(it->def, buf, len);
    return buf;
}

static void usage(const cm_daemon_def *def, const cm_cfg_item *items)
{
    char buf[512];

    printf("Usage: %s [--help] [--version]\n\n%s\n\n"
           "Configuration is read from the environment:\n",
           def->name, def->description);
    for (size_t i = 0; i < NBASE; i++)
        printf("  %-18s %s (default: %s)\n", items[i].name, items[i].help,
               shown_default(&items[i], buf, sizeof(buf)));
    for (size_t i = 0; i < def->ncfg_items; i++)
        printf("  %-18s %s (default: %s)\n", def->cfg_items[i].name, def->cfg_items[i].help,
               shown_default(&def->cfg_items[i], buf, sizeof(buf)));
    printf("  %-18s any librdkafka property, e.g. KAFKA_BOOTSTRAP_SERVERS=host:9092\n"
           "  %s\n"
           "  %-18s property <property> from the file's contents (for secrets:\n"
           "  %-18s KAFKA_SASL_PASSWORD_FILE=$CREDENTIALS_DIRECTORY/kafka-password under systemd)\n"
           "  %-18s (Kafka's launcher and dev stack variables, KAFKA_HEAP_OPTS, KAFKA_OPTS,\n"
           "  %-18s KAFKA_LIBS_DIR, ..., are ignored: see the README)\n",
           "KAFKA_<PROPERTY>", "KAFKA_<PROPERTY>_FILE", "", "", "", "");
}

static bool is_loopback(const char *addr)
{
    return strncmp(addr, "127.", 4) == 0 || strcmp(addr, "::1") == 0 ||
           strcmp(addr, "localhost") == 0;
}

static int check_http_config(const cm_base_config *b, char *err, size_t errlen)
{
    if (strcmp(b->http_auth, "tokens") != 0 && strcmp(b->http_auth, "none") != 0) {
        snprintf(err, errlen, "invalid HTTP_AUTH=\"%s\": must be tokens or none", b->http_auth);
        return -EINVAL;
    }
    if (strcmp(b->http_auth, "tokens") == 0 && !b->http_tokens_file[0]) {
        snprintf(err, errlen,
                 "HTTP_TOKENS_FILE is not set: the HTTP API needs a token file (make tokens with "
                 "'orderctl token new'), or set HTTP_AUTH=none to run without authentication");
        return -EINVAL;
    }
    if (b->metrics_token_scope[0] &&
        !cm_auth_scope_valid(b->metrics_token_scope, strlen(b->metrics_token_scope))) {
        snprintf(err, errlen,
                 "invalid METRICS_TOKEN_SCOPE=\"%s\": must be a scope like metrics:read",
                 b->metrics_token_scope);
        return -EINVAL;
    }
    if (!b->http_tls_cert[0] != !b->http_tls_key[0]) {
        snprintf(err, errlen, "%s is set but %s is not: HTTPS needs both",
                 b->http_tls_cert[0] ? "HTTP_TLS_CERT" : "HTTP_TLS_KEY",
                 b->http_tls_cert[0] ? "HTTP_TLS_KEY" : "HTTP_TLS_CERT");
        return -EINVAL;
    }
    return 0;
}

/* Reads a whole PEM file (at most 1 MiB) into a new string. */
static int read_pem(const char *var, const char *path, char **ret, char *err, size_t errlen)
{
    FILE *f = fopen(path, "re");
    char *buf = NULL;
    size_t len = 0;

    if (!f) {
        snprintf(err, errlen, "%s=%s: %s", var, path, strerror(errno));
        return -errno;
    }
    buf = malloc(1024 * 1024 + 1);
    if (buf)
        len = fread(buf, 1, 1024 * 1024 + 1, f);
    fclose(f);
    if (!buf || len == 0 || len > 1024 * 1024) {
        snprintf(err, errlen, "%s=%s: %s", var, path,
                 !buf  ? "out of memory"
                 : len ? "larger than 1 MiB"
                       : "empty");
        free(buf);
        return -EINVAL;
    }
    buf[len] = '\0';
    *ret = buf;
    return 0;
}

static void free_secret(char *s)
{
    if (s) {
        explicit_bzero(s, strlen(s));
        free(s);
    }
}

/* Token table and TLS material, before anything else starts: a daemon that
 * cannot authenticate or serve HTTPS as configured must not start at all. */
static int setup_http_security(cm_daemon *d, char *err, size_t errlen)
{
    const cm_base_config *b = &d->base;
    size_t n = 0;
    int r;

    if (b->http_tls_cert[0]) {
        if (!cm_http_tls_supported()) {
            snprintf(err, errlen,
                     "HTTP_TLS_CERT is set but this libmicrohttpd was built without TLS support");
            return -ENOTSUP;
        }
        r = read_pem("HTTP_TLS_CERT", b->http_tls_cert, &d->tls_cert, err, errlen);
        if (r == 0)
            r = read_pem("HTTP_TLS_KEY", b->http_tls_key, &d->tls_key, err, errlen);
        if (r < 0)
            return r;
    }
    if (strcmp(b->http_auth, "none") == 0) {
        log_warning("HTTP_AUTH=none: the HTTP API is open to anyone who can reach %s:%lld "
                    "(funding accounts and setting stock included)",
                    b->http_addr, b->http_port);
        return 0;
    }
    if ((r = cm_auth_new(&d->auth)) < 0) {
        snprintf(err, errlen, "out of memory");
        return r;
    }
    r = cm_auth_load(d->auth, b->http_tokens_file, &n, err, errlen);
    if (r < 0)
        return r;
    log_info("loaded %zu tokens from %s", n, b->http_tokens_file);
    if (!b->http_tls_cert[0] && !is_loopback(b->http_addr))
        log_warning("HTTP_ADDR=%s is not a loopback address and HTTPS is off: bearer tokens "
                    "cross the network in clear text (set HTTP_TLS_CERT and HTTP_TLS_KEY)",
                    b->http_addr);
    return 0;
}

/* SIGHUP only sets a flag; this thread does the reload. */
static void *reload_thread(void *arg)
{
    cm_daemon *d = arg;
    char err[512];
    size_t n = 0;

    while (!stop_requested) {
        char buf[16];
        if (read(wake_pipe[0], buf, sizeof(buf)) < 0 && errno != EINTR && errno != EAGAIN)
            break;
        if (!reload_requested)
            continue;
        reload_requested = 0;
        if (!d->auth) {
            log_info("SIGHUP: nothing to reload (HTTP_AUTH=none)");
            continue;
        }
        if (cm_auth_load(d->auth, d->base.http_tokens_file, &n, err, sizeof(err)) < 0)
            log_error("token file not reloaded, keeping the tokens in force error=\"%s\"", err);
        else
            log_info("reloaded %zu tokens from %s", n, d->base.http_tokens_file);
    }
    return NULL;
}

static int load_config(cm_daemon *d, cm_cfg_item *items, char *err, size_t errlen)
{
    static char port[8];
    int r;

    memcpy(items, base_items, sizeof(base_items));
    snprintf(port, sizeof(port), "%d", d->def->default_port);
    items[1].def = port;
    items[4].def = d->def->default_database_url;
    items[7].def = d->def->name;
    r = cm_config_load(items, NBASE, &d->base, err, errlen);
    if (r == 0 && d->def->ncfg_items)
        r = cm_config_load(d->def->cfg_items, d->def->ncfg_items, d->def->cfg, err, errlen);
    if (r == 0 && cm_log_level_parse(d->base.log_level) < 0) {
        snprintf(err, errlen,
                 "invalid LOG_LEVEL=\"%s\": must be debug, info, notice, warning "
                 "or error",
                 d->base.log_level);
        r = -EINVAL;
    }
    if (r == 0)
        r = cm_kafka_check_env(err, errlen);
    if (r == 0)
        r = check_http_config(&d->base, err, errlen);
    if (r == 0)
        r = cm_trace_config_check(&(cm_trace_config){d->base.tracing_url,
                                                     d->base.tracing_sample_ratio,
                                                     d->base.tracing_queue, d->def->name},
                                  err, errlen);
    return r;
}

static void log_ignored(void *ud, const char *var, const char *owner)
{
    (void)ud;
    log_debug("ignoring %s: a %s variable, not a librdkafka property", var, owner);
}

static void nap(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* A superuser reaches every database of the server: a bug in one daemon
 * would then reach the other two. The server reports the flag itself. */
static void warn_superuser(PGconn *conn)
{
    const char *su = PQparameterStatus(conn, "is_superuser");

    if (su && strcmp(su, "on") == 0)
        log_warning("connected to PostgreSQL as superuser user=%s: give the daemon a role that "
                    "owns only its own database (deploy/postgres/pg.sh create-dbs makes one)",
                    PQuser(conn));
}

/* PostgreSQL is waited for, never skipped. Returns 0 once migrated. The
 * same error again (a wrong password, say) is logged once, then once a
 * minute while it lasts, not on every attempt. */
static int wait_database(cm_daemon *d)
{
    long backoff = 200, quiet_ms = 0;
    char err[256], last[512] = "";

    while (!stop_requested) {
        PGconn *conn = NULL;
        int r = cm_db_connect(d->base.database_url, &conn, err, sizeof(err));
        if (r == 0)
            r = cm_db_migrate(conn, d->def->migrations, d->def->nmigrations);
        if (r == 0) {
            warn_superuser(conn);
            PQfinish(conn);
            return 0;
        }
        if (r != -ECONNRESET) {
            log_error("could not migrate database error=\"%s\"", conn ? cm_db_error(conn) : err);
            PQfinish(conn);
            return r;
        }
        if (strcmp(last, conn ? cm_db_error(conn) : err) != 0 || quiet_ms >= 60000) {
            snprintf(last, sizeof(last), "%s", conn ? cm_db_error(conn) : err);
            log_warning("waiting for database error=\"%s\"", last);
            quiet_ms = 0;
        } else {
            log_debug("waiting for database error=\"%s\"", last);
        }
        PQfinish(conn);
        for (long t = 0; t < backoff && !stop_requested; t += 100) {
            cm_notify_waiting(&d->notify, "database");
            nap(100);
        }
        quiet_ms += backoff;
        backoff = backoff * 2 > 5000 ? 5000 : backoff * 2;
    }
    return -ECANCELED;
}

static const cm_metric_def common_metrics[] = {
    {"orders_records_consumed_total", CM_METRIC_COUNTER, "Records handled by the consumer loop."},
    {"orders_records_produced_total", CM_METRIC_COUNTER,
     "Outbox events acknowledged by the brokers."},
    {"orders_retries_total", CM_METRIC_COUNTER, "Retries of records whose processing failed."},
    {"orders_dead_lettered_total", CM_METRIC_COUNTER, "Records written to a dead-letter topic."},
    {"orders_outbox_backlog", CM_METRIC_GAUGE, "Outbox rows seen by the last relay pass."},
    {"orders_outbox_oldest_age_seconds", CM_METRIC_GAUGE,
     "Age of the oldest unpublished outbox row."},
    {"orders_consumer_lag", CM_METRIC_GAUGE, "Consumer lag per assigned partition (records)."},
    {"orders_http_requests_total", CM_METRIC_COUNTER, "HTTP requests by route and status."},
    {"orders_http_request_duration_seconds", CM_METRIC_HISTOGRAM,
     "HTTP request latency from first byte to response."},
    {"orders_ready", CM_METRIC_GAUGE, "1 when the daemon is ready (as /readyz), else 0."},
    {"orders_dependency_up", CM_METRIC_GAUGE, "1 when a dependency is usable, else 0."},
    {"orders_spans_sent_total", CM_METRIC_COUNTER, "Spans accepted by the tracing collector."},
    {"orders_spans_dropped_total", CM_METRIC_COUNTER,
     "Spans not sent: queue full, collector down or slow, or still queued at stop."},
    {"orders_kafka_requests_total", CM_METRIC_COUNTER,
     "Requests sent to the brokers by client and request type (librdkafka statistics, every "
     "5 s)."},
    {"orders_db_round_trips_total", CM_METRIC_COUNTER,
     "Statements, prepares and pipelines sent to PostgreSQL and waited for, by path (api: the "
     "HTTP API and the group commit; consumer; relay)."},
};

cm_batch *cm_daemon_batch(cm_daemon *d)
{
    return d->batch;
}

cm_metrics *cm_daemon_metrics(cm_daemon *d)
{
    return d->health.metrics;
}

cm_tracer *cm_daemon_tracer(cm_daemon *d)
{
    return d->tracer;
}

/* Gauges read from the database are refreshed on scrape, not per request and
 * not by a timer: at most once per SCRAPE_REFRESH_MS, however many scrapers. */
#define SCRAPE_REFRESH_MS 2000

static void refresh_on_scrape(cm_daemon *d)
{
    struct timespec ts;
    long long now;

    if (!d->def->on_scrape)
        return;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    now = ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
    /* A refresh already running (a slow database) is not waited for: this
     * scrape gets the last values, and scrapes never pile up on HTTP
     * threads behind one query. */
    if (pthread_mutex_trylock(&d->scrape_mu) != 0)
        return;
    if (d->scraped_ms == 0 || now - d->scraped_ms >= SCRAPE_REFRESH_MS) {
        d->def->on_scrape(d);
        d->scraped_ms = now;
    }
    pthread_mutex_unlock(&d->scrape_mu);
}

static void metrics_route(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    cm_daemon *d = ctx;
    cm_health *h = &d->health;
    (void)req;
    refresh_on_scrape(d);
    cm_metrics_set(h->metrics, "orders_db_round_trips_total", "path=\"api\"",
                   (double)cm_db_round_trips(CM_DB_API));
    cm_metrics_set(h->metrics, "orders_db_round_trips_total", "path=\"consumer\"",
                   (double)cm_db_round_trips(CM_DB_CONSUMER));
    cm_metrics_set(h->metrics, "orders_db_round_trips_total", "path=\"relay\"",
                   (double)cm_db_round_trips(CM_DB_RELAY));
    cm_metrics_set(h->metrics, "orders_ready", "", cm_health_ready(h) ? 1 : 0);
    cm_metrics_set(h->metrics, "orders_dependency_up", "dependency=\"database\"",
                   atomic_load(&h->db_ok) && atomic_load(&h->relay_db_ok) ? 1 : 0);
    cm_metrics_set(h->metrics, "orders_dependency_up", "dependency=\"kafka\"",
                   atomic_load(&h->kafka_ok) && cm_health_kafka_denied(h) == 0 ? 1 : 0);
    resp->text = cm_metrics_render(h->metrics);
    resp->status = resp->text ? 200 : 500;
    resp->ctype = "text/plain; version=0.0.4; charset=utf-8";
}

static int init_metrics(cm_daemon *d)
{
    int r = cm_metrics_new(&d->health.metrics);
    if (r < 0)
        return r;
    for (size_t i = 0; i < sizeof(common_metrics) / sizeof(common_metrics[0]); i++)
        cm_metrics_describe(d->health.metrics, common_metrics[i].name, common_metrics[i].type,
                            common_metrics[i].help);
    for (size_t i = 0; i < d->def->nmetrics; i++)
        cm_metrics_describe(d->health.metrics, d->def->metrics[i].name, d->def->metrics[i].type,
                            d->def->metrics[i].help);
    return 0;
}

static void health_route(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    (void)ctx;
    (void)req;
    resp->status = 200;
    resp->body = json_pack("{s:s}", "status", "ok");
}

static void ready_route(void *ctx, const cm_http_req *req, cm_http_resp *resp)
{
    cm_daemon *d = ctx;
    cm_health *h = &d->health;
    bool ready = cm_health_ready(h);
    int denied = cm_health_kafka_denied(h);
    (void)req;
    resp->status = ready ? 200 : 503;
    /* kafkaAccess: "ok", or the error code of the last authentication or
     * authorization failure (the log has the details). */
    resp->body = json_pack(
        "{s:s, s:b, s:b, s:b, s:b, s:b, s:s, s:b}", "status", ready ? "ready" : "not ready",
        "started", atomic_load(&h->started), "consumerGroup", atomic_load(&h->group_joined),
        "database", atomic_load(&h->db_ok) && atomic_load(&h->relay_db_ok), "kafka",
        atomic_load(&h->kafka_ok) && denied == 0, "outbox", atomic_load(&h->relay_db_ok),
        "kafkaAccess", denied ? rd_kafka_err2name((rd_kafka_resp_err_t)denied) : "ok", "deadLetter",
        !atomic_load(&h->dlt_failing));
}

PGconn *cm_daemon_db(cm_daemon *d, cm_http_resp *resp)
{
    PGconn *conn;

    if (cm_dbpool_acquire(d->pool, &conn) < 0) {
        cm_http_problem(resp, 503, "Service Unavailable", "the database is unavailable");
        return NULL;
    }
    return conn;
}

void cm_daemon_db_release(cm_daemon *d, PGconn *conn)
{
    cm_dbpool_release(d->pool, conn);
}

void cm_daemon_db_problem(cm_http_resp *resp, int r)
{
    if (r == -ECONNRESET || r == -EAGAIN)
        cm_http_problem(resp, 503, "Service Unavailable", "the database is unavailable");
    else
        cm_http_problem(resp, 500, "Internal Server Error", "the request could not be stored");
}

void cm_daemon_get_one(cm_daemon *d, const cm_http_req *req, cm_http_resp *resp, const char *sql,
                       const char *what, json_t *(*fill)(PGresult *res))
{
    const char *p[1] = {req->param};
    PGresult *res;
    PGconn *conn;
    int r;

    /* Ids are printable ASCII: anything else (bytes that are not UTF-8
     * included) cannot name a row, and must not reach the database. */
    if (!ev_id_valid(req->param, EV_ID_MAX)) {
        cm_http_problem(resp, 404, "Not Found", "no %s %s", what, "with that id");
        return;
    }
    if (!(conn = cm_daemon_db(d, resp)))
        return;
    r = cm_db_query(conn, &res, sql, 1, p);
    cm_daemon_db_release(d, conn);
    if (r < 0) {
        cm_daemon_db_problem(resp, r);
        return;
    }
    if (PQntuples(res) == 0) {
        cm_http_problem(resp, 404, "Not Found", "no %s %s", what, req->param);
    } else {
        resp->status = 200;
        resp->body = fill(res);
    }
    PQclear(res);
}

static void tick(void *arg)
{
    cm_notify_tick(arg);
}

/* How long a stop waits for the HTTP requests already taken to be answered:
 * well inside the units' TimeoutStopSec (30 s), with the consumer, relay and
 * producers still to close after it. */
#define HTTP_DRAIN_MS 5000

/* A graceful stop of the front door: no request taken may be cut off after
 * its effect committed. New connections are refused at once; requests in
 * progress (group commits included) run to their answer, every answer saying
 * "Connection: close"; requests that still arrive on kept-alive connections
 * are then refused with 503 before anything runs; the last group commit is
 * flushed and answered; only then are the connections closed. */
static void stop_http(void *arg)
{
    cm_daemon *d = arg;
    struct timespec deadline;
    int open;

    if (!d->http) {
        cm_batch_stop(d->batch);
        return;
    }
    cm_notify_stopping(&d->notify);
    log_info("stopping: http server (refusing new connections, answering requests taken)");
    clock_gettime(CLOCK_MONOTONIC, &deadline);
    deadline.tv_sec += HTTP_DRAIN_MS / 1000;
    cm_http_quiesce(d->http);
    cm_http_drain(d->http, &deadline);
    cm_http_refuse(d->http);
    /* Requests waiting for a group commit are answered first: the server
     * may stop only when none is suspended. */
    cm_batch_stop(d->batch);
    open = cm_http_drain(d->http, &deadline);
    if (open > 0)
        log_warning("stopping: http requests still open after %d ms count=%d (their answers are "
                    "lost)",
                    HTTP_DRAIN_MS, open);
    else
        log_info("stopping: http server drained, every request taken was answered");
    cm_http_stop(d->http);
    d->http = NULL;
    log_info("stopping: kafka consumer");
}

static int run(cm_daemon *d)
{
    size_t nroutes = d->def->nroutes + 3;
    cm_http_route *routes = calloc(nroutes, sizeof(*routes));
    cm_relay *relay = NULL;
    int r;

    if (!routes)
        return -ENOMEM;
    /* Probes and scrapes are not traced: they would be most of the traces. */
    routes[0] = (cm_http_route){"GET", "/healthz", health_route, NULL, NULL, true};
    routes[1] = (cm_http_route){"GET", "/readyz", ready_route, NULL, NULL, true};
    routes[2] = (cm_http_route){"GET",
                                "/metrics",
                                metrics_route,
                                NULL,
                                d->base.metrics_token_scope[0] ? d->base.metrics_token_scope : NULL,
                                true};
    memcpy(routes + 3, d->def->routes, d->def->nroutes * sizeof(*routes));

    r = cm_dbpool_new(d->base.database_url, (size_t)d->base.db_pool_size, &d->pool);
    if (r == 0) {
        cm_trace_config tc = {d->base.tracing_url, d->base.tracing_sample_ratio,
                              d->base.tracing_queue, d->def->name};
        char err[512];
        if ((r = cm_tracer_new(&tc, d->health.metrics, &d->tracer, err, sizeof(err))) < 0)
            log_error("could not start tracing: %s", err);
    }
    if (r == 0)
        r = cm_relay_start(d->base.database_url, d->def->name, (int)d->base.outbox_batch,
                           &d->health, d->tracer, &relay);
    if (r == 0 && d->def->batch_flush)
        r = cm_batch_start((int)d->base.write_batch, d->def->batch_flush, d, &d->batch);
    if (r == 0) {
        /* Requests wait for their commit suspended, not on a thread, so more
         * threads than CPUs only add context switches. */
        long threads = d->base.http_threads ? d->base.http_threads : sysconf(_SC_NPROCESSORS_ONLN);
        cm_http_opts ho = {
            .addr = d->base.http_addr,
            .port = (int)d->base.http_port,
            .threads = threads > 0 ? (int)threads : 1,
            .body_max = (size_t)d->base.http_body_max,
            .per_ip_limit = (unsigned)d->base.http_client_connections,
            .tls_cert = d->tls_cert,
            .tls_key = d->tls_key,
            .auth = d->auth,
            .tracer = d->tracer,
        };
        r = cm_http_start(&ho, routes, nroutes, d, d->health.metrics, &d->http);
        if (r == -EPROTO)
            log_error("could not start HTTPS on %s:%lld: check that HTTP_TLS_CERT=%s and "
                      "HTTP_TLS_KEY hold a matching PEM certificate and key",
                      d->base.http_addr, d->base.http_port, d->base.http_tls_cert);
        else if (r < 0)
            log_error("could not listen on %s:%lld", d->base.http_addr, d->base.http_port);
    }
    if (r == 0) {
        cm_consumer_config cc = {
            .client_id = d->def->name,
            .group = d->base.consumer_group,
            .db_url = d->base.database_url,
            .subs = d->def->subs,
            .nsubs = d->def->nsubs,
            .ctx = d,
            .batch_max = (int)d->base.consumer_batch,
            .max_retries = (int)d->base.retry_max,
            .backoff_ms = d->base.retry_backoff_ms,
            .health = &d->health,
            .before_close = stop_http,
            .before_close_arg = d,
            .tick = tick,
            .tick_arg = &d->notify,
            .tracer = d->tracer,
        };
        atomic_store(&d->health.started, true);
        log_info("started http=%s://%s:%lld auth=%s group=%s", d->tls_cert ? "https" : "http",
                 d->base.http_addr, d->base.http_port, d->base.http_auth, d->base.consumer_group);
        r = cm_consumer_run(&cc, &stop_requested);
    }
    stop_http(d); /* nothing left to do if the consumer's teardown did it */
    cm_batch_free(d->batch);
    d->batch = NULL;
    log_info("stopping: outbox relay");
    cm_relay_stop(relay);
    /* Last of the span producers stopped: what they queued is sent now. */
    if (d->tracer)
        log_info("stopping: tracing (sending the spans queued)");
    cm_tracer_stop(d->tracer);
    d->tracer = NULL;
    log_info("stopping: database");
    cm_dbpool_free(d->pool);
    free(routes);
    return r;
}

int cm_daemon_main(const cm_daemon_def *def, int argc, char **argv)
{
    cm_daemon d = {.def = def};
    cm_cfg_item items[NBASE];
    struct sigaction sa = {.sa_handler = on_signal};
    char err[512];
    int r;

    r = load_config(&d, items, err, sizeof(err));
    if (argc > 1 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(def, items);
        return 0;
    }
    if (argc > 1 && strcmp(argv[1], "--version") == 0) {
        printf("%s %s\n", def->name, ORDERS_VERSION);
        return 0;
    }
    if (argc > 1) {
        fprintf(stderr, "%s: unknown argument %s (try --help)\n", def->name, argv[1]);
        return 2;
    }
    cm_log_init(def->name, LOG_INFO);
    if (r < 0) {
        log_error("configuration error: %s", err);
        return 78; /* EX_CONFIG */
    }
    cm_log_init(def->name, cm_log_level_parse(d.base.log_level));
    cm_config_log(items, NBASE, &d.base);
    if (def->ncfg_items)
        cm_config_log(def->cfg_items, def->ncfg_items, def->cfg);
    cm_config_kafka_log();
    cm_config_kafka_each_ignored(log_ignored, NULL);

    if (setup_http_security(&d, err, sizeof(err)) < 0) {
        log_error("configuration error: %s", err);
        cm_auth_free(d.auth);
        free_secret(d.tls_cert);
        free_secret(d.tls_key);
        return 78; /* EX_CONFIG */
    }

    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGHUP, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    pthread_mutex_init(&d.scrape_mu, NULL);
    pthread_t reloader;
    bool reloading = pipe2(wake_pipe, O_CLOEXEC) == 0 &&
                     fcntl(wake_pipe[1], F_SETFL, O_NONBLOCK) == 0 &&
                     pthread_create(&reloader, NULL, reload_thread, &d) == 0;
    if (reloading)
        pthread_setname_np(reloader, "reload");
    else
        log_warning("SIGHUP will not reload the token file: no reload thread error=\"%s\"",
                    strerror(errno));
    r = init_metrics(&d);
    cm_notify_init(&d.notify, &d.health);
    if (r == 0)
        r = wait_database(&d);
    if (r == 0)
        r = run(&d);
    stop_requested = 1;
    wake_reloader();
    if (reloading)
        pthread_join(reloader, NULL);
    for (int i = 0; i < 2; i++) {
        int fd = wake_pipe[i];
        wake_pipe[i] = -1;
        if (fd >= 0)
            close(fd);
    }
    cm_metrics_free(d.health.metrics);
    pthread_mutex_destroy(&d.scrape_mu);
    cm_auth_free(d.auth);
    free_secret(d.tls_cert);
    free_secret(d.tls_key);
    if (r < 0 && r != -ECANCELED) {
        log_error("exiting after error code=%d", r);
        return 1;
    }
    log_info("stopped");
    return 0;
}
