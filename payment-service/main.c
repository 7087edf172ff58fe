/*
 * main.c - payment-service: wiring only (see ps_payment.h and cm_daemon.h).
 */
#include "cm_daemon.h"
#include "ps_payment.h"

int main(int argc, char **argv)
{
    const cm_daemon_def def = {
        .name = "payment-service",
        .description = "Charges orders from orders.created against the accounts ledger and "
                       "replies on payments.completed.",
        .default_port = 8081,
        .default_database_url = "postgresql://payments@127.0.0.1:5432/payments",
        .migrations = ps_migrations,
        .nmigrations = ps_nmigrations,
        .subs = ps_subscriptions,
        .nsubs = ps_nsubscriptions,
        .routes = ps_routes,
        .nroutes = ps_nroutes,
        .metrics = ps_metrics,
        .nmetrics = ps_nmetrics,
    };
    return cm_daemon_main(&def, argc, argv);
}
