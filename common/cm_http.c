/*
 * cm_http.c - see cm_http.h.
 */
#include "cm_http.h"

#include "cm_log.h"

#include <arpa/inet.h>
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct cm_http {
    struct MHD_Daemon *daemon;
    const cm_http_route *routes;
    size_t nroutes;
    size_t body_max;
    void *ctx;
    cm_metrics *metrics;
    cm_auth *auth;
    cm_tracer *tracer;
    /* The graceful stop (cm_http_quiesce, cm_http_refuse, cm_http_drain):
     * requests taken and not yet answered, the listening socket once
     * libmicrohttpd handed it back, and the phase. */
    atomic_int open;
    MHD_socket listen_fd;
    atomic_int phase; /* RUNNING, DRAINING (Connection: close), REFUSING (503) */
    /* Refused requests are logged through a token bucket (DENIAL_LOG_BURST
     * lines, then DENIAL_LOG_RATE a second): a flood of bad credentials
     * cannot fill the journal (or trip journald's own rate limit, which
     * would drop real audit lines). What was left out is counted. */
    pthread_mutex_t denial_mu;
    double denial_credit;
    struct timespec denial_last;
    unsigned long denial_suppressed;
};

enum { RUNNING, DRAINING, REFUSING };

#define DENIAL_LOG_BURST 100.0
#define DENIAL_LOG_RATE 20.0

/* A refused body of unknown length (chunked) is read and thrown away so
 * that a client still sending reads the answer rather than a reset; past
 * this many times body_max the connection is closed instead. */
#define DISCARD_MAX_FACTOR 4

/* Per-request state, from the first callback to request completion; also
 * the cm_http_pending of an asynchronous handler. */
typedef struct cm_http_pending {
    char *body;
    size_t len;
    bool too_large;
    struct timespec start;
    struct MHD_Connection *conn;
    const char *route;    /* pattern of the route that kept the request */
    atomic_bool answered; /* resp below holds the answer */
    cm_http_resp resp;
    bool denied;                  /* 401/403 decided from the headers: body discarded */
    bool denial_quiet;            /* that refusal is not logged (rate limit) */
    cm_http_resp denial;          /* that answer */
    bool audit;                   /* a state-changing route: log the outcome */
    char token[CM_AUTH_NAME_MAX]; /* name of the token presented, "-" with auth off */
    const char *url;              /* libmicrohttpd's, valid for the whole request */
    size_t discarded;             /* body bytes read and thrown away (refused) */
    bool finished;                /* answered early: ignore what else arrives */
    bool traced;                  /* span holds the request's SERVER span */
    cm_span_ctx span;
    char traceparent[56]; /* span as a traceparent, for the handler */
} reqstate;

const char *cm_http_header(const cm_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_HEADER_KIND, name);
}

const char *cm_http_query(const cm_http_req *req, const char *name)
{
    return MHD_lookup_connection_value(req->conn, MHD_GET_ARGUMENT_KIND, name);
}

typedef struct {
    const char *const *known;
    const char *unknown;
} query_check;

static enum MHD_Result check_arg(void *cls, enum MHD_ValueKind kind, const char *key,
                                 const char *value)
{
    query_check *q = cls;
    (void)kind;
    (void)value;

    for (size_t i = 0; q->known[i]; i++)
        if (strcmp(q->known[i], key) == 0)
            return MHD_YES;
    q->unknown = key;
    return MHD_NO;
}

const char *cm_http_query_unknown(const cm_http_req *req, const char *const *known)
{
    query_check q = {known, NULL};

    MHD_get_connection_values(req->conn, MHD_GET_ARGUMENT_KIND, check_arg, &q);
    return q.unknown;
}

/* Length of the well-formed UTF-8 sequence at s (RFC 3629: no overlong
 * forms, no surrogates, nothing above U+10FFFF), 0 if there is none. */
static size_t utf8_len(const unsigned char *s)
{
    unsigned char lo = 0x80, hi = 0xBF;
    size_t n;

    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xC2 && s[0] <= 0xDF)
        n = 2;
    else if (s[0] >= 0xE0 && s[0] <= 0xEF)
        n = 3;
    else if (s[0] >= 0xF0 && s[0] <= 0xF4)
        n = 4;
    else
        return 0;
    if (s[0] == 0xE0)
        lo = 0xA0;
    else if (s[0] == 0xED)
        hi = 0x9F;
    else if (s[0] == 0xF0)
        lo = 0x90;
    else if (s[0] == 0xF4)
        hi = 0x8F;
    if (s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 2; i < n; i++)
        if (s[i] < 0x80 || s[i] > 0xBF)
            return 0;
    return n;
}

