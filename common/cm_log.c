/*
 * cm_log.c - see cm_log.h. The shared state is set once at start-up, before
 * any thread is started; a thread that holds its lines has its own buffer,
 * allocated at its first cm_log_hold and freed when the thread exits.
 */
#include "cm_log.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static const char *log_ident = "orders";
static int log_max = LOG_INFO;
static int log_journal = 0;

/* Held lines are written in chunks of whole lines of at most PIPE_BUF bytes:
 * a pipe takes such a write atomically, and a stream socket (the journal's)
 * or a file does not split it either, so lines of other threads never land
 * inside one. A line is at most LINE_MAX_LEN bytes, which fits. */
#define LINE_MAX_LEN 4096
#define HELD_CAP (64 * 1024)

typedef struct {
    bool on;
    size_t len, lines;
    char buf[HELD_CAP];
} held_lines;

static pthread_key_t held_key;
static pthread_once_t held_once = PTHREAD_ONCE_INIT;
static __thread held_lines *held;

/* Runs in the exiting thread: a line logged later (another destructor) is
 * written at once instead of into freed memory. */
static void held_free(void *p)
{
    held = NULL;
    free(p);
}

static void held_key_init(void)
{
    (void)pthread_key_create(&held_key, held_free);
}

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

static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return; /* nowhere to write: the line is lost, as with any logger */
        p += w;
        n -= (size_t)w;
    }
}

/* Writes h's lines in chunks of whole lines of at most PIPE_BUF bytes. */
static void held_write(held_lines *h)
{
    size_t at = 0;

    while (at < h->len) {
        size_t end = h->len - at <= PIPE_BUF ? h->len : at + PIPE_BUF;
        if (end < h->len) /* back to the end of the last whole line */
            while (end > at && h->buf[end - 1] != '\n')
                end--;
        if (end == at) /* cannot happen: lines are shorter than PIPE_BUF */
            end = h->len;
        write_all(h->buf + at, end - at);
        at = end;
    }
    h->len = 0;
    h->lines = 0;
}

static void emit(int priority, const char *fmt, va_list ap)
{
    char line[LINE_MAX_LEN];
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
    if (held && held->on && priority >= LOG_INFO) {
        if (held->len + n > sizeof(held->buf))
            held_write(held);
        memcpy(held->buf + held->len, line, n);
        held->len += n;
        held->lines++;
        return;
    }
    if (held && held->len > 0) /* keep the order: what is held goes first */
        held_write(held);
    write_all(line, n);
}

int cm_log_hold(void)
{
    if (!held) {
        pthread_once(&held_once, held_key_init);
        if (!(held = malloc(sizeof(*held))))
            return -ENOMEM;
        held->len = held->lines = 0;
        /* Freed when the thread exits; a thread that never holds costs nothing. */
        (void)pthread_setspecific(held_key, held);
    }
    held->on = true;
    return 0;
}

void cm_log_flush(void)
{
    if (held && held->len > 0)
        held_write(held);
}

int cm_log_drop(void)
{
    int n = held ? (int)held->lines : 0;

    if (held)
        held->len = held->lines = 0;
    return n;
}

void cm_log_release(void)
{
    if (!held)
        return;
    cm_log_flush();
    held->on = false;
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
