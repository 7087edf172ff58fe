/*
 * oc_kafka.h - the librdkafka clients of orderctl and the reading loop.
 *
 * Clients are plain rd_kafka_t handles made by oc_kafka_new() and released
 * with oc_kafka_destroy(). The consumer never joins or commits to a group:
 * partitions are assign()ed at explicit offsets and enable.auto.commit is
 * false, so reading a topic never moves any consumer group. Functions that
 * talk to the brokers report their own failures on stderr (this is the
 * program's edge) and return a negative errno.
 */
#pragma once

#include "oc_cli.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum {
    OC_KAFKA_CONSUMER, /* assign-only reader */
    OC_KAFKA_PRODUCER, /* idempotent, acks=all, delivery reports to the message opaque */
    OC_KAFKA_ADMIN,    /* plain handle for metadata and the Admin API */
} oc_kafka_role;

/* Called for every delivery report of an OC_KAFKA_PRODUCER: the message's
 * opaque (RD_KAFKA_V_OPAQUE) must point at an oc_delivery. */
typedef struct {
    int state; /* 0 in flight, 1 persisted, -1 failed */
    rd_kafka_resp_err_t err;
    int32_t partition; /* where it was written */
    int64_t offset;
} oc_delivery;

/* Creates a client: our defaults, then KAFKA_* environment variables, then
 * the settings this tool relies on (bootstrap, no commits, idempotence).
 * Returns 0 with *ret set, or -EINVAL (reported). */
int oc_kafka_new(const oc_opts *o, oc_kafka_role role, rd_kafka_t **ret);

/* Checks the KAFKA_* environment with the daemons' own check
 * (cm_kafka_check_env: the same list of ignored launcher and dev-stack
 * variables, the same messages): an unknown name, a value librdkafka refuses
 * or an unusable KAFKA_<NAME>_FILE is reported as "configuration error: ..."
 * and gives -EINVAL. Connects nowhere. Returns 0 or -EINVAL. */
int oc_kafka_check_env(void);

/* Closes (consumer) and destroys rk; accepts NULL. Does not flush. */
void oc_kafka_destroy(rd_kafka_t *rk);

/* Fetches the metadata of all topics. Returns 0 with *ret set (free with
 * rd_kafka_metadata_destroy), or -EIO (reported: brokers unreachable). */
int oc_kafka_metadata(rd_kafka_t *rk, int timeout_ms, const struct rd_kafka_metadata **ret);

/* The metadata of topic in md, or NULL if the cluster does not have it. */
const rd_kafka_metadata_topic_t *oc_kafka_md_topic(const struct rd_kafka_metadata *md,
                                                   const char *topic);

/* Low and high watermarks of one partition. Returns 0 or -EIO (reported). */
int oc_kafka_watermarks(rd_kafka_t *rk, const char *topic, int32_t partition, int timeout_ms,
                        int64_t *ret_low, int64_t *ret_high);

/* A partition to read from offset start up to end (exclusive). */
typedef struct {
    const char *topic; /* not copied: must outlive the read */
    int32_t partition;
    int64_t start;
    int64_t end;
} oc_range;

/* Called for every record read; a negative return stops the read and is
 * returned by oc_kafka_read. */
typedef int (*oc_read_fn)(void *ud, const rd_kafka_message_t *m);

/* Reads the ranges with consumer. Without follow, each range ends at its
 * end offset and the call returns once all are done; with follow, reading
 * goes on past the ends until oc_stop is set. Returns 0 (also when
 * interrupted by oc_stop), fn's negative return, or -EIO (reported). */
int oc_kafka_read(rd_kafka_t *consumer, const oc_range *ranges, size_t n, bool follow,
                  oc_read_fn fn, void *ud);

/* Polls producer until every message handed to it has its delivery report
 * (bounded by message.timeout.ms; deliberately not cut short by oc_stop, so
 * that what was sent is known). */
void oc_kafka_drain(rd_kafka_t *producer);

/* Makes producer learn the partitions of the (existing) topics before the
 * first message: librdkafka 2.0.2 otherwise leaves the first messages to a
 * topic it has no metadata for waiting up to a second (the broker thread
 * is not woken when the partitions arrive). Failures are harmless and
 * ignored. */
void oc_kafka_warm(rd_kafka_t *producer, const char *const *topics, size_t n, int timeout_ms);

/* Number of brokers in md. */
int oc_kafka_broker_count(const struct rd_kafka_metadata *md);
