/*
 * ob_count.h - requests and round trips per order (--requests): counters
 * read before and after the run, their differences divided by the settled
 * orders.
 *
 * - Kafka requests of each daemon's three clients (consumer, relay, dlt) by
 *   request type, from the daemon's /metrics (orders_kafka_requests_total,
 *   which librdkafka's statistics refresh every 5 s);
 * - PostgreSQL round trips of each daemon (orders_db_round_trips_total);
 * - commits and rollbacks of every database of the cluster that serves
 *   --orders-db (pg_stat_database; this tool's own polls of the orders
 *   database subtracted), WAL records, bytes, writes and flushes of the
 *   cluster (pg_stat_wal).
 *
 * The counters are published late (librdkafka every 5 s; a PostgreSQL
 * backend that goes idle keeps what it counted in its last second for up to
 * 10 s), so the first snapshot is taken after 11 s of quiet following the
 * set-up, the idle rates over the next 5 s, and the last snapshot 11 s after
 * the last order settled. Over the idle window the CPU of every process of
 * the stack is measured too (ob_procs: the daemons, the broker, the
 * PostgreSQL processes), so the idle cost is known in CPU as well as in
 * requests. What runs besides
 * the benchmark in that window (idle consumers' fetches, the relay's passes,
 * another client of the cluster) is counted too: the idle rates say how much.
 */
#pragma once

#include "ob_run.h"

#include <libpq-fe.h>
#include <stdbool.h>
#include <stdio.h>

typedef struct {
    char key[96]; /* "order-service|consumer|Fetch", "order-service|pg|round trips",
                     "db|orders|commits", ... */
    double v;
} ob_counter;

typedef struct {
    ob_counter *v;
    size_t n, cap;
    int64_t t_ns;         /* monotonic, when taken */
    int64_t own_polls;    /* this tool's statements on the orders database so far */
    char missing[3][200]; /* per daemon: why its counters could not be read, "" if read */
} ob_counts;

/* CPU over the idle window, µs: each daemon, the broker, the PostgreSQL
 * processes counted by ob_procs (the stack's backends and the cluster's own
 * processes); -1 where the process was not found. */
typedef struct {
    int64_t daemon_us[3], broker_us, postgres_us;
    double seconds; /* the window */
} ob_idle_cpu;

typedef struct {
    ob_counts idle0, before, after; /* idle0 -> before: idle rates; before -> after: the run */
    ob_idle_cpu idle_cpu;
    char dbname[64]; /* the orders database: this tool's polls are subtracted */
    bool taken;
} ob_requests;

/* Waits (11 s, then 5 s) and takes the idle and the starting snapshot.
 * Returns 0 or OB_EXIT_INFRA (reported; the orders database unreadable). */
int ob_requests_start(ob_requests *rq, const ob_run *run, PGconn *db);

/* Waits 11 s and takes the last snapshot. Returns 0 or OB_EXIT_INFRA. */
int ob_requests_end(ob_requests *rq, const ob_run *run, PGconn *db);

void ob_requests_free(ob_requests *rq);

/* The block of the text report; nothing when not taken. */
void ob_requests_text(const ob_requests *rq, int64_t settled, FILE *out);

/* The "requests" member of the JSON report: {"perOrder": {key: value},
 * "idlePerSecond": {key: value}, "idleCpuPercent": {"order-service": %,
 * ..., "broker": %, "postgres": %} (CPU of one core over the idle window),
 * "missing": [...]}; NULL when not taken. */
void *ob_requests_json(const ob_requests *rq, int64_t settled);
