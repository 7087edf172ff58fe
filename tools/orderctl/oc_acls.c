/*
 * oc_acls.c - "orderctl acls show|ensure": the least-privilege ACLs of the
 * order system's principals, derived from the topic table, and their drift
 * on the cluster.
 *
 * Every daemon's principal (User:<daemon>) may read the topics it consumes
 * with its own consumer group, write the topic its outbox publishes and the
 * DLTs of the topics it consumes (its error handler), nothing else. The
 * operator principal (User:orderctl) reads the DLTs and the replay ledger,
 * writes the ledger and, for replay, the original topics. WRITE implies
 * DESCRIBE and, from Kafka 2.8 on (KIP-679), the idempotent producer's
 * InitProducerId; READ implies DESCRIBE. All ACLs are LITERAL, host "*",
 * ALLOW. ACLs of other principals (admin, brokers, foreign ones) are never
 * looked at.
 */
#include "oc_cmd.h"
#include "oc_dlt.h"
#include "oc_kafka.h"
#include "oc_ledger.h"

#include "ev_event.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl acls show|ensure [--group SERVICE=GROUP]... [--dry-run] [--prune]\n"
    "                                 [common options]\n"
    "\n"
    "The least-privilege ACLs of the order system (LITERAL resources, host *, ALLOW):\n"
    "User:order-service, User:payment-service and User:inventory-service read the\n"
    "topics they consume with their own consumer group (group id = service name,\n"
    "CONSUMER_GROUP's default) and write the topic they produce and the DLTs of the\n"
    "topics they consume; User:orderctl reads the DLTs and " OC_LEDGER_TOPIC ", writes\n"
    "" OC_LEDGER_TOPIC " and the original topics (dlt replay).\n"
    "\n"
    "  show     print the wanted ACLs, one per line; no broker needed\n"
    "  ensure   create the wanted ACLs that are missing (as a principal allowed to:\n"
    "           a super user such as User:admin) and report every other ALLOW or DENY\n"
    "           ACL of these four principals as \"extra: ...\"\n"
    "\n"
    "Options:\n"
    "  --group SERVICE=GROUP  the consumer group of SERVICE (its CONSUMER_GROUP), if\n"
    "                         not the service name; repeatable\n"
    "  --dry-run              ensure: report what would be created or removed, change\n"
    "                         nothing\n"
    "  --prune                ensure: delete the extra ACLs of these principals\n" OC_COMMON_HELP
    "\n"
    "Exit status: 0 every wanted ACL present (created now or before) and no extra one\n"
    "left, 1 drift (extra ACLs not pruned; with --dry-run also missing ones), 2 usage\n"
    "error, 3 broker error or an ACL could not be created or deleted.\n";

#define MAX_WANTED 48
#define N_SERVICES 3

typedef struct {
    rd_kafka_ResourceType_t restype;
    char name[160];
    char principal[96];
    rd_kafka_AclOperation_t op;
    bool present;
} acl_row;

typedef struct {
    const char *service;
    const char *consumes[2];
    const char *produces;
    const char *group; /* --group, else the service name */
} service_def;

typedef struct {
    bool show, dry_run, prune;
    service_def svc[N_SERVICES];
    acl_row want[MAX_WANTED];
    size_t nwant;
    int ok, created, extra, removed, failed;
} acls;

static const char *const operator_principal = "User:orderctl";

static void defaults(acls *a)
{
    static const service_def svc[N_SERVICES] = {
        {"order-service",
         {EV_TOPIC_PAYMENTS_COMPLETED, EV_TOPIC_INVENTORY_RESERVED},
         EV_TOPIC_ORDERS_CREATED,
         NULL},
        {"payment-service",
         {EV_TOPIC_ORDERS_CREATED, EV_TOPIC_INVENTORY_RESERVED},
         EV_TOPIC_PAYMENTS_COMPLETED,
         NULL},
        {"inventory-service",
         {EV_TOPIC_ORDERS_CREATED, EV_TOPIC_PAYMENTS_COMPLETED},
         EV_TOPIC_INVENTORY_RESERVED,
         NULL},
    };

    memcpy(a->svc, svc, sizeof(svc));
    for (size_t i = 0; i < N_SERVICES; i++)
        a->svc[i].group = a->svc[i].service;
}

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    acls *a = ctx;
    const char *eq;

    switch (opt) {
    case 'n':
        a->dry_run = true;
        return -1;
    case 'P':
        a->prune = true;
        return -1;
    case 'g':
        eq = strchr(arg, '=');
        if (!eq || eq == arg || !eq[1])
            return oc_usage("%s needs SERVICE=GROUP", name);
        for (size_t i = 0; i < N_SERVICES; i++) {
            if (strlen(a->svc[i].service) == (size_t)(eq - arg) &&
                strncmp(a->svc[i].service, arg, (size_t)(eq - arg)) == 0) {
                a->svc[i].group = eq + 1;
                return -1;
            }
        }
        return oc_usage("%s: unknown service \"%.*s\" (order-service, payment-service, "
                        "inventory-service)",
                        name, (int)(eq - arg), arg);
    default:
        return oc_usage("unknown option");
    }
}

