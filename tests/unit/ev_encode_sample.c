/*
 * ev_encode_sample.c - prints one encoded event of each type, as
 * "<TypeName> <json>" lines, so that test_schemas.py can check the real
 * encoder output against schemas/. Takes no arguments; exits non-zero if an
 * encoder fails.
 */
#include "ev_event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int emit(ev_type t, int r, char *json)
{
    if (r < 0) {
        fprintf(stderr, "could not encode %s: %s\n", ev_type_name(t), strerror(-r));
        return 1;
    }
    printf("%s %s\n", ev_type_name(t), json);
    free(json);
    return 0;
}

int main(void)
{
    ev_order_created oc = {.quantity = 2, .amount_cents = 4999};
    ev_payment_completed pc = {.approved = true};
    ev_inventory_reserved ir = {.reserved = false};
    char *json = NULL;
    int failed = 0, r;

    ev_uuid(oc.order_id);
    memcpy(oc.customer_id, "customer-1", sizeof("customer-1"));
    memcpy(oc.sku, "SKU-RED-MUG", sizeof("SKU-RED-MUG"));
    memcpy(pc.order_id, oc.order_id, sizeof(pc.order_id));
    memcpy(pc.reason, "OK", sizeof("OK"));
    memcpy(ir.order_id, oc.order_id, sizeof(ir.order_id));
    memcpy(ir.reason, "OUT_OF_STOCK", sizeof("OUT_OF_STOCK"));

    /* Separate statements: the encoder must have run before json is read. */
    r = ev_order_created_encode(&oc, &json);
    failed |= emit(EV_ORDER_CREATED, r, json);
    r = ev_payment_completed_encode(&pc, &json);
    failed |= emit(EV_PAYMENT_COMPLETED, r, json);
    r = ev_inventory_reserved_encode(&ir, &json);
    failed |= emit(EV_INVENTORY_RESERVED, r, json);
    return failed;
}
