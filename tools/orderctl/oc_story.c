/*
 * oc_story.c - "orderctl order ID": everything known about one order, in
 * time order, read through the daemons' HTTP APIs (never their databases)
 * and from the dead-letter topics.
 *
 * Sources: GET /orders/{id} (order-service: created, each reply with its
 * reason and time, settled, the trace id), GET /payments/{id} and GET
 * /reservations/{id} (the charge and the stock, with refund or release),
 * GET /outbox/{id} of each daemon (events committed but not yet published),
 * and the last --dlt-max records of every partition of the three DLTs,
 * matched by key. A source that cannot answer is named on stderr and the
 * others are still shown (exit 69).
 */
#include "oc_story.h"
#include "oc_api.h"
#include "oc_cmd.h"
#include "oc_dlt.h"
#include "oc_kafka.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char usage_text[] =
    "Usage: orderctl order ID [--json] [--dlt-max N | --no-dlt] [HTTP options]\n"
    "                [common options]\n"
    "\n"
    "Prints, in time order, everything known about one order: its row in\n"
    "order-service (created, each reply with its reason and time, settled), the\n"
    "payment (charged, declined, refunded: amounts, reasons, times), the reservation\n"
    "(reserved, rejected, released), the events of that order each daemon has\n"
    "committed but not yet published (its outbox), the records of that order on the\n"
    "dead-letter topics (found by key, headers decoded as dlt tail does) and the\n"
    "trace id. Reads the daemons' HTTP APIs with a token that has orders:read,\n"
    "payments:read and inventory:read, and the dead-letter topics from the brokers\n"
    "(--bootstrap, KAFKA_* as for dlt tail).\n"
    "\n"
    "Options:\n"
    "  --json           one JSON object (schema in tools/README.md)\n"
    "  --dlt-max N      search the last N records of each dead-letter partition\n"
    "                   (default 1000)\n"
    "  --no-dlt         do not search the dead-letter topics\n" OC_API_HELP OC_COMMON_HELP "\n"
    "Exit status: 0 the order was found, 1 no source knows it, 2 usage error,\n"
    "3 an unexpected answer, 69 a daemon or the brokers could not be reached or\n"
    "answered 5xx (named on stderr; what the others know is still printed),\n"
    "77 a daemon refused the token (401/403).\n";

#define DLT_MAX_DEFAULT 1000

static int on_opt(void *ctx, int opt, const char *arg, const char *name)
{
    oc_story *s = ctx;
    (void)name;

    if (oc_api_option(&s->api, opt, arg))
        return -1;
    if (opt == 'j')
        s->json = true;
    else if (opt == 'n')
        s->dlt_max = 0;
    else if (opt == 'd' && oc_parse_i64(arg, 1, 1000000, &s->dlt_max) < 0)
        return oc_usage("--dlt-max needs a number from 1 to 1000000");
    return -1;
}

static int parse_args(oc_story *s, oc_opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"json", no_argument, NULL, 'j'},
        {"dlt-max", required_argument, NULL, 'd'},
        {"no-dlt", no_argument, NULL, 'n'},
        OC_API_LONGOPTS,
        OC_COMMON_LONGOPTS,
        {NULL, 0, NULL, 0},
    };
    int r;

    /* oc_getopt refuses positional arguments: take ID out first. */
    for (int i = 1; i < argc; i++) {
        bool takes_value = false;

        if (argv[i][0] == '-' && argv[i][1] == '-' && !strchr(argv[i], '=')) {
            for (const struct option *lo = longopts; lo->name; lo++)
                if (strcmp(argv[i] + 2, lo->name) == 0)
                    takes_value = lo->has_arg == required_argument;
        }
        if (takes_value) {
            i++;
        } else if (argv[i][0] != '-' && !s->id) {
            s->id = argv[i];
            memmove(&argv[i], &argv[i + 1], (size_t)(argc - i - 1) * sizeof(char *));
            argc--;
            break;
        }
    }
    r = oc_getopt(argc, argv, "h", longopts, usage_text, on_opt, s, o);
    if (r >= 0)
        return r;
    if (!s->id)
        return oc_usage("orderctl order needs an order id");
    if (!oc_story_id_valid(s->id))
        return oc_usage("an order id is 1 to 64 printable characters without spaces");
    return oc_api_prepare(&s->api, o->timeout_ms) ? OC_EXIT_USAGE : -1;
}

bool oc_story_id_valid(const char *id)
{
    size_t n = strlen(id);

    if (n == 0 || n > 64)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)id[i] <= 0x20 || (unsigned char)id[i] >= 0x7f)
            return false;
    return true;
}

/* GET prefix + escaped id from svc into ans; records how svc fared. */
static void fetch(oc_story *s, oc_svc svc, const char *prefix, oc_answer *ans)
{
    char path[300];

    snprintf(path, sizeof(path), "%s", prefix);
    if (oc_api_escape(s->id, path, sizeof(path)) < 0) {
        memset(ans, 0, sizeof(*ans));
        snprintf(ans->err, sizeof(ans->err), "order id too long");
        ans->status = -1;
    } else {
        oc_api_get(&s->api, svc, path, ans);
    }
    oc_story_note(s, svc, ans);
}

