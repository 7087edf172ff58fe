/*
 * os_key.c - see os_key.h.
 */
#include "os_key.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int os_fingerprint(const char *customer_id, const char *sku, int32_t quantity, int64_t amount_cents,
                   char out[OS_FINGERPRINT_MAX])
{
    int n = snprintf(out, OS_FINGERPRINT_MAX, "v2:%zu:%s:%zu:%s:%" PRId32 ":%" PRId64,
                     strlen(customer_id), customer_id, strlen(sku), sku, quantity, amount_cents);

    return n < 0 || n >= OS_FINGERPRINT_MAX ? -ENAMETOOLONG : 0;
}

bool os_fingerprint_matches(const char *stored, const char *fp, const char *customer_id,
                            const char *sku, int32_t quantity, int64_t amount_cents)
{
    char v1[OS_FINGERPRINT_MAX];
    int n;

    if (strncmp(stored, "v1|", 3) != 0)
        return strcmp(stored, fp) == 0;
    n = snprintf(v1, sizeof(v1), "v1|%s|%s|%" PRId32 "|%" PRId64, customer_id, sku, quantity,
                 amount_cents);
    return n > 0 && n < (int)sizeof(v1) && strcmp(stored, v1) == 0;
}
