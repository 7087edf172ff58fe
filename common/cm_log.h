/*
 * cm_log.h - one-line, key=value logging to stderr with journald priorities.
 *
 * Every line starts with a syslog priority prefix ("<6>") that journald reads
 * when the unit has SyslogLevelPrefix=yes (the default). When stderr is not a
 * journal stream, a timestamp and the level name are written instead, so a
 * developer running a daemon in a terminal can read it. Thread-safe: each line
 * is written with a single write(2), or, while its thread holds its lines
 * (cm_log_hold), with the thread's other held lines in as few writes as fit
 * PIPE_BUF, each of whole lines (so lines of different threads never mix).
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

/*
 * Holding lines: a thread that does a batch of work (the consumer's batch,
 * the group commit) holds its info and debug lines in a per-thread buffer
 * and writes them at once, instead of one write(2), and one wake-up of the
 * journal, per line. Warnings and errors are never held: each first writes
 * what the thread holds, then itself, so the order of the lines is kept.
 * A full buffer is written when the next line would not fit.
 *
 * The caller writes what it holds before the batch's effects are
 * acknowledged (before its COMMIT, before its answers), so that no line of a
 * committed batch is lost in a crash the batch survives.
 *
 * cm_log_hold: from now on, this thread's info and debug lines are held.
 *   Returns 0, or -ENOMEM (lines are then written one by one, as always).
 * cm_log_flush: writes the held lines; the thread still holds.
 * cm_log_drop: forgets the held lines (a batch rolled back: its lines tell of
 *   effects that did not happen, and its records are done again); returns
 *   how many were dropped.
 * cm_log_release: writes the held lines and stops holding.
 */
int cm_log_hold(void);
void cm_log_flush(void);
int cm_log_drop(void);
void cm_log_release(void);

#define log_debug(...) cm_log(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) cm_log(LOG_INFO, __VA_ARGS__)
#define log_notice(...) cm_log(LOG_NOTICE, __VA_ARGS__)
#define log_warning(...) cm_log(LOG_WARNING, __VA_ARGS__)
#define log_error(...) cm_log(LOG_ERR, __VA_ARGS__)
#define log_error_errno(r, ...) cm_log_errno(LOG_ERR, (r), __VA_ARGS__)
#define log_warning_errno(r, ...) cm_log_errno(LOG_WARNING, (r), __VA_ARGS__)