void cm_http_problem(cm_http_resp *resp, int status, const char *title, const char *fmt, ...)
{
    char detail[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(detail, sizeof(detail), fmt, ap);
    va_end(ap);
    /* The detail may echo client bytes (a path, a method) or be cut inside
     * a character; jansson takes only UTF-8, and a failed pack would send
     * the status with no body at all. */
    for (unsigned char *p = (unsigned char *)detail; *p;) {
        size_t n = utf8_len(p);
        if (n == 0)
            *p++ = '?';
        else
            p += n;
    }
    json_decref(resp->body);
    resp->status = status;
    resp->ctype = "application/problem+json";
    resp->body = json_pack("{s:s, s:s, s:i, s:s}", "type", "about:blank", "title", title, "status",
                           status, "detail", detail);
}

json_t *cm_http_json_body(const cm_http_req *req, cm_http_resp *resp)
{
    json_error_t e;
    json_t *j;

    if (!req->body || req->body_len == 0) {
        cm_http_problem(resp, 400, "Bad Request", "request body is empty");
        return NULL;
    }
    j = json_loadb(req->body, req->body_len, JSON_REJECT_DUPLICATES, &e);
    if (!j) {
        cm_http_problem(resp, 400, "Bad Request", "invalid JSON at line %d column %d: %s", e.line,
                        e.column, e.text);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        cm_http_problem(resp, 400, "Bad Request", "request body must be a JSON object");
        return NULL;
    }
    return j;
}

int cm_http_json_int(json_t *obj, const char *key, long long min, long long max, long long *ret,
                     cm_http_resp *resp)
{
    json_t *v = json_object_get(obj, key);

    if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
        cm_http_problem(resp, 400, "Bad Request",
                        "field \"%s\" must be an integer between %lld "
                        "and %lld",
                        key, min, max);
        return -EINVAL;
    }
    *ret = json_integer_value(v);
    return 0;
}

/* Matches path against pattern; sets *param for a trailing "/{}". */
static bool match(const char *pattern, const char *path, const char **param)
{
    size_t plen = strlen(pattern);

    *param = NULL;
    if (plen > 3 && strcmp(pattern + plen - 3, "/{}") == 0) {
        size_t base = plen - 2; /* keep the slash */
        if (strncmp(pattern, path, base) != 0 || path[base] == '\0' || strchr(path + base, '/'))
            return false;
        *param = path + base;
        return true;
    }
    return strcmp(pattern, path) == 0;
}

static enum MHD_Result send_resp(struct MHD_Connection *c, cm_http_resp *resp, const char *allow,
                                 bool close_after)
{
    char *text = resp->body ? json_dumps(resp->body, JSON_COMPACT) : resp->text;
    struct MHD_Response *r;
    enum MHD_Result ret;

    if (resp->body)
        free(resp->text);
    json_decref(resp->body);
    resp->body = NULL;
    resp->text = NULL;
    if (text)
        r = MHD_create_response_from_buffer(strlen(text), text, MHD_RESPMEM_MUST_FREE);
    else
        r = MHD_create_response_from_buffer(0, NULL, MHD_RESPMEM_PERSISTENT);
    if (!r) {
        free(text);
        return MHD_NO;
    }
    if (text)
        MHD_add_response_header(r, "Content-Type", resp->ctype ? resp->ctype : "application/json");
    if (resp->location[0])
        MHD_add_response_header(r, "Location", resp->location);
    if (allow)
        MHD_add_response_header(r, "Allow", allow);
    if (resp->www_auth[0])
        MHD_add_response_header(r, "WWW-Authenticate", resp->www_auth);
    /* Stopping: the client is told to reconnect (to another instance, or to
     * this one once restarted) rather than send more on this connection. */
    if (close_after)
        MHD_add_response_header(r, "Connection", "close");
    ret = MHD_queue_response(c, (unsigned)resp->status, r);
    MHD_destroy_response(r);
    return ret;
}

