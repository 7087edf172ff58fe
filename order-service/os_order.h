/*
 * os_order.h - order-service: takes orders over HTTP and settles them from
 * the replies of payment-service and inventory-service.
 *
 * POST /orders writes the order (PENDING) and its OrderCreated into the
 * outbox in one statement, so both or neither exist. The Kafka handlers apply
 * PaymentCompleted and InventoryReserved through the pure state machine in
 * os_settle.h, under a row lock, so replies may arrive in any order and any
 * number of times.
 */
#pragma once

#include "cm_daemon.h"

extern const char *const os_migrations[];
extern const size_t os_nmigrations;
extern const cm_subscription os_subscriptions[];
extern const size_t os_nsubscriptions;
extern const cm_http_route os_routes[];
extern const size_t os_nroutes;
/* The group commit of POST /orders (cm_daemon_def.batch_flush). */
void os_flush_orders(void *ctx, void **items, int n);
/* GET /orders?status=PENDING&olderThan=SECONDS&limit=N (os_pending.c). */
void os_list_pending(void *ctx, const cm_http_req *req, cm_http_resp *resp);
extern const cm_metric_def os_metrics[];
/* cm_daemon_def.on_scrape: orders_pending, orders_pending_oldest_age_seconds. */
void os_scrape(cm_daemon *d);
extern const size_t os_nmetrics;
