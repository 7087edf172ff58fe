/*
 * cm_notify.h - the systemd service protocol (sd_notify): READY=1 once the
 * daemon's dependencies are up, STATUS= with live counters, WATCHDOG=1 from
 * the main loop (so a stuck loop stops the pings and systemd restarts the
 * daemon), STOPPING=1 when the drain begins. Without NOTIFY_SOCKET (or a
 * build without libsystemd) every call does nothing.
 */
#pragma once

#include "cm_health.h"

typedef struct {
    cm_health *health;
    bool ready_sent;
    long long last_status_ms;
    long long last_watchdog_ms;
    long long watchdog_interval_ms; /* half of WATCHDOG_USEC, 0 = off */
} cm_notify;

void cm_notify_init(cm_notify *n, cm_health *health);
/* Called from the main loop at least every few hundred milliseconds. */
void cm_notify_tick(cm_notify *n);
void cm_notify_stopping(cm_notify *n);
