/*
 * oc_topics.h - topic creation with the librdkafka Admin API.
 *
 * Shared by "topics ensure" (oc_cmd_topics_ensure in oc_topics.c) and
 * "dlt replay", which creates the ledger topic when it is missing.
 */
#pragma once

#include "oc_cli.h"

#include <librdkafka/rdkafka.h>
#include <stdbool.h>

/* The default replication factor: min(3, brokers). */
int oc_topics_default_rf(const struct rd_kafka_metadata *md);
/* The default min.insync.replicas for rf: 2 from rf 3 on, else 1. */
int oc_topics_default_min_isr(int rf);

/* A topic to create. */
typedef struct {
    const char *name;
    int partitions;
    int rf;
    int min_isr;
    bool compact; /* cleanup.policy=compact */
} oc_new_topic;

/* Creates the topics in one CreateTopics request and waits until every
 * partition has a leader. A topic that exists by now (created concurrently)
 * counts as success. Prints "created <topic> ..." per topic. Returns the
 * number of topics that could not be created (each reported), or -EIO. */
int oc_topics_create(rd_kafka_t *rk, const oc_new_topic *t, size_t n, int timeout_ms);

/* Reads the configs names[0..nn) of topics[0..n) with one DescribeConfigs
 * request into ret[i * nn + j] (malloc'd strings, NULL when the broker did
 * not return one; the caller frees each). Returns 0 or -EIO (reported). */
int oc_topics_describe(rd_kafka_t *rk, const char *const *topics, size_t n,
                       const char *const *names, size_t nn, int timeout_ms, char **ret);
