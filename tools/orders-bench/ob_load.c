/*
 * ob_load.c - see ob_load.h.
 */
#include "ob_load.h"

#include <errno.h>
#include <inttypes.h>
#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#define MAX_EVENTS 256
#define TICK_NS 50000000LL       /* longest sleep: timeouts and progress are checked so often */
#define PROGRESS_NS 1000000000LL /* a progress line per second */
#define CONNECT_WAIT_NS 5000000000LL
#define STOP_GRACE_NS 2000000000LL /* after SIGINT: how long in-flight orders may finish */

struct ob_load {
    ob_run *run;
    int epfd;
    ob_conn *conns;
    int nconns;
    int *idle; /* stack of free connections (most recently used on top) */
    int nidle;
    int64_t next;     /* the next order to send */
    int64_t inflight; /* orders sent and not yet answered */
    int64_t done;     /* orders answered or failed */
    int64_t timeout_ns;
    int64_t last_check_ns, last_progress_ns, progress_accepted;
};

static int64_t now_ns(const ob_load *l)
{
    return ob_mono_ns() - l->run->t0_mono_ns;
}

/* When order i is due (open loop). */
static int64_t due_ns(const ob_run *run, int64_t i)
{
    return (int64_t)((double)i * 1e9 / run->o->rate);
}

/* Orders due by t that have not been sent (open loop). */
static int64_t waiting(const ob_load *l, int64_t t)
{
    int64_t due = (int64_t)floor((double)t * l->run->o->rate / 1e9) + 1;
    if (due > l->run->n)
        due = l->run->n;
    return due > l->next ? due - l->next : 0;
}

static void release(ob_load *l, ob_conn *c)
{
    l->idle[l->nidle++] = (int)(c - l->conns);
    l->inflight--;
    l->done++;
}

static void failed(ob_load *l, ob_conn *c, const char *why)
{
    ob_order *o = &l->run->orders[c->tag];

    o->done_ns = now_ns(l);
    l->run->failed++;
    ob_run_error(l->run, "order %" PRId64 ": %s", c->tag, why);
    ob_conn_close(c);
    release(l, c);
}

/* The order id of a 202's body into o->id; false if there is none. */
static bool order_id(ob_order *o, const char *body, size_t len)
{
    json_t *j = json_loadb(body, len, 0, NULL);
    const char *id = json_string_value(json_object_get(j, "orderId"));
    bool ok = id && *id && strlen(id) <= OB_ID_MAX;

    if (ok)
        memcpy(o->id, id, strlen(id) + 1);
    json_decref(j);
    return ok;
}

static void answered(ob_load *l, ob_conn *c)
{
    ob_order *o = &l->run->orders[c->tag];
    size_t len;
    const char *body = ob_conn_body(c, &len);

    o->done_ns = now_ns(l);
    o->http_status = (int16_t)c->status;
    if (c->status == 202 && order_id(o, body, len)) {
        l->run->accepted++;
    } else {
        l->run->failed++;
        ob_run_error(l->run, "order %" PRId64 ": POST /orders answered %d: %.*s", c->tag, c->status,
                     (int)(len > 120 ? 120 : len), body);
    }
    ob_conn_finish(c);
    release(l, c);
}

/* Sends order l->next on a free connection. */
static void send_next(ob_load *l, int64_t t)
{
    ob_run *run = l->run;
    int64_t i = l->next++;
    ob_order *o = &run->orders[i];
    ob_conn *c = &l->conns[l->idle[--l->nidle]];
    char body[256], customer[48], sku[48];
    int n, r;

    ob_run_customer(run, i, customer, sizeof(customer));
    ob_run_sku(run, i, sku, sizeof(sku));
    n = snprintf(body, sizeof(body),
                 "{\"customerId\":\"%s\",\"sku\":\"%s\",\"quantity\":%d,\"amountCents\":%" PRId64
                 "}",
                 customer, sku, run->o->quantity, run->o->amount);
    o->intended_ns = run->o->rate > 0 ? due_ns(run, i) : t;
    o->sent_ns = t;
    c->tag = i;
    c->started_ns = t;
    run->sent++;
    l->inflight++;
    r = ob_conn_request(c, "POST", "/orders", run->headers, body, (size_t)n);
    if (r == 0)
        answered(l, c);
    else if (r < 0)
        failed(l, c, c->err);
}

