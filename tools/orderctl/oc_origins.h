/*
 * oc_origins.h - the original records a replay has dealt with, by id.
 *
 * Each event topic has two consumer groups and each dead-letters a failing
 * record on its own, so one original record ("<topic>/<partition>/<offset>",
 * from the kafka_dlt-original-* headers) can have two DLT copies. A replay
 * sends the original back once: the first copy is sent, the others are only
 * recorded in the ledger as replayed by that send. This is the in-memory set
 * of one run: an open-addressing hash table. Not thread-safe.
 */
#pragma once

#include <stdbool.h>
#include <stdint.h>

typedef struct oc_origins oc_origins;

/* What became of one original record in this run. */
typedef struct {
    int32_t slot;      /* index in the batch in flight that sends it, or -1 */
    bool sent;         /* a copy was acknowledged (or replayed by an earlier run) */
    int32_t partition; /* where it went; -1 when an earlier run sent it */
    int64_t offset;
} oc_origin;

/* Returns 0 with *ret set (free with oc_origins_free), or -ENOMEM. */
int oc_origins_new(oc_origins **ret);

void oc_origins_free(oc_origins *o);

/* The entry of original record id, added as {-1, false, -1, -1} when missing
 * (then *ret_new is true). NULL on -ENOMEM (only when adding). The pointer is
 * valid until the next call that adds an entry. */
oc_origin *oc_origins_get(oc_origins *o, const char *id, bool *ret_new);
