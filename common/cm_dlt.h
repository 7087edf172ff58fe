/*
 * cm_dlt.h - dead-letter publishing with Spring Kafka's header conventions.
 *
 * A DLT record keeps the original key, value and headers byte for byte and
 * adds kafka_dlt-* headers encoded as Spring's DeadLetterPublishingRecoverer
 * does (partition as a 4-byte big-endian int, offset and timestamp as 8-byte
 * big-endian longs, the rest as UTF-8 text). It goes to <topic>.DLT, to the
 * same partition number as the original.
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

/* Creates the producer used for DLT writes (idempotent, acks=all, delivery
 * reports wired for cm_dlt_publish). Returns 0 or -EINVAL with err set. */
int cm_dlt_producer_new(const char *client_id, cm_health *health, rd_kafka_t **ret, char *err,
                        size_t errlen);

/* Produces the DLT copy of m with producer and waits for its delivery report.
 * Returns 0 once the brokers acknowledged it, or a negative code (the caller
 * retries: a record is never skipped without its DLT copy). */
int cm_dlt_publish(rd_kafka_t *producer, const rd_kafka_message_t *m, const char *group,
                   bool poison, const char *reason);
