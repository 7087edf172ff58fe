/*
 * oc_story_out.c - "orderctl order ID": the answers gathered by oc_story.c
 * turned into one timeline, printed as text or as one JSON object, and the
 * exit status.
 */
#include "oc_dlt.h"
#include "oc_story.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef struct {
    int64_t us;
    size_t seq; /* insertion order: equal times keep it */
    char at[40];
    const char *who;
    char what[512];
} entry;

typedef struct {
    entry *v;
    size_t n, cap;
} timeline;

void oc_story_note(oc_story *s, oc_svc svc, const oc_answer *ans)
{
    const char *name = oc_api_name(svc);
    bool failed = true;

    if (ans->status == 0 || ans->status >= 500)
        s->unreachable = true;
    else if (ans->status == 401 || ans->status == 403)
        s->denied = true;
    else if (ans->status != 200 && ans->status != 404)
        s->unexpected = true;
    else
        failed = false;
    if (!failed || s->told[svc])
        return;
    s->told[svc] = true;
    if (ans->status == 0 || ans->status >= 500)
        oc_err("%s (%s) unreachable: %s", name, s->api.url[svc], ans->err);
    else if (ans->status == 401 || ans->status == 403)
        oc_err("%s (%s) refused the token: %s (the token needs orders:read, payments:read and "
               "inventory:read; --token-file or ORDERCTL_TOKEN)",
               name, s->api.url[svc], ans->err);
    else
        oc_err("%s (%s) answered unexpectedly: %s", name, s->api.url[svc], ans->err);
    json_array_append_new(s->unavailable, json_pack("{s:s, s:s, s:i}", "service", name, "error",
                                                    ans->err, "status", ans->status));
}

int64_t oc_story_time_us(const char *s)
{
    struct tm tm = {0};
    int64_t frac = 0, scale = 1000000;
    int n = 0;

    if (!s || sscanf(s, "%4d-%2d-%2dT%2d:%2d:%2d%n", &tm.tm_year, &tm.tm_mon, &tm.tm_mday,
                     &tm.tm_hour, &tm.tm_min, &tm.tm_sec, &n) != 6)
        return INT64_MAX;
    s += n;
    if (*s == '.')
        for (s++; isdigit((unsigned char)*s); s++)
            if (scale > 1) {
                scale /= 10;
                frac += (*s - '0') * scale;
            }
    if (*s != 'Z')
        return INT64_MAX;
    tm.tm_year -= 1900;
    tm.tm_mon -= 1;
    return (int64_t)timegm(&tm) * 1000000 + frac;
}

static const char *str(const json_t *obj, const char *key)
{
    const char *v = json_string_value(json_object_get(obj, key));
    return v ? v : "-";
}

static long long num(const json_t *obj, const char *key)
{
    return (long long)json_integer_value(json_object_get(obj, key));
}

