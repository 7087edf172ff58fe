/*
 * cm_dlt.h - dead-letter publishing with Spring Kafka's header conventions.
 *
 * A DLT record keeps the original key, value and headers byte for byte and
 * adds kafka_dlt-* headers encoded as Spring's DeadLetterPublishingRecoverer
 * does (partition as a 4-byte big-endian int, offset and timestamp as 8-byte
 * big-endian longs, the rest as UTF-8 text). It goes to <topic>.DLT, to the
 * same partition number as the original (or, when the DLT has fewer
 * partitions, to the partition of its key).
 */
#pragma once

#include "cm_health.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

/* Exception class names written to kafka_dlt-exception-fqcn / -cause-fqcn. */
#define CM_DLT_FQCN_LISTENER "org.springframework.kafka.listener.ListenerExecutionFailedException"
#define CM_DLT_FQCN_DESERIALIZATION                                                                \
    "org.springframework.kafka.support.serializer.DeserializationException"
#define CM_DLT_FQCN_PROCESSING "com.devcraftly.orders.RecordProcessingException"

/* Builds the headers of the DLT copy of m: a copy of m's headers plus the
 * kafka_dlt-* headers. Returns a new header list (caller owns) or NULL. */
rd_kafka_headers_t *cm_dlt_headers(const rd_kafka_message_t *m, const char *group,
                                   const char *cause_fqcn, const char *message);

/* Writes "<topic>.DLT" into out; returns -ENAMETOOLONG if it does not fit. */
int cm_dlt_topic(const char *topic, char *out, size_t outlen);

/* The DLT writer of a consumer loop: an idempotent producer (acks=all) and
 * the one write it has in flight at a time. A producer that failed for good
 * (rd_kafka_fatal_error: its idempotence state is lost, every later write
 * would fail) is destroyed and created anew by the next cm_dlt_send. */
typedef struct cm_dlt cm_dlt;

/* Returns 0 with *ret, or a negative code with err set. */
int cm_dlt_new(const char *client_id, cm_health *health, cm_dlt **ret, char *err, size_t errlen);

/* Starts the DLT write of m: the same partition number as m's when the DLT
 * has it, else (a DLT with fewer partitions) the partitioner's choice for
 * m's key. m must live until the write settles. Returns 0 (then wait with
 * cm_dlt_poll), -EBUSY (a write is in flight), or another negative code (the
 * write failed; cm_dlt_error says why; the caller tries again later). Does
 * not block. */
int cm_dlt_send(cm_dlt *d, const rd_kafka_message_t *m, const char *group, bool poison,
                const char *reason);

/* Serves the producer's delivery reports without blocking. Returns 1 once
 * the brokers acknowledged the write, 0 while it is pending (every write
 * settles within message.timeout.ms), -1 if it failed (cm_dlt_error). */
int cm_dlt_poll(cm_dlt *d);

/* Why the last write failed, one line; never NULL. */
const char *cm_dlt_error(const cm_dlt *d);

/* Gives up the write in flight (stop): purges it and waits at most 1 s for
 * its report. */
void cm_dlt_abort(cm_dlt *d);

/* Aborts what is in flight, destroys the producer and d. Accepts NULL. */
void cm_dlt_free(cm_dlt *d);