/* Sends what is due while connections are free. */
static void dispatch(ob_load *l)
{
    int64_t t = now_ns(l);

    while (l->nidle > 0 && l->next < l->run->n && !ob_stop) {
        if (l->run->o->rate > 0 && due_ns(l->run, l->next) > t)
            break;
        send_next(l, t);
    }
    if (l->nidle == 0 && l->run->o->rate > 0) {
        int64_t w = waiting(l, t);
        if (w > l->run->max_waiting)
            l->run->max_waiting = w;
    }
}

static void check_timeouts(ob_load *l, int64_t t)
{
    int i;

    for (i = 0; i < l->nconns; i++) {
        ob_conn *c = &l->conns[i];
        bool busy = c->state != OB_CONN_CLOSED && c->state != OB_CONN_IDLE;
        if (busy && t - c->started_ns > l->timeout_ns) {
            char why[96];
            snprintf(why, sizeof(why), "no response within %.1f s", l->run->o->request_timeout_s);
            failed(l, c, why);
        }
    }
}

static void progress(ob_load *l, int64_t t)
{
    ob_run *run = l->run;
    double dt = (double)(t - l->last_progress_ns) / 1e9;
    double rate = dt > 0 ? (double)(run->accepted - l->progress_accepted) / dt : 0;

    if (!run->o->quiet)
        fprintf(stderr,
                "orders-bench: %5.1f s  sent %" PRId64 "  202 %" PRId64 "  errors %" PRId64
                "  in flight %" PRId64 "  waiting %" PRId64 "  %.0f/s\n",
                (double)t / 1e9, run->sent, run->accepted, run->failed, l->inflight,
                run->o->rate > 0 && l->nidle == 0 ? waiting(l, t) : 0, rate);
    l->last_progress_ns = t;
    l->progress_accepted = run->accepted;
}

/* How long epoll may sleep: until the next order is due, at most a tick. */
static int64_t sleep_ns(const ob_load *l, int64_t t)
{
    int64_t s = TICK_NS;

    if (l->run->o->rate > 0 && l->nidle > 0 && l->next < l->run->n && !ob_stop) {
        int64_t d = due_ns(l->run, l->next) - t;
        if (d < s)
            s = d < 0 ? 0 : d;
    }
    return s;
}

/* One pass: wait for events (or the next due order) and handle them. */
static int step(ob_load *l)
{
    struct epoll_event ev[MAX_EVENTS];
    int64_t s = sleep_ns(l, now_ns(l));
    struct timespec ts = {.tv_sec = s / 1000000000, .tv_nsec = s % 1000000000};
    int n, i;

    n = epoll_pwait2(l->epfd, ev, MAX_EVENTS, &ts, NULL);
    if (n < 0 && errno != EINTR) {
        ob_err("epoll_pwait2 failed: %s", strerror(errno));
        return OB_EXIT_INFRA;
    }
    for (i = 0; i < n; i++) {
        ob_conn *c = ev[i].data.ptr;
        bool busy = c->state != OB_CONN_CLOSED && c->state != OB_CONN_IDLE;
        int r = ob_conn_on_event(c, ev[i].events);
        if (!busy)
            continue;
        if (r == 0)
            answered(l, c);
        else if (r < 0)
            failed(l, c, c->err);
    }
    return 0;
}

