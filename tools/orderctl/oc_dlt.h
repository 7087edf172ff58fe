/*
 * oc_dlt.h - decoding and printing dead-letter records.
 *
 * The inverse of common/cm_dlt.c: the kafka_dlt-* headers carry the original
 * topic as text, the original partition as a 4-byte big-endian int, offset
 * and timestamp as 8-byte big-endian longs, the rest as UTF-8 text (Spring
 * Kafka's DeadLetterPublishingRecoverer encodings).
 */
#pragma once

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define OC_DLT_SUFFIX ".DLT"
#define OC_DLT_HDR_PREFIX "kafka_dlt-"
/* The dead-letter topics of the system, one per event topic. */
#define OC_DLT_COUNT 3
extern const char *const oc_dlt_topics[OC_DLT_COUNT];

/* The header a replayed record carries: "<dlt topic>/<partition>/<offset>". */
#define OC_HDR_REPLAYED_FROM "orders-replayed-from"

/* A byte string inside a message's headers; p is NULL when absent. */
typedef struct {
    const char *p;
    size_t n;
} oc_bytes;

/* The decoded kafka_dlt-* headers of one record. The oc_bytes point into
 * the message's headers and live as long as the message. */
typedef struct {
    oc_bytes topic;
    bool has_partition, has_offset, has_timestamp;
    int32_t partition;
    int64_t offset;
    int64_t timestamp; /* ms since the epoch */
    oc_bytes timestamp_type, group, fqcn, cause_fqcn, message;
} oc_dlt_info;

/* Decodes the kafka_dlt-* headers of h (which may be NULL). A numeric
 * header of the wrong size counts as absent. */
void oc_dlt_decode(const rd_kafka_headers_t *h, oc_dlt_info *ret);

/* True if d's cause is a poison record (kafka_dlt-exception-cause-fqcn is
 * Spring's DeserializationException, CM_DLT_FQCN_DESERIALIZATION): a record
 * that no consumer can ever read, which every replay would dead-letter again
 * (once per consumer group). */
bool oc_dlt_is_poison(const oc_dlt_info *d);

/* Interprets n (<= 8) bytes as a big-endian unsigned integer. */
uint64_t oc_be_decode(const void *p, size_t n);

/* Formats ms since the epoch as RFC 3339 UTC with milliseconds
 * ("2026-11-26T22:50:01.123Z") into out. */
void oc_rfc3339_ms(int64_t ms, char out[32]);

/* True if name is a dead-letter header that a replay drops. */
bool oc_dlt_header_dropped(const char *name);

/* Writes "<topic>/<partition>/<offset>" of m into out; returns 0 or
 * -ENAMETOOLONG. */
int oc_record_id(const rd_kafka_message_t *m, char *out, size_t outlen);

/* Writes n bytes at p for a terminal: valid UTF-8 as is, control
 * characters (C0, C1, DEL), invalid bytes and backslashes escaped (\xNN,
 * \\), so that a hostile record cannot drive the operator's terminal.
 * Writes "-" when p is NULL. */
void oc_put_escaped(FILE *f, const void *p, size_t n);

/* Prints record m of a DLT as an indented text block (control bytes
 * escaped) or as one JSON object on one line. Returns 0 or -EIO/-ENOMEM. */
int oc_dlt_print_text(FILE *f, const rd_kafka_message_t *m);
int oc_dlt_print_json(FILE *f, const rd_kafka_message_t *m);
/* The object oc_dlt_print_json() prints (caller decrefs), or NULL (no memory). */
json_t *oc_dlt_json(const rd_kafka_message_t *m);
