/*
 * cm_db.h - PostgreSQL helpers: connect, run parameterised SQL, classify
 * errors, apply versioned migrations, and a small connection pool.
 *
 * Error convention (used by every caller that decides between retrying and
 * giving up):
 *   -ECONNRESET  the server, not the work, is the problem (an outage: not
 *                the fault of whatever was being processed; reconnect and
 *                retry without end): unreachable, restarting, out of
 *                resources, read-only (a standby after a failover), a
 *                statement or lock timeout (cm_db_classify_sqlstate)
 *   -EAGAIN      a transient conflict (serialization failure, deadlock):
 *                retry the same work, it is no fault of the work either
 *   -EIO         any other error: the statement itself failed
 */
#pragma once

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>

/* SQL text of timestamptz column col as RFC 3339 UTC with microseconds
 * ("2026-12-03T09:15:00.123456Z"), the form every HTTP answer uses. */
#define CM_DB_ISO_TS(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"

/* Connects and checks the connection; returns 0 or -ECONNRESET. On failure
 * err holds libpq's message (one line). */
int cm_db_connect(const char *url, PGconn **ret, char *err, size_t errlen);

/* The longest a statement of a daemon waits (a lock held elsewhere, a stuck
 * server) before it fails with 57014, an outage: the consumer loop waits it
 * out, an HTTP request answers 503. */
#define CM_DB_STATEMENT_TIMEOUT "5s"

/* Sets statement_timeout to `timeout` for the session, unless the operator
 * set one of their own (in the URL's options, for the role or the
 * database). Returns 0 or a negative errno (message: cm_db_error). */
int cm_db_default_statement_timeout(PGconn *conn, const char *timeout);

/* Maps a finished result (or NULL) on conn to 0 or one of the codes above. */
int cm_db_classify(PGconn *conn, const PGresult *res);

/* Maps a SQLSTATE (NULL or malformed: an outage) to one of the codes above:
 * classes 08, 53, 58, 57P01..57P05, 57014, 55P03 and 25006 -> -ECONNRESET;
 * 40001 and 40P01 -> -EAGAIN; anything else -> -EIO. */
int cm_db_classify_sqlstate(const char *state);

/* Which path of a daemon a thread's statements serve, to count round trips
 * by: the HTTP API with the group commit and everything else (the default),
 * the consumer loop, the outbox relay. */
typedef enum {
    CM_DB_API,
    CM_DB_CONSUMER,
    CM_DB_RELAY,
    CM_DB_PATHS,
} cm_db_path;

/* Sets the calling thread's path (at its start). */
void cm_db_thread_path(cm_db_path path);

/* Round trips this process has made to PostgreSQL so far on a path
 * (statements, prepares and pipelines that waited for the server's answer). */
unsigned long long cm_db_round_trips(cm_db_path path);

/* Runs commands without parameters (BEGIN, COMMIT, DDL; several separated by
 * ';' are allowed); returns 0 or a code. */
int cm_db_exec(PGconn *conn, const char *sql);

/* Runs a parameterised statement (text parameters). sql must be a string
 * with static storage (its address names the prepared statement that
 * connections made by cm_db_connect keep for it). On success returns 0 and,
 * if ret is not NULL, hands over the result (caller PQclear()s); otherwise
 * returns a code and logs the server's message at debug level. */
int cm_db_query(PGconn *conn, PGresult **ret, const char *sql, int nparams,
                const char *const *params);

/* One statement of a pipeline (same rules as cm_db_query). */
typedef struct {
    const char *sql;
    int nparams;
    const char *const *params;
} cm_db_stmt;

/* Sends n statements in libpq pipeline mode and waits once: one round trip
 * instead of n. Later statements must not depend on the client seeing
 * earlier results (they may depend on earlier statements' effects: they run
 * in order, inside the caller's transaction). On success returns 0 and, if
 * ret is not NULL, the n results (caller PQclears each); on failure returns
 * the code of the first failed statement (the ones after it did not run) and
 * hands out nothing. */
int cm_db_pipeline(PGconn *conn, const cm_db_stmt *stmts, int n, PGresult **ret);

/* The text form of a PostgreSQL array of the n strings vals ("{"a","b"}",
 * each element quoted, '"' and '\\' escaped), for one parameter that carries
 * a whole batch (unnest($1::text[])). Returns 0 with *ret (caller frees) or
 * -ENOMEM. */
int cm_db_array(const char *const *vals, size_t n, char **ret);

/* Convenience: the last error message of conn, one line, never NULL. */
const char *cm_db_error(PGconn *conn);

/* Applies migrations[i] for every version i+1 not yet recorded in table
 * schema_migrations, each in its own transaction, serialised between
 * instances by an advisory lock. Returns 0 or a code. */
int cm_db_migrate(PGconn *conn, const char *const *migrations, size_t n);

/* A fixed-size pool of connections for request handlers. Connections that
 * broke are reconnected on acquire. */
typedef struct cm_dbpool cm_dbpool;
int cm_dbpool_new(const char *url, size_t size, cm_dbpool **ret);
/* Blocks until a connection is free; returns 0 with *ret set, or -ECONNRESET
 * if the connection could not be (re)established. */
int cm_dbpool_acquire(cm_dbpool *pool, PGconn **ret);
void cm_dbpool_release(cm_dbpool *pool, PGconn *conn);
void cm_dbpool_free(cm_dbpool *pool);
