/*
 * cm_log.h - one-line, key=value logging to stderr with journald priorities.
 *
 * Every line starts with a syslog priority prefix ("<6>") that journald reads
 * when the unit has SyslogLevelPrefix=yes (the default). When stderr is not a
 * journal stream, a timestamp and the level name are written instead, so a
 * developer running a daemon in a terminal can read it. Thread-safe: each line
 * is written with a single write(2).
 */
#pragma once

#include <stdarg.h>
#include <syslog.h>

/* Sets the daemon name and the lowest priority written (LOG_DEBUG..LOG_ERR). */
void cm_log_init(const char *ident, int max_priority);
/* Parses "debug", "info", "warning", "error"; returns the priority or -1. */
int cm_log_level_parse(const char *s);
int cm_log_enabled(int priority);
/* The daemon name given to cm_log_init. */
const char *cm_log_ident(void);

/* Writes one line: the message, then the caller's key=value fields. */
void cm_log(int priority, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void cm_logv(int priority, const char *fmt, va_list ap) __attribute__((format(printf, 2, 0)));

/* Writes one line at notice priority whatever LOG_LEVEL says: audit records
 * (who changed what) are never filtered out. */
void cm_log_audit(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Logs with " error=\"<strerror(-r)>\"" appended and returns r (which is
 * negative), so that "return cm_log_errno(r, ...)" logs and fails in one step. */
int cm_log_errno(int priority, int r, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

#define log_debug(...) cm_log(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) cm_log(LOG_INFO, __VA_ARGS__)
#define log_notice(...) cm_log(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) cm_log(LOG_WARNING, __VA_ARGS__)
#define log_error(...) cm_log(LOG_ERR, __VA_ARGS__)
#define log_error_errno(r, ...) cm_log_errno(LOG_ERR, (r), __VA_ARGS__)
#define log_warning_errno(r, ...) cm_log_errno(LOG_WARNING, (r), __VA_ARGS__)