static void add(acls *a, const char *principal, rd_kafka_ResourceType_t restype, const char *name,
                rd_kafka_AclOperation_t op)
{
    acl_row *r;

    for (size_t i = 0; i < a->nwant; i++)
        if (a->want[i].restype == restype && a->want[i].op == op &&
            strcmp(a->want[i].name, name) == 0 && strcmp(a->want[i].principal, principal) == 0)
            return;
    if (a->nwant >= MAX_WANTED)
        return; /* cannot happen: the table is fixed */
    r = &a->want[a->nwant++];
    r->restype = restype;
    snprintf(r->name, sizeof(r->name), "%s", name);
    snprintf(r->principal, sizeof(r->principal), "%s", principal);
    r->op = op;
    r->present = false;
}

/* The wanted table, from the topic table (README "Topics"). */
static void plan(acls *a)
{
    static const char *const base[] = {EV_TOPIC_ORDERS_CREATED, EV_TOPIC_PAYMENTS_COMPLETED,
                                       EV_TOPIC_INVENTORY_RESERVED};
    char principal[96], dlt[160];

    for (size_t i = 0; i < N_SERVICES; i++) {
        const service_def *s = &a->svc[i];

        snprintf(principal, sizeof(principal), "User:%s", s->service);
        for (size_t k = 0; k < 2; k++)
            add(a, principal, RD_KAFKA_RESOURCE_TOPIC, s->consumes[k], RD_KAFKA_ACL_OPERATION_READ);
        add(a, principal, RD_KAFKA_RESOURCE_GROUP, s->group, RD_KAFKA_ACL_OPERATION_READ);
        add(a, principal, RD_KAFKA_RESOURCE_TOPIC, s->produces, RD_KAFKA_ACL_OPERATION_WRITE);
        for (size_t k = 0; k < 2; k++) {
            snprintf(dlt, sizeof(dlt), "%s%s", s->consumes[k], OC_DLT_SUFFIX);
            add(a, principal, RD_KAFKA_RESOURCE_TOPIC, dlt, RD_KAFKA_ACL_OPERATION_WRITE);
        }
    }
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++) {
        snprintf(dlt, sizeof(dlt), "%s%s", base[i], OC_DLT_SUFFIX);
        add(a, operator_principal, RD_KAFKA_RESOURCE_TOPIC, dlt, RD_KAFKA_ACL_OPERATION_READ);
    }
    add(a, operator_principal, RD_KAFKA_RESOURCE_TOPIC, OC_LEDGER_TOPIC,
        RD_KAFKA_ACL_OPERATION_READ);
    add(a, operator_principal, RD_KAFKA_RESOURCE_TOPIC, OC_LEDGER_TOPIC,
        RD_KAFKA_ACL_OPERATION_WRITE);
    for (size_t i = 0; i < sizeof(base) / sizeof(base[0]); i++)
        add(a, operator_principal, RD_KAFKA_RESOURCE_TOPIC, base[i], RD_KAFKA_ACL_OPERATION_WRITE);
}

static bool ours(const acls *a, const char *principal)
{
    char p[96];

    if (strcmp(principal, operator_principal) == 0)
        return true;
    for (size_t i = 0; i < N_SERVICES; i++) {
        snprintf(p, sizeof(p), "User:%s", a->svc[i].service);
        if (strcmp(principal, p) == 0)
            return true;
    }
    return false;
}

static void print_binding(const char *what, const char *principal, const char *perm,
                          rd_kafka_AclOperation_t op, rd_kafka_ResourceType_t restype,
                          rd_kafka_ResourcePatternType_t pattern, const char *name,
                          const char *host)
{
    printf("%s: %s %s %s %s:%s", what, principal, perm, rd_kafka_AclOperation_name(op),
           rd_kafka_ResourceType_name(restype), name);
    if (pattern != RD_KAFKA_RESOURCE_PATTERN_LITERAL)
        printf(" (pattern %s)", rd_kafka_ResourcePatternType_name(pattern));
    if (host && strcmp(host, "*") != 0)
        printf(" (host %s)", host);
    putchar('\n');
}

