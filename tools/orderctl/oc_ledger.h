/*
 * oc_ledger.h - the record of replayed dead letters, kept in Kafka.
 *
 * The compacted topic orders.dlt-replays holds one record per replayed DLT
 * record, keyed "<dlt topic>/<partition>/<offset>", written after the replay
 * was acknowledged. Its value is a JSON object that also holds the DLT
 * record's timestamp, so that a DLT topic deleted and created again (offsets
 * start over) is not mistaken for the old one. A tombstone (null value)
 * forgets a replay, making the record replayable again.
 *
 * oc_ledger is the in-memory set read from that topic: an open-addressing
 * hash table of ids. Not thread-safe.
 */
#pragma once

#include "oc_kafka.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define OC_LEDGER_TOPIC "orders.dlt-replays"

typedef struct oc_ledger oc_ledger;

/* Reads the whole ledger topic with consumer (up to its current end). A
 * missing topic gives an empty ledger. Returns 0 with *ret set (free with
 * oc_ledger_free), -EIO (reported) or -ENOMEM. */
int oc_ledger_load(rd_kafka_t *consumer, const struct rd_kafka_metadata *md, int timeout_ms,
                   oc_ledger **ret);

void oc_ledger_free(oc_ledger *l);

/* True if the topic existed when the ledger was loaded. */
bool oc_ledger_topic_exists(const oc_ledger *l);

/* True if the DLT record id (with DLT timestamp dlt_ts, -1 if unknown) was
 * replayed already. */
bool oc_ledger_has(const oc_ledger *l, const char *id, int64_t dlt_ts);

/* Calls fn for every replayed record, its id split into its parts. */
void oc_ledger_each(const oc_ledger *l,
                    void (*fn)(void *ud, const char *topic, size_t topic_len, int32_t partition,
                               int64_t offset),
                    void *ud);

/* Where a replayed record went. */
typedef struct {
    const char *id; /* "<dlt topic>/<partition>/<offset>" */
    int64_t dlt_ts; /* timestamp of the DLT record, -1 if none */
    const char *topic;
    int32_t partition;
    int64_t offset;
} oc_ledger_entry;

/* Hands the marker of e to producer; wait for it with oc_kafka_drain, its
 * delivery report lands in *d. Returns 0, -ENOMEM, or -EIO (reported). */
int oc_ledger_mark(rd_kafka_t *producer, const oc_ledger_entry *e, oc_delivery *d);