/* Copies a client-supplied string for a log line: printable ASCII only,
 * quotes and backslashes replaced, at most 64 characters. */
static void log_safe(const char *s, char *out, size_t outlen)
{
    size_t o = 0;

    for (; s && *s && o + 1 < outlen && o < 64; s++)
        out[o++] = (*s > 0x20 && *s < 0x7f && *s != '"' && *s != '\\') ? *s : '?';
    out[o] = '\0';
}

/* Whether a refused request may be logged now. The first one allowed after
 * some were left out says how many. */
static bool denial_log_allowed(cm_http *h)
{
    struct timespec now;
    unsigned long left_out = 0;
    bool ok;

    clock_gettime(CLOCK_MONOTONIC, &now);
    pthread_mutex_lock(&h->denial_mu);
    h->denial_credit += ((double)(now.tv_sec - h->denial_last.tv_sec) +
                         (double)(now.tv_nsec - h->denial_last.tv_nsec) / 1e9) *
                        DENIAL_LOG_RATE;
    if (h->denial_credit > DENIAL_LOG_BURST)
        h->denial_credit = DENIAL_LOG_BURST;
    h->denial_last = now;
    ok = h->denial_credit >= 1.0;
    if (ok) {
        h->denial_credit -= 1.0;
        left_out = h->denial_suppressed;
        h->denial_suppressed = 0;
    } else {
        h->denial_suppressed++;
    }
    pthread_mutex_unlock(&h->denial_mu);
    if (left_out)
        log_warning("http refused requests not logged count=%lu (more than %.0f a second; all "
                    "are counted in orders_http_requests_total)",
                    left_out, DENIAL_LOG_RATE);
    return ok;
}

static void audit(const reqstate *st, const char *route, const char *method, const char *url,
                  const cm_http_resp *resp)
{
    const char *param = NULL, *slash = strrchr(route, '/');
    char p[72] = "", oid[72] = "";
    json_t *id = resp->body ? json_object_get(resp->body, "orderId") : NULL;

    if (slash && strcmp(slash, "/{}") == 0 && strlen(url) >= (size_t)(slash - route) + 1)
        param = url + (slash - route) + 1;
    log_safe(param, p, sizeof(p));
    if (resp->status == 202 && json_is_string(id))
        log_safe(json_string_value(id), oid, sizeof(oid));
    cm_log_audit("audit token=%s method=%s route=%s param=\"%s\" status=%d%s%s", st->token, method,
                 route, p, resp->status, oid[0] ? " order_id=" : "", oid);
}

/* The method as a metric label: one of the standard methods, or "OTHER"
 * for anything a client made up (a closed set: a label value is a series
 * kept for the daemon's life, and raw input could break the exposition). */
static const char *method_label(const char *method)
{
    static const char *const known[] = {"GET",     "HEAD",    "POST",  "PUT",  "DELETE",
                                        "OPTIONS", "CONNECT", "TRACE", "PATCH"};

    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
        if (strcmp(method, known[i]) == 0)
            return known[i];
    return "OTHER";
}

/* Ends the request's span: named "<method> <route>" as Zipkin shows it. */
static void end_span(cm_http *h, const reqstate *st, const char *route, const char *method,
                     int status)
{
    char name[CM_SPAN_NAME_MAX], code[8];
    const cm_span_tag tags[] = {
        {"http.method", method_label(method)},
        {"http.route", route},
        {"http.status_code", code},
        {"http.path", st->url},
        {"error", status >= 500 ? code : NULL},
    };

    snprintf(name, sizeof(name), "%s %s", method_label(method), route);
    snprintf(code, sizeof(code), "%d", status);
    cm_trace_end(h->tracer, &st->span, CM_SPAN_SERVER, name, NULL, tags,
                 sizeof(tags) / sizeof(tags[0]), 0);
}

