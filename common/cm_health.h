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
#include <time.h>

#define CM_KAFKA_DENIED_HOLD_S 30

/* Monotonic seconds + 1 (never 0: 0 means "never" in the fields below). */
static inline long long cm_health_now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec + 1;
}

typedef struct {
    atomic_bool db_ok;       /* the consumer's database connection works */
    atomic_bool kafka_ok;    /* the brokers answer (consumer and producer) */
    atomic_bool relay_db_ok; /* the relay's database connection works */
    atomic_bool started;     /* start-up finished (subscribed, relay running) */
    /* The consumer joined its group: its first assignment arrived (set by
     * the rebalance callback of cm_kafka.c; an empty one counts, as an
     * instance beyond the partition count rightly gets none). Stays set
     * through later rebalances: the daemon remains a member. */
    atomic_bool group_joined;
    atomic_bool dlt_failing; /* dead-letter writes fail: the consumer waits */
    atomic_llong consumed;   /* records handled (any outcome) */
    atomic_llong produced;   /* outbox rows acknowledged by the brokers */
    atomic_llong dead_lettered;
    atomic_llong retries;
    atomic_llong outbox_backlog; /* rows seen in the outbox by the last relay pass */
    /* The last Kafka authentication or authorization failure (an
     * rd_kafka_resp_err_t, 0 = none) and when it happened: set by
     * cm_kafka_access_failed, cleared by cm_kafka_access_ok once records flow
     * again through a client of the type that failed. It counts (not ready) while failures keep
     * coming: librdkafka retries every few seconds, so a lasting failure is renewed all the time,
     * while a passing one (ACLs that reach a broker a moment after a client) lapses after
     * CM_KAFKA_DENIED_HOLD_S without traffic. */
    atomic_int kafka_denied;
    atomic_int kafka_denied_roles;    /* bit per failing client type: 1 producer, 2 consumer */
    atomic_llong kafka_denied_at;     /* monotonic s (+1) of the last failure */
    atomic_int kafka_denied_seen;     /* causes logged in this episode (bits) */
    atomic_llong kafka_denied_logged; /* monotonic s (+1) of the last such error line */
    cm_metrics *metrics;              /* the daemon's registry (owned by cm_daemon) */
} cm_health;

/* The Kafka access failure that counts now (0: none, or it lapsed). */
static inline int cm_health_kafka_denied(cm_health *h)
{
    int err = atomic_load(&h->kafka_denied_roles) ? atomic_load(&h->kafka_denied) : 0;

    if (err && cm_health_now_s() - atomic_load(&h->kafka_denied_at) > CM_KAFKA_DENIED_HOLD_S)
        return 0;
    return err;
}

static inline bool cm_health_ready(cm_health *h)
{
    return atomic_load(&h->started) && atomic_load(&h->group_joined) && atomic_load(&h->db_ok) &&
           atomic_load(&h->kafka_ok) && atomic_load(&h->relay_db_ok) &&
           !atomic_load(&h->dlt_failing) && cm_health_kafka_denied(h) == 0;
}
