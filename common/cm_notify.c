/*
 * cm_notify.c - see cm_notify.h.
 */
#include "cm_notify.h"

#include "cm_log.h"

#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#ifdef ORDERS_HAVE_SYSTEMD
#include <systemd/sd-daemon.h>
#endif

static long long now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static void notify(const char *state)
{
#ifdef ORDERS_HAVE_SYSTEMD
    sd_notify(0, state);
#else
    (void)state;
#endif
}

void cm_notify_init(cm_notify *n, cm_health *health)
{
    *n = (cm_notify){.health = health};
#ifdef ORDERS_HAVE_SYSTEMD
    uint64_t usec = 0;
    if (sd_watchdog_enabled(0, &usec) > 0)
        n->watchdog_interval_ms = (long long)(usec / 2000);
#endif
}

static void watchdog(cm_notify *n, long long now)
{
    if (n->watchdog_interval_ms > 0 && now - n->last_watchdog_ms >= n->watchdog_interval_ms) {
        notify("WATCHDOG=1");
        n->last_watchdog_ms = now;
    }
}

void cm_notify_waiting(cm_notify *n, const char *what)
{
    long long now = now_ms();

    watchdog(n, now);
    if (n->ready_sent || (n->last_extend_ms && now - n->last_extend_ms < CM_NOTIFY_EXTEND_EVERY_MS))
        return;
    char msg[160];
    snprintf(msg, sizeof(msg), "EXTEND_TIMEOUT_USEC=%lld\nSTATUS=starting: waiting for %s",
             (long long)CM_NOTIFY_EXTEND_MS * 1000, what);
    notify(msg);
    n->last_extend_ms = now;
    n->last_status_ms = now;
}

void cm_notify_tick(cm_notify *n)
{
    long long now = now_ms();
    cm_health *h = n->health;

    if (!n->ready_sent && !cm_health_ready(h)) {
        cm_notify_waiting(n, "brokers and the consumer group");
        return;
    }
    if (!n->ready_sent && cm_health_ready(h)) {
        notify("READY=1\nSTATUS=ready");
        n->ready_sent = true;
        log_info("ready");
    }
    watchdog(n, now);
    if (now - n->last_status_ms >= 2000) {
        char status[256];
        snprintf(status, sizeof(status),
                 "STATUS=%s consumed=%lld produced=%lld retries=%lld dead_lettered=%lld "
                 "outbox_backlog=%lld",
                 cm_health_ready(h) ? "ready" : "not ready (waiting for dependencies)",
                 (long long)atomic_load(&h->consumed), (long long)atomic_load(&h->produced),
                 (long long)atomic_load(&h->retries), (long long)atomic_load(&h->dead_lettered),
                 (long long)atomic_load(&h->outbox_backlog));
        notify(status);
        n->last_status_ms = now;
    }
}

void cm_notify_stopping(cm_notify *n)
{
    (void)n;
    notify("STOPPING=1\nSTATUS=draining");
}