static void add(timeline *t, const char *at, const char *who, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void add(timeline *t, const char *at, const char *who, const char *fmt, ...)
{
    va_list ap;
    entry *e;

    if (!at)
        return;
    if (t->n == t->cap) {
        size_t cap = t->cap ? 2 * t->cap : 16;
        entry *v = realloc(t->v, cap * sizeof(*v));
        if (!v)
            return;
        t->v = v;
        t->cap = cap;
    }
    e = &t->v[t->n];
    e->us = oc_story_time_us(at);
    e->seq = t->n++;
    snprintf(e->at, sizeof(e->at), "%s", at);
    e->who = who;
    va_start(ap, fmt);
    vsnprintf(e->what, sizeof(e->what), fmt, ap);
    va_end(ap);
}

static void add_order(timeline *t, const json_t *o)
{
    const json_t *pay = json_object_get(o, "payment"), *inv = json_object_get(o, "inventory");
    const char *who = "order-service";

    add(t, str(o, "createdAt"), who, "order placed: %lld x %s for %lld cents by %s (PENDING)",
        num(o, "quantity"), str(o, "sku"), num(o, "amountCents"), str(o, "customerId"));
    if (json_is_object(pay))
        add(t, str(pay, "at"), who, "payment reply: %s (%s)",
            json_is_true(json_object_get(pay, "approved")) ? "approved" : "declined",
            str(pay, "reason"));
    if (json_is_object(inv))
        add(t, str(inv, "at"), who, "stock reply: %s (%s)",
            json_is_true(json_object_get(inv, "reserved")) ? "reserved" : "rejected",
            str(inv, "reason"));
    if (json_is_string(json_object_get(o, "settledAt")))
        add(t, str(o, "settledAt"), who, "settled: %s", str(o, "status"));
}

static void add_payment(timeline *t, const json_t *p)
{
    const char *st = str(p, "status"), *who = "payment-service";

    if (strcmp(st, "CHARGED") == 0 || strcmp(st, "REFUNDED") == 0)
        add(t, str(p, "createdAt"), who, "charged %lld cents to %s (%s)", num(p, "amountCents"),
            str(p, "customerId"), str(p, "reason"));
    else if (strcmp(st, "DECLINED") == 0)
        add(t, str(p, "createdAt"), who, "declined %lld cents for %s (%s)", num(p, "amountCents"),
            str(p, "customerId"), str(p, "reason"));
    else if (strcmp(st, "CANCELLED") == 0)
        add(t, str(p, "createdAt"), who,
            "stock rejected before the order arrived: it will not be charged (%s)",
            str(p, "refundReason"));
    else
        add(t, str(p, "createdAt"), who, "payment %s (%s)", st, str(p, "reason"));
    if (strcmp(st, "REFUNDED") == 0)
        add(t, str(p, "refundedAt"), who, "refunded %lld cents to %s (%s)", num(p, "amountCents"),
            str(p, "customerId"), str(p, "refundReason"));
}

static void add_reservation(timeline *t, const json_t *r)
{
    const char *st = str(r, "status"), *who = "inventory-service";

    if (strcmp(st, "RESERVED") == 0 || strcmp(st, "RELEASED") == 0)
        add(t, str(r, "createdAt"), who, "reserved %lld x %s (%s)", num(r, "quantity"),
            str(r, "sku"), str(r, "reason"));
    else if (strcmp(st, "REJECTED") == 0)
        add(t, str(r, "createdAt"), who, "rejected %lld x %s (%s)", num(r, "quantity"),
            str(r, "sku"), str(r, "reason"));
    else if (strcmp(st, "CANCELLED") == 0)
        add(t, str(r, "createdAt"), who,
            "payment declined before the order arrived: no stock will be taken (%s)",
            str(r, "releaseReason"));
    else
        add(t, str(r, "createdAt"), who, "reservation %s (%s)", st, str(r, "reason"));
    if (strcmp(st, "RELEASED") == 0)
        add(t, str(r, "releasedAt"), who, "released %lld x %s (%s)", num(r, "quantity"),
            str(r, "sku"), str(r, "releaseReason"));
}

static void add_outbox(timeline *t, oc_svc svc, const json_t *rows)
{
    size_t i;
    json_t *row;

    json_array_foreach(rows, i, row) add(
        t, str(row, "createdAt"), oc_api_name(svc), "not yet published: %s to %s (waiting %lld s)",
        str(row, "eventType"), str(row, "topic"), num(row, "ageSeconds"));
}

static void add_dlt(timeline *t, const json_t *recs)
{
    size_t i;
    json_t *m;

    json_array_foreach(recs, i, m)
        add(t, str(m, "timestamp"), "kafka", "dead-lettered to %s/%lld/%lld by %s: %s",
            str(m, "dltTopic"), num(m, "dltPartition"), num(m, "dltOffset"),
            str(m, "consumerGroup"), str(m, "exceptionMessage"));
}

static int by_time(const void *a, const void *b)
{
    const entry *x = a, *y = b;

    if (x->us != y->us)
        return x->us < y->us ? -1 : 1;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static json_t *body_if(const oc_answer *a)
{
    return a->status == 200 && a->body ? json_incref(a->body) : json_null();
}

static void print_json(const oc_story *s, const timeline *t, bool found, const oc_answer *order,
                       const oc_answer *payment, const oc_answer *reservation,
                       const oc_answer outbox[OC_SVC_COUNT])
{
    json_t *tl = json_array(), *ob = json_object();
    json_t *trace = json_object_get(order->body, "traceId");

    for (size_t i = 0; i < t->n; i++)
        json_array_append_new(tl, json_pack("{s:s, s:s, s:s}", "at", t->v[i].at, "source",
                                            t->v[i].who, "event", t->v[i].what));
    for (int i = 0; i < OC_SVC_COUNT; i++) {
        json_t *rows = json_object_get(outbox[i].body, "unpublished");
        json_object_set_new(ob, oc_api_name(i),
                            outbox[i].status == 200 && rows ? json_incref(rows) : json_null());
    }
    json_t *o = json_pack(
        "{s:s, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:o, s:O}", "orderId", s->id, "found", found,
        "traceId", order->status == 200 && json_is_string(trace) ? json_incref(trace) : json_null(),
        "order", body_if(order), "payment", body_if(payment), "reservation", body_if(reservation),
        "outbox", ob, "deadLetters", s->dlt ? json_incref(s->dlt) : json_null(), "timeline", tl,
        "unavailable", s->unavailable);
    json_dumpf(o, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
    fputc('\n', stdout);
    json_decref(o);
}

static void print_text(const oc_story *s, const timeline *t, const oc_answer *order)
{
    const json_t *o = order->body;
    size_t n = s->dlt ? json_array_size(s->dlt) : 0, i;
    json_t *m;

    printf("order %s\n", s->id);
    if (order->status == 200) {
        printf("  status:    %s\n", str(o, "status"));
        printf("  trace id:  %s\n", str(o, "traceId"));
        printf("  order:     %lld x %s for %lld cents by %s\n", num(o, "quantity"), str(o, "sku"),
               num(o, "amountCents"), str(o, "customerId"));
    } else {
        printf("  status:    %s\n",
               order->status == 404 ? "unknown to order-service" : "order-service did not answer");
    }
    printf("\ntimeline (UTC):\n");
    for (i = 0; i < t->n; i++) {
        printf("  %-27s  %-17s  ", t->v[i].at, t->v[i].who);
        oc_put_escaped(stdout, t->v[i].what, strlen(t->v[i].what));
        fputc('\n', stdout);
    }
    if (t->n == 0)
        printf("  (nothing)\n");
    if (!s->dlt) {
        printf("\ndead-letter records: %s\n",
               s->dlt_max ? "not searched (brokers unreachable)" : "not searched (--no-dlt)");
        return;
    }
    printf("\ndead-letter records of this order (last %lld of each partition searched): %zu\n",
           (long long)s->dlt_max, n);
    json_array_foreach(s->dlt, i, m) fputs(str(m, "text"), stdout);
}

int oc_story_print(oc_story *s, const oc_answer *order, const oc_answer *payment,
                   const oc_answer *reservation, const oc_answer outbox[OC_SVC_COUNT])
{
    timeline t = {0};
    bool found = order->status == 200 || payment->status == 200 || reservation->status == 200 ||
                 json_array_size(s->dlt) > 0;

    if (order->status == 200)
        add_order(&t, order->body);
    if (payment->status == 200)
        add_payment(&t, payment->body);
    if (reservation->status == 200)
        add_reservation(&t, reservation->body);
    for (int i = 0; i < OC_SVC_COUNT; i++) {
        json_t *rows = json_object_get(outbox[i].body, "unpublished");
        if (outbox[i].status == 200 && json_array_size(rows) > 0) {
            add_outbox(&t, i, rows);
            found = true;
        }
    }
    if (s->dlt)
        add_dlt(&t, s->dlt); /* the text blocks come below the timeline */
    qsort(t.v, t.n, sizeof(*t.v), by_time);
    if (s->json) {
        size_t i;
        json_t *m;

        json_array_foreach(s->dlt, i, m)
            json_object_del(m, "text"); /* the text form; JSON has the fields */
    }
    if (s->json)
        print_json(s, &t, found, order, payment, reservation, outbox);
    else
        print_text(s, &t, order);
    free(t.v);
    if (fflush(stdout) != 0) {
        oc_err("could not write to standard output");
        return OC_EXIT_INFRA;
    }
    if (s->unreachable)
        return OC_EXIT_UNAVAILABLE;
    if (s->denied)
        return OC_EXIT_NOPERM;
    if (s->unexpected)
        return OC_EXIT_INFRA;
    if (!found) {
        oc_err("no order %s: unknown to order-service, payment-service and inventory-service, "
               "nothing unpublished%s",
               s->id, s->dlt ? ", nothing on the dead-letter topics" : "");
        return OC_EXIT_FINDING;
    }
    return OC_EXIT_OK;
}
