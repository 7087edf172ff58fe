/*
 * os_key.h - the fingerprint of a request sent with an Idempotency-Key, as a
 * pure function (no I/O).
 *
 * A key used again must name the same request, or the client gets 409. The
 * fingerprint is the request's fields in a canonical encoding that no two
 * different requests share: each string is preceded by its length, so a
 * separator inside a field ("a|b") cannot shift the boundary between fields.
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Longest fingerprint, NUL included, for ids of at most 64 bytes. */
#define OS_FINGERPRINT_MAX 192

/* Writes the fingerprint of (customer_id, sku, quantity, amount_cents) to
 * out (OS_FINGERPRINT_MAX bytes). Returns 0, or -ENAMETOOLONG if it does not
 * fit (then out is not a fingerprint and must not be stored). */
int os_fingerprint(const char *customer_id, const char *sku, int32_t quantity, int64_t amount_cents,
                   char out[OS_FINGERPRINT_MAX]);

/* Whether stored, the fingerprint kept with a key, names the request whose
 * fingerprint is fp. Keys stored before this encoding hold the old
 * "customer|sku|quantity|amount" text marked "v1|" by the migration; those
 * are compared in their own encoding, so a client retrying across an upgrade
 * still gets its order. */
bool os_fingerprint_matches(const char *stored, const char *fp, const char *customer_id,
                            const char *sku, int32_t quantity, int64_t amount_cents);
