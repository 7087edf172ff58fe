/*
 * cm_http.h - HTTP plumbing on libmicrohttpd: a route table, JSON request
 * bodies with a size cap, JSON and application/problem+json responses.
 *
 * Routes match a method and a path; a pattern ending in "/{}" matches one
 * more non-empty path segment, handed to the handler as req->param. A path
 * that matches a pattern but not the method gets 405 with Allow; no match
 * gets 404. Requests with a body must be application/json (else 415) and at
 * most body_max bytes (else 413). A refused body that is still arriving
 * (chunked, or a 401/403 with a Content-Length) is read and thrown away up to
 * 4 x body_max, so that the client reads the answer; past that the
 * connection is closed unanswered. Handlers run on libmicrohttpd's worker
 * threads and must be thread-safe.
 *
 * A route may require a scope: with authentication on, the request must
 * carry "Authorization: Bearer <token>" of a token that has it, else it gets
 * 401 (no, malformed or unknown token; with WWW-Authenticate) or 403 (known
 * token without the scope), both problem+json. This is decided from the
 * headers alone, before the body is read into memory or the handler runs.
 * Requests to routes whose method changes state (anything but GET) are
 * audited: one log line with the token's name (never the token), method,
 * route, path parameter and status; 401/403 are logged at warning with the
 * client address.
 *
 * A route may instead have an asynchronous handler: it either answers at
 * once (returns 0 with resp filled) or keeps the request open (returns 1)
 * and answers later, from any thread, with cm_http_complete(). The
 * connection is suspended meanwhile, so a worker thread is not held by a
 * request that waits (e.g. for a group commit).
 */
#pragma once

#include "cm_auth.h"
#include "cm_metrics.h"
#include "cm_trace.h"

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <time.h>

typedef struct {
    const char *method;
    const char *path;
    const char *param; /* the "{}" segment, or NULL */
    const char *body;  /* NUL-terminated, or NULL */
    size_t body_len;
    void *conn;        /* for cm_http_header() */
    const char *token; /* name of the token that was let in; "-" when the
                          route is open or authentication is off */
    /* With tracing on, the trace context of the handler's work: the
     * request's SERVER span as a traceparent (sampled or not: "-01"/"-00").
     * NULL with tracing off (the client's header is cm_http_header()'s). */
    const char *traceparent;
} cm_http_req;

typedef struct {
    int status;
    json_t *body;       /* owned; sent as JSON */
    char *text;         /* owned (malloc); sent as is when body is NULL */
    const char *ctype;  /* default application/json */
    char location[256]; /* Location header if non-empty */
    char www_auth[160]; /* WWW-Authenticate header if non-empty */
} cm_http_resp;

typedef void (*cm_http_fn)(void *ctx, const cm_http_req *req, cm_http_resp *resp);

/* A request kept open by an asynchronous handler; owned by libmicrohttpd's
 * side until cm_http_complete() hands it back. */
typedef struct cm_http_pending cm_http_pending;

/* Returns 0 when resp holds the answer, or 1 when pending was kept and will
 * be completed with cm_http_complete() exactly once. req is valid during the
 * call only, req->body until the completion. */
typedef int (*cm_http_async_fn)(void *ctx, const cm_http_req *req, cm_http_resp *resp,
                                cm_http_pending *pending);

typedef struct {
    const char *method;
    const char *pattern; /* "/orders" or "/orders/{}" */
    cm_http_fn handle;
    cm_http_async_fn handle_async; /* used instead of handle when set */
    const char *scope;             /* required scope ("orders:write"), or NULL: open */
    bool untraced;                 /* no span (probes, scrapes) */
} cm_http_route;

typedef struct cm_http cm_http;

typedef struct {
    const char *addr;
    int port;
    int threads;
    size_t body_max;
    unsigned per_ip_limit; /* connections at once from one client address; 0 = no limit */
    /* PEM certificate (chain) and private key: both set = HTTPS only (TLS 1.2
     * and 1.3). Must stay valid until cm_http_stop(). */
    const char *tls_cert;
    const char *tls_key;
    cm_auth *auth;     /* token table, or NULL: authentication off, every route open */
    cm_tracer *tracer; /* NULL: tracing off; else a SERVER span per request to a
                          traced route, child of the client's traceparent */
} cm_http_opts;

/* Starts listening as o says. routes must outlive the server. Requests are
 * counted in metrics (may be NULL) as
 * orders_http_requests_total{route,method,status} and
 * orders_http_request_duration_seconds{route}. Returns 0 or a negative errno
 * (-ENOTSUP: TLS asked for, libmicrohttpd built without it). */
int cm_http_start(const cm_http_opts *o, const cm_http_route *routes, size_t nroutes, void *ctx,
                  cm_metrics *metrics, cm_http **ret);

/* True when libmicrohttpd was built with TLS support. */
bool cm_http_tls_supported(void);
/* A graceful stop, in this order (NULL is fine for each):
 *  cm_http_quiesce: no new connections (attempts are refused at once); the
 *    requests already taken go on, and every answer from now on carries
 *    "Connection: close".
 *  cm_http_drain: waits until every request taken has been answered (its
 *    response fully sent) or until deadline (CLOCK_MONOTONIC); returns how
 *    many are still open.
 *  cm_http_refuse: a request that arrives after this (on a kept-alive
 *    connection) is answered 503 without running its handler, so it cannot
 *    commit anything; then drain again.
 *  cm_http_stop: closes every connection and frees the server. An answer
 *    not yet sent is lost, so drain first. */
void cm_http_quiesce(cm_http *http);
int cm_http_drain(cm_http *http, const struct timespec *deadline);
void cm_http_refuse(cm_http *http);
void cm_http_stop(cm_http *http);

/* Answers a request kept by an asynchronous handler; resp's contents are
 * taken over. Callable from any thread; the server must still be running
 * (cm_http_stop() only after every pending request was completed). */
void cm_http_complete(cm_http_pending *pending, cm_http_resp *resp);

/* A request header's value, or NULL. */
const char *cm_http_header(const cm_http_req *req, const char *name);

/* A query-string parameter's value (URL-decoded; "" for "?name" without a
 * value), or NULL when absent. The first one counts when it is repeated. */
const char *cm_http_query(const cm_http_req *req, const char *name);

/* The name of the first query-string parameter of req not in known (a
 * NULL-terminated list), or NULL when every one is known: lets a route answer
 * 400 for a misspelt parameter instead of ignoring it. */
const char *cm_http_query_unknown(const cm_http_req *req, const char *const *known);

/* Fills resp with an application/problem+json body. */
void cm_http_problem(cm_http_resp *resp, int status, const char *title, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Parses req's body as one JSON object, rejecting duplicate keys. On failure
 * fills resp with a 400 problem and returns NULL. */
json_t *cm_http_json_body(const cm_http_req *req, cm_http_resp *resp);

/* Reads integer field key of obj into *ret, requiring a JSON integer within
 * [min, max]. On failure fills resp with a 400 problem naming the field and
 * returns -EINVAL. */
int cm_http_json_int(json_t *obj, const char *key, long long min, long long max, long long *ret,
                     cm_http_resp *resp);
