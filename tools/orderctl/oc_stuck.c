/*
 * oc_stuck.c - "orderctl orders stuck": the orders PENDING for longer than a
 * threshold, oldest first, with the reply each still waits for, from
 * order-service's GET /orders?status=PENDING.
 */
#include "oc_api.h"
#include "oc_cmd.h"
#include "tl_cli.h"

#include <stdio.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl orders stuck [--older-than DURATION] [--limit N] [--json]\n"
    "                             [HTTP options] [common options]\n"
    "\n"
    "Lists the orders that are still PENDING after DURATION (default 5m; 30s, 5m,\n"
    "1h, 2d, or seconds), oldest first, with the reply each one still waits for:\n"
    "payment (look at payment-service), inventory (inventory-service) or both\n"
    "(neither has answered: look at order-service's outbox and the brokers first).\n"
    "Reads order-service's HTTP API (GET /orders?status=PENDING) with a token that\n"
    "has orders:read. \"orderctl order ID\" tells one order's whole story.\n"
    "\n"
    "Options:\n"
    "  --older-than DURATION  only orders older than this (default 5m)\n"
    "  --limit N              at most N orders, 1 to 1000 (default 100)\n"
    "  --json                 order-service's answer as is: {status, olderThanSeconds,\n"
    "                         limit, count, truncated, orders: [...]}\n" OC_API_HELP OC_COMMON_HELP
    "\n"
    "Exit status: 0 no order is stuck, 1 some are (listed; for cron and monitoring),\n"
    "2 usage error, 3 an unexpected answer, 69 order-service could not be reached or\n"
    "answered 5xx, 77 it refused the token (401/403).\n";

typedef struct {
    int64_t older_s, limit;
    bool json;
    oc_api api;
} stuck_args;

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    stuck_args *a = ctx;
    (void)name;

    if (oc_api_option(&a->api, opt, arg))
        return -1;
    if (opt == 'j')
        a->json = true;
    else if (opt == 'o' && tl_parse_duration(arg, 315360000, &a->older_s) < 0)
        return oc_usage("--older-than needs a duration such as 30s, 5m, 1h or 2d");
    else if (opt == 'l' && oc_parse_i64(arg, 1, 1000, &a->limit) < 0)
        return oc_usage("--limit needs a number from 1 to 1000");
    return -1;
}

static void print_age(long long t, char out[24])
{
    if (t >= 86400)
        snprintf(out, 24, "%lldd%02lldh", t / 86400, t % 86400 / 3600);
    else if (t >= 3600)
        snprintf(out, 24, "%lldh%02lldm", t / 3600, t % 3600 / 60);
    else if (t >= 60)
        snprintf(out, 24, "%lldm%02llds", t / 60, t % 60);
    else
        snprintf(out, 24, "%llds", t);
}

static void print_text(const stuck_args *a, const json_t *body)
{
    json_t *orders = json_object_get(body, "orders"), *o;
    size_t n = json_array_size(orders), i, miss[3] = {0};
    static const char *const kinds[3] = {"payment", "inventory", "both"};
    static const char *const look[3] = {"payment-service", "inventory-service",
                                        "order-service's outbox and the brokers"};

    if (n == 0) {
        printf("no order PENDING for more than %llds\n", (long long)a->older_s);
        return;
    }
    printf("%zu order(s) PENDING for more than %llds%s, oldest first:\n", n, (long long)a->older_s,
           json_is_true(json_object_get(body, "truncated")) ? " (more not shown: --limit)" : "");
    printf("  %-40s  %-9s  %-9s  %s\n", "ORDER", "AGE", "MISSING", "CREATED (UTC)");
    json_array_foreach(orders, i, o)
    {
        const char *m = json_string_value(json_object_get(o, "missing"));
        char age[24];

        print_age((long long)json_integer_value(json_object_get(o, "ageSeconds")), age);
        printf("  %-40s  %-9s  %-9s  %s\n", json_string_value(json_object_get(o, "orderId")), age,
               m ? m : "-", json_string_value(json_object_get(o, "createdAt")));
        for (int k = 0; k < 3; k++)
            miss[k] += m && strcmp(m, kinds[k]) == 0;
    }
    for (int k = 0; k < 3; k++)
        if (miss[k])
            printf("%zu waiting for %s%s: look at %s\n", miss[k], k == 2 ? "" : "the ",
                   k == 2   ? "both replies"
                   : k == 0 ? "payment reply"
                            : "stock reply",
                   look[k]);
}

int oc_cmd_orders_stuck(oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"older-than", required_argument, NULL, 'o'},
        {"limit", required_argument, NULL, 'l'},
        {"json", no_argument, NULL, 'j'},
        OC_API_LONGOPTS,
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    stuck_args a = {.older_s = 300, .limit = 100};
    char path[96];
    oc_answer ans;
    int r;

    oc_api_default(&a.api);
    if ((r = oc_getopt(argc, argv, "h", longopts, usage_text, on_opt, &a, o)) >= 0)
        return r;
    if (oc_api_prepare(&a.api, o->timeout_ms))
        return OC_EXIT_USAGE;
    snprintf(path, sizeof(path), "/orders?status=PENDING&olderThan=%lld&limit=%lld",
             (long long)a.older_s, (long long)a.limit);
    oc_api_get(&a.api, OC_SVC_ORDERS, path, &ans);
    if (ans.status == 0 || ans.status >= 500) {
        oc_err("order-service (%s) unreachable: %s", a.api.url[OC_SVC_ORDERS], ans.err);
        r = OC_EXIT_UNAVAILABLE;
    } else if (ans.status == 401 || ans.status == 403) {
        oc_err("order-service (%s) refused the token: %s (the token needs orders:read; "
               "--token-file or ORDERCTL_TOKEN)",
               a.api.url[OC_SVC_ORDERS], ans.err);
        r = OC_EXIT_NOPERM;
    } else if (ans.status != 200 || !json_is_array(json_object_get(ans.body, "orders"))) {
        oc_err("order-service (%s) answered unexpectedly: %s", a.api.url[OC_SVC_ORDERS],
               ans.status != 200 ? ans.err : "no orders list");
        r = OC_EXIT_INFRA;
    } else {
        if (a.json) {
            json_dumpf(ans.body, stdout, JSON_COMPACT | JSON_PRESERVE_ORDER);
            fputc('\n', stdout);
        } else {
            print_text(&a, ans.body);
        }
        r = json_array_size(json_object_get(ans.body, "orders")) > 0 ? OC_EXIT_FINDING : OC_EXIT_OK;
    }
    oc_answer_free(&ans);
    return r;
}
