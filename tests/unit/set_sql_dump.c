/*
 * set_sql_dump - prints, as one JSON object, the set-based statements that
 * the three daemons' consumers run (taken from their subscription tables, so
 * the very text the daemons prepare) and order-service's transition tables
 * (os_settle_table). system_batch's differential test runs them against the
 * real PostgreSQL, a batch at once and one record at a time, and compares.
 *
 * {"subscriptions": {"<daemon>": {"<topic>": {"ncols": N, "statements":
 *   [{"sql": "...", "nparams": N}, ...]}}}, "tables": {"payment": {"true":
 *   "...", "false": "..."}, "inventory": {...}}}
 */
#include "is_inventory.h"
#include "os_order.h"
#include "os_settle.h"
#include "ps_payment.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>

static json_t *subs_json(const cm_subscription *subs, size_t n)
{
    json_t *out = json_object();

    for (size_t i = 0; i < n; i++) {
        json_t *stmts = json_array();
        if (!subs[i].set)
            continue;
        for (int j = 0; j < subs[i].set->nsql; j++)
            json_array_append_new(stmts, json_pack("{s:s, s:i}", "sql", subs[i].set->stmt[j].sql,
                                                   "nparams", subs[i].set->stmt[j].nparams));
        json_object_set_new(
            out, subs[i].topic,
            json_pack("{s:i, s:o}", "ncols", subs[i].set->ncols, "statements", stmts));
    }
    return out;
}

static json_t *tables_json(os_side side)
{
    char yes[10], no[10];

    os_settle_table(side, true, yes);
    os_settle_table(side, false, no);
    return json_pack("{s:s, s:s}", "true", yes, "false", no);
}

int main(void)
{
    json_t *all =
        json_pack("{s:{s:o, s:o, s:o}, s:{s:o, s:o}}", "subscriptions", "payment-service",
                  subs_json(ps_subscriptions, ps_nsubscriptions), "inventory-service",
                  subs_json(is_subscriptions, is_nsubscriptions), "order-service",
                  subs_json(os_subscriptions, os_nsubscriptions), "tables", "payment",
                  tables_json(OS_SIDE_PAYMENT), "inventory", tables_json(OS_SIDE_INVENTORY));
    char *s = all ? json_dumps(all, JSON_INDENT(1)) : NULL;

    if (!s) {
        fprintf(stderr, "set_sql_dump: out of memory\n");
        return 1;
    }
    puts(s);
    free(s);
    json_decref(all);
    return 0;
}
