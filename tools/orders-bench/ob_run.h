/*
 * ob_run.h - one benchmark run: its identity (run id, customer and sku
 * names), the record of every order, the counters the phases fill in, and
 * the set-up phase (accounts and stock through the services' HTTP APIs).
 *
 * Phases, each in its own module: set-up (here), load (ob_load), settlement
 * (ob_db), processes (ob_proc), report (ob_report, ob_svg).
 */
#pragma once

#include "ob_cli.h"
#include "ob_http.h"

#include <stdbool.h>
#include <stdint.h>

#define OB_ID_MAX 64 /* orderId: at most 64 bytes */
#define OB_ERRORS_KEPT 5

/* What order-service's database says about an order (after ob_db_collect). */
enum {
    OB_DB_ABSENT = 0,
    OB_DB_PENDING,
    OB_DB_CONFIRMED,
    OB_DB_REJECTED,
    OB_DB_TWICE, /* a 202 named an id that an earlier 202 of the run named */
};

typedef struct {
    int64_t intended_ns;    /* intended send, ns after t0 (closed loop: the actual send) */
    int64_t sent_ns;        /* actual send, ns after t0; -1 while not sent */
    int64_t done_ns;        /* response or failure, ns after t0; -1 while not done */
    int64_t created_us;     /* created_at, µs since the epoch; 0 if unknown */
    int64_t settled_us;     /* settled_at, µs since the epoch; 0 if NULL or unknown */
    int16_t http_status;    /* 0: not sent or no response */
    uint8_t db;             /* OB_DB_* */
    char id[OB_ID_MAX + 1]; /* orderId of the 202, "" otherwise */
} ob_order;

typedef struct {
    const ob_opts *o;
    char run_id[9];  /* 8 hex digits */
    char prefix[24]; /* "bench-<run id>-": every customer and sku of the run starts so */
    ob_url url, payment_url, inventory_url;
    char *headers;       /* for POST /orders: the --header lines and the token, each + "\r\n" */
    char *admin_headers; /* for the set-up PUTs: the same with the admin token */
    ob_order *orders;
    int64_t n;                      /* orders planned */
    int64_t t0_mono_ns, t0_real_ns; /* the load's time zero on both clocks */
    void (*tick)(void *ctx);        /* called every tick_ns during load and settlement */
    void *tick_ctx;
    int64_t tick_ns, last_tick_ns; /* last_tick_ns: monotonic */

    /* load (ob_load) */
    int64_t sent, accepted, failed;   /* orders sent, answered 202, failed */
    int64_t end_ns;                   /* last response, ns after t0 */
    uint64_t sockets, resends;        /* sockets opened, requests sent twice */
    uint64_t handshakes;              /* TLS handshakes (https) */
    int64_t max_waiting;              /* most orders due but without a free connection */
    char errors[OB_ERRORS_KEPT][200]; /* the first failures */
    int nerrors;
    bool interrupted; /* SIGINT/SIGTERM: the run stopped early */

    /* settlement (ob_db) */
    int64_t settle_wait_ns; /* from the last response until nothing was pending */
    bool settle_timed_out;
    int64_t confirmed, rejected; /* of the run's 202'd orders */
    int64_t unsettled;           /* 202'd, in the table, still PENDING */
    int64_t missing;             /* 202'd, not in the table */
    int64_t unanswered;          /* in the table with the run's customer, no 202 named it */
    int64_t answered_twice;      /* ids that two 202s named */
    int64_t last_settled_us;     /* the latest settled_at of the run */
} ob_run;

/* Sets up a run from the options: run id, names, URLs, the order records.
 * Returns 0, OB_EXIT_USAGE (bad URL, reported) or OB_EXIT_INFRA. */
int ob_run_init(ob_run *run, const ob_opts *o);
void ob_run_free(ob_run *run);

/* The customer and sku of order i ("bench-<run id>-c<k>", "-s<k>"). */
void ob_run_customer(const ob_run *run, int64_t i, char *buf, size_t len);
void ob_run_sku(const ob_run *run, int64_t i, char *buf, size_t len);

/* Funds the run's customers and stocks its skus so that every order can
 * confirm (times --funds-factor). Returns 0 or OB_EXIT_INFRA (reported). */
int ob_run_setup(ob_run *run);

/* Calls run->tick if tick_ns passed since the last call. */
void ob_run_tick(ob_run *run);

/* Keeps the message of a failed order (the first OB_ERRORS_KEPT). */
void ob_run_error(ob_run *run, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Lost and duplicated orders, as defined in --help. */
int64_t ob_run_lost(const ob_run *run);
int64_t ob_run_duplicated(const ob_run *run);