static void print_row(const char *what, const acl_row *r)
{
    print_binding(what, r->principal, "ALLOW", r->op, r->restype, RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                  r->name, "*");
}

static rd_kafka_AdminOptions_t *options(rd_kafka_t *rk, rd_kafka_admin_op_t op, int timeout_ms)
{
    rd_kafka_AdminOptions_t *ao = rd_kafka_AdminOptions_new(rk, op);
    char e[256];

    if (ao && rd_kafka_AdminOptions_set_request_timeout(ao, timeout_ms, e, sizeof(e))) {
        oc_err("could not set admin options: %s", e);
        rd_kafka_AdminOptions_destroy(ao);
        return NULL;
    }
    return ao;
}

/* Runs one admin request started by start(rk, ao, q, ud); returns its
 * result event (caller destroys) or NULL (reported). */
static rd_kafka_event_t *
request(rd_kafka_t *rk, rd_kafka_admin_op_t op, const char *what, int timeout_ms,
        void (*start)(rd_kafka_t *, rd_kafka_AdminOptions_t *, rd_kafka_queue_t *, void *),
        void *ud)
{
    rd_kafka_AdminOptions_t *ao = options(rk, op, timeout_ms);
    rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
    rd_kafka_event_t *ev = NULL;

    if (ao) {
        start(rk, ao, q, ud);
        ev = rd_kafka_queue_poll(q, timeout_ms + 5000);
        if (!ev)
            oc_err("%s: no answer within %d s", what, timeout_ms / 1000 + 5);
        else if (rd_kafka_event_error(ev)) {
            oc_err("%s failed: %s", what, rd_kafka_event_error_string(ev));
            rd_kafka_event_destroy(ev);
            ev = NULL;
        }
        rd_kafka_AdminOptions_destroy(ao);
    }
    rd_kafka_queue_destroy(q);
    return ev;
}

static void start_describe(rd_kafka_t *rk, rd_kafka_AdminOptions_t *ao, rd_kafka_queue_t *q,
                           void *ud)
{
    rd_kafka_DescribeAcls(rk, ud, ao, q);
}

typedef struct {
    rd_kafka_AclBinding_t **b;
    size_t n;
} binding_array;

static void start_create(rd_kafka_t *rk, rd_kafka_AdminOptions_t *ao, rd_kafka_queue_t *q, void *ud)
{
    binding_array *arr = ud;
    rd_kafka_CreateAcls(rk, arr->b, arr->n, ao, q);
}

static void start_delete(rd_kafka_t *rk, rd_kafka_AdminOptions_t *ao, rd_kafka_queue_t *q, void *ud)
{
    binding_array *arr = ud;
    rd_kafka_DeleteAcls(rk, arr->b, arr->n, ao, q);
}

static bool matches(const acl_row *r, const rd_kafka_AclBinding_t *b)
{
    const char *host = rd_kafka_AclBinding_host(b);

    return rd_kafka_AclBinding_restype(b) == r->restype &&
           rd_kafka_AclBinding_resource_pattern_type(b) == RD_KAFKA_RESOURCE_PATTERN_LITERAL &&
           rd_kafka_AclBinding_operation(b) == r->op &&
           rd_kafka_AclBinding_permission_type(b) == RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW && host &&
           strcmp(host, "*") == 0 && strcmp(rd_kafka_AclBinding_name(b), r->name) == 0 &&
           strcmp(rd_kafka_AclBinding_principal(b), r->principal) == 0;
}