/* ---- dead-letter records ---- */

static int on_dlt_record(void *ud, const rd_kafka_message_t *m)
{
    oc_story *s = ud;
    json_t *o;
    char *text = NULL;
    size_t len = 0;
    FILE *f;

    if (!m->key || m->key_len != strlen(s->id) || memcmp(m->key, s->id, m->key_len) != 0)
        return 0;
    if (!(o = oc_dlt_json(m)) || !(f = open_memstream(&text, &len))) {
        json_decref(o);
        return -ENOMEM;
    }
    oc_dlt_print_text(f, m);
    fclose(f);
    json_object_set_new(o, "text", json_string(text ? text : ""));
    free(text);
    json_array_append_new(s->dlt, o);
    return 0;
}

/* The ranges: the last dlt_max records of every partition of every DLT. */
static int dlt_ranges(oc_story *s, rd_kafka_t *rk, const struct rd_kafka_metadata *md,
                      int timeout_ms, oc_range **ret, size_t *ret_n)
{
    size_t cap = 0, n = 0;
    oc_range *r;

    for (int i = 0; i < OC_DLT_COUNT; i++) {
        const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, oc_dlt_topics[i]);
        cap += t ? (size_t)t->partition_cnt : 0;
    }
    if (!(r = calloc(cap + 1, sizeof(*r))))
        return -ENOMEM;
    for (int i = 0; i < OC_DLT_COUNT; i++) {
        const rd_kafka_metadata_topic_t *t = oc_kafka_md_topic(md, oc_dlt_topics[i]);

        if (!t) {
            oc_err("warning: topic %s does not exist: not searched", oc_dlt_topics[i]);
            continue;
        }
        for (int p = 0; p < t->partition_cnt; p++) {
            int64_t lo, hi;

            if (oc_kafka_watermarks(rk, t->topic, t->partitions[p].id, timeout_ms, &lo, &hi) < 0) {
                free(r);
                return -EIO;
            }
            if (hi <= lo)
                continue;
            r[n++] = (oc_range){t->topic, t->partitions[p].id,
                                hi - s->dlt_max > lo ? hi - s->dlt_max : lo, hi};
        }
    }
    *ret = r;
    *ret_n = n;
    return 0;
}

/* Reads the dead-letter records of the order into s->dlt; on a broker
 * failure s->dlt stays NULL and the brokers are named unreachable. */
static void scan_dlts(oc_story *s, oc_opts *o)
{
    const struct rd_kafka_metadata *md = NULL;
    rd_kafka_t *rk = NULL;
    oc_range *ranges = NULL;
    size_t n = 0;
    int r;

    if (s->dlt_max == 0)
        return;
    s->dlt = json_array();
    r = oc_kafka_new(o, OC_KAFKA_CONSUMER, &rk) < 0 ? -EINVAL : 0;
    if (r == 0)
        r = oc_kafka_metadata(rk, o->timeout_ms, &md);
    if (r == 0)
        r = dlt_ranges(s, rk, md, o->timeout_ms, &ranges, &n);
    if (r == 0 && n > 0)
        r = oc_kafka_read(rk, ranges, n, false, on_dlt_record, s);
    free(ranges);
    if (md)
        rd_kafka_metadata_destroy(md);
    oc_kafka_destroy(rk);
    if (r < 0) {
        char why[300];

        snprintf(why, sizeof(why), "brokers %s unreachable: dead-letter topics not searched",
                 o->bootstrap);
        oc_err("kafka: %s", why);
        json_decref(s->dlt);
        s->dlt = NULL;
        s->unreachable = true;
        json_array_append_new(s->unavailable,
                              json_pack("{s:s, s:s}", "service", "kafka", "error", why));
    }
}

int oc_cmd_order(oc_opts *o, int argc, char **argv)
{
    oc_story s = {.dlt_max = DLT_MAX_DEFAULT};
    oc_answer order, payment, reservation, outbox[OC_SVC_COUNT];
    int r;

    oc_api_default(&s.api);
    s.unavailable = json_array();
    if ((r = parse_args(&s, o, argc, argv)) >= 0) {
        json_decref(s.unavailable);
        return r;
    }
    fetch(&s, OC_SVC_ORDERS, "/orders/", &order);
    fetch(&s, OC_SVC_PAYMENTS, "/payments/", &payment);
    fetch(&s, OC_SVC_INVENTORY, "/reservations/", &reservation);
    fetch(&s, OC_SVC_ORDERS, "/outbox/", &outbox[OC_SVC_ORDERS]);
    fetch(&s, OC_SVC_PAYMENTS, "/outbox/", &outbox[OC_SVC_PAYMENTS]);
    fetch(&s, OC_SVC_INVENTORY, "/outbox/", &outbox[OC_SVC_INVENTORY]);
    scan_dlts(&s, o);
    r = oc_story_print(&s, &order, &payment, &reservation, outbox);
    oc_answer_free(&order);
    oc_answer_free(&payment);
    oc_answer_free(&reservation);
    for (int i = 0; i < OC_SVC_COUNT; i++)
        oc_answer_free(&outbox[i]);
    json_decref(s.dlt);
    json_decref(s.unavailable);
    return r;
}