static enum MHD_Result finish(cm_http *h, struct MHD_Connection *c, reqstate *st, const char *route,
                              const char *method, cm_http_resp *resp, const char *allow)
{
    struct timespec now;
    char labels[192], r[96];
    double secs;

    if (st->traced)
        end_span(h, st, route, method, resp->status);
    if (st->audit && !st->denial_quiet)
        audit(st, route, method, st->url, resp);

    clock_gettime(CLOCK_MONOTONIC, &now);
    secs =
        (double)(now.tv_sec - st->start.tv_sec) + (double)(now.tv_nsec - st->start.tv_nsec) / 1e9;
    cm_metrics_label_value(route, r, sizeof(r));
    snprintf(labels, sizeof(labels), "route=\"%s\",method=\"%s\",status=\"%d\"", r,
             method_label(method), resp->status);
    cm_metrics_add(h->metrics, "orders_http_requests_total", labels, 1);
    snprintf(labels, sizeof(labels), "route=\"%s\"", r);
    cm_metrics_observe(h->metrics, "orders_http_request_duration_seconds", labels, secs);
    return send_resp(c, resp, allow, atomic_load(&h->phase) != RUNNING);
}

static bool is_json_ctype(const char *ct)
{
    size_t n = strlen("application/json");
    return ct && strncasecmp(ct, "application/json", n) == 0 &&
           (ct[n] == '\0' || ct[n] == ';' || ct[n] == ' ');
}

/* Runs an asynchronous handler; returns true if it kept the request. The
 * connection is suspended before the handler runs, so that a completion
 * from another thread always finds it suspended. */
static bool run_async(cm_http *h, struct MHD_Connection *c, reqstate *st, const cm_http_route *rt,
                      const cm_http_req *req, cm_http_resp *resp)
{
    st->conn = c;
    st->route = rt->pattern;
    MHD_suspend_connection(c);
    if (rt->handle_async(h->ctx, req, resp, st) == 1)
        return true;
    MHD_resume_connection(c);
    return false;
}

/* The route for method on url, or NULL (then allow lists the methods of
 * the routes whose pattern matched, if any). */
static const cm_http_route *find_route(cm_http *h, const char *url, const char *method,
                                       const char **param, char *allow, size_t allowlen)
{
    allow[0] = '\0';
    for (size_t i = 0; i < h->nroutes; i++) {
        const cm_http_route *rt = &h->routes[i];
        if (!match(rt->pattern, url, param))
            continue;
        if (strcmp(rt->method, method) == 0)
            return rt;
        if (!strstr(allow, rt->method))
            snprintf(allow + strlen(allow), allowlen - strlen(allow), "%s%s", allow[0] ? ", " : "",
                     rt->method);
    }
    return NULL;
}

static enum MHD_Result dispatch(cm_http *h, struct MHD_Connection *c, const char *url,
                                const char *method, reqstate *st)
{
    cm_http_resp resp = {.status = 500};
    char allow[64] = "";
    const char *param;
    const cm_http_route *rt = find_route(h, url, method, &param, allow, sizeof(allow));

    if (rt) {
        cm_http_req req = {method,  url, param,     st->body,
                           st->len, c,   st->token, h->tracer ? st->traceparent : NULL};
        if (st->denied) {
            resp = st->denial;
            st->denial = (cm_http_resp){0};
        } else if (st->too_large) {
            cm_http_problem(&resp, 413, "Content Too Large", "request body exceeds %zu bytes",
                            h->body_max);
        } else if (st->len > 0 && !is_json_ctype(MHD_lookup_connection_value(c, MHD_HEADER_KIND,
                                                                             "Content-Type"))) {
            cm_http_problem(&resp, 415, "Unsupported Media Type",
                            "request body must be application/json");
        } else if (rt->handle_async) {
            if (run_async(h, c, st, rt, &req, &resp))
                return MHD_YES;
        } else {
            rt->handle(h->ctx, &req, &resp);
        }
        return finish(h, c, st, rt->pattern, method, &resp, NULL);
    }
    if (allow[0]) {
        cm_http_problem(&resp, 405, "Method Not Allowed", "method %s is not allowed on %s", method,
                        url);
        return finish(h, c, st, "unmatched", method, &resp, allow);
    }
    cm_http_problem(&resp, 404, "Not Found", "no resource at %s", url);
    return finish(h, c, st, "unmatched", method, &resp, NULL);
}

typedef struct {
    int n;
    const char *value;
} auth_headers;

static enum MHD_Result count_auth(void *cls, enum MHD_ValueKind kind, const char *key,
                                  const char *value)
{
    auth_headers *a = cls;
    (void)kind;
    if (key && strcasecmp(key, "Authorization") == 0) {
        a->n++;
        a->value = value;
    }
    return MHD_YES;
}

