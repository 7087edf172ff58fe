/*
 * cm_kafka.h - librdkafka set-up shared by the consumer loop and the relay.
 *
 * Our defaults come first, then every KAFKA_* environment variable overrides
 * or adds a property, so operators can tune anything librdkafka supports
 * without a rebuild. Errors name the offending variable.
 */
#pragma once

#include "cm_health.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>

/* What a client is for; its statistics are published in
 * orders_kafka_requests_total{client="relay"|"dlt"|"consumer",request}. */
typedef enum {
    CM_KAFKA_PRODUCER,     /* the outbox relay */
    CM_KAFKA_CONSUMER,     /* the consumer loop */
    CM_KAFKA_DLT_PRODUCER, /* the dead-letter writer */
} cm_kafka_role;

/* Builds a configuration for role: bootstrap servers, client.id, and for a
 * producer enable.idempotence=true, acks=all, linger.ms=1; for a consumer
 * group.id=group, enable.auto.offset.store=false, auto.offset.reset=earliest.
 * Hooks librdkafka's log and error callbacks into cm_log and health->kafka_ok.
 * Returns 0 with *ret set (caller owns it until rd_kafka_new takes it), or
 * -EINVAL with err naming the bad variable. */
int cm_kafka_conf(cm_kafka_role role, const char *client_id, const char *group, cm_health *health,
                  rd_kafka_conf_t **ret, char *err, size_t errlen);

/* Checks the KAFKA_* environment at start-up, before anything connects:
 * builds (and discards) a producer and a consumer configuration. Returns 0,
 * or -EINVAL with err naming the first unknown or invalid variable. */
int cm_kafka_check_env(char *err, size_t errlen);

/* Creates a client from conf (which it takes, even on failure). */
int cm_kafka_new(cm_kafka_role role, rd_kafka_conf_t *conf, rd_kafka_t **ret, char *err,
                 size_t errlen);

/* True for the errors that mean the brokers refused who we are or what we
 * asked for: SASL authentication, a TLS handshake the broker or we rejected
 * (certificate), and topic/group/cluster/transactional-id authorization.
 * reason is the error string (a TLS rejection shows as a transport error). */
bool cm_kafka_is_access_error(rd_kafka_resp_err_t err, const char *reason);

/* Records an access failure of client rk in h (the daemon is not ready
 * while one is recorded) and logs it as one error line naming the cause and
 * the principal (SASL user or certificate); the same failure is logged again
 * at most every 10 minutes, other clients of the daemon failing the same way
 * only at debug level. h may be NULL. */
void cm_kafka_access_failed(cm_health *h, const rd_kafka_t *rk, rd_kafka_resp_err_t err,
                            const char *reason);

/* Clears the access failures recorded by clients of rk's type (a producer's
 * records were acknowledged, a consumer got records), with an info line when
 * none is left. h may be NULL. Without traffic a failure
 * also stops counting CM_KAFKA_DENIED_HOLD_S after the last one (cm_health.h). */
void cm_kafka_access_ok(cm_health *h, const rd_kafka_t *rk);