/* Deletes the extra bindings (exact filters, one per binding). */
static int prune(acls *a, rd_kafka_t *rk, const rd_kafka_AclBinding_t **extra, size_t n,
                 int timeout_ms)
{
    binding_array arr = {calloc(n + 1, sizeof(*arr.b)), 0};
    rd_kafka_event_t *ev = NULL;
    char e[256];
    int r = -EIO;

    for (size_t i = 0; arr.b && i < n; i++) {
        const rd_kafka_AclBinding_t *b = extra[i];
        rd_kafka_AclBindingFilter_t *f = rd_kafka_AclBindingFilter_new(
            rd_kafka_AclBinding_restype(b), rd_kafka_AclBinding_name(b),
            rd_kafka_AclBinding_resource_pattern_type(b), rd_kafka_AclBinding_principal(b),
            rd_kafka_AclBinding_host(b), rd_kafka_AclBinding_operation(b),
            rd_kafka_AclBinding_permission_type(b), e, sizeof(e));
        if (!f) {
            oc_err("could not make an ACL filter: %s", e);
            break;
        }
        arr.b[arr.n++] = f;
    }
    if (arr.b && arr.n == n)
        ev =
            request(rk, RD_KAFKA_ADMIN_OP_DELETEACLS, "DeleteAcls", timeout_ms, start_delete, &arr);
    if (ev) {
        size_t cnt = 0;
        const rd_kafka_DeleteAcls_result_response_t **res =
            rd_kafka_DeleteAcls_result_responses(rd_kafka_event_DeleteAcls_result(ev), &cnt);

        r = 0;
        for (size_t i = 0; i < cnt; i++) {
            const rd_kafka_error_t *err = rd_kafka_DeleteAcls_result_response_error(res[i]);
            size_t m = 0;

            rd_kafka_DeleteAcls_result_response_matching_acls(res[i], &m);
            if (err) {
                oc_err("could not delete an ACL: %s", rd_kafka_error_string(err));
                a->failed++;
            } else {
                a->removed += (int)m;
            }
        }
        if (cnt < n)
            a->failed += (int)(n - cnt);
        rd_kafka_event_destroy(ev);
    } else {
        a->failed += (int)n;
    }
    if (arr.b)
        rd_kafka_AclBinding_destroy_array(arr.b, arr.n);
    free(arr.b);
    return r;
}

/* Reads every ACL, marks the wanted ones present, reports (and prunes) the
 * extra ones of our principals. Returns 0 or -EIO. */
static int check(acls *a, rd_kafka_t *rk, int timeout_ms)
{
    char e[256];
    rd_kafka_AclBindingFilter_t *f = rd_kafka_AclBindingFilter_new(
        RD_KAFKA_RESOURCE_ANY, NULL, RD_KAFKA_RESOURCE_PATTERN_ANY, NULL, NULL,
        RD_KAFKA_ACL_OPERATION_ANY, RD_KAFKA_ACL_PERMISSION_TYPE_ANY, e, sizeof(e));
    rd_kafka_event_t *ev;
    const rd_kafka_AclBinding_t **got, **extra;
    size_t cnt = 0, nextra = 0;
    int r = 0;

    if (!f) {
        oc_err("could not make an ACL filter: %s", e);
        return -EIO;
    }
    ev = request(rk, RD_KAFKA_ADMIN_OP_DESCRIBEACLS, "DescribeAcls", timeout_ms, start_describe, f);
    rd_kafka_AclBinding_destroy(f);
    if (!ev)
        return -EIO;
    got = rd_kafka_DescribeAcls_result_acls(rd_kafka_event_DescribeAcls_result(ev), &cnt);
    extra = calloc(cnt + 1, sizeof(*extra));
    if (!extra) {
        rd_kafka_event_destroy(ev);
        return -ENOMEM;
    }
    for (size_t i = 0; i < cnt; i++) {
        bool wanted = false;

        if (!ours(a, rd_kafka_AclBinding_principal(got[i])))
            continue;
        for (size_t k = 0; k < a->nwant; k++) {
            if (matches(&a->want[k], got[i])) {
                a->want[k].present = wanted = true;
            }
        }
        if (!wanted)
            extra[nextra++] = got[i];
    }
    for (size_t k = 0; k < a->nwant; k++) {
        if (a->want[k].present) {
            print_row("ok", &a->want[k]);
            a->ok++;
        }
    }
    for (size_t i = 0; i < nextra; i++) {
        const rd_kafka_AclBinding_t *b = extra[i];

        print_binding(a->prune ? (a->dry_run ? "would remove" : "removing") : "extra",
                      rd_kafka_AclBinding_principal(b),
                      rd_kafka_AclPermissionType_name(rd_kafka_AclBinding_permission_type(b)),
                      rd_kafka_AclBinding_operation(b), rd_kafka_AclBinding_restype(b),
                      rd_kafka_AclBinding_resource_pattern_type(b), rd_kafka_AclBinding_name(b),
                      rd_kafka_AclBinding_host(b));
    }
    a->extra = (int)nextra;
    if (a->prune && !a->dry_run && nextra > 0)
        r = prune(a, rk, extra, nextra, timeout_ms);
    free(extra);
    rd_kafka_event_destroy(ev);
    return r;
}

