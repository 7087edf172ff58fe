/*
 * fuzz_event.c - fuzz target for the event codecs (libFuzzer interface).
 *
 * Any input is decoded as each of the three events. The decoders must never
 * crash, leak or read out of bounds (run under ASan/UBSan), and whatever
 * they accept must survive a round trip: encoding the decoded event and
 * decoding that again gives the same struct.
 */
#include "ev_event.h"

#include <assert.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ROUND_TRIP(type, enc, dec)                                                                 \
    do {                                                                                           \
        type a, b;                                                                                 \
        char err[128], *json = NULL;                                                               \
        memset(&a, 0, sizeof(a));                                                                  \
        memset(&b, 0, sizeof(b));                                                                  \
        if (dec(data, size, &a, err, sizeof(err)) == 0) {                                          \
            if (enc(&a, &json) != 0)                                                               \
                abort();                                                                           \
            if (dec(json, strlen(json), &b, err, sizeof(err)) != 0 || memcmp(&a, &b, sizeof(a)))   \
                abort();                                                                           \
            free(json);                                                                            \
        }                                                                                          \
    } while (0)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ROUND_TRIP(ev_order_created, ev_order_created_encode, ev_order_created_decode);
    ROUND_TRIP(ev_payment_completed, ev_payment_completed_encode, ev_payment_completed_decode);
    ROUND_TRIP(ev_inventory_reserved, ev_inventory_reserved_encode, ev_inventory_reserved_decode);
    (void)ev_traceparent_valid((const char *)data, size);
    return 0;
}