static void client_addr(struct MHD_Connection *c, char *out, size_t outlen)
{
    const union MHD_ConnectionInfo *ci =
        MHD_get_connection_info(c, MHD_CONNECTION_INFO_CLIENT_ADDRESS);
    const struct sockaddr *sa = ci ? ci->client_addr : NULL;

    snprintf(out, outlen, "?");
    if (!sa)
        return;
    getnameinfo(
        sa, sa->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in),
        out, (socklen_t)outlen, NULL, 0, NI_NUMERICHOST);
}

/* Decides from the headers whether the request may reach rt. Returns true
 * if so; else fills st->denial (401/403) and logs the denial, never the
 * credential presented. */
static bool authorize(cm_http *h, struct MHD_Connection *c, const cm_http_route *rt,
                      const char *method, reqstate *st)
{
    auth_headers ah = {0};
    const char *tok = NULL;
    size_t len = 0;
    char addr[64];
    cm_auth_result res = CM_AUTH_UNKNOWN;
    const char *why;

    snprintf(st->token, sizeof(st->token), "-");
    if (!h->auth || !rt->scope)
        return true;
    MHD_get_connection_values(c, MHD_HEADER_KIND, count_auth, &ah);
    if (ah.n == 0)
        why = "no Authorization header";
    else if (ah.n > 1)
        why = "more than one Authorization header";
    else if (!cm_auth_parse_bearer(ah.value, &tok, &len))
        why = "Authorization is not \"Bearer <token>\"";
    else if ((res = cm_auth_check(h->auth, tok, len, rt->scope, st->token, sizeof(st->token))) ==
             CM_AUTH_UNKNOWN)
        why = "unknown token";
    else
        why = "token lacks the scope";
    if (res == CM_AUTH_OK)
        return true;
    client_addr(c, addr, sizeof(addr));
    st->denied = true;
    st->denial_quiet = !denial_log_allowed(h);
    st->denial = (cm_http_resp){0};
    if (res == CM_AUTH_FORBIDDEN) {
        if (!st->denial_quiet)
            log_warning("http forbidden client=%s method=%s route=%s token=%s scope=%s", addr,
                        method, rt->pattern, st->token, rt->scope);
        cm_http_problem(&st->denial, 403, "Forbidden", "this token lacks the scope %s", rt->scope);
        snprintf(st->denial.www_auth, sizeof(st->denial.www_auth),
                 "Bearer realm=\"orders\", error=\"insufficient_scope\", scope=\"%s\"", rt->scope);
    } else {
        if (!st->denial_quiet)
            log_warning("http unauthorized client=%s method=%s route=%s reason=\"%s\"", addr,
                        method, rt->pattern, why);
        cm_http_problem(&st->denial, 401, "Unauthorized",
                        "this resource needs \"Authorization: Bearer <token>\" with a valid token "
                        "(scope %s)",
                        rt->scope);
        snprintf(st->denial.www_auth, sizeof(st->denial.www_auth),
                 ah.n ? "Bearer realm=\"orders\", error=\"invalid_token\""
                      : "Bearer realm=\"orders\"");
        snprintf(st->token, sizeof(st->token), "-");
    }
    return false;
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version, const char *upload,
                                  size_t *upload_size, void **con_cls)
{
    cm_http *h = cls;
    reqstate *st = *con_cls;
    (void)version;

    if (!st) {
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Content-Length");
        const char *te = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Transfer-Encoding");
        const cm_http_route *rt;
        const char *param;
        char allow[64];
        st = calloc(1, sizeof(*st));
        if (!st)
            return MHD_NO;
        *con_cls = st;
        atomic_fetch_add(&h->open, 1);
        st->url = url;
        clock_gettime(CLOCK_MONOTONIC, &st->start);
        snprintf(st->token, sizeof(st->token), "-");
        rt = find_route(h, url, method, &param, allow, sizeof(allow));
        if (h->tracer && rt && !rt->untraced) {
            const char *tp = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "traceparent");
            st->traced = cm_trace_start(h->tracer, tp, true, &st->span);
            cm_trace_traceparent(&st->span, st->traceparent);
        }
        /* Stopping, past the drain: a request that arrives on a kept-alive
         * connection now is not run at all, so it cannot commit anything
         * whose answer the stop could cut off. */
        if (atomic_load(&h->phase) == REFUSING) {
            cm_http_resp resp = {0};
            st->finished = true;
            cm_http_problem(&resp, 503, "Service Unavailable",
                            "the server is stopping; nothing was done: send the request again");
            return finish(h, c, st, rt ? rt->pattern : "unmatched", method, &resp, NULL);
        }
        st->audit = rt && strcmp(rt->method, "GET") != 0;
        /* Authorization first, from the headers alone: a request that may
         * not reach the route never has its body stored or parsed. */
        if (rt && !authorize(h, c, rt, method, st)) {
            const char *expect = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "Expect");
            st->route = rt->pattern;
            /* At once when no body follows, when the client waits for
             * "100 Continue" before sending it, or when it is too large to
             * drain; else after the body, so that the client, still sending,
             * reads the answer instead of a reset. */
            if ((expect && strncasecmp(expect, "100-continue", 12) == 0) ||
                (!te &&
                 (!cl || strtoull(cl, NULL, 10) == 0 || strtoull(cl, NULL, 10) > h->body_max))) {
                cm_http_resp resp = st->denial;
                st->denial = (cm_http_resp){0};
                st->finished = true;
                return finish(h, c, st, rt->pattern, method, &resp, NULL);
            }
            return MHD_YES; /* answered once the body is drained, unread */
        }
        /* Refuse a declared oversize body before reading any of it: answer
         * now, libmicrohttpd then closes the connection unread. */
        if (cl && strtoull(cl, NULL, 10) > h->body_max) {
            cm_http_resp resp = {0};
            st->too_large = true;
            st->finished = true;
            st->audit = false;
            cm_http_problem(&resp, 413, "Content Too Large", "request body exceeds %zu bytes",
                            h->body_max);
            return finish(h, c, st, "unmatched", method, &resp, NULL);
        }
        return MHD_YES;
    }
    if (st->finished) {
        *upload_size = 0;
        return MHD_YES;
    }
    if (atomic_load(&st->answered)) {
        /* Resumed after cm_http_complete(). */
        cm_http_resp resp = st->resp;
        st->resp = (cm_http_resp){0};
        return finish(h, c, st, st->route, method, &resp, NULL);
    }
    if (*upload_size > 0) {
        if (st->denied || st->too_large) {
            st->discarded += *upload_size;
            if (st->discarded > DISCARD_MAX_FACTOR * h->body_max) {
                log_debug("http refused body too long to drain: closing route=%s",
                          st->route ? st->route : "unmatched");
                return MHD_NO;
            }
        }
        if (st->denied) {
            /* Discarded unread; the answer goes once the upload is over
             * (libmicrohttpd takes none while a body is still arriving). */
            st->len = 0;
        } else if (!st->too_large && st->len + *upload_size <= h->body_max) {
            char *nb = realloc(st->body, st->len + *upload_size + 1);
            if (!nb)
                return MHD_NO;
            st->body = nb;
            memcpy(st->body + st->len, upload, *upload_size);
            st->len += *upload_size;
            st->body[st->len] = '\0';
        } else {
            st->too_large = true;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    if (st->denied)
        st->len = 0;
    return dispatch(h, c, url, method, st);
}

void cm_http_complete(cm_http_pending *pending, cm_http_resp *resp)
{
    pending->resp = *resp;
    *resp = (cm_http_resp){0};
    atomic_store(&pending->answered, true);
    MHD_resume_connection(pending->conn);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
                         enum MHD_RequestTerminationCode toe)
{
    cm_http *h = cls;
    reqstate *st = *con_cls;
    (void)c;
    (void)toe;
    if (st) {
        atomic_fetch_sub(&h->open, 1);
        json_decref(st->resp.body);
        free(st->resp.text);
        json_decref(st->denial.body);
        free(st->denial.text);
        free(st->body);
        free(st);
    }
    *con_cls = NULL;
}

static void on_mhd_log(void *cls, const char *fmt, va_list ap)
{
    char msg[512];
    (void)cls;
    vsnprintf(msg, sizeof(msg), fmt, ap);
    log_debug("libmicrohttpd msg=\"%s\"", msg);
}

bool cm_http_tls_supported(void)
{
    return MHD_is_feature_supported(MHD_FEATURE_TLS) == MHD_YES;
}

int cm_http_start(const cm_http_opts *o, const cm_http_route *routes, size_t nroutes, void *ctx,
                  cm_metrics *metrics, cm_http **ret)
{
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_PASSIVE, .ai_socktype = SOCK_STREAM};
    struct addrinfo *ai = NULL;
    char portstr[8];
    /* MHD_USE_ITC: MHD_quiesce_daemon() needs it with a thread pool. */
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG | MHD_USE_EPOLL |
                     MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ITC;
    bool tls = o->tls_cert && o->tls_key;
    struct MHD_OptionItem opts[16];
    size_t n = 0;
    cm_http *h;

    if (tls && !cm_http_tls_supported())
        return -ENOTSUP;
    snprintf(portstr, sizeof(portstr), "%d", o->port);
    if (getaddrinfo(o->addr, portstr, &hints, &ai) != 0 || !ai)
        return -EINVAL;
    h = calloc(1, sizeof(*h));
    if (!h) {
        freeaddrinfo(ai);
        return -ENOMEM;
    }
    h->routes = routes;
    h->nroutes = nroutes;
    h->body_max = o->body_max;
    h->ctx = ctx;
    h->metrics = metrics;
    h->auth = o->auth;
    h->tracer = o->tracer;
    h->listen_fd = MHD_INVALID_SOCKET;
    pthread_mutex_init(&h->denial_mu, NULL);
    h->denial_credit = DENIAL_LOG_BURST;
    clock_gettime(CLOCK_MONOTONIC, &h->denial_last);
    if (ai->ai_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_SOCK_ADDR, 0, ai->ai_addr};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_THREAD_POOL_SIZE, o->threads, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_TIMEOUT, 30, NULL};
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_CONNECTION_LIMIT, 1000, NULL};
    if (o->per_ip_limit)
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                                            (intptr_t)o->per_ip_limit, NULL};
    if (tls) {
        flags |= MHD_USE_TLS;
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0, (void *)o->tls_cert};
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)o->tls_key};
        /* TLS 1.2 and 1.3 only; GnuTLS's defaults otherwise. */
        opts[n++] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_PRIORITIES, 0,
                                            (void *)"NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2"};
    }
    opts[n++] = (struct MHD_OptionItem){MHD_OPTION_END, 0, NULL};
    h->daemon =
        MHD_start_daemon(flags, (uint16_t)o->port, NULL, NULL, on_request, h,
                         MHD_OPTION_NOTIFY_COMPLETED, on_completed, h, MHD_OPTION_EXTERNAL_LOGGER,
                         on_mhd_log, NULL, MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!h->daemon) {
        pthread_mutex_destroy(&h->denial_mu);
        free(h);
        return tls ? -EPROTO : -EADDRINUSE;
    }
    *ret = h;
    return 0;
}

