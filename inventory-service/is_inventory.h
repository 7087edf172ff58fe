/*
 * is_inventory.h - inventory-service: reserves stock for orders.
 *
 * Kafka handler for orders.created (reserve at most once per order, never
 * below zero, reply InventoryReserved through the outbox in the same
 * transaction) and the HTTP routes that manage stock (see README.md).
 */
#pragma once

#include "cm_daemon.h"

extern const char *const is_migrations[];
extern const size_t is_nmigrations;
extern const cm_subscription is_subscriptions[];
extern const size_t is_nsubscriptions;
extern const cm_http_route is_routes[];
extern const size_t is_nroutes;
extern const cm_metric_def is_metrics[];
extern const size_t is_nmetrics;
