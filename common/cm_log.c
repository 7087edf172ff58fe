/*
 * cm_log.c - see cm_log.h. The only state is set once at start-up, before any
 * thread is started.
 */
#include "cm_log.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "orders";
static int log_max = LOG_INFO;
static int log_journal = 0;

void cm_log_init(const char *ident, int max_priority)
{
    log_ident = ident;
    log_max = max_priority;
    /* systemd sets JOURNAL_STREAM when stderr is connected to the journal. */
    log_journal = getenv("JOURNAL_STREAM") != NULL;
}

int cm_log_level_parse(const char *s)
{
    static const struct {
        const char *name;
        int prio;
    } levels[] = {
        {"debug", LOG_DEBUG},     {"info", LOG_INFO}, {"notice", LOG_NOTICE},
        {"warning", LOG_WARNING}, {"error", LOG_ERR},
    };
    for (size_t i = 0; i < sizeof(levels) / sizeof(levels[0]); i++)
        if (strcmp(s, levels[i].name) == 0)
            return levels[i].prio;
    return -1;
}

const char *cm_log_ident(void)
{
    return log_ident;
}

int cm_log_enabled(int priority)
{
    return priority <= log_max;
}

static const char *level_name(int priority)
{
    switch (priority) {
    case LOG_EMERG:
    case LOG_ALERT:
    case LOG_CRIT:
    case LOG_ERR:
        return "error";
    case LOG_WARNING:
        return "warning";
    case LOG_NOTICE:
        return "notice";
    case LOG_INFO:
        return "info";
    default:
        return "debug";
    }
}

static void emit(int priority, const char *fmt, va_list ap)
{
    char line[4096];
    size_t n = 0;
    int w;

    if (log_journal) {
        w = snprintf(line, sizeof(line), "<%d>", priority);
    } else {
        struct timeval tv;
        struct tm tm;
        gettimeofday(&tv, NULL);
        gmtime_r(&tv.tv_sec, &tm);
        w = snprintf(line, sizeof(line),
                     "%04d-%02d-%02dT%02d:%02d:%02d.%03ldZ %s %s: ", tm.tm_year + 1900,
                     tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                     (long)(tv.tv_usec / 1000), log_ident, level_name(priority));
    }
    if (w > 0)
        n = (size_t)w;
    w = vsnprintf(line + n, sizeof(line) - n - 1, fmt, ap);
    if (w > 0)
        n += (size_t)w;
    if (n > sizeof(line) - 2)
        n = sizeof(line) - 2;
    /* One line per event: fold embedded newlines from foreign messages. */
    for (size_t i = 0; i < n; i++)
        if (line[i] == '\n' || line[i] == '\r')
            line[i] = ' ';
    line[n++] = '\n';
    (void)!write(STDERR_FILENO, line, n);
}

void cm_logv(int priority, const char *fmt, va_list ap)
{
    if (cm_log_enabled(priority))
        emit(priority, fmt, ap);
}

void cm_log_audit(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    emit(LOG_NOTICE, fmt, ap);
    va_end(ap);
}

void cm_log(int priority, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cm_logv(priority, fmt, ap);
    va_end(ap);
}

int cm_log_errno(int priority, int r, const char *fmt, ...)
{
    char msg[3072];
    va_list ap;

    if (!cm_log_enabled(priority))
        return r;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    cm_log(priority, "%s error=\"%s\"", msg, strerror(r < 0 ? -r : r));
    return r;
}
