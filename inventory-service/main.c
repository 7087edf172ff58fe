/*
 * main.c - inventory-service: wiring only (see is_inventory.h and cm_daemon.h).
 */
#include "cm_daemon.h"
#include "is_inventory.h"

int main(int argc, char **argv)
{
    const cm_daemon_def def = {
        .name = "inventory-service",
        .description = "Reserves stock for orders from orders.created and replies on "
                       "inventory.reserved.",
        .default_port = 8082,
        .default_database_url = "postgresql://inventory@127.0.0.1:5432/inventory",
        .migrations = is_migrations,
        .nmigrations = is_nmigrations,
        .subs = is_subscriptions,
        .nsubs = is_nsubscriptions,
        .routes = is_routes,
        .nroutes = is_nroutes,
        .metrics = is_metrics,
        .nmetrics = is_nmetrics,
    };
    return cm_daemon_main(&def, argc, argv);
}
