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
    long long last_extend_ms;       /* last EXTEND_TIMEOUT_USEC, 0 = none yet */
} cm_notify;

/* How far each EXTEND_TIMEOUT_USEC reaches, and how often it is sent while
 * the daemon waits for a dependency before its first READY=1: a daemon that
 * waits for PostgreSQL or the brokers longer than the unit's TimeoutStartSec
 * is not killed and restarted in a loop; one that hangs stops extending and
 * is, 30 s later. */
#define CM_NOTIFY_EXTEND_MS 30000
#define CM_NOTIFY_EXTEND_EVERY_MS 10000

void cm_notify_init(cm_notify *n, cm_health *health);
/* Called while the daemon waits for `what` (e.g. "database") before its
 * start is complete: WATCHDOG=1 when due, EXTEND_TIMEOUT_USEC and a STATUS
 * naming the wait every CM_NOTIFY_EXTEND_EVERY_MS. */
void cm_notify_waiting(cm_notify *n, const char *what);
/* Called from the main loop at least every few hundred milliseconds. */
void cm_notify_tick(cm_notify *n);
void cm_notify_stopping(cm_notify *n);