int ob_load_run(ob_load *l)
{
    ob_run *run = l->run;
    int64_t t, stop_at = -1;
    int r, i;

    run->t0_mono_ns = ob_mono_ns();
    run->t0_real_ns = ob_real_ns();
    while (l->done < run->n) {
        dispatch(l);
        if ((r = step(l)) != 0)
            return r;
        t = now_ns(l);
        if (t - l->last_check_ns >= TICK_NS) {
            check_timeouts(l, t);
            l->last_check_ns = t;
        }
        if (t - l->last_progress_ns >= PROGRESS_NS)
            progress(l, t);
        ob_run_tick(run);
        if (ob_stop && stop_at < 0)
            stop_at = t + STOP_GRACE_NS;
        if (ob_stop && (l->inflight == 0 || t >= stop_at)) {
            run->interrupted = true;
            break;
        }
    }
    for (i = 0; i < run->n; i++)
        if (run->orders[i].done_ns > run->end_ns)
            run->end_ns = run->orders[i].done_ns;
    for (i = 0; i < l->nconns; i++) {
        run->sockets += l->conns[i].opened;
        run->resends += l->conns[i].resends;
        run->handshakes += l->conns[i].handshakes;
    }
    return 0;
}

/* Waits until every connection is connected, TLS included (or CONNECT_WAIT_NS passed). */
static int connect_all(ob_load *l)
{
    int64_t deadline = ob_mono_ns() + CONNECT_WAIT_NS;
    int i, pending;

    for (i = 0; i < l->nconns; i++)
        if (ob_conn_connect(&l->conns[i]) < 0) {
            ob_err("could not connect to %s: %s", l->run->o->url, l->conns[i].err);
            return OB_EXIT_INFRA;
        }
    for (;;) {
        struct epoll_event ev[MAX_EVENTS];
        int n = epoll_wait(l->epfd, ev, MAX_EVENTS, 50);
        for (i = 0; i < n; i++)
            ob_conn_on_event(ev[i].data.ptr, ev[i].events);
        for (i = 0, pending = 0; i < l->nconns; i++) {
            if (l->conns[i].state == OB_CONN_CLOSED) {
                ob_err("could not connect to %s: %s", l->run->o->url,
                       l->conns[i].err[0] ? l->conns[i].err : "connection closed");
                return OB_EXIT_INFRA;
            }
            /* an https connection is up once its handshake is done */
            pending +=
                l->conns[i].state == OB_CONN_CONNECTING || l->conns[i].state == OB_CONN_HANDSHAKE;
        }
        if (pending == 0)
            return 0;
        if (ob_mono_ns() > deadline || ob_stop) {
            ob_err("could not connect to %s: %d connections still pending after 5 s",
                   l->run->o->url, pending);
            return OB_EXIT_INFRA;
        }
    }
}

int ob_load_new(ob_run *run, ob_load **ret)
{
    ob_load *l = calloc(1, sizeof(*l));
    int i, r;

    if (!l)
        return OB_EXIT_INFRA;
    l->run = run;
    l->nconns = run->o->connections;
    l->timeout_ns = (int64_t)(run->o->request_timeout_s * 1e9);
    l->conns = calloc((size_t)l->nconns, sizeof(*l->conns));
    l->idle = calloc((size_t)l->nconns, sizeof(*l->idle));
    l->epfd = epoll_create1(EPOLL_CLOEXEC);
    if (!l->conns || !l->idle || l->epfd < 0) {
        ob_err("could not set up the connections: %s", strerror(errno ? errno : ENOMEM));
        ob_load_free(l);
        return OB_EXIT_INFRA;
    }
    for (i = 0; i < l->nconns; i++) {
        ob_conn_init(&l->conns[i], &run->url, l->epfd);
        l->idle[l->nidle++] = l->nconns - 1 - i;
    }
    if ((r = connect_all(l)) != 0) {
        ob_load_free(l);
        return r;
    }
    *ret = l;
    return 0;
}

void ob_load_free(ob_load *l)
{
    int i;

    if (!l)
        return;
    for (i = 0; l->conns && i < l->nconns; i++)
        ob_conn_free(&l->conns[i]);
    if (l->epfd >= 0)
        close(l->epfd);
    free(l->conns);
    free(l->idle);
    free(l);
}
