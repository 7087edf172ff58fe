/*
 * ob_load.h - the load phase: posts the run's orders over --connections
 * keep-alive connections from one epoll loop.
 *
 * Open loop (--rate R > 0): order i is due at t0 + i/R; every due order goes
 * out on a free connection at once, and waits for one when all are busy; its
 * latency counts from when it was due. Closed loop (--rate 0): each connection
 * sends the next order as soon as its last one was answered; latency counts
 * from the actual send.
 *
 * Each order's times, HTTP status and order id land in run->orders; the
 * counters in run. A progress line goes to stderr once a second.
 */
#pragma once

#include "ob_run.h"

typedef struct ob_load ob_load;

/* Creates the epoll set and opens every connection (up to 5 s for them to
 * connect), so that connecting is not part of the first orders' latency.
 * Returns 0, or OB_EXIT_INFRA (reported). */
int ob_load_new(ob_run *run, ob_load **ret);

/* Runs the load from now on (t0); returns when every order was answered or
 * failed, or soon after SIGINT/SIGTERM (run->interrupted). Returns 0 or
 * OB_EXIT_INFRA (reported). */
int ob_load_run(ob_load *l);

void ob_load_free(ob_load *l);
