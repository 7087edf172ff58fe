/*
 * ob_db.h - settlement, learned from order-service's database with libpq:
 * a cheap poll of which of the accepted orders are not settled yet (by
 * primary key, the list shrinking as they settle) until none is, then one bulk read of the run's
 * orders (status, created_at, settled_at), matched against the ids the 202s named to count lost and
 * duplicated orders.
 *
 * The run's orders are those whose customer_id starts with the run's prefix
 * ("bench-<run id>-"), so an order that was created without its 202 reaching
 * the tool is found too.
 */
#pragma once

#include "ob_run.h"

#include <libpq-fe.h>

/* Connects (application_name orders-bench) and checks that the orders table
 * is there. Returns the connection, or NULL (reported). */
PGconn *ob_db_connect(const char *conninfo);

/* Statements this tool has run on the orders database so far (each one a
 * transaction that pg_stat_database counts); ob_count adds its own. */
int64_t ob_db_statements(void);
void ob_db_count_statement(void);

/* Waits until every accepted order of the run is settled, at most --timeout, with a
 * progress line a second; fills run->settle_wait_ns and settle_timed_out.
 * Returns 0 or OB_EXIT_INFRA (reported). */
int ob_db_wait(PGconn *db, ob_run *run);

/* Reads the run's orders and fills each order's db, created_us and
 * settled_us, and the run's outcome, lost and duplicated counters. Returns 0
 * or OB_EXIT_INFRA (reported). */
int ob_db_collect(PGconn *db, ob_run *run);
