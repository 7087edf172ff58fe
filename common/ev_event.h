/*
 * ev_event.h - the three domain events, their JSON codecs and Kafka headers.
 *
 * Events are plain value structs with fixed-size string buffers, so a decoded
 * event owns no heap memory and needs no free. Field names on the wire are
 * exactly the seed's records (camelCase). Decoding is strict: required fields,
 * types, ranges and string lengths are checked, duplicate keys are rejected,
 * unknown fields are ignored (additive versioning).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define EV_ID_MAX 64      /* orderId, customerId: at most 64 bytes */
#define EV_SKU_MAX 64     /* sku: at most 64 bytes */
#define EV_REASON_MAX 128 /* reason: at most 128 bytes */
#define EV_VERSION 1      /* the schema version this build writes and reads */

/* Topic names, fixed by the design. */
#define EV_TOPIC_ORDERS_CREATED "orders.created"
#define EV_TOPIC_PAYMENTS_COMPLETED "payments.completed"
#define EV_TOPIC_INVENTORY_RESERVED "inventory.reserved"

/* Header names carried by every event. */
#define EV_HDR_EVENT_ID "event-id"
#define EV_HDR_EVENT_TYPE "event-type"
#define EV_HDR_EVENT_VERSION "event-version"
#define EV_HDR_TRACEPARENT "traceparent"
#define EV_HDR_TYPE_ID "__TypeId__"

typedef enum {
    EV_ORDER_CREATED = 1,
    EV_PAYMENT_COMPLETED = 2,
    EV_INVENTORY_RESERVED = 3,
} ev_type;

typedef struct {
    char order_id[EV_ID_MAX + 1];
    char customer_id[EV_ID_MAX + 1];
    char sku[EV_SKU_MAX + 1];
    int32_t quantity;     /* >= 1 */
    int64_t amount_cents; /* >= 0 */
} ev_order_created;

typedef struct {
    char order_id[EV_ID_MAX + 1];
    bool approved;
    char reason[EV_REASON_MAX + 1];
} ev_payment_completed;

typedef struct {
    char order_id[EV_ID_MAX + 1];
    bool reserved;
    char reason[EV_REASON_MAX + 1];
} ev_inventory_reserved;

/* "OrderCreated", "PaymentCompleted", "InventoryReserved"; NULL if unknown. */
const char *ev_type_name(ev_type t);
/* The seed's Java class name for __TypeId__, e.g.
 * "com.devcraftly.orders.events.OrderCreated"; NULL if unknown. */
const char *ev_type_java_class(ev_type t);
/* Inverse of ev_type_name and of ev_type_java_class (either form accepted);
 * returns 0 if the name is not known. */
ev_type ev_type_from_name(const char *name, size_t len);
/* The topic an event type is published to. */
const char *ev_type_topic(ev_type t);

/* Encoders: write compact JSON into a newly malloc'd NUL-terminated string
 * stored in *ret_json (caller frees). Return 0, or -EINVAL if a field is out
 * of range (the same rules the decoder enforces), or -ENOMEM. */
int ev_order_created_encode(const ev_order_created *e, char **ret_json);
int ev_payment_completed_encode(const ev_payment_completed *e, char **ret_json);
int ev_inventory_reserved_encode(const ev_inventory_reserved *e, char **ret_json);

/* Decoders: parse len bytes (need not be NUL-terminated) into *ret.
 * Return 0 on success; -EBADMSG if the bytes are not a JSON object (or have
 * duplicate keys); -EINVAL if a field is missing, of the wrong type, out of
 * range or too long. On failure *ret is untouched and, if err is not NULL,
 * a lowercase message naming the field is written into err (errlen bytes). */
int ev_order_created_decode(const void *buf, size_t len, ev_order_created *ret, char *err,
                            size_t errlen);
int ev_payment_completed_decode(const void *buf, size_t len, ev_payment_completed *ret, char *err,
                                size_t errlen);
int ev_inventory_reserved_decode(const void *buf, size_t len, ev_inventory_reserved *ret, char *err,
                                 size_t errlen);

/* Decodes an outcome event ({orderId, <bool>, reason}) of type
 * EV_PAYMENT_COMPLETED or EV_INVENTORY_RESERVED into its three fields
 * (order_id EV_ID_MAX + 1 bytes, why EV_REASON_MAX + 1 bytes). Returns as
 * the decoders above. */
int ev_outcome_decode(ev_type type, const void *buf, size_t len, char *order_id, bool *yes,
                      char *why, char *err, size_t errlen);

/* Validates an id-like string (orderId, customerId, sku): 1..max bytes of
 * printable ASCII without spaces. Returns true if acceptable. */
bool ev_id_valid(const char *s, size_t max);

/* Fills out with a new random (v4) UUID in lowercase text form (37 bytes). */
void ev_uuid(char out[37]);
/* Fills out with a new W3C traceparent "00-<32 hex>-<16 hex>-01" (56 bytes). */
void ev_traceparent_new(char out[56]);
/* Fills out with a new random, non-zero span id: 16 lowercase hex digits. */
void ev_span_id(char out[17]);
/* Returns true if s is a well-formed W3C traceparent of version 00. */
bool ev_traceparent_valid(const char *s, size_t len);