void cm_http_quiesce(cm_http *http)
{
    if (!http || atomic_load(&http->phase) != RUNNING)
        return;
    atomic_store(&http->phase, DRAINING);
    http->listen_fd = MHD_quiesce_daemon(http->daemon);
    /* The socket stays open until the server stops (its threads may still
     * look at it), but stops listening now: connection attempts are refused
     * at once instead of waiting in the backlog for a reset. */
    if (http->listen_fd != MHD_INVALID_SOCKET)
        shutdown(http->listen_fd, SHUT_RDWR);
    else
        log_warning("http server could not stop accepting connections before stopping");
}

void cm_http_refuse(cm_http *http)
{
    if (http)
        atomic_store(&http->phase, REFUSING);
}

int cm_http_drain(cm_http *http, const struct timespec *deadline)
{
    struct timespec now, nap = {0, 5 * 1000000L};
    int open;

    if (!http)
        return 0;
    while ((open = atomic_load(&http->open)) > 0) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec > deadline->tv_sec ||
            (now.tv_sec == deadline->tv_sec && now.tv_nsec >= deadline->tv_nsec))
            break;
        nanosleep(&nap, NULL);
    }
    return open;
}

void cm_http_stop(cm_http *http)
{
    if (!http)
        return;
    MHD_stop_daemon(http->daemon);
    if (http->listen_fd != MHD_INVALID_SOCKET)
        close(http->listen_fd);
    pthread_mutex_destroy(&http->denial_mu);
    free(http);
}