static int create_missing(acls *a, rd_kafka_t *rk, int timeout_ms)
{
    binding_array arr = {calloc(a->nwant + 1, sizeof(*arr.b)), 0};
    const acl_row *rows[MAX_WANTED];
    rd_kafka_event_t *ev = NULL;
    char e[256];

    if (!arr.b)
        return -ENOMEM;
    for (size_t k = 0; k < a->nwant; k++) {
        const acl_row *w = &a->want[k];
        rd_kafka_AclBinding_t *b;

        if (w->present)
            continue;
        if (a->dry_run) {
            print_row("would create", w);
            a->created++;
            continue;
        }
        b = rd_kafka_AclBinding_new(w->restype, w->name, RD_KAFKA_RESOURCE_PATTERN_LITERAL,
                                    w->principal, "*", w->op, RD_KAFKA_ACL_PERMISSION_TYPE_ALLOW, e,
                                    sizeof(e));
        if (!b) {
            oc_err("could not make an ACL: %s", e);
            a->failed++;
            continue;
        }
        rows[arr.n] = w;
        arr.b[arr.n++] = b;
    }
    if (arr.n > 0)
        ev =
            request(rk, RD_KAFKA_ADMIN_OP_CREATEACLS, "CreateAcls", timeout_ms, start_create, &arr);
    if (ev) {
        size_t cnt = 0;
        const rd_kafka_acl_result_t **res =
            rd_kafka_CreateAcls_result_acls(rd_kafka_event_CreateAcls_result(ev), &cnt);

        /* One result per binding, in the order of the request. */
        for (size_t i = 0; i < cnt && i < arr.n; i++) {
            const rd_kafka_error_t *err = rd_kafka_acl_result_error(res[i]);

            if (err) {
                oc_err("could not create ACL %s %s %s:%s: %s", rows[i]->principal,
                       rd_kafka_AclOperation_name(rows[i]->op),
                       rd_kafka_ResourceType_name(rows[i]->restype), rows[i]->name,
                       rd_kafka_error_string(err));
                a->failed++;
            } else {
                print_row("created", rows[i]);
                a->created++;
            }
        }
        if (cnt < arr.n)
            a->failed += (int)(arr.n - cnt);
        rd_kafka_event_destroy(ev);
    } else if (arr.n > 0) {
        a->failed += (int)arr.n;
    }
    rd_kafka_AclBinding_destroy_array(arr.b, arr.n);
    free(arr.b);
    return 0;
}

static int show(const acls *a)
{
    for (size_t k = 0; k < a->nwant; k++) {
        const acl_row *w = &a->want[k];

        printf("%-24s %-6s %-28s %s\n", w->principal, rd_kafka_ResourceType_name(w->restype),
               w->name, rd_kafka_AclOperation_name(w->op));
    }
    return OC_EXIT_OK;
}

static int run(oc_opts *o, acls *a, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"group", required_argument, NULL, 'g'},
        {"dry-run", no_argument, NULL, 'n'},
        {"prune", no_argument, NULL, 'P'},
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    rd_kafka_t *rk = NULL;
    int r;

    defaults(a);
    r = oc_getopt(argc, argv, "h", longopts, usage_text, on_opt, a, o);
    if (r >= 0)
        return r;
    plan(a);
    if (a->show)
        return show(a);
    if (oc_kafka_new(o, OC_KAFKA_ADMIN, &rk) < 0)
        return OC_EXIT_INFRA;
    r = check(a, rk, o->timeout_ms);
    if (r == 0)
        r = create_missing(a, rk, o->timeout_ms);
    oc_kafka_destroy(rk);
    if (r < 0)
        return OC_EXIT_INFRA;
    printf("acls: %d ok, %d %s, %d extra%s, %d removed, %d failed\n", a->ok, a->created,
           a->dry_run ? "to create" : "created", a->extra,
           a->extra > 0 && !a->prune ? " (kept; --prune deletes them)" : "", a->removed, a->failed);
    if (a->failed > 0)
        return OC_EXIT_INFRA;
    if ((a->extra > 0 && (!a->prune || a->dry_run)) || (a->dry_run && a->created > 0))
        return OC_EXIT_FINDING;
    return OC_EXIT_OK;
}

int oc_cmd_acls_show(oc_opts *o, int argc, char **argv)
{
    acls a = {.show = true};

    return run(o, &a, argc, argv);
}

int oc_cmd_acls_ensure(oc_opts *o, int argc, char **argv)
{
    acls a = {.show = false};

    return run(o, &a, argc, argv);
}
