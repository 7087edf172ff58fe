/*
 * ps_payment.h - payment-service: charges orders against its accounts ledger.
 *
 * Kafka handler for orders.created (charge at most once per order, reply
 * PaymentCompleted through the outbox in the same transaction) and the HTTP
 * routes that manage accounts (see README.md).
 */
#pragma once

#include "cm_daemon.h"

extern const char *const ps_migrations[];
extern const size_t ps_nmigrations;
extern const cm_subscription ps_subscriptions[];
extern const size_t ps_nsubscriptions;
extern const cm_http_route ps_routes[];
extern const size_t ps_nroutes;
extern const cm_metric_def ps_metrics[];
extern const size_t ps_nmetrics;
