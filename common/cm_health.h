/*
 * cm_health.h - the live state a daemon reports on /readyz and in its logs:
 * whether its dependencies are usable, and a few counters. Written by the
 * consumer loop, the relay and the HTTP handlers; read by anyone. All fields
 * are atomics, so no lock is needed.
 */
#pragma once

#include "cm_metrics.h"

#include <stdatomic.h>
#include <stdbool.h>

typedef struct {
    atomic_bool db_ok;       /* the consumer's database connection works */
    atomic_bool kafka_ok;    /* the brokers answer (consumer and producer) */
    atomic_bool relay_db_ok; /* the relay's database connection works */
    atomic_bool started;     /* start-up finished (subscribed, relay running) */
    atomic_llong consumed;   /* records handled (any outcome) */
    atomic_llong produced;   /* outbox rows acknowledged by the brokers */
    atomic_llong dead_lettered;
    atomic_llong retries;
    atomic_llong outbox_backlog; /* rows seen in the outbox by the last relay pass */
    /* The last Kafka authentication or authorization failure (an
     * rd_kafka_resp_err_t, 0 = none): set by cm_kafka_access_failed, cleared
     * by cm_kafka_access_ok once records flow again. Not ready while set. */
    atomic_int kafka_denied;
    atomic_int kafka_denied_seen;     /* causes logged since the last success (bits) */
    atomic_llong kafka_denied_logged; /* monotonic s (+1) of the last such error line */
    cm_metrics *metrics;              /* the daemon's registry (owned by cm_daemon) */
} cm_health;

static inline bool cm_health_ready(cm_health *h)
{
    return atomic_load(&h->started) && atomic_load(&h->db_ok) && atomic_load(&h->kafka_ok) &&
           atomic_load(&h->relay_db_ok) && atomic_load(&h->kafka_denied) == 0;
}
