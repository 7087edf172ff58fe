/*
 * ob_cli.h - orders-bench's command line: the options, their defaults and
 * checks, the --help text, exit codes, the stop flag, messages and clocks.
 *
 * Results go to stdout; progress and diagnostics to stderr, prefixed
 * "orders-bench: ", lowercase, no trailing period.
 */
#pragma once

#include <signal.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum {
    OB_EXIT_OK = 0,      /* every order accepted and settled, nothing lost or duplicated */
    OB_EXIT_FINDING = 1, /* a POST failed, an order was lost or duplicated, or the run stopped */
    OB_EXIT_USAGE = 2,   /* bad command line */
    OB_EXIT_INFRA = 3,   /* set-up failed: a service or the orders database unreachable */
};

#define OB_MAX_HEADERS 16
#define OB_MAX_PIDS 16

/* A daemon pid given with --pids. */
typedef struct {
    char name[32];
    int pid;
} ob_pid_arg;

typedef struct {
    const char *url;                     /* order-service base URL */
    const char *payment_url;             /* payment-service: PUT /accounts */
    const char *inventory_url;           /* inventory-service: PUT /stock */
    const char *orders_db;               /* libpq conninfo of order-service's database */
    const char *cacert;                  /* PEM CA bundle for https URLs (--cacert) */
    bool insecure;                       /* https without verifying the peer */
    int64_t orders;                      /* orders to post */
    double rate;                         /* orders per second; 0 = closed loop */
    int connections;                     /* keep-alive connections */
    int customers, skus;                 /* distinct customers and skus of the run */
    int quantity;                        /* quantity per order */
    int64_t amount;                      /* amountCents per order */
    double funds_factor;                 /* funds and stock as a multiple of what the orders need */
    double timeout_s;                    /* longest wait for the orders to settle */
    double request_timeout_s;            /* longest wait for one HTTP response */
    const char *headers[OB_MAX_HEADERS]; /* --header lines, "Name: value" */
    size_t nheaders;
    const char *token;            /* bearer token for POST /orders (--token, $ORDERS_TOKEN) */
    const char *admin_token;      /* for the set-up PUTs (--admin-token, $ADMIN_TOKEN) */
    ob_pid_arg pids[OB_MAX_PIDS]; /* --pids */
    size_t npids;
    int broker_pid;        /* --broker-pid, 0 = find it */
    const char *json_path; /* --json FILE */
    const char *svg_path;  /* --svg FILE */
    bool quiet;            /* no progress lines */
    bool requests;         /* --requests: Kafka requests, round trips, commits per order */
} ob_opts;

/* Set by SIGINT/SIGTERM; the only mutable global of the program. */
extern volatile sig_atomic_t ob_stop;

/* Installs the SIGINT/SIGTERM handler that sets ob_stop; ignores SIGPIPE. */
void ob_signals_install(void);

/* Parses the command line into o (defaults and environment included).
 * Returns -1 to go on, else the exit code to stop with: OB_EXIT_OK after
 * --help or --version, OB_EXIT_USAGE after a reported usage error. */
int ob_opts_parse(ob_opts *o, int argc, char **argv);

/* Prints "orders-bench: <message>\n" on stderr. */
void ob_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Nanoseconds on the monotonic clock and the wall clock. */
int64_t ob_mono_ns(void);
int64_t ob_real_ns(void);
