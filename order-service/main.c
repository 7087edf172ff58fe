/*
 * main.c - payment-service: wiring only (see os_order.h and cm_daemon.h).
 */
#include "cm_daemon.h"
#include "os_order.h"

int main(int argc, char **argv)
{
    const cm_daemon_def def = {
        .name = "order-service",
        .description = "Takes orders over HTTP (POST /orders), publishes OrderCreated and "
                       "settles each order from payments.completed and inventory.reserved.",
        .default_port = 8080,
        .default_database_url = "postgresql://orders@127.0.0.1:5432/orders",
        .migrations = os_migrations,
        .nmigrations = os_nmigrations,
        .subs = os_subscriptions,
        .nsubs = os_nsubscriptions,
        .routes = os_routes,
        .nroutes = os_nroutes,
        .metrics = os_metrics,
        .nmetrics = os_nmetrics,
        .batch_flush = os_flush_orders,
        .on_scrape = os_scrape,
    };
    return cm_daemon_main(&def, argc, argv);
}
