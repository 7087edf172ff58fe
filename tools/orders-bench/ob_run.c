/*
 * ob_run.c - see ob_run.h.
 */
#include "ob_run.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#define SETUP_TIMEOUT_MS 10000
#define STOCK_MAX 2147483647LL         /* inventory-service: largest PUT /stock value */
#define BALANCE_MAX 1000000000000000LL /* payment-service's upper bound */

static int parse_url(const ob_opts *o, const char *what, const char *s, ob_url *u)
{
    char err[160];

    if (ob_url_parse(s, u, err, sizeof(err)) < 0 ||
        ob_url_tls(u, o->cacert, o->insecure, err, sizeof(err)) < 0) {
        ob_err("%s \"%s\": %s (see --help)", what, s, err);
        return OB_EXIT_USAGE;
    }
    return 0;
}

/* The --header lines as one block, each ending in "\r\n", then
 * "Authorization: Bearer <token>" unless a --header brought its own. */
static int header_block(const ob_opts *o, const char *token, char **ret)
{
    size_t len = 1, i, off = 0;
    bool own = false;
    char *b;

    for (i = 0; i < o->nheaders; i++) {
        len += strlen(o->headers[i]) + 2;
        own = own || strncasecmp(o->headers[i], "Authorization:", 14) == 0;
    }
    if (token && !own)
        len += strlen("Authorization: Bearer \r\n") + strlen(token);
    if (!(b = malloc(len)))
        return -ENOMEM;
    for (i = 0; i < o->nheaders; i++)
        off += (size_t)snprintf(b + off, len - off, "%s\r\n", o->headers[i]);
    if (token && !own)
        off += (size_t)snprintf(b + off, len - off, "Authorization: Bearer %s\r\n", token);
    b[off] = '\0';
    *ret = b;
    return 0;
}

int ob_run_init(ob_run *run, const ob_opts *o)
{
    unsigned char rnd[4];
    int64_t i;
    int r;

    memset(run, 0, sizeof(*run));
    run->o = o;
    run->n = o->orders;
    if ((r = parse_url(o, "--url", o->url, &run->url)) != 0 ||
        (r = parse_url(o, "--payment-url", o->payment_url, &run->payment_url)) != 0 ||
        (r = parse_url(o, "--inventory-url", o->inventory_url, &run->inventory_url)) != 0)
        return r;
    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        ob_err("could not read random bytes for the run id: %s", strerror(errno));
        return OB_EXIT_INFRA;
    }
    snprintf(run->run_id, sizeof(run->run_id), "%02x%02x%02x%02x", rnd[0], rnd[1], rnd[2], rnd[3]);
    snprintf(run->prefix, sizeof(run->prefix), "bench-%s-", run->run_id);
    run->orders = calloc((size_t)run->n, sizeof(*run->orders));
    if (!run->orders || header_block(o, o->token, &run->headers) < 0 ||
        header_block(o, o->admin_token ? o->admin_token : o->token, &run->admin_headers) < 0) {
        ob_err("out of memory for %" PRId64 " orders", run->n);
        return OB_EXIT_INFRA;
    }
    for (i = 0; i < run->n; i++) {
        run->orders[i].sent_ns = -1;
        run->orders[i].done_ns = -1;
    }
    return 0;
}

void ob_run_free(ob_run *run)
{
    ob_url_free(&run->url);
    ob_url_free(&run->payment_url);
    ob_url_free(&run->inventory_url);
    free(run->orders);
    free(run->headers);
    free(run->admin_headers);
    run->orders = NULL;
    run->headers = NULL;
    run->admin_headers = NULL;
}

void ob_run_customer(const ob_run *run, int64_t i, char *buf, size_t len)
{
    snprintf(buf, len, "%sc%" PRId64, run->prefix, i % run->o->customers);
}

void ob_run_sku(const ob_run *run, int64_t i, char *buf, size_t len)
{
    snprintf(buf, len, "%ss%" PRId64, run->prefix, i % run->o->skus);
}

static int put(ob_run *run, const ob_url *u, const char *path, const char *body)
{
    char err[200];
    int status = 0;

    if (ob_http_simple(u, "PUT", path, run->admin_headers, body, SETUP_TIMEOUT_MS, &status, err,
                       sizeof(err)) < 0) {
        ob_err("could not PUT http://%s%s%s: %s", u->hostport, u->prefix, path, err);
        return OB_EXIT_INFRA;
    }
    if (status != 200) {
        ob_err("PUT http://%s%s%s answered %d (expected 200)%s", u->hostport, u->prefix, path,
               status,
               status == 401   ? ": no valid token (--admin-token or $ADMIN_TOKEN)"
               : status == 403 ? ": the token lacks payments:admin/inventory:admin"
                               : "");
        return OB_EXIT_INFRA;
    }
    return 0;
}

/* What each of k buckets needs for n orders of `each`, times the factor. */
static int64_t need(int64_t n, int64_t k, int64_t each, double factor)
{
    int64_t per = (n + k - 1) / k;
    return (int64_t)floor((double)per * (double)each * factor);
}

int ob_run_setup(ob_run *run)
{
    const ob_opts *o = run->o;
    int64_t balance = need(run->n, o->customers, o->amount, o->funds_factor);
    int64_t stock = need(run->n, o->skus, o->quantity, o->funds_factor);
    char path[128], body[96], name[64];
    int64_t i;
    int r;

    if (balance > BALANCE_MAX || stock > STOCK_MAX) {
        ob_err("funds or stock per customer/sku too large for the services: use more "
               "--customers/--skus or a smaller --amount/--quantity (see --help)");
        return OB_EXIT_USAGE;
    }
    snprintf(body, sizeof(body), "{\"balanceCents\":%" PRId64 "}", balance);
    for (i = 0; i < o->customers && i < run->n; i++) {
        ob_run_customer(run, i, name, sizeof(name));
        snprintf(path, sizeof(path), "/accounts/%s", name);
        if ((r = put(run, &run->payment_url, path, body)) != 0)
            return r;
    }
    snprintf(body, sizeof(body), "{\"available\":%" PRId64 "}", stock);
    for (i = 0; i < o->skus && i < run->n; i++) {
        ob_run_sku(run, i, name, sizeof(name));
        snprintf(path, sizeof(path), "/stock/%s", name);
        if ((r = put(run, &run->inventory_url, path, body)) != 0)
            return r;
    }
    return 0;
}

void ob_run_tick(ob_run *run)
{
    int64_t now;

    if (!run->tick)
        return;
    now = ob_mono_ns();
    if (now - run->last_tick_ns >= run->tick_ns) {
        run->last_tick_ns = now;
        run->tick(run->tick_ctx);
    }
}

void ob_run_error(ob_run *run, const char *fmt, ...)
{
    va_list ap;

    if (run->nerrors >= OB_ERRORS_KEPT)
        return;
    va_start(ap, fmt);
    vsnprintf(run->errors[run->nerrors++], sizeof(run->errors[0]), fmt, ap);
    va_end(ap);
}

int64_t ob_run_lost(const ob_run *run)
{
    return run->missing + run->unsettled;
}

int64_t ob_run_duplicated(const ob_run *run)
{
    return run->unanswered + run->answered_twice;
}
